/* AVX-512 bag kernels: one call reduces one bag of rows (float32, int8
 * row-wise or packed 4-bit) with the accumulators held in registers across
 * the bag's rows, a tile of up to 128 floats at a time. Internal to the
 * core, not API.
 *
 * Each kernel equals the scalar rule of BagReduce.swift element for
 * element: a row value is the f32 weight, q * (SCB / 127) (int8) or
 * code[nibble] * absmax (4-bit, high nibble of a byte first; absmax of a
 * nested table = nested_code[qabsmax] * nested_absmax + offset); a sum adds
 * the values (times the per-sample weight, when given) to +0 in the order of
 * the bag, every product and sum rounded once (no fused multiply-add); max
 * keeps the first non-padding row and then a value only where it is larger
 * (NaN and equal values keep the earlier one). Chosen at run time (AVX-512
 * F+BW+DQ+VL and the OS's ZMM state), off under QEMBED_CPU=baseline|avx2. */
#ifndef QEMBED_BAG_H
#define QEMBED_BAG_H

#include <stdint.h>

enum { QEMBED__BAG_F32 = 0, QEMBED__BAG_I8 = 1, QEMBED__BAG_4BIT = 2 };

typedef struct qembed__bag_rows {
    int kind;                    /* QEMBED__BAG_* */
    long dim;
    const void *data;            /* float rows, int8 rows, or packed nibbles */
    const float *scales;         /* int8: SCB per row; 4-bit: absmax per block, or NULL when nested */
    long blocksize;              /* 4-bit: a power of two, a multiple of 16 */
    const float *code;           /* 4-bit: the 16 code values */
    const uint8_t *qabsmax;      /* nested 4-bit statistics */
    const float *nested_code;
    const float *nested_absmax;
    long nested_blocksize;
    float offset;
} qembed__bag_rows;

/* The bags of a batch, as Bags.swift holds them: bag b is indices
 * [start(b), end(b)). */
typedef struct qembed__bag_bounds {
    const void *offsets;  /* int64 when the indices are, else int32; NULL: fixed-length bags */
    long fixed;           /* offsets NULL: the bag length; else -1 when the last offset ends the
                             last bag (include_last_offset), -2 when count does */
    long num_bags;
    long count;           /* indices in all */
} qembed__bag_bounds;

/* Row helpers the AVX-512 and AVX2 kernels share. */
#if defined(__x86_64__)
#include <xmmintrin.h>

static inline __attribute__((always_inline)) long qembed__bag_index(const void *idx, int is64, long k) {
    return is64 ? (long)((const int64_t *)idx)[k] : (long)((const int32_t *)idx)[k];
}

/* Every cache line that [p, p + bytes) touches (rows need not start on a line). */
static inline __attribute__((always_inline)) void qembed__bag_prefetch(const void *p, long bytes) {
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)63, end = (uintptr_t)p + (uintptr_t)bytes;
    for (; a < end; a += 64) _mm_prefetch((const char *)a, _MM_HINT_T0);
}

/* Row i of any kind, with its scale or block statistics. */
static inline __attribute__((always_inline)) void qembed__bag_prefetch_row(const qembed__bag_rows *r, int kind, long i) {
    if (kind == QEMBED__BAG_F32) {
        qembed__bag_prefetch((const float *)r->data + i * r->dim, r->dim * 4);
    } else if (kind == QEMBED__BAG_I8) {
        qembed__bag_prefetch((const int8_t *)r->data + i * r->dim, r->dim);
        _mm_prefetch((const char *)(r->scales + i), _MM_HINT_T0);
    } else {
        long e = i * r->dim;
        qembed__bag_prefetch((const uint8_t *)r->data + e / 2, r->dim / 2);
        long b = e >> __builtin_ctzl((unsigned long)r->blocksize);
        if (r->scales) _mm_prefetch((const char *)(r->scales + b), _MM_HINT_T0);
        else _mm_prefetch((const char *)(r->qabsmax + b), _MM_HINT_T0);
    }
}

static inline __attribute__((always_inline)) long qembed__bag_start(const qembed__bag_bounds *bb, int is64, long b) {
    return bb->offsets ? qembed__bag_index(bb->offsets, is64, b) : b * bb->fixed;
}

static inline __attribute__((always_inline)) long qembed__bag_end(const qembed__bag_bounds *bb, int is64, long b) {
    if (!bb->offsets) return (b + 1) * bb->fixed;
    return b + 1 < bb->num_bags || bb->fixed == -1 ? qembed__bag_index(bb->offsets, is64, b + 1) : bb->count;
}

/* A bag's last step after its n rows: max of no row gives zeros; mean
 * divides the sum of n > 1 rows by n (one division per value). */
static inline __attribute__((always_inline)) void qembed__bag_finish(float *acc, long dim, long n, int mode) {
    if (mode == 2 && n == 0) {
        for (long j = 0; j < dim; j++) acc[j] = 0;
    } else if (mode == 1 && n > 1) {
        const float c = (float)n;
        for (long j = 0; j < dim; j++) acc[j] /= c;
    }
}

/* The absmax of 4-bit block b (nested: nlg >= 0 is log2 of a power-of-two
 * nested blocksize, -1 for any other): the product and the sum rounded
 * once each, in two statements, so that no compiler contracts them into a
 * fused multiply-add in the AVX-512 (FMA) kernels (C contracts only within
 * one expression). */
static inline __attribute__((always_inline)) float qembed__bag_absmax(const qembed__bag_rows *r, long b, int nlg) {
    if (r->scales) return r->scales[b];
    long nb = nlg >= 0 ? b >> nlg : b / r->nested_blocksize;
    float scaled = r->nested_code[r->qabsmax[b]] * r->nested_absmax[nb];
    return scaled + r->offset;
}
#endif

/* 1 when the AVX-512 F+BW+DQ+VL kernels (bags, scoring) run on this CPU
 * and are switched on. */
int qembed__avx512_enabled(void);
/* Tests: 0 switches them off, 1 back to what the CPU allows. */
void qembed__avx512_set_enabled(int on);

/* 1 when the kernels run here for rows of this shape (4-bit: dim and
 * blocksize multiples of 16, blocksize a power of two). */
int qembed__bag512_supported(const qembed__bag_rows *r);

/* Reduces bags b0 <= b < b1 of bb, bag b into out + (b - b0) * dim: its
 * rows idx[k] (int64 indices when is64, else int32), skipping k whose index
 * equals pad (pass -1 for none). mode 0: the sum (weights w[k] multiply
 * each row when w is not NULL); 1: the mean (the sum of n > 1 rows divided
 * by n); 2: the elementwise maximum (zeros for a bag with no row). Rows
 * idx[k + pf] are prefetched while k + pf < pf_end. One call per range of
 * bags: the kind, mode and tile shape are chosen once. Needs
 * qembed__bag512_supported(r). */
void qembed__bag512_reduce_bags(const qembed__bag_rows *r, const void *idx, int is64, const qembed__bag_bounds *bb,
                                long b0, long b1, long pf, long pf_end, long pad, const float *w, int mode, float *out);

/* The same rule with AVX2 (8-float registers, tiles of up to 64 floats),
 * for CPUs without AVX-512. Needs qembed__bag256_supported(r): AVX2 on, dim
 * a multiple of 8, and for 4-bit a power-of-two blocksize of at least 8. */
int qembed__bag256_supported(const qembed__bag_rows *r);
void qembed__bag256_reduce_bags(const qembed__bag_rows *r, const void *idx, int is64, const qembed__bag_bounds *bb,
                                long b0, long b1, long pf, long pf_end, long pad, const float *w, int mode, float *out);

#endif
