"""qembed.nn's quantized embedding layers: bitsandbytes.nn.Embedding8bit,
Embedding4bit, EmbeddingFP4 and EmbeddingNF4 over libqembed's quantized
tables (qembed_qembedding_*). A lookup dequantizes only the rows it returns;
unlike upstream, the layers save and load (safetensors with bitsandbytes'
keys). Also importable from qembed.nn.modules, as in bitsandbytes."""

import collections
import ctypes
import os
import tempfile

import numpy as np

from .. import _arrays
from .. import _capi as C
from .. import io as _io
from .._arrays import FLOAT_NAMES, out_array
from .._capi import type_error as _type_error, value_error as _value_error
from .._handle import Handle, OwnsHandle, encode_path, encode_text, new_struct, out_handle
from ..functional import _FOUR_BIT_BLOCKSIZES  # one list, in qembed.functional
from ._bags import QuantizedTableOps
from .modules import IncompatibleKeys, _check_device, _int

__all__ = ["Embedding8bit", "Embedding4bit", "EmbeddingFP4", "EmbeddingNF4"]

_KIND_OF_QUANT = {"fp4": C.QEMBED_QEMB_FP4, "nf4": C.QEMBED_QEMB_NF4}
_QUANT_OF_KIND = {C.QEMBED_QEMB_FP4: "fp4", C.QEMBED_QEMB_NF4: "nf4", C.QEMBED_QEMB_INT8: None}


