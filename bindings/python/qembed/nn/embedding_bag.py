"""qembed.nn.EmbeddingBag: torch.nn.EmbeddingBag on numpy arrays (#18).

    bag = qembed.nn.EmbeddingBag(10000, 64, mode="sum")
    y = bag(ids, offsets)                 # (num_bags, 64)
    bag.backward(ids, dy, offsets)        # accumulates bag.weight.grad
    opt = qembed.optim.Adam(bag.parameters()); opt.step(); opt.zero_grad()

The layer is a qembed Embedding underneath (the same libqembed object,
created with qembed_embedding_create): ``weight``, ``parameters()``,
``state_dict()``/``load_state_dict()``, ``save()``, ``zero_grad()``,
``close()``, ``score()`` and qembed.optim work as they do for Embedding;
only the lookups are pooled. Differences from torch.nn.EmbeddingBag:

- no autograd: ``backward(input, grad_output, offsets, per_sample_weights)``
  accumulates the weight's gradient and returns the gradient of the
  per-sample weights (float32, input's shape), or None without them;
- per_sample_weights, queries and grad_output must be finite (torch
  propagates NaN); per_sample_weights may be float32, float16 or bfloat16
  whatever the table's dtype (torch wants the weight's dtype);
- offsets must start at 0, not decrease and not pass len(input): refused
  with ValueError, nothing written (torch raises RuntimeError; for
  decreasing offsets an internal assertion);
- with include_last_offset, indices after the last offset belong to no bag:
  they change no output and get no gradient (torch's mean and max count them,
  and its backward gives them the last bag's gradient);
- an unknown mode is refused by the constructor too (torch waits for forward);
- the default table is N(0, 1) as torch's (drawn by numpy from ``seed``),
  the padding row zero; the weight's optimizer state follows the optimizer's
  rules (8-bit optimizers keep 8-bit state for it, as bitsandbytes does for
  torch.nn.EmbeddingBag; qembed's Embedding forces 32-bit like bitsandbytes').
"""

import numpy as np

from .. import _arrays
from .. import _capi as C
from . import _bags
from .modules import Embedding, _int, _pretrained_table, _value_error

__all__ = ["EmbeddingBag"]


class EmbeddingBag(Embedding):
    """torch.nn.EmbeddingBag: sums, means or maxima of bags of rows.

    Arguments are torch's, plus ``seed`` (the N(0, 1) table's, a qembed
    extension like Embedding's). dtype: float32 (default), float16 or
    bfloat16; with ``_weight`` and no dtype, the table's. Outputs are in the
    weight's dtype, reduced in float32 and rounded once."""

    def __init__(self, num_embeddings, embedding_dim, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                 mode="mean", sparse=False, _weight=None, include_last_offset=False, padding_idx=None, device=None,
                 dtype=None, seed=0, _freeze=False):
        _bags.mode_code(mode)
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm,
                         norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=_weight,
                         device=device, dtype=dtype, seed=seed, _freeze=_freeze)
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        # torch.nn.EmbeddingBag gets no 32-bit override (bitsandbytes' Embedding does)
        self.weight._clear_override("optim_bits")
        if _weight is None:
            self.reset_parameters()

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                        mode="mean", sparse=False, include_last_offset=False, padding_idx=None):
        """A layer holding a copy of the 2-D table `embeddings` (its dtype
        kept, the padding row as given); freeze=True: no gradient."""
        arr = _pretrained_table(embeddings)
        return cls(arr.shape[0], arr.shape[1], max_norm=max_norm, norm_type=norm_type,
                   scale_grad_by_freq=scale_grad_by_freq, mode=mode, sparse=sparse, _weight=arr,
                   include_last_offset=include_last_offset, padding_idx=padding_idx, _freeze=freeze)

    def reset_parameters(self, seed=None):
        """Re-draw the table as torch does: N(0, 1) (numpy's default_rng(seed)
        in float32; default: the constructor's seed), the padding row zero."""
        seed = self.seed if seed is None else _int(seed, "seed")
        if not 0 <= seed < 2 ** 64:
            raise _value_error(f"seed must be in [0, 2**64), got {seed}")
        w = np.random.default_rng(seed).standard_normal((self.num_embeddings, self.embedding_dim), dtype=np.float32)
        if self.padding_idx is not None:
            w[self.padding_idx] = 0
        self.weight.copy_(w)

    # -- forward / backward

    def _bags(self, input, offsets, per_sample_weights):
        return _bags.make_bags(input, offsets, per_sample_weights, self.mode, self.include_last_offset,
                               C.QEMBED_NO_PADDING, self.scale_grad_by_freq, self.sparse)

    def forward(self, input, offsets=None, per_sample_weights=None):
        """The bags' reductions, shape (num_bags, embedding_dim), in the
        weight's dtype. input: 1-D indices with 1-D offsets (bag b is
        input[offsets[b]:offsets[b+1]], the last bag running to the end or,
        with include_last_offset, to the last offset), or 2-D (each row a
        bag; no offsets). int32 or int64; offsets are converted to the input's
        dtype. per_sample_weights (mode "sum" only): one weight per index,
        input's shape. Indices equal to padding_idx are left out (and out of
        mean's count); an empty bag gives zeros. With max_norm every
        referenced row is first renormalized in place."""
        bags = self._bags(input, offsets, per_sample_weights)
        h = self._h()
        out = _bags.bag_output(bags, self.embedding_dim, self.dtype)
        C._check(C.qembed_embedding_bag_forward(h, bags.ref(), out.ctypes.data, self._dtype_code, out.size))
        return out

    __call__ = forward

    def backward(self, input, grad_output, offsets=None, per_sample_weights=None):
        """Accumulate weight.grad for d(loss)/d(forward(input, offsets,
        per_sample_weights)) = grad_output (num_bags x embedding_dim,
        f32/f16/bf16, finite), as torch's autograd would; dense or sparse as
        the layer. Mode max sends each element's gradient to the row that
        held the maximum, recomputed from the current weight (call it before
        the weight changes). Returns d(loss)/d(per_sample_weights) (float32,
        the input's shape) when they are given, else None. Everything is
        validated before anything is written."""
        bags = self._bags(input, offsets, per_sample_weights)
        h = self._h()
        g, gcode = _arrays.float_array(grad_output, "grad_output")
        expected = (bags.num_bags, self.embedding_dim)
        if g.shape != expected:
            raise _value_error(f"grad_output: expected shape {expected}, got {g.shape}", C.QEMBED_ERR_SHAPE)
        psw_grad = np.zeros(bags.count, dtype=np.float32) if bags.weighted else None
        C._check(C.qembed_embedding_bag_backward(h, bags.ref(), g.ctypes.data, gcode, g.size,
                                                 None if psw_grad is None else psw_grad.ctypes.data_as(C.P_f32)))
        return None if psw_grad is None else psw_grad.reshape(bags.input_shape)

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            s += ", scale_grad_by_freq=True"
        s += f", mode={self.mode!r}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self._dtype_name != "float32":
            s += f", dtype={self._dtype_name}"
        return s
