/* AVX2 bag kernels (see include/qembed_bag.h for the rule): the AVX-512
 * kernels' structure with 8-float registers, for CPUs without AVX-512. One
 * bag is reduced a tile of up to 64 floats (8 YMM accumulators) at a time:
 * every row of the bag adds its tile to registers and the tile is stored
 * once, instead of a load, add and store of the accumulator per row. A tile
 * holds 8, 4, 2 or 1 vectors (dim is a multiple of 8), so every load is
 * whole. Rows are prefetched a fixed number of indices ahead (see
 * q2_prefetch). Separate multiply and add intrinsics (contraction off): every value
 * is rounded as the scalar rule rounds it. */
#include "qembed_4bit.h"
#include "qembed_bag.h"
#include "qembed_nibbles.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#ifdef __clang__
#pragma clang fp contract(off)
#endif

#define Q2_TARGET __attribute__((target("avx2")))
#define Q2_INLINE static inline __attribute__((always_inline)) Q2_TARGET

enum { Q2_ADD = 0, Q2_ADD_WEIGHTED = 1, Q2_MAX = 2 };

int qembed__bag256_supported(const qembed__bag_rows *r) {
    if (!qembed__avx2_enabled() || r->dim <= 0 || r->dim % 8 != 0) return 0;
    if (r->kind == QEMBED__BAG_4BIT) {
        long bs = r->blocksize;  /* a power of two >= 8: a vector of 8 never straddles two blocks */
        if (bs < 8 || (bs & (bs - 1)) != 0) return 0;
        if (!r->scales && (!r->qabsmax || !r->nested_code || !r->nested_absmax || r->nested_blocksize <= 0)) return 0;
    }
    return r->kind == QEMBED__BAG_F32 || r->kind == QEMBED__BAG_I8 || r->kind == QEMBED__BAG_4BIT;
}

/* Row i ahead of its use. Rows of more than 256 bytes (float rows of more
 * than 64 values): each tile prefetches its own part of the row (measured
 * on Zen 3, 512-byte rows: 9-11.5 ms against 10.3-15 ms for the whole row
 * from the first tile, 6 alternating runs each); shorter rows (int8, 4-bit,
 * small float rows) are prefetched whole, with their statistics, by the
 * first tile (int8 rows of 128 bytes: 4.2-5.1 ms against 4.8-5.9 ms). */
Q2_INLINE void q2_prefetch(const qembed__bag_rows *r, const int KIND, const int NV, long i, long t0, int first) {
    if (KIND == QEMBED__BAG_F32 && r->dim > 64) {
        qembed__bag_prefetch((const float *)r->data + i * r->dim + t0, 32 * NV);
    } else if (first) {
        qembed__bag_prefetch_row(r, KIND, i);
    }
}

/* a = a (op) x for one vector of a row: the sum, the weighted sum, or the
 * maximum (the first row reduced is stored). */
Q2_INLINE __m256 q2_op(const int OP, __m256 a, __m256 x, __m256 wk, int first) {
    if (OP == Q2_MAX) return first ? x : _mm256_blendv_ps(a, x, _mm256_cmp_ps(x, a, _CMP_GT_OQ));
    if (OP == Q2_ADD_WEIGHTED) return _mm256_add_ps(a, _mm256_mul_ps(x, wk));
    return _mm256_add_ps(a, x);
}

/* One tile: NV vectors of 8 floats from element t0 of the bag's rows.
 * Returns the rows reduced. Each vector is reduced as soon as it is
 * loaded, so that only the NV accumulators stay live across a row (16 YMM
 * registers in all). */
Q2_INLINE long q2_tile(const qembed__bag_rows *r, const int KIND, const int OP, const int NV, const int IS64,
                       const void *idx, long lo, long hi, long pf, long pf_end, long pad, const float *w, long t0,
                       int prefetch, float *acc) {
    __m256 a[8];
    for (int v = 0; v < NV; v++) a[v] = _mm256_setzero_ps();
    __m256 code_lo = _mm256_setzero_ps(), code_hi = code_lo;
    if (KIND == QEMBED__BAG_4BIT) { code_lo = _mm256_loadu_ps(r->code); code_hi = _mm256_loadu_ps(r->code + 8); }
    const long dim = r->dim;
    const int lg = KIND == QEMBED__BAG_4BIT ? __builtin_ctzl((unsigned long)r->blocksize) : 0;
    const long nbs = r->nested_blocksize;
    const int nlg = nbs > 0 && (nbs & (nbs - 1)) == 0 ? __builtin_ctzl((unsigned long)nbs) : -1;
    long n = 0;
    for (long k = lo; k < hi; k++) {
        if (k + pf < pf_end) q2_prefetch(r, KIND, NV, qembed__bag_index(idx, IS64, k + pf), t0, prefetch);
        long i = qembed__bag_index(idx, IS64, k);
        if (i == pad) continue;
        const __m256 wk = OP == Q2_ADD_WEIGHTED ? _mm256_set1_ps(w[k]) : _mm256_setzero_ps();
        const int first = n == 0;
        if (KIND == QEMBED__BAG_F32) {
            const float *row = (const float *)r->data + i * dim + t0;
            for (int v = 0; v < NV; v++) a[v] = q2_op(OP, a[v], _mm256_loadu_ps(row + 8 * v), wk, first);
        } else if (KIND == QEMBED__BAG_I8) {
            const int8_t *row = (const int8_t *)r->data + i * dim + t0;
            const __m256 s = _mm256_set1_ps(r->scales[i] / 127.0f);
            for (int v = 0; v < NV; v++) {
                __m128i q = _mm_loadl_epi64((const __m128i *)(row + 8 * v));
                a[v] = q2_op(OP, a[v], _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), s), wk, first);
            }
        } else {
            const unsigned long e = (unsigned long)(i * dim + t0), b = e >> lg;
            const uint8_t *packed = (const uint8_t *)r->data + e / 2;
            if (b == ((e + 8 * NV - 1) >> lg)) {  /* the tile's values share one absmax: the common case */
                const __m256 am = _mm256_set1_ps(qembed__bag_absmax(r, (long)b, nlg));
                const __m256 lo_s = _mm256_mul_ps(code_lo, am), hi_s = _mm256_mul_ps(code_hi, am);  /* code[j] * absmax, rounded once */
                for (int v = 0; v < NV; v++) a[v] = q2_op(OP, a[v], qembed__nibbles8_avx2(packed + 4 * v, lo_s, hi_s), wk, first);
            } else {  /* a vector of 8 never straddles a block (blocksize >= 8, a power of two) */
                for (int v = 0; v < NV; v++) {
                    const __m256 am = _mm256_set1_ps(qembed__bag_absmax(r, (long)((e + 8 * (unsigned long)v) >> lg), nlg));
                    const __m256 x = qembed__nibbles8_avx2(packed + 4 * v, _mm256_mul_ps(code_lo, am), _mm256_mul_ps(code_hi, am));
                    a[v] = q2_op(OP, a[v], x, wk, first);
                }
            }
        }
        n++;
    }
    if (OP == Q2_MAX && n == 0) return 0;
    for (int v = 0; v < NV; v++) _mm256_storeu_ps(acc + t0 + 8 * v, a[v]);
    return n;
}

