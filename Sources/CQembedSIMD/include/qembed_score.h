/* AVX-512 scoring kernel: dot products of queries with a tile of rows in the
 * scoring order of Scoring.swift (products rounded to float32, no fused
 * multiply-add; 8 lanes, lane l taking j = l, l + 8, ... in order; lanes
 * combined as ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))), bit for bit.
 * Two rows share a 16-float register, one per half, so each instruction does
 * 8 lanes of two rows. Internal to the core, not API. */
#ifndef QEMBED_SCORE_H
#define QEMBED_SCORE_H

#include <stdint.h>

/* The paired tile layout: rows 2p and 2p + 1 interleaved in chunks of 8
 * floats, pair p at tile + 2 * p * stride, row 2p + h's floats c * 8 ..
 * c * 8 + 7 at tile[2 * p * stride + 16 * c + 8 * h]. stride is a multiple
 * of 8. pair_rows writes rows a and b (b may be NULL: zeros) as pair p. */
void qembed__score_pair_rows(const float *a, const float *b, long stride, float *pair);

/* s[qi * ns + r] = <query qi, row r> for qi < nq, r < nr (even), queries
 * nq x stride floats (nq 1, or a multiple of 4), rows in the paired layout.
 * Needs qembed__avx512_enabled(). */
void qembed__score512_tile(const float *q, long nq, const float *tile, long nr, long stride, float *s, long ns);

/* s[k] = <q, row r0 + k> for k < n, one query (dim floats) straight from an
 * int8 (dim a multiple of 8) or 4-bit table (qembed__bag512_supported), in
 * the same order. Returns 0, writing nothing, when it has no form for the
 * rows or the CPU; 1 when done. */
struct qembed__bag_rows;
int qembed__score512_rows(const struct qembed__bag_rows *r, long r0, long n, const float *q, float *s);

/* The AVX2 one-query forms (qembed_score_avx2.c), four rows at a time, in
 * the same order. Need qembed__avx2_enabled() and dim a multiple of 8.
 * 4-bit: out[r] = <q, row r0 + r> for r < n, rows in blocks of 1 << lg >= 8
 * values, absmax[k] the scale of block (r0 * dim >> lg) + k, a value
 * code[nibble] * absmax (high nibble of a byte first). */
void qembed__4bit_rows_dot_avx2(const uint8_t *packed, long r0, long n, long dim, int lg, const float *absmax,
                                const float *code, const float *q, float *out);
/* int8: the same with a value q * (scb[row] / 127). */
void qembed__i8_rows_dot_avx2(const int8_t *data, const float *scb, long r0, long n, long dim, const float *q,
                              float *out);

#endif
