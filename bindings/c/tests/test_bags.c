/* test_bags.c - pooled lookups (torch.nn.EmbeddingBag) through the C API
 * (include/qembed.h, "Bags: pooled lookups"), each result recomputed here
 * from the header's rules:
 *   - qembed_bags_init defaults and qembed_bags_num_bags for every form;
 *   - forward over float layers (f32/f16/bf16 weights whose values span
 *     2^-8..2^8, with zeros of both signs) for SUM, MEAN and MAX, the offsets
 *     form (empty bags, include_last_offset with indices after the last
 *     offset, which belong to no bag) and the fixed form, per_sample_weights
 *     (f32/f16/bf16), the layer's padding_idx and the qembed_bags override
 *     (positive and negative), all-padding bags, i32/i64 indices and
 *     f32/f16/bf16 outputs, against float32 reductions computed here in
 *     index order: bit for bit (SUM, MEAN = sum / count, MAX with the first
 *     index winning ties, +0 versus -0 included);
 *   - max_norm renormalizes the referenced rows as qembed_embedding_forward
 *     does; StableEmbedding bags its raw rows; large batches under 1..8
 *     threads give the same bits;
 *   - backward: dense and sparse weight gradients of SUM/MEAN/MAX against
 *     references (exact where the values make every summation order exact),
 *     scale_grad_by_freq, the padding override, accumulation, f16/bf16
 *     grad_output, grad_per_sample_weights, a frozen weight, MAX ties, and
 *     MAX refused with scale_grad_by_freq or a sparse layer;
 *   - quantized tables (int8, fp4, nf4, nested): a bag equals the reduction,
 *     here, of the rows qembed_qembedding_forward returns;
 *   - a bad-input battery: each case returns the right status, a message
 *     naming the field, and changes nothing (output, grad_per_sample_weights,
 *     weights, dense and sparse gradients); overflowing sizes run in a child
 *     process so a crash is reported as a failure, not the end of the test. */
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
#define I32 QEMBED_DTYPE_I32
#define I64 QEMBED_DTYPE_I64
#define NOPAD QEMBED_NO_PADDING
#define SUM QEMBED_BAG_SUM
#define MEAN QEMBED_BAG_MEAN
#define MAXM QEMBED_BAG_MAX
#define GUARD 64

static const int FDT[3] = {F32, F16, BF16};
static long zero_sign_notes = 0; /* +0 / -0 differences in SUM/MEAN outputs (not specified; counted, not failed) */

static const char *mode_name(int m) {
    return m == SUM ? "sum" : m == MEAN ? "mean" : m == MAXM ? "max" : "?";
}
static const char *dn(int dt) { return dt < 0 ? "none" : qembed_dtype_name(dt); }

/* ---- float helpers --------------------------------------------------------- */

/* a normal value times 2^e, e in [-8, 8]; about 1 in 29 is +0 or -0 */
static float wide_value(qt_rng *r) {
    uint64_t u = qt_next(r);
    if (u % 29 == 0) return ((u >> 8) & 1) ? 0.0f : -0.0f;
    return ldexpf(qt_normal(r), (int)((u >> 16) % 17) - 8);
}

static float *wide_table(uint64_t seed, int64_t n) {
    qt_rng r = qt_rng_make(seed);
    float *t = (float *)xmalloc((size_t)n * sizeof(float));
    int64_t i;
    for (i = 0; i < n; i++) t[i] = wide_value(&r);
    return t;
}

/* grad_output values k/64, |k| <= 64: every sum of a few of them is exact in float32, in any order */
static float *dyadic(uint64_t seed, int64_t n) {
    qt_rng r = qt_rng_make(seed);
    float *t = (float *)xmalloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    int64_t i;
    for (i = 0; i < n; i++) t[i] = (float)((int)(qt_next(&r) % 129) - 64) / 64.0f;
    return t;
}

/* ---- layers ------------------------------------------------------------------ */

typedef struct lopt {
    int dtype;
    int64_t pad;
    bool sparse, freq, freeze;
    double max_norm;
    int stable;
} lopt;

static lopt lo(int dtype, int64_t pad) {
    lopt o;
    o.dtype = dtype;
    o.pad = pad;
    o.sparse = false;
    o.freq = false;
    o.freeze = false;
    o.max_norm = 0.0;
    o.stable = 0;
    return o;
}

/* a layer holding the pretrained table w (the padding row kept as given) */
static qembed_embedding *layer_from(const float *w, int64_t n, int64_t d, lopt o) {
    qembed_embedding_params p;
    qembed_embedding *e = NULL;
    qembed_status st;
    qembed_embedding_params_init(&p);
    p.num_embeddings = n;
    p.embedding_dim = d;
    p.padding_idx = o.pad;
    p.dtype = o.dtype;
    p.sparse = o.sparse;
    p.scale_grad_by_freq = o.freq;
    p.max_norm = o.max_norm;
    p.weight = w;
    p.weight_dtype = F32;
    p.freeze = o.freeze;
    st = o.stable ? qembed_stable_embedding_create(&p, &e) : qembed_embedding_create(&p, &e);
    if (st != QEMBED_OK || e == NULL) {
        fprintf(stderr, "create %lld x %lld: %s: %s\n", (long long)n, (long long)d, qembed_status_string(st),
                qembed_last_error());
        exit(2);
    }
    return e;
}

/* the weight gradient as a dense float table (dense buffer, or the sparse rows
 * scattered); *rows_ok tells whether the sparse rows are sorted, distinct, in
 * range and not `pad` */
static float *grad_dense(qembed_embedding *e, int64_t n, int64_t d, int64_t pad, int *rows_ok, int *has_grad) {
    qembed_param *w = qt_param_of(e, 0);
    qembed_param_info info = qt_info_of(w);
    float *g = (float *)calloc((size_t)(n * d), sizeof(float));
    if (g == NULL) exit(2);
    *rows_ok = 1;
    *has_grad = 0;
    if (!info.sparse) {
        if (info.grad != NULL) {
            memcpy(g, info.grad, (size_t)(n * d) * sizeof(float));
            *has_grad = 1;
        }
    } else {
        int64_t nnz = -1, k, j;
        if (qembed_param_sparse_grad(w, &nnz, NULL, 0, NULL, 0) != QEMBED_OK || nnz < 0 || nnz > n) {
            *rows_ok = 0;
            return g;
        }
        if (nnz > 0) {
            int64_t *rows = (int64_t *)xmalloc((size_t)nnz * sizeof(int64_t));
            float *vals = (float *)xmalloc((size_t)(nnz * d) * sizeof(float));
            int64_t got = -1;
            if (qembed_param_sparse_grad(w, &got, rows, nnz, vals, nnz * d) != QEMBED_OK || got != nnz) *rows_ok = 0;
            for (k = 0; *rows_ok && k < nnz; k++) {
                if (rows[k] < 0 || rows[k] >= n || (k > 0 && rows[k] <= rows[k - 1])) {
                    *rows_ok = 0;
                    break;
                }
                if (rows[k] == pad) {
                    for (j = 0; j < d; j++)
                        if (vals[k * d + j] != 0.0f) *rows_ok = 0;
                }
                for (j = 0; j < d; j++) g[rows[k] * d + j] = vals[k * d + j];
            }
            free(rows);
            free(vals);
            *has_grad = 1;
        }
    }
    return g;
}

/* ---- bag sets ------------------------------------------------------------------ */

typedef struct bagset {
    int64_t count, nb, num_offsets;
    bool include_last, fixed;
    int64_t *i64, *o64;
    int32_t *i32, *o32;
    float *w32;
    uint16_t *w16, *wbf;
} bagset;

static void bs_alloc(bagset *s, int64_t count, int64_t num_offsets) {
    size_t c = (size_t)(count > 0 ? count : 1), o = (size_t)(num_offsets > 0 ? num_offsets : 1);
    s->count = count;
    s->num_offsets = num_offsets;
    s->i64 = (int64_t *)xmalloc(c * sizeof(int64_t));
    s->i32 = (int32_t *)xmalloc(c * sizeof(int32_t));
    s->o64 = (int64_t *)xmalloc(o * sizeof(int64_t));
    s->o32 = (int32_t *)xmalloc(o * sizeof(int32_t));
    s->w32 = (float *)xmalloc(c * sizeof(float));
    s->w16 = (uint16_t *)xmalloc(c * sizeof(uint16_t));
    s->wbf = (uint16_t *)xmalloc(c * sizeof(uint16_t));
}

static void bs_free(bagset *s) {
    free(s->i64);
    free(s->i32);
    free(s->o64);
    free(s->o32);
    free(s->w32);
    free(s->w16);
    free(s->wbf);
}

/* the i32 copies, and per-sample weights (normal-ish, some negative, one zero) in three dtypes */
static void bs_finish(bagset *s, qt_rng *r) {
    int64_t k;
    for (k = 0; k < s->count; k++) {
        float w = qt_normal(r) * 1.5f;
        if (k == 1) w = 0.0f;
        s->i32[k] = (int32_t)s->i64[k];
        s->w32[k] = w;
        s->w16[k] = qt_f32_to_f16(w);
        s->wbf[k] = qt_f32_to_bf16(w);
    }
    for (k = 0; k < s->num_offsets; k++) s->o32[k] = (int32_t)s->o64[k];
}

/* a random index, one of the `special` rows about 1 time in 6 */
static int64_t pick(qt_rng *r, int64_t rows, const int64_t *special, int nspecial) {
    uint64_t u = qt_next(r);
    if (nspecial > 0 && u % 6 == 0) return special[(u >> 8) % (uint64_t)nspecial];
    return (int64_t)((u >> 16) % (uint64_t)rows);
}

/* offsets form: nb >= 6 bags; bag 0 holds one index, bag 2 none, bag 1 only special[0] (3 times),
 * bag 3 only special[1] (twice), bag 4 the maximum length; the others 0..maxlen. With
 * include_last, `trailing` indices follow the last offset (they belong to no bag). */
static bagset gen_offsets(uint64_t seed, int64_t rows, int64_t nb, int maxlen, bool include_last, int64_t trailing,
                          const int64_t *special, int nspecial) {
    qt_rng r = qt_rng_make(seed);
    bagset s;
    int64_t *sizes = (int64_t *)xmalloc((size_t)nb * sizeof(int64_t)), total = 0, b, k, pos = 0;
    for (b = 0; b < nb; b++) {
        uint64_t u = qt_next(&r);
        sizes[b] = u % 5 == 0 ? 0 : (int64_t)(1 + (u >> 8) % (uint64_t)maxlen);
    }
    sizes[0] = 1;
    sizes[1] = 3;
    sizes[2] = 0;
    sizes[3] = 2;
    sizes[4] = maxlen;
    for (b = 0; b < nb; b++) total += sizes[b];
    if (!include_last) trailing = 0;
    memset(&s, 0, sizeof s);
    bs_alloc(&s, total + trailing, include_last ? nb + 1 : nb);
    s.nb = nb;
    s.include_last = include_last;
    s.fixed = false;
    for (b = 0; b < nb; b++) {
        s.o64[b] = pos;
        for (k = 0; k < sizes[b]; k++) {
            int64_t v = pick(&r, rows, special, nspecial);
            if (b == 1 && nspecial > 0) v = special[0];
            if (b == 3 && nspecial > 1) v = special[1];
            s.i64[pos++] = v;
        }
    }
    if (include_last) s.o64[nb] = pos;
    for (k = 0; k < trailing; k++) s.i64[pos++] = pick(&r, rows, special, nspecial);
    bs_finish(&s, &r);
    free(sizes);
    return s;
}

