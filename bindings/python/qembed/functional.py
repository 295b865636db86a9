"""qembed.functional: bitsandbytes.functional's quantization API on numpy arrays.

Names, argument names and defaults follow bitsandbytes 0.50.2; arrays are
numpy arrays instead of torch tensors. Inputs may be anything ``np.asarray``
accepts, or objects with ``__dlpack__`` (for example CPU torch tensors,
bfloat16 included). Supported element types are float32, float16 and, when the
``ml_dtypes`` package is importable, bfloat16 (``ml_dtypes.bfloat16``).

Results are freshly allocated numpy arrays, or the caller's ``out`` array when
one is given (it must have the documented shape and dtype and be C-contiguous
and writeable).

Quantization uses the exact nearest-code rule (see include/qembed.h), which
bitsandbytes' CUDA kernels and its torch fallback implement; bitsandbytes'
CPU 8-bit kernel approximates it and differs on a small fraction of elements.
"""

import ctypes
import json
import math

import numpy as np

from . import _capi as C
from ._arrays import (BFLOAT16, FLOAT_CODES, code_array, dtype_name, exact_array, float_input, is_array,
                      numpy_float_dtype, out_array, ptr, read, storage_dtype)
from ._capi import QembedError, QembedTypeError, QembedValueError  # noqa: F401 (qembed.functional's error names)
from ._capi import type_error as _type_error, value_error as _value_error

__all__ = [
    "QuantState", "create_dynamic_map", "create_linear_map", "create_fp8_map", "create_normal_map",
    "get_4bit_type", "quantize_blockwise", "dequantize_blockwise", "quantize_4bit", "dequantize_4bit",
    "quantize_fp4", "quantize_nf4", "dequantize_fp4", "dequantize_nf4", "int8_vectorwise_quant",
    "int8_vectorwise_dequant", "BFLOAT16",
]

_FOUR_BIT_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_QUANT_TYPES = {"fp4": C.QEMBED_QUANT_FP4, "nf4": C.QEMBED_QUANT_NF4}

# --------------------------------------------------------------------------
# Sizes of the statistics
# --------------------------------------------------------------------------


def _absmax_count(n, blocksize):
    count = ctypes.c_int64()
    C._check(C.qembed_blockwise_absmax_count(n, blocksize, ctypes.byref(count)))
    return count.value


def _absmax_out(absmax, nblocks, nested_flag, nested):
    """The float32 array of `nblocks` absmax values a quantizer writes: the
    caller's `absmax` (checked), which `nested_flag`=True cannot take, or a
    fresh one."""
    if absmax is None:
        return np.empty(nblocks, dtype=np.float32)
    if nested:
        raise _value_error(f"absmax= cannot be combined with {nested_flag}=True")
    return out_array(absmax, (nblocks,), np.float32, "absmax")


# --------------------------------------------------------------------------
# Quantization maps
# --------------------------------------------------------------------------


def _map(fill):
    code = np.empty(C.QEMBED_CODE_SIZE, dtype=np.float32)
    C._check(fill(ptr(code, ctypes.c_float)))
    return code


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """The dynamic tree quantization map (256 sorted float32 values)."""
    return _map(lambda p: C.qembed_create_dynamic_map(bool(signed), int(max_exponent_bits), int(total_bits), p))


def create_linear_map(signed=True, total_bits=8, add_zero=True):
    """A linear map of 2**total_bits levels in [-1, 1] (or [0, 1]), padded to 256."""
    return _map(lambda p: C.qembed_create_linear_map(bool(signed), int(total_bits), bool(add_zero), p))


def create_fp8_map(signed=True, exponent_bits=5, precision_bits=2, total_bits=8):
    """A small-float map with the given exponent/mantissa bits, normalized to [-1, 1]."""
    return _map(lambda p: C.qembed_create_fp8_map(bool(signed), int(exponent_bits), int(precision_bits),
                                                  int(total_bits), p))


def create_normal_map(offset=0.9677083, use_extra_value=True):
    """The NormalFloat map from normal quantiles (256 entries, 16 nonzero levels)."""
    return _map(lambda p: C.qembed_create_normal_map(float(offset), bool(use_extra_value), p))


