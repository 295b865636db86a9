"""Arrays between Python and libqembed: every conversion rule, once.

Every input array of the binding goes through numpy: an ndarray as it is;
an object with ``__dlpack__`` (torch CPU tensors and Parameters, JAX CPU
arrays, CuPy/torch GPU tensors are refused) through ``np.from_dlpack``, a
zero-copy view; anything with the buffer protocol or
``__array_interface__`` (array.array, memoryview, bytes-likes) through
``np.asarray``, also a view. Only a non-contiguous input is copied, by the
caller's ``np.ascontiguousarray``. torch dtypes are accepted wherever a
dtype is (``quant_storage=torch.uint8``).

Float element types are float32, float16 and bfloat16; bfloat16 arrays are
``ml_dtypes.bfloat16`` when that package is importable (``BFLOAT16``). A
torch bfloat16 tensor read without it is a uint16 array of its bit patterns
(``read`` says so). qembed.functional, qembed.io, qembed.nn and qembed.optim
take these helpers from here; nothing here knows about layers or files.
"""

import ctypes
import sys

import numpy as np

from . import _capi as C
from . import _pool
from ._capi import QembedTypeError, type_error, value_error

try:  # bfloat16 (and the float8 types qembed.io reads) are optional.
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    ml_dtypes = None
    BFLOAT16 = None

#: float dtype name -> qembed dtype code, and back.
FLOAT_CODES = {"float32": C.QEMBED_DTYPE_F32, "float16": C.QEMBED_DTYPE_F16, "bfloat16": C.QEMBED_DTYPE_BF16}
FLOAT_NAMES = {v: k for k, v in FLOAT_CODES.items()}

_FLOATS = "float32, float16 or bfloat16"
_ALIASES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}