/* fixed form: nb bags of len indices; bag 1 only special[0], bag 2 only special[1] */
static bagset gen_fixed(uint64_t seed, int64_t rows, int64_t nb, int64_t len, const int64_t *special, int nspecial) {
    qt_rng r = qt_rng_make(seed);
    bagset s;
    int64_t b, k;
    memset(&s, 0, sizeof s);
    bs_alloc(&s, nb * len, 0);
    s.nb = nb;
    s.fixed = true;
    for (b = 0; b < nb; b++)
        for (k = 0; k < len; k++) {
            int64_t v = pick(&r, rows, special, nspecial);
            if (b == 1 && nspecial > 0) v = special[0];
            if (b == 2 && nspecial > 1) v = special[1];
            s.i64[b * len + k] = v;
        }
    bs_finish(&s, &r);
    return s;
}

static qembed_bags bags_of(const bagset *s, int idt, int wdt, int mode, int64_t pad) {
    qembed_bags b;
    qembed_bags_init(&b);
    b.indices = idt == I64 ? (const void *)s->i64 : (const void *)s->i32;
    b.index_dtype = idt;
    b.count = s->count;
    if (!s->fixed) {
        b.offsets = idt == I64 ? (const void *)s->o64 : (const void *)s->o32;
        b.num_offsets = s->num_offsets;
        b.include_last_offset = s->include_last;
    } else {
        b.num_bags = s->nb;
    }
    if (wdt >= 0) {
        b.per_sample_weights = wdt == F32 ? (const void *)s->w32 : wdt == F16 ? (const void *)s->w16 : (const void *)s->wbf;
        b.weights_dtype = wdt;
    }
    b.mode = mode;
    b.padding_idx = pad;
    return b;
}

/* ---- the header's rules, recomputed ------------------------------------------------ */

static int64_t ix(const void *p, int dt, int64_t k) {
    return dt == I64 ? ((const int64_t *)p)[k] : (int64_t)((const int32_t *)p)[k];
}

/* [start, end) of bag `bag` of nb */
static void range_of(const qembed_bags *b, int64_t nb, int64_t bag, int64_t *s, int64_t *e) {
    if (b->offsets == NULL) {
        const int64_t len = nb > 0 ? b->count / nb : 0;
        *s = bag * len;
        *e = *s + len;
    } else {
        *s = ix(b->offsets, b->index_dtype, bag);
        *e = bag + 1 < b->num_offsets ? ix(b->offsets, b->index_dtype, bag + 1) : b->count;
    }
}

/* out (nb x d) = the float32 reduction, in index order, of the rows of W; pad is a row or -1 */
static void ref_forward(const float *W, int64_t d, const qembed_bags *b, int64_t nb, int64_t pad, float *out) {
    int64_t bag, k, j;
    for (bag = 0; bag < nb; bag++) {
        float *o = out + bag * d;
        int64_t s, e, cnt = 0;
        range_of(b, nb, bag, &s, &e);
        for (j = 0; j < d; j++) o[j] = 0.0f;
        for (k = s; k < e; k++) {
            const int64_t i = ix(b->indices, b->index_dtype, k);
            const float *row = W + i * d;
            if (i == pad) continue;
            cnt++;
            if (b->mode == MAXM) {
                if (cnt == 1) {
                    for (j = 0; j < d; j++) o[j] = row[j];
                } else {
                    for (j = 0; j < d; j++)
                        if (row[j] > o[j]) o[j] = row[j]; /* strictly greater: the first index wins ties */
                }
            } else if (b->per_sample_weights != NULL) {
                const float w = qt_load_f(b->per_sample_weights, b->weights_dtype, k);
                for (j = 0; j < d; j++) {
                    const float p = row[j] * w;
                    o[j] = o[j] + p;
                }
            } else {
                for (j = 0; j < d; j++) o[j] = o[j] + row[j];
            }
        }
        if (b->mode == MEAN && cnt > 0)
            for (j = 0; j < d; j++) o[j] = o[j] / (float)cnt;
    }
}

/* out (n elements of odt) against ref, bit for bit; zero_lenient: +0 and -0 are equal (the sign of an
 * exact-zero sum is not specified), such differences are counted in zero_sign_notes */
static int64_t compare_out(const void *out, int odt, const float *ref, int64_t n, int64_t d, int zero_lenient,
                           char *why, size_t whylen) {
    int64_t i, bad = 0;
    why[0] = '\0';
    for (i = 0; i < n; i++) {
        const uint32_t got = qt_load_bits(out, odt, i), want = qt_store_bits(ref[i], odt);
        if (got == want) continue;
        if (zero_lenient && qt_load_f(out, odt, i) == 0.0f && qt_round_to(ref[i], odt) == 0.0f) {
            zero_sign_notes++;
            continue;
        }
        if (bad == 0)
            snprintf(why, whylen, "bag %lld column %lld: got %a (0x%x), want %a (0x%x)", (long long)(i / d),
                     (long long)(i % d), (double)qt_load_f(out, odt, i), (unsigned)got, (double)qt_round_to(ref[i], odt),
                     (unsigned)want);
        bad++;
    }
    return bad;
}

/* a fresh output buffer of n elements of odt plus a guard, all 0xA5 */
static unsigned char *out_buf(int64_t n, int odt) {
    const size_t bytes = (size_t)n * qembed_dtype_size(odt) + GUARD;
    unsigned char *o = (unsigned char *)xmalloc(bytes);
    memset(o, 0xA5, bytes);
    return o;
}

static int guard_ok(const unsigned char *o, int64_t n, int odt) {
    const size_t base = (size_t)n * qembed_dtype_size(odt);
    size_t i;
    for (i = 0; i < GUARD; i++)
        if (o[base + i] != 0xA5) return 0;
    return 1;
}

/* run a float-layer (e) or quantized (q) bag forward and compare it with ref */
static void check_forward(const char *what, qembed_embedding *e, const qembed_qembedding *q, const qembed_bags *b,
                          int64_t nb, int64_t d, int odt, const float *ref) {
    unsigned char *o = out_buf(nb * d, odt);
    char why[200];
    qembed_status st;
    qembed_clear_error();
    st = e != NULL ? qembed_embedding_bag_forward(e, b, o, odt, nb * d) : qembed_qembedding_bag_forward(q, b, o, odt, nb * d);
    if (CHECKF(st == QEMBED_OK, "%s: %s: %s", what, qembed_status_string(st), qembed_last_error())) {
        const int64_t bad = compare_out(o, odt, ref, nb * d, d, b->mode != MAXM, why, sizeof why);
        CHECKF(bad == 0, "%s: %lld of %lld values differ from the float32 index-order reduction; first: %s", what,
               (long long)bad, (long long)(nb * d), why);
        CHECKF(guard_ok(o, nb * d, odt), "%s: wrote past num_bags x embedding_dim", what);
    }
    free(o);
}

/* ---- bags_init and num_bags -------------------------------------------------------- */

