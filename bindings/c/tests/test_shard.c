/* test_shard.c - row shards of a table (qembed_embedding_create_shard /
 * _get_shard): the shards of a seed tile the unsharded table's Xavier draw
 * bit for bit, padding_idx names a row of the whole table (zeroed and
 * skipped only by the shard that holds it), and every argument error.
 * Quantized shards (qembed_qembedding_quantize_shard / _get_shard): the
 * shards of a fresh random table (values over six orders of magnitude)
 * tile the whole table's int8 / FP4 / NF4 lookups bit for bit at several
 * blocksizes and cut points; split blocks, partial nested statistics and
 * every argument error are refused with nothing written. */
#include <time.h>

#include "qembed.h"
#include "qtest.h"

enum { V = 1000, D = 24 };

static qembed_embedding_params params(int64_t rows, int64_t pad) {
    qembed_embedding_params p;
    qembed_embedding_params_init(&p);
    p.num_embeddings = rows;
    p.embedding_dim = D;
    p.padding_idx = pad;
    p.seed = 42;
    return p;
}

static const float *data_of(qembed_embedding *e) {
    qembed_param *w = NULL;
    qembed_param_info info;
    info.struct_size = sizeof info;
    qembed_embedding_param(e, 0, &w);
    qembed_param_info_get(w, &info);
    return (const float *)info.data;
}

/* rows x dim floats, each row scaled by 10^u, u uniform in [-3, 3). */
static float *random_table(qt_rng *g, int64_t rows, int64_t dim) {
    float *w = xmalloc((size_t)(rows * dim) * sizeof *w);
    for (int64_t i = 0; i < rows; i++) {
        float scale = powf(10.0f, 6.0f * qt_uniform(g) - 3.0f);
        for (int64_t j = 0; j < dim; j++) w[i * dim + j] = qt_normal(g) * scale * (qt_uniform(g) < 0.1f ? 30.0f : 1.0f);
    }
    return w;
}

/* every row of q, in order, as f32 */
static float *lookup_all(const qembed_qembedding *q, int64_t rows, int64_t dim) {
    int64_t *ids = xmalloc((size_t)rows * sizeof *ids);
    float *out = xmalloc((size_t)(rows * dim) * sizeof *out);
    for (int64_t i = 0; i < rows; i++) ids[i] = i;
    CHECKF(qembed_qembedding_forward(q, ids, QEMBED_DTYPE_I64, rows, out, QEMBED_DTYPE_F32, rows * dim) == QEMBED_OK,
           "%s", qembed_last_error());
    free(ids);
    return out;
}

/* Cuts [0, total) at random multiples of `step` rows (the last piece may end
 * anywhere), quantizes each piece as a shard and checks that the pieces'
 * lookups tile the whole table's. */
static void check_tiling(qt_rng *g, unsigned long seed, int kind, int64_t total, int64_t dim, int64_t bs, int64_t step) {
    float *w = random_table(g, total, dim);
    qembed_qembedding *whole = NULL, *s = NULL;
    CHECKF(qembed_qembedding_quantize(w, QEMBED_DTYPE_F32, total, dim, kind, bs, false, &whole) == QEMBED_OK, "%s",
           qembed_last_error());
    float *ref = lookup_all(whole, total, dim);
    int64_t lo = 0, pieces = 0;
    while (lo < total) {
        int64_t hi = lo + step * (1 + (int64_t)(qt_uniform(g) * 4.0f));
        if (hi > total || qt_uniform(g) < 0.15f) hi = total;
        CHECKF(qembed_qembedding_quantize_shard(w + lo * dim, QEMBED_DTYPE_F32, hi - lo, dim, kind, bs, false, lo, total,
                                                &s) == QEMBED_OK,
               "kind %d bs %lld [%lld, %lld) of %lld: %s", kind, (long long)bs, (long long)lo, (long long)hi,
               (long long)total, qembed_last_error());
        if (s == NULL) break;
        int64_t off = -1, tot = -1;
        CHECK(qembed_qembedding_get_shard(s, &off, &tot) == QEMBED_OK && off == lo && tot == total);
        float *got = lookup_all(s, hi - lo, dim);
        CHECKF(memcmp(got, ref + lo * dim, (size_t)((hi - lo) * dim) * sizeof *got) == 0,
               "seed %lu kind %d dim %lld bs %lld: rows [%lld, %lld) differ from the whole table's", seed, kind,
               (long long)dim, (long long)bs, (long long)lo, (long long)hi);
        free(got);
        qembed_qembedding_free(s);
        s = NULL;
        lo = hi;
        pieces++;
    }
    CHECK(pieces >= 1);
    free(ref);
    free(w);
    qembed_qembedding_free(whole);
}

static int64_t gcd64(int64_t a, int64_t b) { return b == 0 ? a : gcd64(b, a % b); }

