/* test_embedding.c - Embedding and StableEmbedding through the C API, each
 * result recomputed here from the documented rules (include/qembed.h,
 * "Parameters" and "Embedding and StableEmbedding"):
 *   params_init defaults, Xavier-uniform init (bounds, determinism), padding
 *   rows, lookups (i32/i64 indices; f32/f16/bf16 weights and outputs, round to
 *   nearest even), pretrained weights and freeze, max_norm renormalization
 *   (p = 1, 2, 3, inf), dense and sparse backward (padding, scale_grad_by_freq,
 *   accumulation, zero_grad), StableEmbedding's LayerNorm forward and its
 *   gradients against central finite differences, per-parameter overrides,
 *   qembed_param_load, get_params and reset_parameters. */
#include <limits.h>

#include "qembed.h"
#include "qtest.h"

#define GUARD 16
#define GUARD_F 12345.678f

/* ---- small helpers --------------------------------------------------------- */

static qembed_embedding_params base_params(int64_t n, int64_t d, uint64_t seed) {
    qembed_embedding_params p;
    qembed_embedding_params_init(&p);
    p.num_embeddings = n;
    p.embedding_dim = d;
    p.seed = seed;
    return p;
}

static qembed_embedding *create(const qembed_embedding_params *p, int stable) {
    qembed_embedding *e = NULL;
    qembed_status st = stable ? qembed_stable_embedding_create(p, &e) : qembed_embedding_create(p, &e);
    if (st != QEMBED_OK || e == NULL) {
        fprintf(stderr, "create (%lld x %lld, stable %d) failed: %s: %s\n", (long long)p->num_embeddings,
                (long long)p->embedding_dim, stable, qembed_status_string(st), qembed_last_error());
        exit(2);
    }
    return e;
}

static void *raw_copy(const void *p, size_t bytes) {
    void *c = xmalloc(bytes);
    memcpy(c, p, bytes);
    return c;
}

/* forward into a fresh float32 buffer with a guard tail; NULL on failure */
static float *forward_f32(qembed_embedding *e, const int64_t *idx, int64_t count, int64_t d) {
    float *out = (float *)xmalloc((size_t)(count * d + GUARD) * sizeof(float));
    int64_t i;
    qembed_status st;
    for (i = 0; i < count * d + GUARD; i++) out[i] = GUARD_F;
    st = qembed_embedding_forward(e, idx, QEMBED_DTYPE_I64, count, out, QEMBED_DTYPE_F32, count * d);
    CHECKF(st == QEMBED_OK, "forward: %s: %s", qembed_status_string(st), qembed_last_error());
    for (i = count * d; i < count * d + GUARD; i++)
        if (out[i] != GUARD_F) break;
    CHECKF(i == count * d + GUARD, "forward wrote past count x embedding_dim");
    if (st != QEMBED_OK) {
        free(out);
        return NULL;
    }
    return out;
}

static qembed_status backward_f32(qembed_embedding *e, const int64_t *idx, int64_t count, const float *g, int64_t d) {
    qembed_status st = qembed_embedding_backward(e, idx, QEMBED_DTYPE_I64, count, g, QEMBED_DTYPE_F32, count * d);
    CHECKF(st == QEMBED_OK, "backward: %s: %s", qembed_status_string(st), qembed_last_error());
    return st;
}

static float *normal_array(uint64_t seed, int64_t n, float scale) {
    qt_rng r = qt_rng_make(seed);
    float *v = (float *)xmalloc((size_t)n * sizeof(float));
    int64_t i;
    for (i = 0; i < n; i++) v[i] = qt_normal(&r) * scale;
    return v;
}

static int64_t *random_indices(uint64_t seed, int64_t count, int64_t n) {
    qt_rng r = qt_rng_make(seed);
    int64_t *v = (int64_t *)xmalloc((size_t)count * sizeof(int64_t));
    int64_t i;
    for (i = 0; i < count; i++) v[i] = (int64_t)(qt_next(&r) % (uint64_t)n);
    return v;
}

/* |a - b| <= tol * max(|b|, floor) */
static int close_rel(double a, double b, double tol, double floor_) {
    double m = fabs(b) > floor_ ? fabs(b) : floor_;
    return fabs(a - b) <= tol * m;
}

/* ---- params_init ------------------------------------------------------------ */

static void test_params_init(void) {
    qembed_embedding_params p;
    memset(&p, 0xA5, sizeof p);
    qembed_embedding_params_init(&p);
    CHECKF(p.struct_size == sizeof(qembed_embedding_params), "struct_size %u", (unsigned)p.struct_size);
    CHECKF(p.padding_idx == QEMBED_NO_PADDING, "padding_idx %lld", (long long)p.padding_idx);
    CHECKF(p.max_norm == 0.0, "max_norm %g", p.max_norm);
    CHECKF(p.norm_type == 2.0, "norm_type %g", p.norm_type);
    CHECK(p.scale_grad_by_freq == false);
    CHECK(p.sparse == false);
    CHECKF(p.dtype == QEMBED_DTYPE_F32, "dtype %d", p.dtype);
    CHECKF(p.seed == 0, "seed %llu", (unsigned long long)p.seed);
    CHECK(p.weight == NULL);
    CHECK(p.freeze == false);
    CHECK(QEMBED_NO_PADDING == INT64_MIN);
}

/* ---- creation and Xavier init ------------------------------------------------ */

static void test_create_xavier(void) {
    static const int64_t shapes[][2] = {{100, 50}, {1000, 16}, {7, 3}, {1, 1}, {3, 300}};
    static const int dts[3] = {QEMBED_DTYPE_F32, QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16};
    size_t s;
    int k;
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (k = 0; k < 3; k++) {
            const int64_t n = shapes[s][0], d = shapes[s][1];
            qembed_embedding_params p = base_params(n, d, 42);
            qembed_embedding *e, *same, *other;
            qembed_param_info w, ws, wo;
            int64_t np = -1, i, differ = 0;
            const double a = sqrt(6.0 / (double)(n + d));
            const float bound = qt_round_to((float)a, dts[k]);
            double mx = 0.0, sum = 0.0, sq = 0.0;
            int in_bounds = 1, representable = 1;
            const size_t es = qembed_dtype_size(dts[k]);
            p.dtype = dts[k];
            e = create(&p, 0);
            CHECK(qembed_embedding_num_params(e, &np) == QEMBED_OK && np == 1);
            w = qt_info_of(qt_param_of(e, 0));
            CHECKF(w.name != NULL && strcmp(w.name, "weight") == 0, "name %s", w.name ? w.name : "(null)");
            CHECKF(w.dtype == dts[k] && w.ndim == 2 && w.shape[0] == n && w.shape[1] == d && w.numel == n * d,
                   "dtype %d ndim %d shape %lld x %lld numel %lld", w.dtype, w.ndim, (long long)w.shape[0],
                   (long long)w.shape[1], (long long)w.numel);
            CHECK(w.data != NULL && ((uintptr_t)w.data % 64) == 0);
            CHECK(w.grad == NULL);
            CHECK(w.requires_grad == true && w.sparse == false);
            for (i = 0; i < w.numel; i++) {
                float v = qt_load_f(w.data, w.dtype, i);
                if (!(fabsf(v) <= bound)) in_bounds = 0;
                if (qt_store_bits(v, dts[k]) != qt_load_bits(w.data, dts[k], i)) representable = 0;
                if (fabs(v) > mx) mx = fabs(v);
                sum += v;
                sq += (double)v * v;
            }
            CHECKF(in_bounds, "%lld x %lld %s: |w| exceeds sqrt(6/(n+d)) = %g", (long long)n, (long long)d,
                   qembed_dtype_name(dts[k]), a);
            CHECK(representable);
            if (w.numel >= 1000) {
                const double mean = sum / (double)w.numel, var = sq / (double)w.numel - mean * mean;
                CHECKF(mx >= 0.99 * a, "max |w| %g, bound %g", mx, a);
                CHECKF(fabs(mean) <= 0.05 * a, "mean %g (bound %g)", mean, a);
                CHECKF(fabs(var / (a * a / 3.0) - 1.0) < 0.05, "variance %g, U(-a,a) has %g", var, a * a / 3.0);
            } else {
                CHECKF(mx > 0.0, "an all-zero table");
            }
            /* same seed: the same table; another seed: another table */
            same = create(&p, 0);
            ws = qt_info_of(qt_param_of(same, 0));
            CHECK(memcmp(ws.data, w.data, (size_t)w.numel * es) == 0);
            p.seed = 43;
            other = create(&p, 0);
            wo = qt_info_of(qt_param_of(other, 0));
            for (i = 0; i < w.numel; i++)
                if (qt_load_bits(wo.data, dts[k], i) != qt_load_bits(w.data, dts[k], i)) differ++;
            CHECKF(differ * 10 >= w.numel * 9, "seed 42 and 43 share %lld of %lld values", (long long)(w.numel - differ),
                   (long long)w.numel);
            qembed_embedding_free(e);
            qembed_embedding_free(same);
            qembed_embedding_free(other);
        }
    /* the default seed (0) is deterministic too */
    {
        qembed_embedding_params p = base_params(30, 20, 0);
        qembed_embedding *a = create(&p, 0), *b = create(&p, 1);
        qembed_param_info wa = qt_info_of(qt_param_of(a, 0)), wb = qt_info_of(qt_param_of(b, 0));
        CHECK(memcmp(wa.data, wb.data, 600 * sizeof(float)) == 0); /* StableEmbedding draws the same table */
        qembed_embedding_free(a);
        qembed_embedding_free(b);
    }
    qembed_embedding_free(NULL);
}