class _QuantizedEmbedding(OwnsHandle, QuantizedTableOps):
    """Shared machinery of Embedding8bit and Embedding4bit: a layer starts
    unquantized and is quantized by load_state_dict({"weight": W}) (what
    bitsandbytes does on .to(device)), from_embedding() or load()."""

    _four_bit = False

    def _init_common(self, num_embeddings, embedding_dim, dtype, device):
        self._handle = None
        _check_device(device)
        self.num_embeddings = _int(num_embeddings, "num_embeddings")
        self.embedding_dim = _int(embedding_dim, "embedding_dim")
        if self.num_embeddings < 1 or self.embedding_dim < 1:
            raise _value_error(f"num_embeddings and embedding_dim must be >= 1, got "
                               f"({self.num_embeddings}, {self.embedding_dim})")
        self._dtype_name = _arrays.float_dtype_name(dtype)
        self.dtype = _arrays.numpy_float_dtype(self._dtype_name)

    # -- lifetime

    def close(self):
        """Free the quantized table (once no other reference to it remains)."""
        super().close()

    @property
    def is_quantized(self):
        return self._handle is not None

    def _h(self):
        if self._handle is None:
            raise RuntimeError(f"{type(self).__name__} is not quantized: call load_state_dict({{'weight': W}}), "
                               f"or build it with from_embedding() or load()")
        return self._handle.ptr

    def _kind(self):
        raise NotImplementedError

    def _adopt(self, handle):
        """Take ownership of a qembed_qembedding Handle and read its configuration."""
        info = new_struct(C.qembed_qembedding_info)
        C._check(C.qembed_qembedding_info_get(handle.ptr, ctypes.byref(info)))
        self._handle = handle
        self.num_embeddings = info.num_embeddings
        self.embedding_dim = info.embedding_dim
        self._dtype_name = FLOAT_NAMES[info.dtype]
        self.dtype = _arrays.numpy_float_dtype(self._dtype_name)
        self._info = info
        off, total = ctypes.c_int64(), ctypes.c_int64()
        C._check(C.qembed_qembedding_get_shard(handle.ptr, ctypes.byref(off), ctypes.byref(total)))
        self.row_offset, self.total_rows = off.value, total.value
        if self._four_bit:
            self.quant_type = _QUANT_OF_KIND[info.kind]
            self.blocksize = info.blocksize
            self.compress_statistics = bool(info.nested)
            self.quant_storage = np.dtype(np.uint8)
        return self

    @staticmethod
    def _new_handle(ptr):
        return Handle(ptr, C.qembed_qembedding_free, "qembedding")

    # -- quantization

    def _quantize(self, weight):
        arr, code = _arrays.float_array(weight, "weight")
        if arr.shape != (self.num_embeddings, self.embedding_dim):
            raise _value_error(f"weight: expected shape ({self.num_embeddings}, {self.embedding_dim}), "
                               f"got {arr.shape}", C.QEMBED_ERR_SHAPE)
        # As upstream, the float weight is first held in the layer's dtype.
        arr, code = _arrays.convert_float(arr, code, self._dtype_name)
        blocksize = self.blocksize if self._four_bit else 0
        nested = self.compress_statistics if self._four_bit else False
        out = out_handle()
        C._check(C.qembed_qembedding_quantize(arr.ctypes.data, code, arr.shape[0], arr.shape[1], self._kind(),
                                              blocksize, nested, ctypes.byref(out)))
        self._adopt(self._new_handle(out.value))

    def load_state_dict(self, state_dict, strict=True):
        """{"weight": W} with a float table quantizes W (converted to the
        layer's dtype first, as bitsandbytes' load_state_dict + .to(device));
        a dict of quantized tensors (what state_dict() returns, or a
        bitsandbytes/transformers checkpoint's entries) is loaded as is."""
        if "weight" not in state_dict:
            raise _value_error("load_state_dict: missing key 'weight'")
        w = _arrays.to_numpy(state_dict["weight"])
        quantized_keys = [k for k in state_dict if k != "weight"]
        if w.dtype.kind == "f" and not quantized_keys:
            self._quantize(w)
            return IncompatibleKeys([], [])
        if strict and w.dtype.kind == "f":
            raise _value_error(f"load_state_dict: unexpected keys {quantized_keys} next to a float weight")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "state.safetensors")
            # int8 tables carry no dtype of their own: record this layer's, in
            # the metadata entry qembed_qembedding_save writes (4-bit tables
            # have theirs in the QuantState JSON).
            _io.save_file(dict(state_dict), path, metadata={"qembed.weight.dtype": self._dtype_name})
            self._load_into(path, "weight")
        return IncompatibleKeys([], [])

    def _load_into(self, path, prefix, mmap=False):
        out = out_handle()
        C._check(C.qembed_qembedding_load_ex(encode_path(path), None if prefix is None else encode_text(prefix, "prefix"),
                                             C.QEMBED_OPEN_MMAP if mmap else 0, ctypes.byref(out)))
        handle = self._new_handle(out.value)  # freed with it if refused below
        info = new_struct(C.qembed_qembedding_info)
        C._check(C.qembed_qembedding_info_get(handle.ptr, ctypes.byref(info)))
        wanted = self._accepts_kind(info.kind)
        if wanted is not True:
            raise _value_error(f"{os.fspath(path)}: '{prefix or 'the layer'}' holds a {_kind_name(info.kind)} table, but "
                               f"{type(self).__name__} needs {wanted}", C.QEMBED_ERR_FORMAT)
        self._adopt(handle)

    def _accepts_kind(self, kind):
        raise NotImplementedError

    @classmethod
    def load(cls, path, prefix=None, mmap=False):
        """The quantized layer stored under `prefix` in a safetensors file
        written by save(), by ``qembed quantize`` or by bitsandbytes/
        transformers, read into memory the layer owns. With no prefix:
        "weight" if the file holds that layer, else its only quantized layer
        (several: ValueError listing them). ``mmap=True`` keeps the packed table in the mapped
        file instead (zero copy, shared page cache); the file must then not
        be truncated or rewritten while the layer lives (numpy.memmap's and
        torch.load(mmap=True)'s contract: a read past a truncated end kills
        the process with SIGBUS)."""
        self = cls.__new__(cls)
        self._handle = None
        self._load_into(path, prefix, mmap=mmap)
        return self

    # -- lookup, files

    def forward(self, input, out=None):
        """Dequantized rows: shape input.shape + (embedding_dim,), in the
        layer's dtype. Only the referenced rows are dequantized. `out` as for
        Embedding.forward."""
        idx, code = _arrays.index_array(input)
        h = self._h()
        out = out_array(out, idx.shape + (self.embedding_dim,), self.dtype)
        C._check(C.qembed_qembedding_forward(h, idx.ctypes.data, code, idx.size, out.ctypes.data,
                                             _arrays.float_dtype_code(self._dtype_name), out.size))
        return out

    __call__ = forward

    def save(self, path, prefix="weight"):
        """Save as safetensors (atomically) under bitsandbytes' key names."""
        C._check(C.qembed_qembedding_save(self._h(), encode_path(path), encode_text(prefix, "prefix")))

    def state_dict(self):
        """The tensors save() writes: "weight" and "weight.SCB" (8-bit), or
        "weight", "weight.absmax", "weight.quant_map" [, "weight.nested_absmax",
        "weight.nested_quant_map"], "weight.quant_state.bitsandbytes__<type>"."""
        self._h()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "state.safetensors")
            self.save(path)
            return collections.OrderedDict(_io.load_file(path))

    def memory_bytes(self):
        """Bytes of the quantized table and its statistics."""
        self._h()
        return int(self._info.table_bytes)

    def parameters(self):
        return []