def get_4bit_type(typename, device=None, blocksize=64):
    """The 16 levels of "nf4" or "fp4" in index order (float32).

    `device` and `blocksize` are accepted for bitsandbytes compatibility and
    ignored (qembed runs on the CPU; only "af4" depends on blocksize upstream).
    """
    if typename not in _QUANT_TYPES:
        raise NotImplementedError(f"Typename {typename} not supported (qembed supports 'nf4' and 'fp4')")
    code = np.empty(16, dtype=np.float32)
    C._check(C.qembed_get_4bit_code(_QUANT_TYPES[typename], ptr(code, ctypes.c_float)))
    return code


_DYNAMIC = None


def _dynamic_code():
    global _DYNAMIC
    if _DYNAMIC is None:
        _DYNAMIC = create_dynamic_map(signed=True)
        _DYNAMIC.flags.writeable = False
    return _DYNAMIC


# --------------------------------------------------------------------------
# QuantState
# --------------------------------------------------------------------------


def _pack_dict_to_array(d):
    """JSON of a dict as a uint8 array (bitsandbytes' pack_dict_to_tensor)."""
    return np.frombuffer(json.dumps(d).encode("utf-8"), dtype=np.uint8).copy()


def _unpack_array_to_dict(arr):
    raw, bits = read(arr)
    if bits:
        raise _value_error("the packed quant_state item must be uint8 bytes", C.QEMBED_ERR_FORMAT)
    try:
        return json.loads(np.ascontiguousarray(raw, dtype=np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _value_error(f"the packed quant_state item is not UTF-8 JSON: {e}", C.QEMBED_ERR_FORMAT) from e


class QuantState:
    """The state needed to dequantize: bitsandbytes.functional.QuantState on numpy.

    Attributes (as upstream): absmax, shape, code, dtype, blocksize,
    quant_type, offset, state2, nested. ``dtype`` is a string: "float32",
    "float16" or "bfloat16" (torch's str(dtype) without "torch.").
    ``offset`` is a numpy float32 scalar for nested states.
    """

    valid_quant_types = ("fp4", "nf4")
    valid_qs_type_keys = [f"bitsandbytes__{x}" for x in valid_quant_types]
    valid_qs_keys = [
        "absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type",
        "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset",
    ]

    def __init__(self, absmax, shape=None, code=None, blocksize=None, quant_type=None, dtype=None,
                 offset=None, state2=None):
        self.absmax = absmax
        self.shape = tuple(int(s) for s in shape) if shape is not None else None
        self.code = code
        self.dtype = dtype_name(dtype)
        self.blocksize = int(blocksize) if blocksize is not None else None
        self.quant_type = quant_type
        self.offset = np.float32(offset) if offset is not None else None
        self.state2 = state2
        self.nested = state2 is not None

    def __getattr__(self, name):
        # "quant_state.bitsandbytes__nf4" style attribute access, as upstream.
        if name.startswith("bitsandbytes__"):
            packed = self.as_dict(packed=True)
            key = "quant_state." + name
            if key in packed:
                return packed[key]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __getitem__(self, idx):
        """The legacy list layout [absmax, shape, dtype, blocksize, [offset, state2] | None, quant_type]."""
        nested = [self.offset, self.state2] if self.nested else None
        return [self.absmax, self.shape, self.dtype, self.blocksize, nested, self.quant_type][idx]

    @classmethod
    def from_dict(cls, qs_dict, device=None):
        """Build a QuantState from as_dict() output (packed or not), e.g. the
        quantization-state entries of a bitsandbytes safetensors checkpoint
        (prefixes such as "weight." are stripped). Arrays may be numpy arrays
        or torch tensors."""
        qs_dict = dict(qs_dict)
        qs_keys = [k for k, v in qs_dict.items() if "quant_state" in k and is_array(v)]
        if "quant_type" not in qs_dict:
            if not qs_keys:
                raise _value_error("Expected packed or unpacked quant_state items, found neither",
                                   C.QEMBED_ERR_FORMAT)
            if len(qs_keys) != 1 or qs_keys[0].split(".")[-1] not in cls.valid_qs_type_keys:
                raise _value_error(f"There should be exactly one `quant_state` item with ending from "
                                   f"{cls.valid_qs_type_keys}. Detected {qs_keys}.", C.QEMBED_ERR_FORMAT)
        if len(qs_keys) == 1:
            qs_dict.update(_unpack_array_to_dict(qs_dict.pop(qs_keys[0])))
        qs_dict = {k.split(".")[-1]: v for k, v in qs_dict.items()}
        unknown = set(qs_dict) - set(cls.valid_qs_keys)
        if unknown:
            raise _value_error(f"unexpected quant_state keys: {sorted(unknown)}", C.QEMBED_ERR_FORMAT)

        def arr(key, dtype=None):
            a, bits = read(qs_dict[key])
            if bits:
                raise _type_error(f"{key}: bfloat16 is not a valid dtype here")
            return np.ascontiguousarray(a if dtype is None else a.astype(dtype, copy=False))

        if "nested_absmax" in qs_dict:
            offset = np.float32(float(qs_dict["nested_offset"]))
            state2 = cls(absmax=arr("nested_absmax", np.float32), blocksize=qs_dict["nested_blocksize"],
                         code=arr("nested_quant_map", np.float32), dtype=qs_dict["nested_dtype"])
        else:
            offset, state2 = None, None
        shape = qs_dict.get("shape")
        return cls(quant_type=qs_dict["quant_type"], absmax=arr("absmax"), blocksize=qs_dict["blocksize"],
                   code=arr("quant_map", np.float32), dtype=qs_dict["dtype"],
                   shape=tuple(shape) if shape is not None else None, offset=offset, state2=state2)

    def as_dict(self, packed=False):
        """The state as a dict with bitsandbytes' keys. packed=True returns only
        arrays: the non-array items go into a uint8 JSON array under
        "quant_state.bitsandbytes__<quant_type>" (the safetensors layout)."""
        qs = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": self.dtype,
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            qs.update({
                "nested_absmax": self.state2.absmax,
                "nested_blocksize": self.state2.blocksize,
                "nested_quant_map": np.array(self.state2.code, dtype=np.float32, copy=True),
                "nested_dtype": self.state2.dtype,
                "nested_offset": float(self.offset),
            })
        if not packed or self.quant_type is None:
            return qs
        arrays = {k: v for k, v in qs.items() if is_array(v)}
        rest = {k: v for k, v in qs.items() if not is_array(v)}
        arrays["quant_state.bitsandbytes__" + self.quant_type] = _pack_dict_to_array(rest)
        return arrays

    def to(self, device):
        """Accepted for compatibility; qembed states live on the CPU."""
        if device is not None and str(device) != "cpu":
            raise _value_error(f"qembed runs on the CPU; cannot move a QuantState to {device!r}")

    def __eq__(self, other):
        if not isinstance(other, QuantState):
            return False

        def close(a, b):
            if a is None or b is None:
                return a is b
            (a, a_bits), (b, b_bits) = read(a), read(b)
            if a_bits or b_bits:
                return False
            a, b = np.asarray(a), np.asarray(b)
            return a.shape == b.shape and bool(np.allclose(a.astype(np.float64), b.astype(np.float64), atol=1e-6))

        return bool(
            close(self.absmax, other.absmax)
            and self.shape == other.shape
            and close(self.code, other.code)
            and self.dtype == other.dtype
            and self.blocksize == other.blocksize
            and self.quant_type == other.quant_type
            and (self.offset == other.offset if self.offset is not None and other.offset is not None
                 else self.offset is other.offset)
            and (self.state2 == other.state2 if self.state2 is not None and other.state2 is not None
                 else self.state2 is other.state2)
        )

    __hash__ = None

    def __repr__(self):
        return (f"QuantState(quant_type={self.quant_type!r}, dtype={self.dtype!r}, shape={self.shape}, "
                f"blocksize={self.blocksize}, nested={self.nested})")


# --------------------------------------------------------------------------
# Nested statistics
# --------------------------------------------------------------------------


def _quantize_statistics(absmax, nested_blocksize):
    """(qabsmax uint8, nested_absmax f32, offset np.float32) of float32 absmax."""
    count = absmax.size
    qabsmax = np.empty(count, dtype=np.uint8)
    nested = np.empty(_absmax_count(count, nested_blocksize), dtype=np.float32)
    offset = ctypes.c_float()
    C._check(C.qembed_quantize_statistics(ptr(absmax, ctypes.c_float), count, nested_blocksize,
                                          ptr(qabsmax, ctypes.c_uint8), ptr(nested, ctypes.c_float),
                                          nested.size, ctypes.byref(offset)))
    return qabsmax, nested, np.float32(offset.value)


def _dequantize_statistics(qs):
    """The float32 absmax of a nested QuantState."""
    if qs.offset is None:
        raise _value_error("a nested QuantState needs an offset")
    offset = float(qs.offset)
    qabsmax = exact_array(qs.absmax, np.uint8, "quant_state.absmax").reshape(-1)
    s2 = qs.state2
    nested = exact_array(s2.absmax, np.float32, "quant_state.state2.absmax").reshape(-1)
    code = code_array(s2.code if s2.code is not None else _dynamic_code(), "quant_state.state2.code")
    out = np.empty(qabsmax.size, dtype=np.float32)
    C._check(C.qembed_dequantize_statistics(ptr(qabsmax, ctypes.c_uint8), qabsmax.size,
                                            ptr(nested, ctypes.c_float), nested.size,
                                            ptr(code, ctypes.c_float), int(s2.blocksize),
                                            offset, ptr(out, ctypes.c_float)))
    return out


# --------------------------------------------------------------------------
# Blockwise 8-bit
# --------------------------------------------------------------------------


def quantize_blockwise(A, code=None, absmax=None, out=None, blocksize=4096, nested=False):
    """Quantize A in blocks of `blocksize` values to 8-bit code indices.

    Returns (out, quant_state): out is uint8 with A's shape. code defaults to
    the signed dynamic map. With nested=True the absmax values are themselves
    quantized (offset = their mean; blocks of `blocksize`; signed dynamic map).
    `absmax`, when given, is a float32 array of ceil(n/blocksize) entries that
    receives the absmax values (not allowed with nested=True).

    A NaN/Inf in A raises ValueError naming the first one. The input is read
    once, so an `out`/`absmax` you passed may hold some blocks by then (its
    contents are unspecified); bad arguments raise before anything is written.
    """
    blocksize = int(blocksize)
    if blocksize <= 0:
        raise _value_error(f"blocksize must be positive, got {blocksize}")
    a, dcode, dname = float_input(A)
    n = a.size
    code_arr = code_array(code) if code is not None else _dynamic_code()
    nblocks = _absmax_count(n, blocksize)
    # bitsandbytes also takes an int8 out= and writes the code bytes into it
    if isinstance(out, np.ndarray) and out.dtype == np.int8:
        q_int8 = out_array(out, a.shape, np.int8)
        q = q_int8.view(np.uint8)
    else:
        q_int8 = None
        q = out_array(out, a.shape, np.uint8)
    am = _absmax_out(absmax, nblocks, "nested", nested)
    C._check(C.qembed_quantize_blockwise(a.ctypes.data, dcode, n,
                                         None if code is None else ptr(code_arr, ctypes.c_float), blocksize,
                                         ptr(q, ctypes.c_uint8), ptr(am, ctypes.c_float), am.size))
    code_copy = np.array(code_arr, dtype=np.float32, copy=True)
    if nested:
        qabsmax, nested_absmax, offset = _quantize_statistics(am, blocksize)
        state2 = QuantState(absmax=nested_absmax, code=np.array(_dynamic_code(), copy=True), blocksize=blocksize,
                            dtype="float32")
        state = QuantState(absmax=qabsmax, code=code_copy, blocksize=blocksize, dtype=dname, offset=offset,
                           state2=state2)
    else:
        state = QuantState(absmax=am, code=code_copy, blocksize=blocksize, dtype=dname)
    return (q if q_int8 is None else q_int8), state


def dequantize_blockwise(A, quant_state=None, absmax=None, code=None, out=None, blocksize=4096, nested=False):
    """Dequantize 8-bit code indices: out = code[A] * absmax[block].

    Either quant_state or absmax is required (code defaults to the signed
    dynamic map, blocksize to 4096, the output dtype to float32 without a
    quant_state). Returns an array of A's shape and quant_state.dtype.
    `nested` is accepted for compatibility (a nested quant_state is detected).
    """
    if quant_state is None and absmax is None:
        raise _value_error("dequantize_blockwise requires either quant_state or absmax", C.QEMBED_ERR_NULL_POINTER)
    a = exact_array(A, np.uint8, "A")
    if quant_state is None:
        quant_state = QuantState(absmax=absmax, code=code if code is not None else _dynamic_code(),
                                 blocksize=blocksize, dtype="float32")
    bs = int(quant_state.blocksize) if quant_state.blocksize is not None else 0
    if bs <= 0:
        raise _value_error(f"blocksize must be positive, got {quant_state.blocksize}")
    if quant_state.nested:
        am = _dequantize_statistics(quant_state)
    else:
        am = exact_array(quant_state.absmax, np.float32, "absmax").reshape(-1)
    code_arr = code_array(quant_state.code if quant_state.code is not None else _dynamic_code())
    dname = dtype_name(quant_state.dtype) or "float32"
    np_dtype = numpy_float_dtype(dname, "quant_state.dtype", bits=False)
    res = out_array(out, a.shape, np_dtype)
    C._check(C.qembed_dequantize_blockwise(ptr(a, ctypes.c_uint8), a.size, ptr(am, ctypes.c_float), am.size,
                                           ptr(code_arr, ctypes.c_float), bs, FLOAT_CODES[dname],
                                           res.ctypes.data))
    return res


# --------------------------------------------------------------------------
# 4-bit
# --------------------------------------------------------------------------


def _quant_type(quant_type):
    if quant_type not in _QUANT_TYPES:
        raise _value_error(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}", C.QEMBED_ERR_UNSUPPORTED)
    return _QUANT_TYPES[quant_type]


def _four_bit_blocksize(blocksize):
    if blocksize is None:
        return 64
    if isinstance(blocksize, bool) or int(blocksize) != blocksize or int(blocksize) not in _FOUR_BIT_BLOCKSIZES:
        raise _value_error(f"invalid blocksize {blocksize} (use one of {', '.join(map(str, _FOUR_BIT_BLOCKSIZES))})",
                           C.QEMBED_ERR_UNSUPPORTED)
    return int(blocksize)


def quantize_4bit(A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_type="fp4",
                  quant_storage=np.uint8):
    """Quantize A to packed 4-bit FP4/NF4 values, two per byte (element 2k in
    the high nibble). Returns (packed, quant_state); packed has shape
    ((n + 1) // 2, 1) and dtype uint8 (or `quant_storage`, a view of the same
    bytes). blocksize defaults to 64; compress_statistics quantizes the absmax
    values (offset = mean, blocks of 256, signed dynamic map). A NaN/Inf
    raises ValueError naming the first one; `out`/`absmax` passed in are
    unspecified then (one pass over A, as quantize_blockwise)."""
    blocksize = _four_bit_blocksize(blocksize)
    qt = _quant_type(quant_type)
    a, dcode, dname = float_input(A)
    n = a.size
    nbytes = ctypes.c_int64()
    C._check(C.qembed_4bit_packed_bytes(n, ctypes.byref(nbytes)))
    storage = storage_dtype(quant_storage)
    if nbytes.value % storage.itemsize:
        raise _value_error(f"quant_storage {storage}: {nbytes.value} packed bytes are not a whole number "
                           f"of {storage.itemsize}-byte elements", C.QEMBED_ERR_SHAPE)
    if out is not None:
        res = out_array(out, (nbytes.value // storage.itemsize, 1), storage)
        packed = res.reshape(-1).view(np.uint8)
    else:
        packed = np.empty(nbytes.value, dtype=np.uint8)
        res = None
    am = _absmax_out(absmax, _absmax_count(n, blocksize), "compress_statistics", compress_statistics)
    C._check(C.qembed_quantize_4bit(a.ctypes.data, dcode, n, blocksize, qt, ptr(packed, ctypes.c_uint8),
                                    packed.size, ptr(am, ctypes.c_float), am.size))
    if res is None:
        res = packed.view(storage).reshape(-1, 1)
    code = get_4bit_type(quant_type)
    if compress_statistics:
        qabsmax, nested_absmax, offset = _quantize_statistics(am, 256)
        state2 = QuantState(absmax=nested_absmax, code=np.array(_dynamic_code(), copy=True), blocksize=256,
                            dtype="float32")
        state = QuantState(absmax=qabsmax, shape=a.shape, dtype=dname, blocksize=blocksize, code=code,
                           quant_type=quant_type, offset=offset, state2=state2)
    else:
        state = QuantState(absmax=am, shape=a.shape, dtype=dname, blocksize=blocksize, code=code,
                           quant_type=quant_type)
    return res, state


def quantize_fp4(A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=np.uint8):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "fp4", quant_storage)


def quantize_nf4(A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=np.uint8):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "nf4", quant_storage)


def dequantize_4bit(A, quant_state=None, absmax=None, out=None, blocksize=None, quant_type="fp4"):
    """Dequantize packed 4-bit values: out = level[nibble] * absmax[block].

    Without quant_state, absmax and out are required (out gives the shape and
    dtype). Returns an array of quant_state.shape and quant_state.dtype.
    Like bitsandbytes, a packed input given in the transposed (1, bytes) form
    returns the output transposed.
    """
    if quant_state is None:
        if absmax is None or out is None:
            raise _value_error("dequantize_4bit requires both absmax and out when quant_state is not provided",
                               C.QEMBED_ERR_NULL_POINTER)
        if not isinstance(out, np.ndarray):
            raise _type_error(f"out must be a numpy array, got {type(out).__name__}")
        quant_state = QuantState(absmax=absmax, shape=out.shape, dtype=dtype_name(out.dtype),
                                 blocksize=64 if blocksize is None else blocksize, quant_type=quant_type)
    bs = _four_bit_blocksize(quant_state.blocksize)
    qt = _quant_type(quant_state.quant_type)
    dname = dtype_name(quant_state.dtype)
    np_dtype = numpy_float_dtype(dname, "quant_state.dtype", bits=False)
    if quant_state.shape is None:
        raise _value_error("quant_state.shape is required for 4-bit dequantization")
    shape = quant_state.shape
    n = int(math.prod(shape))
    a, _ = read(A)  # any element type: its bytes are the packed values (quant_storage)
    a_bytes = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    if quant_state.nested:
        am = _dequantize_statistics(quant_state)
    else:
        am = exact_array(quant_state.absmax, np.float32, "absmax").reshape(-1)
    res = out_array(out, shape, np_dtype)
    C._check(C.qembed_dequantize_4bit(ptr(a_bytes, ctypes.c_uint8), a_bytes.size, n, ptr(am, ctypes.c_float),
                                      am.size, bs, qt, FLOAT_CODES[dname], res.ctypes.data))
    a_shape = a.shape
    if len(a_shape) == 2 and a_shape[0] == 1 and res.ndim <= 2:
        return res.T
    return res


def dequantize_fp4(A, quant_state=None, absmax=None, out=None, blocksize=None):
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "fp4")


def dequantize_nf4(A, quant_state=None, absmax=None, out=None, blocksize=None):
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "nf4")


