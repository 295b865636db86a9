/* bags.c - pooled lookups and table scoring with qembed.
 *
 * A 10,000 x 64 float table is quantized to NF4; a batch of three bags of
 * ids is pooled (the mean of each bag's rows, as torch.nn.EmbeddingBag with
 * mode="mean"), and each pooled vector is then searched against the table
 * for its five best rows by cosine similarity (the NF4 table is never
 * dequantized as a whole).
 *
 *     cc bags.c $(pkg-config --cflags --libs qembed) -o bags && ./bags
 */
#include <qembed.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define ROWS 10000
#define DIM 64

static int check(qembed_status st, const char *what) {
    if (st == QEMBED_OK) return 0;
    fprintf(stderr, "%s: %s: %s\n", what, qembed_status_string(st), qembed_last_error());
    return 1;
}

int main(void) {
    float *table = malloc(sizeof(float) * ROWS * DIM);
    uint64_t s = 42;
    int64_t i;
    if (!table) return 1;
    for (i = 0; i < (int64_t)ROWS * DIM; i++) {   /* xorshift values in [-1, 1) */
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        table[i] = (float)((s >> 40) / 8388608.0 - 1.0);
    }
    qembed_qembedding *q = NULL;
    if (check(qembed_qembedding_quantize(table, QEMBED_DTYPE_F32, ROWS, DIM, QEMBED_QEMB_NF4, 64, true, &q), "quantize"))
        return 1;

    /* three bags: ids[0..4), ids[4..5), ids[5..9) */
    int64_t ids[9] = {17, 256, 9000, 3, 77, 5000, 5001, 5002, 12};
    int64_t offsets[3] = {0, 4, 5};
    qembed_bags b;
    qembed_bags_init(&b);   /* mode MEAN, I64, no padding */
    b.indices = ids;
    b.count = 9;
    b.offsets = offsets;
    b.num_offsets = 3;
    float pooled[3 * DIM];
    if (check(qembed_qembedding_bag_forward(q, &b, pooled, QEMBED_DTYPE_F32, 3 * DIM), "bag forward")) return 1;

    int64_t best[3 * 5];
    float score[3 * 5];
    if (check(qembed_qembedding_topk(q, pooled, QEMBED_DTYPE_F32, 3, QEMBED_SCORE_COSINE, 5, best, score, 3 * 5), "topk"))
        return 1;
    for (i = 0; i < 3; i++) {
        int k;
        printf("bag %lld: nearest rows", (long long)i);
        for (k = 0; k < 5; k++) printf(" %lld (%.3f)", (long long)best[i * 5 + k], score[i * 5 + k]);
        printf("\n");
    }
    /* a bag of one id finds its own row first */
    if (best[5] != 77) { fprintf(stderr, "expected row 77 first for bag 1, got %lld\n", (long long)best[5]); return 1; }
    qembed_qembedding_free(q);
    free(table);
    return 0;
}
