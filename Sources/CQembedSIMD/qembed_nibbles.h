/* The AVX2 decode of 8 packed 4-bit values, shared by the 4-bit row kernels
 * (qembed_4bit.c) and the AVX2 bag kernel (qembed_bag_avx2.c). Private to
 * CQembedSIMD. */
#ifndef QEMBED_NIBBLES_H
#define QEMBED_NIBBLES_H
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* 8 values of a 16-entry float table held as two registers (entries 0-7
 * and 8-15), picked by the 8 nibbles of 4 bytes, high nibble of each byte
 * first. The 4 bytes are broadcast to every lane; one variable right shift
 * brings lane j's nibble to bits 0-3 (vpermps reads only bits 0-2, so the
 * bits above need no mask), one variable left shift brings its bit 3 to the
 * sign bit, which chooses the register in vblendvps: 5 vector operations
 * per 8 values, 2 of them cross-lane permutes. */
static inline __attribute__((always_inline, target("avx2"))) __m256 qembed__nibbles8_avx2(const uint8_t *p, __m256 lo,
                                                                                         __m256 hi) {
    int32_t four;
    memcpy(&four, p, 4);
    const __m256i b = _mm256_set1_epi32(four);
    const __m256i idx = _mm256_srlv_epi32(b, _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24));
    const __m256i sel = _mm256_sllv_epi32(b, _mm256_setr_epi32(24, 28, 16, 20, 8, 12, 0, 4));
    const __m256 vl = _mm256_permutevar8x32_ps(lo, idx), vh = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(vl, vh, _mm256_castsi256_ps(sel));
}

#endif
#endif