# DLPack device types whose memory the CPU can read: kDLCPU, kDLCUDAHost
# (pinned host memory), kDLCUDAManaged, kDLROCMHost.
_CPU_DEVICES = {1: "CPU", 3: "CUDA host", 13: "CUDA managed", 11: "ROCm host"}
_DEVICE_NAMES = {2: "CUDA", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm", 12: "ext_dev", 14: "oneAPI"}

# --------------------------------------------------------------------------
# Reading objects of other libraries
# --------------------------------------------------------------------------


def check_cpu(obj, what=None):
    """TypeError unless obj's memory is on the CPU (DLPack objects only)."""
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is None:
        return
    kind = int(dev()[0])
    if kind not in _CPU_DEVICES:
        name = _DEVICE_NAMES.get(kind, f"device type {kind}")
        raise QembedTypeError(C.QEMBED_ERR_INVALID_ARGUMENT,
                              f"{what or type(obj).__name__}: the array is in {name} memory; qembed runs on the "
                              f"CPU: move it first (e.g. tensor.cpu())")


def from_dlpack(obj):
    """A zero-copy numpy view of a CPU DLPack object."""
    check_cpu(obj)
    if hasattr(obj, "detach"):
        obj = obj.detach()
    return np.from_dlpack(obj)


class Bf16Bits(np.ndarray):
    """uint16 bit patterns that stand for bfloat16 values: a view of a torch
    bfloat16 tensor made without ml_dtypes (qembed.interop wraps such
    tensors in place). read() reports them as bfloat16."""


def read(x):
    """(ndarray, bf16_bits) of any input: ndarrays as they are, DLPack
    objects as zero-copy views, anything else through np.asarray.
    bf16_bits is True when the array is uint16 bit patterns standing for
    bfloat16 values (a torch bfloat16 tensor read without ml_dtypes)."""
    if isinstance(x, np.ndarray):
        return x, isinstance(x, Bf16Bits) and x.dtype == np.uint16
    check_cpu(x)
    if str(getattr(x, "dtype", "")) == "torch.bfloat16":
        torch = sys.modules["torch"]
        bits = np.from_dlpack(x.detach().contiguous().view(torch.int16)).view(np.uint16)
        return (bits, True) if BFLOAT16 is None else (bits.view(BFLOAT16), False)
    if hasattr(x, "__dlpack__"):
        try:
            return from_dlpack(x), False
        except (TypeError, BufferError, RuntimeError) as e:
            if isinstance(e, QembedTypeError):
                raise
            raise type_error(f"cannot read {type(x).__name__} through DLPack: {e}") from e
    return np.asarray(x), False


def to_numpy(x):
    """An ndarray for ndarrays, torch tensors (bf16 as ml_dtypes or uint16
    bits) and anything np.asarray accepts."""
    return read(x)[0]


def is_array(v):
    """True for an ndarray or an object exporting __dlpack__ (a tensor)."""
    return isinstance(v, np.ndarray) or hasattr(v, "__dlpack__")


# --------------------------------------------------------------------------
# Memory: layout, pointers, views of library memory
# --------------------------------------------------------------------------


def contiguous(arr, dtype=None):
    """arr as a C-contiguous array of dtype (a copy only when needed). Unlike
    np.ascontiguousarray, 0-d arrays stay 0-d."""
    arr = np.asarray(arr, dtype=dtype)
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")


def ptr(arr, ctype):
    """A typed ctypes pointer to a contiguous numpy array's data."""
    return arr.ctypes.data_as(ctypes.POINTER(ctype))


class View:
    """Exposes a block of library memory to numpy through the array interface.
    It holds the Handle of the object owning the memory, and numpy keeps this
    object as the array's ``base``: the memory outlives every view."""

    __slots__ = ("__array_interface__", "owner")

    def __init__(self, address, shape, dtype, owner, readonly=False):
        self.__array_interface__ = {"data": (address, readonly), "shape": tuple(shape),
                                    "typestr": np.dtype(dtype).str, "version": 3}
        self.owner = owner


def view(address, shape, dtype, owner):
    """A numpy array over `address` that keeps `owner` alive (no copy)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "V":  # ml_dtypes.bfloat16 has no array-interface typestr: view its bits
        return np.asarray(View(address, shape, np.uint16, owner)).view(dtype)
    return np.asarray(View(address, shape, dtype, owner))


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------


def storage_dtype(d):
    """np.dtype of a numpy dtype, a dtype name or a torch dtype (torch.uint8)."""
    text = str(d)
    if text.startswith("torch."):
        d = text[len("torch."):]
    return np.dtype(d)


def dtype_name(dtype):
    """Canonical name ("float32", "float16", "bfloat16") of a numpy dtype,
    torch dtype or string; other names are returned unchanged."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name.startswith("torch."):
        name = name[len("torch."):]
    return _ALIASES.get(name, name)


def float_dtype_name(dtype, what="dtype"):
    """Canonical name ("float32", "float16", "bfloat16") of a float dtype given
    as a numpy dtype, ml_dtypes.bfloat16, torch dtype or string; None means
    float32. Anything else raises TypeError (also a ValueError)."""
    if dtype is None:
        return "float32"
    name = dtype_name(dtype)
    if name not in FLOAT_CODES:
        raise type_error(f"{what}: {dtype!r} is not supported (use {_FLOATS})")
    return name


def float_dtype_code(name):
    return FLOAT_CODES[name]


def numpy_float_dtype(name, what="dtype", bits=True):
    """The numpy dtype arrays of this float type are returned as. bfloat16
    is ml_dtypes.bfloat16 when installed; without it, uint16 (its bit
    patterns), or with bits=False a TypeError naming `what` (for results
    that must hold bfloat16 values)."""
    if name not in FLOAT_CODES:
        raise type_error(f"{what}: dtype {name} is not supported (use {_FLOATS})")
    if name != "bfloat16":
        return np.dtype(name)
    if BFLOAT16 is not None:
        return BFLOAT16
    if bits:
        return np.dtype(np.uint16)
    raise type_error(f"{what}: bfloat16 arrays need the ml_dtypes package (pip install ml_dtypes)")


def float_code(arr, bf16_bits=False):
    """The qembed dtype code of a float32, float16 or bfloat16 array (bit
    patterns too, with bf16_bits from read()), or None for any other."""
    if bf16_bits or (BFLOAT16 is not None and arr.dtype == BFLOAT16):
        return C.QEMBED_DTYPE_BF16
    if arr.dtype == np.float32:
        return C.QEMBED_DTYPE_F32
    if arr.dtype == np.float16:
        return C.QEMBED_DTYPE_F16
    return None


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def float_array(x, name, allow_cast=True):
    """(C-contiguous array, qembed dtype code) of a float input.

    float32, float16 and bfloat16 pass through (bfloat16 as ml_dtypes or as
    bit patterns). With allow_cast (qembed.nn's rule, torch's), float64, integer
    and bool inputs and Python sequences are converted to float32; without
    it (bitsandbytes' rule) they raise TypeError, as complex and
    non-numeric inputs always do."""
    arr, bits = read(x)
    code = float_code(arr, bits)
    if code is not None:
        return contiguous(arr), code
    if allow_cast and arr.dtype.kind in "fiub":
        return contiguous(arr, "<f4"), C.QEMBED_DTYPE_F32
    raise type_error(f"{name}: expected a {_FLOATS} array, got dtype {arr.dtype}")


def float_input(A, name="A"):
    """(contiguous array of at least one dimension, qembed dtype code, dtype
    name) of a qembed.functional input: Python sequences and scalars become
    float32; arrays must already be float32, float16 or bfloat16."""
    if isinstance(A, (list, tuple, float, int)):
        A = np.asarray(A, dtype=np.float32)
    arr, code = float_array(A, name, allow_cast=False)
    return np.ascontiguousarray(arr), code, FLOAT_NAMES[code]


def exact_array(x, dtype, name, size=None):
    """x as a contiguous array of exactly `dtype` (no value conversion for
    non-float dtypes); `size`, when given, is the required element count."""
    arr, bits = read(x)
    if bits:
        raise type_error(f"{name}: expected {np.dtype(dtype).name}, got bfloat16")
    arr = np.ascontiguousarray(arr)
    if arr.dtype != dtype:
        if np.dtype(dtype).kind == "f" and arr.dtype.kind == "f":
            arr = arr.astype(dtype)
        else:
            raise type_error(f"{name}: expected dtype {np.dtype(dtype).name}, got {arr.dtype}")
    if size is not None and arr.size != size:
        raise value_error(f"{name}: expected {size} elements, got {arr.size}", C.QEMBED_ERR_SHAPE)
    return arr


def code_array(code, name="code"):
    """A 256-entry float32 code (the C functions read exactly 256 floats)."""
    arr = exact_array(code, np.float32, name)
    if arr.size != C.QEMBED_CODE_SIZE:
        raise value_error(f"{name}: a code has {C.QEMBED_CODE_SIZE} entries, got {arr.size}", C.QEMBED_ERR_SHAPE)
    return arr.reshape(-1)


def index_array(x, name="input"):
    """(C-contiguous array, qembed dtype code) of an index input: int32 and
    int64 pass through; other integer types are converted to int64."""
    arr, bits = read(x)
    if bits or arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        got = "bfloat16" if bits else arr.dtype
        raise type_error(f"{name}: indices must be an integer array (int32 or int64), got dtype {got}")
    if arr.dtype == np.dtype("<i8"):
        return contiguous(arr), C.QEMBED_DTYPE_I64
    if arr.dtype == np.dtype("<i4"):
        return contiguous(arr), C.QEMBED_DTYPE_I32
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.size and int(arr.max()) > 2 ** 63 - 1:
        raise value_error(f"{name}: index {int(arr.max())} is out of range", C.QEMBED_ERR_OUT_OF_RANGE)
    return contiguous(arr, "<i8"), C.QEMBED_DTYPE_I64


# --------------------------------------------------------------------------
# Conversions between float types
# --------------------------------------------------------------------------


def round_to_bf16_bits(a):
    """uint16 bit patterns of float32 values rounded to bfloat16 (nearest
    even), for when ml_dtypes is missing."""
    bits = contiguous(a, "<f4").view(np.uint32)
    nan = np.isnan(a)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    out = rounded.astype(np.uint16)
    out[nan] = np.uint16(0x7FC0)
    return out


def convert_float(arr, code, name):
    """arr (of dtype code) converted to the float type `name`, as
    (contiguous array, code)."""
    target = FLOAT_CODES[name]
    if code == target:
        return arr, code
    if name == "bfloat16" and BFLOAT16 is None:
        if code == C.QEMBED_DTYPE_F16:
            arr = arr.astype(np.float32)
        return round_to_bf16_bits(arr), target
    if code == C.QEMBED_DTYPE_BF16 and BFLOAT16 is None:  # bits -> float32 first
        arr = (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return contiguous(arr.astype(numpy_float_dtype(name))), target


# --------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------


def out_array(out, shape, dtype, name="out"):
    """A fresh output array, or the caller's `out` after checking that it is
    a writeable C-contiguous ndarray of exactly this shape and dtype
    (TypeError for the kind of object and the dtype, ValueError otherwise).
    Fresh outputs of 4 MiB or more come from the output cache (qembed._pool)."""
    shape = tuple(int(s) for s in shape)
    if out is None:
        return _pool.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise type_error(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise type_error(f"{name} must be a {np.dtype(dtype).name} array, got dtype {out.dtype}")
    if tuple(out.shape) != shape:
        raise value_error(f"{name} must be of shape {shape}, got {tuple(out.shape)}", C.QEMBED_ERR_SHAPE)
    if not out.flags.c_contiguous:
        raise value_error(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise value_error(f"{name} must be writeable; it is read-only")
    return out
