/* AVX2 LoRA lookup (see include/qembed_lora.h): the AVX-512 kernel's rule
 * with 8-float registers, for CPUs without AVX-512. One id at a time holds
 * its 8 scaled A^T entries as broadcast registers (16 YMM registers do not
 * hold two ids' as the AVX-512 kernel does), so B^T would be read from L2
 * once per id: instead a block of ids is swept a slice of columns at a
 * time, and the slice of B^T (r x 256 floats, 8 KiB) stays in L1. Each
 * output element is the base value plus the update, stored once. */
#include "qembed_4bit.h"
#include "qembed_bag.h"
#include "qembed_lora.h"
#include "qembed_nibbles.h"

#include <stdint.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

#ifdef __clang__
#pragma clang fp contract(off)
#endif

#define QL2_TARGET __attribute__((target("avx2,fma")))
#define QL2_INLINE static inline __attribute__((always_inline)) QL2_TARGET

enum { QL2_IDS = 16, QL2_COLS = 256 };

static int ql2_fma_cpu(void) {
    static int cached = -1;
    int c = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (c < 0) {
        unsigned a, b, cx, d;
        c = __get_cpuid(1, &a, &b, &cx, &d) && (cx & (1u << 12)) ? 1 : 0;
        __atomic_store_n(&cached, c, __ATOMIC_RELAXED);
    }
    return c;
}

/* *lo_s, *hi_s = code * absmax of 4-bit block b, each product rounded once. */
QL2_INLINE void ql2_block(const qembed__bag_rows *r, long b, int nlg, __m256 code_lo, __m256 code_hi, long *block,
                          __m256 *lo_s, __m256 *hi_s) {
    *block = b;
    const __m256 am = _mm256_set1_ps(qembed__bag_absmax(r, b, nlg));
    *lo_s = _mm256_mul_ps(code_lo, am);
    *hi_s = _mm256_mul_ps(code_hi, am);
}

/* One id's outputs dst[d .. d + 8 * NG): base + update. The NG updates are
 * NG independent chains (x = p0 * b0, then x = fma(p_j, b_j, x) for j = 1
 * ... 7) advanced together, j outermost, so the FMA latency is hidden in
 * registers rather than by the out-of-order window. bl is the slice of B^T
 * interleaved as [column group][j][8] (zero past the rank) at column d; ps
 * holds A^T[i][j] * scaling (zero past the rank). 4-bit: *block, *lo_s and
 * *hi_s carry the current block's code * absmax across calls. */
QL2_INLINE void ql2_tile(const qembed__bag_rows *r, const int KIND, const int NG, const void *row, long e0, long d,
                         const float *bl, const float *ps, int lg, int nlg, __m256 code_lo, __m256 code_hi, long *block,
                         __m256 *lo_s, __m256 *hi_s, __m256 s8, float *dst) {
    __m256 x[8];
    /* p_j is broadcast from memory at each use: the empty asm hides that
     * ps does not change, so the compiler does not hold the 8 values in
     * registers beside the accumulators (it would spill them). */
    const __m256 p0 = _mm256_broadcast_ss(ps);
    for (int g = 0; g < NG; g++) x[g] = _mm256_mul_ps(p0, _mm256_load_ps(bl + 64 * g));
    for (int j = 1; j < 8; j++) {
        const float *pp = ps + j;
        __asm__("" : "+r"(pp));
        const __m256 pj = _mm256_broadcast_ss(pp);
        for (int g = 0; g < NG; g++) x[g] = _mm256_fmadd_ps(pj, _mm256_load_ps(bl + 64 * g + 8 * j), x[g]);
    }
    if (KIND == QEMBED__BAG_4BIT) {
        const unsigned long e = (unsigned long)(e0 + d);
        if ((e >> lg) == ((e + 8 * NG - 1) >> lg)) {  /* the tile in one block: the common case */
            if ((long)(e >> lg) != *block) ql2_block(r, (long)(e >> lg), nlg, code_lo, code_hi, block, lo_s, hi_s);
            const __m256 lo = *lo_s, hi = *hi_s;
            for (int g = 0; g < NG; g++)
                _mm256_storeu_ps(dst + d + 8 * g,
                                 _mm256_add_ps(qembed__nibbles8_avx2((const uint8_t *)row + (e + 8 * g) / 2, lo, hi), x[g]));
            return;
        }
    }
    for (int g = 0; g < NG; g++) {
        const long c = d + 8 * g;
        __m256 base;
        if (KIND == QEMBED__BAG_F32) {
            base = _mm256_loadu_ps((const float *)row + c);
        } else if (KIND == QEMBED__BAG_I8) {
            __m128i q = _mm_loadl_epi64((const __m128i *)((const int8_t *)row + c));
            base = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), s8);
        } else {  /* a group of 8 never straddles a block (blocksize >= 8, a power of two) */
            const unsigned long e = (unsigned long)(e0 + c);
            if ((long)(e >> lg) != *block) ql2_block(r, (long)(e >> lg), nlg, code_lo, code_hi, block, lo_s, hi_s);
            base = qembed__nibbles8_avx2((const uint8_t *)row + e / 2, *lo_s, *hi_s);
        }
        _mm256_storeu_ps(dst + c, _mm256_add_ps(base, x[g]));
    }
}