static void test_quantized_shards(void) {
    unsigned long seed = (unsigned long)time(NULL);
    qt_rng g = qt_rng_make(seed);
    /* int8: scales per row, any cut */
    check_tiling(&g, seed, QEMBED_QEMB_INT8, 1000, 24, 0, 1);
    check_tiling(&g, seed, QEMBED_QEMB_INT8, 333, 7, 0, 3);
    /* 4-bit: cuts on block boundaries (rows a multiple of bs / gcd(dim, bs)) */
    const int64_t dims[3] = {24, 100, 7}, sizes[4] = {32, 64, 256, 1024};
    for (int kind = QEMBED_QEMB_FP4; kind <= QEMBED_QEMB_NF4; kind++)
        for (int d = 0; d < 3; d++)
            for (int b = 0; b < 4; b++) {
                int64_t dim = dims[d], bs = sizes[b], step = bs / gcd64(dim, bs);
                check_tiling(&g, seed, kind, step * 9 + 1 + (int64_t)(qt_uniform(&g) * step), dim, bs, step);
            }

    /* a whole table as a shard of itself may keep nested statistics, and equals the unsharded table */
    float *w = random_table(&g, 300, 24);
    qembed_qembedding *a = NULL, *b = (qembed_qembedding *)&g;
    CHECK(qembed_qembedding_quantize(w, QEMBED_DTYPE_F32, 300, 24, QEMBED_QEMB_NF4, 64, true, &a) == QEMBED_OK);
    CHECKF(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 300, 24, QEMBED_QEMB_NF4, 64, true, 0, 300, &b) == QEMBED_OK,
           "%s", qembed_last_error());
    {
        float *x = lookup_all(a, 300, 24), *y = lookup_all(b, 300, 24);
        CHECK(memcmp(x, y, 300 * 24 * sizeof *x) == 0);
        free(x);
        free(y);
        int64_t off = -1, tot = -1;
        CHECK(qembed_qembedding_get_shard(a, &off, &tot) == QEMBED_OK && off == 0 && tot == 300);   /* not a shard */
    }
    qembed_qembedding_free(b);

    /* refusals: *out is NULL, and the message says why */
    b = (qembed_qembedding *)&g;
    /* 4-bit: 8 x 24 = 192 is not a multiple of 256 */
    CHECK(qembed_qembedding_quantize_shard(w + 8 * 24, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_FP4, 256, false, 8, 300, &b) ==
              QEMBED_ERR_INVALID_ARGUMENT && b == NULL);
    CHECK(qt_names(qembed_last_error(), "blocksize") && qt_names(qembed_last_error(), "row_offset"));
    /* the start is on a block (32 x 24 = 3 x 256) but the end (40 x 24 = 960) is not, and is not the table's end */
    b = (qembed_qembedding *)&g;
    CHECK(qembed_qembedding_quantize_shard(w + 32 * 24, QEMBED_DTYPE_F32, 8, 24, QEMBED_QEMB_NF4, 256, false, 32, 300, &b) ==
              QEMBED_ERR_INVALID_ARGUMENT && b == NULL);
    CHECK(qt_names(qembed_last_error(), "blocksize"));
    /* ... which is fine when it ends the table */
    CHECK(qembed_qembedding_quantize_shard(w + 32 * 24, QEMBED_DTYPE_F32, 268, 24, QEMBED_QEMB_NF4, 256, false, 32, 300, &b) ==
          QEMBED_OK);
    qembed_qembedding_free(b);
    /* nested statistics of a part of a table */
    b = (qembed_qembedding *)&g;
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_NF4, 256, true, 0, 300, &b) ==
              QEMBED_ERR_INVALID_ARGUMENT && b == NULL);
    CHECK(qt_names(qembed_last_error(), "compress_statistics"));
    /* int8 has no blocks: any offset, and compress_statistics does not apply */
    CHECK(qembed_qembedding_quantize_shard(w + 7 * 24, QEMBED_DTYPE_F32, 5, 24, QEMBED_QEMB_INT8, 0, true, 7, 300, &b) ==
          QEMBED_OK);
    qembed_qembedding_free(b);
    /* ranges */
    b = (qembed_qembedding *)&g;
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, 290, 300, &b) ==
              QEMBED_ERR_OUT_OF_RANGE && b == NULL);
    CHECK(qt_names(qembed_last_error(), "total_rows"));
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, -32, 300, &b) ==
          QEMBED_ERR_OUT_OF_RANGE);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, 0, 31, &b) ==
          QEMBED_ERR_OUT_OF_RANGE);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, INT64_MIN, 300, &b) ==
          QEMBED_ERR_OUT_OF_RANGE);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, INT64_MAX, 300, &b) ==
          QEMBED_ERR_OUT_OF_RANGE);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, 0, 0, &b) ==
          QEMBED_ERR_INVALID_ARGUMENT);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, 0, -5, &b) ==
          QEMBED_ERR_INVALID_ARGUMENT);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, 0, INT64_MAX, &b) ==
          QEMBED_ERR_SHAPE);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 1 << 20, QEMBED_QEMB_INT8, 0, false, 0,
                                           INT64_MAX / 64, &b) == QEMBED_ERR_SHAPE);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 0, 24, QEMBED_QEMB_INT8, 0, false, 0, 300, &b) ==
          QEMBED_ERR_INVALID_ARGUMENT);
    /* the same arguments as qembed_qembedding_quantize */
    CHECK(qembed_qembedding_quantize_shard(NULL, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, 0, 300, &b) ==
          QEMBED_ERR_NULL_POINTER && b == NULL);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_INT8, 0, false, 0, 300, NULL) ==
          QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_I32, 32, 24, QEMBED_QEMB_INT8, 0, false, 0, 300, &b) ==
          QEMBED_ERR_UNSUPPORTED);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, 7, 0, false, 0, 300, &b) == QEMBED_ERR_UNSUPPORTED);
    CHECK(qembed_qembedding_quantize_shard(w, QEMBED_DTYPE_F32, 32, 24, QEMBED_QEMB_FP4, 48, false, 0, 300, &b) ==
          QEMBED_ERR_UNSUPPORTED);
    CHECK(b == NULL);
    /* get_shard: nothing written on failure */
    int64_t off = 11, tot = 12;
    CHECK(qembed_qembedding_get_shard(NULL, &off, &tot) == QEMBED_ERR_NULL_POINTER && off == 11 && tot == 12);
    CHECK(qembed_qembedding_get_shard(a, NULL, &tot) == QEMBED_ERR_NULL_POINTER && tot == 12);
    CHECK(qembed_qembedding_get_shard(a, &off, NULL) == QEMBED_ERR_NULL_POINTER && off == 11);
    qembed_qembedding_free(a);
    free(w);
}

