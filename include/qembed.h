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
#define QEMBED_VERSION_MINOR 1 /* bumped by new functions or enum values */
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
 * message naming the argument and the problem. */
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
 *  @param max_exponent_bits  1..(total_bits-1); bitsandbytes' default is 7.
 *  @param total_bits         2..8; default 8.
 *  @param code               out: 256 floats.
 *  @return QEMBED_OK, QEMBED_ERR_NULL_POINTER or QEMBED_ERR_INVALID_ARGUMENT. Since 0.1. */
QEMBED_API qembed_status qembed_create_dynamic_map(bool is_signed, int max_exponent_bits,
                                                   int total_bits, float *code);

/*! qembed_create_linear_map() :
 *  bitsandbytes.functional.create_linear_map(signed, total_bits, add_zero).
 *  @param total_bits 1..8. @param code out: 256 floats. Since 0.1. */
QEMBED_API qembed_status qembed_create_linear_map(bool is_signed, int total_bits, bool add_zero,
                                                  float *code);

/*! qembed_create_fp8_map() :
 *  bitsandbytes.functional.create_fp8_map(signed, exponent_bits, precision_bits, total_bits).
 *  Requires exponent_bits >= 1, precision_bits >= 0, total_bits 2..8 and
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
 *  (dtype), _BUFFER_TOO_SMALL, or _NON_FINITE (NaN/Inf in A; nothing written).
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
 * layout); an odd n is padded with a zero value. Packed size: (n + 1) / 2. */

/*! qembed_4bit_packed_bytes() :
 *  @return in *bytes the packed size of n 4-bit values: ceil(n / 2). Since 0.1. */
QEMBED_API qembed_status qembed_4bit_packed_bytes(int64_t n, int64_t *bytes);

/*! qembed_quantize_4bit() :
 *  bitsandbytes.functional.quantize_4bit with the exact nearest rule.
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
 *  row_stats[r] = max |A[r,:]| and out = round_half_even(A * (127 / row_stats[r])).
 *  A zero row quantizes to zeros. With threshold > 0, elements with
 *  |x| >= threshold are outliers: they are left out of row_stats, and every
 *  column holding one is zeroed in `out` and listed in outlier_cols.
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

#ifdef __cplusplus
}
#endif
#endif /* QEMBED_H */