QL2_INLINE void ql2_run(const qembed__bag_rows *r, const int KIND, const int IS64, const void *idx, long n, const float *at,
                        long rank, const float *bt, float scaling, float *out) {
    const long dim = r->dim;
    const int lg = KIND == QEMBED__BAG_4BIT ? __builtin_ctzl((unsigned long)r->blocksize) : 0;
    const long nbs = r->nested_blocksize;
    const int nlg = nbs > 0 && (nbs & (nbs - 1)) == 0 ? __builtin_ctzl((unsigned long)nbs) : -1;
    const __m256 code_lo = KIND == QEMBED__BAG_4BIT ? _mm256_loadu_ps(r->code) : _mm256_setzero_ps();
    const __m256 code_hi = KIND == QEMBED__BAG_4BIT ? _mm256_loadu_ps(r->code + 8) : _mm256_setzero_ps();
    const __m256 zero = _mm256_setzero_ps();
    float bl[QL2_COLS * 8] __attribute__((aligned(32)));
    for (long k0 = 0; k0 < n; k0 += QL2_IDS) {
        const long m = n - k0 < QL2_IDS ? n - k0 : QL2_IDS;
        for (long c0 = 0; c0 < dim; c0 += QL2_COLS) {
            const long c1 = c0 + QL2_COLS < dim ? c0 + QL2_COLS : dim;
            for (long d = c0; d < c1; d += 8)  /* the slice of B^T, interleaved and zero-padded */
                for (int j = 0; j < 8; j++)
                    _mm256_store_ps(bl + (d - c0) * 8 + 8 * j, j < rank ? _mm256_loadu_ps(bt + j * dim + d) : zero);
            for (long u = 0; u < m; u++) {
                const long k = k0 + u, i = qembed__bag_index(idx, IS64, k);
                /* the next block's rows, while this block's first slice runs */
                if (c0 == 0 && k + QL2_IDS < n) qembed__bag_prefetch_row(r, KIND, qembed__bag_index(idx, IS64, k + QL2_IDS));
                float ps[8];  /* A^T[i][j] * scaling; zero past the rank, as the portable rule pads */
                for (int j = 0; j < 8; j++) ps[j] = j < rank ? at[i * rank + j] * scaling : 0.0f;
                const __m256 s8 = KIND == QEMBED__BAG_I8 ? _mm256_set1_ps(r->scales[i] / 127.0f) : zero;
                __m256 lo_s = zero, hi_s = zero;
                long block = -1;
                float *dst = out + k * dim;
                /* float and int8: the row; 4-bit: the packed table, with the row's first element e0 */
                const void *row = KIND == QEMBED__BAG_F32 ? (const void *)((const float *)r->data + i * dim)
                                : KIND == QEMBED__BAG_I8 ? (const void *)((const int8_t *)r->data + i * dim) : r->data;
                const long e0 = i * dim;
                for (long d = c0; d < c1;) {
                    const long left = (c1 - d) / 8;
#define QL2_TILE(NG) ql2_tile(r, KIND, NG, row, e0, d, bl + (d - c0) * 8, ps, lg, nlg, code_lo, code_hi, &block, &lo_s, &hi_s, s8, dst)
                    if (left >= 8) { QL2_TILE(8); d += 64; }
                    else if (left >= 4) { QL2_TILE(4); d += 32; }
                    else if (left >= 2) { QL2_TILE(2); d += 16; }
                    else { QL2_TILE(1); d += 8; }
#undef QL2_TILE
                }
            }
        }
    }
}

QL2_TARGET
int qembed__lora256_forward(const qembed__bag_rows *rows, const void *idx, int is64, long n, const float *at, long r,
                            const float *bt, float scaling, float *out) {
    if (r < 1 || r > 8 || rows->dim % 16 != 0 || !ql2_fma_cpu() || !qembed__bag256_supported(rows)) return 0;
#define QL2_KIND(KIND) (is64 ? ql2_run(rows, KIND, 1, idx, n, at, r, bt, scaling, out) \
                             : ql2_run(rows, KIND, 0, idx, n, at, r, bt, scaling, out))
    switch (rows->kind) {
    case QEMBED__BAG_F32: QL2_KIND(QEMBED__BAG_F32); break;
    case QEMBED__BAG_I8: QL2_KIND(QEMBED__BAG_I8); break;
    default: QL2_KIND(QEMBED__BAG_4BIT); break;
    }
#undef QL2_KIND
    return 1;
}

#else

int qembed__lora256_forward(const struct qembed__bag_rows *rows, const void *idx, int is64, long n, const float *at,
                            long r, const float *bt, float scaling, float *out) {
    (void)rows; (void)idx; (void)is64; (void)n; (void)at; (void)r; (void)bt; (void)scaling; (void)out;
    return 0;
}

#endif
