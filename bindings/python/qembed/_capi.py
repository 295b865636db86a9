"""Raw ctypes declarations of the qembed C API (include/qembed.h).

One binding per C prototype: the prototype is copied in the comment above each
declaration, and argtypes/restype are set once, here. Higher-level code calls
these functions and passes every returned status through ``_check``, which
raises a ``QembedError`` subclass carrying ``.status`` and the library's
message from ``qembed_last_error()``.

Pointers to numeric buffers are declared with their exact C pointee type
(``POINTER(c_float)`` for ``float *``); ``const void *`` and ``void *`` are
``c_void_p`` and accept an integer address or None. Opaque handles
(``qembed_embedding *``, ...) are ``c_void_p``.

This is the one home of the C API in Python: every constant of the header
is defined here once (tests/test_capi.py checks each against
include/qembed.h), and so are the error classes and the helpers that build
them. Handles, structs and strings around the calls are in qembed._handle,
array conversions in qembed._arrays.
"""

import ctypes
from ctypes import (POINTER, Structure, c_bool, c_char_p, c_double, c_float, c_int, c_int8,
                    c_int32, c_int64, c_size_t, c_uint, c_uint8, c_uint32, c_uint64, c_void_p)

from ._lib import load_library

lib = load_library()

# --------------------------------------------------------------------------
# Constants (values of the C enums and macros)
# --------------------------------------------------------------------------

QEMBED_OK = 0
QEMBED_ERR_INVALID_ARGUMENT = 1
QEMBED_ERR_NULL_POINTER = 2
QEMBED_ERR_OUT_OF_RANGE = 3
QEMBED_ERR_UNSUPPORTED = 4
QEMBED_ERR_NON_FINITE = 5
QEMBED_ERR_SHAPE = 6
QEMBED_ERR_BUFFER_TOO_SMALL = 7
QEMBED_ERR_OUT_OF_MEMORY = 8
QEMBED_ERR_IO = 9
QEMBED_ERR_FORMAT = 10
QEMBED_ERR_INTERNAL = 11

QEMBED_DTYPE_F32 = 0
QEMBED_DTYPE_F16 = 1
QEMBED_DTYPE_BF16 = 2
QEMBED_DTYPE_U8 = 3
QEMBED_DTYPE_I8 = 4
QEMBED_DTYPE_I32 = 5
QEMBED_DTYPE_I64 = 6
QEMBED_DTYPE_COUNT = 7

QEMBED_QUANT_FP4 = 0
QEMBED_QUANT_NF4 = 1
QEMBED_QUANT_COUNT = 2

QEMBED_CODE_SIZE = 256
QEMBED_NO_PADDING = -(2 ** 63)

QEMBED_OVERRIDE_OPTIM_BITS = 0
QEMBED_OVERRIDE_LR = 1
QEMBED_OVERRIDE_BETA1 = 2
QEMBED_OVERRIDE_BETA2 = 3
QEMBED_OVERRIDE_EPS = 4
QEMBED_OVERRIDE_WEIGHT_DECAY = 5
QEMBED_OVERRIDE_COUNT = 6

QEMBED_OPTIM_ADAM = 0
QEMBED_OPTIM_ADAMW = 1
QEMBED_OPTIM_MOMENTUM = 2
QEMBED_OPTIM_LION = 3
QEMBED_OPTIM_RMSPROP = 4
QEMBED_OPTIM_ADAGRAD = 5
QEMBED_OPTIM_COUNT = 6

QEMBED_QEMB_INT8 = 0
QEMBED_QEMB_FP4 = 1
QEMBED_QEMB_NF4 = 2
QEMBED_QEMB_COUNT = 3

QEMBED_BAG_SUM = 0
QEMBED_BAG_MEAN = 1
QEMBED_BAG_MAX = 2
QEMBED_BAG_MODE_COUNT = 3

QEMBED_SCORE_DOT = 0
QEMBED_SCORE_COSINE = 1
QEMBED_SCORE_METRIC_COUNT = 2

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


QEMBED_MAX_DIMS = 8
QEMBED_OPEN_MMAP = 1


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


