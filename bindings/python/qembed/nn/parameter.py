"""qembed.nn.Parameter: a tensor an optimizer can train.

A layer's parameters ("weight", "norm.weight", "norm.bias") view the layer's
memory. A standalone parameter is made from an array:

    p = qembed.nn.Parameter(np.zeros((1000, 64), np.float32))    # a copy
    w = qembed.nn.Parameter(torch_tensor, copy=False)             # wraps its memory
    w.grad = g              # a float32 C-contiguous g is wrapped (as torch's p.grad = g)
    w.grad[...] = g2        # writes into the gradient
    w.grad = None           # no gradient: the optimizers skip w
    opt = qembed.optim.AdamW8bit([p, w] + list(emb.parameters()))

Wrapping (copy=False) keeps a reference to the source object, so its memory
stays alive while the Parameter (or an optimizer holding it) does; the
caller must not resize it (numpy ``resize``, torch ``resize_``/``set_``) while
the Parameter lives. A tensor of more than two dimensions is kept by the
library as (shape[0], product of the rest): the optimizers are elementwise,
and ``data``/``grad`` keep the original shape.
"""

import ctypes

import numpy as np

from .. import _arrays
from .. import _capi as C
from .._arrays import FLOAT_NAMES, view as _view
from .._capi import type_error as _type_error, value_error as _value_error
from .._handle import Handle, encode_text, new_struct, out_handle

__all__ = ["Parameter", "SparseGrad"]

_OVERRIDE_KEYS = {"optim_bits": C.QEMBED_OVERRIDE_OPTIM_BITS, "lr": C.QEMBED_OVERRIDE_LR,
                  "beta1": C.QEMBED_OVERRIDE_BETA1, "beta2": C.QEMBED_OVERRIDE_BETA2, "eps": C.QEMBED_OVERRIDE_EPS,
                  "weight_decay": C.QEMBED_OVERRIDE_WEIGHT_DECAY}


def _c_shape(shape):
    """The library's (ndim, shape) of a tensor shape: 0-d as (1,), more than
    two dimensions as (shape[0], product of the rest)."""
    if len(shape) == 0:
        return 1, (1,)
    if len(shape) <= 2:
        return len(shape), tuple(shape)
    return 2, (shape[0], int(np.prod(shape[1:], dtype=np.int64)))


def _wrappable(x, what):
    """(array view, dtype code, keep-alive object) of memory that can be
    wrapped without a copy: C-contiguous, writeable, float32/16 or bfloat16."""
    _arrays.check_cpu(x, what)
    arr, bits = _arrays.read(x)
    code = _arrays.float_code(arr, bits)
    if code is None:
        raise _type_error(f"{what}: only float32, float16 and bfloat16 memory can be wrapped, got {arr.dtype} "
                          f"(use copy=True to convert)")
    if not arr.dtype.isnative:
        raise _type_error(f"{what}: the array is not in native byte order (use copy=True)")
    if not arr.flags.c_contiguous:
        raise _value_error(f"{what}: only C-contiguous memory can be wrapped (use copy=True)")
    if not arr.flags.writeable:
        raise _value_error(f"{what}: the array is read-only; the optimizer writes into a wrapped parameter")
    if arr.size == 0:
        raise _value_error(f"{what}: the array is empty", C.QEMBED_ERR_SHAPE)
    return arr, code


def _sparse_grad(ptr, shape):
    """The SparseGrad (a copy) of a sparse parameter of `shape` (as the
    library holds it: rows x cols), or None while it has no rows."""
    nnz = ctypes.c_int64()
    C._check(C.qembed_param_sparse_grad(ptr, ctypes.byref(nnz), None, 0, None, 0))
    if nnz.value == 0:
        return None
    cols = shape[1] if len(shape) == 2 else 1
    rows = np.empty(nnz.value, dtype=np.int64)
    values = np.empty((nnz.value, cols), dtype=np.float32)
    C._check(C.qembed_param_sparse_grad(ptr, ctypes.byref(nnz), rows.ctypes.data_as(C.P_i64), rows.size,
                                        values.ctypes.data_as(C.P_f32), values.size))
    return SparseGrad(rows[:nnz.value], values[:nnz.value], shape)


def _first_non_finite(arr):
    bad = np.flatnonzero(~np.isfinite(arr.reshape(-1).astype(np.float32, copy=False)))
    return int(bad[0]) if bad.size else None


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------


