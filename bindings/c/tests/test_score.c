/* test_score.c - scoring queries against every row, and top-k, through the C
 * API (include/qembed.h, "Scoring: queries against every row"):
 *   - DOT and COSINE scores of f32/f16/bf16 queries against f32/f16/bf16
 *     float layers and quantized tables (int8, fp4, nf4, nested; rows as
 *     qembed_qembedding_forward returns them), dims 1..259, values spanning
 *     2^-8..2^8: bit for bit equal to the header's summation order
 *     recomputed here (products rounded to float32, 8 lanes, lane l taking
 *     j = l, l + 8, ..., combined ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)); norms
 *     the square roots of the same sums of squares; cosine = dot /
 *     (max(|q|, 1e-8) * max(|r|, 1e-8))), and within the header's bound
 *     gamma(dim/8 + 3) * sum |q_j w_j| of a double-precision dot product;
 *   - top-k against a sort of the score matrix (score descending, ties to
 *     the lower row index; duplicate rows make ties; NaN scores from
 *     overflowing products rank last), its scores bit-equal to the matrix;
 *   - one query at a time equals the batch; 1, 2, 3 and 8 threads give the
 *     same bits; a StableEmbedding scores its raw rows; scoring does not
 *     renormalize a max_norm layer;
 *   - bad inputs: the right status, a message naming the argument, outputs
 *     and layers untouched; overflowing sizes run in a child process. */
#define _POSIX_C_SOURCE 200809L
#include <float.h>
#include <limits.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qembed.h"
#include "qtest.h"

#if defined(__FAST_MATH__)
#error "the float32 references need IEEE semantics (no -ffast-math)"
#endif
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "the float32 references need FLT_EVAL_METHOD 0 (every operation rounded to float)"
#endif

#define F32 QEMBED_DTYPE_F32
#define F16 QEMBED_DTYPE_F16
#define BF16 QEMBED_DTYPE_BF16
#define I64 QEMBED_DTYPE_I64
#define DOT QEMBED_SCORE_DOT
#define COS QEMBED_SCORE_COSINE

static const int FDT[3] = {F32, F16, BF16};
static long zero_sign_notes = 0;

static const char *dn(int dt) { return qembed_dtype_name(dt); }
static const char *mn(int m) { return m == DOT ? "dot" : m == COS ? "cosine" : "?"; }

/* ---- helpers ------------------------------------------------------------------ */

static float wide_value(qt_rng *r) {
    uint64_t u = qt_next(r);
    if (u % 31 == 0) return ((u >> 8) & 1) ? 0.0f : -0.0f;
    return ldexpf(qt_normal(r), (int)((u >> 16) % 17) - 8);
}

/* a rows x d table: wide values, row 7 (if any) zero, rows 20 and 33 copies of row 3 (ties) */
static float *score_table(uint64_t seed, int64_t rows, int64_t d) {
    qt_rng r = qt_rng_make(seed);
    float *t = (float *)xmalloc((size_t)(rows * d) * sizeof(float));
    int64_t i, j;
    for (i = 0; i < rows * d; i++) t[i] = wide_value(&r);
    if (rows > 7)
        for (j = 0; j < d; j++) t[7 * d + j] = 0.0f;
    for (i = 20; i < rows; i += 13)
        if (rows > 3) memcpy(t + i * d, t + 3 * d, (size_t)d * sizeof(float));
    return t;
}

static float *q_rows(const qembed_qembedding *q, int64_t n, int64_t d) {
    int64_t *ids = (int64_t *)xmalloc((size_t)n * sizeof(int64_t)), i;
    float *R = (float *)xmalloc((size_t)(n * d) * sizeof(float));
    for (i = 0; i < n; i++) ids[i] = i;
    if (qembed_qembedding_forward(q, ids, I64, n, R, F32, n * d) != QEMBED_OK) {
        fprintf(stderr, "qembed_qembedding_forward: %s\n", qembed_last_error());
        exit(2);
    }
    free(ids);
    return R;
}

/* ---- the header's summation order ---------------------------------------------------- */

/* products rounded to float32 (the build has -ffp-contract=off and FLT_EVAL_METHOD 0: no fma,
 * no excess precision), 8 lanes from +0, combined ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)) */
static float dot8(const float *q, const float *w, int64_t d) {
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float a, b, c, e, left, right;
    int64_t j;
    for (j = 0; j < d; j++) {
        const float p = q[j] * w[j];
        lane[j & 7] = lane[j & 7] + p;
    }
    a = lane[0] + lane[4];
    b = lane[2] + lane[6];
    c = lane[1] + lane[5];
    e = lane[3] + lane[7];
    left = a + b;
    right = c + e;
    return left + right;
}

static float norm8(const float *x, int64_t d) { return sqrtf(dot8(x, x, d)); }

static float ref_score(const float *q, const float *w, int64_t d, int metric) {
    const float dot = dot8(q, w, d);
    if (metric == DOT) return dot;
    {
        const float nq = fmaxf(norm8(q, d), 1e-8f), nr = fmaxf(norm8(w, d), 1e-8f);
        const float den = nq * nr;
        return dot / den;
    }
}

static double gamma_n(double n) {
    const double u = ldexp(1.0, -24);
    return n * u / (1.0 - n * u);
}

/* got against the reference order (bits; +0/-0 counted apart) and against a double dot product
 * within the header's bound (cosine: that bound carried through the norms) */
