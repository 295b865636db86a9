"""Raw ctypes declarations of qembed's layer APIs (include/qembed.h sections
"Parameters", "Embedding and StableEmbedding", "Optimizers", "Tensor files"
and "Quantized embeddings"), used by qembed.nn, qembed.optim and qembed.io.

One binding per C prototype, the prototype copied in the comment above it;
argtypes/restype are set once, here. The library object and the error helpers
(``_check``, the QembedError classes) come from ``qembed._capi``, so errors
raised here are the same classes as everywhere else in the package.

The function objects are fetched with ``lib[name]``, which makes a fresh
ctypes function object per call, so the argtypes set here never clash with
declarations of the same symbols elsewhere in the package. Opaque handles
(``qembed_embedding *``, ``qembed_param *``, ...) are ``c_void_p``.
"""

import ctypes
from ctypes import (POINTER, Structure, c_bool, c_char_p, c_double, c_float, c_int, c_int64, c_uint32,
                    c_uint64, c_void_p)

from ._capi import QembedError, _check, last_error, lib  # noqa: F401  (re-exported helpers)

# --------------------------------------------------------------------------
# Constants (values of the C enums and macros used by these sections)
# --------------------------------------------------------------------------

QEMBED_OK = 0
QEMBED_ERR_INVALID_ARGUMENT = 1
QEMBED_ERR_OUT_OF_RANGE = 3
QEMBED_ERR_UNSUPPORTED = 4
QEMBED_ERR_NON_FINITE = 5
QEMBED_ERR_SHAPE = 6
QEMBED_ERR_FORMAT = 10

QEMBED_DTYPE_F32 = 0
QEMBED_DTYPE_F16 = 1
QEMBED_DTYPE_BF16 = 2
QEMBED_DTYPE_U8 = 3
QEMBED_DTYPE_I8 = 4
QEMBED_DTYPE_I32 = 5
QEMBED_DTYPE_I64 = 6

QEMBED_NO_PADDING = -(2 ** 63)  # INT64_MIN

QEMBED_OVERRIDE_OPTIM_BITS = 0
QEMBED_OVERRIDE_LR = 1
QEMBED_OVERRIDE_BETA1 = 2
QEMBED_OVERRIDE_BETA2 = 3
QEMBED_OVERRIDE_EPS = 4
QEMBED_OVERRIDE_WEIGHT_DECAY = 5

QEMBED_OPTIM_ADAM = 0
QEMBED_OPTIM_ADAMW = 1
QEMBED_OPTIM_MOMENTUM = 2
QEMBED_OPTIM_LION = 3
QEMBED_OPTIM_RMSPROP = 4
QEMBED_OPTIM_ADAGRAD = 5

QEMBED_MAX_DIMS = 8

QEMBED_QEMB_INT8 = 0
QEMBED_QEMB_FP4 = 1
QEMBED_QEMB_NF4 = 2

# --------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------


class qembed_param_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("name", c_char_p),
        ("dtype", c_int),
        ("ndim", c_int),
        ("shape", c_int64 * 2),
        ("numel", c_int64),
        ("data", c_void_p),
        ("grad", POINTER(c_float)),
        ("requires_grad", c_bool),
        ("sparse", c_bool),
    ]


class qembed_embedding_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("num_embeddings", c_int64),
        ("embedding_dim", c_int64),
        ("padding_idx", c_int64),
        ("max_norm", c_double),
        ("norm_type", c_double),
        ("scale_grad_by_freq", c_bool),
        ("sparse", c_bool),
        ("dtype", c_int),
        ("seed", c_uint64),
        ("weight", c_void_p),
        ("weight_dtype", c_int),
        ("freeze", c_bool),
    ]


class qembed_optimizer_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("kind", c_int),
        ("lr", c_double),
        ("beta1", c_double),
        ("beta2", c_double),
        ("eps", c_double),
        ("weight_decay", c_double),
        ("optim_bits", c_int),
        ("min_8bit_size", c_int64),
        ("max_unorm", c_double),
        ("skip_zeros", c_bool),
    ]


class qembed_optimizer_state_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("initialized", c_bool),
        ("step", c_int64),
        ("bits", c_int),
        ("num_states", c_int),
        ("numel", c_int64),
        ("num_blocks", c_int64),
        ("row_aligned", c_bool),
        ("state_bytes", c_int64),
    ]


class qembed_tensor_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("name", c_char_p),
        ("dtype_name", c_char_p),
        ("dtype", c_int),
        ("ndim", c_int),
        ("shape", c_int64 * QEMBED_MAX_DIMS),
        ("numel", c_int64),
        ("nbytes", c_int64),
        ("data", c_void_p),
    ]


