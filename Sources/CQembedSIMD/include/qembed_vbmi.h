/* AVX-512 VBMI register-table kernels for the exact 8-bit code search and
 * for 8-bit dequantization (internal to the core; not part of the C API).
 *
 * The rule is the scalar spec's (Blockwise8Reference): with float32
 * midpoints m[i] = (code[i] + code[i+1]) / 2, the index of
 * s = clamp(x * recip, -1, 1) is the number of midpoints strictly below s.
 * These kernels give that index for every finite x, byte for byte; the proof
 * is tools/vbmi_exhaustive.c (every float in [-1, 1]) and the parity tests.
 *
 * How (the recipe of ../shared/design/avx512-exact-lookup.md, generalized to
 * any code it fits): key = bits(s) << 1 | sign; thresholds T_j = bits(mu_j) << 1
 * for the positive midpoints mu_j. #{T_j < key} is found with one bucket
 * table (variable resolution per binade, at most one threshold per bucket)
 * and one exact integer compare; every table is read with vpermi2b from
 * registers, 64 lookups per instruction. s >= +0 gets index N + count,
 * s < 0 gets max(N - count, 0), where N is the number of negative
 * midpoints. That holds when no midpoint is 0, all are inside (-1, 1), and
 * the magnitudes of the negative midpoints are exactly the N smallest
 * positive ones (the signed dynamic map) or there are none (the unsigned
 * map). qembed__vbmi_quant_new() returns NULL for codes that do not fit;
 * callers keep their portable path for those. */
#ifndef QEMBED_VBMI_H
#define QEMBED_VBMI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qembed__vbmi_quant qembed__vbmi_quant;
typedef struct qembed__vbmi_dequant qembed__vbmi_dequant;

/* 1 when this CPU runs AVX-512 F+DQ+BW+VBMI with the OS saving ZMM state, and
 * neither QEMBED_CPU=baseline|avx2 nor qembed__vbmi_set_enabled(0) turned the
 * kernels off. Cached; safe from any thread. */
int qembed__vbmi_enabled(void);
/* Tests: force the kernels off (0) or back to what the CPU allows (1). */
void qembed__vbmi_set_enabled(int on);
/* 1 when the CPU itself has the instructions (ignores the switches). */
int qembed__vbmi_cpu(void);

/* Tables for the code search of a sorted 256-entry code; NULL when the code
 * does not fit the kernel (see above) or memory is short. */
qembed__vbmi_quant *qembed__vbmi_quant_new(const float *code);
void qembed__vbmi_quant_free(qembed__vbmi_quant *t);

/* out[i] = index of clamp(x[i] * recip, -1, 1) for i < n (any n >= 0).
 * x must be finite. Runs only where qembed__vbmi_cpu() (or under emulation). */
void qembed__vbmi_quantize(const qembed__vbmi_quant *t, const float *x, size_t n, float recip, uint8_t *out);

/* Tables for dequantizing with any 256-entry code (never NULL but on OOM). */
qembed__vbmi_dequant *qembed__vbmi_dequant_new(const float *code);
void qembed__vbmi_dequant_free(qembed__vbmi_dequant *t);

/* out[i] = code[q[i]] * absmax for i < n, in float32. */
void qembed__vbmi_dequantize(const qembed__vbmi_dequant *t, const uint8_t *q, size_t n, float absmax, float *out);

/* 4-bit code search (FP4/NF4 and any 16-level code), AVX-512 F+BW, behind
 * the same switch. mids: the 15 midpoints of the sorted levels, ascending,
 * then +inf (16 floats); order: sorted position -> nibble (16 bytes). For
 * i < n, nibble(i) = order[#{mids[j] < clamp(x[i] * recip, -1, 1)}] (the
 * rule of FourBit.Levels.nibble), packed two per byte: element 2k in the
 * high nibble of out[k], element 2k+1 in the low one; an odd n pairs the
 * last element with nibble(0). Writes (n + 1) / 2 bytes. x finite. */
void qembed__vbmi_quantize_4bit(const float *mids, const uint8_t *order, const float *x, size_t n, float recip,
                                uint8_t *out);

/* The fused Adam/AdamW 8-bit step of one block of a float32 parameter, with
 * every table in registers: dequantize m (signed dynamic map, absmax *a1)
 * and v (unsigned map, *a2), update (the exact operation order of
 * AdamRule.update8 in Sources/QembedCore/Optim/UpdateRules.swift, lane for
 * lane), write p, requantize m and v with the exact nearest rule, and raise
 * a positive v at the zero code to the smallest positive one (StateRounding).
 * t1, t2: scratch of n floats, left holding the new float states. n <= 256.
 * Returns 0, or a bit mask of the states (1: m, 2: v) whose new absmax has a
 * reciprocal that overflows (a subnormal absmax): for those the caller
 * requantizes t1/t2 by dividing (the portable rule); *a1 and *a2 are set. */
typedef struct qembed__adam8 {
    const qembed__vbmi_dequant *dq1, *dq2;  /* signed / unsigned dynamic maps */
    const qembed__vbmi_quant *q1, *q2;
    float b1, b2, one_minus_b1, one_minus_b2, eps, decay, c2, inv_c2, neg_lr_over_c1;
    int weight_decay;  /* apply p *= decay */
    int skip_zeros;    /* lanes with g == 0 keep p, m and v */
    uint8_t zero1, zero2;  /* the index of 0 in each map (127 and 0 for the dynamic maps) */
} qembed__adam8;

int qembed__vbmi_adam8_block(const qembed__adam8 *k, float *p, const float *g, uint8_t *q1, uint8_t *q2, float *a1,
                             float *a2, size_t n, float *t1, float *t2);

/* The fused 8-bit step of one block for the one-state rules, float32
 * parameter, the same way: dequantize the state (signed dynamic map),
 * update with the exact operation order of the rule's update8 in
 * UpdateRules.swift, requantize, and for the square states (RMSprop,
 * Adagrad) raise a positive value at the zero code to the smallest positive
 * one. n <= 256; t1 scratch of n floats. Returns 1 when the new absmax's
 * reciprocal overflows (the caller requantizes t1 by dividing), else 0. */
enum { QEMBED__RULE_MOMENTUM = 0, QEMBED__RULE_LION = 1, QEMBED__RULE_RMSPROP = 2, QEMBED__RULE_ADAGRAD = 3 };
typedef struct qembed__step1 {
    const qembed__vbmi_dequant *dq;
    const qembed__vbmi_quant *q;
    int rule;             /* QEMBED__RULE_* */
    float b1, b2, one_minus_b1, one_minus_b2, eps, wd, decay, neg_lr;
    int weight_decay;     /* wd > 0 */
    int skip_zeros;
    int first_step;       /* momentum: the state starts as the gradient */
    int floor_state;      /* square states: no positive value at the zero code */
    uint8_t zero;         /* the index of 0 in the map */
} qembed__step1;

int qembed__vbmi_step1_block(const qembed__step1 *k, float *p, const float *g, uint8_t *q1, float *a1, size_t n,
                             float *t1);

#ifdef __cplusplus
}
#endif
#endif
