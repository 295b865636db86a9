/* AVX2 one-query row dots (see include/qembed_score.h): scores straight
 * from an int8 or 4-bit table, no decoded tile, in the scoring order of
 * Scoring.swift. Each row's 8 lanes take j = l, l + 8, ... in order (every
 * product and sum rounded once: separate multiply and add intrinsics,
 * contraction off); several rows at a time give independent add chains. */
#include "qembed_4bit.h"
#include "qembed_nibbles.h"
#include "qembed_score.h"

#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#ifdef __clang__
#pragma clang fp contract(off)
#endif

#define QE_AVX2 __attribute__((target("avx2")))

/* The sum of an 8-lane accumulator in the order Scoring.laneSum defines:
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). */
static inline __attribute__((always_inline)) QE_AVX2 float qe_lane_sum(__m256 a) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(q) + _mm_cvtss_f32(_mm_shuffle_ps(q, q, 1));
}

/* One vector of row k: acc += q * (code[nibble] * absmax), absmax of the
 * vector's block (a vector never straddles two: bs >= 8, a power of two). */
#define QE_DOT_STEP(acc, e)                                                                                 \
    acc = _mm256_add_ps(acc, _mm256_mul_ps(x, _mm256_mul_ps(qembed__nibbles8_avx2(packed + ((e) >> 1), lo, hi), \
                                                             _mm256_broadcast_ss(absmax + ((e) >> lg) - b0))))

/* The same vector from a block's own table, code[j] * absmax (rounded as
 * the product above rounds it, so the value is the same bits). */
#define QE_DOT_STEP_SCALED(acc, e, l, h) \
    acc = _mm256_add_ps(acc, _mm256_mul_ps(x, qembed__nibbles8_avx2(packed + ((e) >> 1), l, h)))

QE_AVX2 void qembed__4bit_rows_dot_avx2(const uint8_t *packed, long r0, long n, long dim, int lg, const float *absmax,
                                        const float *code, const float *q, float *out) {
    const __m256 lo = _mm256_loadu_ps(code), hi = _mm256_loadu_ps(code + 8);
    const long b0 = (r0 * dim) >> lg, bs = 1L << lg;
    long r = 0;
    if (dim % bs == 0) {
        /* Rows of whole blocks, two at a time: each block's 16 values are
         * scaled once into two registers per row, which saves a multiply
         * and a broadcast per vector (10-13% on Zen 3, NF4 30522 x 384). */
        const long nbr = dim >> lg;
        for (; r + 2 <= n; r += 2) {
            const long e0 = (r0 + r) * dim;
            const float *am = absmax + (e0 >> lg) - b0;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0;
            for (long blk = 0; blk < nbr; blk++) {
                const __m256 s0 = _mm256_broadcast_ss(am + blk), s1 = _mm256_broadcast_ss(am + nbr + blk);
                const __m256 l0 = _mm256_mul_ps(lo, s0), h0 = _mm256_mul_ps(hi, s0);
                const __m256 l1 = _mm256_mul_ps(lo, s1), h1 = _mm256_mul_ps(hi, s1);
                for (long j = blk * bs; j < (blk + 1) * bs; j += 8) {
                    const __m256 x = _mm256_loadu_ps(q + j);
                    QE_DOT_STEP_SCALED(a0, e0 + j, l0, h0);
                    QE_DOT_STEP_SCALED(a1, e0 + dim + j, l1, h1);
                }
            }
            out[r] = qe_lane_sum(a0);
            out[r + 1] = qe_lane_sum(a1);
        }
    }
    /* Four rows at a time: four independent chains hide the add latency;
     * each row's own sum keeps the one-row order. */
    for (; r + 4 <= n; r += 4) {
        const long e0 = (r0 + r) * dim;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (long j = 0; j < dim; j += 8) {
            const __m256 x = _mm256_loadu_ps(q + j);
            QE_DOT_STEP(a0, e0 + j);
            QE_DOT_STEP(a1, e0 + dim + j);
            QE_DOT_STEP(a2, e0 + 2 * dim + j);
            QE_DOT_STEP(a3, e0 + 3 * dim + j);
        }
        out[r] = qe_lane_sum(a0);
        out[r + 1] = qe_lane_sum(a1);
        out[r + 2] = qe_lane_sum(a2);
        out[r + 3] = qe_lane_sum(a3);
    }
    for (; r < n; r++) {
        const long e0 = (r0 + r) * dim;
        __m256 a0 = _mm256_setzero_ps();
        for (long j = 0; j < dim; j += 8) {
            const __m256 x = _mm256_loadu_ps(q + j);
            QE_DOT_STEP(a0, e0 + j);
        }
        out[r] = qe_lane_sum(a0);
    }
}
#undef QE_DOT_STEP
#undef QE_DOT_STEP_SCALED

/* One vector of an int8 row: acc += q * (code * scale), scale = SCB / 127. */
#define QE_I8_STEP(acc, row, s) \
    acc = _mm256_add_ps(acc, _mm256_mul_ps(x, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((row) + j)))), s)))

QE_AVX2 void qembed__i8_rows_dot_avx2(const int8_t *data, const float *scb, long r0, long n, long dim, const float *q,
                                      float *out) {
    long r = 0;
    for (; r + 4 <= n; r += 4) {
        const int8_t *p0 = data + (r0 + r) * dim, *p1 = p0 + dim, *p2 = p1 + dim, *p3 = p2 + dim;
        const __m256 s0 = _mm256_set1_ps(scb[r0 + r] / 127.0f), s1 = _mm256_set1_ps(scb[r0 + r + 1] / 127.0f);
        const __m256 s2 = _mm256_set1_ps(scb[r0 + r + 2] / 127.0f), s3 = _mm256_set1_ps(scb[r0 + r + 3] / 127.0f);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (long j = 0; j < dim; j += 8) {
            const __m256 x = _mm256_loadu_ps(q + j);
            QE_I8_STEP(a0, p0, s0);
            QE_I8_STEP(a1, p1, s1);
            QE_I8_STEP(a2, p2, s2);
            QE_I8_STEP(a3, p3, s3);
        }
        out[r] = qe_lane_sum(a0);
        out[r + 1] = qe_lane_sum(a1);
        out[r + 2] = qe_lane_sum(a2);
        out[r + 3] = qe_lane_sum(a3);
    }
    for (; r < n; r++) {
        const int8_t *p0 = data + (r0 + r) * dim;
        const __m256 s0 = _mm256_set1_ps(scb[r0 + r] / 127.0f);
        __m256 a0 = _mm256_setzero_ps();
        for (long j = 0; j < dim; j += 8) {
            const __m256 x = _mm256_loadu_ps(q + j);
            QE_I8_STEP(a0, p0, s0);
        }
        out[r] = qe_lane_sum(a0);
    }
}
#undef QE_I8_STEP

#else
void qembed__4bit_rows_dot_avx2(const uint8_t *packed, long r0, long n, long dim, int lg, const float *absmax,
                                const float *code, const float *q, float *out) {
    (void)packed; (void)r0; (void)n; (void)dim; (void)lg; (void)absmax; (void)code; (void)q; (void)out;
    abort();
}
void qembed__i8_rows_dot_avx2(const int8_t *data, const float *scb, long r0, long n, long dim, const float *q,
                              float *out) {
    (void)data; (void)scb; (void)r0; (void)n; (void)dim; (void)q; (void)out;
    abort();
}
#endif
