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
 * first: both registers are permuted by the nibble, and its bit 3 (moved to
 * the sign bit) chooses one. */
static inline __attribute__((always_inline, target("avx2"))) __m256 qembed__nibbles8_avx2(const uint8_t *p, __m256 lo,
                                                                                         __m256 hi) {
    int32_t four;
    memcpy(&four, p, 4);
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i b = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(_mm_cvtsi32_si128(four), dup));
    __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0)), _mm256_set1_epi32(15));
    __m256 vl = _mm256_permutevar8x32_ps(lo, idx), vh = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(vl, vh, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

#endif
#endif
