/* AVX2 4-bit row kernels (see include/qembed_4bit.h). A 16-entry float code
 * is two 8-float registers: each nibble picks its lane in both with
 * vpermps, and bit 3 of the nibble (moved to the sign bit) chooses the
 * register with vblendvps. Written with separate multiply and add
 * intrinsics, so every result is rounded as the scalar rule rounds it. */
#include "qembed_4bit.h"
#include "qembed_nibbles.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

#ifdef __clang__
#pragma clang fp contract(off)
#endif

#define QE_AVX2 __attribute__((target("avx2")))

static int qe_avx2_cached = -1;
static int qe_avx2_switch = 1;

static int qe_avx2_cpu(void) {
    int c = __atomic_load_n(&qe_avx2_cached, __ATOMIC_RELAXED);
    if (c >= 0) return c;
    c = 0;
    unsigned a, b, cx, d;
    if (__get_cpuid(1, &a, &b, &cx, &d) && (cx & (1u << 27)) && (cx & (1u << 28))) {  /* OSXSAVE, AVX */
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        if ((lo & 6u) == 6u && __get_cpuid_count(7, 0, &a, &b, &cx, &d)) c = (b >> 5) & 1;  /* XMM+YMM state, AVX2 */
    }
    const char *env = getenv("QEMBED_CPU");
    if (env && strcmp(env, "baseline") == 0) c = 0;
    __atomic_store_n(&qe_avx2_cached, c, __ATOMIC_RELAXED);
    return c;
}

int qembed__avx2_enabled(void) { return __atomic_load_n(&qe_avx2_switch, __ATOMIC_RELAXED) && qe_avx2_cpu(); }
void qembed__avx2_set_enabled(int on) { __atomic_store_n(&qe_avx2_switch, on ? 1 : 0, __ATOMIC_RELAXED); }

static inline __attribute__((always_inline)) QE_AVX2 void qe_run(const uint8_t *p, long pairs, const float *code, float absmax,
                                                                  float w, int op, float *dst);
QE_AVX2 void qembed__4bit_run_avx2(const uint8_t *p, long pairs, const float *code, float absmax, float w, int op, float *dst) {
    qe_run(p, pairs, code, absmax, w, op, dst);
}
static inline __attribute__((always_inline)) QE_AVX2 void qe_run(const uint8_t *p, long pairs, const float *code, float absmax,
                                                                  float w, int op, float *dst) {
    /* The run's table, code[j] * absmax, each entry rounded once as the
     * scalar product rounds it: the same bits as multiplying every value,
     * with one multiply per run instead of one per vector. */
    const __m256 a = _mm256_set1_ps(absmax);
    const __m256 lo = _mm256_mul_ps(_mm256_loadu_ps(code), a), hi = _mm256_mul_ps(_mm256_loadu_ps(code + 8), a);
    const __m256 wv = _mm256_set1_ps(w);
    long k = 0;
    switch (op) {
    case QEMBED__4BIT_STORE:
        for (; k + 4 <= pairs; k += 4) _mm256_storeu_ps(dst + 2 * k, qembed__nibbles8_avx2(p + k, lo, hi));
        break;
    case QEMBED__4BIT_ADD:
        for (; k + 4 <= pairs; k += 4)
            _mm256_storeu_ps(dst + 2 * k, _mm256_add_ps(_mm256_loadu_ps(dst + 2 * k), qembed__nibbles8_avx2(p + k, lo, hi)));
        break;
    case QEMBED__4BIT_ADD_WEIGHTED:
        for (; k + 4 <= pairs; k += 4)
            _mm256_storeu_ps(dst + 2 * k, _mm256_add_ps(_mm256_loadu_ps(dst + 2 * k), _mm256_mul_ps(qembed__nibbles8_avx2(p + k, lo, hi), wv)));
        break;
    default: {
        for (; k + 4 <= pairs; k += 4) {
            __m256 v = qembed__nibbles8_avx2(p + k, lo, hi), o = _mm256_loadu_ps(dst + 2 * k);
            _mm256_storeu_ps(dst + 2 * k, _mm256_blendv_ps(o, v, _mm256_cmp_ps(v, o, _CMP_GT_OQ)));
        }
    }
    }
    for (; k < pairs; k++) {
        float v0 = code[p[k] >> 4] * absmax, v1 = code[p[k] & 15] * absmax;
        float *o = dst + 2 * k;
        switch (op) {
        case QEMBED__4BIT_STORE: o[0] = v0; o[1] = v1; break;
        case QEMBED__4BIT_ADD: o[0] += v0; o[1] += v1; break;
        case QEMBED__4BIT_ADD_WEIGHTED: o[0] += v0 * w; o[1] += v1 * w; break;
        default: if (v0 > o[0]) o[0] = v0; if (v1 > o[1]) o[1] = v1;
        }
    }
}

static inline void qe_apply(int op, float v, float w, float *d) {
    switch (op) {
    case QEMBED__4BIT_STORE: *d = v; break;
    case QEMBED__4BIT_ADD: *d += v; break;
    case QEMBED__4BIT_ADD_WEIGHTED: *d += v * w; break;
    default: if (v > *d) *d = v;
    }
}

QE_AVX2 void qembed__4bit_row_avx2(const uint8_t *packed, long e0, long n, long bs, const float *absmax, const float *code,
                                   float w, int op, float *dst) {
    long b0 = e0 / bs, j = 0;
    while (j < n) {
        long e = e0 + j, b = e / bs;
        long run_end = (b + 1) * bs - e0;
        if (run_end > n) run_end = n;
        float a = absmax[b - b0];
        if (e & 1) { qe_apply(op, code[packed[e >> 1] & 15] * a, w, dst + j); j++; e++; }
        long pairs = (run_end - j) / 2;
        qe_run(packed + (e >> 1), pairs, code, a, w, op, dst + j);
        j += 2 * pairs; e += 2 * pairs;
        if (j < run_end) { qe_apply(op, code[packed[e >> 1] >> 4] * a, w, dst + j); j++; }
    }
}

#else
void qembed__4bit_row_avx2(const uint8_t *packed, long e0, long n, long bs, const float *absmax, const float *code,
                           float w, int op, float *dst) {
    (void)packed; (void)e0; (void)n; (void)bs; (void)absmax; (void)code; (void)w; (void)op; (void)dst;
    abort();
}
int qembed__avx2_enabled(void) { return 0; }
void qembed__avx2_set_enabled(int on) { (void)on; }
void qembed__4bit_run_avx2(const uint8_t *p, long pairs, const float *code, float absmax, float w, int op, float *dst) {
    (void)p; (void)pairs; (void)code; (void)absmax; (void)w; (void)op; (void)dst;
    abort();
}
#endif