int main(void) {
    test_quantized_shards();
    qembed_embedding_params p = params(V, 500);
    qembed_embedding *full = NULL, *s = NULL;
    int64_t bounds[4] = {0, 320, 640, V}, off = -1, total = -1;
    CHECK(qembed_embedding_create(&p, &full) == QEMBED_OK);
    CHECK(qembed_embedding_get_shard(full, &off, &total) == QEMBED_OK && off == 0 && total == V);
    const float *fw = data_of(full);
    for (int r = 0; r < 3; r++) {
        for (int stable = 0; stable < 2; stable++) {
            qembed_embedding_params sp = params(bounds[r + 1] - bounds[r], 500);
            CHECKF(qembed_embedding_create_shard(&sp, stable, bounds[r], V, &s) == QEMBED_OK, "%s", qembed_last_error());
            CHECK(qembed_embedding_get_shard(s, &off, &total) == QEMBED_OK && off == bounds[r] && total == V);
            CHECKF(memcmp(data_of(s), fw + bounds[r] * D, (size_t)(bounds[r + 1] - bounds[r]) * D * 4) == 0,
                   "shard %d: not the whole table's rows", r);
            qembed_embedding_params got;
            bool st;
            got.struct_size = sizeof got;
            CHECK(qembed_embedding_get_params(s, &got, &st) == QEMBED_OK && st == (stable != 0));
            CHECK(got.padding_idx == (r == 1 ? 500 - 320 : QEMBED_NO_PADDING));
            qembed_embedding_free(s);
            s = NULL;
        }
    }
    /* negative padding_idx counts from the end of the whole table */
    qembed_embedding_params sp = params(360, -1);
    CHECK(qembed_embedding_create_shard(&sp, false, 640, V, &s) == QEMBED_OK);
    {
        qembed_embedding_params got;
        bool st;
        got.struct_size = sizeof got;
        qembed_embedding_get_params(s, &got, &st);
        CHECK(got.padding_idx == 359);
        for (int k = 0; k < D; k++) CHECK(data_of(s)[359 * D + k] == 0.0f);
    }
    qembed_embedding_free(s);
    s = (qembed_embedding *)&p;
    sp = params(400, QEMBED_NO_PADDING);
    CHECK(qembed_embedding_create_shard(&sp, false, 700, V, &s) == QEMBED_ERR_OUT_OF_RANGE && s == NULL);
    CHECK(qt_names(qembed_last_error(), "total_rows"));
    CHECK(qembed_embedding_create_shard(&sp, false, -1, V, &s) == QEMBED_ERR_OUT_OF_RANGE);
    CHECK(qembed_embedding_create_shard(&sp, false, 0, 0, &s) == QEMBED_ERR_INVALID_ARGUMENT);
    CHECK(qembed_embedding_create_shard(&sp, false, 0, 399, &s) == QEMBED_ERR_OUT_OF_RANGE);
    sp = params(400, V);
    CHECK(qembed_embedding_create_shard(&sp, false, 0, V, &s) == QEMBED_ERR_OUT_OF_RANGE);
    CHECK(qembed_embedding_create_shard(NULL, false, 0, V, &s) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_embedding_get_shard(NULL, &off, &total) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_embedding_get_shard(full, NULL, &total) == QEMBED_ERR_NULL_POINTER);
    qembed_embedding_free(full);
    return qt_summary("test_shard");
}