# --------------------------------------------------------------------------
# Int8 row-wise
# --------------------------------------------------------------------------


def _rows_cols(shape, name):
    if len(shape) == 0:
        raise _value_error(f"{name}: expected at least one dimension", C.QEMBED_ERR_SHAPE)
    cols = int(shape[-1])
    rows = int(math.prod(shape[:-1]))
    return rows, cols


def int8_vectorwise_quant(A, threshold=0.0):
    """Row-wise int8 quantization (LLM.int8): row_stats[r] = max |A[r, :]| and
    out = round(A * 127 / row_stats[r]). Rows are all dimensions but the last.

    With threshold > 0, elements with |x| >= threshold are outliers: excluded
    from row_stats, and every column holding one is zeroed in out and listed
    in outlier_cols (int64, possibly empty). With threshold == 0 outlier_cols
    is None. Returns (out int8 of A's shape, row_stats float32, outlier_cols).
    """
    threshold = float(threshold)
    a, dcode, _ = float_input(A)
    rows, cols = _rows_cols(a.shape, "A")
    out = out_array(None, a.shape, np.int8)
    row_stats = np.empty(rows, dtype=np.float32)
    if threshold > 0:
        cols_buf = np.empty(max(cols, 1), dtype=np.int32)
        count = ctypes.c_int64()
        cols_ptr, count_ptr = ptr(cols_buf, ctypes.c_int32), ctypes.byref(count)
    else:
        cols_buf, count, cols_ptr, count_ptr = None, None, None, None
    C._check(C.qembed_int8_vectorwise_quant(a.ctypes.data, dcode, rows, cols, threshold,
                                            ptr(out, ctypes.c_int8), ptr(row_stats, ctypes.c_float),
                                            cols_ptr, count_ptr))
    outlier_cols = cols_buf[:count.value].astype(np.int64) if cols_buf is not None else None
    return out, row_stats, outlier_cols


def int8_vectorwise_dequant(A, stats):
    """out = A * stats[row] * (1/127), float32, A's shape."""
    a = exact_array(A, np.int8, "A")
    rows, cols = _rows_cols(a.shape, "A")
    st = exact_array(stats, np.float32, "stats", size=rows).reshape(-1)
    out = out_array(None, a.shape, np.float32)
    C._check(C.qembed_int8_vectorwise_dequant(ptr(a, ctypes.c_int8), rows, cols, ptr(st, ctypes.c_float),
                                              C.QEMBED_DTYPE_F32, out.ctypes.data))
    return out