/* Bags b0..<b1, each a tile of 8, 4, 2 or 1 vectors at a time (dim is a
 * multiple of 8), with the kind, op and index width fixed for the range. */
Q2_INLINE void q2_bags(const qembed__bag_rows *r, const int KIND, const int OP, const int IS64, const void *idx,
                       const qembed__bag_bounds *bb, long b0, long b1, long pf, long pf_end, long pad, const float *w,
                       int mode, float *out) {
    const long dim = r->dim;
    for (long b = b0; b < b1; b++) {
        const long lo = qembed__bag_start(bb, IS64, b), hi = qembed__bag_end(bb, IS64, b);
        float *acc = out + (b - b0) * dim;
        long n = 0, t0 = 0, left = dim / 8;
        for (; left >= 8; left -= 8, t0 += 64) n = q2_tile(r, KIND, OP, 8, IS64, idx, lo, hi, pf, pf_end, pad, w, t0, t0 == 0, acc);
        if (left >= 4) { n = q2_tile(r, KIND, OP, 4, IS64, idx, lo, hi, pf, pf_end, pad, w, t0, t0 == 0, acc); t0 += 32; left -= 4; }
        if (left >= 2) { n = q2_tile(r, KIND, OP, 2, IS64, idx, lo, hi, pf, pf_end, pad, w, t0, t0 == 0, acc); t0 += 16; left -= 2; }
        if (left) n = q2_tile(r, KIND, OP, 1, IS64, idx, lo, hi, pf, pf_end, pad, w, t0, t0 == 0, acc);
        qembed__bag_finish(acc, dim, n, mode);
    }
}

#define Q2_RANGE(KIND, OP)                                                             \
    (is64 ? q2_bags(r, KIND, OP, 1, idx, bb, b0, b1, pf, pf_end, pad, w, mode, out)    \
          : q2_bags(r, KIND, OP, 0, idx, bb, b0, b1, pf, pf_end, pad, w, mode, out))
#define Q2_OPS(KIND)                                                \
    switch (op) {                                                   \
    case Q2_ADD: Q2_RANGE(KIND, Q2_ADD); break;                     \
    case Q2_ADD_WEIGHTED: Q2_RANGE(KIND, Q2_ADD_WEIGHTED); break;   \
    default: Q2_RANGE(KIND, Q2_MAX);                                \
    }

Q2_TARGET void qembed__bag256_reduce_bags(const qembed__bag_rows *r, const void *idx, int is64,
                                          const qembed__bag_bounds *bb, long b0, long b1, long pf, long pf_end,
                                          long pad, const float *w, int mode, float *out) {
    const int op = mode == 2 ? Q2_MAX : (w ? Q2_ADD_WEIGHTED : Q2_ADD);
    switch (r->kind) {
    case QEMBED__BAG_F32: Q2_OPS(QEMBED__BAG_F32) break;
    case QEMBED__BAG_I8: Q2_OPS(QEMBED__BAG_I8) break;
    default: Q2_OPS(QEMBED__BAG_4BIT)
    }
}

#else

int qembed__bag256_supported(const qembed__bag_rows *r) { (void)r; return 0; }
void qembed__bag256_reduce_bags(const qembed__bag_rows *r, const void *idx, int is64, const qembed__bag_bounds *bb,
                                long b0, long b1, long pf, long pf_end, long pad, const float *w, int mode, float *out) {
    (void)r; (void)idx; (void)is64; (void)bb; (void)b0; (void)b1; (void)pf; (void)pf_end; (void)pad; (void)w;
    (void)mode; (void)out;
    abort();
}

#endif