static void test_padding(void) {
    static const int64_t pads[] = {3, -2, 0, -10, 9};
    size_t k;
    for (k = 0; k < sizeof pads / sizeof pads[0]; k++) {
        qembed_embedding_params p = base_params(10, 6, 5), g;
        qembed_embedding *e;
        float *w;
        const int64_t row = pads[k] < 0 ? 10 + pads[k] : pads[k];
        int64_t r, j;
        bool stable = true;
        p.padding_idx = pads[k];
        e = create(&p, 0);
        w = qt_weight_copy(e);
        for (r = 0; r < 10; r++) {
            int zero = 1;
            for (j = 0; j < 6; j++)
                if (w[r * 6 + j] != 0.0f || signbit(w[r * 6 + j])) zero = 0;
            if (r == row) CHECKF(zero, "padding_idx %lld: row %lld is not +0", (long long)pads[k], (long long)r);
            else CHECKF(!zero, "padding_idx %lld: row %lld is zero", (long long)pads[k], (long long)r);
        }
        g.struct_size = sizeof g;
        CHECK(qembed_embedding_get_params(e, &g, &stable) == QEMBED_OK);
        CHECKF(g.padding_idx == row, "get_params padding_idx %lld, want %lld", (long long)g.padding_idx, (long long)row);
        CHECK(stable == false);
        /* the padding row's output is whatever the row holds */
        {
            int64_t idx[2] = {row, row};
            float *out = forward_f32(e, idx, 2, 6);
            if (out) {
                for (j = 0; j < 12; j++)
                    if (out[j] != 0.0f) break;
                CHECK(j == 12);
                free(out);
            }
        }
        free(w);
        qembed_embedding_free(e);
    }
}

/* ---- forward ------------------------------------------------------------------ */

static void test_forward(void) {
    static const int dts[3] = {QEMBED_DTYPE_F32, QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16};
    const int64_t n = 50, d = 13, count = 64;
    int wk, ok;
    for (wk = 0; wk < 3; wk++) {
        qembed_embedding_params p = base_params(n, d, 9);
        qembed_embedding *e;
        qembed_param_info w;
        int64_t *idx = random_indices(100 + (uint64_t)wk, count, n);
        int32_t idx32[64];
        int64_t k, j;
        int ik;
        p.dtype = dts[wk];
        p.padding_idx = 7;
        idx[5] = 7;
        idx[6] = n - 1;
        idx[7] = 0;
        idx[8] = idx[9];
        for (k = 0; k < count; k++) idx32[k] = (int32_t)idx[k];
        e = create(&p, 0);
        w = qt_info_of(qt_param_of(e, 0));
        for (ik = 0; ik < 2; ik++) {
            int ok_;
            for (ok_ = 0; ok_ < 3; ok_++) {
                const int od = dts[ok_];
                const size_t es = qembed_dtype_size(od);
                unsigned char *out = (unsigned char *)xmalloc((size_t)(count * d) * es + GUARD);
                qembed_status st;
                int exact = 1;
                memset(out, 0xA5, (size_t)(count * d) * es + GUARD);
                st = qembed_embedding_forward(e, ik == 0 ? (const void *)idx32 : (const void *)idx,
                                              ik == 0 ? QEMBED_DTYPE_I32 : QEMBED_DTYPE_I64, count, out, od, count * d);
                CHECKF(st == QEMBED_OK, "forward: %s", qembed_last_error());
                for (k = 0; k < count && st == QEMBED_OK; k++)
                    for (j = 0; j < d; j++) {
                        /* the stored value, exactly, converted to out_dtype with round to nearest even */
                        const float v = qt_load_f(w.data, w.dtype, idx[k] * d + j);
                        const uint32_t want = od == w.dtype ? qt_load_bits(w.data, w.dtype, idx[k] * d + j) : qt_store_bits(v, od);
                        if (qt_load_bits(out, od, k * d + j) != want) exact = 0;
                    }
                CHECKF(exact, "weight %s, out %s, index %s: lookup is not exact", qembed_dtype_name(w.dtype),
                       qembed_dtype_name(od), ik == 0 ? "i32" : "i64");
                for (j = 0; j < GUARD; j++)
                    if (out[(size_t)(count * d) * es + (size_t)j] != 0xA5) break;
                CHECKF(j == GUARD, "forward wrote past the output");
                free(out);
            }
        }
        /* count = 0 is fine and writes nothing */
        {
            float out[4] = {1.0f, 2.0f, 3.0f, 4.0f};
            CHECK(qembed_embedding_forward(e, idx, QEMBED_DTYPE_I64, 0, out, QEMBED_DTYPE_F32, 4) == QEMBED_OK);
            CHECK(qembed_embedding_forward(e, idx32, QEMBED_DTYPE_I32, 0, out, QEMBED_DTYPE_F32, 0) == QEMBED_OK);
            CHECK(out[0] == 1.0f && out[3] == 4.0f);
            CHECK(qembed_embedding_backward(e, idx, QEMBED_DTYPE_I64, 0, out, QEMBED_DTYPE_F32, 0) == QEMBED_OK);
        }
        free(idx);
        qembed_embedding_free(e);
    }
    /* a value that rounds differently in f16 and bf16 (ties to even) through a pretrained f32 table */
    {
        float table[8] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f,
                          -65520.0f, 70000.0f, 1e-8f, -3.0e-5f};
        qembed_embedding_params p = base_params(2, 4, 0);
        qembed_embedding *e;
        int64_t idx[2] = {0, 1};
        uint16_t h[8], b[8];
        int j;
        p.weight = table;
        p.weight_dtype = QEMBED_DTYPE_F32;
        e = create(&p, 0);
        ok = qembed_embedding_forward(e, idx, QEMBED_DTYPE_I64, 2, h, QEMBED_DTYPE_F16, 8) == QEMBED_OK &&
             qembed_embedding_forward(e, idx, QEMBED_DTYPE_I64, 2, b, QEMBED_DTYPE_BF16, 8) == QEMBED_OK;
        CHECK(ok);
        for (j = 0; j < 8 && ok; j++) {
            CHECKF(h[j] == qt_f32_to_f16(table[j]), "f16 of %a: got 0x%04x want 0x%04x", (double)table[j], h[j],
                   qt_f32_to_f16(table[j]));
            CHECKF(b[j] == qt_f32_to_bf16(table[j]), "bf16 of %a: got 0x%04x want 0x%04x", (double)table[j], b[j],
                   qt_f32_to_bf16(table[j]));
        }
        qembed_embedding_free(e);
    }
}

/* ---- pretrained weights and freeze ------------------------------------------- */

static void test_pretrained(void) {
    const int64_t n = 12, d = 5;
    float *src = normal_array(77, n * d, 0.7f);
    uint16_t h[60], bsrc[60];
    int64_t i, idx[3] = {0, 4, 11};
    qembed_embedding_params p = base_params(n, d, 1);
    qembed_embedding *e;
    qembed_param_info w;
    for (i = 0; i < n * d; i++) {
        h[i] = qt_f32_to_f16(src[i]);
        bsrc[i] = qt_f32_to_bf16(src[i]);
    }
    /* from f32, padding row kept as given */
    p.weight = src;
    p.weight_dtype = QEMBED_DTYPE_F32;
    p.padding_idx = 4;
    e = create(&p, 0);
    w = qt_info_of(qt_param_of(e, 0));
    CHECK(memcmp(w.data, src, (size_t)(n * d) * sizeof(float)) == 0);
    CHECK(w.requires_grad == true);
    src[0] += 1.0f; /* the table was copied */
    CHECK(((float *)w.data)[0] != src[0]);
    src[0] -= 1.0f;
    qembed_embedding_free(e);

    /* from f16 into an f32 table: exact values */
    p.weight = h;
    p.weight_dtype = QEMBED_DTYPE_F16;
    p.padding_idx = QEMBED_NO_PADDING;
    e = create(&p, 0);
    w = qt_info_of(qt_param_of(e, 0));
    for (i = 0; i < n * d; i++)
        if (((float *)w.data)[i] != qt_f16_to_f32(h[i])) break;
    CHECKF(i == n * d, "f16 source, element %lld", (long long)i);
    qembed_embedding_free(e);

    /* from bf16 into an f16 table, from f32 into a bf16 table: round to nearest even */
    p.weight = bsrc;
    p.weight_dtype = QEMBED_DTYPE_BF16;
    p.dtype = QEMBED_DTYPE_F16;
    e = create(&p, 0);
    w = qt_info_of(qt_param_of(e, 0));
    for (i = 0; i < n * d; i++)
        if (((uint16_t *)w.data)[i] != qt_f32_to_f16(qt_bf16_to_f32(bsrc[i]))) break;
    CHECKF(i == n * d, "bf16 source into f16, element %lld", (long long)i);
    qembed_embedding_free(e);
    p.weight = src;
    p.weight_dtype = QEMBED_DTYPE_F32;
    p.dtype = QEMBED_DTYPE_BF16;
    e = create(&p, 0);
    w = qt_info_of(qt_param_of(e, 0));
    for (i = 0; i < n * d; i++)
        if (((uint16_t *)w.data)[i] != bsrc[i]) break;
    CHECKF(i == n * d, "f32 source into bf16, element %lld", (long long)i);
    qembed_embedding_free(e);

    /* freeze: no gradient, ever */
    p.dtype = QEMBED_DTYPE_F32;
    p.freeze = true;
    {
        qembed_embedding_params g;
        bool stable = true;
        float go[15];
        int sparse;
        for (i = 0; i < 15; i++) go[i] = (float)i - 7.0f;
        for (sparse = 0; sparse < 2; sparse++) {
            int64_t nnz = -1;
            p.sparse = sparse;
            e = create(&p, 0);
            w = qt_info_of(qt_param_of(e, 0));
            CHECK(w.requires_grad == false);
            CHECK(memcmp(w.data, src, (size_t)(n * d) * sizeof(float)) == 0);
            backward_f32(e, idx, 3, go, d);
            w = qt_info_of(qt_param_of(e, 0));
            CHECKF(w.grad == NULL, "a frozen weight got a gradient buffer");
            CHECK(qembed_param_sparse_grad(qt_param_of(e, 0), &nnz, NULL, 0, NULL, 0) == QEMBED_OK && nnz == 0);
            CHECK(memcmp(w.data, src, (size_t)(n * d) * sizeof(float)) == 0);
            g.struct_size = sizeof g;
            CHECK(qembed_embedding_get_params(e, &g, &stable) == QEMBED_OK && g.freeze == true && g.weight == NULL);
            qembed_embedding_free(e);
        }
        /* a frozen StableEmbedding still trains its LayerNorm */
        p.sparse = false;
        e = create(&p, 1);
        backward_f32(e, idx, 3, go, d);
        CHECK(qt_info_of(qt_param_of(e, 0)).grad == NULL);
        CHECK(qt_info_of(qt_param_of(e, 1)).grad != NULL && qt_info_of(qt_param_of(e, 2)).grad != NULL);
        qembed_embedding_free(e);
    }
    /* freeze without a pretrained weight: freeze applies to pretrained tables only */
    p.weight = NULL;
    e = create(&p, 0);
    CHECK(qt_info_of(qt_param_of(e, 0)).requires_grad == true);
    qembed_embedding_free(e);
    free(src);
}