static void check_scores(const char *what, const float *got, const float *Q, int64_t nq, const float *W, int64_t rows,
                         int64_t d, int metric) {
    int64_t i, r, j, bad = 0, off_bound = 0;
    char why[240] = "", why2[240] = "";
    const double g = gamma_n((double)(d / 8 + 3));
    for (i = 0; i < nq; i++)
        for (r = 0; r < rows; r++) {
            const float *q = Q + i * d, *w = W + r * d;
            const float want = ref_score(q, w, d, metric), v = got[i * rows + r];
            double exact = 0.0, mag = 0.0, tol;
            if (qt_f32_bits(v) != qt_f32_bits(want)) {
                if (v == 0.0f && want == 0.0f) {
                    zero_sign_notes++;
                } else {
                    if (bad == 0)
                        snprintf(why, sizeof why, "query %lld row %lld: got %a (0x%08x), want %a (0x%08x)", (long long)i,
                                 (long long)r, (double)v, (unsigned)qt_f32_bits(v), (double)want,
                                 (unsigned)qt_f32_bits(want));
                    bad++;
                }
            }
            for (j = 0; j < d; j++) {
                exact += (double)q[j] * (double)w[j];
                mag += fabs((double)q[j] * (double)w[j]);
            }
            tol = g * mag + 4.0 * (double)d * DBL_EPSILON * mag;
            if (metric == COS) {
                double nq2 = 0.0, nr2 = 0.0, den;
                for (j = 0; j < d; j++) {
                    nq2 += (double)q[j] * q[j];
                    nr2 += (double)w[j] * w[j];
                }
                den = fmax(sqrt(nq2), 1e-8) * fmax(sqrt(nr2), 1e-8);
                exact /= den;
                tol = (tol / den + 2.0 * gamma_n((double)(d / 8 + 6)) * fabs(exact)) * 1.0001 + ldexp(fabs(exact), -22);
            }
            if (!(fabs((double)v - exact) <= tol)) {
                if (off_bound == 0)
                    snprintf(why2, sizeof why2, "query %lld row %lld: got %a, exact %a, bound %g", (long long)i, (long long)r,
                             (double)v, exact, tol);
                off_bound++;
            }
        }
    CHECKF(bad == 0, "%s: %lld of %lld scores differ from the header's summation order; first: %s", what, (long long)bad,
           (long long)(nq * rows), why);
    CHECKF(off_bound == 0, "%s: %lld scores outside the header's error bound; first: %s", what, (long long)off_bound, why2);
}

/* ---- top-k against a sort of the score matrix ------------------------------------------ */

static const float *sort_row;

/* descending score, NaN last, ties (and NaNs) by lower index */
static int cmp_rank(const void *pa, const void *pb) {
    const int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    const float x = sort_row[a], y = sort_row[b];
    const int xn = isnan(x), yn = isnan(y);
    if (xn != yn) return xn ? 1 : -1;
    if (!xn && x != y) return x > y ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
}

static void check_topk(const char *what, const int64_t *idx, const float *sc, const float *S, int64_t nq, int64_t rows,
                       int64_t k) {
    int64_t *order = (int64_t *)xmalloc((size_t)rows * sizeof(int64_t)), i, r, bad = 0;
    char *seen = (char *)xmalloc((size_t)rows);
    char why[240] = "";
    for (i = 0; i < nq; i++) {
        const float *row = S + i * rows;
        for (r = 0; r < rows; r++) order[r] = r;
        sort_row = row;
        qsort(order, (size_t)rows, sizeof(int64_t), cmp_rank);
        memset(seen, 0, (size_t)rows);
        for (r = 0; r < k; r++) {
            const int64_t got = idx[i * k + r];
            const float gs = sc[i * k + r];
            int ok = got >= 0 && got < rows && !seen[got];
            if (ok) {
                seen[got] = 1;
                /* the score is the matrix's, bit for bit (NaN: any NaN) */
                if (isnan(row[got]) ? !isnan(gs) : qt_f32_bits(gs) != qt_f32_bits(row[got])) ok = 0;
                /* the rank: the sorted row; NaN rows may come in any order among themselves, at the end */
                if (isnan(row[order[r]])) {
                    if (!isnan(row[got])) ok = 0;
                } else if (got != order[r]) {
                    ok = 0;
                }
            }
            if (!ok) {
                if (bad == 0)
                    snprintf(why, sizeof why, "query %lld rank %lld: got row %lld score %a, want row %lld score %a",
                             (long long)i, (long long)r, (long long)got, (double)gs, (long long)order[r],
                             (double)row[order[r]]);
                bad++;
            }
        }
    }
    CHECKF(bad == 0, "%s (k %lld): %lld ranks wrong; first: %s", what, (long long)k, (long long)bad, why);
    free(order);
    free(seen);
}

/* ---- calls on either kind of table ---------------------------------------------------------- */

static qembed_status do_score(qembed_embedding *e, const qembed_qembedding *q, const void *Q, int qdt, int64_t nq,
                              int metric, float *s, int64_t len) {
    return e ? qembed_embedding_score(e, Q, qdt, nq, metric, s, len) : qembed_qembedding_score(q, Q, qdt, nq, metric, s, len);
}

static qembed_status do_topk(qembed_embedding *e, const qembed_qembedding *q, const void *Q, int qdt, int64_t nq,
                             int metric, int64_t k, int64_t *idx, float *s, int64_t len) {
    return e ? qembed_embedding_topk(e, Q, qdt, nq, metric, k, idx, s, len)
             : qembed_qembedding_topk(q, Q, qdt, nq, metric, k, idx, s, len);
}

