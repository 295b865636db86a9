/* AVX-512 bag kernels (see include/qembed_bag.h for the rule). One bag is
 * reduced a tile of up to 128 floats (8 ZMM accumulators) at a time: every
 * row of the bag adds its tile to registers, and the tile is stored once.
 * Rows are prefetched a fixed number of indices ahead on the first tile.
 * Written with separate multiply and add intrinsics (contraction off), so
 * every value is rounded as the scalar rule rounds it. */
#include "qembed_bag.h"
#include "qembed_target.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#ifdef QEMBED_AVX512_EMULATE  /* tools/avx512_check.c: SIMDe's portable AVX-512 */
#include "qembed_avx512_emulate.h"
#else
#include <cpuid.h>
#include <immintrin.h>
#endif

#ifdef __clang__
#pragma clang fp contract(off)
#endif

#define QB_TARGET QEMBED__AVX512_TARGET
#define QB_INLINE static inline __attribute__((always_inline)) QB_TARGET

enum { QB_ADD = 0, QB_ADD_WEIGHTED = 1, QB_MAX = 2 };
enum { QB_TILE = 8 };  /* vectors of 16 floats per tile */

static int qb_cpu_cached = -1;
static int qb_switch = 1;

static int qb_cpu(void) {
    int c = __atomic_load_n(&qb_cpu_cached, __ATOMIC_RELAXED);
    if (c >= 0) return c;
    c = 0;
#ifdef QEMBED_AVX512_EMULATE
    c = 1;
#else
    unsigned a, b, cx, d;
    if (__get_cpuid(1, &a, &b, &cx, &d) && (cx & (1u << 27))) {  /* OSXSAVE */
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        if ((lo & 0xE6u) == 0xE6u && __get_cpuid_count(7, 0, &a, &b, &cx, &d)) {
            /* F, DQ, BW, VL */
            c = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1);
        }
    }
#endif
    const char *env = getenv("QEMBED_CPU");
    if (env && (strcmp(env, "baseline") == 0 || strcmp(env, "avx2") == 0)) c = 0;
    __atomic_store_n(&qb_cpu_cached, c, __ATOMIC_RELAXED);
    return c;
}

int qembed__avx512_enabled(void) { return __atomic_load_n(&qb_switch, __ATOMIC_RELAXED) && qb_cpu(); }
void qembed__avx512_set_enabled(int on) { __atomic_store_n(&qb_switch, on ? 1 : 0, __ATOMIC_RELAXED); }

int qembed__bag512_supported(const qembed__bag_rows *r) {
    if (!qembed__avx512_enabled() || r->dim <= 0) return 0;
    if (r->kind == QEMBED__BAG_4BIT) {
        long bs = r->blocksize;
        if (r->dim % 16 != 0 || bs < 16 || bs % 16 != 0 || (bs & (bs - 1)) != 0) return 0;
        if (!r->scales && (!r->qabsmax || !r->nested_code || !r->nested_absmax || r->nested_blocksize <= 0)) return 0;
    }
    return r->kind == QEMBED__BAG_F32 || r->kind == QEMBED__BAG_I8 || r->kind == QEMBED__BAG_4BIT;
}

/* 16 nibble indices from 8 packed bytes, in the low 4 bits of each lane
 * (high nibble of byte 0 first; vpermps reads only those bits): the bytes
 * spread to lanes by a dword permute, each lane shifted to its nibble. */
QB_INLINE __m512i qb_nibbles(const uint8_t *p) {
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i sh = _mm512_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24, 4, 0, 12, 8, 20, 16, 28, 24);
    __m512i x = _mm512_permutexvar_epi32(spread, _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)p)));
    return _mm512_srlv_epi32(x, sh);
}

/* One tile: elements [t0, t0 + 16 * QB_TILE) of the bag's rows, vector v
 * active where m[v] != 0 (4-bit: only whole vectors). Returns the rows reduced. */
