/* demo.c - what each qembed kernel does to a BERT-sized embedding table.
 *
 * A 30522 x 384 float32 table (bert-base vocabulary, MiniLM width) of
 * N(0, 0.02) values from a fixed-seed generator is quantized and dequantized
 * with every kernel; the table reports the storage, the reconstruction error
 * and the time of each. `make demo` builds and runs it. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qembed.h"

#define ROWS 30522
#define DIM 384
#define N ((int64_t)ROWS * DIM)

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes);
    if (p == NULL) {
        fprintf(stderr, "demo: out of memory\n");
        exit(1);
    }
    return p;
}

static void check(qembed_status st, const char *what) {
    if (st != QEMBED_OK) {
        fprintf(stderr, "demo: %s failed: %s: %s\n", what, qembed_status_string(st), qembed_last_error());
        exit(1);
    }
}

/* xorshift64* and Box-Muller: deterministic N(0, sigma) */
static uint64_t rng = 0x853C49E6748FEA9Bu;
static double uniform01(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return ((double)((rng * 0x2545F4914F6CDD1Du) >> 11) + 0.5) / 9007199254740992.0;
}

static void fill_normal(float *x, int64_t n, double sigma) {
    int64_t i;
    for (i = 0; i + 1 < n; i += 2) {
        double r = sqrt(-2.0 * log(uniform01())), t = 6.283185307179586 * uniform01();
        x[i] = (float)(sigma * r * cos(t));
        x[i + 1] = (float)(sigma * r * sin(t));
    }
    if (i < n) x[i] = (float)(sigma * sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01()));
}

typedef struct row {
    const char *kernel;
    int64_t bytes_after;
    double max_err, rmse, mean_cos, quant_ms, dequant_ms;
} row;

/* times are the best of REPS runs (the first one also pays for page faults) */
#define REPS 3
static void keep_best(row *r, double q_ms, double dq_ms) {
    if (q_ms < r->quant_ms) r->quant_ms = q_ms;
    if (dq_ms < r->dequant_ms) r->dequant_ms = dq_ms;
}

static void measure(const float *x, const float *y, row *r) {
    int64_t i, j;
    double se = 0.0, cos_sum = 0.0, m = 0.0;
    for (i = 0; i < ROWS; i++) {
        double dot = 0.0, nx = 0.0, ny = 0.0;
        const float *a = x + i * DIM, *b = y + i * DIM;
        for (j = 0; j < DIM; j++) {
            double d = (double)b[j] - a[j];
            if (fabs(d) > m) m = fabs(d);
            se += d * d;
            dot += (double)a[j] * b[j];
            nx += (double)a[j] * a[j];
            ny += (double)b[j] * b[j];
        }
        cos_sum += (nx > 0 && ny > 0) ? dot / sqrt(nx * ny) : (nx == ny ? 1.0 : 0.0);
    }
    r->max_err = m;
    r->rmse = sqrt(se / (double)N);
    r->mean_cos = cos_sum / ROWS;
}

static void blockwise8(const float *x, float *y, int64_t bs, row *r) {
    int64_t nb;
    uint8_t *q = xmalloc((size_t)N);
    float *absmax;
    double t0, t1, t2;
    int rep;
    check(qembed_blockwise_absmax_count(N, bs, &nb), "absmax_count");
    absmax = xmalloc((size_t)nb * sizeof(float));
    r->quant_ms = r->dequant_ms = 1e30;
    for (rep = 0; rep < REPS; rep++) {
        t0 = now_ms();
        check(qembed_quantize_blockwise(x, QEMBED_DTYPE_F32, N, NULL, bs, q, absmax, nb), "quantize_blockwise");
        t1 = now_ms();
        check(qembed_dequantize_blockwise(q, N, absmax, nb, NULL, bs, QEMBED_DTYPE_F32, y), "dequantize_blockwise");
        t2 = now_ms();
        keep_best(r, t1 - t0, t2 - t1);
    }
    r->bytes_after = N + nb * (int64_t)sizeof(float);
    measure(x, y, r);
    free(absmax);
    free(q);
}

/* 4-bit, optionally with nested (double-quantized) absmax, nested blocksize 256 */
static void four_bit(const float *x, float *y, int qt, int nested, row *r) {
    const int64_t bs = 64, nbs = 256;
    int64_t nb, nbytes, nn = 0;
    uint8_t *packed, *qabsmax = NULL;
    float *absmax, *nested_absmax = NULL, offset = 0.0f;
    double t0, t1, t2;
    int rep;
    check(qembed_4bit_packed_bytes(N, &nbytes), "packed_bytes");
    check(qembed_blockwise_absmax_count(N, bs, &nb), "absmax_count");
    packed = xmalloc((size_t)nbytes);
    absmax = xmalloc((size_t)nb * sizeof(float));
    if (nested) {
        check(qembed_blockwise_absmax_count(nb, nbs, &nn), "absmax_count");
        qabsmax = xmalloc((size_t)nb);
        nested_absmax = xmalloc((size_t)nn * sizeof(float));
    }
    r->quant_ms = r->dequant_ms = 1e30;
    for (rep = 0; rep < REPS; rep++) {
        t0 = now_ms();
        check(qembed_quantize_4bit(x, QEMBED_DTYPE_F32, N, bs, qt, packed, nbytes, absmax, nb), "quantize_4bit");
        if (nested)
            check(qembed_quantize_statistics(absmax, nb, nbs, qabsmax, nested_absmax, nn, &offset), "statistics");
        t1 = now_ms();
        /* with nested statistics the float32 absmax is rebuilt from them first */
        if (nested)
            check(qembed_dequantize_statistics(qabsmax, nb, nested_absmax, nn, NULL, nbs, offset, absmax),
                  "statistics");
        check(qembed_dequantize_4bit(packed, nbytes, N, absmax, nb, bs, qt, QEMBED_DTYPE_F32, y), "dequantize_4bit");
        t2 = now_ms();
        keep_best(r, t1 - t0, t2 - t1);
    }
    r->bytes_after = nbytes + (nested ? nb + nn * (int64_t)sizeof(float) + (int64_t)sizeof(float)
                                      : nb * (int64_t)sizeof(float));
    measure(x, y, r);
    free(nested_absmax);
    free(qabsmax);
    free(absmax);
    free(packed);
}