/* score + top-k of one table (W: its rows as float32) for every query dtype and metric */
static void check_table(const char *name, qembed_embedding *e, const qembed_qembedding *q, const float *W, int64_t rows,
                        int64_t d, const float *Qv, int64_t nq) {
    int qk, metric;
    for (qk = 0; qk < 3; qk++) {
        void *Qd = qt_to_dtype(Qv, nq * d, FDT[qk]);
        float *Qf = (float *)xmalloc((size_t)(nq * d) * sizeof(float));
        int64_t i;
        for (i = 0; i < nq * d; i++) Qf[i] = qt_round_to(Qv[i], FDT[qk]);
        for (metric = 0; metric < QEMBED_SCORE_METRIC_COUNT; metric++) {
            float *S = (float *)xmalloc((size_t)(nq * rows + 8) * sizeof(float));
            qembed_status st;
            char what[200];
            snprintf(what, sizeof what, "%s, d %lld, %s queries, %s", name, (long long)d, dn(FDT[qk]), mn(metric));
            for (i = 0; i < nq * rows + 8; i++) S[i] = -12345.0f;
            st = do_score(e, q, Qd, FDT[qk], nq, metric, S, nq * rows);
            if (CHECKF(st == QEMBED_OK, "%s: score: %s", what, qembed_last_error())) {
                check_scores(what, S, Qf, nq, W, rows, d, metric);
                for (i = nq * rows; i < nq * rows + 8; i++)
                    if (S[i] != -12345.0f) break;
                CHECKF(i == nq * rows + 8, "%s: score wrote past num_queries x num_embeddings", what);
                /* top-k for a few k, against the (verified) matrix */
                {
                    const int64_t ks[4] = {1, 3, rows / 2 > 0 ? rows / 2 : 1, rows};
                    int kk;
                    for (kk = 0; kk < 4; kk++) {
                        const int64_t k = ks[kk];
                        int64_t *ti = (int64_t *)xmalloc((size_t)(nq * k + 4) * sizeof(int64_t));
                        float *ts = (float *)xmalloc((size_t)(nq * k + 4) * sizeof(float));
                        for (i = 0; i < nq * k + 4; i++) {
                            ti[i] = -77;
                            ts[i] = -77.0f;
                        }
                        st = do_topk(e, q, Qd, FDT[qk], nq, metric, k, ti, ts, nq * k);
                        if (CHECKF(st == QEMBED_OK, "%s: topk %lld: %s", what, (long long)k, qembed_last_error())) {
                            check_topk(what, ti, ts, S, nq, rows, k);
                            for (i = nq * k; i < nq * k + 4; i++)
                                if (ti[i] != -77 || ts[i] != -77.0f) break;
                            CHECKF(i == nq * k + 4, "%s: topk wrote past num_queries x k", what);
                        }
                        free(ti);
                        free(ts);
                    }
                }
                /* one query at a time: the same rows */
                {
                    float *one = (float *)xmalloc((size_t)rows * sizeof(float));
                    int same = 1;
                    const size_t es = qembed_dtype_size(FDT[qk]);
                    for (i = 0; i < nq; i++) {
                        if (do_score(e, q, (const unsigned char *)Qd + (size_t)(i * d) * es, FDT[qk], 1, metric, one, rows) !=
                                QEMBED_OK ||
                            memcmp(one, S + i * rows, (size_t)rows * sizeof(float)) != 0)
                            same = 0;
                    }
                    CHECKF(same, "%s: a query scored alone differs from its row of the batch", what);
                    free(one);
                }
            }
            free(S);
        }
        free(Qd);
        free(Qf);
    }
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_reference_self_check(void) {
    /* the reference really rounds each product: (1+2^-12)^2 = 1 + 2^-11 + 2^-24 rounds to 1 + 2^-11
     * (a tie, to even), which cancels lane 0's -(1 + 2^-11) exactly; an fma would leave 2^-24 */
    float q[9] = {0}, w[9] = {0};
    q[0] = -(1.0f + ldexpf(1.0f, -11));
    w[0] = 1.0f;
    q[8] = w[8] = 1.0f + ldexpf(1.0f, -12);
    CHECKF(dot8(q, w, 9) == 0.0f, "the test's reference fused a multiply-add: %a", (double)dot8(q, w, 9));
}

static void test_float_tables(void) {
    static const int64_t dims[] = {1, 3, 7, 8, 9, 16, 37, 64, 130, 259};
    const int64_t rows = 41, nq = 6;
    size_t di;
    for (di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        const int64_t d = dims[di];
        float *table = score_table(100 + di, rows, d);
        float *Qv = score_table(200 + di, nq, d);
        int lt;
        int64_t j;
        for (j = 0; j < d; j++) Qv[(nq - 1) * d + j] = 0.0f; /* a zero query (cosine: every score 0) */
        for (lt = 0; lt < 3; lt++) {
            qembed_embedding *e = qt_make_layer(rows, d, 0, 0, FDT[lt], false, 0.0, table);
            float *W = qt_weight_copy(e);
            char name[64];
            snprintf(name, sizeof name, "%s layer", dn(FDT[lt]));
            check_table(name, e, NULL, W, rows, d, Qv, nq);
            free(W);
            qembed_embedding_free(e);
        }
        free(table);
        free(Qv);
    }
}

typedef struct qcfg {
    int kind;
    int64_t bs;
    bool nested;
} qcfg;

static void test_quantized_tables(void) {
    static const qcfg cfgs[] = {{QEMBED_QEMB_INT8, 0, false}, {QEMBED_QEMB_FP4, 64, false}, {QEMBED_QEMB_FP4, 128, true},
                                {QEMBED_QEMB_NF4, 32, false}, {QEMBED_QEMB_NF4, 64, true},  {QEMBED_QEMB_NF4, 4096, true}};
    static const int64_t dims[] = {5, 8, 40, 67};
    const int64_t rows = 45, nq = 5;
    size_t ci, di;
    for (ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++)
        for (di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            const int64_t d = dims[di];
            const int src = FDT[(ci + di) % 3];
            float *table = score_table(300 + ci * 10 + di, rows, d), *Qv = score_table(400 + ci * 10 + di, nq, d), *R;
            void *t = qt_to_dtype(table, rows * d, src);
            qembed_qembedding *q = NULL;
            char name[80];
            qembed_status st = qembed_qembedding_quantize(t, src, rows, d, cfgs[ci].kind, cfgs[ci].bs, cfgs[ci].nested, &q);
            free(t);
            snprintf(name, sizeof name, "%s bs%lld%s from %s",
                     cfgs[ci].kind == QEMBED_QEMB_INT8 ? "int8" : cfgs[ci].kind == QEMBED_QEMB_FP4 ? "fp4" : "nf4",
                     (long long)cfgs[ci].bs, cfgs[ci].nested ? " nested" : "", dn(src));
            if (CHECKF(st == QEMBED_OK, "quantize %s: %s", name, qembed_last_error())) {
                R = q_rows(q, rows, d);
                check_table(name, NULL, q, R, rows, d, Qv, nq);
                free(R);
                qembed_qembedding_free(q);
            }
            free(table);
            free(Qv);
        }
}

/* integer-valued rows with many duplicates: exact ties everywhere, broken by the lower index */
static void test_ties(void) {
    const int64_t rows = 60, d = 12, nq = 4;
    float *table = (float *)xmalloc((size_t)(rows * d) * sizeof(float)), Qv[4 * 12];
    qt_rng r = qt_rng_make(500);
    int64_t i, j;
    int lt;
    for (i = 0; i < rows; i++)
        for (j = 0; j < d; j++) table[i * d + j] = (float)((int)(qt_next(&r) % 5) - 2);
    for (i = 0; i < rows; i++)
        if (i % 3 != 0) memcpy(table + i * d, table + (i % 7) * d, (size_t)d * sizeof(float)); /* 7 distinct-ish rows */
    for (i = 0; i < nq * d; i++) Qv[i] = (float)((int)(qt_next(&r) % 3) - 1);
    for (lt = 0; lt < 2; lt++) {
        qembed_embedding *e = qt_make_layer(rows, d, 0, 0, FDT[lt], false, 0.0, table);
        check_table(lt ? "ties, f16 layer" : "ties, f32 layer", e, NULL, table, rows, d, Qv, nq);
        qembed_embedding_free(e);
    }
    free(table);
}

/* products that overflow: +inf, -inf and NaN scores (inf + -inf) from a finite table */
static void test_overflow_scores(void) {
    const int64_t rows = 10, d = 16, nq = 3;
    float table[10 * 16], Qv[3 * 16], S[30];
    qt_rng r = qt_rng_make(600);
    qembed_embedding *e;
    int64_t i;
    for (i = 0; i < rows * d; i++) table[i] = qt_normal(&r);
    for (i = 0; i < nq * d; i++) Qv[i] = qt_normal(&r);
    table[2 * d + 0] = 3e38f; /* lanes 0 and 1: inf + -inf = NaN */
    table[2 * d + 1] = -3e38f;
    table[5 * d + 8] = -3e38f; /* lanes 0 and 1 again */
    table[5 * d + 9] = 3e38f;
    table[7 * d + 0] = 3e38f; /* inf alone */
    table[8 * d + 0] = -3e38f;
    for (i = 0; i < nq; i++) {
        Qv[i * d + 0] = Qv[i * d + 1] = Qv[i * d + 8] = Qv[i * d + 9] = i == 1 ? -10.0f : 10.0f;
    }
    e = qt_make_layer(rows, d, 0, 0, F32, false, 0.0, table);
    if (CHECKF(qembed_embedding_score(e, Qv, F32, nq, DOT, S, nq * rows) == QEMBED_OK, "%s", qembed_last_error())) {
        int64_t bad = 0, k;
        for (i = 0; i < nq * rows; i++) {
            const float want = dot8(Qv + (i / rows) * d, table + (i % rows) * d, d);
            if (isnan(want) ? !isnan(S[i]) : qt_f32_bits(S[i]) != qt_f32_bits(want)) bad++;
        }
        CHECKF(bad == 0, "overflowing products: %lld scores differ from the summation order (inf, -inf, NaN)", (long long)bad);
        CHECK(isnan(S[2]) && isnan(S[5]) && S[7] == INFINITY && S[8] == -INFINITY);
        for (k = 1; k <= rows; k += 3) {
            int64_t ti[30];
            float ts[30];
            if (CHECKF(qembed_embedding_topk(e, Qv, F32, nq, DOT, k, ti, ts, nq * k) == QEMBED_OK, "%s", qembed_last_error()))
                check_topk("overflowing products", ti, ts, S, nq, rows, k);
        }
        {
            int64_t ti[30];
            float ts[30];
            if (CHECK(qembed_embedding_topk(e, Qv, F32, nq, DOT, rows, ti, ts, nq * rows) == QEMBED_OK)) {
                CHECKF(ti[0] == 7 && ti[rows] == 8, "the +inf row ranks first (query 0: row %lld, query 1: row %lld)",
                       (long long)ti[0], (long long)ti[rows]);
                CHECKF(isnan(ts[rows - 1]) && isnan(ts[rows - 2]) && !isnan(ts[rows - 3]),
                       "the two NaN rows rank last, below -inf");
            }
        }
    }
    qembed_embedding_free(e);
}

/* StableEmbedding scores its raw rows; scoring leaves a max_norm layer's rows alone */
static void test_layers(void) {
    const int64_t rows = 30, d = 24, nq = 4;
    float *table = score_table(700, rows, d), *Qv = score_table(701, nq, d);
    qembed_embedding *s = qt_make_layer(rows, d, 0, 1, F32, false, 0.0, table);
    qembed_embedding *m = qt_make_layer(rows, d, 0, 0, F32, false, 0.5, table);
    float *before = qt_weight_copy(m), *after;
    float S[4 * 30];
    int64_t ti[4 * 5];
    float ts[4 * 5];
    check_table("StableEmbedding (raw rows)", s, NULL, table, rows, d, Qv, nq);
    CHECK(qembed_embedding_score(m, Qv, F32, nq, DOT, S, nq * rows) == QEMBED_OK);
    CHECK(qembed_embedding_topk(m, Qv, F32, nq, COS, 5, ti, ts, nq * 5) == QEMBED_OK);
    after = qt_weight_copy(m);
    CHECKF(memcmp(before, after, (size_t)(rows * d) * sizeof(float)) == 0, "scoring renormalized a max_norm layer's rows");
    check_scores("max_norm layer (rows as stored)", S, Qv, nq, before, rows, d, DOT);
    free(before);
    free(after);
    free(table);
    free(Qv);
    qembed_embedding_free(s);
    qembed_embedding_free(m);
}

/* a large table: 1, 2, 3 and 8 threads give the same bits, equal to the reference */
static void test_threads(void) {
    const int64_t rows = 5000, d = 96, nq = 19, k = 10;
    static const int threads[4] = {1, 2, 3, 8};
    float *table = score_table(800, rows, d), *Qv = score_table(801, nq, d), *R = NULL;
    qembed_embedding *e = qt_make_layer(rows, d, 0, 0, BF16, false, 0.0, table);
    float *W = qt_weight_copy(e);
    qembed_qembedding *q = NULL;
    float *S0[2][2], *T0s[2][2];
    int64_t *T0i[2][2];
    int src, metric, ti;
    memset(S0, 0, sizeof S0);
    memset(T0s, 0, sizeof T0s);
    memset(T0i, 0, sizeof T0i);
    CHECK(qembed_qembedding_quantize(table, F32, rows, d, QEMBED_QEMB_NF4, 64, true, &q) == QEMBED_OK);
    if (q) R = q_rows(q, rows, d);
    for (ti = 0; ti < 4; ti++) {
        CHECK(qembed_set_num_threads(threads[ti]) == QEMBED_OK);
        for (src = 0; src < 2; src++) {
            if (src == 1 && q == NULL) break;
            for (metric = 0; metric < 2; metric++) {
                float *S = (float *)xmalloc((size_t)(nq * rows) * sizeof(float)), *ts = (float *)xmalloc((size_t)(nq * k) * sizeof(float));
                int64_t *tix = (int64_t *)xmalloc((size_t)(nq * k) * sizeof(int64_t));
                char what[120];
                snprintf(what, sizeof what, "large %s table, %s, %d threads", src ? "nf4" : "bf16", mn(metric), threads[ti]);
                if (!CHECKF(do_score(src ? NULL : e, q, Qv, F32, nq, metric, S, nq * rows) == QEMBED_OK &&
                                do_topk(src ? NULL : e, q, Qv, F32, nq, metric, k, tix, ts, nq * k) == QEMBED_OK,
                            "%s: %s", what, qembed_last_error())) {
                    free(S);
                    free(ts);
                    free(tix);
                    continue;
                }
                if (ti == 0) {
                    check_scores(what, S, Qv, nq, src ? R : W, rows, d, metric);
                    check_topk(what, tix, ts, S, nq, rows, k);
                    S0[src][metric] = S;
                    T0s[src][metric] = ts;
                    T0i[src][metric] = tix;
                    continue;
                }
                if (S0[src][metric] != NULL) {
                    CHECKF(memcmp(S, S0[src][metric], (size_t)(nq * rows) * sizeof(float)) == 0,
                           "%s: scores differ from 1 thread", what);
                    CHECKF(memcmp(ts, T0s[src][metric], (size_t)(nq * k) * sizeof(float)) == 0 &&
                               memcmp(tix, T0i[src][metric], (size_t)(nq * k) * sizeof(int64_t)) == 0,
                           "%s: top-k differs from 1 thread", what);
                }
                free(S);
                free(ts);
                free(tix);
            }
        }
    }
    CHECK(qembed_set_num_threads(0) == QEMBED_OK);
    for (src = 0; src < 2; src++)
        for (metric = 0; metric < 2; metric++) {
            free(S0[src][metric]);
            free(T0s[src][metric]);
            free(T0i[src][metric]);
        }
    free(table);
    free(Qv);
    free(W);
    free(R);
    qembed_qembedding_free(q);
    qembed_embedding_free(e);
}

/* ---- bad inputs ------------------------------------------------------------------------------- */

#define S_(x) (1u << (x))
#define NULLPTR S_(QEMBED_ERR_NULL_POINTER)
#define INVALID S_(QEMBED_ERR_INVALID_ARGUMENT)
#define RANGE S_(QEMBED_ERR_OUT_OF_RANGE)
#define UNSUPP S_(QEMBED_ERR_UNSUPPORTED)
#define NONFIN S_(QEMBED_ERR_NON_FINITE)
#define SHAPE S_(QEMBED_ERR_SHAPE)
#define SMALL S_(QEMBED_ERR_BUFFER_TOO_SMALL)
#define SENTINEL 0xA5
#define VN 20
#define VD 8
#define VQN 3 /* queries */

typedef struct arena {
    float scores[4096];
    int64_t idx[4096];
} arena;

static arena A_, REF_;
enum { T_F32, T_F16, T_MAXN, T_Q, T_COUNT };
static const char *const t_names[T_COUNT] = {"f32 layer", "f16 layer", "max_norm layer", "quantized int8"};
static qembed_embedding *TL[3];
static qembed_qembedding *TQ;
static float VQ[VQN * VD], VT[VN * VD];
static unsigned char *snap;
static size_t snap_len;
static char ctx[160];

/* every float layer's weight bytes */
static unsigned char *snapshot(size_t *len) {
    size_t total = 0, off = 0;
    unsigned char *p;
    int l;
    for (l = 0; l < 3; l++) {
        qembed_param_info w = qt_info_of(qt_param_of(TL[l], 0));
        total += (size_t)w.numel * qembed_dtype_size(w.dtype);
    }
    p = (unsigned char *)xmalloc(total);
    for (l = 0; l < 3; l++) {
        qembed_param_info w = qt_info_of(qt_param_of(TL[l], 0));
        const size_t n = (size_t)w.numel * qembed_dtype_size(w.dtype);
        memcpy(p + off, w.data, n);
        off += n;
    }
    *len = total;
    return p;
}

static void arena_reset(void) {
    memset(&A_, SENTINEL, sizeof A_);
    free(snap);
    snap = snapshot(&snap_len);
    qembed_clear_error();
}

static void expect(const char *file, int line, const char *call, qembed_status got, unsigned allowed, const char *names) {
    char msg[600];
    const char *m = qembed_last_error();
    size_t len2;
    unsigned char *after;
    int untouched, same, status_ok, named;
    snprintf(msg, sizeof msg, "%s", m ? m : "");
    untouched = memcmp(&A_, &REF_, sizeof A_) == 0;
    after = snapshot(&len2);
    same = len2 == snap_len && memcmp(after, snap, len2) == 0;
    free(after);
    status_ok = (int)got > 0 && (int)got < 32 && (allowed & S_(got)) != 0;
    named = msg[0] != '\0' && qt_names_any(msg, names);
    qt_check(status_ok && named && untouched && same, file, line, call,
             "[%s] %s%s%s%s(status %d \"%s\", last_error \"%s\", want a message naming %s)", ctx,
             status_ok ? "" : "wrong status; ", named ? "" : "message does not name the argument; ",
             untouched ? "" : "an output was written; ", same ? "" : "a layer's weight changed; ", (int)got,
             qembed_status_string((int)got), msg, names);
}

#define EXPECT(allowed, names, call) expect(__FILE__, __LINE__, #call, (arena_reset(), (call)), (allowed), (names))

static qembed_status sc(int t, const void *Q, int qdt, int64_t nq, int metric, float *s, int64_t len) {
    return t == T_Q ? qembed_qembedding_score(TQ, Q, qdt, nq, metric, s, len) : qembed_embedding_score(TL[t], Q, qdt, nq, metric, s, len);
}

static qembed_status tk(int t, const void *Q, int qdt, int64_t nq, int metric, int64_t k, int64_t *idx, float *s, int64_t len) {
    return t == T_Q ? qembed_qembedding_topk(TQ, Q, qdt, nq, metric, k, idx, s, len)
                    : qembed_embedding_topk(TL[t], Q, qdt, nq, metric, k, idx, s, len);
}

/* a case whose sizes overflow, in a child process: a crash or hang is a failure, not the end of the test */
static void isolated(const char *file, int line, const char *what, unsigned allowed, const char *names, int t, int topk,
                     int64_t nq, int64_t k, int64_t len) {
    pid_t pid;
    int status = 0;
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        qt_check(0, file, line, what, "fork failed");
        return;
    }
    if (pid == 0) {
        const long before = qt_failed;
        alarm(60);
        arena_reset();
        expect(file, line, what,
               topk ? tk(t, VQ, F32, nq, DOT, k, A_.idx, A_.scores, len) : sc(t, VQ, F32, nq, DOT, A_.scores, len), allowed,
               names);
        fflush(stdout);
        fflush(stderr);
        _exit(qt_failed == before ? 0 : 1);
    }
    if (waitpid(pid, &status, 0) != pid) status = -1;
    if (WIFSIGNALED(status))
        qt_check(0, file, line, what, "[%s] the call died of signal %d (crash or hang)", ctx, WTERMSIG(status));
    else
        qt_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, file, line, what, "[%s] failed (reported above)", ctx);
}

