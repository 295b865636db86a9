/* The AVX-512 kernels compiled against SIMDe's portable AVX-512, for
 * tools/avx512_check.c (make test-avx512) on machines without AVX-512:
 * SIMDe with its native names, plus the few intrinsics the kernels use
 * that SIMDe 0.7.4 lacks, written lane by lane, and an FMA rounded once
 * (SIMDe's portable one rounds the product and the sum apart). Only with
 * -DQEMBED_AVX512_EMULATE; private to CQembedSIMD. */
#ifndef QEMBED_AVX512_EMULATE_H
#define QEMBED_AVX512_EMULATE_H
#ifdef QEMBED_AVX512_EMULATE
#include <math.h>
#include <stdint.h>
#include <string.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

typedef simde__mmask16 __mmask16;

static inline simde__m512 qe_emu_cvtepi32_ps(simde__m512i a) {
    int32_t t[16];
    float f[16];
    memcpy(t, &a, 64);
    for (int i = 0; i < 16; i++) f[i] = (float)t[i];
    return simde_mm512_loadu_ps(f);
}
static inline simde__m512i qe_emu_cvtepi8_epi32(simde__m128i a) {
    int8_t t[16];
    int32_t r[16];
    memcpy(t, &a, 16);
    for (int i = 0; i < 16; i++) r[i] = t[i];
    return simde_mm512_loadu_si512(r);
}
static inline simde__m512 qe_emu_maskz_loadu_ps(__mmask16 m, const void *p) {
    float f[16] = {0};
    for (int i = 0; i < 16; i++) if ((m >> i) & 1) memcpy(f + i, (const float *)p + i, 4);
    return simde_mm512_loadu_ps(f);
}
static inline simde__m128i qe_emu_maskz_loadu_epi8(__mmask16 m, const void *p) {
    int8_t b[16] = {0};
    for (int i = 0; i < 16; i++) if ((m >> i) & 1) b[i] = ((const int8_t *)p)[i];
    simde__m128i r;
    memcpy(&r, b, 16);
    return r;
}
static inline simde__m512 qe_emu_fmadd_ps(simde__m512 a, simde__m512 b, simde__m512 c) {
    float x[16], y[16], z[16];
    simde_mm512_storeu_ps(x, a); simde_mm512_storeu_ps(y, b); simde_mm512_storeu_ps(z, c);
    for (int i = 0; i < 16; i++) z[i] = fmaf(x[i], y[i], z[i]);
    return simde_mm512_loadu_ps(z);
}
#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps qe_emu_cvtepi32_ps
#undef _mm512_cvtepi8_epi32
#define _mm512_cvtepi8_epi32 qe_emu_cvtepi8_epi32
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps qe_emu_maskz_loadu_ps
#undef _mm_maskz_loadu_epi8
#define _mm_maskz_loadu_epi8 qe_emu_maskz_loadu_epi8
#undef _mm512_fmadd_ps
#define _mm512_fmadd_ps qe_emu_fmadd_ps
#endif
#endif
