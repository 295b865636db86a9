/*
 * qembed.h - the public C API of qembed.
 *
 * qembed is a CPU library for quantized and trainable embedding tables: the
 * quantization kernels of bitsandbytes (dynamic/NF4/FP4 maps, blockwise 8-bit,
 * 4-bit FP4/NF4, int8 row-wise, nested statistics) and the embedding layers
 * built on them, behind a stable C ABI.
 *
 * If a declaration is not in this file it is not API. Status codes, dtype and
 * quant-type values only ever grow; a removed value is never reused.
 *
 * Copyright (c) 2026 the qembed authors. MIT licence.
 */
#ifndef QEMBED_H
#define QEMBED_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* QEMBED_API marks every exported function; override it before including
 * this header to add calling-convention or import attributes. */
#ifndef QEMBED_API
#  if defined(__GNUC__) && __GNUC__ >= 4
#    define QEMBED_API __attribute__((visibility("default")))
#  else
#    define QEMBED_API
#  endif
#endif

/* ======================================================================== */
/*  Version                                                                 */
/* ======================================================================== */

#define QEMBED_VERSION_MAJOR 0 /* bumped by any ABI change: signature, enum value, struct layout */
#define QEMBED_VERSION_MINOR 3 /* bumped by new functions or enum values */
#define QEMBED_VERSION_PATCH 0
#define QEMBED_VERSION_NUMBER \
    (QEMBED_VERSION_MAJOR * 10000 + QEMBED_VERSION_MINOR * 100 + QEMBED_VERSION_PATCH)

/*! qembed_version_number() :
 *  @return the run-time library version as MAJOR*10000 + MINOR*100 + PATCH.
 *  Compare with QEMBED_VERSION_NUMBER to detect a header/library mismatch.
 *  Thread-safe. Since 0.1. */
QEMBED_API unsigned qembed_version_number(void);

/*! qembed_version() :
 *  @return the run-time version as a static NUL-terminated string "M.m.p".
 *  The string is owned by the library and never freed. Thread-safe. Since 0.1. */
QEMBED_API const char *qembed_version(void);

/* ======================================================================== */
/*  Status codes and errors                                                 */
/* ======================================================================== */

/* Every function that can fail returns a qembed_status. On failure nothing
 * was written to any output or object, and qembed_last_error() holds a
 * message naming the argument and the problem. One documented exception:
 * the quantize kernels (qembed_quantize_blockwise, qembed_quantize_4bit,
 * qembed_int8_vectorwise_quant) read their input once, so when they meet a
 * NaN/Inf (QEMBED_ERR_NON_FINITE) their caller-provided outputs may already
 * hold some blocks: the outputs' contents are then unspecified (as zstd's
 * dst on error), nothing outside them is written, and every other error is
 * still found before anything is written. */
typedef enum qembed_status {
    QEMBED_OK = 0,
    QEMBED_ERR_INVALID_ARGUMENT = 1,  /* a value outside its documented domain */
    QEMBED_ERR_NULL_POINTER = 2,      /* a required pointer was NULL */
    QEMBED_ERR_OUT_OF_RANGE = 3,      /* an index outside its table or range */
    QEMBED_ERR_UNSUPPORTED = 4,       /* a valid request this build does not support (dtype, blocksize, enum) */
    QEMBED_ERR_NON_FINITE = 5,        /* NaN or Inf where a finite value is required */
    QEMBED_ERR_SHAPE = 6,             /* sizes disagree, or a size product overflows */
    QEMBED_ERR_BUFFER_TOO_SMALL = 7,  /* an output capacity is smaller than required */
    QEMBED_ERR_OUT_OF_MEMORY = 8,
    QEMBED_ERR_IO = 9,                /* the operating system refused a file operation */
    QEMBED_ERR_FORMAT = 10,           /* a file or serialized state is malformed */
    QEMBED_ERR_INTERNAL = 11          /* a bug in qembed; please report it */
} qembed_status;

/*! qembed_status_string() :
 *  @return fixed English text for a status code ("ok", "invalid argument", ...),
 *  or "unknown status" for a value this version does not define. The string is
 *  static. Thread-safe. Since 0.1. */
QEMBED_API const char *qembed_status_string(int status);

/*! qembed_cpu_tier() :
 *  The instruction-set tier in use: "baseline" (x86-64-v2), "avx2" (x86-64-v3:
 *  AVX2, FMA, F16C), "avx512" (x86-64-v4: AVX-512 F/BW/DQ/VL), "native" (a
 *  build for the build machine's CPU, `make QEMBED_CPU=native`, or a non-x86
 *  build), or "none". On x86-64, libqembed.so picks the best tier the CPU and
 *  OS support once per process; the environment variable
 *  QEMBED_CPU=baseline|avx2|avx512 forces a tier. A tier the CPU lacks (or an
 *  unknown name) is refused: the tier is "none", every function that returns a
 *  status returns QEMBED_ERR_UNSUPPORTED and qembed_last_error() says why.
 *  Every tier gives byte-identical results. Since 0.1. */
QEMBED_API const char *qembed_cpu_tier(void);

/*! qembed_last_error() :
 *  @return the detailed message of the last failing qembed call made by the
 *  calling thread, or "" if none has failed. Each thread has its own message
 *  (at most 511 bytes); it is set only on failure and stays valid until the
 *  next failing call on the same thread. Owned by the library. Since 0.1. */
QEMBED_API const char *qembed_last_error(void);

/*! qembed_clear_error() :
 *  Resets the calling thread's message to "". Thread-safe. Since 0.1. */
QEMBED_API void qembed_clear_error(void);

/* ======================================================================== */
/*  Element types                                                           */
/* ======================================================================== */

typedef enum qembed_dtype {
    QEMBED_DTYPE_F32 = 0,
    QEMBED_DTYPE_F16 = 1,   /* IEEE binary16 */
    QEMBED_DTYPE_BF16 = 2,  /* bfloat16; conversions from f32 round to nearest even */
    QEMBED_DTYPE_U8 = 3,
    QEMBED_DTYPE_I8 = 4,
    QEMBED_DTYPE_I32 = 5,
    QEMBED_DTYPE_I64 = 6,
    QEMBED_DTYPE_COUNT      /* not a type: the number of values */
} qembed_dtype;

/*! qembed_dtype_size() :
 *  @return the size in bytes of one element of `dtype`, or 0 for an unknown
 *  value. Thread-safe. Since 0.1. */
QEMBED_API size_t qembed_dtype_size(int dtype);

/*! qembed_dtype_name() :
 *  @return "f32", "f16", "bf16", "u8", "i8", "i32", "i64", or "unknown".
 *  Static string. Thread-safe. Since 0.1. */
QEMBED_API const char *qembed_dtype_name(int dtype);

/* 4-bit data types. */
typedef enum qembed_quant_type {
    QEMBED_QUANT_FP4 = 0,  /* 1 sign, 2 exponent, 1 mantissa bit; bitsandbytes "fp4" */
    QEMBED_QUANT_NF4 = 1,  /* NormalFloat4; bitsandbytes "nf4" */
    QEMBED_QUANT_COUNT
} qembed_quant_type;

/* ======================================================================== */
/*  Threads                                                                 */
/* ======================================================================== */

/*! qembed_get_num_threads() :
 *  @return the number of worker threads kernels may use (>= 1). The default
 *  is the QEMBED_NUM_THREADS environment variable when it holds a positive
 *  integer, else the number of online cores. Thread-safe. Since 0.1. */
QEMBED_API int qembed_get_num_threads(void);

/*! qembed_set_num_threads() :
 *  Sets the process-wide worker-thread count used by every later call.
 *  `n` = 0 restores the default; 1..1024 sets it.
 *  @return QEMBED_OK, or QEMBED_ERR_INVALID_ARGUMENT for n < 0 or n > 1024.
 *  Thread-safe (an atomic store); calls already running keep their count. Since 0.1. */
QEMBED_API qembed_status qembed_set_num_threads(int n);

/* ======================================================================== */
/*  Quantization maps (codebooks)                                           */
/* ======================================================================== */
/* Every map is 256 float32 values sorted ascending (bitsandbytes' layout);
 * maps with fewer than 256 levels are padded with zeros. They equal
 * bitsandbytes 0.50.2's to the bit. All are pure and thread-safe. */

#define QEMBED_CODE_SIZE 256

/*! qembed_create_dynamic_map() :
 *  The dynamic tree map of bitsandbytes.functional.create_dynamic_map().
 *  @param is_signed          true: signed map (zero at index 127), false: unsigned (zero at 0).
 *  @param max_exponent_bits  >= 1 (0 with total_bits 1), as bitsandbytes: at or above
 *                            total_bits - 1 the signed map is the total_bits - 1 one;
 *                            refused where upstream's count assertion fails
 *                            (unsigned with max_exponent_bits >= total_bits). Default 7.
 *  @param total_bits         1..8; default 8.
 *  @param code               out: 256 floats.
 *  @return QEMBED_OK, QEMBED_ERR_NULL_POINTER or QEMBED_ERR_INVALID_ARGUMENT. Since 0.1. */
