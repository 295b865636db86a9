/* AVX2 4-bit (FP4/NF4) row kernels for bags and lookups (one-query scoring:
 * qembed_score.h). Internal to the
 * core, not API. Each equals the scalar rule element for element: value =
 * code[nibble] * absmax in float32 (high nibble of a byte first), then one of
 * store / add / add value * w / keep the larger, each rounded once (no
 * fused multiply-add). Chosen at run time (AVX2 and the OS's YMM state), off
 * under QEMBED_CPU=baseline. */
#ifndef QEMBED_4BIT_H
#define QEMBED_4BIT_H

#include <stdint.h>

enum { QEMBED__4BIT_STORE = 0, QEMBED__4BIT_ADD = 1, QEMBED__4BIT_ADD_WEIGHTED = 2, QEMBED__4BIT_MAX = 3 };

/* 1 when the AVX2 kernels run on this CPU and are switched on. */
int qembed__avx2_enabled(void);
/* Tests: 0 switches them off, 1 back to what the CPU allows. */
void qembed__avx2_set_enabled(int on);

/* For k < 2 * pairs: v = code[nibble k of p] * absmax; dst[k] = v (STORE),
 * += v (ADD), += v * w (ADD_WEIGHTED), or = v if v > dst[k] (MAX). Needs
 * qembed__avx2_enabled(). */
void qembed__4bit_run_avx2(const uint8_t *p, long pairs, const float *code, float absmax, float w, int op, float *dst);

/* The same over elements e0 .. e0 + n - 1 of a packed table whose blocks of
 * bs elements have scales absmax[b - e0 / bs] (b the element's block): a
 * whole row in one call, runs split at block edges, single nibbles at odd
 * edges by the scalar rule. */
void qembed__4bit_row_avx2(const uint8_t *packed, long e0, long n, long bs, const float *absmax, const float *code,
                           float w, int op, float *dst);

#endif
