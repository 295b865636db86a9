/* test_lora.c - LoRA over a frozen table ("LoRA over a frozen table" in
 * include/qembed.h), against a double-precision C statement of peft's rule
 *
 *   out = base(ids) + (A^T[ids] @ B^T) * scaling,  scaling = alpha / r (alpha / sqrt(r) with rslora)
 *   dA^T[id] += (g @ B) * scaling  (not for padding_idx),  dB^T += A^T[ids]^T @ g * scaling
 *
 * over a float base and an NF4 base (whose rows are its own lookup), the
 * merge (forward of every row), the defaults, parameter shapes and names,
 * and every argument error (nothing written on failure). */
#include "qembed.h"
#include "qtest.h"

enum { V = 70, D = 19, R = 3, N = 25 };

static void fill(qt_rng *r, float *x, int n, float scale) {
    for (int i = 0; i < n; i++) x[i] = qt_normal(r) * scale;
}

static void check_layer(const char *what, qembed_embedding *fb, qembed_qembedding *qb, const float *rows_of_base,
                        int64_t pad, bool rslora) {
    qt_rng r = qt_rng_make(11);
    qembed_lora_params lp;
    qembed_lora *l = NULL;
    qembed_param *pa = NULL, *pb = NULL;
    float at[V * R], bt[R * D], g[N * D], out[N * D], merged[V * D];
    int64_t ids[N];
    double scaling;
    qembed_lora_params_init(&lp);
    CHECK(lp.r == 8 && lp.lora_alpha == 8 && !lp.use_rslora);
    lp.r = R;
    lp.lora_alpha = 5;
    lp.use_rslora = rslora;
    CHECKF(qembed_lora_create(&lp, fb, qb, &l) == QEMBED_OK, "%s: %s", what, qembed_last_error());
    CHECK(qembed_lora_get_params(l, &lp, &scaling) == QEMBED_OK);
    CHECK(fabs(scaling - (rslora ? 5 / sqrt(R) : 5.0 / R)) < 1e-6);
    CHECK(qembed_lora_param(l, 0, &pa) == QEMBED_OK && qembed_lora_param(l, 1, &pb) == QEMBED_OK);
    {
        qembed_param_info ia = qt_info_of(pa), ib = qt_info_of(pb);
        CHECK(strcmp(ia.name, "lora_embedding_A") == 0 && ia.shape[0] == V && ia.shape[1] == R);
        CHECK(strcmp(ib.name, "lora_embedding_B") == 0 && ib.shape[0] == R && ib.shape[1] == D);
        for (int i = 0; i < V * R; i++) CHECK(((float *)ia.data)[i] == 0.0f);   /* A starts at zero */
    }
    fill(&r, at, V * R, 0.3f);
    if (pad >= 0) for (int j = 0; j < R; j++) at[pad * R + j] = 0;
    fill(&r, bt, R * D, 1.0f);
    fill(&r, g, N * D, 0.1f);
    CHECK(qembed_param_load(pa, at, QEMBED_DTYPE_F32, V * R) == QEMBED_OK);
    CHECK(qembed_param_load(pb, bt, QEMBED_DTYPE_F32, R * D) == QEMBED_OK);
    for (int k = 0; k < N; k++) ids[k] = (int64_t)(qt_next(&r) % V);
    ids[3] = ids[4];
    if (pad >= 0) ids[7] = pad;
    CHECK(qembed_lora_forward(l, ids, QEMBED_DTYPE_I64, N, out, QEMBED_DTYPE_F32, N * D) == QEMBED_OK);
    double worst = 0;
    for (int k = 0; k < N; k++)
        for (int d = 0; d < D; d++) {
            double want = rows_of_base[ids[k] * D + d];
            double acc = 0;
            for (int j = 0; j < R; j++) acc += (double)at[ids[k] * R + j] * bt[j * D + d];
            want += acc * scaling;
            double e = fabs(out[k * D + d] - want) / fmax(1.0, fabs(want));
            worst = e > worst ? e : worst;
        }
    CHECKF(worst < 1e-5, "%s: forward relative error %g", what, worst);
    CHECK(qembed_lora_backward(l, ids, QEMBED_DTYPE_I64, N, g, QEMBED_DTYPE_F32, N * D) == QEMBED_OK);
    {
        const float *ga = qt_info_of(pa).grad, *gb = qt_info_of(pb).grad;
        double wa = 0, wb = 0;
        CHECK(ga != NULL && gb != NULL);
        for (int i = 0; i < V && ga; i++)
            for (int j = 0; j < R; j++) {
                double want = 0;
                for (int k = 0; k < N; k++) {
                    if (ids[k] != i || i == pad) continue;
                    for (int d = 0; d < D; d++) want += (double)g[k * D + d] * bt[j * D + d] * scaling;
                }
                double e = fabs(ga[i * R + j] - want) / fmax(1.0, fabs(want));
                wa = e > wa ? e : wa;
            }
        for (int j = 0; j < R && gb; j++)
            for (int d = 0; d < D; d++) {
                double want = 0;
                for (int k = 0; k < N; k++) want += (double)at[ids[k] * R + j] * g[k * D + d] * scaling;
                double e = fabs(gb[j * D + d] - want) / fmax(1.0, fabs(want));
                wb = e > wb ? e : wb;
            }
        CHECKF(wa < 1e-5 && wb < 1e-5, "%s: gradient errors A %g B %g", what, wa, wb);
    }
    /* merge = forward of every row */
    CHECK(qembed_lora_merge(l, merged, QEMBED_DTYPE_F32, V * D) == QEMBED_OK);
    for (int k = 0; k < N; k++) CHECK(memcmp(merged + ids[k] * D, out + k * D, D * 4) == 0);
    /* errors: nothing written */
    {
        float keep[N * D];
        int64_t bad[2] = {0, V};
        memcpy(keep, out, sizeof keep);
        CHECK(qembed_lora_forward(l, bad, QEMBED_DTYPE_I64, 2, out, QEMBED_DTYPE_F32, N * D) == QEMBED_ERR_OUT_OF_RANGE);
        CHECK(qembed_lora_forward(l, ids, QEMBED_DTYPE_I64, N, out, QEMBED_DTYPE_F32, N * D - 1) == QEMBED_ERR_BUFFER_TOO_SMALL);
        CHECK(qembed_lora_forward(l, ids, QEMBED_DTYPE_F32, N, out, QEMBED_DTYPE_F32, N * D) != QEMBED_OK);
        CHECK(qembed_lora_forward(l, ids, QEMBED_DTYPE_I64, N, out, QEMBED_DTYPE_I8, N * D) != QEMBED_OK);
        CHECK(memcmp(keep, out, sizeof keep) == 0);
        CHECK(qembed_lora_merge(l, merged, QEMBED_DTYPE_F32, V * D - 1) == QEMBED_ERR_BUFFER_TOO_SMALL);
        g[5] = NAN;
        float gbefore[R * D];
        memcpy(gbefore, qt_info_of(pb).grad, sizeof gbefore);
        CHECK(qembed_lora_backward(l, ids, QEMBED_DTYPE_I64, N, g, QEMBED_DTYPE_F32, N * D) == QEMBED_ERR_NON_FINITE);
        CHECK(memcmp(gbefore, qt_info_of(pb).grad, sizeof gbefore) == 0);
        CHECK(qembed_lora_backward(l, ids, QEMBED_DTYPE_I64, N, g, QEMBED_DTYPE_F32, N * D - 1) == QEMBED_ERR_SHAPE);
        CHECK(qembed_lora_param(l, 2, &pa) == QEMBED_ERR_OUT_OF_RANGE);
        CHECK(qembed_lora_zero_grad(l) == QEMBED_OK);
        CHECK(qt_info_of(pb).grad[0] == 0.0f);
    }
    qembed_lora_free(l);
}

