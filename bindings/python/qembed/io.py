"""qembed.io: safetensors and .npy files, like ``safetensors.numpy``.

    qembed.save_file({"weight": w, "ids": ids}, "model.safetensors", metadata={"format": "np"})
    tensors = qembed.load_file("model.safetensors")   # {"weight": ..., "ids": ...}
    meta = qembed.io.load_metadata("model.safetensors")  # {"format": "np"}
    arr = qembed.load_file("table.npy")["array"]

Files are read and written by libqembed: a file is mapped and validated on
open (header length, JSON, dtypes, shapes, offsets), and saves are atomic (a
temporary file in the same directory is renamed over the path, so a failed
save leaves the old file intact). Malformed files raise ValueError carrying
the library's message; a missing file raises OSError.

Element types. save_file writes float32, float16, bfloat16 (``ml_dtypes``
arrays), uint8, int8, int32 and int64. load_file also reads the other
safetensors types numpy can hold (F64, I16, U16, U32, U64, BOOL, and the F8
types when ml_dtypes is installed). Without ml_dtypes, BF16 tensors come back
as uint16 arrays of their bit patterns (a warning says so once per call).
"""

import ctypes
import json
import os
import warnings

import numpy as np

from . import _capi as C
from ._arrays import BFLOAT16, contiguous, ml_dtypes, to_numpy
from ._capi import QembedTypeError, QembedValueError  # noqa: F401 (the error names qembed.io had)
from ._capi import type_error as _type_error, value_error as _value_error
from ._handle import Handle, encode_path, encode_text, new_struct, out_handle

# The array helpers qembed.io used to hold, still importable from here; their
# home is qembed._arrays.
from ._arrays import (convert_float, float_array, float_dtype_code, float_dtype_name, index_array,  # noqa: E402,F401
                      numpy_float_dtype, round_to_bf16_bits)

__all__ = ["save_file", "load_file", "load_metadata", "save_npy", "BFLOAT16"]

# numpy dtype -> qembed dtype code, for the types the C API writes.
_WRITE_CODES = {
    np.dtype("<f4"): C.QEMBED_DTYPE_F32,
    np.dtype("<f2"): C.QEMBED_DTYPE_F16,
    np.dtype("u1"): C.QEMBED_DTYPE_U8,
    np.dtype("i1"): C.QEMBED_DTYPE_I8,
    np.dtype("<i4"): C.QEMBED_DTYPE_I32,
    np.dtype("<i8"): C.QEMBED_DTYPE_I64,
}
if BFLOAT16 is not None:
    _WRITE_CODES[BFLOAT16] = C.QEMBED_DTYPE_BF16

# safetensors dtype name -> numpy dtype, for reading.
_READ_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_READ_FALLBACK = {"BF16": (np.dtype("<u2"), "uint16"), "F8_E4M3": (np.dtype("u1"), "uint8"),
                  "F8_E5M2": (np.dtype("u1"), "uint8")}
if ml_dtypes is not None:
    _READ_DTYPES["BF16"] = BFLOAT16
    _READ_DTYPES["F8_E4M3"] = np.dtype(ml_dtypes.float8_e4m3fn)
    _READ_DTYPES["F8_E5M2"] = np.dtype(ml_dtypes.float8_e5m2)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


class TensorFile:
    """A validated tensor file (safetensors or .npy), read into memory it
    owns (with ``mmap=True``: mapped, zero copy; the file must then not be
    truncated or rewritten while it is open, as with numpy.memmap). Tensors
    are copied out by ``get``/``tensors``; close() releases the bytes (also
    on exit of a ``with`` block and when the object is collected)."""

    def __init__(self, path, mmap=False):
        self.path = os.fspath(path)
        out = out_handle()
        C._check(C.qembed_tensor_file_open_ex(encode_path(self.path), C.QEMBED_OPEN_MMAP if mmap else 0,
                                              ctypes.byref(out)))
        self._handle = Handle(out.value, C.qembed_tensor_file_close, "tensor_file")

    def close(self):
        h, self._handle = getattr(self, "_handle", None), None
        if h is not None:
            h.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def _ptr(self):
        if self._handle is None:
            raise _value_error(f"{self.path}: the file is closed")
        return self._handle.ptr

    def __len__(self):
        n = ctypes.c_int64()
        C._check(C.qembed_tensor_file_count(self._ptr(), ctypes.byref(n)))
        return n.value

    def info(self, i):
        info = new_struct(C.qembed_tensor_info)
        C._check(C.qembed_tensor_file_info(self._ptr(), i, ctypes.byref(info)))
        return info

    def keys(self):
        return [self.info(i).name.decode("utf-8") for i in range(len(self))]

    def _array(self, info, bf16_note):
        name = info.name.decode("utf-8")
        dtype_name = info.dtype_name.decode("ascii")
        shape = tuple(info.shape[k] for k in range(info.ndim))
        dt = _READ_DTYPES.get(dtype_name)
        if dt is None:
            if dtype_name not in _READ_FALLBACK:
                raise _type_error(f"tensor '{name}': dtype {dtype_name} cannot be represented in numpy")
            dt, as_name = _READ_FALLBACK[dtype_name]
            bf16_note.append(f"'{name}' ({dtype_name} as {as_name})")
        if info.nbytes == 0:
            return np.zeros(shape, dtype=dt)
        raw = ctypes.string_at(info.data, info.nbytes)  # a copy out of the mapping
        return np.frombuffer(raw, dtype=dt).reshape(shape).copy()

    def get(self, name):
        index = ctypes.c_int64()
        C._check(C.qembed_tensor_file_find(self._ptr(), encode_text(name, "tensor name"), ctypes.byref(index)))
        note = []
        arr = self._array(self.info(index.value), note)
        _warn_fallback(note)
        return arr

    def tensors(self):
        note = []
        out = {}
        for i in range(len(self)):
            info = self.info(i)
            out[info.name.decode("utf-8")] = self._array(info, note)
        _warn_fallback(note)
        return out

    def metadata_value(self, key):
        value = ctypes.c_char_p()
        C._check(C.qembed_tensor_file_metadata(self._ptr(), encode_text(key, "metadata key"), ctypes.byref(value)))
        return None if value.value is None else value.value.decode("utf-8")