QEMBED_API qembed_status qembed_create_dynamic_map(bool is_signed, int max_exponent_bits,
                                                   int total_bits, float *code);

/*! qembed_create_linear_map() :
 *  bitsandbytes.functional.create_linear_map(signed, total_bits, add_zero).
 *  @param total_bits 0..8 (0 gives all zeros, as upstream). @param code out: 256 floats. Since 0.1. */
QEMBED_API qembed_status qembed_create_linear_map(bool is_signed, int total_bits, bool add_zero,
                                                  float *code);

/*! qembed_create_fp8_map() :
 *  bitsandbytes.functional.create_fp8_map(signed, exponent_bits, precision_bits, total_bits).
 *  Requires exponent_bits >= 1 when signed (>= 0 unsigned), precision_bits >= 0, total_bits 1..8 and
 *  exponent_bits + precision_bits + (is_signed ? 1 : 0) == total_bits.
 *  @param code out: 256 floats. Since 0.1. */
QEMBED_API qembed_status qembed_create_fp8_map(bool is_signed, int exponent_bits,
                                               int precision_bits, int total_bits, float *code);

/*! qembed_create_normal_map() :
 *  bitsandbytes.functional.create_normal_map(offset, use_extra_value): the NF4
 *  construction from normal quantiles, computed without scipy.
 *  @param offset  in (0.5, 1); bitsandbytes' default is 0.9677083.
 *  @param code    out: 256 floats. Since 0.1. */
QEMBED_API qembed_status qembed_create_normal_map(double offset, bool use_extra_value, float *code);

/*! qembed_get_4bit_code() :
 *  The 16 levels of a 4-bit type in index order, as bitsandbytes'
 *  get_4bit_type() (NF4 sorted; FP4 in bit-pattern order, normalized to [-1, 1]).
 *  @param quant_type QEMBED_QUANT_FP4 or QEMBED_QUANT_NF4.
 *  @param code       out: 16 floats. Since 0.1. */
QEMBED_API qembed_status qembed_get_4bit_code(int quant_type, float *code);

/* ======================================================================== */
/*  Blockwise 8-bit quantization                                            */
/* ======================================================================== */
/* Blocks of `blocksize` consecutive elements (any blocksize >= 1; the last
 * block may be short). absmax[b] = max |x| of block b (float32). Each value is
 * scaled by 1/absmax[b], clamped to [-1, 1], and mapped to the NEAREST code
 * entry: with midpoints m[i] = (code[i] + code[i+1]) / 2 in float32, the index
 * is the number of midpoints strictly below the scaled value (a value exactly
 * on a midpoint takes the lower index). This is exact, unlike bitsandbytes'
 * CPU kernel, which approximates the search with a 65536-entry table. A block
 * of zeros has absmax 0 and dequantizes to zeros. When 1/absmax overflows
 * (absmax below 2^-128), values are divided by absmax instead.
 *
 * Kernels are stateless and reentrant: any number of threads may call them
 * at once. Inputs are never modified; no pointer is kept after return.
 * Outputs may not overlap inputs. */

/*! qembed_blockwise_absmax_count() :
 *  @return in *count the number of blocks (absmax entries) for n elements:
 *  ceil(n / blocksize). Requires n >= 0, blocksize >= 1. Since 0.1. */
QEMBED_API qembed_status qembed_blockwise_absmax_count(int64_t n, int64_t blocksize, int64_t *count);

/*! qembed_quantize_blockwise() :
 *  bitsandbytes.functional.quantize_blockwise with the exact nearest rule.
 *  @param A          n elements of `dtype` (F32, F16 or BF16); must be finite.
 *  @param dtype      element type of A.
 *  @param n          number of elements, >= 1.
 *  @param code       256 sorted floats, or NULL for the signed dynamic map.
 *                    Must be sorted ascending and finite.
 *  @param blocksize  >= 1 (bitsandbytes documents 64..4096; any value works).
 *  @param out        out: n code indices.
 *  @param absmax     out: absmax_len floats, one per block.
 *  @param absmax_len capacity of absmax; must be >= ceil(n / blocksize).
 *  @return QEMBED_OK; QEMBED_ERR_NULL_POINTER, _INVALID_ARGUMENT, _UNSUPPORTED
 *  (dtype), _BUFFER_TOO_SMALL, or _NON_FINITE (NaN/Inf in A, the first one
 *  named; out and absmax unspecified, see "Status codes and errors").
 *  Since 0.1. */
QEMBED_API qembed_status qembed_quantize_blockwise(const void *A, int dtype, int64_t n,
                                                   const float *code, int64_t blocksize,
                                                   uint8_t *out, float *absmax, int64_t absmax_len);

/*! qembed_dequantize_blockwise() :
 *  out[i] = code[A[i]] * absmax[i / blocksize], computed in float32 and
 *  converted to `out_dtype` (F32, F16 or BF16; round to nearest even).
 *  @param A          n code indices.
 *  @param n          >= 1.
 *  @param absmax     absmax_len floats; absmax_len >= ceil(n / blocksize).
 *  @param code       256 floats, or NULL for the signed dynamic map.
 *  @param out        out: n elements of out_dtype.
 *  @return QEMBED_OK or an error as above. Since 0.1. */
QEMBED_API qembed_status qembed_dequantize_blockwise(const uint8_t *A, int64_t n,
                                                     const float *absmax, int64_t absmax_len,
                                                     const float *code, int64_t blocksize,
                                                     int out_dtype, void *out);

/*! qembed_quantize_statistics() :
 *  Nested (double) quantization of absmax values, as bitsandbytes'
 *  quantize_blockwise(nested=True) and quantize_4bit(compress_statistics=True):
 *  *offset = mean(absmax) (accumulated in double, rounded to float), then
 *  absmax - offset is blockwise-quantized with the signed dynamic map.
 *  bitsandbytes uses nested_blocksize 256 for 4-bit statistics and the data
 *  blocksize for 8-bit nested.
 *  @param absmax            count finite floats.
 *  @param count             >= 1.
 *  @param nested_blocksize  >= 1.
 *  @param qabsmax           out: count code indices.
 *  @param nested_absmax     out: nested_absmax_len >= ceil(count / nested_blocksize) floats.
 *  @param offset            out: the mean.
 *  Since 0.1. */
QEMBED_API qembed_status qembed_quantize_statistics(const float *absmax, int64_t count,
                                                    int64_t nested_blocksize, uint8_t *qabsmax,
                                                    float *nested_absmax, int64_t nested_absmax_len,
                                                    float *offset);

/*! qembed_dequantize_statistics() :
 *  absmax[i] = nested_code[qabsmax[i]] * nested_absmax[i / nested_blocksize] + offset
 *  (float32, in that order, as bitsandbytes).
 *  @param nested_code 256 floats, or NULL for the signed dynamic map.
 *  @param absmax      out: count floats. Since 0.1. */
QEMBED_API qembed_status qembed_dequantize_statistics(const uint8_t *qabsmax, int64_t count,
                                                      const float *nested_absmax,
                                                      int64_t nested_absmax_len,
                                                      const float *nested_code,
                                                      int64_t nested_blocksize, float offset,
                                                      float *absmax);

/* ======================================================================== */
/*  4-bit quantization (FP4 / NF4)                                          */
/* ======================================================================== */
/* Same blocks and absmax as blockwise 8-bit, 16 levels. Two values per byte:
 * element 2k in the HIGH nibble, element 2k+1 in the LOW nibble (bitsandbytes'
 * layout); an odd n is padded with a zero value. Packed size: (n + 1) / 2.
 * The nearest level is found among the levels sorted stably (FP4's two zero
 * levels, nibbles 0 and 8, sort as 0 then 8 with a midpoint of 0 between
 * them), so the packed bytes equal bitsandbytes 0.50.2's CPU output: a tiny
 * positive value takes nibble 8, zero and tiny negative values nibble 0; both
 * dequantize to +0. */

/*! qembed_4bit_packed_bytes() :
 *  @return in *bytes the packed size of n 4-bit values: ceil(n / 2). Since 0.1. */
QEMBED_API qembed_status qembed_4bit_packed_bytes(int64_t n, int64_t *bytes);

/*! qembed_quantize_4bit() :
 *  bitsandbytes.functional.quantize_4bit with the exact nearest rule.
 *  On QEMBED_ERR_NON_FINITE (the first NaN/Inf named) packed and absmax are
 *  unspecified, as for qembed_quantize_blockwise.
 *  @param A          n finite elements of dtype F32, F16 or BF16.
 *  @param blocksize  one of 32, 64, 128, 256, 512, 1024, 2048, 4096.
 *  @param quant_type QEMBED_QUANT_FP4 or QEMBED_QUANT_NF4.
 *  @param packed     out: packed_len >= ceil(n/2) bytes.
 *  @param absmax     out: absmax_len >= ceil(n/blocksize) floats.
 *  Since 0.1. */