def _quantize_layer(layer, kind, blocksize, compress_statistics):
    """A qembed_qembedding handle of a (Stable)Embedding's current weight; a
    row shard's table is a shard too (qembed_qembedding_quantize_shard:
    byte for byte those rows of the whole table's quantization)."""
    if layer.total_rows != layer.num_embeddings:
        return _quantize_rows(layer.weight.data, kind, blocksize, compress_statistics, layer.row_offset, layer.total_rows,
                              layer._dtype_code)
    out = out_handle()
    C._check(C.qembed_qembedding_from_embedding(layer._h(), kind, blocksize, compress_statistics, ctypes.byref(out)))
    return out.value


def _quantize_rows(weight, kind, blocksize, compress_statistics, row_offset, total_rows, code=None):
    """A qembed_qembedding handle of rows [row_offset, row_offset + len(weight))
    of a table of total_rows rows (qembed_qembedding_quantize_shard). `code`:
    the dtype code of a layer's own storage (bfloat16 tables are kept as bits)."""
    if code is None:
        w, code = _arrays.float_array(weight, "weight")
    else:
        w = np.ascontiguousarray(weight)
    if w.ndim != 2:
        raise _value_error(f"weight: expected a 2-D table, got shape {w.shape}", C.QEMBED_ERR_SHAPE)
    out = out_handle()
    C._check(C.qembed_qembedding_quantize_shard(w.ctypes.data, code, w.shape[0], w.shape[1], kind, blocksize,
                                                bool(compress_statistics), row_offset, total_rows, ctypes.byref(out)))
    return out.value


def _quantized_shard(weight, quant_type, blocksize, compress_statistics, row_offset, total_rows, code=None):
    """Embedding8bit (quant_type "int8"), EmbeddingFP4 or EmbeddingNF4 over
    rows [row_offset, row_offset + len(weight)) of a table of total_rows rows."""
    if quant_type == "int8":
        cls, kind, blocksize = Embedding8bit, C.QEMBED_QEMB_INT8, 0
    elif quant_type in _KIND_OF_QUANT:
        cls, kind = (EmbeddingFP4 if quant_type == "fp4" else EmbeddingNF4), _KIND_OF_QUANT[quant_type]
    else:
        raise _value_error(f"quant_type must be 'int8', 'fp4' or 'nf4', got {quant_type!r}")
    ptr = _quantize_rows(weight, kind, _int(blocksize, "blocksize"), compress_statistics, row_offset, total_rows, code)
    self = cls.__new__(cls)
    self._handle = None
    return self._adopt(cls._new_handle(ptr))


def _kind_name(kind):
    return {C.QEMBED_QEMB_INT8: "int8", C.QEMBED_QEMB_FP4: "fp4", C.QEMBED_QEMB_NF4: "nf4"}.get(kind, str(kind))


class Embedding8bit(_QuantizedEmbedding):
    """bitsandbytes.nn.Embedding8bit: int8 rows with one float32 scale (SCB,
    the row's max |x|) per row; lookup = row * (SCB / 127) in the layer's
    dtype. Quantizes straight from the weight's dtype (bitsandbytes goes
    through float16 first)."""

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype=None):
        self._init_common(num_embeddings, embedding_dim, dtype, device)

    def _kind(self):
        return C.QEMBED_QEMB_INT8

    def _accepts_kind(self, kind):
        return True if kind == C.QEMBED_QEMB_INT8 else "int8"

    @classmethod
    def from_embedding(cls, layer):
        """The int8 table of a (Stable)Embedding's current weight (a
        StableEmbedding's LayerNorm is not part of it). A row shard gives a
        shard (row_offset / total_rows), those rows of the whole table's."""
        self = cls.__new__(cls)
        self._handle = None
        return self._adopt(cls._new_handle(_quantize_layer(layer, C.QEMBED_QEMB_INT8, 0, False)))

    def __repr__(self):
        return f"Embedding8bit({self.num_embeddings}, {self.embedding_dim})"


