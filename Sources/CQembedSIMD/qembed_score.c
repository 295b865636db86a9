/* AVX-512 scoring kernel (see include/qembed_score.h for the order it keeps).
 * A block of 4 queries x 4 row pairs keeps 16 accumulators in registers; each
 * step of 8 floats loads 4 query chunks (broadcast to both halves) and 4 row
 * pairs, and rounds every product before adding it (contraction off). */
#include "qembed_score.h"
#include "qembed_bag.h"
#include "qembed_target.h"

#include <stdint.h>
#include <string.h>

void qembed__score_pair_rows(const float *a, const float *b, long stride, float *pair) {
    for (long c = 0; c < stride / 8; c++) {
        memcpy(pair + 16 * c, a + 8 * c, 32);
        if (b) memcpy(pair + 16 * c + 8, b + 8 * c, 32);
        else memset(pair + 16 * c + 8, 0, 32);
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

#ifdef __clang__
#pragma clang fp contract(off)
#endif

#define QS_INLINE static inline __attribute__((always_inline)) QEMBED__AVX512_TARGET

/* The two rows' scores of an accumulator [row 2p lanes | row 2p + 1 lanes]. */
QS_INLINE void qs_store(__m512 a, float *s0, float *s1) {
    __m512 t = _mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(2, 3, 0, 1)));  /* l0 + l4, l1 + l5, ... */
    __m512 u = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(1, 0, 3, 2)));       /* (l0+l4)+(l2+l6), ... */
    __m512 w = _mm512_add_ps(u, _mm512_permute_ps(u, _MM_SHUFFLE(2, 3, 0, 1)));
    *s0 = _mm512_cvtss_f32(w);
    *s1 = _mm_cvtss_f32(_mm512_extractf32x4_ps(w, 2));
}

QS_INLINE __m512 qs_query(const float *q, long c) { return _mm512_broadcast_f32x8(_mm256_loadu_ps(q + 8 * c)); }

/* NQ queries (qs[i] = query i) x NP row pairs from pair p0. */
QS_INLINE void qs_block(const float *q, long qstride, const int NQ, const float *tile, long p0, const int NP, long stride,
                        float *s, long ns) {
    __m512 acc[4][4];
    for (int i = 0; i < NQ; i++)
        for (int k = 0; k < NP; k++) acc[i][k] = _mm512_setzero_ps();
    const float *pairs = tile + 2 * p0 * stride;
    for (long c = 0; c < stride / 8; c++) {
        __m512 r[4], x[4];
        for (int k = 0; k < NP; k++) r[k] = _mm512_loadu_ps(pairs + 2 * k * stride + 16 * c);
        for (int i = 0; i < NQ; i++) x[i] = qs_query(q + i * qstride, c);
        for (int i = 0; i < NQ; i++)
            for (int k = 0; k < NP; k++) acc[i][k] = _mm512_add_ps(acc[i][k], _mm512_mul_ps(x[i], r[k]));
    }
    for (int i = 0; i < NQ; i++)
        for (int k = 0; k < NP; k++) qs_store(acc[i][k], s + i * ns + 2 * (p0 + k), s + i * ns + 2 * (p0 + k) + 1);
}

QEMBED__AVX512_TARGET
void qembed__score512_tile(const float *q, long nq, const float *tile, long nr, long stride, float *s, long ns) {
    long np = nr / 2;
    if (nq == 1) {
        long p = 0;
        for (; p + 4 <= np; p += 4) qs_block(q, stride, 1, tile, p, 4, stride, s, ns);
        for (; p < np; p++) qs_block(q, stride, 1, tile, p, 1, stride, s, ns);
        return;
    }
    for (long qi = 0; qi + 4 <= nq; qi += 4) {
        long p = 0;
        for (; p + 4 <= np; p += 4) qs_block(q + qi * stride, stride, 4, tile, p, 4, stride, s + qi * ns, ns);
        for (; p < np; p++) qs_block(q + qi * stride, stride, 4, tile, p, 1, stride, s + qi * ns, ns);
    }
}

/* ---- One query straight from an int8 or 4-bit table -------------------- */

/* 4-bit rows a, b (element offsets ea, eb): the scaled code of the block at
 * element e, refreshed at block starts. */
QS_INLINE __m512 qs_scaled(const qembed__bag_rows *r, long e, int lg, int nlg, __m512 code) {
    return _mm512_mul_ps(code, _mm512_set1_ps(qembed__bag_absmax(r, e >> lg, nlg)));
}