/* ---- max_norm ------------------------------------------------------------------ */

static double pnorm(const float *row, int64_t d, double p) {
    double acc = 0.0;
    int64_t j;
    if (isinf(p)) {
        for (j = 0; j < d; j++)
            if (fabs(row[j]) > acc) acc = fabs(row[j]);
        return acc;
    }
    for (j = 0; j < d; j++) acc += pow(fabs((double)row[j]), p);
    return pow(acc, 1.0 / p);
}

static void test_max_norm(void) {
    static const double types[] = {1.0, 2.0, 3.0, INFINITY, 2.5};
    const int64_t n = 40, d = 9;
    size_t t;
    for (t = 0; t < sizeof types / sizeof types[0]; t++) {
        /* rows of very different norms: some under, some over max_norm */
        float *table = normal_array(300 + t, n * d, 1.0f);
        int64_t idx[12] = {3, 5, 3, 7, 7, 7, 0, 12, 39, 20, 21, 3};
        int64_t r, j;
        int referenced[40] = {0}, n_scaled = 0, n_kept = 0;
        const double max_norm = types[t] == 1.0 ? 4.0 : 1.5;
        qembed_embedding_params p = base_params(n, d, 0);
        qembed_embedding *e;
        float *before, *after, *out;
        for (r = 0; r < n; r++)
            for (j = 0; j < d; j++) table[r * d + j] *= (float)(0.05 + 0.1 * (double)r);
        p.weight = table;
        p.max_norm = max_norm;
        p.norm_type = types[t];
        e = create(&p, 0);
        before = qt_weight_copy(e);
        out = forward_f32(e, idx, 12, d);
        after = qt_weight_copy(e);
        for (j = 0; j < 12; j++) referenced[idx[j]] = 1;
        for (r = 0; r < n; r++) {
            const double norm = pnorm(before + r * d, d, types[t]);
            if (referenced[r] && norm > max_norm) {
                const double scale = max_norm / (norm + 1e-7);
                int ok = 1;
                for (j = 0; j < d; j++)
                    if (!close_rel(after[r * d + j], (double)before[r * d + j] * scale, 1e-6, 1e-30)) ok = 0;
                CHECKF(ok, "p=%g: row %lld (norm %g) not rescaled by max_norm/(norm+1e-7)", types[t], (long long)r, norm);
                n_scaled++;
            } else {
                CHECKF(memcmp(after + r * d, before + r * d, (size_t)d * sizeof(float)) == 0,
                       "p=%g: row %lld (referenced %d, norm %g) changed", types[t], (long long)r, referenced[r], norm);
                if (referenced[r]) n_kept++;
            }
        }
        CHECKF(n_scaled >= 3 && n_kept >= 1, "p=%g: the test needs rows on both sides (%d scaled, %d kept)", types[t],
               n_scaled, n_kept);
        /* the output holds the renormalized rows */
        if (out) {
            int ok = 1;
            for (j = 0; j < 12; j++)
                if (memcmp(out + j * d, after + idx[j] * d, (size_t)d * sizeof(float)) != 0) ok = 0;
            CHECKF(ok, "p=%g: output differs from the renormalized rows", types[t]);
        }
        /* i32 indices renormalize the same way */
        {
            qembed_embedding *e2 = create(&p, 0);
            int32_t i32[12];
            float *o2 = (float *)xmalloc(12 * (size_t)d * sizeof(float)), *after2;
            for (j = 0; j < 12; j++) i32[j] = (int32_t)idx[j];
            CHECK(qembed_embedding_forward(e2, i32, QEMBED_DTYPE_I32, 12, o2, QEMBED_DTYPE_F32, 12 * d) == QEMBED_OK);
            after2 = qt_weight_copy(e2);
            CHECK(memcmp(after2, after, (size_t)(n * d) * sizeof(float)) == 0);
            CHECK(out == NULL || memcmp(o2, out, 12 * (size_t)d * sizeof(float)) == 0);
            free(o2);
            free(after2);
            qembed_embedding_free(e2);
        }
        free(out);
        free(before);
        free(after);
        free(table);
        qembed_embedding_free(e);
    }
}

/* ---- dense backward ----------------------------------------------------------- */

