/* test_shard.c - row shards of a table (qembed_embedding_create_shard /
 * _get_shard): the shards of a seed tile the unsharded table's Xavier draw
 * bit for bit, padding_idx names a row of the whole table (zeroed and
 * skipped only by the shard that holds it), and every argument error. */
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

int main(void) {
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
