/* test_params.c - standalone parameters ("Parameters" in include/qembed.h):
 * qembed_param_create / _wrap / _free, gradients copied (_set_grad), wrapped
 * (_wrap_grad) and cleared (_clear_grad), and optimizers over them.
 *
 *  - a wrapped buffer and an owned copy stepped by 8-bit AdamW with the same
 *    gradients end bit-identical, the wrapped one's values in the caller's
 *    memory, and equal to a layer weight stepped the same way;
 *  - a parameter freed by the caller stays alive inside its optimizer;
 *  - every argument error: NULL pointers, bad dtype/ndim/shape, misaligned
 *    memory, wrong numel, NaN/Inf, sparse parameters; nothing changes on
 *    failure and *out is NULL;
 *  - a gradient pointer read before clear_grad stays valid (the buffer is
 *    kept and reused). */
#include "qembed.h"
#include "qtest.h"

static qembed_optimizer *adamw8(qembed_param **ps, int64_t n) {
    qembed_optimizer_params op;
    qembed_optimizer *o = NULL;
    qembed_optimizer_params_init(&op, QEMBED_OPTIM_ADAMW, 8);
    op.lr = 3e-3;
    op.weight_decay = 0.01;
    if (qembed_optimizer_create(&op, ps, n, &o) != QEMBED_OK) {
        fprintf(stderr, "optimizer_create: %s\n", qembed_last_error());
        exit(2);
    }
    return o;
}

static void test_wrapped_owned_layer_agree(void) {
    enum { ROWS = 96, COLS = 130, N = ROWS * COLS, STEPS = 5 };
    int64_t shape[2] = {ROWS, COLS};
    qt_rng r = qt_rng_make(7);
    float *start = xmalloc(N * 4), *mine = xmalloc(N * 4), *g = xmalloc(N * 4);
    qembed_param *w = NULL, *o = NULL, *lw = NULL;
    qembed_embedding *e;
    qembed_optimizer *ow, *oo, *ol;
    int64_t i, diff_w = 0, diff_l = 0, changed = 0;
    int s;
    for (i = 0; i < N; i++) start[i] = mine[i] = qt_normal(&r) * (i % 13 == 0 ? 1e-4f : 0.5f);
    CHECK(qembed_param_wrap("w", QEMBED_DTYPE_F32, 2, shape, mine, &w) == QEMBED_OK);
    CHECK(qembed_param_create(NULL, QEMBED_DTYPE_F32, 2, shape, &o) == QEMBED_OK);
    CHECK(qembed_param_load(o, start, QEMBED_DTYPE_F32, N) == QEMBED_OK);
    e = qt_make_layer(ROWS, COLS, 1, 0, QEMBED_DTYPE_F32, false, 0.0, start);
    qembed_embedding_param(e, 0, &lw);
    qembed_param_clear_override(lw, QEMBED_OVERRIDE_OPTIM_BITS);
    {
        qembed_param_info wi = qt_info_of(w), oi = qt_info_of(o);
        CHECK(wi.data == mine && wi.grad == NULL && wi.numel == N && wi.shape[1] == COLS && strcmp(wi.name, "w") == 0);
        CHECK(oi.data != NULL && strcmp(oi.name, "param") == 0 && ((uintptr_t)oi.data & 63) == 0);
    }
    ow = adamw8(&w, 1);
    oo = adamw8(&o, 1);
    ol = adamw8(&lw, 1);
    for (s = 0; s < STEPS; s++) {
        for (i = 0; i < N; i++) g[i] = qt_normal(&r) * (i % 7 == 0 ? 1e-6f : 0.01f);
        g[s] = 40.0f;
        CHECK(qembed_param_wrap_grad(w, g, N) == QEMBED_OK);
        CHECK(qt_info_of(w).grad == g);
        CHECK(qembed_param_set_grad(o, g, QEMBED_DTYPE_F32, N) == QEMBED_OK);
        CHECK(qt_info_of(o).grad != g);
        CHECK(qembed_param_set_grad(lw, g, QEMBED_DTYPE_F32, N) == QEMBED_OK);
        CHECK(qembed_optimizer_step(ow) == QEMBED_OK);
        CHECK(qembed_optimizer_step(oo) == QEMBED_OK);
        CHECK(qembed_optimizer_step(ol) == QEMBED_OK);
    }
    {
        const float *od = (const float *)qt_info_of(o).data, *ld = (const float *)qt_info_of(lw).data;
        for (i = 0; i < N; i++) {
            diff_w += qt_f32_bits(mine[i]) != qt_f32_bits(od[i]);
            diff_l += qt_f32_bits(ld[i]) != qt_f32_bits(od[i]);
            changed += mine[i] != start[i];
        }
    }
    CHECKF(diff_w == 0, "%lld elements differ between wrapped and owned", (long long)diff_w);
    CHECKF(diff_l == 0, "%lld elements differ between layer and owned", (long long)diff_l);
    CHECK(changed > N / 2);
    {
        qembed_optimizer_state_info si;
        si.struct_size = sizeof si;
        CHECK(qembed_optimizer_state_info_get(ow, 0, &si) == QEMBED_OK && si.bits == 8);
    }
    /* freed by the caller, kept by the optimizer */
    qembed_param_free(o);
    for (i = 0; i < N; i++) g[i] = 0.001f;
    qembed_param_free(w);
    CHECK(qembed_optimizer_step(oo) == QEMBED_OK); /* o has a gradient still; w's stays wrapped on g */
    CHECK(qembed_optimizer_step(ow) == QEMBED_OK);
    qembed_param_free(lw); /* a layer's parameter: a no-op */
    CHECK(qembed_optimizer_step(ol) == QEMBED_OK);
    qembed_optimizer_free(ow);
    qembed_optimizer_free(oo);
    qembed_optimizer_free(ol);
    qembed_embedding_free(e);
    qembed_param_free(NULL);
    free(start);
    free(mine);
    free(g);
}