QEMBED_API qembed_status qembed_quantize_4bit(const void *A, int dtype, int64_t n,
                                              int64_t blocksize, int quant_type,
                                              uint8_t *packed, int64_t packed_len,
                                              float *absmax, int64_t absmax_len);

/*! qembed_dequantize_4bit() :
 *  out[i] = level[nibble i] * absmax[i / blocksize] in float32, converted to
 *  out_dtype (F32, F16, BF16).
 *  @param packed     packed_len >= ceil(n/2) bytes.
 *  @param absmax     absmax_len >= ceil(n/blocksize) floats.
 *  @param out        out: n elements. Since 0.1. */
QEMBED_API qembed_status qembed_dequantize_4bit(const uint8_t *packed, int64_t packed_len,
                                                int64_t n, const float *absmax,
                                                int64_t absmax_len, int64_t blocksize,
                                                int quant_type, int out_dtype, void *out);

/* ======================================================================== */
/*  Int8 row-wise quantization (LLM.int8, Embedding8bit)                    */
/* ======================================================================== */

/*! qembed_int8_vectorwise_quant() :
 *  bitsandbytes.functional.int8_vectorwise_quant for a rows x cols matrix:
 *  row_stats[r] = max |A[r,:]| and out = round_half_even(A * scale[r]) with
 *  scale[r] = (1 / row_stats[r]) * 127 in float32 (how torch evaluates
 *  bitsandbytes' 127.0 / row_stats, so results match it to the bit). A zero
 *  row quantizes to zeros; when 1 / row_stats overflows (subnormal rows),
 *  A / row_stats * 127 is used. With threshold > 0, elements with
 *  |x| >= threshold are outliers: they are left out of row_stats, and every
 *  column holding one is zeroed in `out` and listed in outlier_cols.
 *  On QEMBED_ERR_NON_FINITE (the first NaN/Inf named) out and row_stats are
 *  unspecified when threshold == 0 (one pass over A), untouched otherwise.
 *  @param A             rows*cols finite elements of F32, F16 or BF16.
 *  @param threshold     >= 0 and finite; 0 disables outliers.
 *  @param out           out: rows*cols int8.
 *  @param row_stats     out: rows floats.
 *  @param outlier_cols  out (may be NULL when threshold == 0): up to cols
 *                       ascending column indices.
 *  @param n_outlier_cols out (may be NULL when threshold == 0): their count.
 *  Since 0.1. */
QEMBED_API qembed_status qembed_int8_vectorwise_quant(const void *A, int dtype, int64_t rows,
                                                      int64_t cols, float threshold, int8_t *out,
                                                      float *row_stats, int32_t *outlier_cols,
                                                      int64_t *n_outlier_cols);

/*! qembed_int8_vectorwise_dequant() :
 *  out = (A * row_stats[r]) * (1/127 as float32), in float32 and in that
 *  order (bit-identical to bitsandbytes), converted to out_dtype.
 *  Since 0.1. */
QEMBED_API qembed_status qembed_int8_vectorwise_dequant(const int8_t *A, int64_t rows,
                                                        int64_t cols, const float *row_stats,
                                                        int out_dtype, void *out);

/* ======================================================================== */
/*  Parameters                                                              */
/* ======================================================================== */
/* A parameter is a tensor: its data (f32, f16 or bf16), a float32 dense
 * gradient, a sparse gradient (sorted distinct row ids + summed rows) for
 * sparse layers, a name and per-parameter optimizer overrides.
 *
 * A layer's parameters ("weight", "norm.weight", "norm.bias") are borrowed
 * from it: valid until the layer is freed, never freed by the caller; their
 * dense gradient is allocated by the first dense backward.
 *
 * A standalone parameter (qembed_param_create, qembed_param_wrap) belongs to
 * the caller, who frees it with qembed_param_free; it may own its memory or
 * view the caller's (any float buffer of another framework, with no copy),
 * and its gradient is whatever the caller sets (qembed_param_set_grad copies,
 * qembed_param_wrap_grad views caller memory, qembed_param_clear_grad drops
 * it). Optimizers accept any mix of layer and standalone parameters and keep
 * each one alive until the optimizer is freed.
 *
 * Thread safety of a standalone parameter: the calls below that change it
 * (load, set_grad, wrap_grad, clear_grad) take its own lock and are
 * serialized with each other and with an optimizer step updating it;
 * info_get and the override calls behave as for a layer's parameter. */

typedef struct qembed_param qembed_param;

/* Optimizer settings a parameter may override (GlobalOptimManager.override_config). */
typedef enum qembed_override_key {
    QEMBED_OVERRIDE_OPTIM_BITS = 0,   /* 8 or 32 */
    QEMBED_OVERRIDE_LR = 1,
    QEMBED_OVERRIDE_BETA1 = 2,
    QEMBED_OVERRIDE_BETA2 = 3,
    QEMBED_OVERRIDE_EPS = 4,
    QEMBED_OVERRIDE_WEIGHT_DECAY = 5,
    QEMBED_OVERRIDE_COUNT
} qembed_override_key;

typedef struct qembed_param_info {
    uint32_t struct_size;   /* set to sizeof(qembed_param_info) before the call */
    const char *name;       /* owned by the parameter */
    int dtype;              /* qembed_dtype of data */
    int ndim;               /* 1 or 2 */
    int64_t shape[2];       /* shape[1] is 1 when ndim == 1 */
    int64_t numel;
    void *data;             /* numel elements of dtype, 64-byte aligned */
    float *grad;            /* numel floats, or NULL before the first dense backward */
    bool requires_grad;     /* false for a frozen pretrained weight */
    bool sparse;            /* the gradient is sparse (qembed_param_sparse_grad) */
} qembed_param_info;

/*! qembed_param_info_get() :
 *  Fills *info (info->struct_size must be set). Pointers stay valid while the
 *  layer lives; `grad` may change from NULL to a buffer on the first backward.
 *  Thread-safe. Since 0.1. */
QEMBED_API qembed_status qembed_param_info_get(const qembed_param *param, qembed_param_info *info);

/*! qembed_param_sparse_grad() :
 *  The coalesced sparse gradient of a sparse parameter: *nnz_rows sorted,
 *  distinct row ids and, for each, a row of shape[1] floats (summed
 *  contributions). Copies into caller buffers: rows (rows_cap entries) and
 *  values (values_cap floats); call first with rows = values = NULL to get
 *  *nnz_rows only. *nnz_rows is 0 after zero_grad. Since 0.1. */
QEMBED_API qembed_status qembed_param_sparse_grad(const qembed_param *param, int64_t *nnz_rows,
                                                  int64_t *rows, int64_t rows_cap,
                                                  float *values, int64_t values_cap);

/*! qembed_param_set_override() / qembed_param_get_override() / qembed_param_clear_override() :
 *  Per-parameter optimizer settings that win over an optimizer's defaults.
 *  optim_bits must be 8 or 32; lr, eps, weight_decay finite and >= 0; betas
 *  in [0, 1). get sets *is_set false (and *value 0) when no override exists.
 *  Embedding and StableEmbedding set optim_bits = 32 on their weight.
 *  Not synchronized with a concurrent optimizer step on the same parameter. Since 0.1. */
QEMBED_API qembed_status qembed_param_set_override(qembed_param *param, int key, double value);
QEMBED_API qembed_status qembed_param_get_override(const qembed_param *param, int key, double *value,
                                                   bool *is_set);
QEMBED_API qembed_status qembed_param_clear_override(qembed_param *param, int key);

/*! qembed_param_load() :
 *  Copies numel elements of `dtype` (f32/f16/bf16, converted to the
 *  parameter's dtype with round to nearest even) into the parameter's data.
 *  Validates everything (size, dtype, finiteness of the source and of the
 *  converted values: a value beyond float16's range is refused for an f16
 *  parameter, where torch's copy_ would store inf) before writing; on failure
 *  the parameter is unchanged. Serialized with the owning layer's other
 *  mutating calls. Since 0.1. */
QEMBED_API qembed_status qembed_param_load(qembed_param *param, const void *src, int dtype, int64_t numel);

/*! qembed_param_create() :
 *  A standalone parameter that owns zeroed, 64-byte aligned memory: `name`
 *  (copied; NULL gives "param"), dtype f32/f16/bf16 (QEMBED_DTYPE_*), ndim
 *  1 or 2, shape[0..ndim) each >= 1 (a tensor of more dimensions is passed
 *  as (shape[0], product of the rest): the optimizers are elementwise). It
 *  has no gradient until one is set; requires_grad is true, sparse false.
 *  *out is NULL on failure. Since 0.2. */
QEMBED_API qembed_status qembed_param_create(const char *name, int dtype, int ndim, const int64_t *shape,
                                             qembed_param **out);