class qembed_bags(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("indices", c_void_p),
        ("index_dtype", c_int),
        ("count", c_int64),
        ("offsets", c_void_p),
        ("num_offsets", c_int64),
        ("include_last_offset", c_bool),
        ("num_bags", c_int64),
        ("per_sample_weights", c_void_p),
        ("weights_dtype", c_int),
        ("mode", c_int),
        ("padding_idx", c_int64),
    ]


class qembed_lora_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("r", c_int64),
        ("lora_alpha", c_double),
        ("use_rslora", c_bool),
        ("seed", c_uint64),
    ]


STRUCTS = (qembed_param_info, qembed_embedding_params, qembed_optimizer_params,
           qembed_optimizer_state_info, qembed_tensor_info, qembed_tensor_desc, qembed_qembedding_info,
           qembed_bags, qembed_lora_params)

# --------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------

status = c_int  # qembed_status (a C enum: int-sized)
handle = c_void_p  # opaque qembed_embedding / qembed_optimizer / qembed_param pointers
P_f32, P_u8, P_i8, P_i32, P_i64 = POINTER(c_float), POINTER(c_uint8), POINTER(c_int8), POINTER(c_int32), POINTER(c_int64)

BOUND = {}  # name -> ctypes function, in declaration order
MISSING = []  # declared here but absent from the loaded library (an older 0.x build)


class _Missing:
    """Stands in for a function the loaded library does not export: calling
    it raises; everything else in the package keeps working."""

    def __init__(self, name, restype, argtypes):
        self.__name__ = name
        self.restype = restype
        self.argtypes = list(argtypes)

    def __call__(self, *args):
        raise QembedError(QEMBED_ERR_UNSUPPORTED, f"{self.__name__} is not exported by "
                          f"{getattr(lib, '_qembed_path', 'libqembed')} (version {version()})")


def _fn(name, restype, *argtypes):
    try:
        f = getattr(lib, name)
    except AttributeError:
        MISSING.append(name)
        f = _Missing(name, restype, argtypes)
    f.restype = restype
    f.argtypes = list(argtypes)
    BOUND[name] = f
    return f


# --- Version -----------------------------------------------------------------

# unsigned qembed_version_number(void);
qembed_version_number = _fn("qembed_version_number", c_uint)
# const char *qembed_version(void);
qembed_version = _fn("qembed_version", c_char_p)

# --- Status codes and errors -------------------------------------------------

# const char *qembed_cpu_tier(void);
qembed_cpu_tier = _fn("qembed_cpu_tier", c_char_p)
# const char *qembed_status_string(int status);
qembed_status_string = _fn("qembed_status_string", c_char_p, c_int)
# const char *qembed_last_error(void);
qembed_last_error = _fn("qembed_last_error", c_char_p)
# void qembed_clear_error(void);
qembed_clear_error = _fn("qembed_clear_error", None)

# --- Element types -----------------------------------------------------------

# size_t qembed_dtype_size(int dtype);
qembed_dtype_size = _fn("qembed_dtype_size", c_size_t, c_int)
# const char *qembed_dtype_name(int dtype);
qembed_dtype_name = _fn("qembed_dtype_name", c_char_p, c_int)

# --- Threads -----------------------------------------------------------------

# int qembed_get_num_threads(void);
qembed_get_num_threads = _fn("qembed_get_num_threads", c_int)
# qembed_status qembed_set_num_threads(int n);
qembed_set_num_threads = _fn("qembed_set_num_threads", status, c_int)

# --- Quantization maps -------------------------------------------------------

# qembed_status qembed_create_dynamic_map(bool is_signed, int max_exponent_bits, int total_bits, float *code);
qembed_create_dynamic_map = _fn("qembed_create_dynamic_map", status, c_bool, c_int, c_int, P_f32)
# qembed_status qembed_create_linear_map(bool is_signed, int total_bits, bool add_zero, float *code);
qembed_create_linear_map = _fn("qembed_create_linear_map", status, c_bool, c_int, c_bool, P_f32)
# qembed_status qembed_create_fp8_map(bool is_signed, int exponent_bits, int precision_bits, int total_bits, float *code);
qembed_create_fp8_map = _fn("qembed_create_fp8_map", status, c_bool, c_int, c_int, c_int, P_f32)
# qembed_status qembed_create_normal_map(double offset, bool use_extra_value, float *code);
qembed_create_normal_map = _fn("qembed_create_normal_map", status, c_double, c_bool, P_f32)
# qembed_status qembed_get_4bit_code(int quant_type, float *code);
qembed_get_4bit_code = _fn("qembed_get_4bit_code", status, c_int, P_f32)