class qembed_tensor_desc(Structure):
    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_int),
        ("ndim", c_int),
        ("shape", c_int64 * QEMBED_MAX_DIMS),
        ("data", c_void_p),
    ]


class qembed_qembedding_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("kind", c_int),
        ("num_embeddings", c_int64),
        ("embedding_dim", c_int64),
        ("dtype", c_int),
        ("blocksize", c_int64),
        ("nested", c_bool),
        ("table_bytes", c_int64),
    ]


STRUCTS = (qembed_param_info, qembed_embedding_params, qembed_optimizer_params, qembed_optimizer_state_info,
           qembed_tensor_info, qembed_tensor_desc, qembed_qembedding_info)


def new_struct(cls):
    """An instance of a struct whose first field is struct_size, with it set."""
    s = cls()
    if cls._fields_[0][0] == "struct_size":
        s.struct_size = ctypes.sizeof(cls)
    return s


# --------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------

status = c_int  # qembed_status
handle = c_void_p  # opaque pointers
P_f32, P_i64 = POINTER(c_float), POINTER(c_int64)

BOUND = {}  # name -> ctypes function, in declaration order
MISSING = []  # declared here but not exported by the loaded library


class _Missing:
    """Stands in for a function the loaded library does not export."""

    def __init__(self, name):
        self.__name__ = name

    def __call__(self, *args):
        raise QembedError(QEMBED_ERR_UNSUPPORTED,
                          f"{self.__name__} is not exported by {getattr(lib, '_qembed_path', 'libqembed')}")


def _fn(name, restype, *argtypes):
    try:
        f = lib[name]
    except AttributeError:
        MISSING.append(name)
        f = _Missing(name)
    else:
        f.restype = restype
        f.argtypes = list(argtypes)
    BOUND[name] = f
    return f


# --- Parameters --------------------------------------------------------------

# qembed_status qembed_param_info_get(const qembed_param *param, qembed_param_info *info);
qembed_param_info_get = _fn("qembed_param_info_get", status, handle, POINTER(qembed_param_info))
# qembed_status qembed_param_sparse_grad(const qembed_param *param, int64_t *nnz_rows, int64_t *rows, int64_t rows_cap, float *values, int64_t values_cap);
qembed_param_sparse_grad = _fn("qembed_param_sparse_grad", status, handle, P_i64, P_i64, c_int64, P_f32, c_int64)
# qembed_status qembed_param_set_override(qembed_param *param, int key, double value);
qembed_param_set_override = _fn("qembed_param_set_override", status, handle, c_int, c_double)
# qembed_status qembed_param_get_override(const qembed_param *param, int key, double *value, bool *is_set);
qembed_param_get_override = _fn("qembed_param_get_override", status, handle, c_int, POINTER(c_double),
                                POINTER(c_bool))
# qembed_status qembed_param_clear_override(qembed_param *param, int key);
qembed_param_clear_override = _fn("qembed_param_clear_override", status, handle, c_int)
# qembed_status qembed_param_load(qembed_param *param, const void *src, int dtype, int64_t numel);
qembed_param_load = _fn("qembed_param_load", status, handle, c_void_p, c_int, c_int64)

# --- Embedding and StableEmbedding -------------------------------------------

# void qembed_embedding_params_init(qembed_embedding_params *p);
qembed_embedding_params_init = _fn("qembed_embedding_params_init", None, POINTER(qembed_embedding_params))
# qembed_status qembed_embedding_create(const qembed_embedding_params *p, qembed_embedding **out);
qembed_embedding_create = _fn("qembed_embedding_create", status, POINTER(qembed_embedding_params), POINTER(handle))
# qembed_status qembed_stable_embedding_create(const qembed_embedding_params *p, qembed_embedding **out);
qembed_stable_embedding_create = _fn("qembed_stable_embedding_create", status, POINTER(qembed_embedding_params),
                                     POINTER(handle))
# void qembed_embedding_free(qembed_embedding *e);
qembed_embedding_free = _fn("qembed_embedding_free", None, handle)
# qembed_status qembed_embedding_get_params(const qembed_embedding *e, qembed_embedding_params *p, bool *is_stable);
qembed_embedding_get_params = _fn("qembed_embedding_get_params", status, handle, POINTER(qembed_embedding_params),
                                  POINTER(c_bool))
