/* test_optim.c - the optimizers through the C API ("Optimizers" in
 * include/qembed.h), against an independent double-precision C version of
 * bitsandbytes' CPU update rules (backends/cpu/ops.py:
 * _optimizer_update_32bit_cpu and _optimizer_update_8bit_blockwise_cpu):
 *
 *   adam/adamw  m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p *= 1 - lr wd (wd > 0);
 *               p -= lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps sqrt(1-b2^t))
 *   momentum    g' = g + wd p; s = g' at t = 1, else b1 s + g'; p -= lr s
 *   lion        p *= 1 - lr wd; p -= lr sign(b1 m + (1-b1) g); m = b2 m + (1-b2) g
 *   rmsprop     g' = g + wd p; s = b1 s + (1-b1) g'^2; p -= lr g' / (sqrt(s) + eps)
 *   adagrad     g' = g + wd p; s += g'^2; p -= lr g' / (sqrt(s) + eps)
 *
 * Also: params_init defaults, bad kinds/bits, 8-bit state selection
 * (optim_bits override, min_8bit_size), block counts and state bytes, 8-bit
 * vs 32-bit trajectories, the nearest-code rule of the first 8-bit state,
 * override isolation, NaN/Inf gradients, state export/import (exact resume,
 * size errors), sparse rows (32-bit vs the reference, 8-bit row-aligned). */
#include <limits.h>

#include "qembed.h"
#include "qtest.h"

static const char *const kind_names[QEMBED_OPTIM_COUNT] = {"adam", "adamw", "momentum", "lion", "rmsprop", "adagrad"};

static int num_states(int kind) { return kind == QEMBED_OPTIM_ADAM || kind == QEMBED_OPTIM_ADAMW ? 2 : 1; }

/* ---- layers and parameters ------------------------------------------------------- */

static qembed_embedding *make_layer(int64_t n, int64_t d, uint64_t seed, int stable, bool sparse, const float *weight) {
    return qt_make_layer(n, d, seed, stable, QEMBED_DTYPE_F32, sparse, 0.0, weight);
}

/* a dense layer's gradient buffers, allocated by one backward of zeros over every row */
static void ensure_grads(qembed_embedding *e) {
    qembed_embedding_params p;
    bool st;
    int64_t *idx, i;
    float *zero;
    p.struct_size = sizeof p;
    qembed_embedding_get_params(e, &p, &st);
    idx = (int64_t *)xmalloc((size_t)p.num_embeddings * sizeof(int64_t));
    zero = (float *)calloc((size_t)(p.num_embeddings * p.embedding_dim), sizeof(float));
    if (zero == NULL) exit(2);
    for (i = 0; i < p.num_embeddings; i++) idx[i] = i;
    if (qembed_embedding_backward(e, idx, QEMBED_DTYPE_I64, p.num_embeddings, zero, QEMBED_DTYPE_F32,
                                  p.num_embeddings * p.embedding_dim) != QEMBED_OK) {
        fprintf(stderr, "backward: %s\n", qembed_last_error());
        exit(2);
    }
    free(idx);
    free(zero);
}

/* fresh normal gradients (times scale) written into the parameter's dense gradient */
static void fill_grad(qembed_param *p, qt_rng *r, float scale) {
    qembed_param_info info = qt_info_of(p);
    int64_t i;
    if (info.grad == NULL) {
        fprintf(stderr, "fill_grad: no gradient buffer\n");
        exit(2);
    }
    for (i = 0; i < info.numel; i++) info.grad[i] = qt_normal(r) * scale;
}

static float *data_copy(qembed_param *p) {
    qembed_param_info info = qt_info_of(p);
    float *c = (float *)xmalloc((size_t)info.numel * sizeof(float));
    memcpy(c, info.data, (size_t)info.numel * sizeof(float));
    return c;
}

static qembed_optimizer *make_opt(const qembed_optimizer_params *op, qembed_param **ps, int64_t n) {
    qembed_optimizer *o = NULL;
    qembed_status st = qembed_optimizer_create(op, ps, n, &o);
    if (st != QEMBED_OK || o == NULL) {
        fprintf(stderr, "qembed_optimizer_create: %s: %s\n", qembed_status_string(st), qembed_last_error());
        exit(2);
    }
    return o;
}

static qembed_optimizer_params defaults(int kind, int bits) {
    qembed_optimizer_params op;
    if (qembed_optimizer_params_init(&op, kind, bits) != QEMBED_OK) {
        fprintf(stderr, "params_init(%d, %d): %s\n", kind, bits, qembed_last_error());
        exit(2);
    }
    return op;
}

static qembed_optimizer_state_info state_info(qembed_optimizer *o, int64_t i) {
    qembed_optimizer_state_info s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    if (qembed_optimizer_state_info_get(o, i, &s) != QEMBED_OK) {
        fprintf(stderr, "state_info_get: %s\n", qembed_last_error());
        exit(2);
    }
    return s;
}

/* ---- the double-precision reference --------------------------------------------- */

typedef struct hyper {
    int kind;
    double lr, b1, b2, eps, wd;
} hyper;

typedef struct ref {
    int64_t n;
    double *p, *s1, *s2;
    int64_t step;
} ref;

static ref ref_make(const float *p, int64_t n) {
    ref r;
    int64_t i;
    r.n = n;
    r.p = (double *)xmalloc((size_t)n * sizeof(double));
    r.s1 = (double *)calloc((size_t)n, sizeof(double));
    r.s2 = (double *)calloc((size_t)n, sizeof(double));
    if (r.s1 == NULL || r.s2 == NULL) exit(2);
    for (i = 0; i < n; i++) r.p[i] = p[i];
    r.step = 0;
    return r;
}

static void ref_free(ref *r) {
    free(r->p);
    free(r->s1);
    free(r->s2);
}

/* one element of one step t */
static void ref_elem(const hyper *h, int64_t t, double g, double *p, double *s1, double *s2) {
    switch (h->kind) {
    case QEMBED_OPTIM_ADAM:
    case QEMBED_OPTIM_ADAMW: {
        const double c1 = 1.0 - pow(h->b1, (double)t), c2 = sqrt(1.0 - pow(h->b2, (double)t));
        *s1 = h->b1 * *s1 + (1.0 - h->b1) * g;
        *s2 = h->b2 * *s2 + (1.0 - h->b2) * g * g;
        if (h->wd > 0.0) *p *= 1.0 - h->lr * h->wd;
        *p += -h->lr * c2 / c1 * (*s1 / (sqrt(*s2) + h->eps * c2));
        break;
    }
    case QEMBED_OPTIM_MOMENTUM: {
        const double gw = h->wd > 0.0 ? g + h->wd * *p : g;
        *s1 = t == 1 ? gw : h->b1 * *s1 + gw;
        *p -= h->lr * *s1;
        break;
    }
    case QEMBED_OPTIM_LION: {
        double u;
        if (h->wd > 0.0) *p *= 1.0 - h->lr * h->wd;
        u = h->b1 * *s1 + (1.0 - h->b1) * g;
        *p -= h->lr * (u > 0.0 ? 1.0 : u < 0.0 ? -1.0 : 0.0);
        *s1 = h->b2 * *s1 + (1.0 - h->b2) * g;
        break;
    }
    case QEMBED_OPTIM_RMSPROP: {
        const double gw = h->wd > 0.0 ? g + h->wd * *p : g;
        *s1 = h->b1 * *s1 + (1.0 - h->b1) * gw * gw;
        *p -= h->lr * gw / (sqrt(*s1) + h->eps);
        break;
    }
    case QEMBED_OPTIM_ADAGRAD: {
        const double gw = h->wd > 0.0 ? g + h->wd * *p : g;
        *s1 += gw * gw;
        *p -= h->lr * gw / (sqrt(*s1) + h->eps);
        break;
    }
    default:
        break;
    }
}

static void ref_step(ref *r, const hyper *h, const float *g) {
    int64_t i;
    r->step++;
    for (i = 0; i < r->n; i++) ref_elem(h, r->step, g[i], &r->p[i], &r->s1[i], &r->s2[i]);
}

static hyper hyper_of(const qembed_optimizer_params *op) {
    hyper h;
    h.kind = op->kind;
    h.lr = op->lr;
    h.b1 = op->beta1;
    h.b2 = op->beta2;
    h.eps = op->eps;
    h.wd = op->weight_decay;
    return h;
}

/* Comparisons are relative (1e-5) to max(|reference|, floor): parameters use
 * PFLOOR (the tables are Xavier, |p| up to ~0.5, so a value crossing zero is
 * held to 1e-7 absolute, 1e-4 of one lr-1e-3 update), states 5% of the
 * state's largest magnitude (float32 rounding of b*s + (1-b)*g is relative to
 * the operands, not to a cancelled result). */
#define PFLOOR 1e-2

/* worst |a - b| / max(|b|, floor) */
static double worst_rel_f(const float *a, const double *b, int64_t n, double floor_) {
    double w = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) {
        const double m = fabs(b[i]) > floor_ ? fabs(b[i]) : floor_;
        const double e = fabs((double)a[i] - b[i]) / m;
        if (!(e <= w)) w = e; /* NaN propagates */
    }
    return w;
}

static double max_abs_d(const double *v, int64_t n) {
    double m = 0.0;
    int64_t i;
    for (i = 0; i < n; i++)
        if (fabs(v[i]) > m) m = fabs(v[i]);
    return m;
}

/* ---- params_init -------------------------------------------------------------------- */

static void test_params_init(void) {
    static const struct { int kind; double lr, b1, b2, eps, wd; } want[] = {
        {QEMBED_OPTIM_ADAM, 1e-3, 0.9, 0.999, 1e-8, 0.0}, {QEMBED_OPTIM_ADAMW, 1e-3, 0.9, 0.999, 1e-8, 1e-2},
        {QEMBED_OPTIM_MOMENTUM, -1, 0.9, -1, -1, 0.0},    {QEMBED_OPTIM_LION, 1e-4, 0.9, 0.99, -1, 0.0},
        {QEMBED_OPTIM_RMSPROP, 1e-2, 0.99, -1, 1e-8, 0.0}, {QEMBED_OPTIM_ADAGRAD, 1e-2, -1, -1, 1e-10, 0.0},
    };
    size_t k;
    int bits;
    for (k = 0; k < sizeof want / sizeof want[0]; k++)
        for (bits = 8; bits <= 32; bits += 24) {
            qembed_optimizer_params p;
            memset(&p, 0xA5, sizeof p);
            CHECK(qembed_optimizer_params_init(&p, want[k].kind, bits) == QEMBED_OK);
            CHECKF(p.struct_size == sizeof p && p.kind == want[k].kind && p.optim_bits == bits, "%s/%d",
                   kind_names[want[k].kind], bits);
            if (want[k].lr >= 0) CHECKF(p.lr == want[k].lr, "%s lr %g", kind_names[want[k].kind], p.lr);
            else CHECKF(p.lr > 0 && isfinite(p.lr), "%s lr %g", kind_names[want[k].kind], p.lr);
            if (want[k].b1 >= 0) CHECKF(p.beta1 == want[k].b1, "%s beta1 %g", kind_names[want[k].kind], p.beta1);
            if (want[k].b2 >= 0) CHECKF(p.beta2 == want[k].b2, "%s beta2 %g", kind_names[want[k].kind], p.beta2);
            if (want[k].eps >= 0) CHECKF(p.eps == want[k].eps, "%s eps %g", kind_names[want[k].kind], p.eps);
            CHECKF(p.weight_decay == want[k].wd, "%s weight_decay %g", kind_names[want[k].kind], p.weight_decay);
            CHECKF(p.min_8bit_size == 4096, "min_8bit_size %lld", (long long)p.min_8bit_size);
            CHECK(p.max_unorm == 0.0 && p.skip_zeros == false);
        }
    /* bad kinds and bits */
    {
        static const int bad_kinds[] = {-1, QEMBED_OPTIM_COUNT, 99, INT_MIN};
        static const int bad_bits[] = {0, 4, 16, 31, -8, 64};
        qembed_optimizer_params p, ref_;
        size_t i;
        memset(&ref_, 0x5A, sizeof ref_);
        for (i = 0; i < sizeof bad_kinds / sizeof bad_kinds[0]; i++) {
            memcpy(&p, &ref_, sizeof p);
            qembed_clear_error();
            CHECKF(qembed_optimizer_params_init(&p, bad_kinds[i], 32) == QEMBED_ERR_INVALID_ARGUMENT, "kind %d",
                   bad_kinds[i]);
            CHECKF(qt_names(qembed_last_error(), "kind"), "message \"%s\"", qembed_last_error());
            CHECK(memcmp(&p, &ref_, sizeof p) == 0);
        }
        for (i = 0; i < sizeof bad_bits / sizeof bad_bits[0]; i++) {
            memcpy(&p, &ref_, sizeof p);
            qembed_clear_error();
            CHECKF(qembed_optimizer_params_init(&p, QEMBED_OPTIM_ADAM, bad_bits[i]) == QEMBED_ERR_INVALID_ARGUMENT,
                   "bits %d", bad_bits[i]);
            CHECKF(qt_names(qembed_last_error(), "optim_bits") || qt_names(qembed_last_error(), "bits"),
                   "message \"%s\"", qembed_last_error());
            CHECK(memcmp(&p, &ref_, sizeof p) == 0);
        }
        qembed_clear_error();
        CHECK(qembed_optimizer_params_init(NULL, QEMBED_OPTIM_ADAM, 32) == QEMBED_ERR_NULL_POINTER);
        CHECK(qt_names(qembed_last_error(), "p"));
    }
}