# --- Blockwise 8-bit ---------------------------------------------------------

# qembed_status qembed_blockwise_absmax_count(int64_t n, int64_t blocksize, int64_t *count);
qembed_blockwise_absmax_count = _fn("qembed_blockwise_absmax_count", status, c_int64, c_int64, P_i64)
# qembed_status qembed_quantize_blockwise(const void *A, int dtype, int64_t n, const float *code, int64_t blocksize, uint8_t *out, float *absmax, int64_t absmax_len);
qembed_quantize_blockwise = _fn("qembed_quantize_blockwise", status, c_void_p, c_int, c_int64, P_f32,
                                c_int64, P_u8, P_f32, c_int64)
# qembed_status qembed_dequantize_blockwise(const uint8_t *A, int64_t n, const float *absmax, int64_t absmax_len, const float *code, int64_t blocksize, int out_dtype, void *out);
qembed_dequantize_blockwise = _fn("qembed_dequantize_blockwise", status, P_u8, c_int64, P_f32, c_int64,
                                  P_f32, c_int64, c_int, c_void_p)
# qembed_status qembed_quantize_statistics(const float *absmax, int64_t count, int64_t nested_blocksize, uint8_t *qabsmax, float *nested_absmax, int64_t nested_absmax_len, float *offset);
qembed_quantize_statistics = _fn("qembed_quantize_statistics", status, P_f32, c_int64, c_int64, P_u8,
                                 P_f32, c_int64, P_f32)
# qembed_status qembed_dequantize_statistics(const uint8_t *qabsmax, int64_t count, const float *nested_absmax, int64_t nested_absmax_len, const float *nested_code, int64_t nested_blocksize, float offset, float *absmax);
qembed_dequantize_statistics = _fn("qembed_dequantize_statistics", status, P_u8, c_int64, P_f32, c_int64,
                                   P_f32, c_int64, c_float, P_f32)

# --- 4-bit -------------------------------------------------------------------

# qembed_status qembed_4bit_packed_bytes(int64_t n, int64_t *bytes);
qembed_4bit_packed_bytes = _fn("qembed_4bit_packed_bytes", status, c_int64, P_i64)
# qembed_status qembed_quantize_4bit(const void *A, int dtype, int64_t n, int64_t blocksize, int quant_type, uint8_t *packed, int64_t packed_len, float *absmax, int64_t absmax_len);
qembed_quantize_4bit = _fn("qembed_quantize_4bit", status, c_void_p, c_int, c_int64, c_int64, c_int,
                           P_u8, c_int64, P_f32, c_int64)
# qembed_status qembed_dequantize_4bit(const uint8_t *packed, int64_t packed_len, int64_t n, const float *absmax, int64_t absmax_len, int64_t blocksize, int quant_type, int out_dtype, void *out);
qembed_dequantize_4bit = _fn("qembed_dequantize_4bit", status, P_u8, c_int64, c_int64, P_f32, c_int64,
                             c_int64, c_int, c_int, c_void_p)

# --- Int8 row-wise -----------------------------------------------------------

# qembed_status qembed_int8_vectorwise_quant(const void *A, int dtype, int64_t rows, int64_t cols, float threshold, int8_t *out, float *row_stats, int32_t *outlier_cols, int64_t *n_outlier_cols);
qembed_int8_vectorwise_quant = _fn("qembed_int8_vectorwise_quant", status, c_void_p, c_int, c_int64, c_int64,
                                   c_float, P_i8, P_f32, P_i32, P_i64)
