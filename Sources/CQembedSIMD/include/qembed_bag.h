/* AVX-512 bag kernels: one call reduces one bag of rows (float32, int8
 * row-wise or packed 4-bit) with the accumulators held in registers across
 * the bag's rows, a tile of up to 128 floats at a time. Internal to the
 * core, not API.
 *
 * Each kernel equals the scalar rule of BagReduce.swift element for
 * element: a row value is the f32 weight, q * (SCB / 127) (int8) or
 * code[nibble] * absmax (4-bit, high nibble of a byte first; absmax of a
 * nested table = nested_code[qabsmax] * nested_absmax + offset); a sum adds
 * the values (times the per-sample weight, when given) to +0 in the order of
 * the bag, every product and sum rounded once (no fused multiply-add); max
 * keeps the first non-padding row and then a value only where it is larger
 * (NaN and equal values keep the earlier one). Chosen at run time (AVX-512
 * F+BW+DQ+VL and the OS's ZMM state), off under QEMBED_CPU=baseline|avx2. */
#ifndef QEMBED_BAG_H
#define QEMBED_BAG_H

#include <stdint.h>

enum { QEMBED__BAG_F32 = 0, QEMBED__BAG_I8 = 1, QEMBED__BAG_4BIT = 2 };

typedef struct qembed__bag_rows {
    int kind;                    /* QEMBED__BAG_* */
    long dim;
    const void *data;            /* float rows, int8 rows, or packed nibbles */
    const float *scales;         /* int8: SCB per row; 4-bit: absmax per block, or NULL when nested */
    long blocksize;              /* 4-bit: a power of two, a multiple of 16 */
    const float *code;           /* 4-bit: the 16 code values */
    const uint8_t *qabsmax;      /* nested 4-bit statistics */
    const float *nested_code;
    const float *nested_absmax;
    long nested_blocksize;
    float offset;
} qembed__bag_rows;

/* 1 when the AVX-512 F+BW+DQ+VL kernels (bags, scoring) run on this CPU
 * and are switched on. */
int qembed__avx512_enabled(void);
/* Tests: 0 switches them off, 1 back to what the CPU allows. */
void qembed__avx512_set_enabled(int on);

/* 1 when the kernels run here for rows of this shape (4-bit: dim and
 * blocksize multiples of 16, blocksize a power of two). */
int qembed__bag512_supported(const qembed__bag_rows *r);

/* Reduces rows idx[k], lo <= k < hi (int64 indices when is64, else int32),
 * skipping k whose index equals pad (pass -1 for none), into acc[0, dim):
 * mode_max 0: acc = the sum (weights w[k] multiply each row when w is not
 * NULL); mode_max 1: acc = the elementwise maximum, unchanged when no row is
 * reduced. Rows idx[k + pf] are prefetched while k + pf < pf_end. Returns
 * the number of rows reduced. Needs qembed__bag512_supported(r). */
long qembed__bag512_reduce(const qembed__bag_rows *r, const void *idx, int is64, long lo, long hi, long pf,
                           long pf_end, long pad, const float *w, int mode_max, float *acc);

#endif