static void test_errors(void) {
    int64_t shape[2] = {4, 3}, bad[2] = {4, 0};
    float buf[16] = {0}, g[12], before[12];
    qembed_param *p = (qembed_param *)&buf, *q = NULL;
    int k;
    CHECK(qembed_param_create("x", QEMBED_DTYPE_F32, 2, shape, NULL) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_param_create("x", QEMBED_DTYPE_F32, 2, NULL, &p) == QEMBED_ERR_NULL_POINTER && p == NULL);
    p = (qembed_param *)&buf;
    CHECK(qembed_param_create("x", QEMBED_DTYPE_F32, 3, shape, &p) == QEMBED_ERR_INVALID_ARGUMENT && p == NULL);
    CHECK(qt_names(qembed_last_error(), "ndim"));
    CHECK(qembed_param_create("x", QEMBED_DTYPE_F32, 0, shape, &p) == QEMBED_ERR_INVALID_ARGUMENT);
    CHECK(qembed_param_create("x", QEMBED_DTYPE_F32, 2, bad, &p) == QEMBED_ERR_SHAPE);
    CHECK(qembed_param_create("x", QEMBED_DTYPE_U8, 2, shape, &p) == QEMBED_ERR_UNSUPPORTED);
    p = (qembed_param *)&buf;
    CHECK(qembed_param_create("x", 99, 2, shape, &p) != QEMBED_OK && p == NULL);
    CHECK(qembed_param_create("", QEMBED_DTYPE_F32, 2, shape, &p) == QEMBED_ERR_INVALID_ARGUMENT);
    {
        int64_t huge[2] = {INT64_MAX / 2, 4};
        CHECK(qembed_param_create("x", QEMBED_DTYPE_F32, 2, huge, &p) == QEMBED_ERR_SHAPE);
    }
    CHECK(qembed_param_wrap("x", QEMBED_DTYPE_F32, 2, shape, NULL, &p) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_param_wrap("x", QEMBED_DTYPE_F32, 2, shape, (char *)buf + 2, &p) == QEMBED_ERR_INVALID_ARGUMENT);
    CHECK(qt_names(qembed_last_error(), "data"));
    CHECK(qembed_param_wrap("x", QEMBED_DTYPE_F16, 2, shape, (char *)buf + 2, &q) == QEMBED_OK);
    qembed_param_free(q);

    CHECK(qembed_param_create("x", QEMBED_DTYPE_BF16, 2, shape, &q) == QEMBED_OK);
    for (k = 0; k < 12; k++) g[k] = (float)k - 5.5f;
    CHECK(qembed_param_set_grad(NULL, g, QEMBED_DTYPE_F32, 12) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_param_set_grad(q, NULL, QEMBED_DTYPE_F32, 12) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_param_set_grad(q, g, QEMBED_DTYPE_F32, 11) == QEMBED_ERR_SHAPE);
    CHECK(qembed_param_set_grad(q, g, QEMBED_DTYPE_I8, 12) != QEMBED_OK);
    CHECK(qembed_param_set_grad(q, g, QEMBED_DTYPE_F32, -1) != QEMBED_OK);
    g[9] = NAN;
    CHECK(qembed_param_set_grad(q, g, QEMBED_DTYPE_F32, 12) == QEMBED_ERR_NON_FINITE);
    CHECK(qt_names(qembed_last_error(), "grad"));
    CHECK(qt_info_of(q).grad == NULL);
    g[9] = 1.0f;
    CHECK(qembed_param_set_grad(q, g, QEMBED_DTYPE_F32, 12) == QEMBED_OK);
    memcpy(before, qt_info_of(q).grad, sizeof before);
    CHECK(qembed_param_wrap_grad(q, NULL, 12) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_param_wrap_grad(q, (float *)((char *)g + 1), 12) == QEMBED_ERR_INVALID_ARGUMENT);
    CHECK(qembed_param_wrap_grad(q, g, 13) == QEMBED_ERR_SHAPE);
    CHECK(memcmp(before, qt_info_of(q).grad, sizeof before) == 0);
    {
        /* the owned gradient buffer outlives clear_grad (reused, zeroed) */
        float *owned = qt_info_of(q).grad;
        CHECK(qembed_param_clear_grad(q) == QEMBED_OK && qt_info_of(q).grad == NULL);
        CHECK(owned[3] == before[3]);
        CHECK(qembed_param_set_grad(q, g, QEMBED_DTYPE_F32, 12) == QEMBED_OK && qt_info_of(q).grad == owned);
    }
    CHECK(qembed_param_clear_grad(NULL) == QEMBED_ERR_NULL_POINTER);
    qembed_param_free(q);

    /* a sparse layer's gradient comes from its backward */
    {
        qembed_embedding *e = qt_make_layer(10, 4, 1, 0, QEMBED_DTYPE_F32, true, 0.0, NULL);
        qembed_param *w = NULL;
        float g40[40] = {0};
        qembed_embedding_param(e, 0, &w);
        CHECK(qembed_param_set_grad(w, g40, QEMBED_DTYPE_F32, 40) == QEMBED_ERR_UNSUPPORTED);
        CHECK(qembed_param_wrap_grad(w, g40, 40) == QEMBED_ERR_UNSUPPORTED);
        CHECK(qembed_param_clear_grad(w) == QEMBED_OK);
        qembed_embedding_free(e);
    }
}