/*! qembed_param_wrap() :
 *  As qembed_param_create, over the caller's memory: `data` holds numel
 *  elements of dtype, aligned to the element size (64-byte alignment is
 *  fastest). Nothing is copied: optimizer steps write the new values into
 *  `data`. The caller's contract: keep `data` alive, unmoved and at its size
 *  until the parameter and every optimizer holding it are freed, and do not
 *  read or write it while a step that updates it runs. Since 0.2. */
QEMBED_API qembed_status qembed_param_wrap(const char *name, int dtype, int ndim, const int64_t *shape, void *data,
                                           qembed_param **out);

/*! qembed_param_free() :
 *  Releases a parameter from qembed_param_create or qembed_param_wrap (an
 *  optimizer that holds it keeps it until the optimizer is freed). NULL and
 *  a layer's parameter (freed with its layer) are no-ops. Since 0.2. */
QEMBED_API void qembed_param_free(qembed_param *param);

/*! qembed_param_set_grad() :
 *  The dense gradient becomes a copy of `grad`: numel (= the parameter's
 *  numel) elements of dtype f32/f16/bf16, converted to float32, stored in
 *  the parameter's own gradient buffer (allocated once; a wrapped gradient
 *  is replaced by it, the caller's memory is not written). Refused, with nothing changed, for a
 *  sparse layer parameter (its gradient comes from backward), a size
 *  mismatch, or a NaN/Inf (QEMBED_ERR_NON_FINITE naming the element).
 *  Since 0.2. */
QEMBED_API qembed_status qembed_param_set_grad(qembed_param *param, const void *grad, int dtype, int64_t numel);

/*! qembed_param_wrap_grad() :
 *  The dense gradient becomes the caller's memory, with no copy: numel
 *  (= the parameter's numel) float32s, 4-byte aligned. The caller keeps it
 *  alive and unmoved until the gradient is replaced (set_grad, wrap_grad) or
 *  cleared, or the parameter and its optimizers are freed. A dense backward
 *  accumulates into it and zero_grad writes zeros there. It is not checked
 *  for finiteness here (it can change afterwards): every step checks it and
 *  refuses a NaN/Inf as usual. Dense parameters only. Since 0.2. */
QEMBED_API qembed_status qembed_param_wrap_grad(qembed_param *param, float *grad, int64_t numel);

/*! qembed_param_clear_grad() :
 *  No gradient (torch's `p.grad = None`): info.grad becomes NULL (a
 *  wrapped buffer is forgotten; the parameter's own buffer is kept, zeroed
 *  at its next use, and freed with the parameter, so a grad pointer read
 *  earlier never dangles) and a sparse gradient is emptied; optimizer steps
 *  skip the parameter until it has a gradient again. Since 0.2. */
QEMBED_API qembed_status qembed_param_clear_grad(qembed_param *param);

/* ======================================================================== */
/*  Embedding and StableEmbedding                                           */
/* ======================================================================== */
/* bitsandbytes.nn.Embedding (torch.nn.Embedding with Xavier-uniform init) and
 * bitsandbytes.nn.StableEmbedding (Embedding + LayerNorm(eps 1e-5) computed in
 * float32, output cast to the weight dtype).
 *
 * Thread safety: every call on one layer may run concurrently with any other.
 * forward without max_norm takes a shared lock and runs in parallel with other
 * such forwards; forward with max_norm (it renormalizes rows in place),
 * backward, zero_grad, reset_parameters and qembed_param_load take the layer's
 * exclusive lock and are serialized. Results of concurrent forwards equal
 * those of sequential ones. Reading parameter data through
 * qembed_param_info_get pointers while a mutating call runs is a data race. */

typedef struct qembed_embedding qembed_embedding;

#define QEMBED_NO_PADDING INT64_MIN

typedef struct qembed_embedding_params {
    uint32_t struct_size;      /* sizeof(qembed_embedding_params) */
    int64_t num_embeddings;    /* >= 1 */
    int64_t embedding_dim;     /* >= 1 */
    int64_t padding_idx;       /* QEMBED_NO_PADDING, or in [-num_embeddings, num_embeddings) */
    double max_norm;           /* renormalize looked-up rows to this norm; 0 = none */
    double norm_type;          /* p of the p-norm for max_norm, > 0 (default 2; INFINITY allowed) */
    bool scale_grad_by_freq;
    bool sparse;               /* backward produces a sparse gradient */
    int dtype;                 /* weight dtype: QEMBED_DTYPE_F32 (default), F16 or BF16 */
    uint64_t seed;             /* seed of the Xavier-uniform init (default 0) */
    const void *weight;        /* optional pretrained num_embeddings x embedding_dim table (copied) */
    int weight_dtype;          /* dtype of `weight` */
    bool freeze;               /* with `weight`: requires_grad = false (from_pretrained(freeze=True)) */
} qembed_embedding_params;

/*! qembed_embedding_params_init() :
 *  Fills *p with bitsandbytes' defaults (padding none, max_norm none,
 *  norm_type 2, f32, seed 0, no pretrained weight). Since 0.1. */
QEMBED_API void qembed_embedding_params_init(qembed_embedding_params *p);

/*! qembed_embedding_create() / qembed_stable_embedding_create() :
 *  Creates a layer. Without `weight`, the table is Xavier-uniform
 *  U(-a, a), a = sqrt(6 / (num_embeddings + embedding_dim)), drawn from a
 *  deterministic generator seeded by p->seed, and the padding row is zero.
 *  With `weight`, the table is a copy (the padding row is kept as given, as
 *  torch's from_pretrained). StableEmbedding adds "norm.weight" (ones) and
 *  "norm.bias" (zeros), float32. *out is NULL on failure. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_create(const qembed_embedding_params *p, qembed_embedding **out);
QEMBED_API qembed_status qembed_stable_embedding_create(const qembed_embedding_params *p,
                                                        qembed_embedding **out);

/*! qembed_embedding_create_shard() :
 *  One row shard of a larger table: the layer holds rows [row_offset,
 *  row_offset + p->num_embeddings) of a table of total_rows rows (a
 *  StableEmbedding with `stable`), and is used with local ids 0 ..
 *  num_embeddings - 1 like any layer. Two things differ from
 *  qembed_embedding_create: p->padding_idx names a row of the whole table
 *  (the shard zeroes and skips it only when it holds it), and the Xavier
 *  draw is the shard's rows of the whole table's draw for p->seed (fan_in =
 *  total_rows), so the shards of a seed tile the unsharded table bit for
 *  bit. p->weight, when set, holds the shard's rows. Errors as for
 *  qembed_embedding_create, and QEMBED_ERR_OUT_OF_RANGE when the rows do not
 *  fit in total_rows. Optimizers choose the shard's state width by the whole
 *  table's size (total_rows x embedding_dim against min_8bit_size), so every
 *  shard gets the state the unsharded table would; for 8-bit state
 *  identical to the unsharded table's, start shards at a row_offset with
 *  row_offset x embedding_dim a multiple of 256 (the state's block). Since 0.2. */
QEMBED_API qembed_status qembed_embedding_create_shard(const qembed_embedding_params *p, bool stable, int64_t row_offset,
                                                       int64_t total_rows, qembed_embedding **out);

/*! qembed_embedding_get_shard() : the rows this layer holds: *row_offset and
 *  *total_rows (0 and num_embeddings for a layer that is a whole table). Since 0.2. */
QEMBED_API qembed_status qembed_embedding_get_shard(const qembed_embedding *e, int64_t *row_offset, int64_t *total_rows);

/*! qembed_embedding_free() : frees the layer and its parameters; NULL is a no-op.
 *  No other call on the layer may be running. Since 0.1. */
QEMBED_API void qembed_embedding_free(qembed_embedding *e);

/*! qembed_embedding_get_params() :
 *  Copies the layer's configuration into *p (p->struct_size must be set;
 *  p->weight is NULL, padding_idx normalized to [0, num_embeddings) or
 *  QEMBED_NO_PADDING). *is_stable tells StableEmbedding. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_get_params(const qembed_embedding *e, qembed_embedding_params *p,
                                                     bool *is_stable);

/*! qembed_embedding_forward() :
 *  out[k, :] = row indices[k] (StableEmbedding: its LayerNorm), k < count, as
 *  out_dtype (F32, F16, BF16). indices are I32 or I64, each in
 *  [0, num_embeddings); all are validated before anything is written. With
 *  max_norm, each distinct referenced row whose norm exceeds max_norm is first
 *  rescaled in place by max_norm / (norm + 1e-7), as torch.
 *  @param out_len capacity of out in elements: >= count * embedding_dim.
 *  count may be 0. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_forward(qembed_embedding *e, const void *indices, int index_dtype,
                                                  int64_t count, void *out, int out_dtype, int64_t out_len);

/*! qembed_embedding_backward() :
 *  Accumulates the gradient of the last forward's output for these indices:
 *  grad_output is count x embedding_dim of grad_dtype (F32, F16, BF16).
 *  Dense: weight.grad[i] += sum of the grad rows looked up as i (divided by
 *  the count of i in this batch with scale_grad_by_freq); the padding row gets
 *  nothing. Sparse: the same sums, merged into the coalesced sparse gradient.
 *  StableEmbedding: the gradient flows through the LayerNorm (recomputed from
 *  the current weight) into the rows, "norm.weight" and "norm.bias".
 *  A frozen weight receives nothing. Validates all inputs (indices in range,
 *  grad_output finite) before any write. A backward that touches no row
 *  (count 0, or padding only) still counts, as torch's zero / empty sparse
 *  gradient does: the next optimizer step advances the parameters' step
 *  counts (Since 0.2; 0.1 skipped them). Since 0.1. */