static void test_init_and_num_bags(void) {
    qembed_bags b;
    int64_t nb = -7;
    static const int64_t off[5] = {0, 0, 3, 3, 6};
    static const int64_t idx[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    memset(&b, 0x5A, sizeof b);
    qembed_bags_init(&b);
    CHECKF(b.struct_size == sizeof(qembed_bags), "struct_size %u", (unsigned)b.struct_size);
    CHECK(b.indices == NULL && b.count == 0);
    CHECKF(b.index_dtype == I64, "index_dtype %d", b.index_dtype);
    CHECK(b.offsets == NULL && b.num_offsets == 0 && b.include_last_offset == false && b.num_bags == 0);
    CHECK(b.per_sample_weights == NULL);
    CHECKF(b.weights_dtype == F32, "weights_dtype %d", b.weights_dtype);
    CHECKF(b.mode == MEAN, "mode %d (torch's default is mean)", b.mode);
    CHECKF(b.padding_idx == NOPAD, "padding_idx %lld", (long long)b.padding_idx);
    qembed_bags_init(NULL); /* must not crash */

    /* the defaults describe zero bags */
    CHECK(qembed_bags_num_bags(&b, &nb) == QEMBED_OK && nb == 0);
    /* offsets form */
    b.indices = idx;
    b.count = 8;
    b.offsets = off;
    b.num_offsets = 5;
    nb = -7;
    CHECKF(qembed_bags_num_bags(&b, &nb) == QEMBED_OK && nb == 5, "offsets form: %lld (%s)", (long long)nb, qembed_last_error());
    b.include_last_offset = true;
    nb = -7;
    CHECKF(qembed_bags_num_bags(&b, &nb) == QEMBED_OK && nb == 4, "include_last_offset: %lld (%s)", (long long)nb,
           qembed_last_error());
    b.num_offsets = 1;
    nb = -7;
    CHECKF(qembed_bags_num_bags(&b, &nb) == QEMBED_OK && nb == 0, "include_last_offset, one offset: %lld (%s)",
           (long long)nb, qembed_last_error());
    /* fixed form */
    b.offsets = NULL;
    b.num_offsets = 0;
    b.include_last_offset = false;
    b.num_bags = 4;
    nb = -7;
    CHECKF(qembed_bags_num_bags(&b, &nb) == QEMBED_OK && nb == 4, "fixed form: %lld (%s)", (long long)nb, qembed_last_error());
    b.count = 0;
    b.indices = NULL;
    b.num_bags = 3;
    nb = -7;
    CHECKF(qembed_bags_num_bags(&b, &nb) == QEMBED_OK && nb == 3, "fixed form, 3 empty bags: %lld (%s)", (long long)nb,
           qembed_last_error());
    /* the index values are not looked at */
    {
        static const int64_t bad_idx[4] = {-5, INT64_MAX, 3, 1};
        b.indices = bad_idx;
        b.count = 4;
        b.num_bags = 2;
        nb = -7;
        CHECKF(qembed_bags_num_bags(&b, &nb) == QEMBED_OK && nb == 2, "num_bags looked at the index values: %lld (%s)",
               (long long)nb, qembed_last_error());
    }
}

/* ---- forward over float layers --------------------------------------------------------- */

enum { PA = 5, PB = 44 }; /* PA: the layer's padding row; PB: the override (given as PB - rows) */

static void test_forward_float(void) {
    const int64_t n = 50, d = 37;
    const int64_t special[2] = {PA, PB};
    float *table = wide_table(1, n * d);
    int lt;
    int64_t j;
    /* the padding rows hold non-zero values (a pretrained table keeps them): skipping them is visible */
    for (j = 0; j < d; j++) {
        table[PA * d + j] = 1.5f + (float)j;
        table[PB * d + j] = -2.25f - (float)j;
    }
    for (lt = 0; lt < 3; lt++) {
        qembed_embedding *lp = layer_from(table, n, d, lo(FDT[lt], PA)), *ln = layer_from(table, n, d, lo(FDT[lt], NOPAD));
        float *W = qt_weight_copy(lp);
        int form;
        for (j = 0; j < n * d; j++)
            if (W[j] != qt_round_to(table[j], FDT[lt])) break;
        CHECKF(j == n * d, "%s layer: the pretrained table was not kept", dn(FDT[lt]));
        for (form = 0; form < 3; form++) {
            bagset s = form == 2 ? gen_fixed(10 + (uint64_t)lt, n, 9, 4, special, 2)
                                 : gen_offsets(20 + (uint64_t)(lt * 3 + form), n, 14, 8, form == 1, 5, special, 2);
            int pv;
            for (pv = 0; pv < 4; pv++) {
                /* pv 0: the layer's padding PA; 1: override PB on that layer; 2: no padding; 3: override PB, layer without */
                qembed_embedding *e = pv < 2 ? lp : ln;
                const int64_t bpad = (pv == 1 || pv == 3) ? PB - n : NOPAD;
                const int64_t eff = pv == 0 ? PA : pv == 2 ? -1 : PB;
                int mode;
                for (mode = 0; mode < QEMBED_BAG_MODE_COUNT; mode++) {
                    int wk;
                    for (wk = -1; wk < 3; wk++) {
                        const int wdt = wk < 0 ? -1 : FDT[wk];
                        qembed_bags b = bags_of(&s, I64, wdt, mode, bpad);
                        float *ref = (float *)xmalloc((size_t)(s.nb * d) * sizeof(float));
                        int ik, ok;
                        if (wk >= 0 && mode != SUM) {
                            free(ref);
                            continue;
                        }
                        ref_forward(W, d, &b, s.nb, eff, ref);
                        for (ik = 0; ik < 2; ik++)
                            for (ok = 0; ok < 3; ok++) {
                                char what[200];
                                b = bags_of(&s, ik ? I64 : I32, wdt, mode, bpad);
                                snprintf(what, sizeof what,
                                         "%s layer, %s, %s, padding case %d, weights %s, %s indices, %s out", dn(FDT[lt]),
                                         form == 0 ? "offsets" : form == 1 ? "include_last_offset" : "fixed",
                                         mode_name(mode), pv, dn(wdt), ik ? "i64" : "i32", dn(FDT[ok]));
                                check_forward(what, e, NULL, &b, s.nb, d, FDT[ok], ref);
                            }
                        free(ref);
                    }
                }
            }
            {
                qembed_bags b = bags_of(&s, I32, -1, SUM, NOPAD);
                int64_t nb = -1;
                CHECKF(qembed_bags_num_bags(&b, &nb) == QEMBED_OK && nb == s.nb, "num_bags %lld, want %lld",
                       (long long)nb, (long long)s.nb);
            }
            bs_free(&s);
        }
        /* the all-padding bags really are zeros, and the override makes PA an ordinary row */
        {
            static const int64_t idx[5] = {PA, PA, PB, PA, PB};
            static const int64_t off[3] = {0, 2, 3};
            qembed_bags b;
            float o[3 * 37];
            int m;
            qembed_bags_init(&b);
            b.indices = idx;
            b.count = 5;
            b.offsets = off;
            b.num_offsets = 3;
            for (m = 0; m < 3; m++) {
                int zero = 1, plain = 1;
                b.mode = m;
                b.padding_idx = NOPAD;
                CHECK(qembed_embedding_bag_forward(lp, &b, o, F32, 3 * d) == QEMBED_OK);
                for (j = 0; j < d; j++)
                    if (o[j] != 0.0f || signbit(o[j])) zero = 0;
                CHECKF(zero, "%s layer, %s: a bag of padding indices is not +0", dn(FDT[lt]), mode_name(m));
                b.padding_idx = PB;
                CHECK(qembed_embedding_bag_forward(lp, &b, o, F32, 3 * d) == QEMBED_OK);
                for (j = 0; j < d; j++) {
                    const float want = m == SUM ? W[PA * d + j] + W[PA * d + j] : W[PA * d + j];
                    if (o[j] != want) plain = 0;
                    if (o[d + j] != 0.0f) plain = 0; /* bag {PB} */
                }
                CHECKF(plain, "%s layer, %s: with padding_idx %d the layer's padding row %d is not an ordinary row",
                       dn(FDT[lt]), mode_name(m), PB, PA);
            }
        }
        free(W);
        qembed_embedding_free(lp);
        qembed_embedding_free(ln);
    }
    free(table);
}

/* ---- empty inputs -------------------------------------------------------------------------- */

static void test_empty(void) {
    const int64_t n = 6, d = 5;
    float *table = wide_table(2, n * d);
    qembed_embedding *e = layer_from(table, n, d, lo(F32, NOPAD));
    qembed_bags b;
    float o[4 * 5 + 1];
    static const int64_t zero_off[4] = {0, 0, 0, 0};
    int64_t j;
    int m, il;
    for (m = 0; m < 3; m++) {
        int ok = 1;
        /* fixed form: 3 bags of no index, indices NULL */
        qembed_bags_init(&b);
        b.mode = m;
        b.num_bags = 3;
        for (j = 0; j < 21; j++) o[j] = 99.0f;
        CHECKF(qembed_embedding_bag_forward(e, &b, o, F32, 3 * d) == QEMBED_OK, "%s: %s", mode_name(m), qembed_last_error());
        for (j = 0; j < 3 * d; j++)
            if (o[j] != 0.0f || signbit(o[j])) ok = 0;
        CHECKF(ok && o[3 * d] == 99.0f, "%s: three empty fixed bags are not +0", mode_name(m));
        /* offsets form, count 0, indices NULL: 4 empty bags (3 with include_last_offset) */
        for (il = 0; il < 2; il++) {
            const int64_t nb = il ? 3 : 4;
            ok = 1;
            b.num_bags = 0;
            b.offsets = zero_off;
            b.num_offsets = 4;
            b.include_last_offset = il;
            for (j = 0; j < 21; j++) o[j] = 99.0f;
            CHECKF(qembed_embedding_bag_forward(e, &b, o, F32, nb * d) == QEMBED_OK, "%s: %s", mode_name(m),
                   qembed_last_error());
            for (j = 0; j < nb * d; j++)
                if (o[j] != 0.0f || signbit(o[j])) ok = 0;
            CHECKF(ok && o[nb * d] == 99.0f, "%s, include_last_offset %d: empty offset bags are not +0", mode_name(m), il);
        }
        /* zero bags: nothing to write, out_len 0 */
        qembed_bags_init(&b);
        b.mode = m;
        o[0] = 99.0f;
        CHECKF(qembed_embedding_bag_forward(e, &b, o, F32, 0) == QEMBED_OK, "%s, no bags: %s", mode_name(m),
               qembed_last_error());
        CHECK(o[0] == 99.0f);
    }
    qembed_embedding_free(e);
    free(table);
}

/* ---- max_norm and StableEmbedding ------------------------------------------------------------ */

static void test_max_norm(void) {
    const int64_t n = 30, d = 9;
    qt_rng r = qt_rng_make(3);
    float *table = (float *)xmalloc((size_t)(n * d) * sizeof(float));
    int64_t i, j;
    int m;
    for (i = 0; i < n; i++)
        for (j = 0; j < d; j++) table[i * d + j] = qt_normal(&r) * (float)(0.05 + 0.2 * (double)i); /* norms ~0.15 .. 17 */
    for (m = 0; m < 3; m++) {
        lopt o = lo(F32, NOPAD);
        qembed_embedding *a, *t;
        bagset s = gen_offsets(30 + (uint64_t)m, n, 8, 5, false, 0, NULL, 0);
        qembed_bags b = bags_of(&s, I64, -1, m, NOPAD);
        float *before, *wa, *wt, *ref, *tmp = (float *)xmalloc((size_t)(s.count * d) * sizeof(float));
        o.max_norm = 1.5;
        a = layer_from(table, n, d, o);
        t = layer_from(table, n, d, o);
        before = qt_weight_copy(a);
        {
            unsigned char *out = out_buf(s.nb * d, F32);
            qembed_status st = qembed_embedding_bag_forward(a, &b, out, F32, s.nb * d);
            CHECKF(st == QEMBED_OK, "max_norm %s: %s", mode_name(m), qembed_last_error());
            CHECK(qembed_embedding_forward(t, s.i64, I64, s.count, tmp, F32, s.count * d) == QEMBED_OK);
            wa = qt_weight_copy(a);
            wt = qt_weight_copy(t);
            CHECKF(memcmp(wa, wt, (size_t)(n * d) * sizeof(float)) == 0,
                   "max_norm %s: the bag forward did not renormalize the rows as qembed_embedding_forward does", mode_name(m));
            CHECKF(memcmp(wa, before, (size_t)(n * d) * sizeof(float)) != 0, "max_norm %s: the test renormalized nothing",
                   mode_name(m));
            ref = (float *)xmalloc((size_t)(s.nb * d) * sizeof(float));
            ref_forward(wa, d, &b, s.nb, -1, ref);
            if (st == QEMBED_OK) {
                char why[200];
                const int64_t bad = compare_out(out, F32, ref, s.nb * d, d, m != MAXM, why, sizeof why);
                CHECKF(bad == 0, "max_norm %s: output is not the reduction of the renormalized rows: %s", mode_name(m), why);
            }
            free(out);
            free(ref);
        }
        free(before);
        free(wa);
        free(wt);
        free(tmp);
        bs_free(&s);
        qembed_embedding_free(a);
        qembed_embedding_free(t);
    }
    free(table);
}

static void test_stable(void) {
    const int64_t n = 20, d = 12;
    float *table = wide_table(6, n * d);
    lopt o = lo(F32, 2);
    qembed_embedding *e;
    float *W;
    int m;
    o.stable = 1;
    e = layer_from(table, n, d, o);
    W = qt_weight_copy(e);
    CHECK(memcmp(W, table, (size_t)(n * d) * sizeof(float)) == 0);
    for (m = 0; m < 3; m++) {
        const int64_t special[1] = {2};
        bagset s = gen_offsets(60 + (uint64_t)m, n, 7, 4, true, 2, special, 1);
        qembed_bags b = bags_of(&s, I32, -1, m, NOPAD);
        float *ref = (float *)xmalloc((size_t)(s.nb * d) * sizeof(float));
        char what[80];
        ref_forward(W, d, &b, s.nb, 2, ref);
        snprintf(what, sizeof what, "StableEmbedding %s (raw rows, no LayerNorm)", mode_name(m));
        check_forward(what, e, NULL, &b, s.nb, d, F32, ref);
        free(ref);
        bs_free(&s);
    }
    free(W);
    free(table);
    qembed_embedding_free(e);
}

/* ---- backward reference ----------------------------------------------------------------------- */

typedef struct gref {
    float *f;      /* float32 contributions added in index order */
    double *dv;    /* the same in double */
    double *mag;   /* sum of |contributions| */
    double *pw;    /* grad_per_sample_weights in double */
    double *pwmag; /* sum of |products| of each dot */
} gref;

static gref gref_new(int64_t n, int64_t d, int64_t count) {
    gref r;
    size_t c = (size_t)(count > 0 ? count : 1);
    r.f = (float *)calloc((size_t)(n * d), sizeof(float));
    r.dv = (double *)calloc((size_t)(n * d), sizeof(double));
    r.mag = (double *)calloc((size_t)(n * d), sizeof(double));
    r.pw = (double *)calloc(c, sizeof(double));
    r.pwmag = (double *)calloc(c, sizeof(double));
    if (!r.f || !r.dv || !r.mag || !r.pw || !r.pwmag) exit(2);
    return r;
}

static void gref_free(gref *r) {
    free(r->f);
    free(r->dv);
    free(r->mag);
    free(r->pw);
    free(r->pwmag);
}

/* the header's backward: SUM adds g[bag] (times w[k]) to each non-padding row, MEAN g[bag] / count,
 * MAX each element to the row holding the first maximum; scale_grad_by_freq divides by the count
 * of the index in the whole input; grad_per_sample_weights[k] = g[bag(k)] . row(indices[k]) */
static void ref_backward(const float *W, int64_t n, int64_t d, const qembed_bags *b, int64_t nb, int64_t pad,
                         const float *g, bool freq, gref *r) {
    int64_t *fc = (int64_t *)calloc((size_t)n, sizeof(int64_t)), bag, k, j;
    if (fc == NULL) exit(2);
    for (k = 0; k < b->count; k++) fc[ix(b->indices, b->index_dtype, k)]++;
    for (bag = 0; bag < nb; bag++) {
        int64_t s, e, cnt = 0;
        const float *gb = g + bag * d;
        range_of(b, nb, bag, &s, &e);
        for (k = s; k < e; k++)
            if (ix(b->indices, b->index_dtype, k) != pad) cnt++;
        if (b->mode == MAXM) {
            for (j = 0; j < d; j++) {
                int64_t best = -1;
                float bv = 0.0f;
                for (k = s; k < e; k++) {
                    const int64_t i = ix(b->indices, b->index_dtype, k);
                    if (i == pad) continue;
                    if (best < 0 || W[i * d + j] > bv) {
                        best = i;
                        bv = W[i * d + j];
                    }
                }
                if (best >= 0) {
                    r->f[best * d + j] += gb[j];
                    r->dv[best * d + j] += gb[j];
                    r->mag[best * d + j] += fabs((double)gb[j]);
                }
            }
        } else {
            for (k = s; k < e; k++) {
                const int64_t i = ix(b->indices, b->index_dtype, k);
                const float wk = b->per_sample_weights ? qt_load_f(b->per_sample_weights, b->weights_dtype, k) : 1.0f;
                if (i == pad) continue;
                for (j = 0; j < d; j++) {
                    float c = gb[j];
                    double cd = gb[j];
                    if (b->per_sample_weights) {
                        c = c * wk;
                        cd *= wk;
                    }
                    if (b->mode == MEAN) {
                        c = c / (float)cnt;
                        cd /= (double)cnt;
                    }
                    if (freq) {
                        c = c / (float)fc[i];
                        cd /= (double)fc[i];
                    }
                    r->f[i * d + j] += c;
                    r->dv[i * d + j] += cd;
                    r->mag[i * d + j] += fabs(cd);
                }
            }
        }
        if (b->per_sample_weights)
            for (k = s; k < e; k++) {
                const int64_t i = ix(b->indices, b->index_dtype, k);
                double acc = 0.0, mag = 0.0;
                if (i == pad) continue;
                for (j = 0; j < d; j++) {
                    acc += (double)gb[j] * W[i * d + j];
                    mag += fabs((double)gb[j] * W[i * d + j]);
                }
                r->pw[k] = acc;
                r->pwmag[k] = mag;
            }
    }
    free(fc);
}

/* got (n x d) against the reference: within 4e-6 of the summed magnitudes (zero where nothing
 * arrives), and with `exact` equal to the float32 index-order sums */
static int64_t compare_grad(const float *got, const gref *r, int64_t n, int64_t d, int exact, double factor, char *why,
                            size_t whylen) {
    int64_t i, bad = 0;
    why[0] = '\0';
    for (i = 0; i < n * d; i++) {
        const double want = factor * r->dv[i], tol = 4e-6 * factor * r->mag[i];
        int ok = fabs((double)got[i] - want) <= tol;
        if (exact && got[i] != (float)factor * r->f[i]) ok = 0;
        if (!ok) {
            if (bad == 0)
                snprintf(why, whylen, "row %lld column %lld: got %a, want %a (float32 index order %a)", (long long)(i / d),
                         (long long)(i % d), (double)got[i], want, (double)((float)factor * r->f[i]));
            bad++;
        }
    }
    return bad;
}

#define PSW_SENTINEL 0xA5

/* grad_per_sample_weights (count floats) against the reference; untouched when b has no weights */
static void check_psw(const char *what, const float *gp, const qembed_bags *b, const gref *r, int64_t d) {
    int64_t k, bad = 0;
    char why[200] = "";
    if (b->per_sample_weights == NULL) {
        const unsigned char *p = (const unsigned char *)gp;
        size_t i;
        for (i = 0; i < (size_t)b->count * sizeof(float); i++)
            if (p[i] != PSW_SENTINEL) break;
        CHECKF(i == (size_t)b->count * sizeof(float), "%s: grad_per_sample_weights written without per_sample_weights", what);
        return;
    }
    for (k = 0; k < b->count; k++) {
        const double tol = (double)(d + 4) * ldexp(1.0, -24) * r->pwmag[k];
        if (!(fabs((double)gp[k] - r->pw[k]) <= tol)) {
            if (bad == 0)
                snprintf(why, sizeof why, "k %lld (index %lld): got %a, want %a (tolerance %g)", (long long)k,
                         (long long)ix(b->indices, b->index_dtype, k), (double)gp[k], r->pw[k], tol);
            bad++;
        }
    }
    CHECKF(bad == 0, "%s: %lld grad_per_sample_weights wrong; first: %s", what, (long long)bad, why);
}

static float *psw_buf(int64_t count) {
    float *p = (float *)xmalloc((size_t)(count + 16) * sizeof(float));
    memset(p, PSW_SENTINEL, (size_t)(count + 16) * sizeof(float));
    return p;
}

/* ---- backward ----------------------------------------------------------------------------------- */

static void test_backward(void) {
    const int64_t n = 50, d = 19;
    const int64_t special[2] = {PA, PB};
    static const int ldts[2] = {F32, BF16};
    float *table = wide_table(7, n * d);
    int lt, form;
    int64_t j;
    for (j = 0; j < d; j++) {
        table[PA * d + j] = 0.5f + (float)j;
        table[PB * d + j] = -0.75f - (float)j;
    }
    for (lt = 0; lt < 2; lt++)
        for (form = 0; form < 3; form++) {
            bagset s = form == 2 ? gen_fixed(70 + (uint64_t)lt, n, 8, 5, special, 2)
                                 : gen_offsets(80 + (uint64_t)(lt * 3 + form), n, 12, 7, form == 1, 4, special, 2);
            float *g = dyadic(90 + (uint64_t)(lt * 3 + form), s.nb * d);
            int pv;
            for (pv = 0; pv < 3; pv++) {
                const int64_t bpad = pv == 1 ? PB - n : NOPAD, eff = pv == 0 ? PA : pv == 1 ? PB : -1;
                int mc;
                for (mc = 0; mc < 5; mc++) {
                    /* 0 SUM, 1 SUM with f32 weights, 2 SUM with f16 weights, 3 MEAN, 4 MAX */
                    const int mode = mc <= 2 ? SUM : mc == 3 ? MEAN : MAXM;
                    const int wdt = mc == 1 ? F32 : mc == 2 ? F16 : -1;
                    int freq, sparse;
                    for (freq = 0; freq < 2; freq++)
                        for (sparse = 0; sparse < 2; sparse++) {
                            lopt o = lo(ldts[lt], pv < 2 ? PA : NOPAD);
                            qembed_embedding *e;
                            float *W, *W2, *gp, *got;
                            qembed_bags b;
                            qembed_status st;
                            gref r;
                            char what[200], why[200];
                            int rows_ok, has;
                            if (freq && (form == 1 || mode == MAXM)) continue; /* MAX: refused, below */
                            if (sparse && mode == MAXM) continue;
                            o.freq = freq;
                            o.sparse = sparse;
                            e = layer_from(table, n, d, o);
                            W = qt_weight_copy(e);
                            b = bags_of(&s, (mc + form) % 2 ? I32 : I64, wdt, mode, bpad);
                            gp = psw_buf(s.count);
                            snprintf(what, sizeof what, "backward %s layer, %s, %s, weights %s, padding case %d, freq %d, %s",
                                     dn(ldts[lt]), form == 0 ? "offsets" : form == 1 ? "include_last_offset" : "fixed",
                                     mode_name(mode), dn(wdt), pv, freq, sparse ? "sparse" : "dense");
                            /* grad_per_sample_weights only with per_sample_weights (test_backward_misc checks
                             * a buffer given without them) */
                            st = qembed_embedding_bag_backward(e, &b, g, F32, s.nb * d, mc == 1 ? gp : NULL);
                            if (!CHECKF(st == QEMBED_OK, "%s: %s: %s", what, qembed_status_string(st), qembed_last_error())) {
                                free(W);
                                free(gp);
                                qembed_embedding_free(e);
                                continue;
                            }
                            r = gref_new(n, d, s.count);
                            ref_backward(W, n, d, &b, s.nb, eff, g, freq, &r);
                            got = grad_dense(e, n, d, eff, &rows_ok, &has);
                            CHECKF(has, "%s: no gradient", what);
                            CHECKF(rows_ok, "%s: sparse rows not sorted, distinct and in range, or padding row non-zero", what);
                            {
                                const int exact = !freq && (mode == SUM && wdt < 0 ? 1 : mode == MAXM);
                                const int64_t bad = compare_grad(got, &r, n, d, exact, 1.0, why, sizeof why);
                                CHECKF(bad == 0, "%s: %lld gradient values wrong; first: %s", what, (long long)bad, why);
                            }
                            if (mc == 1) check_psw(what, gp, &b, &r, d);
                            W2 = qt_weight_copy(e);
                            CHECKF(memcmp(W, W2, (size_t)(n * d) * sizeof(float)) == 0, "%s: backward changed the weight", what);
                            /* a second backward accumulates (SUM without weights: exactly twice) */
                            if (mc == 0 && !freq) {
                                float *got2;
                                CHECK(qembed_embedding_bag_backward(e, &b, g, F32, s.nb * d, NULL) == QEMBED_OK);
                                got2 = grad_dense(e, n, d, eff, &rows_ok, &has);
                                CHECKF(compare_grad(got2, &r, n, d, 1, 2.0, why, sizeof why) == 0,
                                       "%s: the second backward did not accumulate: %s", what, why);
                                free(got2);
                            }
                            free(W2);
                            free(got);
                            gref_free(&r);
                            free(W);
                            free(gp);
                            qembed_embedding_free(e);
                        }
                }
            }
            /* f16 and bf16 grad_output: the converted (here exact) values */
            {
                uint16_t *h = (uint16_t *)xmalloc((size_t)(s.nb * d) * 2), *bf = (uint16_t *)xmalloc((size_t)(s.nb * d) * 2);
                int gk;
                for (j = 0; j < s.nb * d; j++) {
                    h[j] = qt_f32_to_f16(g[j]);
                    bf[j] = qt_f32_to_bf16(g[j]);
                }
                for (gk = 0; gk < 2; gk++) {
                    qembed_embedding *e = layer_from(table, n, d, lo(ldts[lt], PA));
                    float *W = qt_weight_copy(e), *got;
                    qembed_bags b = bags_of(&s, I64, -1, SUM, NOPAD);
                    gref r = gref_new(n, d, s.count);
                    char why[200];
                    int rows_ok, has;
                    CHECK(qembed_embedding_bag_backward(e, &b, gk ? (const void *)bf : (const void *)h, gk ? BF16 : F16,
                                                        s.nb * d, NULL) == QEMBED_OK);
                    ref_backward(W, n, d, &b, s.nb, PA, g, false, &r);
                    got = grad_dense(e, n, d, PA, &rows_ok, &has);
                    CHECKF(has && compare_grad(got, &r, n, d, 1, 1.0, why, sizeof why) == 0, "%s grad_output: %s",
                           gk ? "bf16" : "f16", why);
                    free(got);
                    free(W);
                    gref_free(&r);
                    qembed_embedding_free(e);
                }
                free(h);
                free(bf);
            }
            free(g);
            bs_free(&s);
        }
    free(table);
}

/* a plain backward and a bag backward add into the same gradient; a frozen weight gets nothing;
 * MAX refuses scale_grad_by_freq and sparse layers */
static void test_backward_misc(void) {
    const int64_t n = 12, d = 6;
    float *table = wide_table(8, n * d);
    const int64_t idx[7] = {1, 4, 4, 0, 11, 3, 4}, off[3] = {0, 3, 5};
    float *g = dyadic(9, 3 * d), w[7] = {0.5f, -2.0f, 1.0f, 0.25f, 4.0f, -1.0f, 3.0f};
    qembed_bags b;
    int64_t k, j;
    qembed_bags_init(&b);
    b.indices = idx;
    b.count = 7;
    b.offsets = off;
    b.num_offsets = 3;
    b.mode = SUM;
    /* plain, then bag: sums of dyadic values, exact */
    {
        qembed_embedding *e = layer_from(table, n, d, lo(F32, NOPAD));
        const int64_t pidx[2] = {4, 7};
        float *pg = dyadic(10, 2 * d), want[12 * 6];
        qembed_param_info info;
        memset(want, 0, sizeof want);
        CHECK(qembed_embedding_backward(e, pidx, I64, 2, pg, F32, 2 * d) == QEMBED_OK);
        CHECK(qembed_embedding_bag_backward(e, &b, g, F32, 3 * d, NULL) == QEMBED_OK);
        for (k = 0; k < 2; k++)
            for (j = 0; j < d; j++) want[pidx[k] * d + j] += pg[k * d + j];
        for (k = 0; k < 7; k++) {
            const int64_t bag = k < 3 ? 0 : k < 5 ? 1 : 2;
            for (j = 0; j < d; j++) want[idx[k] * d + j] += g[bag * d + j];
        }
        info = qt_info_of(qt_param_of(e, 0));
        CHECKF(info.grad != NULL && memcmp(info.grad, want, sizeof want) == 0,
               "a bag backward after a plain backward does not add to its gradient");
        free(pg);
        qembed_embedding_free(e);
    }
    /* grad_per_sample_weights given without per_sample_weights: refused (the header says so),
     * and neither that buffer nor the gradient is touched */
    {
        qembed_embedding *e = layer_from(table, n, d, lo(F32, NOPAD));
        float gp[7 + 16];
        qembed_status st;
        memset(gp, PSW_SENTINEL, sizeof gp);
        qembed_clear_error();
        st = qembed_embedding_bag_backward(e, &b, g, F32, 3 * d, gp);
        CHECKF(st == QEMBED_ERR_INVALID_ARGUMENT && strstr(qembed_last_error(), "grad_per_sample_weights"),
               "grad_per_sample_weights without per_sample_weights: %s: %s", qembed_status_string(st), qembed_last_error());
        for (k = 0; k < (int64_t)sizeof gp; k++)
            if (((unsigned char *)gp)[k] != PSW_SENTINEL) break;
        CHECKF(k == (int64_t)sizeof gp, "grad_per_sample_weights written without per_sample_weights");
        qembed_embedding_free(e);
    }
    /* frozen: no weight gradient, dense or sparse; grad_per_sample_weights still d out / d w */
    {
        int sp;
        for (sp = 0; sp < 2; sp++) {
            lopt o = lo(F32, NOPAD);
            qembed_embedding *e;
            float gp[7 + 16];
            int64_t nnz = -1;
            gref r = gref_new(n, d, 7);
            o.freeze = true;
            o.sparse = sp;
            e = layer_from(table, n, d, o);
            b.per_sample_weights = w;
            memset(gp, PSW_SENTINEL, sizeof gp);
            CHECKF(qembed_embedding_bag_backward(e, &b, g, F32, 3 * d, gp) == QEMBED_OK, "frozen: %s", qembed_last_error());
            CHECKF(qt_info_of(qt_param_of(e, 0)).grad == NULL, "a frozen weight got a dense gradient");
            CHECK(qembed_param_sparse_grad(qt_param_of(e, 0), &nnz, NULL, 0, NULL, 0) == QEMBED_OK && nnz == 0);
            ref_backward(table, n, d, &b, 3, -1, g, false, &r);
            check_psw(sp ? "frozen sparse layer" : "frozen layer", gp, &b, &r, d);
            b.per_sample_weights = NULL;
            gref_free(&r);
            qembed_embedding_free(e);
        }
    }
    /* MAX with scale_grad_by_freq or a sparse layer is refused, and changes nothing */
    {
        int c;
        for (c = 0; c < 3; c++) {
            lopt o = lo(F32, NOPAD);
            qembed_embedding *e;
            float gp[7 + 16];
            qembed_status st;
            int64_t nnz = -1;
            const char *msg;
            o.freq = c != 1;
            o.sparse = c != 0;
            e = layer_from(table, n, d, o);
            b.mode = MAXM;
            memset(gp, PSW_SENTINEL, sizeof gp);
            qembed_clear_error();
            st = qembed_embedding_bag_backward(e, &b, g, F32, 3 * d, NULL);
            msg = qembed_last_error();
            CHECKF(st == QEMBED_ERR_INVALID_ARGUMENT || st == QEMBED_ERR_UNSUPPORTED,
                   "MAX backward with scale_grad_by_freq %d, sparse %d: status %s, want invalid argument or unsupported",
                   o.freq, o.sparse, qembed_status_string(st));
            CHECKF(qt_names_any(msg, o.freq && o.sparse ? "mode|max|scale_grad_by_freq|sparse"
                                   : o.freq             ? "mode|max|scale_grad_by_freq"
                                                        : "mode|max|sparse"),
                   "MAX backward refusal (freq %d, sparse %d): message \"%s\"", o.freq, o.sparse, msg);
            CHECK(qt_info_of(qt_param_of(e, 0)).grad == NULL);
            CHECK(qembed_param_sparse_grad(qt_param_of(e, 0), &nnz, NULL, 0, NULL, 0) == QEMBED_OK && nnz == 0);
            for (k = 0; k < (int64_t)sizeof gp; k++)
                if (((unsigned char *)gp)[k] != PSW_SENTINEL) break;
            CHECK(k == (int64_t)sizeof gp);
            b.mode = SUM;
            qembed_embedding_free(e);
        }
    }
    free(g);
    free(table);
}

/* MAX ties: the first index wins, in the forward (bits: +0 before -0 stays +0) and in the backward */
static void test_max_ties(void) {
    static const float t[5 * 4] = {1, 2, 3, 4, 1, 5, 3, 0, 0.0f, -1, 0.0f, 7, -0.0f, -1, 9, 7, -3, -3, -3, -3};
    static const int64_t idx[9] = {1, 0, 0, 1, 2, 3, 3, 2, 4};
    static const int64_t off[5] = {0, 2, 4, 6, 8};
    qembed_embedding *e = layer_from(t, 5, 4, lo(F32, NOPAD));
    qembed_bags b;
    float ref[20], g[20], *got;
    gref r;
    char why[200];
    int rows_ok, has, k;
    qembed_bags_init(&b);
    b.indices = idx;
    b.count = 9;
    b.offsets = off;
    b.num_offsets = 5;
    b.mode = MAXM;
    ref_forward(t, 4, &b, 5, -1, ref);
    CHECK(qt_f32_bits(ref[8]) == 0u && qt_f32_bits(ref[12]) == 0x80000000u); /* the reference's own tie rule */
    check_forward("MAX ties", e, NULL, &b, 5, 4, F32, ref);
    for (k = 0; k < 20; k++) g[k] = (float)(k / 4 + 1) + (float)(k % 4) / 8.0f;
    CHECK(qembed_embedding_bag_backward(e, &b, g, F32, 20, NULL) == QEMBED_OK);
    r = gref_new(5, 4, 9);
    ref_backward(t, 5, 4, &b, 5, -1, g, false, &r);
    got = grad_dense(e, 5, 4, -1, &rows_ok, &has);
    CHECKF(has && compare_grad(got, &r, 5, 4, 1, 1.0, why, sizeof why) == 0,
           "MAX backward ties: the gradient must go to the first index holding the maximum: %s", why);
    free(got);
    gref_free(&r);
    qembed_embedding_free(e);
}

/* ---- quantized tables ---------------------------------------------------------------------------- */

typedef struct qcfg {
    int kind;
    int64_t bs;
    bool nested;
} qcfg;

static const qcfg QCFG[] = {{QEMBED_QEMB_INT8, 0, false}, {QEMBED_QEMB_FP4, 64, false}, {QEMBED_QEMB_FP4, 128, true},
                            {QEMBED_QEMB_NF4, 32, false}, {QEMBED_QEMB_NF4, 64, true},  {QEMBED_QEMB_NF4, 4096, true}};
#define NQCFG ((int)(sizeof QCFG / sizeof QCFG[0]))

static const char *qname(const qcfg *c) {
    static char buf[48];
    snprintf(buf, sizeof buf, "%s bs%lld%s", c->kind == QEMBED_QEMB_INT8 ? "int8" : c->kind == QEMBED_QEMB_FP4 ? "fp4" : "nf4",
             (long long)c->bs, c->nested ? " nested" : "");
    return buf;
}

/* every row of q, as qembed_qembedding_forward gives it in float32 */
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

static void test_quantized(void) {
    const int64_t n = 50, d = 40;
    const int64_t special[2] = {PA, PB};
    static const int combos[4][2] = {{I64, F32}, {I32, F32}, {I64, F16}, {I32, BF16}};
    float *table = wide_table(11, n * d);
    int ci, sk;
    for (ci = 0; ci < NQCFG; ci++)
        for (sk = 0; sk < 3; sk++) {
            const qcfg *c = &QCFG[ci];
            void *src = qt_to_dtype(table, n * d, FDT[sk]);
            qembed_qembedding *q = NULL;
            float *R;
            int form;
            qembed_status st = qembed_qembedding_quantize(src, FDT[sk], n, d, c->kind, c->bs, c->nested, &q);
            free(src);
            if (!CHECKF(st == QEMBED_OK, "quantize %s: %s", qname(c), qembed_last_error())) continue;
            R = q_rows(q, n, d);
            for (form = 0; form < 3; form++) {
                bagset s = form == 2 ? gen_fixed(110 + (uint64_t)ci, n, 9, 3, special, 2)
                                     : gen_offsets(120 + (uint64_t)(ci * 3 + form), n, 13, 8, form == 1, 3, special, 2);
                int pv;
                for (pv = 0; pv < 3; pv++) {
                    /* 0: none (the table has no padding of its own); 1: PA; 2: PB given negative */
                    const int64_t bpad = pv == 0 ? NOPAD : pv == 1 ? PA : PB - n, eff = pv == 0 ? -1 : pv == 1 ? PA : PB;
                    int mc;
                    for (mc = 0; mc < 6; mc++) {
                        const int mode = mc <= 3 ? SUM : mc == 4 ? MEAN : MAXM;
                        const int wdt = mc == 1 ? F32 : mc == 2 ? F16 : mc == 3 ? BF16 : -1;
                        qembed_bags b = bags_of(&s, I64, wdt, mode, bpad);
                        float *ref = (float *)xmalloc((size_t)(s.nb * d) * sizeof(float));
                        int cb;
                        ref_forward(R, d, &b, s.nb, eff, ref);
                        for (cb = 0; cb < 4; cb++) {
                            char what[200];
                            b = bags_of(&s, combos[cb][0], wdt, mode, bpad);
                            snprintf(what, sizeof what, "quantized %s from %s, %s, %s, weights %s, padding case %d, %s, %s out",
                                     qname(c), dn(FDT[sk]), form == 0 ? "offsets" : form == 1 ? "include_last_offset" : "fixed",
                                     mode_name(mode), dn(wdt), pv, dn(combos[cb][0]), dn(combos[cb][1]));
                            check_forward(what, NULL, q, &b, s.nb, d, combos[cb][1], ref);
                        }
                        free(ref);
                    }
                }
                bs_free(&s);
            }
            free(R);
            qembed_qembedding_free(q);
        }
    free(table);
}

/* ---- large batches: the parallel paths, 1..8 threads, the same bits ------------------------------------ */

static void test_large_threads(void) {
    const int64_t n = 4000, d = 64;
    const int64_t special[1] = {17};
    static const int threads[4] = {1, 2, 3, 8};
    float *table = wide_table(12, n * d);
    qembed_embedding *e = layer_from(table, n, d, lo(F32, 17));
    qembed_qembedding *q = NULL;
    float *W = qt_weight_copy(e), *R = NULL;
    bagset s = gen_offsets(130, n, 6000, 16, true, 100, special, 1);
    int ti, mc, src;
    float *first[2][4];
    memset(first, 0, sizeof first);
    CHECK(qembed_qembedding_quantize(table, F32, n, d, QEMBED_QEMB_NF4, 64, true, &q) == QEMBED_OK);
    if (q != NULL) R = q_rows(q, n, d);
    for (src = 0; src < 2; src++) {
        if (src == 1 && q == NULL) break;
        for (mc = 0; mc < 4; mc++) {
            const int mode = mc <= 1 ? SUM : mc == 2 ? MEAN : MAXM;
            qembed_bags b = bags_of(&s, I64, mc == 1 ? F32 : -1, mode, src == 1 ? 17 : NOPAD);
            float *ref = (float *)xmalloc((size_t)(s.nb * d) * sizeof(float));
            ref_forward(src == 0 ? W : R, d, &b, s.nb, 17, ref);
            for (ti = 0; ti < 4; ti++) {
                float *o = (float *)xmalloc((size_t)(s.nb * d) * sizeof(float));
                qembed_status st;
                char why[200];
                CHECK(qembed_set_num_threads(threads[ti]) == QEMBED_OK);
                st = src == 0 ? qembed_embedding_bag_forward(e, &b, o, F32, s.nb * d)
                              : qembed_qembedding_bag_forward(q, &b, o, F32, s.nb * d);
                if (CHECKF(st == QEMBED_OK, "large %s %s: %s", src ? "quantized" : "float", mode_name(mode),
                           qembed_last_error())) {
                    CHECKF(compare_out(o, F32, ref, s.nb * d, d, mode != MAXM, why, sizeof why) == 0,
                           "large %s %s%s, %d threads: %s", src ? "quantized" : "float", mode_name(mode),
                           mc == 1 ? " weighted" : "", threads[ti], why);
                    if (ti == 0) {
                        first[src][mc] = o;
                        o = NULL;
                    } else if (first[src][mc] != NULL) {
                        CHECKF(memcmp(o, first[src][mc], (size_t)(s.nb * d) * sizeof(float)) == 0,
                               "large %s %s: %d threads differ from 1 thread", src ? "quantized" : "float",
                               mode_name(mode), threads[ti]);
                    }
                }
                free(o);
            }
            free(ref);
        }
    }
    /* the large dense backward under several thread counts: identical gradients */
    {
        float *g = dyadic(131, s.nb * d), *g1 = NULL;
        qembed_bags b = bags_of(&s, I32, F32, SUM, NOPAD);
        for (ti = 0; ti < 4; ti++) {
            qembed_embedding *e2 = layer_from(table, n, d, lo(F32, 17));
            float *gp = psw_buf(s.count), *gg;
            int rows_ok, has;
            CHECK(qembed_set_num_threads(threads[ti]) == QEMBED_OK);
            CHECK(qembed_embedding_bag_backward(e2, &b, g, F32, s.nb * d, gp) == QEMBED_OK);
            gg = grad_dense(e2, n, d, 17, &rows_ok, &has);
            if (ti == 0) {
                gref r = gref_new(n, d, s.count);
                char why[200];
                ref_backward(W, n, d, &b, s.nb, 17, g, false, &r);
                CHECKF(has && compare_grad(gg, &r, n, d, 0, 1.0, why, sizeof why) == 0, "large weighted backward: %s", why);
                check_psw("large weighted backward", gp, &b, &r, d);
                gref_free(&r);
                g1 = gg;
                gg = NULL;
            } else if (g1 != NULL) {
                CHECKF(memcmp(gg, g1, (size_t)(n * d) * sizeof(float)) == 0,
                       "large backward: %d threads differ from 1 thread", threads[ti]);
            }
            free(gg);
            free(gp);
            qembed_embedding_free(e2);
        }
        free(g1);
        free(g);
    }
    CHECK(qembed_set_num_threads(0) == QEMBED_OK);
    for (src = 0; src < 2; src++)
        for (mc = 0; mc < 4; mc++) free(first[src][mc]);
    bs_free(&s);
    free(W);
    free(R);
    free(table);
    qembed_qembedding_free(q);
    qembed_embedding_free(e);
}

/* ---- bad inputs ------------------------------------------------------------------------------------ */

#define S(x) (1u << (x))
#define NULLPTR S(QEMBED_ERR_NULL_POINTER)
#define INVALID S(QEMBED_ERR_INVALID_ARGUMENT)
#define RANGE S(QEMBED_ERR_OUT_OF_RANGE)
#define UNSUPP S(QEMBED_ERR_UNSUPPORTED)
#define NONFIN S(QEMBED_ERR_NON_FINITE)
#define SHAPE S(QEMBED_ERR_SHAPE)
#define SMALL S(QEMBED_ERR_BUFFER_TOO_SMALL)
#define SENTINEL 0xA5
#define VN 20
#define VD 8

typedef struct arena {
    float out[4096];
    float gpsw[512];
    int64_t nb[4];
} arena;

static arena A_, REF_;

enum { VL_DENSE, VL_MAXN, VL_SPARSE, VL_FREQ, VL_F16, VL_COUNT };
static const char *const vl_names[VL_COUNT + 1] = {"dense (padding 3)", "max_norm", "sparse + scale_grad_by_freq",
                                                   "scale_grad_by_freq", "f16", "quantized nf4"};
static qembed_embedding *VL[VL_COUNT];
static qembed_qembedding *VQ;
static float VT[VN * VD], GO[4096];
static char ctx[200];

/* every float layer's weight, dense gradient and sparse gradient */
static qt_buf snapshot(void) {
    qt_buf b = {NULL, 0, 0};
    int l;
    for (l = 0; l < VL_COUNT; l++) {
        qembed_param *p = qt_param_of(VL[l], 0);
        qembed_param_info info = qt_info_of(p);
        int64_t nnz = 0;
        qt_put(&b, info.data, (size_t)info.numel * qembed_dtype_size(info.dtype));
        if (info.grad != NULL) qt_put(&b, info.grad, (size_t)info.numel * sizeof(float));
        else qt_put(&b, "nograd", 6);
        qembed_param_sparse_grad(p, &nnz, NULL, 0, NULL, 0);
        qt_put(&b, &nnz, sizeof nnz);
        if (nnz > 0) {
            int64_t *rows = (int64_t *)xmalloc((size_t)nnz * sizeof(int64_t));
            float *vals = (float *)xmalloc((size_t)(nnz * VD) * sizeof(float));
            qembed_param_sparse_grad(p, &nnz, rows, nnz, vals, nnz * VD);
            qt_put(&b, rows, (size_t)nnz * sizeof(int64_t));
            qt_put(&b, vals, (size_t)(nnz * VD) * sizeof(float));
            free(rows);
            free(vals);
        }
    }
    return b;
}

static qt_buf snap_before;

static void arena_reset(void) {
    memset(&A_, SENTINEL, sizeof A_);
    free(snap_before.p);
    snap_before = snapshot();
    qembed_clear_error();
}

static void expect(const char *file, int line, const char *call, qembed_status got, unsigned allowed, const char *names) {
    char msg[600];
    const char *m = qembed_last_error();
    qt_buf after;
    int untouched, same, status_ok, named;
    snprintf(msg, sizeof msg, "%s", m ? m : "");
    untouched = memcmp(&A_, &REF_, sizeof A_) == 0;
    after = snapshot();
    same = after.len == snap_before.len && memcmp(after.p, snap_before.p, after.len) == 0;
    free(after.p);
    status_ok = (int)got > 0 && (int)got < 32 && (allowed & S(got)) != 0;
    named = msg[0] != '\0' && qt_names_any(msg, names);
    qt_check(status_ok && named && untouched && same, file, line, call,
             "[%s] %s%s%s%s(status %d \"%s\", last_error \"%s\", want a message naming %s)", ctx,
             status_ok ? "" : "wrong status; ", named ? "" : "message does not name the field; ",
             untouched ? "" : "an output was written; ", same ? "" : "a layer's weight or gradient changed; ", (int)got,
             qembed_status_string((int)got), msg, names);
}

#define EXPECT(allowed, names, call) expect(__FILE__, __LINE__, #call, (arena_reset(), (call)), (allowed), (names))

static qembed_status fwd(int t, const qembed_bags *b, void *out, int odt, int64_t len) {
    return t < VL_COUNT ? qembed_embedding_bag_forward(VL[t], b, out, odt, len) : qembed_qembedding_bag_forward(VQ, b, out, odt, len);
}

/* the call under test: forward into the arena, or backward with GO (f32) and the arena's grad_per_sample_weights */
static qembed_status call(int t, int bwd, const qembed_bags *b, int64_t len) {
    if (bwd) return qembed_embedding_bag_backward(VL[t], b, GO, F32, len, b && b->per_sample_weights ? A_.gpsw : NULL);
    return fwd(t, b, A_.out, F32, len);
}

/* runs the case in a child process (sizes that overflow: a missing check would write out of bounds) */
static void isolated(const char *file, int line, const char *what, unsigned allowed, const char *names, int t, int bwd,
                     const qembed_bags *b, int64_t len) {
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
        expect(file, line, what, call(t, bwd, b, len), allowed, names);
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

static const int64_t G_IDX64[6] = {0, 1, 2, 5, 7, 9};
static const int32_t G_IDX32[6] = {0, 1, 2, 5, 7, 9};
static const int64_t G_OFF64[4] = {0, 2, 2, 5};
static const int32_t G_OFF32[4] = {0, 2, 2, 5};
static const float G_W[6] = {0.5f, -1.0f, 2.0f, 0.25f, 3.0f, -0.5f};

/* 4 bags: {0,1}, {}, {2,5,7}, {9}: the output is 4 x VD */
static qembed_bags good(int mode) {
    qembed_bags b;
    qembed_bags_init(&b);
    b.indices = G_IDX64;
    b.index_dtype = I64;
    b.count = 6;
    b.offsets = G_OFF64;
    b.num_offsets = 4;
    b.mode = mode;
    return b;
}

static void setup_bad(void) {
    qt_rng r = qt_rng_make(200);
    int i, l;
    for (i = 0; i < VN * VD; i++) VT[i] = qt_normal(&r) * 2.0f; /* row norms ~5.7 > max_norm 0.5 */
    for (i = 0; i < 4096; i++) GO[i] = (float)((int)(qt_next(&r) % 65) - 32) / 16.0f;
    memset(&REF_, SENTINEL, sizeof REF_);
    for (l = 0; l < VL_COUNT; l++) {
        lopt o = lo(l == VL_F16 ? F16 : F32, l == VL_DENSE ? 3 : NOPAD);
        if (l == VL_MAXN) o.max_norm = 0.5;
        if (l == VL_SPARSE) o.sparse = o.freq = true;
        if (l == VL_FREQ) o.freq = true;
        VL[l] = layer_from(VT, VN, VD, o);
        /* gradients exist (not on the max_norm layer: its rows must stay as loaded) */
        if (l != VL_MAXN && qembed_embedding_backward(VL[l], G_IDX64, I64, 4, GO, F32, 4 * VD) != QEMBED_OK) {
            fprintf(stderr, "setup: backward: %s\n", qembed_last_error());
            exit(2);
        }
    }
    if (qembed_qembedding_quantize(VT, F32, VN, VD, QEMBED_QEMB_NF4, 32, true, &VQ) != QEMBED_OK) {
        fprintf(stderr, "setup: quantize: %s\n", qembed_last_error());
        exit(2);
    }
}

static void bag_cases(int t, int bwd) {
    static const int64_t bad_off[][4] = {{1, 2, 2, 5}, {0, 3, 2, 5}, {0, 2, 2, 7}, {0, 2, 2, INT64_MAX}, {0, -1, 2, 5},
                                         {0, 2, 1, 5}, {0, 0, 0, -1}, {-1, 2, 2, 5}, {0, 2, 2, INT64_MIN}};
    static const int32_t bad_off32[][4] = {{0, 2, 2, 7}, {0, 4, 3, 5}, {2, 2, 2, 5}, {0, 2, 2, INT32_MIN}};
    static const int64_t bad_idx[][6] = {{0, 1, 2, VN, 7, 9},       {0, 1, 2, -1, 7, 9},  {0, 1, 2, 5, 7, INT64_MAX},
                                         {INT64_MIN, 1, 2, 5, 7, 9}, {0, 1, 2, 5, 7, VN},  {0, 1, 2, 5, 7, -VN},
                                         {VN + 1000, 1, 2, 5, 7, 9}};
    static const int32_t bad_idx32[][6] = {{0, 1, 2, VN, 7, 9}, {0, 1, INT32_MIN, 5, 7, 9}, {0, 1, 2, 5, 7, -1},
                                           {INT32_MAX, 1, 2, 5, 7, 9}};
    static const int64_t bad_pad[] = {VN, -VN - 1, VN + 1000, INT64_MAX, INT64_MIN + 1, -1000000};
    static const int bad_modes[] = {-1, QEMBED_BAG_MODE_COUNT, 99, INT_MIN, INT_MAX};
    static const int bad_idt[] = {F32, F16, BF16, QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, QEMBED_DTYPE_COUNT, 99, -1};
    static const int bad_fdt[] = {QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, I32, I64, QEMBED_DTYPE_COUNT, 99, -1};
    const int64_t len = 4 * VD;
    const char *LEN = bwd ? "grad_len|grad_output" : "out_len|out";
    const char *LAYER = "e|q|embedding|qembedding|layer";
    qembed_bags b;
    size_t i;
    int k;
    snprintf(ctx, sizeof ctx, "%s %s", vl_names[t], bwd ? "backward" : "forward");

    /* NULL pointers */
    if (t == 0) {
        b = good(SUM);
        if (bwd) {
            EXPECT(NULLPTR, LAYER, qembed_embedding_bag_backward(NULL, &b, GO, F32, len, NULL));
        } else {
            EXPECT(NULLPTR, LAYER, qembed_embedding_bag_forward(NULL, &b, A_.out, F32, len));
            EXPECT(NULLPTR, LAYER, qembed_qembedding_bag_forward(NULL, &b, A_.out, F32, len));
        }
    }
    EXPECT(NULLPTR, "b|bags", call(t, bwd, NULL, len));
    b = good(SUM);
    if (bwd) EXPECT(NULLPTR, "grad_output", qembed_embedding_bag_backward(VL[t], &b, NULL, F32, len, NULL));
    else EXPECT(NULLPTR, "out", fwd(t, &b, NULL, F32, len));
    b.indices = NULL;
    EXPECT(NULLPTR, "indices", call(t, bwd, &b, len));

    /* struct_size */
    {
        static const uint32_t sizes[] = {0, 1, (uint32_t)sizeof(qembed_bags) - 8, (uint32_t)sizeof(qembed_bags) + 8, UINT32_MAX};
        for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            b = good(SUM);
            b.struct_size = sizes[i];
            EXPECT(INVALID, "struct_size", call(t, bwd, &b, len));
        }
    }

    /* offsets: offsets[0] != 0, decreasing, above count */
    for (i = 0; i < sizeof bad_off / sizeof bad_off[0]; i++) {
        b = good(SUM);
        b.offsets = bad_off[i];
        EXPECT(INVALID | RANGE | SHAPE, "offsets", call(t, bwd, &b, len));
    }
    for (i = 0; i < sizeof bad_off32 / sizeof bad_off32[0]; i++) {
        b = good(SUM);
        b.indices = G_IDX32;
        b.index_dtype = I32;
        b.offsets = bad_off32[i];
        EXPECT(INVALID | RANGE | SHAPE, "offsets", call(t, bwd, &b, len));
    }
    {
        /* include_last_offset: the last offset above count, or below the one before */
        static const int64_t last_hi[4] = {0, 2, 5, 7}, last_dec[4] = {0, 2, 5, 4};
        b = good(SUM);
        b.include_last_offset = true;
        b.offsets = last_hi;
        EXPECT(INVALID | RANGE | SHAPE, "offsets", call(t, bwd, &b, 3 * VD));
        b.offsets = last_dec;
        EXPECT(INVALID | RANGE | SHAPE, "offsets", call(t, bwd, &b, 3 * VD));
        /* include_last_offset with no offsets at all */
        b.num_offsets = 0;
        EXPECT(INVALID | SHAPE | RANGE, "num_offsets|include_last_offset|offsets", call(t, bwd, &b, len));
    }
    b = good(SUM);
    b.num_offsets = -1;
    EXPECT(INVALID | SHAPE, "num_offsets", call(t, bwd, &b, len));
    b.num_offsets = INT64_MIN;
    EXPECT(INVALID | SHAPE, "num_offsets", call(t, bwd, &b, len));
    /* num_bags belongs to the fixed form */
    b = good(SUM);
    b.num_bags = 4;
    EXPECT(INVALID | SHAPE, "num_bags", call(t, bwd, &b, len));
    b.num_bags = -1;
    EXPECT(INVALID | SHAPE, "num_bags", call(t, bwd, &b, len));
    /* fixed form: count % num_bags, num_bags 0 with indices, negative */
    {
        static const int64_t nbs[] = {4, 5, 7, 12};
        for (i = 0; i < sizeof nbs / sizeof nbs[0]; i++) {
            b = good(SUM);
            b.offsets = NULL;
            b.num_offsets = 0;
            b.num_bags = nbs[i];
            EXPECT(INVALID | SHAPE, "count|num_bags", call(t, bwd, &b, nbs[i] * VD));
        }
        b.num_bags = 0;
        EXPECT(INVALID | SHAPE, "count|num_bags", call(t, bwd, &b, len));
        b.num_bags = -1;
        EXPECT(INVALID | SHAPE, "num_bags", call(t, bwd, &b, len));
        b.num_bags = -3;
        EXPECT(INVALID | SHAPE, "num_bags", call(t, bwd, &b, len));
    }
    /* count */
    b = good(SUM);
    b.count = -1;
    EXPECT(INVALID | SHAPE, "count", call(t, bwd, &b, len));
    b.count = INT64_MIN;
    EXPECT(INVALID | SHAPE, "count", call(t, bwd, &b, len));
    b.offsets = NULL;
    b.num_offsets = 0;
    b.num_bags = 1;
    b.count = -2;
    EXPECT(INVALID | SHAPE, "count", call(t, bwd, &b, VD));

    /* index values (offsets form, then fixed form, i32 and i64) */
    for (i = 0; i < sizeof bad_idx / sizeof bad_idx[0]; i++) {
        b = good(SUM);
        b.indices = bad_idx[i];
        EXPECT(RANGE, "indices", call(t, bwd, &b, len));
        b.offsets = NULL;
        b.num_offsets = 0;
        b.num_bags = 3;
        EXPECT(RANGE, "indices", call(t, bwd, &b, 3 * VD));
    }
    for (i = 0; i < sizeof bad_idx32 / sizeof bad_idx32[0]; i++) {
        b = good(SUM);
        b.indices = bad_idx32[i];
        b.index_dtype = I32;
        b.offsets = G_OFF32;
        EXPECT(RANGE, "indices", call(t, bwd, &b, len));
    }
    {
        /* a long fixed batch whose last index is bad (the parallel paths) */
        static int64_t longidx[512];
        for (k = 0; k < 512; k++) longidx[k] = k % VN;
        longidx[511] = VN;
        b = good(SUM);
        b.indices = longidx;
        b.count = 512;
        b.offsets = NULL;
        b.num_offsets = 0;
        b.num_bags = 64;
        EXPECT(RANGE, "indices", call(t, bwd, &b, 64 * VD));
        b.mode = MAXM;
        if (!bwd || (t != VL_SPARSE && t != VL_FREQ)) EXPECT(RANGE, "indices", call(t, bwd, &b, 64 * VD));
    }

    /* padding_idx */
    for (i = 0; i < sizeof bad_pad / sizeof bad_pad[0]; i++) {
        b = good(SUM);
        b.padding_idx = bad_pad[i];
        EXPECT(RANGE | INVALID, "padding_idx", call(t, bwd, &b, len));
    }

    /* per_sample_weights: non-finite, with MEAN or MAX, unknown dtype */
    {
        float f[6];
        uint16_t h[6], bf[6];
        const float vals[3] = {NAN, INFINITY, -INFINITY};
        const int pos[3] = {0, 3, 5};
        for (k = 0; k < 3; k++) {
            memcpy(f, G_W, sizeof f);
            f[pos[k]] = vals[k];
            b = good(SUM);
            b.per_sample_weights = f;
            EXPECT(NONFIN, "per_sample_weights", call(t, bwd, &b, len));
        }
        for (k = 0; k < 6; k++) {
            h[k] = qt_f32_to_f16(G_W[k]);
            bf[k] = qt_f32_to_bf16(G_W[k]);
        }
        h[2] = 0x7E00;
        b.per_sample_weights = h;
        b.weights_dtype = F16;
        EXPECT(NONFIN, "per_sample_weights", call(t, bwd, &b, len));
        h[2] = qt_f32_to_f16(G_W[2]);
        h[5] = 0xFC00;
        EXPECT(NONFIN, "per_sample_weights", call(t, bwd, &b, len));
        bf[0] = 0x7F80;
        b.per_sample_weights = bf;
        b.weights_dtype = BF16;
        EXPECT(NONFIN, "per_sample_weights", call(t, bwd, &b, len));
        bf[0] = qt_f32_to_bf16(G_W[0]);
        bf[4] = 0xFFC1;
        EXPECT(NONFIN, "per_sample_weights", call(t, bwd, &b, len));
        for (k = 0; k < 2; k++) {
            b = good(k == 0 ? MEAN : MAXM);
            b.per_sample_weights = G_W;
            EXPECT(INVALID | UNSUPP, "per_sample_weights|mode|scale_grad_by_freq|sparse", call(t, bwd, &b, len));
        }
        for (i = 0; i < sizeof bad_fdt / sizeof bad_fdt[0]; i++) {
            b = good(SUM);
            b.per_sample_weights = G_W;
            b.weights_dtype = bad_fdt[i];
            EXPECT(UNSUPP, "weights_dtype", call(t, bwd, &b, len));
        }
    }

    /* mode, index_dtype */
    for (i = 0; i < sizeof bad_modes / sizeof bad_modes[0]; i++) {
        b = good(SUM);
        b.mode = bad_modes[i];
        EXPECT(INVALID | UNSUPP, "mode", call(t, bwd, &b, len));
    }
    for (i = 0; i < sizeof bad_idt / sizeof bad_idt[0]; i++) {
        b = good(SUM);
        b.index_dtype = bad_idt[i];
        EXPECT(UNSUPP, "index_dtype", call(t, bwd, &b, len));
    }

    /* output / gradient buffers */
    {
        static const int64_t lens[] = {4 * VD - 1, 0, -1, INT64_MIN};
        for (i = 0; i < sizeof lens / sizeof lens[0]; i++) {
            b = good(SUM);
            EXPECT(bwd ? SHAPE | SMALL : SMALL, LEN, call(t, bwd, &b, lens[i]));
        }
        b = good(MAXM);
        if (!bwd) EXPECT(SMALL, LEN, call(t, bwd, &b, 4 * VD - 1));
        b = good(SUM);
        b.include_last_offset = true; /* 3 bags */
        EXPECT(bwd ? SHAPE | SMALL : SMALL, LEN, call(t, bwd, &b, 3 * VD - 1));
        for (i = 0; i < sizeof bad_fdt / sizeof bad_fdt[0]; i++) {
            b = good(SUM);
            if (bwd) EXPECT(UNSUPP, "grad_dtype", qembed_embedding_bag_backward(VL[t], &b, GO, bad_fdt[i], len, NULL));
            else EXPECT(UNSUPP, "out_dtype", fwd(t, &b, A_.out, bad_fdt[i], len));
        }
    }

    if (bwd) {
        /* non-finite grad_output (f32, f16, bf16; first, middle, last element) */
        static const uint16_t h_bad[3] = {0x7E00, 0x7C00, 0xFC00}, b_bad[3] = {0x7FC0, 0x7F80, 0xFF80};
        const float f_bad[3] = {NAN, INFINITY, -INFINITY};
        const int pos[3] = {0, 2 * VD + 3, 4 * VD - 1};
        int q;
        b = good(SUM);
        for (k = 0; k < 3; k++)
            for (q = 0; q < 3; q++) {
                float f[4 * VD];
                uint16_t h[4 * VD], bh[4 * VD];
                int m;
                for (m = 0; m < 4 * VD; m++) {
                    f[m] = GO[m];
                    h[m] = qt_f32_to_f16(GO[m]);
                    bh[m] = qt_f32_to_bf16(GO[m]);
                }
                f[pos[q]] = f_bad[k];
                h[pos[q]] = h_bad[k];
                bh[pos[q]] = b_bad[k];
                EXPECT(NONFIN, "grad_output", qembed_embedding_bag_backward(VL[t], &b, f, F32, len, NULL));
                EXPECT(NONFIN, "grad_output", qembed_embedding_bag_backward(VL[t], &b, h, F16, len, NULL));
                EXPECT(NONFIN, "grad_output", qembed_embedding_bag_backward(VL[t], &b, bh, BF16, len, NULL));
            }
        /* a NaN in the gradient of the empty bag (bag 1) still counts */
        {
            float f[4 * VD];
            memcpy(f, GO, sizeof f);
            f[VD + 2] = NAN;
            EXPECT(NONFIN, "grad_output", qembed_embedding_bag_backward(VL[t], &b, f, F32, len, NULL));
        }
        /* MAX refuses scale_grad_by_freq and sparse layers */
        if (t == VL_SPARSE || t == VL_FREQ) {
            b = good(MAXM);
            EXPECT(INVALID | UNSUPP, "mode|max|scale_grad_by_freq|sparse", call(t, bwd, &b, len));
        }
    }

    /* sizes whose product with embedding_dim overflows: count 0 with a huge number of (empty) fixed bags */
    {
        static const int64_t huge[] = {INT64_MAX / 4, ((int64_t)1 << 61), INT64_MAX / VD + 1, INT64_MAX};
        for (i = 0; i < sizeof huge / sizeof huge[0]; i++) {
            char what[120];
            qembed_bags_init(&b);
            b.mode = SUM;
            b.num_bags = huge[i];
            snprintf(what, sizeof what, "%s with count 0, num_bags %lld, %s INT64_MAX", bwd ? "backward" : "forward",
                     (long long)huge[i], bwd ? "grad_len" : "out_len");
            isolated(__FILE__, __LINE__, what, SHAPE | SMALL, "num_bags|embedding_dim|out_len|out|grad_len|grad_output|count",
                     t, bwd, &b, INT64_MAX);
        }
    }
}

static void num_bags_cases(void) {
    qembed_bags b;
    snprintf(ctx, sizeof ctx, "qembed_bags_num_bags");
    EXPECT(NULLPTR, "b|bags", qembed_bags_num_bags(NULL, &A_.nb[0]));
    b = good(SUM);
    EXPECT(NULLPTR, "num_bags", qembed_bags_num_bags(&b, NULL));
    b.struct_size = 0;
    EXPECT(INVALID, "struct_size", qembed_bags_num_bags(&b, &A_.nb[0]));
    b.struct_size = (uint32_t)sizeof b + 8;
    EXPECT(INVALID, "struct_size", qembed_bags_num_bags(&b, &A_.nb[0]));
    b = good(SUM);
    b.include_last_offset = true;
    b.num_offsets = 0;
    EXPECT(INVALID | SHAPE | RANGE, "num_offsets|include_last_offset|offsets", qembed_bags_num_bags(&b, &A_.nb[0]));
    b = good(SUM);
    b.num_offsets = -2;
    EXPECT(INVALID | SHAPE, "num_offsets", qembed_bags_num_bags(&b, &A_.nb[0]));
    b = good(SUM);
    b.num_bags = 2;
    EXPECT(INVALID | SHAPE, "num_bags", qembed_bags_num_bags(&b, &A_.nb[0]));
    b.offsets = NULL;
    b.num_offsets = 0;
    b.num_bags = 4;
    EXPECT(INVALID | SHAPE, "count|num_bags", qembed_bags_num_bags(&b, &A_.nb[0]));
    b.num_bags = 0;
    EXPECT(INVALID | SHAPE, "count|num_bags", qembed_bags_num_bags(&b, &A_.nb[0]));
    b.num_bags = -2;
    EXPECT(INVALID | SHAPE, "num_bags", qembed_bags_num_bags(&b, &A_.nb[0]));
    b = good(SUM);
    b.count = -1;
    EXPECT(INVALID | SHAPE, "count", qembed_bags_num_bags(&b, &A_.nb[0]));
}

static void test_bad_inputs(void) {
    int t;
    setup_bad();
    num_bags_cases();
    for (t = 0; t <= VL_COUNT; t++) bag_cases(t, 0);
    for (t = 0; t < VL_COUNT; t++) bag_cases(t, 1);
    /* the layers still work */
    {
        qembed_bags b = good(SUM);
        float o[4 * VD];
        CHECK(qembed_embedding_bag_forward(VL[VL_DENSE], &b, o, F32, 4 * VD) == QEMBED_OK);
        CHECK(qembed_qembedding_bag_forward(VQ, &b, o, F32, 4 * VD) == QEMBED_OK);
        CHECK(qembed_embedding_bag_backward(VL[VL_SPARSE], &b, GO, F32, 4 * VD, NULL) == QEMBED_OK);
    }
    for (t = 0; t < VL_COUNT; t++) qembed_embedding_free(VL[t]);
    qembed_qembedding_free(VQ);
    free(snap_before.p);
}

int main(void) {
    test_init_and_num_bags();
    test_forward_float();
    test_empty();
    test_max_norm();
    test_stable();
    test_max_ties();
    test_backward();
    test_backward_misc();
    test_quantized();
    test_large_threads();
    test_bad_inputs();
    if (zero_sign_notes > 0)
        printf("test_bags: note: %ld SUM/MEAN outputs are -0 where the index-order sum from +0 gives +0 (or the reverse); "
               "the header does not specify the sign of a zero sum, so these are not failures\n",
               zero_sign_notes);
    return qt_summary("test_bags");
}