/* ---- optimizer_create and the other entry points: bad input ------------------------- */

static void test_create_errors(void) {
    qembed_embedding *e = make_layer(10, 4, 1, 0, false, NULL), *e2 = make_layer(10, 4, 2, 0, false, NULL);
    qembed_param *ps[3];
    qembed_optimizer_params op = defaults(QEMBED_OPTIM_ADAM, 32), bad;
    qembed_optimizer *o;
    struct { const char *what; qembed_optimizer_params p; qembed_param **list; int64_t n; unsigned allowed;
             const char *name; } cases[16];
    int nc = 0, k;
    ps[0] = qt_param_of(e, 0);
    ps[1] = qt_param_of(e2, 0);
    ps[2] = ps[0];
#define ADD(w, pp, l, nn, al, nm)                                                                         \
    do {                                                                                                  \
        cases[nc].what = (w);                                                                             \
        cases[nc].p = (pp);                                                                               \
        cases[nc].list = (l);                                                \
        cases[nc].n = (nn);                                                                               \
        cases[nc].allowed = (al);                                                                         \
        cases[nc].name = (nm);                                                                            \
        nc++;                                                                                             \
    } while (0)
    ADD("params NULL", op, NULL, 1, 1u << QEMBED_ERR_NULL_POINTER, "params");
    ADD("n_params 0", op, ps, 0, 1u << QEMBED_ERR_INVALID_ARGUMENT, "n_params");
    ADD("n_params -1", op, ps, -1, 1u << QEMBED_ERR_INVALID_ARGUMENT, "n_params");
    ADD("a parameter twice", op, ps, 3, 1u << QEMBED_ERR_INVALID_ARGUMENT, "params");
    bad = op;
    bad.struct_size = 4;
    ADD("struct_size", bad, ps, 2, 1u << QEMBED_ERR_INVALID_ARGUMENT, "struct_size");
    bad = op;
    bad.kind = 77;
    ADD("kind", bad, ps, 2, (1u << QEMBED_ERR_INVALID_ARGUMENT) | (1u << QEMBED_ERR_UNSUPPORTED), "kind");
    bad = op;
    bad.optim_bits = 16;
    ADD("optim_bits", bad, ps, 2, 1u << QEMBED_ERR_INVALID_ARGUMENT, "optim_bits");
    bad = op;
    bad.lr = -1.0;
    ADD("lr < 0", bad, ps, 2, 1u << QEMBED_ERR_INVALID_ARGUMENT, "lr");
    bad = op;
    bad.lr = NAN;
    ADD("lr NaN", bad, ps, 2, (1u << QEMBED_ERR_INVALID_ARGUMENT) | (1u << QEMBED_ERR_NON_FINITE), "lr");
    bad = op;
    bad.beta1 = 1.0;
    ADD("beta1 1", bad, ps, 2, 1u << QEMBED_ERR_INVALID_ARGUMENT, "beta1");
    bad = op;
    bad.beta2 = -0.1;
    ADD("beta2 < 0", bad, ps, 2, 1u << QEMBED_ERR_INVALID_ARGUMENT, "beta2");
    bad = op;
    bad.eps = -1e-8;
    ADD("eps < 0", bad, ps, 2, 1u << QEMBED_ERR_INVALID_ARGUMENT, "eps");
    bad = op;
    bad.weight_decay = INFINITY;
    ADD("weight_decay inf", bad, ps, 2, (1u << QEMBED_ERR_INVALID_ARGUMENT) | (1u << QEMBED_ERR_NON_FINITE), "weight_decay");
    bad = op;
    bad.min_8bit_size = -1;
    ADD("min_8bit_size < 0", bad, ps, 2, 1u << QEMBED_ERR_INVALID_ARGUMENT, "min_8bit_size");
#undef ADD
    for (k = 0; k < nc; k++) {
        qembed_status st;
        o = (qembed_optimizer *)&cases[k];
        qembed_clear_error();
        st = qembed_optimizer_create(&cases[k].p, cases[k].list, cases[k].n, &o);
        CHECKF(st >= 0 && st < 32 && (cases[k].allowed & (1u << st)) != 0 && o == NULL &&
                   qt_names(qembed_last_error(), cases[k].name),
               "%s: status %d, out %p, message \"%s\" (want %s)", cases[k].what, (int)st, (void *)o, qembed_last_error(),
               cases[k].name);
        if (st == QEMBED_OK && o != NULL && o != (qembed_optimizer *)&cases[k]) qembed_optimizer_free(o);
    }
    {
        qembed_param *with_null[2];
        qembed_status st;
        with_null[0] = ps[0];
        with_null[1] = NULL;
        o = (qembed_optimizer *)&op;
        st = qembed_optimizer_create(&op, with_null, 2, &o);
        CHECKF(st == QEMBED_ERR_NULL_POINTER && o == NULL && qembed_last_error()[0] != '\0', "NULL element: %d", (int)st);
        o = (qembed_optimizer *)&op;
        st = qembed_optimizer_create(NULL, ps, 1, &o);
        CHECKF(st == QEMBED_ERR_NULL_POINTER && o == NULL && qt_names(qembed_last_error(), "p"), "p NULL: %d", (int)st);
        CHECK(qembed_optimizer_create(&op, ps, 1, NULL) == QEMBED_ERR_NULL_POINTER && qt_names(qembed_last_error(), "out"));
    }
    /* the other entry points */
    o = make_opt(&op, ps, 2);
    {
        qembed_optimizer_state_info si;
        float buf[40];
        si.struct_size = sizeof si;
        CHECK(qembed_optimizer_step(NULL) == QEMBED_ERR_NULL_POINTER);
        CHECK(qembed_optimizer_zero_grad(NULL) == QEMBED_ERR_NULL_POINTER);
        CHECK(qembed_optimizer_state_info_get(NULL, 0, &si) == QEMBED_ERR_NULL_POINTER);
        CHECK(qembed_optimizer_state_info_get(o, 0, NULL) == QEMBED_ERR_NULL_POINTER && qt_names(qembed_last_error(), "info"));
        CHECK(qembed_optimizer_state_info_get(o, 2, &si) == QEMBED_ERR_OUT_OF_RANGE && qt_names(qembed_last_error(), "i"));
        CHECK(qembed_optimizer_state_info_get(o, -1, &si) == QEMBED_ERR_OUT_OF_RANGE && qt_names(qembed_last_error(), "i"));
        si.struct_size = 3;
        CHECK(qembed_optimizer_state_info_get(o, 0, &si) == QEMBED_ERR_INVALID_ARGUMENT &&
              qt_names(qembed_last_error(), "struct_size"));
        /* export before any step: no state yet */
        qembed_clear_error();
        CHECK(qembed_optimizer_state_export(o, 0, buf, sizeof buf, NULL, 0, NULL, 0, NULL, 0) != QEMBED_OK &&
              qembed_last_error()[0] != '\0');
        CHECK(qembed_optimizer_state_export(o, 5, buf, sizeof buf, NULL, 0, NULL, 0, NULL, 0) == QEMBED_ERR_OUT_OF_RANGE);
        CHECK(qembed_optimizer_state_import(o, -1, 1, 32, buf, 160, buf, 160, NULL, 0, NULL, 0) == QEMBED_ERR_OUT_OF_RANGE);
        CHECK(qembed_optimizer_state_import(o, 0, 1, 32, NULL, 160, buf, 160, NULL, 0, NULL, 0) == QEMBED_ERR_NULL_POINTER &&
              qt_names(qembed_last_error(), "state1"));
    }
    /* a step with no gradients anywhere is a no-op */
    CHECK(qembed_optimizer_step(o) == QEMBED_OK);
    CHECK(state_info(o, 0).initialized == false && state_info(o, 0).step == 0 && state_info(o, 0).state_bytes == 0);
    qembed_optimizer_free(o);
    qembed_optimizer_free(NULL);
    qembed_embedding_free(e);
    qembed_embedding_free(e2);
}

/* ---- 32-bit against the reference -------------------------------------------------- */

static void run_32bit(int kind, double wd, int stable) {
    const int64_t n = 13, d = 11;
    qembed_embedding *e = make_layer(n, d, 100 + (uint64_t)kind, stable, false, NULL);
    qembed_optimizer_params op = defaults(kind, 32);
    qembed_param *ps[3];
    int64_t np = stable ? 3 : 1, i, t;
    qembed_optimizer *o;
    ref r[3];
    hyper h;
    qt_rng rng = qt_rng_make(200 + (uint64_t)kind);
    if (wd >= 0.0) op.weight_decay = wd;
    h = hyper_of(&op);
    for (i = 0; i < np; i++) ps[i] = qt_param_of(e, i);
    o = make_opt(&op, ps, np);
    for (i = 0; i < np; i++) {
        float *c = data_copy(ps[i]);
        qembed_optimizer_state_info si = state_info(o, i);
        r[i] = ref_make(c, qt_info_of(ps[i]).numel);
        free(c);
        CHECK(!si.initialized && si.step == 0 && si.bits == 32 && si.num_states == num_states(kind) &&
              si.numel == r[i].n && si.num_blocks == 0 && si.state_bytes == 0);
    }
    ensure_grads(e);
    for (t = 1; t <= 5; t++) {
        qembed_status st;
        for (i = 0; i < np; i++) {
            fill_grad(ps[i], &rng, 0.5f);
            ref_step(&r[i], &h, qt_info_of(ps[i]).grad);
        }
        st = qembed_optimizer_step(o);
        CHECKF(st == QEMBED_OK, "%s step %lld: %s", kind_names[kind], (long long)t, qembed_last_error());
        for (i = 0; i < np; i++) {
            qembed_param_info info = qt_info_of(ps[i]);
            qembed_optimizer_state_info si = state_info(o, i);
            const int ns = num_states(kind);
            float *s1 = (float *)xmalloc((size_t)info.numel * sizeof(float)), *s2 = (float *)xmalloc((size_t)info.numel * sizeof(float));
            double wp = worst_rel_f((const float *)info.data, r[i].p, info.numel, PFLOOR);
            double w1, w2 = 0.0;
            CHECKF(wp <= 1e-5, "%s wd %g %s step %lld: parameter off by %g relative", kind_names[kind], op.weight_decay,
                   info.name, (long long)t, wp);
            CHECKF(si.initialized && si.step == t && si.bits == 32 && si.num_states == ns && si.numel == info.numel &&
                       si.num_blocks == 0 && !si.row_aligned && si.state_bytes == (int64_t)ns * info.numel * 4,
                   "%s: state info (step %lld bits %d states %d bytes %lld)", kind_names[kind], (long long)si.step,
                   si.bits, si.num_states, (long long)si.state_bytes);
            st = qembed_optimizer_state_export(o, i, s1, info.numel * 4, ns == 2 ? s2 : NULL, ns == 2 ? info.numel * 4 : 0,
                                               NULL, 0, NULL, 0);
            CHECKF(st == QEMBED_OK, "export: %s", qembed_last_error());
            w1 = worst_rel_f(s1, r[i].s1, info.numel, 0.05 * max_abs_d(r[i].s1, info.numel) + 1e-30);
            if (ns == 2) w2 = worst_rel_f(s2, r[i].s2, info.numel, 0.05 * max_abs_d(r[i].s2, info.numel) + 1e-30);
            CHECKF(w1 <= 1e-5 && w2 <= 1e-5, "%s %s step %lld: state off by %g / %g relative", kind_names[kind], info.name,
                   (long long)t, w1, w2);
            free(s1);
            free(s2);
        }
    }
    /* zero_grad through the optimizer zeroes the gradients */
    CHECK(qembed_optimizer_zero_grad(o) == QEMBED_OK);
    for (i = 0; i < np; i++) {
        qembed_param_info info = qt_info_of(ps[i]);
        int64_t k;
        for (k = 0; k < info.numel; k++)
            if (info.grad[k] != 0.0f) break;
        CHECK(k == info.numel);
        ref_free(&r[i]);
    }
    qembed_optimizer_free(o);
    qembed_embedding_free(e);
}