QEMBED_API qembed_status qembed_embedding_backward(qembed_embedding *e, const void *indices, int index_dtype,
                                                   int64_t count, const void *grad_output, int grad_dtype,
                                                   int64_t grad_len);

/*! qembed_embedding_zero_grad() : dense gradients to 0, sparse gradient emptied. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_zero_grad(qembed_embedding *e);

/*! qembed_embedding_reset_parameters() :
 *  Re-draws the Xavier-uniform table from `seed` (padding row zero) and resets
 *  the LayerNorm to ones/zeros. Gradients are kept. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_reset_parameters(qembed_embedding *e, uint64_t seed);

/*! qembed_embedding_num_params() / qembed_embedding_param() :
 *  The layer's parameters in upstream's order: "weight" (and for
 *  StableEmbedding "norm.weight", "norm.bias"). *param is borrowed. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_num_params(const qembed_embedding *e, int64_t *n);
QEMBED_API qembed_status qembed_embedding_param(qembed_embedding *e, int64_t i, qembed_param **param);

/* ======================================================================== */
/*  Optimizers (32-bit and blockwise 8-bit state)                           */
/* ======================================================================== */
/* bitsandbytes' optimizers over qembed parameters. 8-bit state is blockwise
 * (256 elements per block, float32 absmax per block; state1 with the signed
 * dynamic map, state2 with the unsigned one; the exact nearest code, except
 * that a positive second moment -- Adam's state2, RMSprop's and Adagrad's
 * state1 -- never rounds to the zero code but to the smallest positive one,
 * so the update m / (sqrt(v) + eps) stays bounded; qembed_optimizer_state_import
 * raises an Adam state2 code of zero beside a nonzero state1 code the same
 * way, so older checkpoints and bitsandbytes' states load into
 * the same rule); a parameter with fewer than
 * min_8bit_size elements, or whose optim_bits override is 32 (Embedding and
 * StableEmbedding weights), keeps 32-bit state. Overrides are read from each
 * parameter (qembed_param_set_override), so they never leak to another
 * parameter or optimizer.
 *
 * qembed_optimizer_step(): updates every parameter that has a gradient. All
 * gradients are validated first; a NaN/Inf gradient skips the whole step
 * (no parameter or state changes) and returns QEMBED_ERR_NON_FINITE naming the
 * parameter and element. So does an update that would overflow: a step never
 * leaves NaN/Inf in a parameter or its state (a finite gradient of 1e30 whose
 * square overflows Adam's second moment, eps = 0 with a zero gradient and
 * state, a float16 weight pushed past 65504); the step is refused, nothing
 * changes, and every exported state can be imported again. Most steps are
 * proven finite from bounds the optimizer keeps; the others are checked on
 * a copy of the parameter and its state. Sparse gradients update only their rows; untouched
 * rows' state is not decayed (as torch.optim.SparseAdam), and 8-bit state of a
 * sparse parameter uses blocks that never straddle rows (ceil(cols/256) per
 * row). skip_zeros skips elements whose gradient is exactly 0.
 *
 * Thread safety: an optimizer's calls are serialized internally; a step takes
 * each parameter's layer lock while updating it, so it may run concurrently
 * with forwards (which then see rows before or after the update). */

typedef struct qembed_optimizer qembed_optimizer;

typedef enum qembed_optimizer_kind {
    QEMBED_OPTIM_ADAM = 0,
    QEMBED_OPTIM_ADAMW = 1,     /* Adam with decoupled weight decay (default 1e-2) */
    QEMBED_OPTIM_MOMENTUM = 2,  /* SGD with momentum (beta1 = momentum, > 0) */
    QEMBED_OPTIM_LION = 3,
    QEMBED_OPTIM_RMSPROP = 4,   /* beta1 = alpha */
    QEMBED_OPTIM_ADAGRAD = 5,
    QEMBED_OPTIM_COUNT
} qembed_optimizer_kind;

typedef struct qembed_optimizer_params {
    uint32_t struct_size;   /* sizeof(qembed_optimizer_params) */
    int kind;               /* qembed_optimizer_kind */
    double lr;
    double beta1;           /* Adam/Lion beta1, SGD momentum, RMSprop alpha */
    double beta2;
    double eps;
    double weight_decay;
    int optim_bits;         /* 8 or 32 */
    int64_t min_8bit_size;  /* default 4096 */
    double max_unorm;       /* 0 = off; 32-bit adam/momentum/rmsprop only */
    bool skip_zeros;
} qembed_optimizer_params;

/*! qembed_optimizer_params_init() :
 *  Fills *p with bitsandbytes' defaults for `kind` and optim_bits (8 for the
 *  *8bit classes, else 32). Returns QEMBED_ERR_INVALID_ARGUMENT for an
 *  unknown kind or bits. Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_params_init(qembed_optimizer_params *p, int kind, int optim_bits);

/*! qembed_optimizer_create() :
 *  An optimizer over n_params distinct parameters (borrowed handles; the
 *  optimizer keeps them alive). State is allocated at the first step that
 *  sees a gradient. *out is NULL on failure. Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_create(const qembed_optimizer_params *p, qembed_param *const *params,
                                                 int64_t n_params, qembed_optimizer **out);

/*! qembed_optimizer_free() : NULL is a no-op. Since 0.1. */
QEMBED_API void qembed_optimizer_free(qembed_optimizer *o);

/*! qembed_optimizer_step() : one update of every parameter with a gradient. Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_step(qembed_optimizer *o);

/*! qembed_optimizer_step_all() :
 *  One step of n distinct optimizers as a single update (a framework's
 *  parameter groups, each with its own hyperparameters): every gradient of
 *  every optimizer is validated first, and a step refused in any of them (a
 *  NaN/Inf gradient, an update that would overflow) changes nothing in any.
 *  n = 0 is a no-op. The optimizers are locked in a fixed order, so calls
 *  over overlapping sets from several threads cannot deadlock. Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_step_all(qembed_optimizer *const *optimizers, int64_t n);

/*! qembed_optimizer_set_params() :
 *  Replaces the optimizer's hyperparameters in place (lr, betas, eps,
 *  weight_decay, max_unorm, skip_zeros; a learning-rate schedule calls it
 *  before each step) keeping every state and its step count. The kind
 *  cannot change; optim_bits and min_8bit_size apply to states created
 *  afterwards. Validated as qembed_optimizer_create validates, against every
 *  parameter's overrides; on failure nothing changes. Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_set_params(qembed_optimizer *o, const qembed_optimizer_params *p);

/*! qembed_optimizer_zero_grad() : zero_grad() of every parameter. Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_zero_grad(qembed_optimizer *o);

typedef struct qembed_optimizer_state_info {
    uint32_t struct_size;   /* sizeof(qembed_optimizer_state_info) */
    bool initialized;       /* false until the first step that updated the parameter */
    int64_t step;
    int bits;               /* 8 or 32 (what it has, or will get) */
    int num_states;         /* 1 or 2 */
    int64_t numel;
    int64_t num_blocks;     /* absmax entries per state (8-bit), else 0 */
    bool row_aligned;       /* 8-bit blocks never straddle rows (sparse parameters) */
    int64_t state_bytes;    /* bytes held for this parameter */
} qembed_optimizer_state_info;

/*! qembed_optimizer_state_info_get() : state of parameter i (0-based). Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_state_info_get(const qembed_optimizer *o, int64_t i,
                                                         qembed_optimizer_state_info *info);

/*! qembed_optimizer_state_export() :
 *  Copies parameter i's state (bitsandbytes' state_dict entries) into caller
 *  buffers: state1/state2 (numel floats for 32-bit, numel bytes for 8-bit;
 *  state2 only for 2-state optimizers) and absmax1/absmax2 (num_blocks floats,
 *  8-bit only). Pass NULL for buffers not wanted; sizes are in bytes.
 *  Requires an initialized state. Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_state_export(const qembed_optimizer *o, int64_t i,
                                                       void *state1, int64_t state1_bytes,
                                                       void *state2, int64_t state2_bytes,
                                                       float *absmax1, int64_t absmax1_len,
                                                       float *absmax2, int64_t absmax2_len);

/*! qembed_optimizer_state_import() :
 *  Replaces parameter i's state with `bits` (8 or 32) state at `step`; every
 *  buffer's size is checked against the parameter (and the values for
 *  finiteness) before anything changes. Resuming continues the same
 *  trajectory. Since 0.1. */
