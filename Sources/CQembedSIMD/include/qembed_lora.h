/* AVX-512 and AVX2 LoRA lookups: each output row is the base table's row (float32,
 * int8 or 4-bit, as qembed_bag.h reads them) plus the low-rank update, both
 * in registers, stored once. Internal to the core, not API.
 *
 * The update of id i is x = sum over j < 8 of (A^T[i][j] * scaling) * B^T[j]
 * (terms j >= r are zero), evaluated as LoraEmbedding.addDeltaSmallRank does:
 * x = a0 * b0, then x = fma(a_j, b_j, x) for j = 1 ... 7; out = base + x. */
#ifndef QEMBED_LORA_H
#define QEMBED_LORA_H

struct qembed__bag_rows;

/* out[k * dim ...] for k < n (ids int64 when is64, else int32), r <= 8, dim
 * a multiple of 16. at: A^T (rows x r), bt: B^T (r x dim). Returns 0,
 * writing nothing, when it has no form for the rows or the CPU; 1 when done. */
int qembed__lora512_forward(const struct qembed__bag_rows *rows, const void *idx, int is64, long n, const float *at,
                            long r, const float *bt, float scaling, float *out);

/* The same rule and result with AVX2 and FMA (qembed_lora_avx2.c), for CPUs
 * without AVX-512: rows as qembed__bag256_supported takes them, r <= 8, dim
 * a multiple of 16. Returns 0, writing nothing, otherwise. */
int qembed__lora256_forward(const struct qembed__bag_rows *rows, const void *idx, int is64, long n, const float *at,
                            long r, const float *bt, float scaling, float *out);

#endif