static void test_dense_backward(void) {
    const int64_t n = 30, d = 6, count = 40;
    int freq;
    for (freq = 0; freq < 2; freq++) {
        qembed_embedding_params p = base_params(n, d, 3);
        qembed_embedding *e;
        int64_t *idx1 = random_indices(500, count, n), *idx2 = random_indices(501, count, 20);
        float *g1 = normal_array(502, count * d, 1.0f), *g2 = normal_array(503, count * d, 1.0f);
        float *want = (float *)calloc((size_t)(n * d), sizeof(float));
        double *wantd = (double *)calloc((size_t)(n * d), sizeof(double)), *absd = (double *)calloc((size_t)(n * d), sizeof(double));
        qembed_param_info w;
        int64_t k, j, r;
        int pass;
        if (want == NULL || wantd == NULL || absd == NULL) exit(2);
        p.padding_idx = 4;
        p.scale_grad_by_freq = freq;
        idx1[0] = 4;
        idx1[1] = 9;
        idx1[2] = 9;
        idx1[3] = 9;
        idx2[0] = 4;
        e = create(&p, 0);
        CHECK(qt_info_of(qt_param_of(e, 0)).grad == NULL);
        for (pass = 0; pass < 2; pass++) {
            const int64_t *idx = pass == 0 ? idx1 : idx2;
            const float *g = pass == 0 ? g1 : g2;
            int64_t cnt[30] = {0};
            int ok = 1;
            for (k = 0; k < count; k++) cnt[idx[k]]++;
            /* reference: batch order, float32 sums (exact rule) and double sums (with frequency scaling) */
            for (k = 0; k < count; k++) {
                if (idx[k] == 4) continue;
                for (j = 0; j < d; j++) {
                    want[idx[k] * d + j] += g[k * d + j];
                    wantd[idx[k] * d + j] += (double)g[k * d + j] / (freq ? (double)cnt[idx[k]] : 1.0);
                    absd[idx[k] * d + j] += fabs((double)g[k * d + j]) / (freq ? (double)cnt[idx[k]] : 1.0);
                }
            }
            backward_f32(e, idx, count, g, d);
            w = qt_info_of(qt_param_of(e, 0));
            CHECK(w.grad != NULL);
            if (w.grad == NULL) break;
            for (r = 0; r < n; r++)
                for (j = 0; j < d; j++) {
                    const float got = w.grad[r * d + j];
                    if (r == 4) {
                        if (got != 0.0f) ok = 0;
                    } else if (!freq) {
                        if (got != want[r * d + j]) ok = 0;
                    } else if (fabs((double)got - wantd[r * d + j]) > 1e-6 * (absd[r * d + j] + 1e-30)) {
                        ok = 0;
                    }
                }
            CHECKF(ok, "scale_grad_by_freq %d, backward %d: gradient differs from the batch-order sums", freq, pass + 1);
        }
        /* i32 indices give the same gradient as i64 ones */
        {
            qembed_embedding *a = create(&p, 0), *b = create(&p, 0);
            int32_t *i32 = (int32_t *)xmalloc((size_t)count * sizeof(int32_t));
            qembed_param_info ga, gb;
            for (k = 0; k < count; k++) i32[k] = (int32_t)idx1[k];
            CHECK(qembed_embedding_backward(a, i32, QEMBED_DTYPE_I32, count, g1, QEMBED_DTYPE_F32, count * d) == QEMBED_OK);
            backward_f32(b, idx1, count, g1, d);
            ga = qt_info_of(qt_param_of(a, 0));
            gb = qt_info_of(qt_param_of(b, 0));
            CHECK(ga.grad != NULL && gb.grad != NULL && memcmp(ga.grad, gb.grad, (size_t)(n * d) * sizeof(float)) == 0);
            free(i32);
            qembed_embedding_free(a);
            qembed_embedding_free(b);
        }
        /* the weight did not move */
        {
            qembed_embedding *fresh = create(&p, 0);
            CHECK(memcmp(qt_info_of(qt_param_of(fresh, 0)).data, qt_info_of(qt_param_of(e, 0)).data, (size_t)(n * d) * 4) == 0);
            qembed_embedding_free(fresh);
        }
        CHECK(qembed_embedding_zero_grad(e) == QEMBED_OK);
        w = qt_info_of(qt_param_of(e, 0));
        for (k = 0; w.grad != NULL && k < n * d; k++)
            if (w.grad[k] != 0.0f) break;
        CHECK(w.grad == NULL || k == n * d);
        /* f16 and bf16 grad_output: the converted values */
        {
            uint16_t *h = (uint16_t *)xmalloc((size_t)(count * d) * 2), *b = (uint16_t *)xmalloc((size_t)(count * d) * 2);
            int ok = 1;
            memset(want, 0, (size_t)(n * d) * sizeof(float));
            for (k = 0; k < count * d; k++) {
                h[k] = qt_f32_to_f16(g1[k]);
                b[k] = qt_f32_to_bf16(g2[k]);
            }
            if (!freq) {
                CHECK(qembed_embedding_backward(e, idx1, QEMBED_DTYPE_I64, count, h, QEMBED_DTYPE_F16, count * d) == QEMBED_OK);
                CHECK(qembed_embedding_backward(e, idx1, QEMBED_DTYPE_I64, count, b, QEMBED_DTYPE_BF16, count * d) == QEMBED_OK);
                for (k = 0; k < count; k++)
                    if (idx1[k] != 4)
                        for (j = 0; j < d; j++) want[idx1[k] * d + j] += qt_f16_to_f32(h[k * d + j]);
                for (k = 0; k < count; k++)
                    if (idx1[k] != 4)
                        for (j = 0; j < d; j++) want[idx1[k] * d + j] += qt_bf16_to_f32(b[k * d + j]);
                w = qt_info_of(qt_param_of(e, 0));
                for (k = 0; w.grad != NULL && k < n * d; k++)
                    if (w.grad[k] != want[k]) ok = 0;
                CHECKF(ok && w.grad != NULL, "f16/bf16 grad_output");
            }
            free(h);
            free(b);
        }
        free(idx1);
        free(idx2);
        free(g1);
        free(g2);
        free(want);
        free(wantd);
        free(absd);
        qembed_embedding_free(e);
    }
}

/* ---- sparse backward ------------------------------------------------------------ */

static void test_sparse_backward(void) {
    const int64_t n = 60, d = 7, count = 50;
    int freq;
    for (freq = 0; freq < 2; freq++) {
        qembed_embedding_params p = base_params(n, d, 8);
        qembed_embedding *sp, *dn;
        qembed_param *spw;
        int64_t *idx1 = random_indices(600, count, 40), *idx2 = random_indices(601, count, n);
        float *g1 = normal_array(602, count * d, 1.0f), *g2 = normal_array(603, count * d, 1.0f);
        int64_t nnz = -1, nnz2 = -1, rows[60], k, j;
        float *vals = (float *)xmalloc((size_t)(n * d) * sizeof(float));
        qembed_param_info si, di;
        p.padding_idx = -1; /* row 59 */
        p.scale_grad_by_freq = freq;
        idx1[3] = 59;
        idx1[4] = 2;
        idx1[5] = 2;
        idx2[7] = 59;
        dn = create(&p, 0);
        p.sparse = true;
        sp = create(&p, 0);
        spw = qt_param_of(sp, 0);
        si = qt_info_of(spw);
        CHECK(si.sparse == true && si.grad == NULL);
        CHECK(qembed_param_sparse_grad(spw, &nnz, NULL, 0, NULL, 0) == QEMBED_OK && nnz == 0);
        backward_f32(sp, idx1, count, g1, d);
        backward_f32(dn, idx1, count, g1, d);
        di = qt_info_of(qt_param_of(dn, 0));
        si = qt_info_of(spw);
        CHECKF(si.grad == NULL, "a sparse layer allocated a dense gradient");
        /* size query, then the copy */
        CHECK(qembed_param_sparse_grad(spw, &nnz, NULL, 0, NULL, 0) == QEMBED_OK);
        {
            int present[60] = {0};
            int64_t distinct = 0;
            for (k = 0; k < count; k++)
                if (idx1[k] != 59 && !present[idx1[k]]) {
                    present[idx1[k]] = 1;
                    distinct++;
                }
            CHECKF(nnz == distinct, "nnz_rows %lld, want %lld distinct non-padding rows", (long long)nnz, (long long)distinct);
        }
        CHECK(qembed_param_sparse_grad(spw, &nnz2, rows, 60, vals, n * d) == QEMBED_OK && nnz2 == nnz);
        {
            int sorted = 1, same = 1;
            for (k = 0; k < nnz2; k++) {
                if (k > 0 && rows[k] <= rows[k - 1]) sorted = 0;
                if (rows[k] == 59 || rows[k] < 0 || rows[k] >= n) sorted = 0;
                if (di.grad != NULL && rows[k] >= 0 && rows[k] < n)
                    for (j = 0; j < d; j++)
                        if (vals[k * d + j] != di.grad[rows[k] * d + j]) same = 0;
            }
            CHECKF(sorted, "rows not sorted, distinct, in range and without padding");
            CHECKF(same, "sparse values differ from the dense gradient (scale_grad_by_freq %d)", freq);
        }
        /* exact capacities work */
        CHECK(qembed_param_sparse_grad(spw, &nnz2, rows, nnz, vals, nnz * d) == QEMBED_OK && nnz2 == nnz);
        /* a second backward merges */
        backward_f32(sp, idx2, count, g2, d);
        backward_f32(dn, idx2, count, g2, d);
        di = qt_info_of(qt_param_of(dn, 0));
        CHECK(qembed_param_sparse_grad(spw, &nnz, NULL, 0, NULL, 0) == QEMBED_OK);
        CHECK(qembed_param_sparse_grad(spw, &nnz2, rows, 60, vals, n * d) == QEMBED_OK && nnz2 == nnz);
        {
            int touched[60] = {0}, ok = 1;
            int64_t want_nnz = 0, r;
            for (k = 0; k < count; k++) {
                if (idx1[k] != 59) touched[idx1[k]] = 1;
                if (idx2[k] != 59) touched[idx2[k]] = 1;
            }
            for (r = 0; r < n; r++) want_nnz += touched[r];
            CHECKF(nnz == want_nnz, "after merging: nnz_rows %lld, want %lld", (long long)nnz, (long long)want_nnz);
            for (k = 0; k < nnz2; k++) {
                if (k > 0 && rows[k] <= rows[k - 1]) ok = 0;
                if (rows[k] < 0 || rows[k] >= n || !touched[rows[k]]) {
                    ok = 0;
                    continue;
                }
                for (j = 0; j < d; j++) {
                    /* the order of the float sums may differ from the dense one: 1e-6 of the magnitudes */
                    double mag = 0.0;
                    int64_t q;
                    for (q = 0; q < count; q++) {
                        if (idx1[q] == rows[k]) mag += fabs(g1[q * d + j]);
                        if (idx2[q] == rows[k]) mag += fabs(g2[q * d + j]);
                    }
                    if (di.grad == NULL || fabs((double)vals[k * d + j] - di.grad[rows[k] * d + j]) > 1e-6 * mag) ok = 0;
                }
            }
            CHECKF(ok, "merged sparse gradient differs from the dense one (scale_grad_by_freq %d)", freq);
        }
        /* the weight is untouched by backward */
        CHECK(memcmp(qt_info_of(spw).data, di.data, (size_t)(n * d) * sizeof(float)) == 0);
        CHECK(qembed_embedding_zero_grad(sp) == QEMBED_OK);
        CHECK(qembed_param_sparse_grad(spw, &nnz, NULL, 0, NULL, 0) == QEMBED_OK && nnz == 0);
        CHECK(qembed_param_sparse_grad(spw, &nnz, rows, 60, vals, n * d) == QEMBED_OK && nnz == 0);
        /* after zero_grad it starts over */
        backward_f32(sp, idx1, 3, g1, d);
        CHECK(qembed_param_sparse_grad(spw, &nnz, rows, 60, vals, n * d) == QEMBED_OK);
        {
            int64_t want_nnz = (idx1[0] != idx1[1]) + (idx1[2] != idx1[0] && idx1[2] != idx1[1]) + 1;
            CHECKF(nnz == want_nnz, "nnz %lld after zero_grad and one small batch, want %lld", (long long)nnz,
                   (long long)want_nnz);
        }
        free(idx1);
        free(idx2);
        free(g1);
        free(g2);
        free(vals);
        qembed_embedding_free(sp);
        qembed_embedding_free(dn);
    }
}