QB_INLINE long qb_tile(const qembed__bag_rows *r, const int KIND, const int OP, const int FULL, const void *idx, int is64, long lo,
                       long hi, long pf, long pf_end, long pad, const float *w, long t0, const __mmask16 *m,
                       int prefetch, float *acc) {
    __m512 a[QB_TILE];
    for (int v = 0; v < QB_TILE; v++) a[v] = _mm512_setzero_ps();
    __m512 code = _mm512_setzero_ps();
    if (KIND == QEMBED__BAG_4BIT) code = _mm512_loadu_ps(r->code);
    const long dim = r->dim;
    const int lg = KIND == QEMBED__BAG_4BIT ? __builtin_ctzl((unsigned long)r->blocksize) : 0;
    const long nbs = r->nested_blocksize;
    const int nlg = nbs > 0 && (nbs & (nbs - 1)) == 0 ? __builtin_ctzl((unsigned long)nbs) : -1;
    long n = 0;
    for (long k = lo; k < hi; k++) {
        if (prefetch && k + pf < pf_end) qembed__bag_prefetch_row(r, KIND, qembed__bag_index(idx, is64, k + pf));
        long i = qembed__bag_index(idx, is64, k);
        if (i == pad) continue;
        __m512 x[QB_TILE];
        if (KIND == QEMBED__BAG_F32) {
            const float *row = (const float *)r->data + i * dim + t0;
            for (int v = 0; v < QB_TILE; v++)
                x[v] = FULL ? _mm512_loadu_ps(row + 16 * v) : _mm512_maskz_loadu_ps(m[v], row + 16 * v);
        } else if (KIND == QEMBED__BAG_I8) {
            const int8_t *row = (const int8_t *)r->data + i * dim + t0;
            __m512 s = _mm512_set1_ps(r->scales[i] / 127.0f);
            for (int v = 0; v < QB_TILE; v++) {
                __m128i q = FULL ? _mm_loadu_si128((const __m128i *)(row + 16 * v)) : _mm_maskz_loadu_epi8(m[v], row + 16 * v);
                x[v] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), s);
            }
        } else {
            const uint8_t *packed = (const uint8_t *)r->data;
            long e = i * dim + t0;
            long b = -1;
            __m512 scaled = _mm512_setzero_ps();  /* code[j] * absmax: each value rounded once, as the rule */
            for (int v = 0; v < QB_TILE; v++) {
                if (!FULL && !m[v]) { x[v] = _mm512_setzero_ps(); continue; }
                long ev = e + 16 * v;
                if ((ev >> lg) != b) { b = ev >> lg; scaled = _mm512_mul_ps(code, _mm512_set1_ps(qembed__bag_absmax(r, b, nlg))); }
                x[v] = _mm512_permutexvar_ps(qb_nibbles(packed + ev / 2), scaled);
            }
        }
        if (OP == QB_MAX) {
            if (n == 0) {
                for (int v = 0; v < QB_TILE; v++) a[v] = x[v];
            } else {
                for (int v = 0; v < QB_TILE; v++)
                    a[v] = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x[v], a[v], _CMP_GT_OQ), a[v], x[v]);
            }
        } else if (OP == QB_ADD_WEIGHTED) {
            __m512 wk = _mm512_set1_ps(w[k]);
            for (int v = 0; v < QB_TILE; v++) a[v] = _mm512_add_ps(a[v], _mm512_mul_ps(x[v], wk));
        } else {
            for (int v = 0; v < QB_TILE; v++) a[v] = _mm512_add_ps(a[v], x[v]);
        }
        n++;
    }
    if (OP == QB_MAX && n == 0) return 0;
    for (int v = 0; v < QB_TILE; v++) {
        if (m[v] == 0xFFFF) {
            _mm512_storeu_ps(acc + t0 + 16 * v, a[v]);
        } else if (m[v]) {  /* the partial last vector: through a buffer (masked stores are slow on Zen 4) */
            float t[16];
            _mm512_storeu_ps(t, a[v]);
            memcpy(acc + t0 + 16 * v, t, (size_t)__builtin_popcount(m[v]) * 4);
        }
    }
    return n;
}