def _warn_fallback(note):
    if note:
        warnings.warn("qembed.load_file: " + ", ".join(note) + " returned as raw bits; install ml_dtypes "
                      "for native bfloat16/float8 arrays", stacklevel=3)


def load_file(filename):
    """All tensors of a safetensors file (or {"array": a} for a .npy file) as
    a dict of freshly allocated numpy arrays, in the file's order.

    Raises OSError when the file cannot be opened and ValueError (with the
    library's message) when it is malformed."""
    with TensorFile(filename) as f:
        return f.tensors()


def load_metadata(filename):
    """The "__metadata__" dict of a safetensors file (None when it has none,
    and for .npy files). The file is validated by the library first."""
    path = os.fspath(filename)
    with TensorFile(path) as f:
        if path.endswith(".npy"):
            return None
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n).decode("utf-8"))
        meta = header.get("__metadata__")
        if meta is None:
            return None
        # The library's view of every value must agree with this parse.
        for k, v in meta.items():
            if f.metadata_value(k) != v:
                raise _value_error(f"{path}: metadata '{k}' read differently by qembed", C.QEMBED_ERR_FORMAT)
        return dict(meta)


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _desc(name, arr, keep):
    """A qembed_tensor_desc for one array (kept alive in `keep`)."""
    if not isinstance(name, str):
        raise _type_error(f"tensor names must be str, got {type(name).__name__}")
    arr = to_numpy(arr)
    dt = arr.dtype
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
        arr = arr.astype(dt)
    code = _WRITE_CODES.get(np.dtype(dt))
    if code is None:
        raise _type_error(f"tensor '{name}': dtype {arr.dtype} cannot be saved by qembed (it writes float32, "
                          f"float16, bfloat16 (ml_dtypes), uint8, int8, int32 and int64)")
    if arr.ndim > C.QEMBED_MAX_DIMS:
        raise _value_error(f"tensor '{name}': {arr.ndim} dimensions (at most {C.QEMBED_MAX_DIMS})",
                           C.QEMBED_ERR_SHAPE)
    arr = contiguous(arr)
    keep.append(arr)
    encoded = encode_text(name, "tensor name")
    keep.append(encoded)
    d = C.qembed_tensor_desc()
    d.name = encoded
    d.dtype = code
    d.ndim = arr.ndim
    for k, s in enumerate(arr.shape):
        d.shape[k] = s
    d.data = arr.ctypes.data if arr.size else None
    if d.data is None:
        # the library wants a pointer even for empty tensors
        dummy = np.zeros(1, dtype=np.uint8)
        keep.append(dummy)
        d.data = dummy.ctypes.data
    return d


def write_json(path, obj):
    """Write `obj` as JSON atomically (a temporary file, fsync, rename): a
    crash leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_file(tensors, filename, metadata=None):
    """Write a dict of numpy arrays as a safetensors file, atomically.

    metadata: an optional dict of str -> str stored under "__metadata__".
    Raises TypeError (also a ValueError) for an unsupported dtype or a
    non-string metadata entry, ValueError for what the library rejects, and
    OSError when the file cannot be written; the old file is kept then."""
    if not isinstance(tensors, dict):
        raise _type_error(f"tensors: expected a dict of name -> array, got {type(tensors).__name__}")
    keep = []
    descs = [_desc(name, arr, keep) for name, arr in tensors.items()]
    arr_t = (C.qembed_tensor_desc * max(len(descs), 1))(*descs)
    keys = values = None
    n_meta = 0
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _type_error(f"metadata: expected a dict of str -> str, got {type(metadata).__name__}")
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise _type_error(f"metadata: keys and values must be str, got {k!r}: {v!r}")
        n_meta = len(metadata)
        enc_k = [encode_text(k, "metadata key") for k in metadata]
        enc_v = [encode_text(v, "metadata value") for v in metadata.values()]
        keep += enc_k + enc_v
        keys = (ctypes.c_char_p * max(n_meta, 1))(*enc_k)
        values = (ctypes.c_char_p * max(n_meta, 1))(*enc_v)
    C._check(C.qembed_save_safetensors(encode_path(filename), arr_t, len(descs), keys, values, n_meta))


def save_npy(array, filename):
    """Write one array as a .npy file, atomically (not bfloat16: numpy's
    format has no such type)."""
    keep = []
    d = _desc("array", array, keep)
    C._check(C.qembed_save_npy(encode_path(filename), ctypes.byref(d)))