/* ---- StableEmbedding ------------------------------------------------------------- */

/* LayerNorm of one row in double: (x - mean) / sqrt(var + 1e-5) * w + b, biased variance */
static void ln_ref(const double *x, int64_t d, const double *w, const double *b, double *y) {
    double mean = 0.0, var = 0.0;
    int64_t j;
    for (j = 0; j < d; j++) mean += x[j];
    mean /= (double)d;
    for (j = 0; j < d; j++) var += (x[j] - mean) * (x[j] - mean);
    var /= (double)d;
    for (j = 0; j < d; j++) y[j] = (x[j] - mean) / sqrt(var + 1e-5) * w[j] + b[j];
}

/* sum(go * StableEmbedding(idx)) in double from double tables */
static double loss_ref(const double *tab, const double *nw, const double *nb, int64_t d, const int64_t *idx,
                       int64_t count, const float *go) {
    double s = 0.0, y[64];
    int64_t k, j;
    for (k = 0; k < count; k++) {
        ln_ref(tab + idx[k] * d, d, nw, nb, y);
        for (j = 0; j < d; j++) s += (double)go[k * d + j] * y[j];
    }
    return s;
}

/* the same loss from the library's float32 forward */
static double loss_lib(qembed_embedding *e, int64_t d, const int64_t *idx, int64_t count, const float *go, float *scratch) {
    double s = 0.0;
    int64_t i;
    if (qembed_embedding_forward(e, idx, QEMBED_DTYPE_I64, count, scratch, QEMBED_DTYPE_F32, count * d) != QEMBED_OK)
        return NAN;
    for (i = 0; i < count * d; i++) s += (double)go[i] * scratch[i];
    return s;
}

static void test_stable_forward(void) {
    static const int dts[3] = {QEMBED_DTYPE_F32, QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16};
    const int64_t n = 25, d = 19, count = 30;
    int wk;
    for (wk = 0; wk < 3; wk++) {
        qembed_embedding_params p = base_params(n, d, 12);
        qembed_embedding *e;
        qembed_param_info w, nw, nb;
        int64_t np = 0, k, j, *idx = random_indices(700 + (uint64_t)wk, count, n);
        float *nwv = normal_array(710, d, 0.5f), *nbv = normal_array(711, d, 0.3f);
        double x[19], wd[19], bd[19], y[19];
        int round;
        p.dtype = dts[wk];
        e = create(&p, 1);
        CHECK(qembed_embedding_num_params(e, &np) == QEMBED_OK && np == 3);
        w = qt_info_of(qt_param_of(e, 0));
        nw = qt_info_of(qt_param_of(e, 1));
        nb = qt_info_of(qt_param_of(e, 2));
        CHECK(strcmp(w.name, "weight") == 0 && strcmp(nw.name, "norm.weight") == 0 && strcmp(nb.name, "norm.bias") == 0);
        CHECK(w.dtype == dts[wk] && w.ndim == 2);
        CHECK(nw.dtype == QEMBED_DTYPE_F32 && nw.ndim == 1 && nw.shape[0] == d && nw.shape[1] == 1 && nw.numel == d);
        CHECK(nb.dtype == QEMBED_DTYPE_F32 && nb.ndim == 1 && nb.shape[0] == d && nb.shape[1] == 1 && nb.numel == d);
        CHECK(nw.requires_grad && nb.requires_grad && !nw.sparse && !nb.sparse && nw.grad == NULL && nb.grad == NULL);
        for (j = 0; j < d; j++)
            if (((float *)nw.data)[j] != 1.0f || ((float *)nb.data)[j] != 0.0f) break;
        CHECKF(j == d, "LayerNorm not initialized to ones / zeros");
        {
            bool stable = false;
            qembed_embedding_params g;
            g.struct_size = sizeof g;
            CHECK(qembed_embedding_get_params(e, &g, &stable) == QEMBED_OK && stable == true);
        }
        for (round = 0; round < 2; round++) {
            int od;
            if (round == 1) { /* a learned affine part */
                CHECK(qembed_param_load(qt_param_of(e, 1), nwv, QEMBED_DTYPE_F32, d) == QEMBED_OK);
                CHECK(qembed_param_load(qt_param_of(e, 2), nbv, QEMBED_DTYPE_F32, d) == QEMBED_OK);
            }
            for (j = 0; j < d; j++) {
                wd[j] = ((float *)nw.data)[j];
                bd[j] = ((float *)nb.data)[j];
            }
            for (od = 0; od < 3; od++) {
                const int out_dt = dts[od];
                void *out = xmalloc((size_t)(count * d) * qembed_dtype_size(out_dt));
                int ok = 1;
                double worst = 0.0;
                CHECK(qembed_embedding_forward(e, idx, QEMBED_DTYPE_I64, count, out, out_dt, count * d) == QEMBED_OK);
                for (k = 0; k < count; k++) {
                    for (j = 0; j < d; j++) x[j] = qt_load_f(w.data, w.dtype, idx[k] * d + j);
                    ln_ref(x, d, wd, bd, y);
                    for (j = 0; j < d; j++) {
                        const float got = qt_load_f(out, out_dt, k * d + j);
                        if (w.dtype == QEMBED_DTYPE_F32 && out_dt == QEMBED_DTYPE_F32) {
                            double err = fabs(got - y[j]) / (fabs(y[j]) > 1.0 ? fabs(y[j]) : 1.0);
                            if (err > worst) worst = err;
                            if (err > 1e-5) ok = 0;
                        } else {
                            /* LayerNorm in float32, cast to the weight dtype, then to out_dtype: allow one
                             * unit in the last place of each rounding */
                            float want = (float)y[j];
                            double ulp;
                            if (w.dtype != QEMBED_DTYPE_F32) want = qt_round_to(want, w.dtype);
                            want = qt_round_to(want, out_dt);
                            ulp = (w.dtype == QEMBED_DTYPE_BF16 || out_dt == QEMBED_DTYPE_BF16) ? 0x1p-7
                                  : (w.dtype == QEMBED_DTYPE_F16 || out_dt == QEMBED_DTYPE_F16) ? 0x1p-10 : 0x1p-23;
                            if (fabs((double)got - want) > ulp * (fabs(want) > 6.1e-5 ? fabs(want) : 6.1e-5) * 1.01 + 1e-5 * fabs(y[j]))
                                ok = 0;
                            /* f16 weights: the output went through f16 */
                            if (w.dtype == QEMBED_DTYPE_F16 && qt_round_to(got, QEMBED_DTYPE_F16) != got) ok = 0;
                            if (w.dtype == QEMBED_DTYPE_BF16 && qt_round_to(got, QEMBED_DTYPE_BF16) != got) ok = 0;
                        }
                    }
                }
                CHECKF(ok, "weight %s, out %s, affine %d: LayerNorm output differs (worst rel %g)",
                       qembed_dtype_name(w.dtype), qembed_dtype_name(out_dt), round, worst);
                free(out);
            }
        }
        /* padding row: LayerNorm of zeros = bias */
        {
            qembed_embedding_params pp = base_params(6, 4, 2);
            qembed_embedding *ep;
            int64_t pi[2] = {2, 2};
            float *o;
            pp.padding_idx = 2;
            ep = create(&pp, 1);
            o = forward_f32(ep, pi, 2, 4);
            if (o) {
                for (j = 0; j < 8; j++)
                    if (o[j] != 0.0f) break;
                CHECKF(j == 8, "LayerNorm of the zero padding row is not the (zero) bias");
                free(o);
            }
            qembed_embedding_free(ep);
        }
        free(idx);
        free(nwv);
        free(nbv);
        qembed_embedding_free(e);
    }
}