static void test_32bit(void) {
    int kind;
    for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
        run_32bit(kind, -1.0, 0);  /* defaults */
        run_32bit(kind, 0.05, 0);  /* with weight decay */
        run_32bit(kind, -1.0, 1);  /* StableEmbedding: weight, norm.weight, norm.bias */
    }
}

/* per-parameter overrides of lr/betas/eps/weight_decay are what the step uses */
static void test_override_values(void) {
    int kind;
    for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
        qembed_embedding *e = make_layer(9, 7, 7, 0, false, NULL), *f = make_layer(9, 7, 8, 0, false, NULL);
        qembed_param *ps[2];
        qembed_optimizer_params op = defaults(kind, 32);
        qembed_optimizer *o;
        hyper h = hyper_of(&op), ho;
        ref re, rf;
        float *c;
        int t;
        qt_rng rng = qt_rng_make(300 + (uint64_t)kind);
        ps[0] = qt_param_of(e, 0);
        ps[1] = qt_param_of(f, 0);
        ho = h;
        ho.lr = h.lr * 3.0;
        ho.b1 = 0.5;
        ho.b2 = 0.75;
        ho.eps = 1e-3;
        ho.wd = 0.2;
        CHECK(qembed_param_set_override(ps[0], QEMBED_OVERRIDE_LR, ho.lr) == QEMBED_OK);
        CHECK(qembed_param_set_override(ps[0], QEMBED_OVERRIDE_BETA1, ho.b1) == QEMBED_OK);
        CHECK(qembed_param_set_override(ps[0], QEMBED_OVERRIDE_BETA2, ho.b2) == QEMBED_OK);
        CHECK(qembed_param_set_override(ps[0], QEMBED_OVERRIDE_EPS, ho.eps) == QEMBED_OK);
        CHECK(qembed_param_set_override(ps[0], QEMBED_OVERRIDE_WEIGHT_DECAY, ho.wd) == QEMBED_OK);
        o = make_opt(&op, ps, 2);
        c = data_copy(ps[0]);
        re = ref_make(c, 63);
        free(c);
        c = data_copy(ps[1]);
        rf = ref_make(c, 63);
        free(c);
        ensure_grads(e);
        ensure_grads(f);
        for (t = 1; t <= 4; t++) {
            double we, wf;
            fill_grad(ps[0], &rng, 1.0f);
            fill_grad(ps[1], &rng, 1.0f);
            ref_step(&re, &ho, qt_info_of(ps[0]).grad);
            ref_step(&rf, &h, qt_info_of(ps[1]).grad);
            CHECK(qembed_optimizer_step(o) == QEMBED_OK);
            we = worst_rel_f((const float *)qt_info_of(ps[0]).data, re.p, 63, PFLOOR);
            wf = worst_rel_f((const float *)qt_info_of(ps[1]).data, rf.p, 63, PFLOOR);
            CHECKF(we <= 1e-5, "%s: overridden parameter off by %g (step %d)", kind_names[kind], we, t);
            CHECKF(wf <= 1e-5, "%s: the other parameter off by %g (step %d)", kind_names[kind], wf, t);
        }
        ref_free(&re);
        ref_free(&rf);
        qembed_optimizer_free(o);
        qembed_embedding_free(e);
        qembed_embedding_free(f);
    }
}

/* ---- 8-bit ------------------------------------------------------------------------ */