static void setup_bad(void) {
    qt_rng r = qt_rng_make(900);
    int i, l;
    for (i = 0; i < VN * VD; i++) VT[i] = qt_normal(&r) * 2.0f; /* norms above max_norm */
    for (i = 0; i < VQN * VD; i++) VQ[i] = qt_normal(&r);
    memset(&REF_, SENTINEL, sizeof REF_);
    for (l = 0; l < 3; l++) TL[l] = qt_make_layer(VN, VD, 0, 0, l == T_F16 ? F16 : F32, false, l == T_MAXN ? 0.5 : 0.0, VT);
    if (qembed_qembedding_quantize(VT, F32, VN, VD, QEMBED_QEMB_INT8, 0, false, &TQ) != QEMBED_OK) {
        fprintf(stderr, "setup: quantize: %s\n", qembed_last_error());
        exit(2);
    }
}

static void score_cases(int t) {
    static const int bad_qdt[] = {QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, QEMBED_DTYPE_I32, QEMBED_DTYPE_I64, QEMBED_DTYPE_COUNT, 99, -1};
    static const int bad_metric[] = {-1, QEMBED_SCORE_METRIC_COUNT, 99, INT_MIN, INT_MAX};
    const int64_t len = VQN * VN;
    const char *LAYER = "e|q|embedding|qembedding|layer";
    size_t i;
    int k, p;
    snprintf(ctx, sizeof ctx, "%s score", t_names[t]);
    if (t == T_F32) {
        EXPECT(NULLPTR, LAYER, qembed_embedding_score(NULL, VQ, F32, VQN, DOT, A_.scores, len));
        EXPECT(NULLPTR, LAYER, qembed_qembedding_score(NULL, VQ, F32, VQN, DOT, A_.scores, len));
        EXPECT(NULLPTR, LAYER, qembed_embedding_topk(NULL, VQ, F32, VQN, DOT, 2, A_.idx, A_.scores, VQN * 2));
        EXPECT(NULLPTR, LAYER, qembed_qembedding_topk(NULL, VQ, F32, VQN, DOT, 2, A_.idx, A_.scores, VQN * 2));
    }
    EXPECT(NULLPTR, "queries", sc(t, NULL, F32, VQN, DOT, A_.scores, len));
    EXPECT(NULLPTR, "scores", sc(t, VQ, F32, VQN, DOT, NULL, len));
    EXPECT(SMALL, "scores_len|scores", sc(t, VQ, F32, VQN, DOT, A_.scores, len - 1));
    EXPECT(SMALL, "scores_len|scores", sc(t, VQ, F32, VQN, COS, A_.scores, 0));
    EXPECT(SMALL, "scores_len|scores", sc(t, VQ, F32, VQN, DOT, A_.scores, -1));
    EXPECT(SMALL, "scores_len|scores", sc(t, VQ, F32, 1, DOT, A_.scores, VN - 1));
    EXPECT(INVALID | SHAPE, "num_queries", sc(t, VQ, F32, -1, DOT, A_.scores, len));
    EXPECT(INVALID | SHAPE, "num_queries", sc(t, VQ, F32, INT64_MIN, DOT, A_.scores, len));
    for (i = 0; i < sizeof bad_metric / sizeof bad_metric[0]; i++)
        EXPECT(INVALID | UNSUPP, "metric", sc(t, VQ, F32, VQN, bad_metric[i], A_.scores, len));
    for (i = 0; i < sizeof bad_qdt / sizeof bad_qdt[0]; i++)
        EXPECT(UNSUPP, "query_dtype", sc(t, VQ, bad_qdt[i], VQN, DOT, A_.scores, len));
    /* non-finite queries: NaN, +Inf, -Inf at the first, a middle and the last element; f32, f16, bf16 */
    {
        static const uint16_t h_bad[3] = {0x7E00, 0x7C00, 0xFC00}, b_bad[3] = {0x7FC0, 0x7F80, 0xFF80};
        const float f_bad[3] = {NAN, INFINITY, -INFINITY};
        const int pos[3] = {0, VD + 3, VQN * VD - 1};
        for (k = 0; k < 3; k++)
            for (p = 0; p < 3; p++) {
                float f[VQN * VD];
                uint16_t h[VQN * VD], bh[VQN * VD];
                int m;
                for (m = 0; m < VQN * VD; m++) {
                    f[m] = VQ[m];
                    h[m] = qt_f32_to_f16(VQ[m]);
                    bh[m] = qt_f32_to_bf16(VQ[m]);
                }
                f[pos[p]] = f_bad[k];
                h[pos[p]] = h_bad[k];
                bh[pos[p]] = b_bad[k];
                EXPECT(NONFIN, "queries", sc(t, f, F32, VQN, DOT, A_.scores, len));
                EXPECT(NONFIN, "queries", sc(t, h, F16, VQN, COS, A_.scores, len));
                EXPECT(NONFIN, "queries", sc(t, bh, BF16, VQN, DOT, A_.scores, len));
                EXPECT(NONFIN, "queries", tk(t, f, F32, VQN, COS, 3, A_.idx, A_.scores, VQN * 3));
                EXPECT(NONFIN, "queries", tk(t, bh, BF16, VQN, DOT, 3, A_.idx, A_.scores, VQN * 3));
            }
    }

    snprintf(ctx, sizeof ctx, "%s topk", t_names[t]);
    {
        static const int64_t bad_k[] = {0, -1, VN + 1, VN + 1000, INT64_MAX, INT64_MIN};
        for (i = 0; i < sizeof bad_k / sizeof bad_k[0]; i++)
            EXPECT(INVALID | RANGE, "k", tk(t, VQ, F32, VQN, DOT, bad_k[i], A_.idx, A_.scores, 4096));
    }
    EXPECT(NULLPTR, "queries", tk(t, NULL, F32, VQN, DOT, 2, A_.idx, A_.scores, VQN * 2));
    EXPECT(NULLPTR, "indices", tk(t, VQ, F32, VQN, DOT, 2, NULL, A_.scores, VQN * 2));
    EXPECT(NULLPTR, "scores", tk(t, VQ, F32, VQN, DOT, 2, A_.idx, NULL, VQN * 2));
    EXPECT(SMALL, "out_len|indices|scores", tk(t, VQ, F32, VQN, DOT, 2, A_.idx, A_.scores, VQN * 2 - 1));
    EXPECT(SMALL, "out_len|indices|scores", tk(t, VQ, F32, VQN, COS, VN, A_.idx, A_.scores, VQN * VN - 1));
    EXPECT(SMALL, "out_len|indices|scores", tk(t, VQ, F32, VQN, DOT, 1, A_.idx, A_.scores, 0));
    EXPECT(SMALL, "out_len|indices|scores", tk(t, VQ, F32, VQN, DOT, 1, A_.idx, A_.scores, -1));
    EXPECT(INVALID | SHAPE, "num_queries", tk(t, VQ, F32, -1, DOT, 2, A_.idx, A_.scores, VQN * 2));
    for (i = 0; i < sizeof bad_metric / sizeof bad_metric[0]; i++)
        EXPECT(INVALID | UNSUPP, "metric", tk(t, VQ, F32, VQN, bad_metric[i], 2, A_.idx, A_.scores, VQN * 2));
    for (i = 0; i < sizeof bad_qdt / sizeof bad_qdt[0]; i++)
        EXPECT(UNSUPP, "query_dtype", tk(t, VQ, bad_qdt[i], VQN, DOT, 2, A_.idx, A_.scores, VQN * 2));

    /* overflowing sizes */
    snprintf(ctx, sizeof ctx, "%s overflow", t_names[t]);
    {
        static const int64_t huge[] = {INT64_MAX / 4, INT64_MAX / VD + 1, INT64_MAX};
        for (i = 0; i < sizeof huge / sizeof huge[0]; i++) {
            char what[120];
            snprintf(what, sizeof what, "score with num_queries %lld, scores_len INT64_MAX", (long long)huge[i]);
            isolated(__FILE__, __LINE__, what, SHAPE | SMALL, "num_queries|scores_len|scores|embedding_dim", t, 0, huge[i], 0,
                     INT64_MAX);
            snprintf(what, sizeof what, "topk with num_queries %lld, k %d, out_len INT64_MAX", (long long)huge[i], VN);
            isolated(__FILE__, __LINE__, what, SHAPE | SMALL, "num_queries|k|out_len|embedding_dim", t, 1, huge[i], VN,
                     INT64_MAX);
        }
    }

    /* no queries: the header neither allows nor forbids num_queries 0; either it succeeds and writes
     * nothing, or it is refused naming num_queries (and writes nothing); which one is printed */
    snprintf(ctx, sizeof ctx, "%s, no queries", t_names[t]);
    {
        int kind;
        for (kind = 0; kind < 2; kind++) {
            qembed_status st;
            char msg[600];
            arena_reset();
            st = kind == 0 ? sc(t, VQ, F32, 0, DOT, A_.scores, 0) : tk(t, VQ, F32, 0, COS, 1, A_.idx, A_.scores, 0);
            snprintf(msg, sizeof msg, "%s", qembed_last_error());
            CHECKF(st == QEMBED_OK || ((st == QEMBED_ERR_INVALID_ARGUMENT || st == QEMBED_ERR_SHAPE) && qt_names(msg, "num_queries")),
                   "[%s] %s: status %s, message \"%s\"", ctx, kind ? "topk" : "score", qembed_status_string(st), msg);
            CHECKF(memcmp(&A_, &REF_, sizeof A_) == 0, "[%s] an output was written", ctx);
            if (t == T_F32) printf("test_score: note: num_queries 0 (%s): %s%s%s\n", kind ? "topk" : "score",
                                   qembed_status_string(st), st == QEMBED_OK ? "" : ": ", st == QEMBED_OK ? "" : msg);
        }
    }
}

static void test_bad_inputs(void) {
    int t;
    setup_bad();
    for (t = 0; t < T_COUNT; t++) score_cases(t);
    for (t = 0; t < 3; t++) qembed_embedding_free(TL[t]);
    qembed_qembedding_free(TQ);
    free(snap);
}

int main(void) {
    test_reference_self_check();
    test_float_tables();
    test_quantized_tables();
    test_ties();
    test_overflow_scores();
    test_layers();
    test_threads();
    test_bad_inputs();
    if (zero_sign_notes > 0)
        printf("test_score: note: %ld scores are -0 where the reference order gives +0 (or the reverse); the header "
               "does not fix the sign of a zero sum, so these are counted, not failed\n",
               zero_sign_notes);
    return qt_summary("test_score");
}