static void test_stable_backward(void) {
    const int64_t n = 5, d = 4, count = 6;
    int64_t idx[6] = {0, 2, 2, 4, 1, 2};
    qembed_embedding_params p = base_params(n, d, 21);
    qembed_embedding *e;
    float *go = normal_array(800, count * d, 1.0f), *nwv = normal_array(801, d, 0.6f), *nbv = normal_array(802, d, 0.4f);
    float scratch[64];
    qembed_param_info info[3];
    float *lib_grad[3];
    double tab[20], nw[4], nb[4];
    int pi;
    int64_t i;
    double worst_ref = 0.0, worst_lib = 0.0;
    int ok_ref = 1, ok_lib = 1;
    for (i = 0; i < d; i++) nwv[i] += 1.0f;
    e = create(&p, 1);
    CHECK(qembed_param_load(qt_param_of(e, 1), nwv, QEMBED_DTYPE_F32, d) == QEMBED_OK);
    CHECK(qembed_param_load(qt_param_of(e, 2), nbv, QEMBED_DTYPE_F32, d) == QEMBED_OK);
    backward_f32(e, idx, count, go, d);
    for (pi = 0; pi < 3; pi++) {
        info[pi] = qt_info_of(qt_param_of(e, pi));
        CHECKF(info[pi].grad != NULL, "%s has no gradient", info[pi].name);
        if (info[pi].grad == NULL) return;
        lib_grad[pi] = (float *)raw_copy(info[pi].grad, (size_t)info[pi].numel * sizeof(float));
    }
    for (i = 0; i < n * d; i++) tab[i] = ((float *)info[0].data)[i];
    for (i = 0; i < d; i++) {
        nw[i] = ((float *)info[1].data)[i];
        nb[i] = ((float *)info[2].data)[i];
    }
    /* row 3 is never looked up: zero gradient */
    for (i = 0; i < d; i++) CHECK(lib_grad[0][3 * d + i] == 0.0f);
    for (pi = 0; pi < 3; pi++) {
        double *target = pi == 0 ? tab : pi == 1 ? nw : nb;
        float *data = (float *)info[pi].data;
        for (i = 0; i < info[pi].numel; i++) {
            const double g = lib_grad[pi][i];
            double fd_ref, fd_lib, lp, lm, lp2, lm2, d1, d2;
            const double keep = target[i];
            const float keepf = data[i];
            float up, dn;
            /* (1) central difference in double of the double reference, h = 1e-6 */
            target[i] = keep + 1e-6;
            lp = loss_ref(tab, nw, nb, d, idx, count, go);
            target[i] = keep - 1e-6;
            lm = loss_ref(tab, nw, nb, d, idx, count, go);
            target[i] = keep;
            fd_ref = (lp - lm) / 2e-6;
            if (fabs(g - fd_ref) > 1e-4 * (fabs(fd_ref) > 1.0 ? fabs(fd_ref) : 1.0)) ok_ref = 0;
            if (fabs(g - fd_ref) > worst_ref) worst_ref = fabs(g - fd_ref);
            /* (2) perturbing the parameter itself and running the library's forward (float32), with
             * Richardson extrapolation over h = 1e-2 and 5e-3; the steps actually taken are the
             * float32 differences */
            up = keepf + 1e-2f;
            dn = keepf - 1e-2f;
            data[i] = up;
            lp = loss_lib(e, d, idx, count, go, scratch);
            data[i] = dn;
            lm = loss_lib(e, d, idx, count, go, scratch);
            d1 = (lp - lm) / ((double)up - dn);
            up = keepf + 5e-3f;
            dn = keepf - 5e-3f;
            data[i] = up;
            lp2 = loss_lib(e, d, idx, count, go, scratch);
            data[i] = dn;
            lm2 = loss_lib(e, d, idx, count, go, scratch);
            d2 = (lp2 - lm2) / ((double)up - dn);
            data[i] = keepf;
            fd_lib = (4.0 * d2 - d1) / 3.0;
            if (fabs(g - fd_lib) > 5e-4 * (fabs(fd_lib) > 1.0 ? fabs(fd_lib) : 1.0)) ok_lib = 0;
            if (fabs(g - fd_lib) > worst_lib) worst_lib = fabs(g - fd_lib);
        }
    }
    CHECKF(ok_ref, "StableEmbedding gradients vs finite differences of the double reference: worst |diff| %g", worst_ref);
    CHECKF(ok_lib, "StableEmbedding gradients vs finite differences of the library's forward: worst |diff| %g", worst_lib);
    /* the parameters are back to what they were */
    {
        qembed_embedding *fresh = create(&p, 1);
        CHECK(memcmp(info[0].data, qt_info_of(qt_param_of(fresh, 0)).data, (size_t)(n * d) * sizeof(float)) == 0);
        qembed_embedding_free(fresh);
    }
    /* a second backward accumulates: twice the gradient for the same data (up to the order of the float sums) */
    backward_f32(e, idx, count, go, d);
    for (pi = 0; pi < 3; pi++) {
        qembed_param_info again = qt_info_of(qt_param_of(e, pi));
        int ok = 1;
        for (i = 0; i < again.numel; i++)
            if (!close_rel(again.grad[i], 2.0 * lib_grad[pi][i], 1e-6, 1e-3)) ok = 0;
        CHECKF(ok, "%s: the second backward did not add the same gradient", again.name);
    }
    CHECK(qembed_embedding_zero_grad(e) == QEMBED_OK);
    for (pi = 0; pi < 3; pi++) {
        qembed_param_info z = qt_info_of(qt_param_of(e, pi));
        for (i = 0; i < z.numel; i++)
            if (z.grad[i] != 0.0f) break;
        CHECKF(i == z.numel, "%s not zeroed", z.name);
        free(lib_grad[pi]);
    }
    /* sparse StableEmbedding: the weight gradient is sparse, the LayerNorm's dense, same values */
    {
        qembed_embedding *dn, *sp;
        int64_t nnz = 0, rows[5];
        float vals[20];
        qembed_param_info dw;
        int ok = 1;
        p.sparse = false;
        dn = create(&p, 1);
        p.sparse = true;
        sp = create(&p, 1);
        backward_f32(dn, idx, count, go, d);
        backward_f32(sp, idx, count, go, d);
        dw = qt_info_of(qt_param_of(dn, 0));
        CHECK(qembed_param_sparse_grad(qt_param_of(sp, 0), &nnz, rows, 5, vals, 20) == QEMBED_OK && nnz == 4);
        for (i = 0; i < nnz && dw.grad != NULL; i++)
            if (memcmp(vals + i * d, dw.grad + rows[i] * d, (size_t)d * sizeof(float)) != 0) ok = 0;
        CHECKF(ok, "sparse StableEmbedding weight gradient differs from the dense one");
        for (pi = 1; pi < 3; pi++) {
            qembed_param_info a = qt_info_of(qt_param_of(dn, pi)), b = qt_info_of(qt_param_of(sp, pi));
            CHECK(!b.sparse && a.grad != NULL && b.grad != NULL &&
                  memcmp(a.grad, b.grad, (size_t)d * sizeof(float)) == 0);
        }
        qembed_embedding_free(dn);
        qembed_embedding_free(sp);
    }
    free(go);
    free(nwv);
    free(nbv);
    qembed_embedding_free(e);
}

/* ---- overrides ---------------------------------------------------------------- */

static void test_overrides(void) {
    static const double valid[QEMBED_OVERRIDE_COUNT] = {8.0, 0.5, 0.5, 0.25, 1e-6, 0.125};
    static const double valid2[QEMBED_OVERRIDE_COUNT] = {32.0, 0.0, 0.0, 0.999, 0.0, 0.0};
    static const struct { int key; double v; } invalid[] = {
        {QEMBED_OVERRIDE_OPTIM_BITS, 16.0}, {QEMBED_OVERRIDE_OPTIM_BITS, 0.0}, {QEMBED_OVERRIDE_OPTIM_BITS, 8.5},
        {QEMBED_OVERRIDE_OPTIM_BITS, NAN},  {QEMBED_OVERRIDE_LR, -1.0},        {QEMBED_OVERRIDE_LR, NAN},
        {QEMBED_OVERRIDE_LR, INFINITY},     {QEMBED_OVERRIDE_BETA1, 1.0},      {QEMBED_OVERRIDE_BETA1, -0.1},
        {QEMBED_OVERRIDE_BETA1, NAN},       {QEMBED_OVERRIDE_BETA2, 1.0},      {QEMBED_OVERRIDE_BETA2, 1.5},
        {QEMBED_OVERRIDE_EPS, -1e-8},       {QEMBED_OVERRIDE_EPS, NAN},        {QEMBED_OVERRIDE_WEIGHT_DECAY, -1.0},
        {QEMBED_OVERRIDE_WEIGHT_DECAY, -INFINITY},
    };
    int stable;
    for (stable = 0; stable < 2; stable++) {
        qembed_embedding_params p = base_params(8, 4, 1);
        qembed_embedding *e = create(&p, stable);
        qembed_param *w = qt_param_of(e, 0);
        double v = -1.0;
        bool set = false;
        int key;
        size_t k;
        /* the layer registers optim_bits = 32 on its weight, and nothing else */
        CHECK(qembed_param_get_override(w, QEMBED_OVERRIDE_OPTIM_BITS, &v, &set) == QEMBED_OK && set && v == 32.0);
        for (key = 1; key < QEMBED_OVERRIDE_COUNT; key++) {
            v = -1.0;
            set = true;
            CHECK(qembed_param_get_override(w, key, &v, &set) == QEMBED_OK && !set && v == 0.0);
        }
        if (stable) {
            int pi;
            for (pi = 1; pi < 3; pi++)
                for (key = 0; key < QEMBED_OVERRIDE_COUNT; key++) {
                    v = -1.0;
                    set = true;
                    CHECKF(qembed_param_get_override(qt_param_of(e, pi), key, &v, &set) == QEMBED_OK && !set && v == 0.0,
                           "param %d key %d has an override", pi, key);
                }
        }
        /* set / get / clear every key */
        for (key = 0; key < QEMBED_OVERRIDE_COUNT; key++) {
            CHECK(qembed_param_set_override(w, key, valid[key]) == QEMBED_OK);
            CHECK(qembed_param_get_override(w, key, &v, &set) == QEMBED_OK && set && v == valid[key]);
            CHECK(qembed_param_set_override(w, key, valid2[key]) == QEMBED_OK);
            CHECK(qembed_param_get_override(w, key, &v, &set) == QEMBED_OK && set && v == valid2[key]);
            CHECK(qembed_param_set_override(w, key, valid[key]) == QEMBED_OK);
        }
        for (key = 0; key < QEMBED_OVERRIDE_COUNT; key++) {
            CHECK(qembed_param_get_override(w, key, &v, &set) == QEMBED_OK && set && v == valid[key]);
            CHECK(qembed_param_clear_override(w, key) == QEMBED_OK);
            CHECK(qembed_param_get_override(w, key, &v, &set) == QEMBED_OK && !set && v == 0.0);
            CHECK(qembed_param_clear_override(w, key) == QEMBED_OK); /* clearing twice is fine */
            CHECK(qembed_param_set_override(w, key, valid[key]) == QEMBED_OK);
        }
        /* invalid values are rejected and leave the previous value */
        for (k = 0; k < sizeof invalid / sizeof invalid[0]; k++) {
            qembed_status st;
            qembed_clear_error();
            st = qembed_param_set_override(w, invalid[k].key, invalid[k].v);
            CHECKF(st == QEMBED_ERR_INVALID_ARGUMENT || st == QEMBED_ERR_NON_FINITE, "key %d value %g: status %d",
                   invalid[k].key, invalid[k].v, (int)st);
            CHECKF(qembed_last_error()[0] != '\0', "key %d value %g: no message", invalid[k].key, invalid[k].v);
            CHECK(qembed_param_get_override(w, invalid[k].key, &v, &set) == QEMBED_OK && set && v == valid[invalid[k].key]);
        }
        /* overrides of one parameter are its own */
        if (stable) {
            CHECK(qembed_param_get_override(qt_param_of(e, 1), QEMBED_OVERRIDE_LR, &v, &set) == QEMBED_OK && !set);
        } else {
            qembed_embedding *other = create(&p, 0);
            CHECK(qembed_param_get_override(qt_param_of(other, 0), QEMBED_OVERRIDE_LR, &v, &set) == QEMBED_OK && !set);
            CHECK(qembed_param_get_override(qt_param_of(other, 0), QEMBED_OVERRIDE_OPTIM_BITS, &v, &set) == QEMBED_OK && set &&
                  v == 32.0);
            qembed_embedding_free(other);
        }
        qembed_embedding_free(e);
    }
}