# qembed_status qembed_embedding_forward(qembed_embedding *e, const void *indices, int index_dtype, int64_t count, void *out, int out_dtype, int64_t out_len);
qembed_embedding_forward = _fn("qembed_embedding_forward", status, handle, c_void_p, c_int, c_int64, c_void_p,
                               c_int, c_int64)
# qembed_status qembed_embedding_backward(qembed_embedding *e, const void *indices, int index_dtype, int64_t count, const void *grad_output, int grad_dtype, int64_t grad_len);
qembed_embedding_backward = _fn("qembed_embedding_backward", status, handle, c_void_p, c_int, c_int64, c_void_p,
                                c_int, c_int64)
# qembed_status qembed_embedding_zero_grad(qembed_embedding *e);
qembed_embedding_zero_grad = _fn("qembed_embedding_zero_grad", status, handle)
# qembed_status qembed_embedding_reset_parameters(qembed_embedding *e, uint64_t seed);
qembed_embedding_reset_parameters = _fn("qembed_embedding_reset_parameters", status, handle, c_uint64)
# qembed_status qembed_embedding_num_params(const qembed_embedding *e, int64_t *n);
qembed_embedding_num_params = _fn("qembed_embedding_num_params", status, handle, P_i64)
# qembed_status qembed_embedding_param(qembed_embedding *e, int64_t i, qembed_param **param);
qembed_embedding_param = _fn("qembed_embedding_param", status, handle, c_int64, POINTER(handle))

# --- Optimizers --------------------------------------------------------------

# qembed_status qembed_optimizer_params_init(qembed_optimizer_params *p, int kind, int optim_bits);
qembed_optimizer_params_init = _fn("qembed_optimizer_params_init", status, POINTER(qembed_optimizer_params),
                                   c_int, c_int)
# qembed_status qembed_optimizer_create(const qembed_optimizer_params *p, qembed_param *const *params, int64_t n_params, qembed_optimizer **out);
qembed_optimizer_create = _fn("qembed_optimizer_create", status, POINTER(qembed_optimizer_params),
                              POINTER(handle), c_int64, POINTER(handle))
# void qembed_optimizer_free(qembed_optimizer *o);
qembed_optimizer_free = _fn("qembed_optimizer_free", None, handle)
# qembed_status qembed_optimizer_step(qembed_optimizer *o);
qembed_optimizer_step = _fn("qembed_optimizer_step", status, handle)
# qembed_status qembed_optimizer_zero_grad(qembed_optimizer *o);
qembed_optimizer_zero_grad = _fn("qembed_optimizer_zero_grad", status, handle)
# qembed_status qembed_optimizer_state_info_get(const qembed_optimizer *o, int64_t i, qembed_optimizer_state_info *info);
qembed_optimizer_state_info_get = _fn("qembed_optimizer_state_info_get", status, handle, c_int64,
                                      POINTER(qembed_optimizer_state_info))
# qembed_status qembed_optimizer_state_export(const qembed_optimizer *o, int64_t i, void *state1, int64_t state1_bytes, void *state2, int64_t state2_bytes, float *absmax1, int64_t absmax1_len, float *absmax2, int64_t absmax2_len);
qembed_optimizer_state_export = _fn("qembed_optimizer_state_export", status, handle, c_int64, c_void_p, c_int64,
                                    c_void_p, c_int64, P_f32, c_int64, P_f32, c_int64)
# qembed_status qembed_optimizer_state_import(qembed_optimizer *o, int64_t i, int64_t step, int bits, const void *state1, int64_t state1_bytes, const void *state2, int64_t state2_bytes, const float *absmax1, int64_t absmax1_len, const float *absmax2, int64_t absmax2_len);
qembed_optimizer_state_import = _fn("qembed_optimizer_state_import", status, handle, c_int64, c_int64, c_int,
                                    c_void_p, c_int64, c_void_p, c_int64, P_f32, c_int64, P_f32, c_int64)

# --- Tensor files ------------------------------------------------------------