class Embedding4bit(_QuantizedEmbedding):
    """bitsandbytes.nn.Embedding4bit: FP4 or NF4 blocks of `blocksize` values
    (float32 absmax per block, optionally nested: compress_statistics).
    Only uint8 quant_storage exists here."""

    _four_bit = True

    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_type="fp4", quant_storage=np.uint8,
                 device=None, blocksize=64, compress_statistics=False):
        self._init_common(num_embeddings, embedding_dim, dtype, device)
        if quant_type not in _KIND_OF_QUANT:
            raise _value_error(f"quant_type must be 'fp4' or 'nf4', got {quant_type!r}")
        try:
            storage = _arrays.storage_dtype(quant_storage)
        except TypeError:
            storage = None
        if storage != np.uint8:
            raise _type_error(f"quant_storage: only uint8 is supported, got {quant_storage!r}")
        blocksize = _int(blocksize, "blocksize")
        if blocksize not in _FOUR_BIT_BLOCKSIZES:
            raise _value_error(f"blocksize must be one of {_FOUR_BIT_BLOCKSIZES}, got {blocksize}")
        self.quant_type = quant_type
        self.blocksize = blocksize
        self.compress_statistics = bool(compress_statistics)
        self.quant_storage = np.dtype(np.uint8)

    def _kind(self):
        return _KIND_OF_QUANT[self.quant_type]

    def _accepts_kind(self, kind):
        fixed = getattr(type(self), "_fixed_quant_type", None)
        if kind == C.QEMBED_QEMB_INT8:
            return fixed or "fp4 or nf4"
        if fixed is not None and _QUANT_OF_KIND[kind] != fixed:
            return fixed
        return True

    @classmethod
    def from_embedding(cls, layer, quant_type=None, blocksize=64, compress_statistics=False):
        """The 4-bit table of a (Stable)Embedding's current weight (a
        StableEmbedding's LayerNorm is not part of it). quant_type defaults
        to the class's (EmbeddingNF4: "nf4", EmbeddingFP4 and Embedding4bit: "fp4").
        A row shard gives a shard, byte for byte those rows of the whole
        table's quantization: its first row (and its end, unless it ends the
        table) must fall on a block boundary (row x embedding_dim a multiple
        of blocksize), and compress_statistics is refused for a part of a
        table (the nested offset is the mean of the whole table's absmax)."""
        quant_type = quant_type or getattr(cls, "_fixed_quant_type", None) or "fp4"
        fixed = getattr(cls, "_fixed_quant_type", None)
        if fixed is not None and quant_type != fixed:
            raise _value_error(f"{cls.__name__} is {fixed}, got quant_type={quant_type!r}")
        if quant_type not in _KIND_OF_QUANT:
            raise _value_error(f"quant_type must be 'fp4' or 'nf4', got {quant_type!r}")
        ptr = _quantize_layer(layer, _KIND_OF_QUANT[quant_type], _int(blocksize, "blocksize"), bool(compress_statistics))
        self = cls.__new__(cls)
        self._handle = None
        return self._adopt(cls._new_handle(ptr))

    def __repr__(self):
        return (f"{type(self).__name__}({self.num_embeddings}, {self.embedding_dim}, quant_type={self.quant_type!r}, "
                f"blocksize={self.blocksize}, compress_statistics={self.compress_statistics})")


class EmbeddingFP4(Embedding4bit):
    _fixed_quant_type = "fp4"

    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_storage=np.uint8, device=None, blocksize=64,
                 compress_statistics=False):
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, quant_type="fp4", quant_storage=quant_storage,
                         device=device, blocksize=blocksize, compress_statistics=compress_statistics)


class EmbeddingNF4(Embedding4bit):
    _fixed_quant_type = "nf4"

    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_storage=np.uint8, device=None, blocksize=64,
                 compress_statistics=False):
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, quant_type="nf4", quant_storage=quant_storage,
                         device=device, blocksize=blocksize, compress_statistics=compress_statistics)