/* ---- param_load, get_params, reset_parameters ------------------------------------ */

static void test_param_load(void) {
    static const int dts[3] = {QEMBED_DTYPE_F32, QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16};
    const int64_t n = 9, d = 11;
    float *src = normal_array(900, n * d, 0.8f);
    uint16_t h[99], b[99];
    int64_t i;
    int wk;
    for (i = 0; i < n * d; i++) {
        h[i] = qt_f32_to_f16(src[i]);
        b[i] = qt_f32_to_bf16(src[i]);
    }
    for (wk = 0; wk < 3; wk++) {
        qembed_embedding_params p = base_params(n, d, 4);
        qembed_embedding *e;
        qembed_param_info w;
        int sk;
        p.dtype = dts[wk];
        p.padding_idx = 0;
        e = create(&p, 0);
        w = qt_info_of(qt_param_of(e, 0));
        for (sk = 0; sk < 3; sk++) {
            const void *s = sk == 0 ? (const void *)src : sk == 1 ? (const void *)h : (const void *)b;
            int ok = 1;
            CHECKF(qembed_param_load(qt_param_of(e, 0), s, dts[sk], n * d) == QEMBED_OK, "%s", qembed_last_error());
            for (i = 0; i < n * d; i++) {
                const float v = qt_load_f(s, dts[sk], i);
                if (qt_load_bits(w.data, w.dtype, i) != qt_store_bits(v, w.dtype)) ok = 0;
            }
            CHECKF(ok, "load %s into %s", qembed_dtype_name(dts[sk]), qembed_dtype_name(w.dtype));
        }
        /* the loaded values are what forward sees (padding row included, as loaded) */
        {
            int64_t idx[2] = {0, 8};
            float *o = forward_f32(e, idx, 2, d);
            if (o) {
                for (i = 0; i < d; i++)
                    if (o[i] != qt_load_f(w.data, w.dtype, i) || o[d + i] != qt_load_f(w.data, w.dtype, 8 * d + i)) break;
                CHECK(i == d);
                CHECK(o[0] != 0.0f);
                free(o);
            }
        }
        qembed_embedding_free(e);
    }
    free(src);
}

static void test_get_params(void) {
    int stable;
    for (stable = 0; stable < 2; stable++) {
        qembed_embedding_params p = base_params(17, 5, 77), g, g2;
        qembed_embedding *e, *e2;
        bool is_stable = !stable;
        p.padding_idx = -1;
        p.max_norm = 2.5;
        p.norm_type = 3.0;
        p.scale_grad_by_freq = true;
        p.sparse = true;
        p.dtype = QEMBED_DTYPE_BF16;
        e = create(&p, stable);
        memset(&g, 0x5A, sizeof g);
        g.struct_size = sizeof g;
        CHECK(qembed_embedding_get_params(e, &g, &is_stable) == QEMBED_OK);
        CHECK(is_stable == (stable != 0));
        CHECK(g.struct_size == sizeof g);
        CHECK(g.num_embeddings == 17 && g.embedding_dim == 5);
        CHECKF(g.padding_idx == 16, "padding_idx %lld", (long long)g.padding_idx);
        CHECK(g.max_norm == 2.5 && g.norm_type == 3.0);
        CHECK(g.scale_grad_by_freq == true && g.sparse == true);
        CHECK(g.dtype == QEMBED_DTYPE_BF16);
        CHECK(g.weight == NULL);
        CHECK(g.freeze == false);
        /* round trip: the returned configuration creates the same layer (same seed, same table) */
        g.seed = 77;
        e2 = create(&g, stable);
        g2.struct_size = sizeof g2;
        CHECK(qembed_embedding_get_params(e2, &g2, &is_stable) == QEMBED_OK);
        CHECK(g2.num_embeddings == g.num_embeddings && g2.embedding_dim == g.embedding_dim &&
              g2.padding_idx == g.padding_idx && g2.max_norm == g.max_norm && g2.norm_type == g.norm_type &&
              g2.scale_grad_by_freq == g.scale_grad_by_freq && g2.sparse == g.sparse && g2.dtype == g.dtype);
        CHECK(memcmp(qt_info_of(qt_param_of(e, 0)).data, qt_info_of(qt_param_of(e2, 0)).data, 17 * 5 * 2) == 0);
        qembed_embedding_free(e);
        qembed_embedding_free(e2);
    }
    /* defaults come back as defaults */
    {
        qembed_embedding_params p = base_params(3, 2, 0), g;
        qembed_embedding *e = create(&p, 0);
        bool st = true;
        g.struct_size = sizeof g;
        CHECK(qembed_embedding_get_params(e, &g, &st) == QEMBED_OK);
        CHECK(g.padding_idx == QEMBED_NO_PADDING && g.max_norm == 0.0 && g.norm_type == 2.0 && !g.sparse &&
              !g.scale_grad_by_freq && g.dtype == QEMBED_DTYPE_F32 && !st);
        qembed_embedding_free(e);
    }
}

static void test_reset_parameters(void) {
    int stable;
    for (stable = 0; stable < 2; stable++) {
        const int64_t n = 40, d = 8;
        qembed_embedding_params p = base_params(n, d, 5);
        qembed_embedding *e, *fresh6;
        float *orig, *junk = normal_array(1000, n * d, 2.0f), *go = normal_array(1001, 3 * d, 1.0f), *grad_before;
        float ones[8] = {3, 3, 3, 3, 3, 3, 3, 3};
        int64_t idx[3] = {1, 2, 1}, j;
        qembed_param_info w;
        p.padding_idx = 2;
        e = create(&p, stable);
        orig = qt_weight_copy(e);
        backward_f32(e, idx, 3, go, d);
        w = qt_info_of(qt_param_of(e, 0));
        grad_before = (float *)raw_copy(w.grad, (size_t)(n * d) * sizeof(float));
        CHECK(qembed_param_load(qt_param_of(e, 0), junk, QEMBED_DTYPE_F32, n * d) == QEMBED_OK);
        if (stable) {
            CHECK(qembed_param_load(qt_param_of(e, 1), ones, QEMBED_DTYPE_F32, d) == QEMBED_OK);
            CHECK(qembed_param_load(qt_param_of(e, 2), ones, QEMBED_DTYPE_F32, d) == QEMBED_OK);
        }
        CHECK(memcmp(w.data, orig, (size_t)(n * d) * sizeof(float)) != 0);
        /* the same seed redraws the same table */
        CHECK(qembed_embedding_reset_parameters(e, 5) == QEMBED_OK);
        CHECK(memcmp(w.data, orig, (size_t)(n * d) * sizeof(float)) == 0);
        for (j = 0; j < d; j++) CHECK(((float *)w.data)[2 * d + j] == 0.0f);
        if (stable) {
            qembed_param_info nw = qt_info_of(qt_param_of(e, 1)), nb = qt_info_of(qt_param_of(e, 2));
            for (j = 0; j < d; j++)
                if (((float *)nw.data)[j] != 1.0f || ((float *)nb.data)[j] != 0.0f) break;
            CHECKF(j == d, "reset_parameters did not reset the LayerNorm");
        }
        /* gradients are kept */
        CHECK(memcmp(qt_info_of(qt_param_of(e, 0)).grad, grad_before, (size_t)(n * d) * sizeof(float)) == 0);
        /* another seed: the table of a fresh layer with that seed, padding row zero */
        CHECK(qembed_embedding_reset_parameters(e, 6) == QEMBED_OK);
        p.seed = 6;
        fresh6 = create(&p, stable);
        CHECK(memcmp(w.data, qt_info_of(qt_param_of(fresh6, 0)).data, (size_t)(n * d) * sizeof(float)) == 0);
        CHECK(memcmp(w.data, orig, (size_t)(n * d) * sizeof(float)) != 0);
        for (j = 0; j < d; j++) CHECK(((float *)w.data)[2 * d + j] == 0.0f);
        qembed_embedding_free(fresh6);
        /* a pretrained layer resets to Xavier too */
        {
            qembed_embedding *pre;
            p.weight = junk;
            p.seed = 5;
            pre = create(&p, stable);
            CHECK(qembed_embedding_reset_parameters(pre, 5) == QEMBED_OK);
            CHECK(memcmp(qt_info_of(qt_param_of(pre, 0)).data, orig, (size_t)(n * d) * sizeof(float)) == 0);
            qembed_embedding_free(pre);
        }
        free(orig);
        free(junk);
        free(go);
        free(grad_before);
        qembed_embedding_free(e);
    }
}