class SparseGrad:
    """The coalesced gradient of a sparse layer: ``indices`` (sorted, distinct
    row ids, int64) and ``values`` (one summed row per index, float32), copies
    taken when ``.grad`` was read. ``to_dense()`` gives the full matrix."""

    def __init__(self, indices, values, shape):
        self.indices = indices
        self.values = values
        self.shape = tuple(shape)

    def to_dense(self):
        out = np.zeros(self.shape, dtype=np.float32)
        out[self.indices] = self.values
        return out

    def __repr__(self):
        return f"SparseGrad(nnz_rows={len(self.indices)}, shape={self.shape})"


class Parameter:
    """A tensor the optimizers train: a layer's ("weight", "norm.weight",
    "norm.bias"; made by the layer) or standalone, ``Parameter(data,
    requires_grad=True, copy=True, name=None)``:

    - ``copy=True`` (the default): the library owns a copy of ``data``
      (float32, float16 or bfloat16 kept as they are; other numeric inputs
      become float32), validated finite.
    - ``copy=False``: the library wraps ``data``'s memory with no copy (a
      C-contiguous, writeable float32/float16/bfloat16 numpy array, torch CPU
      tensor or buffer): optimizer steps write into it, and every change made
      through the source is seen by the next step.

    ``data`` views the parameter's memory (f32, f16, or bf16: ml_dtypes.bfloat16
    when installed, else uint16 bits); assigning ``p.data = x`` copies x in
    (converted to the parameter's dtype, validated first). ``grad`` is None
    until a backward or an assignment gives it one, then a float32 array of
    the parameter's shape that is the gradient's memory, or a SparseGrad copy
    for sparse layers (None while it is empty). ``p.grad = g`` wraps g when it
    is a C-contiguous writeable float32 array of the same shape (as torch's
    ``p.grad = g``: the same memory, not a copy) and copies it otherwise
    (float16/bfloat16, strided); it is checked finite either way.
    ``p.grad = None`` drops the gradient."""

    def __init__(self, data=None, requires_grad=True, copy=True, name=None):
        if data is None:
            raise _type_error("Parameter: data is required (an array of the parameter's values)")
        if isinstance(data, Parameter):
            data = data.data
        label = name or "param"
        self._source = None  # the wrapped object, kept alive
        if copy:
            arr, code = _arrays.float_array(data, label)
            if arr.size == 0:
                raise _value_error(f"{label}: the array is empty", C.QEMBED_ERR_SHAPE)
            ndim, cshape = _c_shape(arr.shape)
            shape = (ctypes.c_int64 * 2)(*cshape, *([0] * (2 - len(cshape))))
            out = out_handle()
            C._check(C.qembed_param_create(encode_text(label), code, ndim, shape, ctypes.byref(out)))
            handle = Handle(out.value, C.qembed_param_free, "param")
            C._check(C.qembed_param_load(handle.ptr, arr.ctypes.data, code, arr.size))
        else:
            arr, code = _wrappable(data, label)
            ndim, cshape = _c_shape(arr.shape)
            shape = (ctypes.c_int64 * 2)(*cshape, *([0] * (2 - len(cshape))))
            out = out_handle()
            C._check(C.qembed_param_wrap(encode_text(label), code, ndim, shape, arr.ctypes.data,
                                         ctypes.byref(out)))
            handle = Handle(out.value, C.qembed_param_free, "param")
            self._source = (data, arr)
        self._init(handle.ptr, handle)
        self.shape = tuple(arr.shape)
        self._requires_grad = bool(requires_grad)

    @classmethod
    def _borrowed(cls, ptr, owner):
        """A layer's parameter: `owner` is the layer's Handle (it keeps the memory alive)."""
        self = cls.__new__(cls)
        self._source = None
        self._init(ptr, owner)
        self._requires_grad = None
        return self

    def _init(self, ptr, owner):
        self._ptr = ptr
        self._owner = owner
        self._grad_source = None  # (array, address) of a wrapped gradient
        info = self._info()
        self.name = info.name.decode("utf-8")
        self.shape = tuple(info.shape[k] for k in range(info.ndim))
        self._dtype_name = FLOAT_NAMES[info.dtype]
        self.dtype = _arrays.numpy_float_dtype(self._dtype_name)
        self.is_sparse_grad = bool(info.sparse)

    @property
    def is_standalone(self):
        """True for a Parameter made from an array (not by a layer)."""
        return self._requires_grad is not None

    @property
    def is_wrapped(self):
        """True when the parameter's memory is the caller's (copy=False)."""
        return self._source is not None

    def _info(self):
        info = new_struct(C.qembed_param_info)
        C._check(C.qembed_param_info_get(self._ptr, ctypes.byref(info)))
        return info

    @property
    def ndim(self):
        return len(self.shape)

    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def requires_grad(self):
        if self._requires_grad is not None:
            return self._requires_grad
        return bool(self._info().requires_grad)

    @requires_grad.setter
    def requires_grad(self, value):
        if self._requires_grad is None:
            raise _value_error(f"{self.name}: a layer's parameter is frozen or not through the layer (freeze=...)")
        self._requires_grad = bool(value)

    @property
    def data(self):
        info = self._info()
        return _view(info.data, self.shape, self.dtype, self if self._source is not None else self._owner)

    @data.setter
    def data(self, value):
        self.copy_(value)

    def copy_(self, value):
        """Copy `value` (same shape; f32/f16/bf16 or anything convertible to
        float32) into the parameter. Validated before anything is written."""
        arr, code = _arrays.float_array(value, self.name)
        if arr.shape != self.shape:
            raise _value_error(f"{self.name}: expected shape {self.shape}, got {arr.shape}", C.QEMBED_ERR_SHAPE)
        C._check(C.qembed_param_load(self._ptr, arr.ctypes.data, code, arr.size))
        return self

    @property
    def grad(self):
        info = self._info()
        if info.sparse:
            return _sparse_grad(self._ptr, self.shape)
        if not info.grad:
            return None
        address = ctypes.cast(info.grad, ctypes.c_void_p).value
        if self._grad_source is not None and self._grad_source[1] == address:
            return self._grad_source[0]
        return _view(address, self.shape, np.float32, self._owner)

    @grad.setter
    def grad(self, value):
        if value is None:
            C._check(C.qembed_param_clear_grad(self._ptr))
            self._grad_source = None
            return
        what = f"{self.name}.grad"
        _arrays.check_cpu(value, what)
        arr = _arrays.to_numpy(value)
        if tuple(arr.shape) != self.shape:
            raise _value_error(f"{what}: expected shape {self.shape}, got {tuple(arr.shape)}", C.QEMBED_ERR_SHAPE)
        if self.is_sparse_grad:
            raise _type_error(f"{what}: a sparse layer's gradient is set by its backward")
        if (arr.dtype == np.float32 and arr.dtype.isnative and arr.flags.c_contiguous and arr.flags.writeable
                and arr.size > 0):
            # finite iff the float64 sum is (float32 values cannot overflow it)
            if not np.isfinite(arr.sum(dtype=np.float64)):
                k = _first_non_finite(arr)
                raise _value_error(f"{what}[{k}] = {arr.reshape(-1)[k]} is not finite", C.QEMBED_ERR_NON_FINITE)
            C._check(C.qembed_param_wrap_grad(self._ptr, arr.ctypes.data_as(C.P_f32), arr.size))
            self._grad_source = (arr, arr.ctypes.data)
            return
        src, code = _arrays.float_array(arr, what)
        C._check(C.qembed_param_set_grad(self._ptr, src.ctypes.data, code, src.size))
        self._grad_source = None

    def _wrap_grad_unchecked(self, arr):
        """Wraps a float32 C-contiguous gradient of the right size with no
        finiteness pass (the step checks it): for the per-step rebinding of
        qembed.interop.torch_parameters."""
        C._check(C.qembed_param_wrap_grad(self._ptr, arr.ctypes.data_as(C.P_f32), arr.size))
        self._grad_source = (arr.reshape(self.shape), arr.ctypes.data)

    # optimizer overrides (GlobalOptimManager.override_config writes these)

    def _set_override(self, key, value):
        C._check(C.qembed_param_set_override(self._ptr, _OVERRIDE_KEYS[key], float(value)))

    def _clear_override(self, key):
        C._check(C.qembed_param_clear_override(self._ptr, _OVERRIDE_KEYS[key]))

    def optim_overrides(self):
        """The optimizer settings overridden on this parameter, as a dict
        (keys optim_bits, lr, beta1, beta2, eps, weight_decay)."""
        out = {}
        for key, code in _OVERRIDE_KEYS.items():
            value, is_set = ctypes.c_double(), ctypes.c_bool()
            C._check(C.qembed_param_get_override(self._ptr, code, ctypes.byref(value), ctypes.byref(is_set)))
            if is_set.value:
                out[key] = int(value.value) if key == "optim_bits" else value.value
        return out

    def __array__(self, dtype=None, copy=None):
        arr = self.data
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            return arr.astype(dtype)
        return arr.copy() if copy else arr

    def __repr__(self):
        kind = ", wrapped" if self.is_wrapped else ""
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self._dtype_name}{kind})"