static void int8_rowwise(const float *x, float *y, row *r) {
    int8_t *q = xmalloc((size_t)N);
    float *stats = xmalloc(ROWS * sizeof(float));
    double t0, t1, t2;
    int rep;
    r->quant_ms = r->dequant_ms = 1e30;
    for (rep = 0; rep < REPS; rep++) {
        t0 = now_ms();
        check(qembed_int8_vectorwise_quant(x, QEMBED_DTYPE_F32, ROWS, DIM, 0.0f, q, stats, NULL, NULL), "int8_quant");
        t1 = now_ms();
        check(qembed_int8_vectorwise_dequant(q, ROWS, DIM, stats, QEMBED_DTYPE_F32, y), "int8_dequant");
        t2 = now_ms();
        keep_best(r, t1 - t0, t2 - t1);
    }
    r->bytes_after = N + ROWS * (int64_t)sizeof(float);
    measure(x, y, r);
    free(stats);
    free(q);
}

/* 12345678 -> "12,345,678" */
static const char *grouped(int64_t v, char *buf) {
    char tmp[32];
    int len, i, j = 0;
    len = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    for (i = 0; i < len; i++) {
        buf[j++] = tmp[i];
        if ((len - i - 1) % 3 == 0 && i < len - 1) buf[j++] = ',';
    }
    buf[j] = '\0';
    return buf;
}

int main(void) {
    float *x = xmalloc((size_t)N * sizeof(float));
    float *y = xmalloc((size_t)N * sizeof(float));
    row rows[8];
    int nrows = 0, i;
    const int64_t before = N * (int64_t)sizeof(float);
    char b1[32], b2[32];
    double t0 = now_ms();

    fill_normal(x, N, 0.02);
    memset(y, 0, (size_t)N * sizeof(float));
    printf("qembed %s demo: %d x %d float32 embedding table, N(0, 0.02), %s parameters, %d worker threads\n\n",
           qembed_version(), ROWS, DIM, grouped(N, b1), qembed_get_num_threads());

    rows[nrows].kernel = "blockwise 8-bit, bs 256";
    blockwise8(x, y, 256, &rows[nrows++]);
    rows[nrows].kernel = "blockwise 8-bit, bs 4096";
    blockwise8(x, y, 4096, &rows[nrows++]);
    rows[nrows].kernel = "NF4, bs 64";
    four_bit(x, y, QEMBED_QUANT_NF4, 0, &rows[nrows++]);
    rows[nrows].kernel = "NF4, bs 64, nested stats";
    four_bit(x, y, QEMBED_QUANT_NF4, 1, &rows[nrows++]);
    rows[nrows].kernel = "FP4, bs 64";
    four_bit(x, y, QEMBED_QUANT_FP4, 0, &rows[nrows++]);
    rows[nrows].kernel = "FP4, bs 64, nested stats";
    four_bit(x, y, QEMBED_QUANT_FP4, 1, &rows[nrows++]);
    rows[nrows].kernel = "int8 row-wise";
    int8_rowwise(x, y, &rows[nrows++]);

    printf("%-26s %13s %13s %8s %12s %11s %10s %9s %10s\n", "kernel", "bytes before", "bytes after", "B/param",
           "max abs err", "RMSE", "mean cos", "quant ms", "dequant ms");
    printf("%-26s %13s %13s %8s %12s %11s %10s %9s %10s\n", "--------------------------", "------------",
           "------------", "-------", "-----------", "----------", "---------", "--------", "----------");
    printf("%-26s %13s %13s %8.4f %12s %11s %10s %9s %10s\n", "float32 (original)", grouped(before, b1),
           grouped(before, b2), 4.0, "0", "0", "1.000000", "-", "-");
    for (i = 0; i < nrows; i++)
        printf("%-26s %13s %13s %8.4f %12.3e %11.3e %10.6f %9.1f %10.1f\n", rows[i].kernel, grouped(before, b1),
               grouped(rows[i].bytes_after, b2), (double)rows[i].bytes_after / (double)N, rows[i].max_err, rows[i].rmse,
               rows[i].mean_cos, rows[i].quant_ms, rows[i].dequant_ms);
    printf("\nbytes after = codes + float32 absmax/row stats (nested: u8 absmax + float32 nested absmax + offset);"
           "\nmean cos = mean cosine similarity between original and dequantized rows; times: best of %d runs."
           "\nTotal %.1f s.\n", REPS,
           (now_ms() - t0) / 1e3);
    free(y);
    free(x);
    return 0;
}