QEMBED_API qembed_status qembed_optimizer_state_import(qembed_optimizer *o, int64_t i, int64_t step, int bits,
                                                       const void *state1, int64_t state1_bytes,
                                                       const void *state2, int64_t state2_bytes,
                                                       const float *absmax1, int64_t absmax1_len,
                                                       const float *absmax2, int64_t absmax2_len);

/* ======================================================================== */
/*  Tensor files: safetensors and .npy                                      */
/* ======================================================================== */
/* A tensor file is mapped read-only and validated on open (header length,
 * JSON object, dtypes, shapes, byte counts, offsets inside the data and not
 * overlapping); tensor data pointers point into the mapping (no copy) and stay
 * valid until qembed_tensor_file_close(). A .npy file (by extension) holds one
 * tensor named "array". Writes are atomic: a temporary file in the same
 * directory is written, fsynced and renamed over the path, so a failed or
 * interrupted save leaves the previous file intact. Open files are read-only
 * and may be used from many threads. */

typedef struct qembed_tensor_file qembed_tensor_file;

#define QEMBED_MAX_DIMS 8

typedef struct qembed_tensor_info {
    uint32_t struct_size;      /* sizeof(qembed_tensor_info) */
    const char *name;          /* owned by the file */
    const char *dtype_name;    /* the file's spelling: "F32", "BF16", "I8", "F64", ... */
    int dtype;                 /* qembed_dtype, or -1 for dtypes qembed does not compute with */
    int ndim;                  /* <= QEMBED_MAX_DIMS */
    int64_t shape[QEMBED_MAX_DIMS];
    int64_t numel;
    int64_t nbytes;
    const void *data;          /* inside the file's bytes (valid while the handle lives); may be unaligned for its dtype */
} qembed_tensor_info;

/* Files are read whole into memory the handle owns: a file truncated or
 * rewritten after it was opened (or a layer loaded) changes nothing, and
 * nothing crashes. With QEMBED_OPEN_MMAP the file is mapped instead (zero
 * copy, pages read on demand, shared with the page cache): then the file must
 * not be truncated or rewritten while the handle lives, as with numpy.memmap
 * and torch.load(mmap=True); a read past a truncated end raises SIGBUS.
 * Only regular files are opened (a FIFO or device is refused without
 * blocking). Safetensors headers are held to the format: at most 100 MB, at
 * most 1,000,000 tensors and 1,000,000 metadata entries (parsed in linear
 * time), the tensors tiling the data area exactly (no hole, nothing before
 * the first or after the last), names and metadata without NUL. */
#define QEMBED_OPEN_MMAP 1u

/*! qembed_tensor_file_open() : reads and validates a .safetensors or .npy file
 *  (qembed_tensor_file_open_ex with flags 0).
 *  Errors: QEMBED_ERR_IO (cannot open/read, not a regular file), QEMBED_ERR_FORMAT (malformed). Since 0.1. */
QEMBED_API qembed_status qembed_tensor_file_open(const char *path, qembed_tensor_file **out);

/*! qembed_tensor_file_open_ex() : as qembed_tensor_file_open; flags 0 or
 *  QEMBED_OPEN_MMAP (others: QEMBED_ERR_INVALID_ARGUMENT). Since 0.1. */
QEMBED_API qembed_status qembed_tensor_file_open_ex(const char *path, uint32_t flags, qembed_tensor_file **out);

/*! qembed_tensor_file_close() : unmaps; NULL is a no-op. Since 0.1. */
QEMBED_API void qembed_tensor_file_close(qembed_tensor_file *f);

/*! qembed_tensor_file_count() : number of tensors. Since 0.1. */
QEMBED_API qembed_status qembed_tensor_file_count(const qembed_tensor_file *f, int64_t *n);

/*! qembed_tensor_file_info() : tensor i (0-based, in the file's header order). Since 0.1. */
QEMBED_API qembed_status qembed_tensor_file_info(const qembed_tensor_file *f, int64_t i, qembed_tensor_info *info);

/*! qembed_tensor_file_find() : *index of the tensor called `name`;
 *  QEMBED_ERR_INVALID_ARGUMENT naming the tensor when absent. Since 0.1. */
QEMBED_API qembed_status qembed_tensor_file_find(const qembed_tensor_file *f, const char *name, int64_t *index);

/*! qembed_tensor_file_metadata() : the "__metadata__" value for `key`, or
 *  *value = NULL when absent (status OK). Owned by the file. Since 0.1. */
QEMBED_API qembed_status qembed_tensor_file_metadata(const qembed_tensor_file *f, const char *key, const char **value);

typedef struct qembed_tensor_desc {
    const char *name;
    int dtype;                 /* qembed_dtype */
    int ndim;
    int64_t shape[QEMBED_MAX_DIMS];
    const void *data;          /* numel * dtype size bytes */
} qembed_tensor_desc;

/*! qembed_save_safetensors() : writes n tensors (and n_meta string pairs of
 *  metadata, may be 0) atomically. Names must be distinct. Since 0.1. */
QEMBED_API qembed_status qembed_save_safetensors(const char *path, const qembed_tensor_desc *tensors, int64_t n,
                                                 const char *const *meta_keys, const char *const *meta_values,
                                                 int64_t n_meta);

/*! qembed_save_npy() : writes one tensor atomically as .npy (not bf16). Since 0.1. */
QEMBED_API qembed_status qembed_save_npy(const char *path, const qembed_tensor_desc *tensor);

/*! qembed_embedding_save() : saves a float layer's parameters ("weight", and
 *  "norm.weight", "norm.bias" for StableEmbedding) atomically as safetensors.
 *  Takes the layer's shared lock. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_save(qembed_embedding *e, const char *path);

/* ======================================================================== */
/*  Quantized embeddings: Embedding8bit, Embedding4bit (FP4 / NF4)          */
/* ======================================================================== */
/* bitsandbytes.nn.Embedding8bit (int8 rows + float32 SCB per row; forward
 * row * (SCB / 127)) and Embedding4bit / EmbeddingFP4 / EmbeddingNF4 (any
 * 4-bit blocksize, optional nested statistics). A lookup dequantizes only the
 * referenced rows, to out_dtype; values are first rounded to the dtype of the
 * weight the layer was made from, as upstream's .to(self.dtype). Quantized
 * layers are immutable: every call may run concurrently. Unlike upstream,
 * they save and load (safetensors, bitsandbytes' keys and QuantState JSON). */

typedef struct qembed_qembedding qembed_qembedding;

typedef enum qembed_qembedding_kind {
    QEMBED_QEMB_INT8 = 0,
    QEMBED_QEMB_FP4 = 1,
    QEMBED_QEMB_NF4 = 2,
    QEMBED_QEMB_COUNT
} qembed_qembedding_kind;

/*! qembed_qembedding_quantize() :
 *  Quantizes a rows x dim float table (F32, F16, BF16; finite) directly,
 *  without upstream's detour through float16. blocksize (4-bit only) is one of
 *  32..4096; compress_statistics (4-bit only) quantizes the absmax with the
 *  signed dynamic map in blocks of 256. Since 0.1. */
QEMBED_API qembed_status qembed_qembedding_quantize(const void *weight, int dtype, int64_t rows, int64_t dim,
                                                    int kind, int64_t blocksize, bool compress_statistics,
                                                    qembed_qembedding **out);

/*! qembed_qembedding_quantize_shard() :
 *  Quantizes one row shard of a larger table: `weight` holds rows
 *  [row_offset, row_offset + rows) of a table of total_rows x dim, and the
 *  result is byte for byte those rows of qembed_qembedding_quantize of the
 *  whole table (so the shards' forward outputs tile the whole table's). The
 *  layer is used with local ids 0 .. rows - 1 like any quantized layer;
 *  qembed_qembedding_get_shard reports the range. INT8 scales are per row:
 *  any row_offset works. A 4-bit shard must not split a block: row_offset x
 *  dim must be a multiple of blocksize, and so must (row_offset + rows) x dim
 *  unless the shard ends the table; otherwise QEMBED_ERR_INVALID_ARGUMENT.
 *  compress_statistics is refused (QEMBED_ERR_INVALID_ARGUMENT) for a shard
 *  that is not the whole table: the nested statistics' offset is the mean of
 *  every block's absmax, which a shard cannot know, so its nested bytes would
 *  differ from the whole table's. Other errors as qembed_qembedding_quantize;
 *  QEMBED_ERR_OUT_OF_RANGE when row_offset < 0 or the rows do not fit in
 *  total_rows; QEMBED_ERR_INVALID_ARGUMENT when total_rows < 1,
 *  QEMBED_ERR_SHAPE when total_rows x dim overflows. *out is NULL on failure.
 *  qembed_qembedding_save writes a shard's rows as an ordinary table (the
 *  range is not recorded in the file). Since 0.3. */