int main(void) {
    qt_rng r = qt_rng_make(5);
    float w[V * D], deq[V * D];
    int64_t all[V];
    qembed_embedding *e, *ep;
    qembed_qembedding *q;
    qembed_lora_params lp;
    qembed_lora *l = NULL;
    fill(&r, w, V * D, 0.5f);
    for (int i = 0; i < V; i++) all[i] = i;
    e = qt_make_layer(V, D, 1, 0, QEMBED_DTYPE_F32, false, 0.0, w);
    check_layer("float base", e, NULL, w, -1, false);
    {
        qembed_embedding_params p;
        qembed_embedding_params_init(&p);
        p.num_embeddings = V; p.embedding_dim = D; p.padding_idx = 4; p.weight = w; p.weight_dtype = QEMBED_DTYPE_F32;
        CHECK(qembed_embedding_create(&p, &ep) == QEMBED_OK);
        qembed_embedding_forward(ep, all, QEMBED_DTYPE_I64, V, deq, QEMBED_DTYPE_F32, V * D);
        check_layer("float base, padding_idx 4, rslora", ep, NULL, deq, 4, true);
        qembed_embedding_free(ep);
    }
    CHECK(qembed_qembedding_quantize(w, QEMBED_DTYPE_F32, V, D, QEMBED_QEMB_NF4, 64, true, &q) == QEMBED_OK);
    CHECK(qembed_qembedding_forward(q, all, QEMBED_DTYPE_I64, V, deq, QEMBED_DTYPE_F32, V * D) == QEMBED_OK);
    check_layer("nf4 base (nested)", NULL, q, deq, -1, false);

    qembed_lora_params_init(&lp);
    l = (qembed_lora *)&lp;
    CHECK(qembed_lora_create(&lp, NULL, NULL, &l) == QEMBED_ERR_NULL_POINTER && l == NULL);
    CHECK(qembed_lora_create(&lp, e, q, &l) == QEMBED_ERR_INVALID_ARGUMENT && l == NULL);
    CHECK(qembed_lora_create(NULL, e, NULL, &l) == QEMBED_ERR_NULL_POINTER);
    lp.r = 0;
    CHECK(qembed_lora_create(&lp, e, NULL, &l) == QEMBED_ERR_INVALID_ARGUMENT);
    lp.r = 4; lp.lora_alpha = INFINITY;
    CHECK(qembed_lora_create(&lp, e, NULL, &l) == QEMBED_ERR_NON_FINITE);
    lp.lora_alpha = 8; lp.struct_size = 3;
    CHECK(qembed_lora_create(&lp, e, NULL, &l) == QEMBED_ERR_INVALID_ARGUMENT);
    qembed_lora_params_init(&lp);
    {
        qembed_embedding *mn = qt_make_layer(V, D, 1, 0, QEMBED_DTYPE_F32, false, 1.0, NULL);
        CHECK(qembed_lora_create(&lp, mn, NULL, &l) == QEMBED_ERR_UNSUPPORTED);
        CHECK(qt_names(qembed_last_error(), "max_norm"));
        qembed_embedding_free(mn);
    }
    /* the layer keeps its base alive */
    CHECK(qembed_lora_create(&lp, NULL, q, &l) == QEMBED_OK);
    qembed_qembedding_free(q);
    {
        float out[2 * D];
        CHECK(qembed_lora_forward(l, all, QEMBED_DTYPE_I64, 2, out, QEMBED_DTYPE_F32, 2 * D) == QEMBED_OK);
        CHECK(memcmp(out, deq, sizeof out) == 0); /* A = 0: the base rows exactly */
    }
    qembed_lora_free(l);
    qembed_lora_free(NULL);
    qembed_embedding_free(e);
    return qt_summary("test_lora");
}