# qembed_status qembed_int8_vectorwise_dequant(const int8_t *A, int64_t rows, int64_t cols, const float *row_stats, int out_dtype, void *out);
qembed_int8_vectorwise_dequant = _fn("qembed_int8_vectorwise_dequant", status, P_i8, c_int64, c_int64, P_f32,
                                     c_int, c_void_p)

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
# qembed_status qembed_param_create(const char *name, int dtype, int ndim, const int64_t *shape, qembed_param **out);
qembed_param_create = _fn("qembed_param_create", status, c_char_p, c_int, c_int, P_i64, POINTER(handle))
# qembed_status qembed_param_wrap(const char *name, int dtype, int ndim, const int64_t *shape, void *data, qembed_param **out);
qembed_param_wrap = _fn("qembed_param_wrap", status, c_char_p, c_int, c_int, P_i64, c_void_p, POINTER(handle))
# void qembed_param_free(qembed_param *param);
qembed_param_free = _fn("qembed_param_free", None, handle)
# qembed_status qembed_param_set_grad(qembed_param *param, const void *grad, int dtype, int64_t numel);
qembed_param_set_grad = _fn("qembed_param_set_grad", status, handle, c_void_p, c_int, c_int64)
# qembed_status qembed_param_wrap_grad(qembed_param *param, float *grad, int64_t numel);
qembed_param_wrap_grad = _fn("qembed_param_wrap_grad", status, handle, P_f32, c_int64)
# qembed_status qembed_param_clear_grad(qembed_param *param);
qembed_param_clear_grad = _fn("qembed_param_clear_grad", status, handle)

# --- Embedding and StableEmbedding -------------------------------------------

# void qembed_embedding_params_init(qembed_embedding_params *p);
qembed_embedding_params_init = _fn("qembed_embedding_params_init", None, POINTER(qembed_embedding_params))
# qembed_status qembed_embedding_create(const qembed_embedding_params *p, qembed_embedding **out);
qembed_embedding_create = _fn("qembed_embedding_create", status, POINTER(qembed_embedding_params),
                              POINTER(handle))
# qembed_status qembed_stable_embedding_create(const qembed_embedding_params *p, qembed_embedding **out);
qembed_stable_embedding_create = _fn("qembed_stable_embedding_create", status, POINTER(qembed_embedding_params),
                                     POINTER(handle))
# qembed_status qembed_embedding_create_shard(const qembed_embedding_params *p, bool stable, int64_t row_offset, int64_t total_rows, qembed_embedding **out);
qembed_embedding_create_shard = _fn("qembed_embedding_create_shard", status, POINTER(qembed_embedding_params), c_bool,
                                    c_int64, c_int64, POINTER(handle))
# qembed_status qembed_embedding_get_shard(const qembed_embedding *e, int64_t *row_offset, int64_t *total_rows);
qembed_embedding_get_shard = _fn("qembed_embedding_get_shard", status, handle, P_i64, P_i64)
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
# qembed_status qembed_optimizer_set_params(qembed_optimizer *o, const qembed_optimizer_params *p);
qembed_optimizer_set_params = _fn("qembed_optimizer_set_params", status, handle, POINTER(qembed_optimizer_params))
# qembed_status qembed_optimizer_create(const qembed_optimizer_params *p, qembed_param *const *params, int64_t n_params, qembed_optimizer **out);
qembed_optimizer_create = _fn("qembed_optimizer_create", status, POINTER(qembed_optimizer_params),
                              POINTER(handle), c_int64, POINTER(handle))
# void qembed_optimizer_free(qembed_optimizer *o);
qembed_optimizer_free = _fn("qembed_optimizer_free", None, handle)
# qembed_status qembed_optimizer_step(qembed_optimizer *o);
qembed_optimizer_step = _fn("qembed_optimizer_step", status, handle)
# qembed_status qembed_optimizer_step_all(qembed_optimizer *const *optimizers, int64_t n);
qembed_optimizer_step_all = _fn("qembed_optimizer_step_all", status, POINTER(handle), c_int64)
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
# qembed_status qembed_tensor_file_open_ex(const char *path, uint32_t flags, qembed_tensor_file **out);
qembed_tensor_file_open_ex = _fn("qembed_tensor_file_open_ex", status, c_char_p, c_uint32, POINTER(handle))
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
# qembed_status qembed_qembedding_quantize_shard(const void *weight, int dtype, int64_t rows, int64_t dim, int kind, int64_t blocksize, bool compress_statistics, int64_t row_offset, int64_t total_rows, qembed_qembedding **out);
qembed_qembedding_quantize_shard = _fn("qembed_qembedding_quantize_shard", status, c_void_p, c_int, c_int64, c_int64,
                                       c_int, c_int64, c_bool, c_int64, c_int64, POINTER(handle))