QEMBED_API qembed_status qembed_qembedding_quantize_shard(const void *weight, int dtype, int64_t rows, int64_t dim,
                                                          int kind, int64_t blocksize, bool compress_statistics,
                                                          int64_t row_offset, int64_t total_rows,
                                                          qembed_qembedding **out);

/*! qembed_qembedding_get_shard() : the rows this quantized layer holds:
 *  *row_offset and *total_rows (0 and num_embeddings for a layer that is a
 *  whole table). Nothing is written on failure. Since 0.3. */
QEMBED_API qembed_status qembed_qembedding_get_shard(const qembed_qembedding *q, int64_t *row_offset, int64_t *total_rows);

/*! qembed_qembedding_from_embedding() : the same from a layer's current weight
 *  (a row shard's result is an ordinary table of its rows, not a shard; use
 *  qembed_qembedding_quantize_shard with its weight for a quantized shard). Since 0.1. */
QEMBED_API qembed_status qembed_qembedding_from_embedding(qembed_embedding *e, int kind, int64_t blocksize,
                                                          bool compress_statistics, qembed_qembedding **out);

/*! qembed_qembedding_free() : NULL is a no-op. Since 0.1. */
QEMBED_API void qembed_qembedding_free(qembed_qembedding *q);

typedef struct qembed_qembedding_info {
    uint32_t struct_size;      /* sizeof(qembed_qembedding_info) */
    int kind;
    int64_t num_embeddings;
    int64_t embedding_dim;
    int dtype;                 /* dtype of the original weight */
    int64_t blocksize;         /* 4-bit blocksize (embedding_dim for int8) */
    bool nested;               /* compressed statistics */
    int64_t table_bytes;       /* bytes of the quantized table and its statistics */
} qembed_qembedding_info;

/*! qembed_qembedding_info_get() : Since 0.1. */
QEMBED_API qembed_status qembed_qembedding_info_get(const qembed_qembedding *q, qembed_qembedding_info *info);

/*! qembed_qembedding_forward() : out[k, :] = dequantized row indices[k]
 *  (I32 or I64, validated first), out_len >= count * embedding_dim. Since 0.1. */
QEMBED_API qembed_status qembed_qembedding_forward(const qembed_qembedding *q, const void *indices, int index_dtype,
                                                   int64_t count, void *out, int out_dtype, int64_t out_len);

/*! qembed_qembedding_save() : safetensors, atomically, under tensor names
 *  `prefix` (NULL: "weight"), `prefix`.SCB for int8; for 4-bit `prefix`,
 *  .absmax, .quant_map, [.nested_absmax, .nested_quant_map],
 *  .quant_state.bitsandbytes__nf4|fp4 (bitsandbytes' QuantState JSON). Since 0.1. */
QEMBED_API qembed_status qembed_qembedding_save(const qembed_qembedding *q, const char *path, const char *prefix);

/*! qembed_qembedding_load() : loads the layer stored under `prefix` (NULL:
 *  "weight" if the file holds that layer, else its only quantized layer; with
 *  several, QEMBED_ERR_INVALID_ARGUMENT lists them; a prefix the file does not
 *  hold is QEMBED_ERR_INVALID_ARGUMENT too) of a safetensors file written by qembed or bitsandbytes/
 *  transformers, into memory the layer owns (qembed_qembedding_load_ex with
 *  flags 0). The JSON is checked against the tensors, and every statistic
 *  must decode to a finite value. Since 0.1. */
QEMBED_API qembed_status qembed_qembedding_load(const char *path, const char *prefix, qembed_qembedding **out);

/*! qembed_qembedding_load_ex() : as qembed_qembedding_load; with
 *  QEMBED_OPEN_MMAP the packed table stays in the mapped file (no copy; the
 *  file must not change while the layer lives, see QEMBED_OPEN_MMAP). Since 0.1. */
QEMBED_API qembed_status qembed_qembedding_load_ex(const char *path, const char *prefix, uint32_t flags,
                                                   qembed_qembedding **out);

/* ======================================================================== */
/*  LoRA over a frozen table                                                */
/* ======================================================================== */
/* peft's LoRA for embeddings (peft.tuners.lora.layer.Embedding) over any
 * qembed table, float or quantized (int8, FP4/NF4, nested statistics), which
 * stays frozen:
 *
 *     out = base(ids) + (A^T[ids] @ B^T) * scaling
 *     scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora
 *
 * peft's lora_embedding_A is r x num_embeddings (zeros at creation) and
 * lora_embedding_B is embedding_dim x r (standard normal draws from `seed`;
 * peft draws from torch's generator, so the values differ, not the law).
 * The two parameters (qembed_lora_param 0 and 1, named "lora_embedding_A"
 * and "lora_embedding_B") hold A^T (num_embeddings x r) and B^T
 * (r x embedding_dim): the layout peft's forward multiplies, one row of A^T
 * per id. Transpose them to get peft's tensors (the Python binding does).
 *
 * A^T is looked up the way peft does it (F.embedding with the base's
 * padding_idx, scale_grad_by_freq and sparse): no gradient reaches the
 * padding row, and a sparse base gives A^T a sparse (row) gradient. A float
 * base with max_norm is refused (peft would renormalize A^T in place). Any
 * optimizer trains the two parameters (8-bit state where they are large
 * enough: min_8bit_size).
 *
 * Thread safety: forwards may run concurrently with each other (a shared
 * lock); backward, zero_grad and optimizer steps on the parameters are
 * serialized with them. The base table must outlive the LoRA layer's use of
 * it: the layer holds its own reference, so freeing the base handle first is
 * allowed. */

typedef struct qembed_lora qembed_lora;

typedef struct qembed_lora_params {
    uint32_t struct_size;   /* sizeof(qembed_lora_params) */
    int64_t r;              /* rank, >= 1 (default 8) */
    double lora_alpha;      /* finite (default 8) */
    bool use_rslora;        /* scaling alpha / sqrt(r) instead of alpha / r (default false) */
    uint64_t seed;          /* draws of lora_embedding_B (default 0) */
} qembed_lora_params;

/*! qembed_lora_params_init() : peft's defaults (r 8, lora_alpha 8, no rslora), seed 0. Since 0.2. */
QEMBED_API void qembed_lora_params_init(qembed_lora_params *p);

/*! qembed_lora_create() :
 *  A LoRA layer over exactly one base: a float table (float_base) or a
 *  quantized one (quantized_base); the other must be NULL. *out is NULL on
 *  failure. Since 0.2. */
QEMBED_API qembed_status qembed_lora_create(const qembed_lora_params *p, qembed_embedding *float_base,
                                            qembed_qembedding *quantized_base, qembed_lora **out);

/*! qembed_lora_free() : NULL is a no-op. Since 0.2. */
QEMBED_API void qembed_lora_free(qembed_lora *l);

/*! qembed_lora_get_params() : the creation parameters, and (when scaling is
 *  not NULL) the scaling in force. Since 0.2. */
QEMBED_API qembed_status qembed_lora_get_params(const qembed_lora *l, qembed_lora_params *p, double *scaling);

/*! qembed_lora_forward() :
 *  out (count x embedding_dim of out_dtype, out_len elements) = the base's
 *  rows + the low-rank update, computed in float32: the base row as its
 *  own lookup gives it in float32, plus (sum_j A^T[id, j] B^T[j, :]) *
 *  scaling, then rounded to out_dtype. Indices as qembed_embedding_forward.
 *  Since 0.2. */
QEMBED_API qembed_status qembed_lora_forward(qembed_lora *l, const void *indices, int index_dtype, int64_t count,
                                             void *out, int out_dtype, int64_t out_len);

/*! qembed_lora_backward() :
 *  Accumulates the gradients of A^T and B^T for grad_output (count x
 *  embedding_dim of grad_dtype, grad_len elements): dA^T[id] += (g @ B) *
 *  scaling (through A^T's lookup rules) and dB^T += A^T[ids]^T @ g *
 *  scaling. Validated first (indices, sizes, finite); nothing changes on
 *  failure. Since 0.2. */
QEMBED_API qembed_status qembed_lora_backward(qembed_lora *l, const void *indices, int index_dtype, int64_t count,
                                              const void *grad_output, int grad_dtype, int64_t grad_len);

/*! qembed_lora_zero_grad() : zeroes both gradients (a sparse one is emptied). Since 0.2. */
QEMBED_API qembed_status qembed_lora_zero_grad(qembed_lora *l);

/*! qembed_lora_param() : parameter i (0: A^T, 1: B^T), borrowed from the layer. Since 0.2. */
QEMBED_API qembed_status qembed_lora_param(qembed_lora *l, int64_t i, qembed_param **param);