/* ---- large batches (the library's parallel paths) ------------------------------------ */

/* forward and dense backward of a large batch under 1, 2 and 4 worker threads, and
 * StableEmbedding's gradients against the analytic LayerNorm backward in double:
 *   xhat = (x - mean) * rstd, dW = sum g xhat, dB = sum g,
 *   dx = rstd * (g w - mean(g w) - xhat * mean(g w xhat)) */
static void test_large_batches(void) {
    const int64_t n = 1000, d = 16, count = 10000;
    int64_t *idx = random_indices(1100, count, n);
    float *go = normal_array(1101, count * d, 1.0f);
    static const int threads[3] = {1, 2, 4};
    int ti;
    idx[0] = 5; /* padding */
    for (ti = 0; ti < 3; ti++) {
        qembed_embedding_params p = base_params(n, d, 13);
        qembed_embedding *e, *s;
        float *w, *out, *want = (float *)calloc((size_t)(n * d), sizeof(float));
        qembed_param_info gi;
        int64_t k, j;
        int ok = 1;
        if (want == NULL) exit(2);
        CHECK(qembed_set_num_threads(threads[ti]) == QEMBED_OK);
        p.padding_idx = 5;
        e = create(&p, 0);
        w = qt_weight_copy(e);
        out = forward_f32(e, idx, count, d);
        for (k = 0; out != NULL && k < count; k++)
            if (memcmp(out + k * d, w + idx[k] * d, (size_t)d * sizeof(float)) != 0) ok = 0;
        CHECKF(out != NULL && ok, "%d threads: large forward is not exact", threads[ti]);
        backward_f32(e, idx, count, go, d);
        for (k = 0; k < count; k++)
            if (idx[k] != 5)
                for (j = 0; j < d; j++) want[idx[k] * d + j] += go[k * d + j];
        gi = qt_info_of(qt_param_of(e, 0));
        CHECKF(gi.grad != NULL && memcmp(gi.grad, want, (size_t)(n * d) * sizeof(float)) == 0,
               "%d threads: large dense backward differs from the batch-order sums", threads[ti]);
        free(out);
        /* StableEmbedding: gradients of all three parameters vs the analytic double backward */
        p.padding_idx = QEMBED_NO_PADDING;
        s = create(&p, 1);
        {
            float *nwv = normal_array(1102, d, 0.3f), *nbv = normal_array(1103, d, 0.3f);
            double *gx = (double *)calloc((size_t)(n * d), sizeof(double)), *mx = (double *)calloc((size_t)(n * d), sizeof(double));
            double gw[16] = {0}, gb[16] = {0}, mw[16] = {0}, mb[16] = {0};
            qembed_param_info iw, inw, inb;
            double worst = 0.0;
            if (gx == NULL || mx == NULL) exit(2);
            for (j = 0; j < d; j++) nwv[j] += 1.0f;
            CHECK(qembed_param_load(qt_param_of(s, 1), nwv, QEMBED_DTYPE_F32, d) == QEMBED_OK);
            CHECK(qembed_param_load(qt_param_of(s, 2), nbv, QEMBED_DTYPE_F32, d) == QEMBED_OK);
            backward_f32(s, idx, count, go, d);
            iw = qt_info_of(qt_param_of(s, 0));
            inw = qt_info_of(qt_param_of(s, 1));
            inb = qt_info_of(qt_param_of(s, 2));
            for (k = 0; k < count; k++) {
                const float *x = (const float *)iw.data + idx[k] * d;
                const float *g = go + k * d;
                double mean = 0.0, var = 0.0, rstd, a = 0.0, b = 0.0, xh[16];
                for (j = 0; j < d; j++) mean += x[j];
                mean /= (double)d;
                for (j = 0; j < d; j++) var += (x[j] - mean) * (x[j] - mean);
                var /= (double)d;
                rstd = 1.0 / sqrt(var + 1e-5);
                for (j = 0; j < d; j++) {
                    xh[j] = (x[j] - mean) * rstd;
                    gw[j] += g[j] * xh[j];
                    mw[j] += fabs(g[j] * xh[j]);
                    gb[j] += g[j];
                    mb[j] += fabs(g[j]);
                    a += g[j] * nwv[j];
                    b += g[j] * nwv[j] * xh[j];
                }
                a /= (double)d;
                b /= (double)d;
                for (j = 0; j < d; j++) {
                    gx[idx[k] * d + j] += rstd * (g[j] * nwv[j] - a - xh[j] * b);
                    mx[idx[k] * d + j] += rstd * (fabs(g[j] * nwv[j]) + fabs(a) + fabs(xh[j] * b));
                }
            }
            ok = iw.grad != NULL && inw.grad != NULL && inb.grad != NULL;
            for (j = 0; ok && j < d; j++) {
                const double e1 = fabs(inw.grad[j] - gw[j]) / mw[j], e2 = fabs(inb.grad[j] - gb[j]) / mb[j];
                if (e1 > worst) worst = e1;
                if (e2 > worst) worst = e2;
            }
            for (k = 0; ok && k < n * d; k++) {
                const double e3 = mx[k] > 0.0 ? fabs(iw.grad[k] - gx[k]) / mx[k] : fabs(iw.grad[k]);
                if (e3 > worst) worst = e3;
            }
            CHECKF(ok && worst <= 1e-5, "%d threads: StableEmbedding large backward off by %g of the magnitudes",
                   threads[ti], worst);
            free(nwv);
            free(nbv);
            free(gx);
            free(mx);
        }
        free(w);
        free(want);
        qembed_embedding_free(e);
        qembed_embedding_free(s);
    }
    CHECK(qembed_set_num_threads(0) == QEMBED_OK);
    free(idx);
    free(go);
}

/* StableEmbedding with max_norm: rows are renormalized first, then normalized */
static void test_stable_max_norm(void) {
    const int64_t n = 12, d = 6;
    float *table = normal_array(1200, n * d, 1.0f);
    int64_t idx[5] = {2, 9, 2, 11, 0}, k, j, r;
    qembed_embedding_params p = base_params(n, d, 0);
    qembed_embedding *e;
    float *before, *after, *out;
    int ok = 1;
    p.weight = table;
    p.max_norm = 0.75;
    e = create(&p, 1);
    before = qt_weight_copy(e);
    out = forward_f32(e, idx, 5, d);
    after = qt_weight_copy(e);
    for (r = 0; r < n; r++) {
        const double norm = pnorm(before + r * d, d, 2.0);
        const int used = r == 2 || r == 9 || r == 11 || r == 0;
        for (j = 0; j < d; j++) {
            const double want = used && norm > 0.75 ? before[r * d + j] * (0.75 / (norm + 1e-7)) : before[r * d + j];
            if (!close_rel(after[r * d + j], want, 1e-6, 1e-30)) ok = 0;
        }
    }
    CHECKF(ok, "StableEmbedding max_norm: rows not renormalized as documented");
    for (k = 0; out != NULL && k < 5; k++) {
        double x[6], y[6], one[6] = {1, 1, 1, 1, 1, 1}, zero[6] = {0, 0, 0, 0, 0, 0};
        for (j = 0; j < d; j++) x[j] = after[idx[k] * d + j];
        ln_ref(x, d, one, zero, y);
        for (j = 0; j < d; j++)
            if (!close_rel(out[k * d + j], y[j], 1e-5, 1.0)) ok = 0;
    }
    CHECKF(out != NULL && ok, "StableEmbedding max_norm: output is not LayerNorm of the renormalized rows");
    free(out);
    free(before);
    free(after);
    free(table);
    qembed_embedding_free(e);
}

int main(void) {
    test_params_init();
    test_create_xavier();
    test_padding();
    test_forward();
    test_pretrained();
    test_max_norm();
    test_dense_backward();
    test_sparse_backward();
    test_stable_forward();
    test_stable_backward();
    test_overrides();
    test_param_load();
    test_get_params();
    test_reset_parameters();
    test_large_batches();
    test_stable_max_norm();
    return qt_summary("test_embedding");
}