# qembed_status qembed_qembedding_get_shard(const qembed_qembedding *q, int64_t *row_offset, int64_t *total_rows);
qembed_qembedding_get_shard = _fn("qembed_qembedding_get_shard", status, handle, P_i64, P_i64)
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
# qembed_status qembed_qembedding_load_ex(const char *path, const char *prefix, uint32_t flags, qembed_qembedding **out);
qembed_qembedding_load_ex = _fn("qembed_qembedding_load_ex", status, c_char_p, c_char_p, c_uint32, POINTER(handle))

# --- Bags: pooled lookups ----------------------------------------------------

# void qembed_bags_init(qembed_bags *b);
qembed_bags_init = _fn("qembed_bags_init", None, POINTER(qembed_bags))
# qembed_status qembed_bags_num_bags(const qembed_bags *b, int64_t *num_bags);
qembed_bags_num_bags = _fn("qembed_bags_num_bags", status, POINTER(qembed_bags), P_i64)
# qembed_status qembed_embedding_bag_forward(qembed_embedding *e, const qembed_bags *b, void *out, int out_dtype, int64_t out_len);
qembed_embedding_bag_forward = _fn("qembed_embedding_bag_forward", status, handle, POINTER(qembed_bags), c_void_p,
                                   c_int, c_int64)
# qembed_status qembed_embedding_bag_backward(qembed_embedding *e, const qembed_bags *b, const void *grad_output, int grad_dtype, int64_t grad_len, float *grad_per_sample_weights);
qembed_embedding_bag_backward = _fn("qembed_embedding_bag_backward", status, handle, POINTER(qembed_bags), c_void_p,
                                    c_int, c_int64, P_f32)
# qembed_status qembed_qembedding_bag_forward(const qembed_qembedding *q, const qembed_bags *b, void *out, int out_dtype, int64_t out_len);
qembed_qembedding_bag_forward = _fn("qembed_qembedding_bag_forward", status, handle, POINTER(qembed_bags), c_void_p,
                                    c_int, c_int64)

# --- Scoring: queries against every row --------------------------------------

# qembed_status qembed_embedding_score(qembed_embedding *e, const void *queries, int query_dtype, int64_t num_queries, int metric, float *scores, int64_t scores_len);
qembed_embedding_score = _fn("qembed_embedding_score", status, handle, c_void_p, c_int, c_int64, c_int, P_f32,
                             c_int64)
# qembed_status qembed_qembedding_score(const qembed_qembedding *q, const void *queries, int query_dtype, int64_t num_queries, int metric, float *scores, int64_t scores_len);
qembed_qembedding_score = _fn("qembed_qembedding_score", status, handle, c_void_p, c_int, c_int64, c_int, P_f32,
                              c_int64)
# qembed_status qembed_embedding_topk(qembed_embedding *e, const void *queries, int query_dtype, int64_t num_queries, int metric, int64_t k, int64_t *indices, float *scores, int64_t out_len);
qembed_embedding_topk = _fn("qembed_embedding_topk", status, handle, c_void_p, c_int, c_int64, c_int, c_int64, P_i64,
                            P_f32, c_int64)
# qembed_status qembed_qembedding_topk(const qembed_qembedding *q, const void *queries, int query_dtype, int64_t num_queries, int metric, int64_t k, int64_t *indices, float *scores, int64_t out_len);
qembed_qembedding_topk = _fn("qembed_qembedding_topk", status, handle, c_void_p, c_int, c_int64, c_int, c_int64,
                             P_i64, P_f32, c_int64)


