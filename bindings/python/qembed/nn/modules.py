"""qembed.nn: bitsandbytes.nn's embedding layers on numpy arrays.

    emb = qembed.nn.StableEmbedding(10000, 64)
    y = emb(ids)                      # ids.shape + (64,)
    emb.backward(ids, dy)             # gradients into emb.weight.grad, emb.norm.weight.grad, ...
    opt = qembed.optim.Adam8bit(emb.parameters())
    opt.step(); opt.zero_grad()

Layers own a libqembed object. Parameter ``.data`` and dense ``.grad`` are
numpy arrays that view the library's memory (no copy): writing through them
changes the layer. A view keeps the memory alive on its own, so ``close()``
(or leaving a ``with`` block) only drops the layer's reference: the C object
is freed once no view, parameter or optimizer that uses it remains.

There is no autograd: ``backward(input, grad_output)`` takes the gradient of
the output of ``forward(input)`` and accumulates the parameters' gradients,
as ``out.backward(grad_output)`` would in torch.

Errors from the library are raised as ValueError (bad values, indices out of
range, size mismatches, NaN/Inf) or TypeError (unsupported dtypes), carrying
the library's message.
"""

import collections
import ctypes
import operator

import numpy as np

from .. import _arrays
from .. import _capi as C
from .._arrays import FLOAT_NAMES, out_array
from .._capi import QembedTypeError, QembedValueError  # noqa: F401 (the error names qembed.nn.modules had)
from .._capi import type_error as _type_error, value_error as _value_error
from .._handle import Handle, OwnsHandle, encode_path, new_struct, out_handle
from ._bags import FloatTableOps
from .parameter import Parameter, SparseGrad  # noqa: F401 (re-exported)

__all__ = ["Parameter", "SparseGrad", "LayerNorm", "Embedding", "StableEmbedding", "Embedding8bit",
           "Embedding4bit", "EmbeddingFP4", "EmbeddingNF4"]


IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _int(value, name):
    if isinstance(value, bool):
        raise _type_error(f"{name}: expected an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise _type_error(f"{name}: expected an integer, got {type(value).__name__}") from None


def _check_device(device):
    if device is not None and str(device) not in ("cpu", "cpu:0"):
        raise _value_error(f"device: qembed runs on the CPU only, got {device!r}")


def _pretrained_table(embeddings):
    """The 2-D array of a from_pretrained() table (any float dtype; copied by the layer)."""
    arr = _arrays.to_numpy(embeddings)
    if arr.ndim != 2:
        raise _value_error(f"embeddings: expected a 2-D table, got shape {arr.shape}", C.QEMBED_ERR_SHAPE)
    return arr


class LayerNorm:
    """StableEmbedding's LayerNorm: normalized over the last dimension with
    eps 1e-5 in float32; ``weight`` (ones) and ``bias`` (zeros) parameters."""

    def __init__(self, weight, bias, dim):
        self.weight = weight
        self.bias = bias
        self.normalized_shape = (dim,)
        self.eps = 1e-5
        self.elementwise_affine = True

    def parameters(self):
        return [self.weight, self.bias]

    def __repr__(self):
        return f"LayerNorm({self.normalized_shape}, eps={self.eps}, elementwise_affine=True)"


# --------------------------------------------------------------------------
# Embedding / StableEmbedding
# --------------------------------------------------------------------------


class Embedding(OwnsHandle, FloatTableOps):
    """bitsandbytes.nn.Embedding: torch.nn.Embedding with Xavier-uniform
    initialization, whose weight always gets 32-bit optimizer state.

    Arguments follow bitsandbytes (``_weight`` is a pretrained table, copied),
    plus ``dtype`` (float32 default, float16 or bfloat16; with ``_weight``
    and no dtype, the table's dtype) and ``seed`` for the deterministic
    Xavier-uniform draw. ``device`` must be None or "cpu".
    """

    _stable = False

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, device=None, dtype=None, seed=0,
                 _freeze=False, _shard=None):
        # _shard = (row_offset, total_rows): this layer holds those rows of a
        # larger table (qembed.distributed); padding_idx is then a global row.
        self._handle = None
        _check_device(device)
        p = new_struct(C.qembed_embedding_params)
        C.qembed_embedding_params_init(ctypes.byref(p))
        p.num_embeddings = _int(num_embeddings, "num_embeddings")
        p.embedding_dim = _int(embedding_dim, "embedding_dim")
        p.padding_idx = C.QEMBED_NO_PADDING if padding_idx is None else _int(padding_idx, "padding_idx")
        if max_norm is not None:
            max_norm = float(max_norm)
            if not max_norm > 0:
                raise _value_error(f"max_norm must be > 0 (None disables it), got {max_norm}")
            p.max_norm = max_norm
        p.norm_type = float(norm_type)
        p.scale_grad_by_freq = bool(scale_grad_by_freq)
        p.sparse = bool(sparse)
        seed = _int(seed, "seed")
        if not 0 <= seed < 2 ** 64:
            raise _value_error(f"seed must be in [0, 2**64), got {seed}")
        p.seed = seed
        keep = None
        if _weight is not None:
            arr, code = _arrays.float_array(_weight, "_weight")
            if arr.shape != (p.num_embeddings, p.embedding_dim):
                raise _value_error(f"_weight: shape {arr.shape} does not match (num_embeddings, embedding_dim) = "
                                   f"({p.num_embeddings}, {p.embedding_dim})", C.QEMBED_ERR_SHAPE)
            if dtype is None and code != C.QEMBED_DTYPE_F32:
                dtype = FLOAT_NAMES[code]
            keep = arr
            p.weight = arr.ctypes.data
            p.weight_dtype = code
            p.freeze = bool(_freeze)
        p.dtype = _arrays.float_dtype_code(_arrays.float_dtype_name(dtype))
        out = out_handle()
        if _shard is not None:
            row_offset, total_rows = (_int(v, "_shard") for v in _shard)
            C._check(C.qembed_embedding_create_shard(ctypes.byref(p), self._stable, row_offset, total_rows,
                                                     ctypes.byref(out)))
        else:
            create = C.qembed_stable_embedding_create if self._stable else C.qembed_embedding_create
            C._check(create(ctypes.byref(p), ctypes.byref(out)))
        del keep
        self._handle = Handle(out.value, C.qembed_embedding_free, "embedding")
        self.seed = seed
        self._load_config()
        self._params = self._make_params()
        self.weight = self._params[0]
        self.norm = LayerNorm(self._params[1], self._params[2], self.embedding_dim) if self._stable else None

    # -- construction helpers

    def _load_config(self):
        p = new_struct(C.qembed_embedding_params)
        stable = ctypes.c_bool()
        C._check(C.qembed_embedding_get_params(self._h(), ctypes.byref(p), ctypes.byref(stable)))
        self.num_embeddings = p.num_embeddings
        self.embedding_dim = p.embedding_dim
        self.padding_idx = None if p.padding_idx == C.QEMBED_NO_PADDING else p.padding_idx
        off, total = ctypes.c_int64(), ctypes.c_int64()
        C._check(C.qembed_embedding_get_shard(self._h(), ctypes.byref(off), ctypes.byref(total)))
        self.row_offset, self.total_rows = off.value, total.value
        self.max_norm = p.max_norm if p.max_norm > 0 else None
        self.norm_type = p.norm_type
        self.scale_grad_by_freq = bool(p.scale_grad_by_freq)
        self.sparse = bool(p.sparse)
        self._dtype_name = FLOAT_NAMES[p.dtype]
        self._dtype_code = p.dtype
        self.dtype = _arrays.numpy_float_dtype(self._dtype_name)

    def _make_params(self):
        n = ctypes.c_int64()
        C._check(C.qembed_embedding_num_params(self._h(), ctypes.byref(n)))
        params = []
        for i in range(n.value):
            ptr = out_handle()
            C._check(C.qembed_embedding_param(self._h(), i, ctypes.byref(ptr)))
            params.append(Parameter._borrowed(ptr.value, self._handle))
        return params

    def _h(self):
        if self._handle is None:
            raise _value_error(f"{type(self).__name__}: the layer is closed")
        return self._handle.ptr

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, max_norm=None, norm_type=2.0,
                        scale_grad_by_freq=False, sparse=False):
        """A layer holding a copy of the 2-D table `embeddings` (its dtype is
        kept); freeze=True means the weight receives no gradient. Unlike
        bitsandbytes 0.50.2, whose Embedding.from_pretrained raises TypeError
        (its __init__ lacks torch's _freeze), this works as torch's."""
        arr = _pretrained_table(embeddings)
        return cls(arr.shape[0], arr.shape[1], padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
                   scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=arr, _freeze=freeze)

    # -- lifetime

    def close(self):
        """Drop this layer's reference to its C object (freed once no view,
        parameter or optimizer of it remains). Further calls raise ValueError."""
        super().close()
        self._params = []

    # -- forward / backward

    def forward(self, input, out=None):
        """Rows of `input` (int32/int64 indices of any shape, or anything
        np.asarray turns into integers): an array of shape input.shape +
        (embedding_dim,) in the weight's dtype. StableEmbedding applies its
        LayerNorm (float32) and casts back. With max_norm, referenced rows
        are renormalized in place first. `out` (a qembed extension): a
        C-contiguous array of that shape and dtype to write into and return,
        which saves a fresh allocation (and its page faults) per call."""
        idx, code = _arrays.index_array(input)
        out = out_array(out, idx.shape + (self.embedding_dim,), self.dtype)
        C._check(C.qembed_embedding_forward(self._h(), idx.ctypes.data, code, idx.size, out.ctypes.data,
                                            self._dtype_code, out.size))
        return out

    __call__ = forward

    def backward(self, input, grad_output):
        """Accumulate the parameters' gradients for d(loss)/d(forward(input))
        = grad_output (shape input.shape + (embedding_dim,), f32/f16/bf16).
        Everything is validated before anything is written."""
        idx, code = _arrays.index_array(input)
        g, gcode = _arrays.float_array(grad_output, "grad_output")
        expected = idx.shape + (self.embedding_dim,)
        if g.shape != expected and g.size == idx.size * self.embedding_dim:
            raise _value_error(f"grad_output: expected shape {expected}, got {g.shape}", C.QEMBED_ERR_SHAPE)
        C._check(C.qembed_embedding_backward(self._h(), idx.ctypes.data, code, idx.size, g.ctypes.data, gcode,
                                             g.size))

    def zero_grad(self):
        """Dense gradients to zero, the sparse gradient emptied."""
        C._check(C.qembed_embedding_zero_grad(self._h()))

    def reset_parameters(self, seed=None):
        """Re-draw the Xavier-uniform table (padding row zero) from `seed`
        (default: the constructor's seed) and reset the LayerNorm."""
        seed = self.seed if seed is None else _int(seed, "seed")
        if not 0 <= seed < 2 ** 64:
            raise _value_error(f"seed must be in [0, 2**64), got {seed}")
        C._check(C.qembed_embedding_reset_parameters(self._h(), seed))

    # -- parameters and state

    def parameters(self):
        self._h()
        return list(self._params)

    def named_parameters(self):
        self._h()
        return [(p.name, p) for p in self._params]

    def state_dict(self):
        """{"weight": ..., ["norm.weight": ..., "norm.bias": ...]} as copies
        (torch's state_dict shares storage; use ``.data`` for views)."""
        return collections.OrderedDict((name, np.array(p.data)) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters (converted to their dtype). Every
        array is checked (shape, dtype, finiteness) before any is written.
        strict: missing or unexpected keys raise ValueError; otherwise they
        are returned as (missing_keys, unexpected_keys)."""
        named = dict(self.named_parameters())
        missing = [k for k in named if k not in state_dict]
        unexpected = [k for k in state_dict if k not in named]
        if strict and (missing or unexpected):
            raise _value_error(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        staged = []
        for name, p in named.items():
            if name not in state_dict:
                continue
            arr, code = _arrays.float_array(state_dict[name], name)
            if arr.shape != p.shape:
                raise _value_error(f"{name}: expected shape {p.shape}, got {arr.shape}", C.QEMBED_ERR_SHAPE)
            if code == C.QEMBED_DTYPE_BF16 or code == C.QEMBED_DTYPE_F16 or code == C.QEMBED_DTYPE_F32:
                if not np.all(np.isfinite(arr.astype(np.float32))):
                    raise _value_error(f"{name}: holds NaN or Inf", C.QEMBED_ERR_NON_FINITE)
            staged.append((p, arr, code))
        for p, arr, code in staged:
            C._check(C.qembed_param_load(p._ptr, arr.ctypes.data, code, arr.size))
        return IncompatibleKeys(missing, unexpected)

    def save(self, path):
        """Save the parameters ("weight", and "norm.weight", "norm.bias") as a
        safetensors file, atomically."""
        C._check(C.qembed_embedding_save(self._h(), encode_path(path)))

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            s += ", scale_grad_by_freq=True"
        if self.sparse:
            s += ", sparse=True"
        if self._dtype_name != "float32":
            s += f", dtype={self._dtype_name}"
        return s

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class StableEmbedding(Embedding):
    """bitsandbytes.nn.StableEmbedding: Embedding (Xavier-uniform init) then
    LayerNorm(embedding_dim, eps=1e-5) in float32, the output cast back to
    the weight dtype; the weight always gets 32-bit optimizer state.
    ``norm.weight`` and ``norm.bias`` are float32 parameters."""

    _stable = True


# The quantized layers live in qembed.nn.quantized; bitsandbytes keeps them in
# bitsandbytes.nn.modules, so they are importable from here too.
from .quantized import Embedding4bit, Embedding8bit, EmbeddingFP4, EmbeddingNF4  # noqa: E402