/* Bags b0..<b1 with the kind and op fixed for the range; a tile whose
 * vectors are all active loads without masks. */
QB_INLINE void qb_bags(const qembed__bag_rows *r, const int KIND, const int OP, const void *idx, int is64,
                       const qembed__bag_bounds *bb, long b0, long b1, long pf, long pf_end, long pad, const float *w,
                       int mode, float *out) {
    const long dim = r->dim, tiles = (dim + 16 * QB_TILE - 1) / (16 * QB_TILE);
    __mmask16 last[QB_TILE];  /* the masks of the last tile; every earlier tile is full */
    const long len = dim - 16 * QB_TILE * (tiles - 1);
    for (int v = 0; v < QB_TILE; v++) {
        long left = len - 16 * v;
        last[v] = left >= 16 ? (__mmask16)0xFFFF : (left > 0 ? (__mmask16)((1u << left) - 1) : 0);
    }
    const __mmask16 full[QB_TILE] = {0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF};
    const int last_full = last[QB_TILE - 1] == 0xFFFF;
    for (long b = b0; b < b1; b++) {
        const long lo = qembed__bag_start(bb, is64, b), hi = qembed__bag_end(bb, is64, b);
        float *acc = out + (b - b0) * dim;
        long n = 0, t0 = 0;
        for (long t = 0; t + 1 < tiles; t++, t0 += 16 * QB_TILE)
            n = qb_tile(r, KIND, OP, 1, idx, is64, lo, hi, pf, pf_end, pad, w, t0, full, t0 == 0, acc);
        n = last_full ? qb_tile(r, KIND, OP, 1, idx, is64, lo, hi, pf, pf_end, pad, w, t0, last, t0 == 0, acc)
                      : qb_tile(r, KIND, OP, 0, idx, is64, lo, hi, pf, pf_end, pad, w, t0, last, t0 == 0, acc);
        qembed__bag_finish(acc, dim, n, mode);
    }
}

#define QB_OPS(KIND)                                                                                         \
    switch (op) {                                                                                            \
    case QB_ADD: qb_bags(r, KIND, QB_ADD, idx, is64, bb, b0, b1, pf, pf_end, pad, w, mode, out); break;      \
    case QB_ADD_WEIGHTED: qb_bags(r, KIND, QB_ADD_WEIGHTED, idx, is64, bb, b0, b1, pf, pf_end, pad, w, mode, out); break; \
    default: qb_bags(r, KIND, QB_MAX, idx, is64, bb, b0, b1, pf, pf_end, pad, w, mode, out);                 \
    }

QB_TARGET void qembed__bag512_reduce_bags(const qembed__bag_rows *r, const void *idx, int is64,
                                          const qembed__bag_bounds *bb, long b0, long b1, long pf, long pf_end,
                                          long pad, const float *w, int mode, float *out) {
    const int op = mode == 2 ? QB_MAX : (w ? QB_ADD_WEIGHTED : QB_ADD);
    switch (r->kind) {
    case QEMBED__BAG_F32: QB_OPS(QEMBED__BAG_F32) break;
    case QEMBED__BAG_I8: QB_OPS(QEMBED__BAG_I8) break;
    default: QB_OPS(QEMBED__BAG_4BIT)
    }
}

#else

int qembed__avx512_enabled(void) { return 0; }
void qembed__avx512_set_enabled(int on) { (void)on; }
int qembed__bag512_supported(const qembed__bag_rows *r) { (void)r; return 0; }
void qembed__bag512_reduce_bags(const qembed__bag_rows *r, const void *idx, int is64, const qembed__bag_bounds *bb,
                                long b0, long b1, long pf, long pf_end, long pad, const float *w, int mode, float *out) {
    (void)r; (void)idx; (void)is64; (void)bb; (void)b0; (void)b1; (void)pf; (void)pf_end; (void)pad; (void)w;
    (void)mode; (void)out;
    abort();
}

#endif