/* NP pairs of 4-bit rows (ia[k], ib[k]); scores to sa[k], sb[k]. */
QS_INLINE void qs_4bit_pairs(const qembed__bag_rows *r, const int NP, const long *ia, const long *ib, const float *q,
                             float *const *sa, float *const *sb) {
    const long dim = r->dim, bs = r->blocksize;
    const int lg = __builtin_ctzl((unsigned long)bs);
    const long nbs = r->nested_blocksize;
    const int nlg = nbs > 0 && (nbs & (nbs - 1)) == 0 ? __builtin_ctzl((unsigned long)nbs) : -1;
    const uint8_t *packed = (const uint8_t *)r->data;
    const __m512 code = _mm512_loadu_ps(r->code);
    /* lanes 0-7: row a's 8 nibbles (dword 0 or 1 of the pair), 8-15: row b's (dword 2 or 3) */
    const __m512i spread0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i spread1 = _mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m512i sh = _mm512_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24, 4, 0, 12, 8, 20, 16, 28, 24);
    const __m512i m15 = _mm512_set1_epi32(15);
    const __m512i hi16 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 16, 16, 16, 16, 16, 16, 16, 16);
    __m512 acc[2], ta[2], tb[2];
    long ea[2], eb[2];
    for (int k = 0; k < NP; k++) {
        acc[k] = _mm512_setzero_ps();
        ea[k] = ia[k] * dim; eb[k] = ib[k] * dim;
        ta[k] = tb[k] = code;
    }
    for (long j = 0; j < dim; j += 16) {
        __m512 q0 = _mm512_broadcast_f32x8(_mm256_loadu_ps(q + j));
        __m512 q1 = _mm512_broadcast_f32x8(_mm256_loadu_ps(q + j + 8));
        for (int k = 0; k < NP; k++) {
            long xa = ea[k] + j, xb = eb[k] + j;
            if (j == 0 || (xa & (bs - 1)) == 0) ta[k] = qs_scaled(r, xa, lg, nlg, code);
            if (j == 0 || (xb & (bs - 1)) == 0) tb[k] = qs_scaled(r, xb, lg, nlg, code);
            uint64_t ua, ub;
            memcpy(&ua, packed + xa / 2, 8);
            memcpy(&ub, packed + xb / 2, 8);
            __m512i x = _mm512_castsi128_si512(_mm_set_epi64x((long long)ub, (long long)ua));
            __m512i i0 = _mm512_srlv_epi32(_mm512_permutexvar_epi32(spread0, x), sh);
            __m512i i1 = _mm512_srlv_epi32(_mm512_permutexvar_epi32(spread1, x), sh);
            i0 = _mm512_ternarylogic_epi32(i0, m15, hi16, 0xEA);  /* (i & 15) | hi16 */
            i1 = _mm512_ternarylogic_epi32(i1, m15, hi16, 0xEA);
            __m512 v0 = _mm512_permutex2var_ps(ta[k], i0, tb[k]);
            __m512 v1 = _mm512_permutex2var_ps(ta[k], i1, tb[k]);
            acc[k] = _mm512_add_ps(acc[k], _mm512_mul_ps(q0, v0));
            acc[k] = _mm512_add_ps(acc[k], _mm512_mul_ps(q1, v1));
        }
    }
    for (int k = 0; k < NP; k++) qs_store(acc[k], sa[k], sb[k]);
}

/* NP pairs of int8 rows: v = q8 * (SCB / 127), lanes as above. */
QS_INLINE void qs_i8_pairs(const qembed__bag_rows *r, const int NP, const long *ia, const long *ib, const float *q,
                           float *const *sa, float *const *sb) {
    const long dim = r->dim;
    const int8_t *t = (const int8_t *)r->data;
    __m512 acc[2], sc[2];
    const int8_t *pa[2], *pb[2];
    for (int k = 0; k < NP; k++) {
        acc[k] = _mm512_setzero_ps();
        sc[k] = _mm512_insertf32x8(_mm512_set1_ps(r->scales[ia[k]] / 127.0f), _mm256_set1_ps(r->scales[ib[k]] / 127.0f), 1);
        pa[k] = t + ia[k] * dim; pb[k] = t + ib[k] * dim;
    }
    for (long j = 0; j < dim; j += 8) {
        __m512 qj = _mm512_broadcast_f32x8(_mm256_loadu_ps(q + j));
        for (int k = 0; k < NP; k++) {
            uint64_t ua, ub;
            memcpy(&ua, pa[k] + j, 8);
            memcpy(&ub, pb[k] + j, 8);
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_set_epi64x((long long)ub, (long long)ua))), sc[k]);
            acc[k] = _mm512_add_ps(acc[k], _mm512_mul_ps(qj, v));
        }
    }
    for (int k = 0; k < NP; k++) qs_store(acc[k], sa[k], sb[k]);
}

QEMBED__AVX512_TARGET
int qembed__score512_rows(const qembed__bag_rows *r, long r0, long n, const float *q, float *s) {
    if (!qembed__avx512_enabled() || n < 0) return 0;
    int four = r->kind == QEMBED__BAG_4BIT;
    if (four) {
        if (!qembed__bag512_supported(r)) return 0;
    } else if (r->kind != QEMBED__BAG_I8 || r->dim % 8 != 0) {
        return 0;
    }
    float spare;
    long k = 0;
    for (; k + 4 <= n; k += 4) {
        long ia[2] = {r0 + k, r0 + k + 2}, ib[2] = {r0 + k + 1, r0 + k + 3};
        float *sa[2] = {s + k, s + k + 2}, *sb[2] = {s + k + 1, s + k + 3};
        if (four) qs_4bit_pairs(r, 2, ia, ib, q, sa, sb);
        else qs_i8_pairs(r, 2, ia, ib, q, sa, sb);
    }
    for (; k < n; k += 2) {  /* a last single row pairs with itself */
        long ia[1] = {r0 + k}, ib[1] = {k + 1 < n ? r0 + k + 1 : r0 + k};
        float *sa[1] = {s + k}, *sb[1] = {k + 1 < n ? s + k + 1 : &spare};
        if (four) qs_4bit_pairs(r, 1, ia, ib, q, sa, sb);
        else qs_i8_pairs(r, 1, ia, ib, q, sa, sb);
    }
    return 1;
}

#else

int qembed__score512_rows(const qembed__bag_rows *r, long r0, long n, const float *q, float *s) {
    (void)r; (void)r0; (void)n; (void)q; (void)s;
    return 0;
}

void qembed__score512_tile(const float *q, long nq, const float *tile, long nr, long stride, float *s, long ns) {
    (void)q; (void)nq; (void)tile; (void)nr; (void)stride; (void)s; (void)ns;
}

#endif
