/* Vector helpers the Swift core needs but Swift 6.3 does not lower well:
 * SIMD8<Float>.squareRoot() becomes eight scalar sqrtf calls with errno
 * checks, while __builtin_elementwise_sqrt is one correctly rounded vsqrtps.
 * Header-only and internal to the core; not part of the C API. */
#ifndef QEMBED_SIMD_H
#define QEMBED_SIMD_H

#include <stdint.h>

typedef float qembed__f32x8 __attribute__((ext_vector_type(8)));

static inline __attribute__((always_inline)) qembed__f32x8 qembed__sqrt8(qembed__f32x8 x) {
    return __builtin_elementwise_sqrt(x);
}

/* a * b + c with one rounding (vfmadd), lane-wise. */
static inline __attribute__((always_inline)) qembed__f32x8 qembed__fma8(qembed__f32x8 a, qembed__f32x8 b, qembed__f32x8 c) {
    return __builtin_elementwise_fma(a, b, c);
}

typedef unsigned short qembed__u16x8 __attribute__((ext_vector_type(8)));
typedef unsigned int qembed__u32x8 __attribute__((ext_vector_type(8)));

/* 8 bfloat16 values at p as floats (vpmovzxwd + shift; Swift's generic
 * SIMD8<UInt32>(truncatingIfNeeded:) is an out-of-line call). */
static inline __attribute__((always_inline)) qembed__f32x8 qembed__bf16_load8(const unsigned short *p) {
    qembed__u16x8 h;
    qembed__u32x8 w;
    qembed__f32x8 f;
    __builtin_memcpy(&h, p, sizeof h);
    w = __builtin_convertvector(h, qembed__u32x8) << 16;
    __builtin_memcpy(&f, &w, sizeof f);
    return f;
}

typedef signed char qembed__i8x8 __attribute__((ext_vector_type(8)));

/* 8 int8 values at p as floats (vpmovsxbd + vcvtdq2ps). */
static inline __attribute__((always_inline)) qembed__f32x8 qembed__i8_load8(const signed char *p) {
    qembed__i8x8 b;
    __builtin_memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, qembed__f32x8);
}

/* Prefetches `bytes` bytes at p (one hint per 64-byte line) for reading:
 * random row gathers are latency-bound without it. */
static inline __attribute__((always_inline)) void qembed__prefetch(const void *p, long bytes) {
    const char *c = (const char *)p;
    for (long i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 3);
}

/* memcpy(dst, src, bytes) for one row of a gather. glibc copies a few KiB
 * with `rep movsb`, which on AMD Zen 3 runs 2.5-3x slower when dst is not
 * 64-byte aligned (numpy's arrays start 16 bytes past a line): 65,536 rows
 * of 4 KiB took 155-165 ms against 48-65 ms aligned, and 50-58 ms with the
 * 16-byte vector loop used here for rows of >= 2 KiB into such a dst. */
void qembed__copy_row(void *dst, const void *src, long bytes);

/* memcpy(dst, src, bytes) with non-temporal stores for the whole 64-byte
 * lines of dst (ordinary stores for a partial first and last line): large
 * outputs written around the caches skip the read-for-ownership of every
 * line, which on Zen 3 made a 64M-element dequantize into float32 run in
 * 10-12 ms instead of 18-24 ms (2 threads). Call qembed__stream_fence()
 * before another thread may read dst. */
void qembed__stream_store(void *dst, const void *src, long bytes);
/* out[k] = code[q[k]] * absmax for k < n (float32, rounded once): the 8-bit
 * dequantize, eight lookups per AVX2 multiply. Needs qembed__avx2_enabled(). */
void qembed__8bit_run_avx2(const uint8_t *q, long n, const float *code, float absmax, float *out);
/* Orders this thread's non-temporal stores before its later stores (sfence). */
void qembed__stream_fence(void);

/* The AVX-512 VBMI register-table kernels (run-time dispatched). */
#include "qembed_vbmi.h"
#include "qembed_4bit.h"
#include "qembed_bag.h"
#include "qembed_score.h"
#include "qembed_lora.h"

#endif
