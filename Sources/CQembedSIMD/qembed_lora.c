/* AVX-512 LoRA lookup (see include/qembed_lora.h). Two ids at a time share
 * every load of B^T; a row's 16-float chunk is decoded, the update added and
 * the sum stored, so each output row is written once. */
#include "qembed_lora.h"
#include "qembed_bag.h"
#include "qembed_target.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#ifdef QEMBED_AVX512_EMULATE  /* tools/avx512_check.c: SIMDe's portable AVX-512 */
#include "qembed_avx512_emulate.h"
#else
#include <immintrin.h>
#endif

#ifdef __clang__
#pragma clang fp contract(off)
#endif

#define QL_INLINE static inline __attribute__((always_inline)) QEMBED__AVX512_TARGET

/* 16 base values of row i at elements d .. d + 15. */
QL_INLINE __m512 ql_base(const qembed__bag_rows *r, const int KIND, long i, long d, int lg, int nlg, __m512 code,
                         __m512 *scaled, long *block, float s8) {
    if (KIND == QEMBED__BAG_F32) return _mm512_loadu_ps((const float *)r->data + i * r->dim + d);
    if (KIND == QEMBED__BAG_I8) {
        __m128i q = _mm_loadu_si128((const __m128i *)((const int8_t *)r->data + i * r->dim + d));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_set1_ps(s8));
    }
    long e = i * r->dim + d;
    if ((e >> lg) != *block) {
        *block = e >> lg;
        *scaled = _mm512_mul_ps(code, _mm512_set1_ps(qembed__bag_absmax(r, *block, nlg)));
    }
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i sh = _mm512_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24, 4, 0, 12, 8, 20, 16, 28, 24);
    __m512i x = _mm512_permutexvar_epi32(spread, _mm512_castsi128_si512(
        _mm_loadl_epi64((const __m128i *)((const uint8_t *)r->data + e / 2))));
    return _mm512_permutexvar_ps(_mm512_srlv_epi32(x, sh), *scaled);
}

QL_INLINE void ql_prefetch(const qembed__bag_rows *r, const int KIND, long i) {
    long bytes = KIND == QEMBED__BAG_F32 ? r->dim * 4 : (KIND == QEMBED__BAG_I8 ? r->dim : r->dim / 2);
    const char *p = (const char *)r->data + (KIND == QEMBED__BAG_4BIT ? i * r->dim / 2 : i * bytes);
    for (long o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

QL_INLINE void ql_run(const qembed__bag_rows *r, const int KIND, const void *idx, int is64, long n, const float *at, long rank,
                      const float *bt, float scaling, float *out) {
    const long dim = r->dim;
    const int lg = KIND == QEMBED__BAG_4BIT ? __builtin_ctzl((unsigned long)r->blocksize) : 0;
    const long nbs = r->nested_blocksize;
    const int nlg = nbs > 0 && (nbs & (nbs - 1)) == 0 ? __builtin_ctzl((unsigned long)nbs) : -1;
    const __m512 code = KIND == QEMBED__BAG_4BIT ? _mm512_loadu_ps(r->code) : _mm512_setzero_ps();
    const long pf = 4;  /* pairs ahead */
    for (long k = 0; k < n; k += 2) {
        int two = k + 1 < n;
        long ip = qembed__bag_index(idx, is64, k), iq = qembed__bag_index(idx, is64, two ? k + 1 : k);
        if (k + 2 * pf < n) ql_prefetch(r, KIND, qembed__bag_index(idx, is64, k + 2 * pf));
        if (k + 2 * pf + 1 < n) ql_prefetch(r, KIND, qembed__bag_index(idx, is64, k + 2 * pf + 1));
        __m512 p[8], q[8];
        for (int j = 0; j < 8; j++) {
            p[j] = j < rank ? _mm512_set1_ps(at[ip * rank + j] * scaling) : _mm512_setzero_ps();
            q[j] = j < rank ? _mm512_set1_ps(at[iq * rank + j] * scaling) : _mm512_setzero_ps();
        }
        float sp = 0, sq = 0;
        if (KIND == QEMBED__BAG_I8) { sp = r->scales[ip] / 127.0f; sq = r->scales[iq] / 127.0f; }
        __m512 tp = code, tq = code;
        long bp = -1, bq = -1;
        float *d0 = out + k * dim, *d1 = out + (k + 1) * dim;
        for (long d = 0; d < dim; d += 16) {
            __m512 b[8];
            for (int j = 0; j < 8; j++) b[j] = j < rank ? _mm512_loadu_ps(bt + j * dim + d) : _mm512_setzero_ps();
            __m512 x = _mm512_mul_ps(p[0], b[0]);
            for (int j = 1; j < 8; j++) x = _mm512_fmadd_ps(p[j], b[j], x);
            _mm512_storeu_ps(d0 + d, _mm512_add_ps(ql_base(r, KIND, ip, d, lg, nlg, code, &tp, &bp, sp), x));
            if (two) {
                __m512 y = _mm512_mul_ps(q[0], b[0]);
                for (int j = 1; j < 8; j++) y = _mm512_fmadd_ps(q[j], b[j], y);
                _mm512_storeu_ps(d1 + d, _mm512_add_ps(ql_base(r, KIND, iq, d, lg, nlg, code, &tq, &bq, sq), y));
            }
        }
    }
}

QEMBED__AVX512_TARGET
int qembed__lora512_forward(const qembed__bag_rows *rows, const void *idx, int is64, long n, const float *at, long r,
                            const float *bt, float scaling, float *out) {
    if (r < 1 || r > 8 || rows->dim % 16 != 0 || !qembed__bag512_supported(rows)) return 0;
    switch (rows->kind) {
    case QEMBED__BAG_F32: ql_run(rows, QEMBED__BAG_F32, idx, is64, n, at, r, bt, scaling, out); break;
    case QEMBED__BAG_I8: ql_run(rows, QEMBED__BAG_I8, idx, is64, n, at, r, bt, scaling, out); break;
    default: ql_run(rows, QEMBED__BAG_4BIT, idx, is64, n, at, r, bt, scaling, out); break;
    }
    return 1;
}

#else

int qembed__lora512_forward(const struct qembed__bag_rows *rows, const void *idx, int is64, long n, const float *at,
                            long r, const float *bt, float scaling, float *out) {
    (void)rows; (void)idx; (void)is64; (void)n; (void)at; (void)r; (void)bt; (void)scaling; (void)out;
    return 0;
}

#endif