/*! qembed_lora_merge() :
 *  The adapted table, every row (num_embeddings x embedding_dim of
 *  out_dtype, out_len elements): what qembed_lora_forward gives for ids 0,
 *  1, ..., num_embeddings - 1 (peft's merge, W + (B @ A)^T * scaling).
 *  Quantize it again with qembed_qembedding_quantize for a merged quantized
 *  table. Since 0.2. */
QEMBED_API qembed_status qembed_lora_merge(qembed_lora *l, void *out, int out_dtype, int64_t out_len);

/* ======================================================================== */
/*  Bags: pooled lookups (torch.nn.EmbeddingBag)                            */
/* ======================================================================== */
/* torch.nn.functional.embedding_bag over a float layer (qembed_embedding,
 * trainable: forward and backward) or a quantized one (qembed_qembedding:
 * forward; each row is dequantized and reduced in one pass, the looked-up rows
 * are never materialized). Bag b of a qembed_bags holds indices
 * [start(b), end(b)):
 *  - offsets form (offsets != NULL): start(b) = offsets[b]; end(b) =
 *    offsets[b + 1], and for the last bag `count`, or with
 *    include_last_offset the last offset (indices after it belong to no bag).
 *    num_bags = num_offsets (num_offsets - 1 with include_last_offset).
 *    offsets[0] must be 0, offsets non-decreasing, none above count.
 *  - fixed form (offsets == NULL): num_bags bags of count / num_bags indices
 *    each (a 2-D input of torch); count % num_bags == 0; num_bags 0 needs count 0.
 * out[b, :] = the reduction over the bag's indices i other than padding_idx:
 *  SUM: sum of rows (times per_sample_weights[k] when given: SUM only), in
 *       index order, in float32; MEAN: that sum divided by the number of
 *       non-padding indices; MAX: the elementwise maximum (the first index
 *       wins ties). A bag with no non-padding index gives zeros (all modes).
 * Rows are read as the layer's lookups return them, as float32 (a quantized
 * table's rows exactly as qembed_qembedding_forward returns them, rounded to
 * the dtype of the weight it was made from), reduced in float32, and stored
 * as out_dtype.
 * All arguments are validated before anything is written. */

typedef enum qembed_bag_mode {
    QEMBED_BAG_SUM = 0,
    QEMBED_BAG_MEAN = 1,
    QEMBED_BAG_MAX = 2,
    QEMBED_BAG_MODE_COUNT
} qembed_bag_mode;

typedef struct qembed_bags {
    uint32_t struct_size;            /* sizeof(qembed_bags) */
    const void *indices;             /* count indices (may be NULL when count is 0) */
    int index_dtype;                 /* QEMBED_DTYPE_I32 or I64 */
    int64_t count;
    const void *offsets;             /* num_offsets offsets of index_dtype, or NULL (fixed form) */
    int64_t num_offsets;
    bool include_last_offset;        /* offsets form: the last offset ends the last bag */
    int64_t num_bags;                /* fixed form only (offsets NULL); must be 0 otherwise */
    const void *per_sample_weights;  /* count weights (SUM only), finite, or NULL */
    int weights_dtype;               /* F32, F16 or BF16 */
    int mode;                        /* qembed_bag_mode (default MEAN, as torch) */
    int64_t padding_idx;             /* QEMBED_NO_PADDING (default): a float layer uses its own
                                        padding_idx, a quantized one none; else in [-rows, rows) */
} qembed_bags;

/*! qembed_bags_init() : count 0, no offsets, mode MEAN, I64, F32 weights,
 *  padding from the layer. Since 0.1. */
QEMBED_API void qembed_bags_init(qembed_bags *b);

/*! qembed_bags_num_bags() : *num_bags = the number of bags b describes
 *  (the output has num_bags x embedding_dim elements); validates the shape
 *  fields, not the index values. Since 0.1. */
QEMBED_API qembed_status qembed_bags_num_bags(const qembed_bags *b, int64_t *num_bags);

/*! qembed_embedding_bag_forward() :
 *  out (num_bags x embedding_dim of out_dtype F32, F16 or BF16, capacity
 *  out_len elements) = the bags' reductions over the layer's weight (a
 *  StableEmbedding's raw rows, without its LayerNorm). With max_norm, the
 *  referenced rows are first renormalized in place, as qembed_embedding_forward.
 *  Since 0.1. */
QEMBED_API qembed_status qembed_embedding_bag_forward(qembed_embedding *e, const qembed_bags *b,
                                                      void *out, int out_dtype, int64_t out_len);

/*! qembed_embedding_bag_backward() :
 *  Accumulates the weight gradient of a bag forward given grad_output
 *  (num_bags x embedding_dim of grad_dtype, finite): SUM adds the bag's
 *  gradient row (times its per-sample weight) to each index's row, MEAN the
 *  row divided by the bag's non-padding count, MAX each element to the row
 *  that held that element's maximum (recomputed from the current weight: call
 *  it before the weight changes). scale_grad_by_freq divides by the count of
 *  the index in the whole input; padding rows get nothing; dense or sparse as
 *  the layer. As torch, MAX refuses scale_grad_by_freq and sparse layers.
 *  grad_per_sample_weights (count floats, or NULL) receives, when
 *  per_sample_weights are given, d out / d weight[k] = grad_output[bag(k)] .
 *  row(indices[k]) (0 for padding and for indices in no bag); a non-NULL
 *  grad_per_sample_weights without per_sample_weights is refused
 *  (QEMBED_ERR_INVALID_ARGUMENT). A frozen weight receives nothing. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_bag_backward(qembed_embedding *e, const qembed_bags *b,
                                                       const void *grad_output, int grad_dtype, int64_t grad_len,
                                                       float *grad_per_sample_weights);

/*! qembed_qembedding_bag_forward() : the same reductions over a quantized
 *  table (padding_idx from b; max_norm does not apply). Since 0.1. */
QEMBED_API qembed_status qembed_qembedding_bag_forward(const qembed_qembedding *q, const qembed_bags *b,
                                                       void *out, int out_dtype, int64_t out_len);

/* ======================================================================== */
/*  Scoring: queries against every row (logits, nearest neighbours)        */
/* ======================================================================== */
/* scores[i, r] = <queries[i], row r> (DOT) or that divided by
 * max(|queries[i]|, 1e-8) * max(|row r|, 1e-8) (COSINE), for every row r of a
 * float layer's weight (a StableEmbedding's raw rows) or of a quantized table
 * (its rows as qembed_qembedding_forward returns them as F32): the tied
 * output projection, inner-product or cosine search. queries are
 * num_queries x embedding_dim of F32, F16 or BF16, finite; num_queries may
 * be 0 (nothing is written).
 *
 * Summation order (exact, on every CPU tier and thread count, for one query
 * or many, with or without top-k): products q[j] * w[j] are rounded to
 * float32 (no fused multiply-add) and added in float32 into 8 lanes, lane l
 * taking j = l, l + 8, l + 16, ... in order; the lanes are then added as
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). Norms are the square
 * roots of the same sums of squares. Against the exact real dot product the
 * error is at most gamma(dim / 8 + 3) * sum_j |q[j] w[j]|, with
 * gamma(n) = n u / (1 - n u), u = 2^-24. Rows whose score is NaN (a NaN in
 * the table) rank below every number in top-k. */

typedef enum qembed_score_metric {
    QEMBED_SCORE_DOT = 0,
    QEMBED_SCORE_COSINE = 1,
    QEMBED_SCORE_METRIC_COUNT
} qembed_score_metric;

/*! qembed_embedding_score() / qembed_qembedding_score() :
 *  scores (num_queries x num_embeddings float32, capacity scores_len
 *  elements) = every query scored against every row. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_score(qembed_embedding *e, const void *queries, int query_dtype,
                                                int64_t num_queries, int metric, float *scores, int64_t scores_len);
QEMBED_API qembed_status qembed_qembedding_score(const qembed_qembedding *q, const void *queries, int query_dtype,
                                                 int64_t num_queries, int metric, float *scores, int64_t scores_len);

/*! qembed_embedding_topk() / qembed_qembedding_topk() :
 *  The k best rows of each query without the full score matrix: indices and
 *  scores (num_queries x k each, capacity out_len elements) sorted by score
 *  descending, ties to the lower row index; 1 <= k <= num_embeddings. The
 *  scores equal those of *_score bit for bit. Since 0.1. */
QEMBED_API qembed_status qembed_embedding_topk(qembed_embedding *e, const void *queries, int query_dtype,
                                               int64_t num_queries, int metric, int64_t k,
                                               int64_t *indices, float *scores, int64_t out_len);
QEMBED_API qembed_status qembed_qembedding_topk(const qembed_qembedding *q, const void *queries, int query_dtype,
                                                int64_t num_queries, int metric, int64_t k,
                                                int64_t *indices, float *scores, int64_t out_len);

#ifdef __cplusplus
}
#endif
#endif /* QEMBED_H */
