"""Pooled lookups and scoring shared by qembed.nn's tables (#18).

``make_bags`` turns torch.nn.functional.embedding_bag's arguments (input,
offsets, per_sample_weights, mode, include_last_offset, padding_idx) into a
``qembed_bags`` struct, raising torch's exceptions for the argument rules
torch checks in Python (see qembed.h, "Bags: pooled lookups", for the rest:
the library validates offsets and indices before writing anything).

``FloatTableOps`` (Embedding, StableEmbedding, EmbeddingBag) and
``QuantizedTableOps`` (Embedding8bit, Embedding4bit and subclasses) are the
mixins giving the layers ``score()`` and, for quantized tables, ``bag()``.
"""

import ctypes

import numpy as np

from .. import _arrays
from .. import _capi as C
from .._capi import value_error as _value_error
from .._handle import new_struct

MODES = {"sum": C.QEMBED_BAG_SUM, "mean": C.QEMBED_BAG_MEAN, "max": C.QEMBED_BAG_MAX}
METRICS = {"dot": C.QEMBED_SCORE_DOT, "cosine": C.QEMBED_SCORE_COSINE}

_I32_MIN, _I32_MAX = -2 ** 31, 2 ** 31 - 1


def _integer(value, name):
    from .modules import _int  # one home for the integer rule (modules imports this file)
    return _int(value, name)


def mode_code(mode):
    """The qembed_bag_mode of torch's mode string (ValueError as torch otherwise)."""
    if isinstance(mode, str) and mode in MODES:
        return MODES[mode]
    raise _value_error(f"mode has to be one of sum, mean or max, got {mode!r}")


def metric_code(metric):
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric]
    raise _value_error(f"metric has to be 'dot' or 'cosine', got {metric!r}")


class Bags:
    """A filled ``qembed_bags`` (``struct``), the arrays it points into (kept
    alive with it), the number of bags and the input's shape."""

    __slots__ = ("struct", "_keep", "num_bags", "input_shape", "count", "weighted")

    def __init__(self, struct, keep, input_shape, weighted):
        self.struct = struct
        self._keep = keep
        self.input_shape = input_shape
        self.count = int(struct.count)
        self.weighted = weighted
        n = ctypes.c_int64()
        C._check(C.qembed_bags_num_bags(ctypes.byref(struct), ctypes.byref(n)))
        self.num_bags = n.value

    def ref(self):
        return ctypes.byref(self.struct)


def _offsets_array(offsets, idx, code):
    """offsets as a 1-D array of the input's index dtype (int64 inputs and
    offsets that do not fit int32 use int64 for both): (idx, offsets, code)."""
    off, ocode = _arrays.index_array(offsets, "offsets")
    if off.ndim != 1:
        raise _value_error("offsets has to be a 1D Tensor", C.QEMBED_ERR_SHAPE)
    if code == C.QEMBED_DTYPE_I32 and ocode != C.QEMBED_DTYPE_I32:
        if off.size and (int(off.min()) < _I32_MIN or int(off.max()) > _I32_MAX):
            return idx.astype(np.int64), off.astype(np.int64, copy=False), C.QEMBED_DTYPE_I64
        off = off.astype(np.int32)
    elif code == C.QEMBED_DTYPE_I64 and ocode != C.QEMBED_DTYPE_I64:
        off = off.astype(np.int64)
    if off.size == 0:  # the offsets form needs a non-NULL pointer even for zero offsets
        off = np.zeros(1, dtype=off.dtype)[:0]
    return idx, np.ascontiguousarray(off), code


def make_bags(input, offsets, per_sample_weights, mode, include_last_offset, padding_idx,
              scale_grad_by_freq=False, sparse=False):
    """Validate the arguments in torch's order and fill a qembed_bags.

    padding_idx: QEMBED_NO_PADDING (a float layer's own padding_idx, none for
    a quantized one) or an index in [-rows, rows) that the library checks."""
    idx, code = _arrays.index_array(input)
    off = None
    if idx.ndim == 2:
        if offsets is not None:
            raise _value_error("if input is 2D, then offsets has to be None, as input is treated is a mini-batch of "
                               f"fixed length sequences. However, found offsets of type {type(offsets)}")
    elif idx.ndim == 1:
        if offsets is None:
            raise _value_error("offsets has to be a 1D Tensor but got None")
        idx, off, code = _offsets_array(offsets, idx, code)
    else:
        raise _value_error(f"input has to be 1D or 2D Tensor, but got Tensor of dimension {idx.ndim}",
                           C.QEMBED_ERR_SHAPE)
    m = mode_code(mode)
    if m == C.QEMBED_BAG_MAX:
        if scale_grad_by_freq:
            raise _value_error("max mode does not support scaling the gradient by the frequency")
        if sparse:
            raise _value_error("max mode does not support sparse weights")
    w = None
    if per_sample_weights is not None:
        if m != C.QEMBED_BAG_SUM:
            raise NotImplementedError("embedding_bag: per_sample_weights was not None. per_sample_weights is only "
                                      f"supported for mode='sum' (got mode='{mode}'). Please open a feature request "
                                      "on GitHub.")
        w, wcode = _arrays.float_array(per_sample_weights, "per_sample_weights")
        if w.shape != idx.shape:
            raise _value_error(f"embedding_bag: If per_sample_weights ({w.shape}) is not None, then it must have the "
                               f"same shape as the input ({idx.shape})", C.QEMBED_ERR_SHAPE)
    b = new_struct(C.qembed_bags)
    C.qembed_bags_init(ctypes.byref(b))
    b.struct_size = ctypes.sizeof(C.qembed_bags)
    b.indices = idx.ctypes.data
    b.index_dtype = code
    b.count = idx.size
    if off is not None:
        b.offsets = off.ctypes.data
        b.num_offsets = off.size
        b.include_last_offset = bool(include_last_offset)
        b.num_bags = 0
    else:  # 2-D: fixed-length bags (torch ignores include_last_offset here)
        b.offsets = None
        b.num_offsets = 0
        b.num_bags = idx.shape[0]
    if w is not None:
        b.per_sample_weights = w.ctypes.data
        b.weights_dtype = wcode
    b.mode = m
    b.padding_idx = padding_idx
    return Bags(b, (idx, off, w), idx.shape, w is not None)