/* a wrapped gradient that turns non-finite after it was wrapped is refused by the step */
static void test_step_checks_wrapped_grad(void) {
    int64_t shape[1] = {1000};
    float *data = xmalloc(4000), *g = xmalloc(4000), *before = xmalloc(4000);
    qembed_param *p = NULL;
    qembed_optimizer *o;
    int i;
    qt_rng r = qt_rng_make(3);
    for (i = 0; i < 1000; i++) { data[i] = qt_normal(&r); g[i] = qt_normal(&r) * 0.1f; }
    CHECK(qembed_param_wrap("w", QEMBED_DTYPE_F32, 1, shape, data, &p) == QEMBED_OK);
    CHECK(qembed_param_wrap_grad(p, g, 1000) == QEMBED_OK);
    o = adamw8(&p, 1);
    CHECK(qembed_optimizer_step(o) == QEMBED_OK);
    memcpy(before, data, 4000);
    g[500] = INFINITY;
    CHECK(qembed_optimizer_step(o) == QEMBED_ERR_NON_FINITE);
    CHECK(memcmp(before, data, 4000) == 0);
    CHECK(qembed_param_clear_grad(p) == QEMBED_OK);
    CHECK(qembed_optimizer_step(o) == QEMBED_OK); /* nothing to update */
    CHECK(memcmp(before, data, 4000) == 0);
    qembed_optimizer_free(o);
    qembed_param_free(p);
    free(data);
    free(g);
    free(before);
}

int main(void) {
    test_wrapped_owned_layer_agree();
    test_errors();
    test_step_checks_wrapped_grad();
    return qt_summary("test_params");
}