# LoRA over a frozen table
# void qembed_lora_params_init(qembed_lora_params *p);
qembed_lora_params_init = _fn("qembed_lora_params_init", None, POINTER(qembed_lora_params))
# qembed_status qembed_lora_create(const qembed_lora_params *p, qembed_embedding *float_base, qembed_qembedding *quantized_base, qembed_lora **out);
qembed_lora_create = _fn("qembed_lora_create", status, POINTER(qembed_lora_params), handle, handle, POINTER(handle))
# void qembed_lora_free(qembed_lora *l);
qembed_lora_free = _fn("qembed_lora_free", None, handle)
# qembed_status qembed_lora_get_params(const qembed_lora *l, qembed_lora_params *p, double *scaling);
qembed_lora_get_params = _fn("qembed_lora_get_params", status, handle, POINTER(qembed_lora_params), POINTER(c_double))
# qembed_status qembed_lora_forward(qembed_lora *l, const void *indices, int index_dtype, int64_t count, void *out, int out_dtype, int64_t out_len);
qembed_lora_forward = _fn("qembed_lora_forward", status, handle, c_void_p, c_int, c_int64, c_void_p, c_int, c_int64)
# qembed_status qembed_lora_backward(qembed_lora *l, const void *indices, int index_dtype, int64_t count, const void *grad_output, int grad_dtype, int64_t grad_len);
qembed_lora_backward = _fn("qembed_lora_backward", status, handle, c_void_p, c_int, c_int64, c_void_p, c_int, c_int64)
# qembed_status qembed_lora_zero_grad(qembed_lora *l);
qembed_lora_zero_grad = _fn("qembed_lora_zero_grad", status, handle)
# qembed_status qembed_lora_param(qembed_lora *l, int64_t i, qembed_param **param);
qembed_lora_param = _fn("qembed_lora_param", status, handle, c_int64, POINTER(handle))
# qembed_status qembed_lora_merge(qembed_lora *l, void *out, int out_dtype, int64_t out_len);
qembed_lora_merge = _fn("qembed_lora_merge", status, handle, c_void_p, c_int, c_int64)

# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class QembedError(Exception):
    """A qembed call failed. ``status`` is the qembed_status code and
    ``message`` the library's description (naming the argument)."""

    def __init__(self, status, message):
        self.status = int(status)
        self.message = message
        super().__init__(f"{message} ({status_string(self.status)})" if message else status_string(self.status))


class QembedValueError(QembedError, ValueError):
    """Bad argument value, NULL pointer, out-of-range index, shape or size
    mismatch, too-small buffer, NaN/Inf input, malformed data."""


class QembedTypeError(QembedError, TypeError, ValueError):
    """A request this build does not support (QEMBED_ERR_UNSUPPORTED: a
    dtype, a blocksize, an enum value). Also a ValueError, as bitsandbytes
    raises ValueError for unsupported dtypes."""


class QembedMemoryError(QembedError, MemoryError):
    """The library ran out of memory."""


class QembedOSError(QembedError, OSError):
    """The operating system refused a file operation."""


class QembedInternalError(QembedError, RuntimeError):
    """A bug in qembed."""


_VALUE_STATUSES = {QEMBED_ERR_INVALID_ARGUMENT, QEMBED_ERR_NULL_POINTER, QEMBED_ERR_OUT_OF_RANGE,
                   QEMBED_ERR_NON_FINITE, QEMBED_ERR_SHAPE, QEMBED_ERR_BUFFER_TOO_SMALL,
                   QEMBED_ERR_FORMAT}


def status_string(code):
    return qembed_status_string(int(code)).decode("utf-8", "replace")


def last_error():
    msg = qembed_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


_EXCEPTION_OF_STATUS = dict.fromkeys(_VALUE_STATUSES, QembedValueError)
_EXCEPTION_OF_STATUS.update({QEMBED_ERR_UNSUPPORTED: QembedTypeError, QEMBED_ERR_OUT_OF_MEMORY: QembedMemoryError,
                             QEMBED_ERR_IO: QembedOSError, QEMBED_ERR_INTERNAL: QembedInternalError})


def error_for(code, message):
    """The exception instance for a non-OK status and its message: the type
    follows the status code alone (_EXCEPTION_OF_STATUS)."""
    return _EXCEPTION_OF_STATUS.get(code, QembedError)(code, message)


def _check(code):
    """Raise the QembedError subclass for a failing status; return None on OK."""
    if code != QEMBED_OK:
        raise error_for(code, last_error())


def value_error(message, status=QEMBED_ERR_INVALID_ARGUMENT):
    """The QembedValueError of a check made in Python, with the status the
    library gives the same fault (QEMBED_ERR_SHAPE for sizes, ...)."""
    return QembedValueError(status, message)


def type_error(message):
    """The QembedTypeError (QEMBED_ERR_UNSUPPORTED) of a check made in
    Python: a dtype or a kind of object the binding does not take."""
    return QembedTypeError(QEMBED_ERR_UNSUPPORTED, message)


def version():
    return qembed_version().decode("ascii")
