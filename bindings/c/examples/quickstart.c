/* quickstart.c - quantize a random embedding table to NF4 and back.
 *
 * Build against an installed qembed:
 *   cc -std=c11 quickstart.c $(pkg-config --cflags --libs qembed) -o quickstart
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <qembed.h>

#define ROWS 1000
#define DIM 64
#define BLOCKSIZE 64

static int fail(const char *what, qembed_status st) {
    fprintf(stderr, "%s: %s: %s\n", what, qembed_status_string(st), qembed_last_error());
    return 1;
}

int main(void) {
    const int64_t n = (int64_t)ROWS * DIM;
    int64_t packed_bytes = 0, blocks = 0, i;
    float *table = malloc((size_t)n * sizeof *table);
    float *restored = malloc((size_t)n * sizeof *restored);
    uint8_t *packed;
    float *absmax;
    float max_err = 0.0f, max_abs = 0.0f;
    uint64_t s = 0x9E3779B97F4A7C15u;
    qembed_status st;

    if (table == NULL || restored == NULL) return 1;
    /* a random table: uniform in [-0.05, 0.05) from a xorshift generator */
    for (i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        table[i] = ((float)(s >> 40) / 16777216.0f - 0.5f) * 0.1f;
    }

    /* sizes of the outputs, from the library */
    if ((st = qembed_4bit_packed_bytes(n, &packed_bytes)) != QEMBED_OK) return fail("packed_bytes", st);
    if ((st = qembed_blockwise_absmax_count(n, BLOCKSIZE, &blocks)) != QEMBED_OK) return fail("absmax_count", st);
    packed = malloc((size_t)packed_bytes);
    absmax = malloc((size_t)blocks * sizeof *absmax);
    if (packed == NULL || absmax == NULL) return 1;

    st = qembed_quantize_4bit(table, QEMBED_DTYPE_F32, n, BLOCKSIZE, QEMBED_QUANT_NF4, packed, packed_bytes, absmax,
                              blocks);
    if (st != QEMBED_OK) return fail("quantize_4bit", st);
    st = qembed_dequantize_4bit(packed, packed_bytes, n, absmax, blocks, BLOCKSIZE, QEMBED_QUANT_NF4,
                                QEMBED_DTYPE_F32, restored);
    if (st != QEMBED_OK) return fail("dequantize_4bit", st);

    for (i = 0; i < n; i++) {
        float e = fabsf(restored[i] - table[i]);
        if (e > max_err) max_err = e;
        if (fabsf(table[i]) > max_abs) max_abs = fabsf(table[i]);
    }
    printf("qembed %s: %d x %d table -> NF4 (%lld bytes + %lld absmax), max abs error %.6f\n", qembed_version(), ROWS,
           DIM, (long long)packed_bytes, (long long)blocks, max_err);
    free(table);
    free(restored);
    free(packed);
    free(absmax);
    /* NF4's widest gap (-1 to -0.696) is 0.304 of absmax: the error stays below half of it */
    return max_err <= 0.153f * max_abs ? 0 : 1;
}