def bag_output(bags, dim, dtype):
    return _arrays.out_array(None, (bags.num_bags, dim), dtype)


# --------------------------------------------------------------------------
# Mixins
# --------------------------------------------------------------------------


class _Scoring:
    """score(): every query against every row of the table."""

    def score(self, queries, k=None, metric="dot"):
        """Scores of `queries` (embedding_dim values, or num_queries x
        embedding_dim; float32, float16 or bfloat16, finite) against every row
        of the table (a float layer's raw weight rows, a quantized layer's rows
        as forward() returns them, read as float32): <q, row> ("dot") or that
        over max(|q|, 1e-8) *
        max(|row|, 1e-8) ("cosine"), summed as qembed.h describes (the same
        bits for one query or many, with or without k, on every CPU tier).

        Without k: the float32 matrix num_queries x num_embeddings (one row,
        1-D, for a 1-D query). With k (1 <= k <= num_embeddings): a tuple
        (indices int64, scores float32), each num_queries x k (k for a 1-D
        query), best first, ties to the lower row index, the scores equal to
        the score matrix's entries bit for bit. An empty batch (0 x
        embedding_dim) gives empty results."""
        score_fn, topk_fn = self._score_functions()
        h = self._h()
        q, qcode = _arrays.float_array(queries, "queries")
        dim = self.embedding_dim
        if q.ndim not in (1, 2) or q.shape[-1] != dim:
            raise _value_error(f"queries: expected shape ({dim},) or (num_queries, {dim}), got {q.shape}",
                               C.QEMBED_ERR_SHAPE)
        metric = metric_code(metric)
        n = 1 if q.ndim == 1 else q.shape[0]
        rows = self.num_embeddings
        if k is None:
            scores = _arrays.out_array(None, (n, rows), np.float32)
            C._check(score_fn(h, q.ctypes.data, qcode, n, metric, scores.ctypes.data_as(C.P_f32), scores.size))
            return scores[0] if q.ndim == 1 else scores
        k = _integer(k, "k")
        if not 1 <= k <= rows:  # refused before an output of n x k is allocated
            raise _value_error(f"k must be in [1, num_embeddings = {rows}], got {k}", C.QEMBED_ERR_OUT_OF_RANGE)
        indices = np.empty((n, k), dtype=np.int64)
        scores = np.empty((n, k), dtype=np.float32)
        C._check(topk_fn(h, q.ctypes.data, qcode, n, metric, k, indices.ctypes.data_as(C.P_i64),
                         scores.ctypes.data_as(C.P_f32), indices.size))
        if q.ndim == 1:
            return indices[0], scores[0]
        return indices, scores


class FloatTableOps(_Scoring):
    """Embedding, StableEmbedding, EmbeddingBag: scoring reads the raw weight
    (a StableEmbedding's LayerNorm does not apply)."""

    @staticmethod
    def _score_functions():
        return C.qembed_embedding_score, C.qembed_embedding_topk


class QuantizedTableOps(_Scoring):
    """Embedding8bit, Embedding4bit: score() over the dequantized rows, and bag()."""

    @staticmethod
    def _score_functions():
        return C.qembed_qembedding_score, C.qembed_qembedding_topk

    def bag(self, input, offsets=None, per_sample_weights=None, mode="mean", include_last_offset=False,
            padding_idx=None):
        """torch.nn.functional.embedding_bag over the dequantized table: each
        referenced row is dequantized (exactly the values forward() returns,
        in the layer's dtype, read as float32) and reduced in float32 in one
        pass, the result stored in the layer's dtype, shape (num_bags,
        embedding_dim).
        Arguments as EmbeddingBag.forward's, with the module's mode,
        include_last_offset and padding_idx (in [-rows, rows), or None)."""
        h = self._h()
        if padding_idx is None:
            pad = C.QEMBED_NO_PADDING
        else:
            pad = _integer(padding_idx, "padding_idx")
            if not -self.num_embeddings <= pad < self.num_embeddings:
                raise _value_error(f"padding_idx must be within num_embeddings: [-{self.num_embeddings}, "
                                   f"{self.num_embeddings}), got {pad}", C.QEMBED_ERR_OUT_OF_RANGE)
        bags = make_bags(input, offsets, per_sample_weights, mode, include_last_offset, pad)
        out = bag_output(bags, self.embedding_dim, self.dtype)
        C._check(C.qembed_qembedding_bag_forward(h, bags.ref(), out.ctypes.data,
                                                 _arrays.float_dtype_code(self._dtype_name), out.size))
        return out


__all__ = ["MODES", "METRICS", "Bags", "make_bags", "bag_output", "FloatTableOps", "QuantizedTableOps"]