#define R8 70
#define C8 61 /* 4270 elements: >= 4096, 17 blocks, the last one short */

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static void test_8bit_selection(void) {
    int kind;
    for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
        qembed_embedding *e = make_layer(R8, C8, 1, 0, false, NULL);
        qembed_param *w = qt_param_of(e, 0);
        qembed_optimizer_params op = defaults(kind, 8);
        qembed_optimizer *o;
        qembed_optimizer_state_info si;
        const int64_t numel = R8 * C8, blocks = ceil_div(numel, 256);
        const int ns = num_states(kind);
        qt_rng rng = qt_rng_make(5);
        double v = 0.0;
        bool set = false;
        CHECK(op.optim_bits == 8);
        /* the Embedding layer registered optim_bits = 32 on its weight: 32-bit state */
        CHECK(qembed_param_get_override(w, QEMBED_OVERRIDE_OPTIM_BITS, &v, &set) == QEMBED_OK && set && v == 32.0);
        o = make_opt(&op, &w, 1);
        si = state_info(o, 0);
        CHECKF(si.bits == 32 && si.num_blocks == 0, "%s: with the layer's override: bits %d", kind_names[kind], si.bits);
        ensure_grads(e);
        fill_grad(w, &rng, 1.0f);
        CHECK(qembed_optimizer_step(o) == QEMBED_OK);
        si = state_info(o, 0);
        CHECKF(si.bits == 32 && si.state_bytes == (int64_t)ns * numel * 4, "%s: bits %d bytes %lld", kind_names[kind],
               si.bits, (long long)si.state_bytes);
        qembed_optimizer_free(o);
        /* override cleared: 8-bit state, ceil(numel/256) blocks */
        CHECK(qembed_param_clear_override(w, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
        o = make_opt(&op, &w, 1);
        si = state_info(o, 0);
        CHECKF(!si.initialized && si.bits == 8 && si.num_blocks == blocks && si.num_states == ns && si.numel == numel &&
                   !si.row_aligned,
               "%s: before the first step: bits %d blocks %lld", kind_names[kind], si.bits, (long long)si.num_blocks);
        CHECK(qembed_optimizer_step(o) == QEMBED_OK);
        si = state_info(o, 0);
        CHECKF(si.initialized && si.step == 1 && si.bits == 8 && si.num_blocks == blocks &&
                   si.state_bytes == (int64_t)ns * (numel + 4 * blocks),
               "%s: 8-bit state: bits %d blocks %lld bytes %lld, want %lld", kind_names[kind], si.bits,
               (long long)si.num_blocks, (long long)si.state_bytes, (long long)(ns * (numel + 4 * blocks)));
        qembed_optimizer_free(o);
        /* an 8-bit override on a 32-bit optimizer gives 8-bit state */
        {
            qembed_optimizer_params op32 = defaults(kind, 32);
            CHECK(qembed_param_set_override(w, QEMBED_OVERRIDE_OPTIM_BITS, 8) == QEMBED_OK);
            o = make_opt(&op32, &w, 1);
            CHECKF(state_info(o, 0).bits == 8, "%s: optim_bits override 8 on a 32-bit optimizer", kind_names[kind]);
            qembed_optimizer_free(o);
            CHECK(qembed_param_clear_override(w, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
        }
        qembed_embedding_free(e);
    }
    /* under min_8bit_size: 32-bit; a smaller min_8bit_size: 8-bit */
    {
        qembed_embedding *e = make_layer(10, 10, 1, 0, false, NULL);
        qembed_param *w = qt_param_of(e, 0);
        qembed_optimizer_params op = defaults(QEMBED_OPTIM_ADAM, 8);
        qembed_optimizer *o;
        qt_rng rng = qt_rng_make(6);
        CHECK(qembed_param_clear_override(w, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
        o = make_opt(&op, &w, 1);
        CHECK(state_info(o, 0).bits == 32);
        ensure_grads(e);
        fill_grad(w, &rng, 1.0f);
        CHECK(qembed_optimizer_step(o) == QEMBED_OK);
        CHECK(state_info(o, 0).bits == 32 && state_info(o, 0).state_bytes == 2 * 100 * 4);
        qembed_optimizer_free(o);
        op.min_8bit_size = 100;
        o = make_opt(&op, &w, 1);
        CHECK(state_info(o, 0).bits == 8 && state_info(o, 0).num_blocks == 1);
        CHECK(qembed_optimizer_step(o) == QEMBED_OK);
        CHECK(state_info(o, 0).state_bytes == 2 * (100 + 4));
        qembed_optimizer_free(o);
        op.min_8bit_size = 101;
        o = make_opt(&op, &w, 1);
        CHECK(state_info(o, 0).bits == 32);
        qembed_optimizer_free(o);
        qembed_embedding_free(e);
    }
    /* StableEmbedding under an 8-bit optimizer: all three parameters keep 32-bit state */
    {
        qembed_embedding *e = make_layer(100, 64, 1, 1, false, NULL);
        qembed_param *ps[3];
        qembed_optimizer_params op = defaults(QEMBED_OPTIM_ADAM, 8);
        qembed_optimizer *o;
        int i;
        for (i = 0; i < 3; i++) ps[i] = qt_param_of(e, i);
        o = make_opt(&op, ps, 3);
        for (i = 0; i < 3; i++) CHECKF(state_info(o, i).bits == 32, "StableEmbedding param %d", i);
        qembed_optimizer_free(o);
        qembed_embedding_free(e);
    }
}

/* the first 8-bit Adam step: the states are m = (1-b1) g and v = (1-b2) g^2, quantized
 * blockwise (256) to the nearest entry of the signed / unsigned dynamic maps */
static void test_8bit_first_state(void) {
    qembed_embedding *e = make_layer(R8, C8, 3, 0, false, NULL);
    qembed_param *w = qt_param_of(e, 0);
    qembed_optimizer_params op = defaults(QEMBED_OPTIM_ADAM, 8);
    qembed_optimizer *o;
    const int64_t numel = R8 * C8, blocks = ceil_div(numel, 256);
    uint8_t *q1 = (uint8_t *)xmalloc((size_t)numel), *q2 = (uint8_t *)xmalloc((size_t)numel);
    float *a1 = (float *)xmalloc((size_t)blocks * sizeof(float)), *a2 = (float *)xmalloc((size_t)blocks * sizeof(float));
    float code1[256], code2[256];
    float *g;
    qt_rng rng = qt_rng_make(44);
    int64_t b, i;
    int abs_ok = 1, near_ok = 1, nonneg = 1;
    CHECK(qembed_create_dynamic_map(true, 7, 8, code1) == QEMBED_OK);
    CHECK(qembed_create_dynamic_map(false, 7, 8, code2) == QEMBED_OK);
    CHECK(qembed_param_clear_override(w, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
    o = make_opt(&op, &w, 1);
    ensure_grads(e);
    fill_grad(w, &rng, 1.0f);
    g = qt_info_of(w).grad;
    CHECK(qembed_optimizer_step(o) == QEMBED_OK);
    CHECK(qembed_optimizer_state_export(o, 0, q1, numel, q2, numel, a1, blocks, a2, blocks) == QEMBED_OK);
    for (b = 0; b < blocks; b++) {
        const int64_t lo = b * 256, hi = lo + 256 < numel ? lo + 256 : numel;
        double m1 = 0.0, m2 = 0.0;
        for (i = lo; i < hi; i++) {
            const double m = (1.0 - 0.9) * g[i], v = (1.0 - 0.999) * (double)g[i] * g[i];
            if (fabs(m) > m1) m1 = fabs(m);
            if (v > m2) m2 = v;
        }
        if (fabs(a1[b] - m1) > 1e-6 * m1 || fabs(a2[b] - m2) > 1e-6 * m2) abs_ok = 0;
        for (i = lo; i < hi; i++) {
            const double x1 = (1.0 - 0.9) * g[i] / m1, x2 = (1.0 - 0.999) * (double)g[i] * g[i] / m2;
            double best1 = 1e30, best2 = 1e30;
            int k;
            for (k = 0; k < 256; k++) {
                if (fabs(code1[k] - x1) < best1) best1 = fabs(code1[k] - x1);
                if (fabs(code2[k] - x2) < best2) best2 = fabs(code2[k] - x2);
            }
            if (fabs(code1[q1[i]] - x1) > best1 + 1e-6 || fabs(code2[q2[i]] - x2) > best2 + 1e-6) near_ok = 0;
            if (code2[q2[i]] < 0.0f) nonneg = 0;
        }
    }
    CHECKF(abs_ok, "absmax per block is not max |state| of the block");
    CHECKF(near_ok, "an 8-bit state is not the nearest code entry");
    CHECK(nonneg);
    free(q1);
    free(q2);
    free(a1);
    free(a2);
    qembed_optimizer_free(o);
    qembed_embedding_free(e);
}

/* 8-bit and 32-bit trajectories from the same start with the same gradients stay close */
static void test_8bit_trajectory(void) {
    int kind;
    for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
        qembed_embedding *e8 = make_layer(R8, C8, 9, 0, false, NULL), *e32 = make_layer(R8, C8, 9, 0, false, NULL);
        qembed_param *w8 = qt_param_of(e8, 0), *w32 = qt_param_of(e32, 0);
        qembed_optimizer_params op8 = defaults(kind, 8), op32 = defaults(kind, 32);
        qembed_optimizer *o8, *o32;
        const int64_t numel = R8 * C8;
        float *start = data_copy(w32);
        qt_rng rng = qt_rng_make(1000 + (uint64_t)kind);
        double diff = 0.0, move = 0.0;
        int64_t i;
        int t;
        CHECK(qembed_param_clear_override(w8, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
        o8 = make_opt(&op8, &w8, 1);
        o32 = make_opt(&op32, &w32, 1);
        ensure_grads(e8);
        ensure_grads(e32);
        for (t = 0; t < 20; t++) {
            qembed_param_info g8 = qt_info_of(w8), g32 = qt_info_of(w32);
            for (i = 0; i < numel; i++) {
                /* a persistent direction plus noise, so that the states matter */
                g32.grad[i] = g8.grad[i] = 0.5f * ((i % 7) - 3.0f) / 3.0f + qt_normal(&rng);
            }
            CHECK(qembed_optimizer_step(o8) == QEMBED_OK);
            CHECK(qembed_optimizer_step(o32) == QEMBED_OK);
        }
        CHECK(state_info(o8, 0).bits == 8 && state_info(o32, 0).bits == 32);
        {
            const float *p8 = (const float *)qt_info_of(w8).data, *p32 = (const float *)qt_info_of(w32).data;
            for (i = 0; i < numel; i++) {
                diff += fabs((double)p8[i] - p32[i]);
                move += fabs((double)p32[i] - start[i]);
            }
        }
        CHECKF(move > 0.0 && diff < 0.1 * move, "%s: mean |8-bit - 32-bit| %g vs mean movement %g", kind_names[kind],
               diff / (double)numel, move / (double)numel);
        CHECKF(diff > 0.0, "%s: the 8-bit trajectory is identical to the 32-bit one (not 8-bit?)", kind_names[kind]);
        free(start);
        qembed_optimizer_free(o8);
        qembed_optimizer_free(o32);
        qembed_embedding_free(e8);
        qembed_embedding_free(e32);
    }
}

/* ---- hyperparameters set in place ------------------------------------------------- */

/* qembed_optimizer_set_params: bad calls fail with a status and a message and
 * change nothing (the next steps equal a twin's that never saw them); a good
 * call changes the next step (lr 0: nothing moves) and keeps the states. */
static void test_set_params(void) {
    int kind;
    for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
        qembed_embedding *ea = make_layer(R8, C8, 31, 0, false, NULL), *eb = make_layer(R8, C8, 31, 0, false, NULL);
        qembed_param *wa = qt_param_of(ea, 0), *wb = qt_param_of(eb, 0);
        qembed_optimizer_params op = defaults(kind, 8), bad;
        qembed_optimizer *oa, *ob;
        qt_rng ra = qt_rng_make(8), rb = qt_rng_make(8);
        const int64_t numel = R8 * C8;
        float *before;
        CHECK(qembed_param_clear_override(wa, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
        CHECK(qembed_param_clear_override(wb, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
        oa = make_opt(&op, &wa, 1);
        ob = make_opt(&op, &wb, 1);
        ensure_grads(ea);
        ensure_grads(eb);
        fill_grad(wa, &ra, 1.0f);
        fill_grad(wb, &rb, 1.0f);
        CHECK(qembed_optimizer_step(oa) == QEMBED_OK && qembed_optimizer_step(ob) == QEMBED_OK);
        /* refused calls */
        CHECK(qembed_optimizer_set_params(NULL, &op) == QEMBED_ERR_NULL_POINTER);
        CHECK(qembed_optimizer_set_params(oa, NULL) == QEMBED_ERR_NULL_POINTER);
        bad = op;
        bad.struct_size = 3;
        CHECK(qembed_optimizer_set_params(oa, &bad) != QEMBED_OK);
        bad = op;
        bad.kind = (kind + 1) % QEMBED_OPTIM_COUNT;
        CHECK(qembed_optimizer_set_params(oa, &bad) == QEMBED_ERR_INVALID_ARGUMENT);
        CHECKF(strstr(qembed_last_error(), "kind") != NULL, "message: %s", qembed_last_error());
        bad = op;
        bad.lr = -1.0;
        CHECK(qembed_optimizer_set_params(oa, &bad) == QEMBED_ERR_INVALID_ARGUMENT);
        bad = op;
        bad.lr = NAN;
        CHECK(qembed_optimizer_set_params(oa, &bad) != QEMBED_OK);
        bad = op;
        bad.beta1 = 1.5;
        CHECK(qembed_optimizer_set_params(oa, &bad) != QEMBED_OK);
        bad = op;
        bad.kind = 99;
        CHECK(qembed_optimizer_set_params(oa, &bad) == QEMBED_ERR_INVALID_ARGUMENT);
        fill_grad(wa, &ra, 1.0f);
        fill_grad(wb, &rb, 1.0f);
        CHECK(qembed_optimizer_step(oa) == QEMBED_OK && qembed_optimizer_step(ob) == QEMBED_OK);
        CHECKF(memcmp(qt_info_of(wa).data, qt_info_of(wb).data, (size_t)numel * 4) == 0,
               "%s: a refused set_params changed the trajectory", kind_names[kind]);
        CHECK(state_info(oa, 0).step == 2);
        /* lr = 0 in place: the next step moves nothing, the state keeps its step count */
        bad = op;
        bad.lr = 0.0;
        CHECKF(qembed_optimizer_set_params(oa, &bad) == QEMBED_OK, "%s: %s", kind_names[kind], qembed_last_error());
        before = data_copy(wa);
        fill_grad(wa, &ra, 1.0f);
        CHECK(qembed_optimizer_step(oa) == QEMBED_OK);
        CHECKF(memcmp(qt_info_of(wa).data, before, (size_t)numel * 4) == 0, "%s: lr 0 still moved the weights", kind_names[kind]);
        CHECK(state_info(oa, 0).step == 3 && state_info(oa, 0).bits == 8);
        free(before);
        qembed_optimizer_free(oa);
        qembed_optimizer_free(ob);
        qembed_embedding_free(ea);
        qembed_embedding_free(eb);
    }
}

/* ---- qembed_optimizer_step_all: several optimizers as one update ---------------------- */

static void test_step_all(void) {
    qembed_embedding *ea = make_layer(R8, C8, 41, 0, false, NULL), *eb = make_layer(R8, C8, 42, 0, false, NULL);
    qembed_param *wa = qt_param_of(ea, 0), *wb = qt_param_of(eb, 0);
    qembed_optimizer_params pa = defaults(QEMBED_OPTIM_ADAM, 8), pb = defaults(QEMBED_OPTIM_LION, 32);
    qembed_optimizer *oa, *ob, *list[3], *null_list[2] = {NULL, NULL};
    qt_rng r = qt_rng_make(43);
    const int64_t numel = R8 * C8;
    float *a0, *b0;
    qembed_param_info ib;
    CHECK(qembed_param_clear_override(wa, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
    oa = make_opt(&pa, &wa, 1);
    ob = make_opt(&pb, &wb, 1);
    ensure_grads(ea);
    ensure_grads(eb);
    fill_grad(wa, &r, 0.1f);
    fill_grad(wb, &r, 0.1f);
    list[0] = oa;
    list[1] = ob;
    CHECKF(qembed_optimizer_step_all(list, 2) == QEMBED_OK, "step_all: %s", qembed_last_error());
    CHECK(state_info(oa, 0).step == 1 && state_info(ob, 0).step == 1 && state_info(oa, 0).bits == 8);
    CHECK(qembed_optimizer_step_all(list, 0) == QEMBED_OK && qembed_optimizer_step_all(NULL, 0) == QEMBED_OK);
    /* bad calls change nothing */
    CHECK(qembed_optimizer_step_all(NULL, 2) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_optimizer_step_all(null_list, 2) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_optimizer_step_all(list, -1) != QEMBED_OK);
    list[2] = oa;
    CHECK(qembed_optimizer_step_all(list, 3) == QEMBED_ERR_INVALID_ARGUMENT);
    CHECKF(strstr(qembed_last_error(), "twice") != NULL, "message: %s", qembed_last_error());
    CHECK(state_info(oa, 0).step == 1 && state_info(ob, 0).step == 1);
    /* a refused update in the second optimizer: the first is not updated either */
    fill_grad(wa, &r, 0.1f);
    fill_grad(wb, &r, 0.1f);
    ib = qt_info_of(wb);
    ib.grad[17] = NAN;
    a0 = data_copy(wa);
    b0 = data_copy(wb);
    CHECK(qembed_optimizer_step_all(list, 2) == QEMBED_ERR_NON_FINITE);
    CHECK(memcmp(qt_info_of(wa).data, a0, (size_t)numel * 4) == 0 && memcmp(qt_info_of(wb).data, b0, (size_t)numel * 4) == 0);
    CHECK(state_info(oa, 0).step == 1 && state_info(ob, 0).step == 1);
    ib.grad[17] = 0.5f;  /* Lion's sign update cannot overflow: the overflow goes in Adam's */
    qt_info_of(wa).grad[5] = 1e30f;  /* its square overflows Adam's second moment */
    list[0] = ob;
    list[1] = oa;  /* the refused one last: the other is undone */
    CHECK(qembed_optimizer_step_all(list, 2) == QEMBED_ERR_NON_FINITE);
    CHECKF(memcmp(qt_info_of(wb).data, b0, (size_t)numel * 4) == 0, "Lion's update stood although Adam's was refused");
    CHECK(memcmp(qt_info_of(wa).data, a0, (size_t)numel * 4) == 0);
    CHECK(state_info(oa, 0).step == 1 && state_info(ob, 0).step == 1);
    qt_info_of(wa).grad[5] = 0.25f;
    CHECK(qembed_optimizer_step_all(list, 2) == QEMBED_OK);
    CHECK(state_info(oa, 0).step == 2 && state_info(ob, 0).step == 2);
    free(a0);
    free(b0);
    qembed_optimizer_free(oa);
    qembed_optimizer_free(ob);
    qembed_embedding_free(ea);
    qembed_embedding_free(eb);
}

/* ---- overrides of one parameter do not leak --------------------------------------- */

static void test_override_isolation(void) {
    qembed_embedding *a = make_layer(R8, C8, 11, 0, false, NULL), *b = make_layer(R8, C8, 11, 0, false, NULL);
    qembed_embedding *c = make_layer(R8, C8, 11, 0, false, NULL);
    qembed_param *pa = qt_param_of(a, 0), *pb = qt_param_of(b, 0), *pc = qt_param_of(c, 0);
    qembed_param *list1[2];
    qembed_optimizer_params op = defaults(QEMBED_OPTIM_ADAM, 8);
    qembed_optimizer *o1, *o2;
    hyper h = hyper_of(&op);
    ref rb;
    float *start = data_copy(pb);
    qt_rng rng = qt_rng_make(55);
    int t;
    /* a: optim_bits cleared (8-bit) and lr 1e-2; b: the layer's 32 and no lr override; c: 32, in o1 with a */
    CHECK(qembed_param_clear_override(pa, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
    CHECK(qembed_param_set_override(pa, QEMBED_OVERRIDE_LR, 1e-2) == QEMBED_OK);
    list1[0] = pa;
    list1[1] = pc;
    o1 = make_opt(&op, list1, 2);
    o2 = make_opt(&op, &pb, 1);
    CHECK(state_info(o1, 0).bits == 8);
    CHECK(state_info(o1, 1).bits == 32);
    CHECK(state_info(o2, 0).bits == 32);
    ensure_grads(a);
    ensure_grads(b);
    ensure_grads(c);
    rb = ref_make(start, R8 * C8);
    for (t = 0; t < 3; t++) {
        qembed_param_info ia = qt_info_of(pa), ib = qt_info_of(pb), ic = qt_info_of(pc);
        int64_t i;
        for (i = 0; i < R8 * C8; i++) ia.grad[i] = ib.grad[i] = ic.grad[i] = qt_normal(&rng);
        ref_step(&rb, &h, ib.grad);
        CHECK(qembed_optimizer_step(o1) == QEMBED_OK);
        CHECK(qembed_optimizer_step(o2) == QEMBED_OK);
    }
    /* b and c moved with lr 1e-3 and 32-bit state: the reference; they are equal to each other */
    CHECKF(worst_rel_f((const float *)qt_info_of(pb).data, rb.p, R8 * C8, PFLOOR) <= 1e-5, "b is off");
    CHECK(memcmp(qt_info_of(pb).data, qt_info_of(pc).data, R8 * C8 * sizeof(float)) == 0);
    /* a moved about ten times as far */
    {
        const float *pa_ = (const float *)qt_info_of(pa).data, *pb_ = (const float *)qt_info_of(pb).data;
        double ma = 0.0, mb = 0.0;
        int64_t i;
        for (i = 0; i < R8 * C8; i++) {
            ma += fabs((double)pa_[i] - start[i]);
            mb += fabs((double)pb_[i] - start[i]);
        }
        CHECKF(ma > 7.0 * mb && ma < 13.0 * mb, "movement with lr 1e-2: %g, with 1e-3: %g", ma, mb);
    }
    {
        double v;
        bool set;
        CHECK(qembed_param_get_override(pb, QEMBED_OVERRIDE_LR, &v, &set) == QEMBED_OK && !set);
        CHECK(qembed_param_get_override(pc, QEMBED_OVERRIDE_LR, &v, &set) == QEMBED_OK && !set);
        CHECK(qembed_param_get_override(pb, QEMBED_OVERRIDE_OPTIM_BITS, &v, &set) == QEMBED_OK && set && v == 32.0);
    }
    ref_free(&rb);
    free(start);
    qembed_optimizer_free(o1);
    qembed_optimizer_free(o2);
    qembed_embedding_free(a);
    qembed_embedding_free(b);
    qembed_embedding_free(c);
}

/* ---- state export (all buffers of parameter i) -------------------------------------- */

typedef struct saved {
    int64_t step;
    int bits, ns;
    int64_t s_bytes, blocks;
    unsigned char *s1, *s2;
    float *a1, *a2;
} saved;

static saved save_state(qembed_optimizer *o, int64_t i) {
    qembed_optimizer_state_info si = state_info(o, i);
    saved s;
    qembed_status st;
    s.step = si.step;
    s.bits = si.bits;
    s.ns = si.num_states;
    s.s_bytes = si.numel * (si.bits == 8 ? 1 : 4);
    s.blocks = si.num_blocks;
    s.s1 = (unsigned char *)xmalloc((size_t)s.s_bytes);
    s.s2 = (unsigned char *)xmalloc((size_t)s.s_bytes);
    s.a1 = (float *)xmalloc((size_t)(s.blocks + 1) * sizeof(float));
    s.a2 = (float *)xmalloc((size_t)(s.blocks + 1) * sizeof(float));
    memset(s.s2, 0, (size_t)s.s_bytes);
    memset(s.a1, 0, (size_t)(s.blocks + 1) * sizeof(float));
    memset(s.a2, 0, (size_t)(s.blocks + 1) * sizeof(float));
    st = qembed_optimizer_state_export(o, i, s.s1, s.s_bytes, s.ns == 2 ? s.s2 : NULL, s.ns == 2 ? s.s_bytes : 0,
                                       s.bits == 8 ? s.a1 : NULL, s.bits == 8 ? s.blocks : 0,
                                       s.bits == 8 && s.ns == 2 ? s.a2 : NULL, s.bits == 8 && s.ns == 2 ? s.blocks : 0);
    CHECKF(st == QEMBED_OK, "export: %s", qembed_last_error());
    return s;
}

static int same_state(const saved *a, const saved *b) {
    return a->step == b->step && a->bits == b->bits && a->s_bytes == b->s_bytes && a->blocks == b->blocks &&
           memcmp(a->s1, b->s1, (size_t)a->s_bytes) == 0 && memcmp(a->s2, b->s2, (size_t)a->s_bytes) == 0 &&
           memcmp(a->a1, b->a1, (size_t)a->blocks * sizeof(float)) == 0 &&
           memcmp(a->a2, b->a2, (size_t)a->blocks * sizeof(float)) == 0;
}

static void free_saved(saved *s) {
    free(s->s1);
    free(s->s2);
    free(s->a1);
    free(s->a2);
}

/* ---- NaN / Inf gradients ----------------------------------------------------------- */

/* Two R8 x C8 layers (seeds sa, sb) without the layers' optim_bits override,
 * an optimizer of `kind`/`bits` over their weights, gradients allocated. */
static qembed_optimizer *two_layer_opt(int kind, int bits, uint64_t sa, uint64_t sb, qembed_embedding **a,
                                       qembed_embedding **b, qembed_param *ps[2]) {
    qembed_optimizer_params op = defaults(kind, bits);
    qembed_optimizer *o;
    *a = make_layer(R8, C8, sa, 0, false, NULL);
    *b = make_layer(R8, C8, sb, 0, false, NULL);
    ps[0] = qt_param_of(*a, 0);
    ps[1] = qt_param_of(*b, 0);
    CHECK(qembed_param_clear_override(ps[0], QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
    CHECK(qembed_param_clear_override(ps[1], QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
    o = make_opt(&op, ps, 2);
    ensure_grads(*a);
    ensure_grads(*b);
    return o;
}

static void test_nonfinite(void) {
    int bits;
    for (bits = 8; bits <= 32; bits += 24) {
        int kind;
        for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind += 3) { /* adam, lion */
            qembed_embedding *a, *b;
            qembed_param *ps[2];
            qembed_optimizer *o = two_layer_opt(kind, bits, 1, 2, &a, &b, ps);
            qt_rng rng = qt_rng_make(77);
            const float bad[3] = {NAN, INFINITY, -INFINITY};
            int t, k;
            for (t = 0; t < 2; t++) {
                fill_grad(ps[0], &rng, 1.0f);
                fill_grad(ps[1], &rng, 1.0f);
                CHECK(qembed_optimizer_step(o) == QEMBED_OK);
            }
            for (k = 0; k < 3; k++) {
                float *pa = data_copy(ps[0]), *pb = data_copy(ps[1]);
                saved sa = save_state(o, 0), sb = save_state(o, 1);
                saved sa2, sb2;
                qembed_status st;
                const int64_t where = k == 0 ? R8 * C8 - 1 : k == 1 ? 1234 : 0;
                fill_grad(ps[0], &rng, 1.0f);
                fill_grad(ps[1], &rng, 1.0f);
                qt_info_of(ps[1]).grad[where] = bad[k];
                qembed_clear_error();
                st = qembed_optimizer_step(o);
                CHECKF(st == QEMBED_ERR_NON_FINITE, "%s/%d: a %g gradient: status %d", kind_names[kind], bits,
                       (double)bad[k], (int)st);
                CHECKF(qt_names(qembed_last_error(), "weight") || strstr(qembed_last_error(), "weight") != NULL,
                       "message \"%s\" does not name the parameter", qembed_last_error());
                CHECK(memcmp(pa, qt_info_of(ps[0]).data, R8 * C8 * sizeof(float)) == 0);
                CHECK(memcmp(pb, qt_info_of(ps[1]).data, R8 * C8 * sizeof(float)) == 0);
                sa2 = save_state(o, 0);
                sb2 = save_state(o, 1);
                CHECKF(same_state(&sa, &sa2) && same_state(&sb, &sb2), "%s/%d: state changed by a skipped step",
                       kind_names[kind], bits);
                CHECK(state_info(o, 0).step == 2 && state_info(o, 1).step == 2);
                free(pa);
                free(pb);
                free_saved(&sa);
                free_saved(&sb);
                free_saved(&sa2);
                free_saved(&sb2);
            }
            /* fixed gradients: it steps again */
            fill_grad(ps[1], &rng, 1.0f);
            CHECK(qembed_optimizer_step(o) == QEMBED_OK && state_info(o, 0).step == 3);
            qembed_optimizer_free(o);
            qembed_embedding_free(a);
            qembed_embedding_free(b);
        }
    }
    /* a NaN on the very first step: no state is created */
    {
        qembed_embedding *a = make_layer(10, 10, 1, 0, false, NULL);
        qembed_param *p = qt_param_of(a, 0);
        qembed_optimizer_params op = defaults(QEMBED_OPTIM_ADAM, 32);
        qembed_optimizer *o = make_opt(&op, &p, 1);
        float *before;
        ensure_grads(a);
        before = data_copy(p);
        qt_info_of(p).grad[5] = NAN;
        CHECK(qembed_optimizer_step(o) == QEMBED_ERR_NON_FINITE);
        CHECK(state_info(o, 0).initialized == false && state_info(o, 0).step == 0);
        CHECK(memcmp(before, qt_info_of(p).data, 100 * sizeof(float)) == 0);
        free(before);
        qembed_optimizer_free(o);
        qembed_embedding_free(a);
    }
}

/* ---- updates that would overflow ----------------------------------------------------- */

static int import_saved(qembed_optimizer *o, int64_t i, const saved *s) {
    return qembed_optimizer_state_import(o, i, s->step, s->bits, s->s1, s->s_bytes, s->ns == 2 ? s->s2 : NULL,
                                         s->ns == 2 ? s->s_bytes : 0, s->bits == 8 ? s->a1 : NULL,
                                         s->bits == 8 ? s->blocks : 0, s->bits == 8 && s->ns == 2 ? s->a2 : NULL,
                                         s->bits == 8 && s->ns == 2 ? s->blocks : 0) == QEMBED_OK;
}

/* ---- embedding-training gradients: a few rows per step, zero elsewhere -------------- */

/* Each step touches RS_ROWS distinct random rows of an RS_V x RS_D table; a
 * touched row is standard normal times 10^u, u ~ U(-6, 1), so the rows of one
 * 256-block span seven orders of magnitude. The 8-bit run of every optimizer
 * (dense gradient with zero rows, and the sparse-gradient path) must stay
 * finite and move no weight more than twice as far as the 32-bit run's
 * farthest-moving weight (before the second-moment floor Adam8bit moved
 * weights by hundreds here). */
enum { RS_V = 2003, RS_D = 64, RS_ROWS = 150, RS_STEPS = 12 };

static void pick_rows(qt_rng *r, int64_t *rows) {
    static int64_t perm[RS_V];
    int64_t i;
    for (i = 0; i < RS_V; i++) perm[i] = i;
    for (i = 0; i < RS_ROWS; i++) {
        int64_t j = i + (int64_t)(qt_next(r) % (uint64_t)(RS_V - i)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        rows[i] = perm[i];
    }
}

/* max |w - w0| over the table; -1 when a value is not finite */
static double max_move(const float *w, const float *w0, int64_t n) {
    double m = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) {
        double d = fabs((double)w[i] - w0[i]);
        if (!isfinite(w[i])) return -1.0;
        if (d > m) m = d;
    }
    return m;
}

static void test_row_sparse_training(void) {
    const int64_t n = (int64_t)RS_V * RS_D;
    int kind, sparse;
    for (sparse = 0; sparse < 2; sparse++) {
        for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
            qembed_embedding *e[2];
            qembed_param *w[2];
            qembed_optimizer *o[2];
            float *w0, *go = (float *)xmalloc((size_t)(RS_ROWS * RS_D) * sizeof(float));
            int64_t rows[RS_ROWS];
            qt_rng rng = qt_rng_make(77 + (uint64_t)kind);
            double worst = 0.0, m8 = 0.0, m32 = 0.0;
            int b, t, k, j;
            for (b = 0; b < 2; b++) {
                qembed_optimizer_params op = defaults(kind, b == 0 ? 8 : 32);
                e[b] = make_layer(RS_V, RS_D, 5, 0, sparse != 0, NULL);
                w[b] = qt_param_of(e[b], 0);
                CHECK(qembed_param_clear_override(w[b], QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
                if (kind == QEMBED_OPTIM_ADAM || kind == QEMBED_OPTIM_ADAMW) op.lr = 1e-2;
                o[b] = make_opt(&op, &w[b], 1);
            }
            w0 = data_copy(w[0]);
            for (t = 0; t < RS_STEPS; t++) {
                pick_rows(&rng, rows);
                for (k = 0; k < RS_ROWS; k++) {
                    float scale = powf(10.0f, -6.0f + 7.0f * qt_uniform(&rng));
                    for (j = 0; j < RS_D; j++) go[k * RS_D + j] = qt_normal(&rng) * scale;
                }
                for (b = 0; b < 2; b++) {
                    CHECK(qembed_embedding_zero_grad(e[b]) == QEMBED_OK);
                    CHECK(qembed_embedding_backward(e[b], rows, QEMBED_DTYPE_I64, RS_ROWS, go, QEMBED_DTYPE_F32,
                                                    RS_ROWS * RS_D) == QEMBED_OK);
                    CHECKF(qembed_optimizer_step(o[b]) == QEMBED_OK, "%s step: %s", kind_names[kind], qembed_last_error());
                }
                m8 = max_move((const float *)qt_info_of(w[0]).data, w0, n);
                m32 = max_move((const float *)qt_info_of(w[1]).data, w0, n);
                if (m8 < 0 || m32 <= 0) {
                    worst = INFINITY;
                } else if (m8 / m32 > worst) {
                    worst = m8 / m32;
                }
            }
            CHECK(state_info(o[0], 0).bits == 8 && state_info(o[1], 0).bits == 32);
            CHECKF(worst <= 2.0, "%s (%s gradient): 8-bit moved a weight %.3g times the 32-bit run's largest move",
                   kind_names[kind], sparse ? "sparse" : "dense", worst);
            for (b = 0; b < 2; b++) {
                qembed_optimizer_free(o[b]);
                qembed_embedding_free(e[b]);
            }
            free(w0);
            free(go);
        }
    }
}

/* A state written before the floor (or by bitsandbytes) can hold Adam's second
 * moment at code 0 beside a nonzero first moment; import raises those codes to
 * the smallest positive one, and the next step stays bounded. */
static void test_import_repairs_zero_second_moment(void) {
    qembed_embedding *e = make_layer(R8, C8, 21, 0, false, NULL);
    qembed_param *w = qt_param_of(e, 0);
    qembed_optimizer_params op = defaults(QEMBED_OPTIM_ADAM, 8);
    qembed_optimizer *o;
    qt_rng rng = qt_rng_make(5);
    saved s, back;
    int64_t i, zeroed = 0, raised = 0, changed = 0;
    CHECK(qembed_param_clear_override(w, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
    o = make_opt(&op, &w, 1);
    ensure_grads(e);
    {
        /* gradients spanning 10^-6 .. 1, so that some v sit at the floor */
        qembed_param_info gi = qt_info_of(w);
        for (i = 0; i < gi.numel; i++) gi.grad[i] = qt_normal(&rng) * powf(10.0f, -6.0f * qt_uniform(&rng));
    }
    CHECK(qembed_optimizer_step(o) == QEMBED_OK);
    s = save_state(o, 0);
    CHECK(s.bits == 8 && s.ns == 2);
    for (i = 0; i < s.s_bytes; i++) {
        if (s.s2[i] == 1 && s.s1[i] != 127) {
            s.s2[i] = 0; /* what the exact rule stored for such a tiny v before the floor */
            zeroed++;
        }
    }
    CHECK(zeroed > 0);
    CHECKF(import_saved(o, 0, &s), "import: %s", qembed_last_error());
    back = save_state(o, 0);
    for (i = 0; i < s.s_bytes; i++) {
        if (back.s2[i] != s.s2[i]) changed++;
        if (s.s2[i] == 0 && s.s1[i] != 127 && back.s2[i] == 1) raised++;
    }
    CHECKF(raised == zeroed && changed == zeroed, "raised %lld of %lld zeroed codes, %lld changed",
           (long long)raised, (long long)zeroed, (long long)changed);
    CHECK(memcmp(back.s1, s.s1, (size_t)s.s_bytes) == 0);
    /* the next step (no gradient: m / sqrt(v) alone moves the weights) stays bounded */
    {
        float *before = data_copy(w);
        const float *after;
        double worst = 0.0;
        qembed_param_info gi = qt_info_of(w);
        for (i = 0; i < gi.numel; i++) gi.grad[i] = 0.0f;
        CHECK(qembed_optimizer_step(o) == QEMBED_OK);
        after = (const float *)qt_info_of(w).data;
        for (i = 0; i < gi.numel; i++)
            if (fabs((double)after[i] - before[i]) > worst) worst = fabs((double)after[i] - before[i]);
        CHECKF(worst <= 100.0 * op.lr, "after import, a weight moved %g (lr %g)", worst, op.lr);
        free(before);
    }
    free_saved(&s);
    free_saved(&back);
    qembed_optimizer_free(o);
    qembed_embedding_free(e);
}

/* A finite gradient of 1e30 overflows the squared-gradient states (Adam's v,
 * RMSprop, Adagrad): the step is refused like a NaN gradient and nothing
 * changes; Lion and SGD momentum take it (their states stay finite). Every
 * state exported afterwards imports again (the fuzz_capi finding
 * optim-state-overflow). */
static void test_overflow(void) {
    int bits;
    for (bits = 8; bits <= 32; bits += 24) {
        int kind;
        for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
            const int squares = kind == QEMBED_OPTIM_ADAM || kind == QEMBED_OPTIM_ADAMW || kind == QEMBED_OPTIM_RMSPROP ||
                                kind == QEMBED_OPTIM_ADAGRAD;
            qembed_embedding *a, *b;
            qembed_param *ps[2];
            qembed_optimizer *o = two_layer_opt(kind, bits, 3, 4, &a, &b, ps);
            qt_rng rng = qt_rng_make(91);
            float *pa, *pb;
            saved sa, sb, sa2, sb2;
            qembed_status st;
            fill_grad(ps[0], &rng, 1.0f);
            fill_grad(ps[1], &rng, 1.0f);
            CHECK(qembed_optimizer_step(o) == QEMBED_OK);
            pa = data_copy(ps[0]);
            pb = data_copy(ps[1]);
            sa = save_state(o, 0);
            sb = save_state(o, 1);
            fill_grad(ps[0], &rng, 1.0f);
            fill_grad(ps[1], &rng, 1.0f);
            qt_info_of(ps[1]).grad[2024] = -1e30f;
            qembed_clear_error();
            st = qembed_optimizer_step(o);
            if (squares) {
                CHECKF(st == QEMBED_ERR_NON_FINITE, "%s/%d: a 1e30 gradient: status %d", kind_names[kind], bits, (int)st);
                CHECKF(strstr(qembed_last_error(), "weight") != NULL && strstr(qembed_last_error(), "unchanged") != NULL,
                       "message \"%s\"", qembed_last_error());
                CHECK(memcmp(pa, qt_info_of(ps[0]).data, R8 * C8 * sizeof(float)) == 0);
                CHECK(memcmp(pb, qt_info_of(ps[1]).data, R8 * C8 * sizeof(float)) == 0);
                sa2 = save_state(o, 0);
                sb2 = save_state(o, 1);
                CHECKF(same_state(&sa, &sa2) && same_state(&sb, &sb2), "%s/%d: a refused step changed the state",
                       kind_names[kind], bits);
                free_saved(&sa2);
                free_saved(&sb2);
            } else {
                CHECKF(st == QEMBED_OK, "%s/%d: a 1e30 gradient: %s", kind_names[kind], bits, qembed_last_error());
            }
            /* export -> import is the identity, whatever happened */
            sa2 = save_state(o, 0);
            sb2 = save_state(o, 1);
            CHECKF(import_saved(o, 0, &sa2) && import_saved(o, 1, &sb2), "%s/%d: import of an export: %s",
                   kind_names[kind], bits, qembed_last_error());
            /* a normal gradient steps again */
            fill_grad(ps[1], &rng, 1.0f);
            CHECK(qembed_optimizer_step(o) == QEMBED_OK);
            CHECK(state_info(o, 1).step == (squares ? 2 : 3));
            free(pa);
            free(pb);
            free_saved(&sa);
            free_saved(&sb);
            free_saved(&sa2);
            free_saved(&sb2);
            qembed_optimizer_free(o);
            qembed_embedding_free(a);
            qembed_embedding_free(b);
        }
    }
}

/* ---- export / import ------------------------------------------------------------------ */

static void test_export_import(void) {
    static const struct { int kind, bits; } runs[] = {{QEMBED_OPTIM_ADAM, 32}, {QEMBED_OPTIM_ADAM, 8},
                                                      {QEMBED_OPTIM_LION, 8},  {QEMBED_OPTIM_MOMENTUM, 32},
                                                      {QEMBED_OPTIM_ADAGRAD, 8}, {QEMBED_OPTIM_ADAMW, 8}};
    size_t r;
    for (r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        const int kind = runs[r].kind, bits = runs[r].bits;
        qembed_embedding *a = make_layer(R8, C8, 21, 0, false, NULL), *b;
        qembed_param *pa = qt_param_of(a, 0), *pb;
        qembed_optimizer_params op = defaults(kind, bits);
        qembed_optimizer *oa, *ob;
        qt_rng rng = qt_rng_make(88);
        saved s, sa, sb;
        float *copy;
        int t;
        qembed_status st;
        if (bits == 8) CHECK(qembed_param_clear_override(pa, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
        oa = make_opt(&op, &pa, 1);
        ensure_grads(a);
        for (t = 0; t < 3; t++) {
            fill_grad(pa, &rng, 1.0f);
            CHECK(qembed_optimizer_step(oa) == QEMBED_OK);
        }
        s = save_state(oa, 0);
        CHECK(s.step == 3 && s.bits == bits);
        /* a fresh optimizer over a copy of the parameter */
        copy = data_copy(pa);
        b = make_layer(R8, C8, 99, 0, false, copy);
        pb = qt_param_of(b, 0);
        if (bits == 8) CHECK(qembed_param_clear_override(pb, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
        ob = make_opt(&op, &pb, 1);
        ensure_grads(b);
        /* wrong sizes and values first: each is an error and changes nothing */
        {
            const int64_t sb_ = s.s_bytes;
            float nanbuf[R8 * C8];
            struct { const char *what; int64_t step; int bits; const void *s1; int64_t b1; const void *s2; int64_t b2;
                     const float *a1; int64_t l1; const float *a2; int64_t l2; } bad[12];
            int nb = 0, k;
            const void *s2 = s.ns == 2 ? s.s2 : NULL;
            const int64_t b2 = s.ns == 2 ? sb_ : 0;
            const float *a1 = bits == 8 ? s.a1 : NULL, *a2 = bits == 8 && s.ns == 2 ? s.a2 : NULL;
            const int64_t l1 = bits == 8 ? s.blocks : 0, l2 = bits == 8 && s.ns == 2 ? s.blocks : 0;
            for (k = 0; k < R8 * C8; k++) nanbuf[k] = NAN;
#define BAD(w, st_, bi, x1, y1, x2, y2, z1, u1, z2, u2)                                                    \
    do {                                                                                                \
        bad[nb].what = (w); bad[nb].step = (st_); bad[nb].bits = (bi); bad[nb].s1 = (x1); bad[nb].b1 = (y1); \
        bad[nb].s2 = (x2); bad[nb].b2 = (y2); bad[nb].a1 = (z1); bad[nb].l1 = (u1); bad[nb].a2 = (z2);  \
        bad[nb].l2 = (u2); nb++;                                                                        \
    } while (0)
            BAD("state1 one byte short", 3, bits, s.s1, sb_ - 1, s2, b2, a1, l1, a2, l2);
            BAD("state1 empty", 3, bits, s.s1, 0, s2, b2, a1, l1, a2, l2);
            BAD("bits 16", 3, 16, s.s1, sb_, s2, b2, a1, l1, a2, l2);
            BAD("step -1", -1, bits, s.s1, sb_, s2, b2, a1, l1, a2, l2);
            BAD("other bits (sizes of the other width)", 3, bits == 8 ? 32 : 8, s.s1, sb_, s2, b2, a1, l1, a2, l2);
            if (s.ns == 2) {
                BAD("state2 missing", 3, bits, s.s1, sb_, NULL, 0, a1, l1, a2, l2);
                BAD("state2 short", 3, bits, s.s1, sb_, s.s2, sb_ - 4, a1, l1, a2, l2);
            } else {
                BAD("state2 for a one-state optimizer", 3, bits, s.s1, sb_, s.s1, sb_, a1, l1, a2, l2);
            }
            if (bits == 8) {
                BAD("absmax1 missing", 3, bits, s.s1, sb_, s2, b2, NULL, 0, a2, l2);
                BAD("absmax1 short", 3, bits, s.s1, sb_, s2, b2, a1, l1 - 1, a2, l2);
                BAD("absmax1 NaN", 3, bits, s.s1, sb_, s2, b2, nanbuf, l1, a2, l2);
            } else {
                BAD("absmax1 for 32-bit state", 3, bits, s.s1, sb_, s2, b2, s.a1, 1, NULL, 0);
                BAD("state1 NaN", 3, bits, nanbuf, sb_, s2, b2, NULL, 0, NULL, 0);
            }
#undef BAD
            for (k = 0; k < nb; k++) {
                qembed_optimizer_state_info before = state_info(ob, 0), after;
                qembed_clear_error();
                st = qembed_optimizer_state_import(ob, 0, bad[k].step, bad[k].bits, bad[k].s1, bad[k].b1, bad[k].s2,
                                                   bad[k].b2, bad[k].a1, bad[k].l1, bad[k].a2, bad[k].l2);
                after = state_info(ob, 0);
                CHECKF(st != QEMBED_OK && qembed_last_error()[0] != '\0', "%s/%d: import with %s: status %d",
                       kind_names[kind], bits, bad[k].what, (int)st);
                CHECKF(!after.initialized && after.step == before.step && after.bits == before.bits,
                       "%s/%d: a failed import (%s) changed the state", kind_names[kind], bits, bad[k].what);
            }
        }
        st = qembed_optimizer_state_import(ob, 0, s.step, s.bits, s.s1, s.s_bytes, s.ns == 2 ? s.s2 : NULL,
                                           s.ns == 2 ? s.s_bytes : 0, bits == 8 ? s.a1 : NULL, bits == 8 ? s.blocks : 0,
                                           bits == 8 && s.ns == 2 ? s.a2 : NULL, bits == 8 && s.ns == 2 ? s.blocks : 0);
        CHECKF(st == QEMBED_OK, "%s/%d import: %s", kind_names[kind], bits, qembed_last_error());
        {
            qembed_optimizer_state_info si = state_info(ob, 0);
            saved back = save_state(ob, 0);
            CHECK(si.initialized && si.step == 3 && si.bits == bits);
            CHECK(same_state(&back, &s));
            free_saved(&back);
        }
        /* a failing import over an initialized state keeps it */
        {
            saved before = save_state(ob, 0), after;
            CHECK(qembed_optimizer_state_import(ob, 0, 3, bits, s.s1, s.s_bytes - 1, s.ns == 2 ? s.s2 : NULL,
                                                s.ns == 2 ? s.s_bytes : 0, bits == 8 ? s.a1 : NULL,
                                                bits == 8 ? s.blocks : 0, bits == 8 && s.ns == 2 ? s.a2 : NULL,
                                                bits == 8 && s.ns == 2 ? s.blocks : 0) != QEMBED_OK);
            after = save_state(ob, 0);
            CHECK(same_state(&before, &after) && state_info(ob, 0).step == 3);
            free_saved(&before);
            free_saved(&after);
        }
        /* three more steps on both: the same bytes */
        for (t = 0; t < 3; t++) {
            qembed_param_info ia = qt_info_of(pa), ib = qt_info_of(pb);
            int64_t i;
            for (i = 0; i < R8 * C8; i++) ia.grad[i] = ib.grad[i] = qt_normal(&rng);
            CHECK(qembed_optimizer_step(oa) == QEMBED_OK);
            CHECK(qembed_optimizer_step(ob) == QEMBED_OK);
        }
        CHECKF(memcmp(qt_info_of(pa).data, qt_info_of(pb).data, R8 * C8 * sizeof(float)) == 0,
               "%s/%d: resumed trajectory differs", kind_names[kind], bits);
        sa = save_state(oa, 0);
        sb = save_state(ob, 0);
        CHECKF(same_state(&sa, &sb) && sa.step == 6, "%s/%d: resumed state differs", kind_names[kind], bits);
        /* export with short buffers fails and writes nothing */
        {
            unsigned char *buf = (unsigned char *)xmalloc((size_t)s.s_bytes), *ref_ = (unsigned char *)xmalloc((size_t)s.s_bytes);
            memset(buf, 0xA5, (size_t)s.s_bytes);
            memset(ref_, 0xA5, (size_t)s.s_bytes);
            CHECK(qembed_optimizer_state_export(oa, 0, buf, s.s_bytes - 1, NULL, 0, NULL, 0, NULL, 0) ==
                  QEMBED_ERR_BUFFER_TOO_SMALL);
            if (bits == 8)
                CHECK(qembed_optimizer_state_export(oa, 0, buf, s.s_bytes, NULL, 0, (float *)ref_, s.blocks - 1, NULL, 0) ==
                      QEMBED_ERR_BUFFER_TOO_SMALL);
            CHECK(memcmp(buf, ref_, (size_t)s.s_bytes) == 0);
            free(buf);
            free(ref_);
        }
        free_saved(&s);
        free_saved(&sa);
        free_saved(&sb);
        free(copy);
        qembed_optimizer_free(oa);
        qembed_optimizer_free(ob);
        qembed_embedding_free(a);
        qembed_embedding_free(b);
    }
}

/* ---- sparse gradients ----------------------------------------------------------------- */

/* sparse backward with unit grad rows times seed noise; returns the per-row gradient in g (n x d, zero elsewhere) */
static void sparse_backward(qembed_embedding *e, const int64_t *idx, int64_t count, int64_t d, qt_rng *rng, float *g,
                            int64_t n) {
    float *go = (float *)xmalloc((size_t)(count * d) * sizeof(float));
    int64_t k, j;
    for (k = 0; k < count * d; k++) go[k] = qt_normal(rng);
    memset(g, 0, (size_t)(n * d) * sizeof(float));
    for (k = 0; k < count; k++)
        for (j = 0; j < d; j++) g[idx[k] * d + j] += go[k * d + j];
    if (qembed_embedding_backward(e, idx, QEMBED_DTYPE_I64, count, go, QEMBED_DTYPE_F32, count * d) != QEMBED_OK) {
        fprintf(stderr, "sparse backward: %s\n", qembed_last_error());
        exit(2);
    }
    free(go);
}

static void test_sparse(void) {
    /* 32-bit: touched rows follow the reference with the parameter's step count; untouched rows
     * and their state do not move */
    {
        const int64_t n = 30, d = 9;
        int kind;
        for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
            qembed_embedding *e = make_layer(n, d, 31, 0, true, NULL);
            qembed_param *w = qt_param_of(e, 0);
            qembed_optimizer_params op = defaults(kind, 32);
            qembed_optimizer *o = make_opt(&op, &w, 1);
            hyper h = hyper_of(&op);
            float *start = data_copy(w), *g = (float *)xmalloc((size_t)(n * d) * sizeof(float));
            ref r = ref_make(start, n * d);
            int64_t step = 0, *rowstep = (int64_t *)calloc((size_t)n, sizeof(int64_t));
            qt_rng rng = qt_rng_make(400 + (uint64_t)kind);
            static const int64_t batches[3][5] = {{1, 4, 4, 9, 20}, {4, 5, 6, 7, 29}, {20, 20, 1, 2, 3}};
            int t;
            if (rowstep == NULL) exit(2);
            for (t = 0; t < 3; t++) {
                int touched[30] = {0};
                int64_t k, j;
                double wp;
                sparse_backward(e, batches[t], 5, d, &rng, g, n);
                for (k = 0; k < 5; k++) touched[batches[t][k]] = 1;
                step++;
                for (k = 0; k < n; k++)
                    if (touched[k]) {
                        for (j = 0; j < d; j++)
                            ref_elem(&h, step, g[k * d + j], &r.p[k * d + j], &r.s1[k * d + j], &r.s2[k * d + j]);
                        rowstep[k]++;
                    }
                CHECK(qembed_optimizer_step(o) == QEMBED_OK);
                CHECK(qembed_optimizer_zero_grad(o) == QEMBED_OK);
                wp = worst_rel_f((const float *)qt_info_of(w).data, r.p, n * d, PFLOOR);
                CHECKF(wp <= 1e-5, "sparse %s step %d: off by %g", kind_names[kind], t + 1, wp);
                for (k = 0; k < n; k++)
                    if (rowstep[k] == 0)
                        CHECKF(memcmp((const float *)qt_info_of(w).data + k * d, start + k * d, (size_t)d * sizeof(float)) == 0,
                               "sparse %s: untouched row %lld moved", kind_names[kind], (long long)k);
            }
            {
                qembed_optimizer_state_info si = state_info(o, 0);
                CHECK(si.step == 3 && si.bits == 32 && !si.row_aligned && si.num_blocks == 0);
            }
            ref_free(&r);
            free(start);
            free(g);
            free(rowstep);
            qembed_optimizer_free(o);
            qembed_embedding_free(e);
        }
    }
    /* 8-bit: row-aligned blocks, only touched rows (and their state) change */
    {
        const int64_t n = 40, d = 300, bpr = 2, blocks = 80, numel = 12000;
        int kind;
        for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
            qembed_embedding *e = make_layer(n, d, 41, 0, true, NULL);
            qembed_param *w = qt_param_of(e, 0);
            qembed_optimizer_params op = defaults(kind, 8);
            qembed_optimizer *o;
            qembed_optimizer_state_info si;
            float *before, *g = (float *)xmalloc((size_t)(n * d) * sizeof(float));
            static const int64_t b1[4] = {3, 7, 7, 21}, b2[2] = {5, 5};
            qt_rng rng = qt_rng_make(500 + (uint64_t)kind);
            saved s1, s2;
            const int ns = num_states(kind);
            int64_t r;
            CHECK(qembed_param_clear_override(w, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
            o = make_opt(&op, &w, 1);
            si = state_info(o, 0);
            CHECKF(si.bits == 8 && si.row_aligned && si.num_blocks == blocks, "sparse 8-bit %s: bits %d row_aligned %d blocks %lld",
                   kind_names[kind], si.bits, si.row_aligned, (long long)si.num_blocks);
            before = data_copy(w);
            sparse_backward(e, b1, 4, d, &rng, g, n);
            CHECK(qembed_optimizer_step(o) == QEMBED_OK);
            si = state_info(o, 0);
            CHECKF(si.initialized && si.step == 1 && si.row_aligned && si.num_blocks == blocks &&
                       si.state_bytes == (int64_t)ns * (numel + 4 * blocks),
                   "sparse 8-bit %s: bytes %lld", kind_names[kind], (long long)si.state_bytes);
            {
                const float *p = (const float *)qt_info_of(w).data;
                for (r = 0; r < n; r++) {
                    const int touched = r == 3 || r == 7 || r == 21;
                    int64_t j, changed = 0;
                    for (j = 0; j < d; j++)
                        if (p[r * d + j] != before[r * d + j]) changed++;
                    if (touched) CHECKF(changed > d * 9 / 10, "sparse 8-bit %s: touched row %lld: %lld of %lld changed",
                                        kind_names[kind], (long long)r, (long long)changed, (long long)d);
                    else CHECKF(changed == 0, "sparse 8-bit %s: untouched row %lld changed", kind_names[kind], (long long)r);
                }
            }
            s1 = save_state(o, 0);
            /* the second step touches only row 5: rows 3, 7, 21 and their state are not decayed */
            free(before);
            before = data_copy(w);
            CHECK(qembed_optimizer_zero_grad(o) == QEMBED_OK);
            sparse_backward(e, b2, 2, d, &rng, g, n);
            CHECK(qembed_optimizer_step(o) == QEMBED_OK);
            s2 = save_state(o, 0);
            {
                const float *p = (const float *)qt_info_of(w).data;
                int rows_ok = 1, state_ok = 1;
                for (r = 0; r < n; r++) {
                    const int same = memcmp(p + r * d, before + r * d, (size_t)d * sizeof(float)) == 0;
                    const int sstate = memcmp(s1.s1 + r * d, s2.s1 + r * d, (size_t)d) == 0 &&
                                       memcmp(s1.s2 + r * d, s2.s2 + r * d, (size_t)d) == 0 &&
                                       memcmp(s1.a1 + r * bpr, s2.a1 + r * bpr, (size_t)bpr * sizeof(float)) == 0 &&
                                       memcmp(s1.a2 + r * bpr, s2.a2 + r * bpr, (size_t)bpr * sizeof(float)) == 0;
                    if ((r == 5) == same) rows_ok = 0;
                    if (r != 5 && !sstate) state_ok = 0;
                    if (r == 5 && sstate) state_ok = 0;
                }
                CHECKF(rows_ok, "sparse 8-bit %s: the second step moved other rows than row 5", kind_names[kind]);
                CHECKF(state_ok, "sparse 8-bit %s: the second step changed the state of untouched rows", kind_names[kind]);
            }
            free_saved(&s1);
            free_saved(&s2);
            free(before);
            free(g);
            qembed_optimizer_free(o);
            qembed_embedding_free(e);
        }
    }
}

/* ---- skip_zeros, max_unorm, parameters kept alive --------------------------------------- */

/* skip_zeros: elements whose gradient is exactly 0 keep their value and state (32 and 8 bit) */
static void test_skip_zeros(void) {
    int kind, bits;
    for (bits = 8; bits <= 32; bits += 24)
        for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
            qembed_embedding *e = make_layer(R8, C8, 61, 0, false, NULL);
            qembed_param *w = qt_param_of(e, 0);
            qembed_optimizer_params op = defaults(kind, bits);
            qembed_optimizer *o;
            hyper h = hyper_of(&op);
            float *start = data_copy(w), *g;
            ref r = ref_make(start, R8 * C8);
            qt_rng rng = qt_rng_make(600 + (uint64_t)kind);
            int64_t i;
            int t, ok = 1;
            op.skip_zeros = true;
            if (bits == 8) CHECK(qembed_param_clear_override(w, QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
            o = make_opt(&op, &w, 1);
            ensure_grads(e);
            for (t = 1; t <= 3; t++) {
                fill_grad(w, &rng, 1.0f);
                g = qt_info_of(w).grad;
                for (i = t; i < R8 * C8; i += 5) g[i] = 0.0f; /* a different set each step */
                r.step++;
                for (i = 0; i < R8 * C8; i++)
                    if (g[i] != 0.0f) ref_elem(&h, r.step, g[i], &r.p[i], &r.s1[i], &r.s2[i]);
                CHECK(qembed_optimizer_step(o) == QEMBED_OK);
            }
            if (bits == 32) ok = worst_rel_f((const float *)qt_info_of(w).data, r.p, R8 * C8, PFLOOR) <= 1e-5;
            CHECKF(ok, "%s/32 skip_zeros differs from the reference", kind_names[kind]);
            /* one more step with every third gradient zero: those elements and (32-bit) their state
             * do not change */
            {
                float *before = data_copy(w);
                saved s0, s1;
                int same = 1;
                s0 = save_state(o, 0);
                fill_grad(w, &rng, 1.0f);
                g = qt_info_of(w).grad;
                for (i = 0; i < R8 * C8; i += 3) g[i] = 0.0f;
                CHECK(qembed_optimizer_step(o) == QEMBED_OK);
                s1 = save_state(o, 0);
                for (i = 0; i < R8 * C8; i += 3) {
                    const float *p = (const float *)qt_info_of(w).data;
                    if (p[i] != before[i]) same = 0;
                    if (bits == 32) {
                        if (memcmp(s0.s1 + 4 * i, s1.s1 + 4 * i, 4) != 0) same = 0;
                        if (s0.ns == 2 && memcmp(s0.s2 + 4 * i, s1.s2 + 4 * i, 4) != 0) same = 0;
                    }
                }
                CHECKF(same, "%s/%d skip_zeros: an element with a zero gradient changed", kind_names[kind], bits);
                free(before);
                free_saved(&s0);
                free_saved(&s1);
            }
            ref_free(&r);
            free(start);
            qembed_optimizer_free(o);
            qembed_embedding_free(e);
        }
}

/* max_unorm (32-bit adam, momentum, rmsprop): the update u is scaled by
 * min(1, max_unorm * ||p|| / ||u||), ||p|| taken before the step */
static void test_max_unorm(void) {
    static const int kinds[3] = {QEMBED_OPTIM_ADAM, QEMBED_OPTIM_MOMENTUM, QEMBED_OPTIM_RMSPROP};
    int k;
    for (k = 0; k < 3; k++) {
        const int kind = kinds[k];
        const int64_t n = 20 * 17;
        qembed_embedding *e = make_layer(20, 17, 71, 0, false, NULL);
        qembed_param *w = qt_param_of(e, 0);
        qembed_optimizer_params op = defaults(kind, 32);
        qembed_optimizer *o;
        hyper h;
        float *start = data_copy(w);
        ref r = ref_make(start, n);
        double *u = (double *)xmalloc((size_t)n * sizeof(double)), *pw = (double *)xmalloc((size_t)n * sizeof(double));
        qt_rng rng = qt_rng_make(700 + (uint64_t)kind);
        int t, scaled = 0;
        op.max_unorm = 0.002;
        op.weight_decay = kind == QEMBED_OPTIM_ADAM ? 0.1 : 0.0;
        op.lr = kind == QEMBED_OPTIM_MOMENTUM ? 1e-2 : op.lr;
        h = hyper_of(&op);
        o = make_opt(&op, &w, 1);
        ensure_grads(e);
        for (t = 1; t <= 4; t++) {
            const float *g;
            double pn = 0.0, un = 0.0, alpha, scale;
            int64_t i;
            fill_grad(w, &rng, 1.0f);
            g = qt_info_of(w).grad;
            r.step++;
            for (i = 0; i < n; i++) pn += r.p[i] * r.p[i];
            pn = sqrt(pn);
            for (i = 0; i < n; i++) {
                const double gi = g[i];
                pw[i] = r.p[i];
                if (kind == QEMBED_OPTIM_ADAM) {
                    const double c2 = sqrt(1.0 - pow(h.b2, (double)t));
                    r.s1[i] = h.b1 * r.s1[i] + (1.0 - h.b1) * gi;
                    r.s2[i] = h.b2 * r.s2[i] + (1.0 - h.b2) * gi * gi;
                    if (h.wd > 0.0) pw[i] *= 1.0 - h.lr * h.wd;
                    u[i] = r.s1[i] / (sqrt(r.s2[i]) + h.eps * c2);
                } else if (kind == QEMBED_OPTIM_MOMENTUM) {
                    r.s1[i] = t == 1 ? gi : h.b1 * r.s1[i] + gi;
                    u[i] = r.s1[i];
                } else {
                    r.s1[i] = h.b1 * r.s1[i] + (1.0 - h.b1) * gi * gi;
                    u[i] = gi / (sqrt(r.s1[i]) + h.eps);
                }
                un += u[i] * u[i];
            }
            un = sqrt(un);
            scale = un > op.max_unorm * pn ? op.max_unorm * pn / un : 1.0;
            if (scale < 1.0) scaled++;
            alpha = kind == QEMBED_OPTIM_ADAM ? -h.lr * sqrt(1.0 - pow(h.b2, (double)t)) / (1.0 - pow(h.b1, (double)t)) : -h.lr;
            for (i = 0; i < n; i++) r.p[i] = pw[i] + alpha * scale * u[i];
            CHECK(qembed_optimizer_step(o) == QEMBED_OK);
            {
                const double wp = worst_rel_f((const float *)qt_info_of(w).data, r.p, n, PFLOOR);
                CHECKF(wp <= 1e-5, "%s max_unorm step %d: off by %g (scale %g)", kind_names[kind], t, wp, scale);
            }
        }
        CHECKF(scaled >= 2, "%s: max_unorm never limited the update (test too weak)", kind_names[kind]);
        ref_free(&r);
        free(start);
        free(u);
        free(pw);
        qembed_optimizer_free(o);
        qembed_embedding_free(e);
    }
}

/* the optimizer keeps its parameters alive after their layer is freed */
static void test_keep_alive(void) {
    qembed_embedding *e = make_layer(R8, C8, 81, 1, false, NULL);
    qembed_param *ps[3];
    qembed_optimizer_params op = defaults(QEMBED_OPTIM_ADAM, 8);
    qembed_optimizer *o;
    qt_rng rng = qt_rng_make(800);
    int i;
    for (i = 0; i < 3; i++) ps[i] = qt_param_of(e, i);
    CHECK(qembed_param_clear_override(ps[0], QEMBED_OVERRIDE_OPTIM_BITS) == QEMBED_OK);
    o = make_opt(&op, ps, 3);
    ensure_grads(e);
    for (i = 0; i < 3; i++) fill_grad(ps[i], &rng, 1.0f);
    CHECK(qembed_optimizer_step(o) == QEMBED_OK);
    qembed_embedding_free(e);
    /* the handles stay valid for the optimizer and its parameters */
    CHECK(qembed_optimizer_step(o) == QEMBED_OK);
    CHECK(state_info(o, 0).step == 2 && state_info(o, 0).bits == 8 && state_info(o, 2).step == 2);
    {
        qembed_param_info info;
        info.struct_size = sizeof info;
        CHECK(qembed_param_info_get(ps[1], &info) == QEMBED_OK && strcmp(info.name, "norm.weight") == 0);
    }
    CHECK(qembed_optimizer_zero_grad(o) == QEMBED_OK);
    qembed_optimizer_free(o);
}

/* f16 and bf16 weights: the update is computed in float32 and stored with round to nearest
 * even after every step (upstream's p.data.copy_(p_float)); the state stays float32 */
static void test_half_weights(void) {
    static const int dts[2] = {QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16};
    int k, kind;
    for (k = 0; k < 2; k++)
        for (kind = 0; kind < QEMBED_OPTIM_COUNT; kind++) {
            const int64_t n = 24 * 10;
            qembed_embedding_params p;
            qembed_embedding *e = NULL;
            qembed_param *w;
            qembed_optimizer_params op = defaults(kind, 32);
            qembed_optimizer *o;
            hyper h;
            ref r;
            float *start = (float *)xmalloc((size_t)n * sizeof(float));
            qt_rng rng = qt_rng_make(900 + (uint64_t)kind);
            int64_t i;
            int t, ok = 1;
            const double ulp = dts[k] == QEMBED_DTYPE_F16 ? 0x1p-10 : 0x1p-7;
            qembed_embedding_params_init(&p);
            p.num_embeddings = 24;
            p.embedding_dim = 10;
            p.seed = 3;
            p.dtype = dts[k];
            CHECK(qembed_embedding_create(&p, &e) == QEMBED_OK);
            w = qt_param_of(e, 0);
            op.lr = kind == QEMBED_OPTIM_LION ? 1e-2 : op.lr * 10.0; /* moves larger than one unit in the last place */
            h = hyper_of(&op);
            for (i = 0; i < n; i++) {
                const uint16_t b = ((const uint16_t *)qt_info_of(w).data)[i];
                start[i] = dts[k] == QEMBED_DTYPE_F16 ? qt_f16_to_f32(b) : qt_bf16_to_f32(b);
            }
            r = ref_make(start, n);
            o = make_opt(&op, &w, 1);
            ensure_grads(e);
            for (t = 1; t <= 5; t++) {
                const uint16_t *data;
                fill_grad(w, &rng, 1.0f);
                ref_step(&r, &h, qt_info_of(w).grad);
                /* the stored parameter is rounded: the reference continues from the rounded value */
                for (i = 0; i < n; i++) {
                    const float f = (float)r.p[i];
                    r.p[i] = dts[k] == QEMBED_DTYPE_F16 ? qt_f16_to_f32(qt_f32_to_f16(f)) : qt_bf16_to_f32(qt_f32_to_bf16(f));
                }
                CHECK(qembed_optimizer_step(o) == QEMBED_OK);
                data = (const uint16_t *)qt_info_of(w).data;
                for (i = 0; i < n; i++) {
                    const double got = dts[k] == QEMBED_DTYPE_F16 ? qt_f16_to_f32(data[i]) : qt_bf16_to_f32(data[i]);
                    const double tol = ulp * (fabs(r.p[i]) > 1e-3 ? fabs(r.p[i]) : 1e-3) * 1.01;
                    if (fabs(got - r.p[i]) > tol) ok = 0;
                    /* keep the reference on the library's rounding when the two differ by one unit */
                    r.p[i] = got;
                }
            }
            CHECKF(ok, "%s weights, %s: more than one unit in the last place from the reference",
                   qembed_dtype_name(dts[k]), kind_names[kind]);
            CHECK(state_info(o, 0).state_bytes == (int64_t)num_states(kind) * n * 4);
            ref_free(&r);
            free(start);
            qembed_optimizer_free(o);
            qembed_embedding_free(e);
        }
}

int main(void) {
    test_params_init();
    test_create_errors();
    test_32bit();
    test_override_values();
    test_8bit_selection();
    test_8bit_first_state();
    test_8bit_trajectory();
    test_set_params();
    test_step_all();
    test_override_isolation();
    test_nonfinite();
    test_overflow();
    test_export_import();
    test_row_sparse_training();
    test_import_repairs_zero_second_moment();
    test_sparse();
    test_skip_zeros();
    test_max_unorm();
    test_keep_alive();
    test_half_weights();
    return qt_summary("test_optim");
}