# qembed_status qembed_tensor_file_open(const char *path, qembed_tensor_file **out);
qembed_tensor_file_open = _fn("qembed_tensor_file_open", status, c_char_p, POINTER(handle))
# void qembed_tensor_file_close(qembed_tensor_file *f);
qembed_tensor_file_close = _fn("qembed_tensor_file_close", None, handle)
# qembed_status qembed_tensor_file_count(const qembed_tensor_file *f, int64_t *n);
qembed_tensor_file_count = _fn("qembed_tensor_file_count", status, handle, P_i64)
# qembed_status qembed_tensor_file_info(const qembed_tensor_file *f, int64_t i, qembed_tensor_info *info);
qembed_tensor_file_info = _fn("qembed_tensor_file_info", status, handle, c_int64, POINTER(qembed_tensor_info))
# qembed_status qembed_tensor_file_find(const qembed_tensor_file *f, const char *name, int64_t *index);
qembed_tensor_file_find = _fn("qembed_tensor_file_find", status, handle, c_char_p, P_i64)
# qembed_status qembed_tensor_file_metadata(const qembed_tensor_file *f, const char *key, const char **value);
qembed_tensor_file_metadata = _fn("qembed_tensor_file_metadata", status, handle, c_char_p, POINTER(c_char_p))
# qembed_status qembed_save_safetensors(const char *path, const qembed_tensor_desc *tensors, int64_t n, const char *const *meta_keys, const char *const *meta_values, int64_t n_meta);
qembed_save_safetensors = _fn("qembed_save_safetensors", status, c_char_p, POINTER(qembed_tensor_desc), c_int64,
                              POINTER(c_char_p), POINTER(c_char_p), c_int64)
# qembed_status qembed_save_npy(const char *path, const qembed_tensor_desc *tensor);
qembed_save_npy = _fn("qembed_save_npy", status, c_char_p, POINTER(qembed_tensor_desc))
# qembed_status qembed_embedding_save(qembed_embedding *e, const char *path);
qembed_embedding_save = _fn("qembed_embedding_save", status, handle, c_char_p)

# --- Quantized embeddings ----------------------------------------------------

# qembed_status qembed_qembedding_quantize(const void *weight, int dtype, int64_t rows, int64_t dim, int kind, int64_t blocksize, bool compress_statistics, qembed_qembedding **out);
qembed_qembedding_quantize = _fn("qembed_qembedding_quantize", status, c_void_p, c_int, c_int64, c_int64, c_int,
                                 c_int64, c_bool, POINTER(handle))
# qembed_status qembed_qembedding_from_embedding(qembed_embedding *e, int kind, int64_t blocksize, bool compress_statistics, qembed_qembedding **out);
qembed_qembedding_from_embedding = _fn("qembed_qembedding_from_embedding", status, handle, c_int, c_int64, c_bool,
                                       POINTER(handle))
# void qembed_qembedding_free(qembed_qembedding *q);
qembed_qembedding_free = _fn("qembed_qembedding_free", None, handle)
# qembed_status qembed_qembedding_info_get(const qembed_qembedding *q, qembed_qembedding_info *info);
qembed_qembedding_info_get = _fn("qembed_qembedding_info_get", status, handle, POINTER(qembed_qembedding_info))
# qembed_status qembed_qembedding_forward(const qembed_qembedding *q, const void *indices, int index_dtype, int64_t count, void *out, int out_dtype, int64_t out_len);
qembed_qembedding_forward = _fn("qembed_qembedding_forward", status, handle, c_void_p, c_int, c_int64, c_void_p,
                                c_int, c_int64)
# qembed_status qembed_qembedding_save(const qembed_qembedding *q, const char *path, const char *prefix);
qembed_qembedding_save = _fn("qembed_qembedding_save", status, handle, c_char_p, c_char_p)
# qembed_status qembed_qembedding_load(const char *path, const char *prefix, qembed_qembedding **out);
qembed_qembedding_load = _fn("qembed_qembedding_load", status, c_char_p, c_char_p, POINTER(handle))


# --------------------------------------------------------------------------
# Handles
# --------------------------------------------------------------------------


class Handle:
    """Owns one C object and frees it exactly once: on release(), or when the
    last Python reference goes away. Layers, numpy views of their memory and
    optimizers all hold a reference to the Handle they depend on, so memory a
    view points into is never freed under it: closing a layer drops the
    layer's reference, and the C object is freed when the last view or
    optimizer using it is gone too."""

    __slots__ = ("ptr", "_free", "kind", "__weakref__")

    def __init__(self, ptr, free, kind):
        self.ptr = ptr
        self._free = free
        self.kind = kind

    def release(self):
        ptr, self.ptr = self.ptr, None
        if ptr:
            self._free(ptr)

    def __del__(self):
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __bool__(self):
        return bool(self.ptr)


def out_handle():
    """A c_void_p for a `qembed_X **out` argument."""
    return c_void_p()


def encode_path(path):
    """A filesystem path (str, bytes or os.PathLike) as bytes for const char *."""
    import os
    p = os.fspath(path)
    return p if isinstance(p, bytes) else os.fsencode(p)
