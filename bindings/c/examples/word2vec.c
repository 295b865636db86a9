/* word2vec.c - qembed's demo (`qembed demo`) in C, with the public API only.
 *
 * Skip-gram with negative sampling on a generated corpus with planted
 * structure: `vocab` tokens in hidden clusters (token t is in cluster
 * t % clusters), Zipf frequencies, sentences that mostly stay inside one
 * cluster. The input table is a StableEmbedding (its weight keeps 32-bit Adam
 * state: the layer sets optim_bits = 32 on it), the output table a sparse
 * Embedding whose weight's optim_bits override is set to 8 (row-aligned
 * blockwise 8-bit Adam state); the optimizer is Adam with optim_bits 8. After
 * training: nearest-neighbour cluster accuracy of the learned vectors, then
 * the input table quantized to NF4 (plain and nested statistics) and int8,
 * saved, reloaded and compared (bytes, error, neighbour accuracy, lookups/s).
 *
 *   word2vec [--quick] [--seed N] [--out-dir DIR]
 *
 * --quick takes a few seconds, the default well under a minute.
 * Build against an installed qembed:
 *   cc -std=c11 -O2 word2vec.c $(pkg-config --cflags --libs qembed) -lm -o word2vec
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <qembed.h>

/* ---- plumbing ------------------------------------------------------------ */

static void check(qembed_status st, const char *what) {
    if (st != QEMBED_OK) {
        fprintf(stderr, "word2vec: %s failed: %s: %s\n", what, qembed_status_string(st), qembed_last_error());
        exit(1);
    }
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "word2vec: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* "%.<digits>g" into one of a few rotating buffers */
static const char *fmt(double v, int digits) {
    static char buf[16][48];
    static int k = 0;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%.*g", digits, v);
    return buf[k];
}

static const char *human_bytes(double b) {
    static char buf[8][48];
    static int k = 0;
    k = (k + 1) % 8;
    if (b >= 1073741824.0) snprintf(buf[k], sizeof buf[k], "%s GiB", fmt(b / 1073741824.0, 3));
    else if (b >= 1048576.0) snprintf(buf[k], sizeof buf[k], "%s MiB", fmt(b / 1048576.0, 3));
    else if (b >= 1024.0) snprintf(buf[k], sizeof buf[k], "%s KiB", fmt(b / 1024.0, 3));
    else snprintf(buf[k], sizeof buf[k], "%.0f B", b);
    return buf[k];
}

/* the string left-aligned in `width` columns, and at least one space after it */
static void pad(const char *s, int width) {
    int n = (int)strlen(s);
    printf("%s%*s", s, n >= width ? 1 : width - n, "");
}

static long long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

/* ---- the generated corpus (as Sources/QembedCLI/DemoCorpus.swift) ---------- */

typedef struct rng { uint64_t s; } rng;

static uint64_t next(rng *r) {
    uint64_t z;
    r->s += 0x9E3779B97F4A7C15ull;
    z = r->s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double uniform(rng *r) { return (double)(next(r) >> 11) * 0x1p-53; }
static int64_t below(rng *r, int64_t n) { return (int64_t)(next(r) % (uint64_t)n); }

typedef struct corpus {
    int64_t vocab, clusters;
    int32_t *tokens;
    int64_t length;
    int64_t *counts;
    int32_t *neg;      /* negative-sampling table, unigram^0.75 */
    int64_t neg_len;
    /* per cluster: members in increasing id and their cumulative Zipf weights */
    int32_t *members;
    double *cum;
    int64_t *start;    /* clusters + 1 offsets into members/cum */
} corpus;

static int32_t draw(const corpus *c, int64_t cl, rng *r) {
    int64_t lo = c->start[cl], hi = c->start[cl + 1] - 1;
    double u = uniform(r) * c->cum[hi];
    while (lo < hi) {
        int64_t m = (lo + hi) / 2;
        if (c->cum[m] < u) lo = m + 1;
        else hi = m;
    }
    return c->members[lo];
}

static corpus make_corpus(int64_t vocab, int64_t clusters, int64_t length, uint64_t seed) {
    corpus c;
    rng r = {seed};
    int64_t *perm = xmalloc((size_t)vocab * sizeof(int64_t)), i, t, k;
    double *weight = xmalloc((size_t)vocab * sizeof(double)), total = 0;
    c.vocab = vocab;
    c.clusters = clusters;
    /* Zipf weights over a random permutation of the vocabulary */
    for (i = 0; i < vocab; i++) perm[i] = i;
    for (i = vocab - 1; i > 0; i--) {
        int64_t j = below(&r, i + 1), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    for (i = 0; i < vocab; i++) weight[perm[i]] = 1.0 / (double)(i + 10);
    c.members = xmalloc((size_t)vocab * sizeof(int32_t));
    c.cum = xmalloc((size_t)vocab * sizeof(double));
    c.start = xmalloc((size_t)(clusters + 1) * sizeof(int64_t));
    for (k = 0, i = 0; k < clusters; k++) {
        double s = 0;
        c.start[k] = i;
        for (t = k; t < vocab; t += clusters) {
            s += weight[t];
            c.members[i] = (int32_t)t;
            c.cum[i] = s;
            i++;
        }
    }
    c.start[clusters] = i;
    c.counts = xmalloc((size_t)vocab * sizeof(int64_t));
    memset(c.counts, 0, (size_t)vocab * sizeof(int64_t));
    c.tokens = xmalloc((size_t)(length + 16) * sizeof(int32_t));
    c.length = 0;
    while (c.length < length) {
        int64_t cl = below(&r, clusters);
        for (k = 0; k < 16; k++) {
            int32_t tok = uniform(&r) < 0.85 ? draw(&c, cl, &r) : draw(&c, below(&r, clusters), &r);
            c.tokens[c.length++] = tok;
            c.counts[tok]++;
        }
    }
    for (t = 0; t < vocab; t++) total += pow((double)c.counts[t], 0.75);
    c.neg = xmalloc((((size_t)1 << 20) + (size_t)vocab) * sizeof(int32_t)); /* rounding adds at most vocab/2 */
    c.neg_len = 0;
    for (t = 0; t < vocab; t++) {
        int64_t n = (int64_t)llround(pow((double)c.counts[t], 0.75) / total * (double)(1 << 20));
        for (k = 0; k < n; k++) c.neg[c.neg_len++] = (int32_t)t;
    }
    if (c.neg_len == 0) c.neg[c.neg_len++] = 0;
    free(perm);
    free(weight);
    return c;
}

/* ---- evaluation ------------------------------------------------------------ */

/* Fraction of queries whose nearest other candidate (cosine of the
 * LayerNorm-ed rows, with the trained norm.weight / norm.bias) is in the same
 * hidden cluster. */
static double neighbour_accuracy(const float *w, int64_t dim, int64_t clusters, const int64_t *queries, int64_t nq,
                                 const int64_t *cand, int64_t nc, const float *nw, const float *nb) {
    float *normed = xmalloc((size_t)(nc * dim) * sizeof(float));
    int64_t *pos = xmalloc((size_t)(cand[nc - 1] + 1) * sizeof(int64_t));
    int64_t i, k, q, hits = 0;
    for (i = 0; i <= cand[nc - 1]; i++) pos[i] = -1;
    for (i = 0; i < nc; i++) {
        const float *x = w + cand[i] * dim;
        float *y = normed + i * dim, mean = 0, var = 0, norm = 0;
        pos[cand[i]] = i;
        for (k = 0; k < dim; k++) mean += x[k];
        mean /= (float)dim;
        for (k = 0; k < dim; k++) var += (x[k] - mean) * (x[k] - mean);
        var /= (float)dim;
        for (k = 0; k < dim; k++) {
            y[k] = (x[k] - mean) / sqrtf(var + 1e-5f) * nw[k] + nb[k];
            norm += y[k] * y[k];
        }
        norm = fmaxf(sqrtf(norm), 1e-12f);
        for (k = 0; k < dim; k++) y[k] /= norm;
    }
    for (q = 0; q < nq; q++) {
        const float *a = normed + pos[queries[q]] * dim;
        float best = -INFINITY;
        int64_t best_id = -1;
        for (i = 0; i < nc; i++) {
            const float *b = normed + i * dim;
            float s = 0;
            if (cand[i] == queries[q]) continue;
            for (k = 0; k < dim; k++) s += a[k] * b[k];
            if (s > best) {
                best = s;
                best_id = cand[i];
            }
        }
        if (best_id >= 0 && best_id % clusters == queries[q] % clusters) hits++;
    }
    free(normed);
    free(pos);
    return (double)hits / (double)(nq > 0 ? nq : 1);
}

typedef struct lookup_ctx {
    qembed_embedding *e;
    const qembed_qembedding *q;
} lookup_ctx;

/* rows per second of 65536 random lookups (best of 4) */
static double lookup_rate(lookup_ctx ctx, int64_t vocab, int64_t dim) {
    const int64_t n = 65536;
    int64_t *idx = xmalloc((size_t)n * sizeof(int64_t)), i;
    float *out = xmalloc((size_t)(n * dim) * sizeof(float));
    double best = INFINITY;
    rng r = {99};
    int rep;
    for (i = 0; i < n; i++) idx[i] = below(&r, vocab);
    for (rep = 0; rep < 4; rep++) {
        double t = now();
        if (ctx.e) check(qembed_embedding_forward(ctx.e, idx, QEMBED_DTYPE_I64, n, out, QEMBED_DTYPE_F32, n * dim), "forward");
        else check(qembed_qembedding_forward(ctx.q, idx, QEMBED_DTYPE_I64, n, out, QEMBED_DTYPE_F32, n * dim), "qforward");
        t = now() - t;
        if (t < best) best = t;
    }
    free(idx);
    free(out);
    return (double)n / best;
}

static qembed_param *param_of(qembed_embedding *e, int64_t i) {
    qembed_param *p = NULL;
    check(qembed_embedding_param(e, i, &p), "qembed_embedding_param");
    return p;
}

static qembed_param_info info_of(const qembed_param *p) {
    qembed_param_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    check(qembed_param_info_get(p, &info), "qembed_param_info_get");
    return info;
}

/* ---- main ------------------------------------------------------------------ */

static void usage(void) {
    fprintf(stderr, "usage: word2vec [--quick] [--seed N] [--out-dir DIR]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int quick = 0, a;
    uint64_t seed = 7;
    const char *out_dir = "/tmp";
    double t0 = now(), t_train, train_time, first_loss = 0, avg = 0, acc;
    int64_t vocab, clusters, dim, steps, length, i, b, k, p;
    const int64_t batch = 1024, window = 3, negatives = 5, pairs = 1 + negatives;
    corpus c;
    qembed_embedding_params ep;
    qembed_embedding *input = NULL, *output = NULL;
    qembed_optimizer_params op;
    qembed_optimizer *opt = NULL;
    qembed_param *params[4];
    int64_t *centers, *targets, *eval, *cand, n_eval = 0, n_cand = 0, unseen = 0, most = 0;
    float *u, *v, *gu, *gv, *weight, *deq;
    const float *norm_w, *norm_b;
    rng r;
    double override_value = 0;
    bool override_set = false;
    char path[1024];
    static const char *names[4] = {"input.weight", "input.norm.weight", "input.norm.bias", "output.weight"};

    for (a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--quick") == 0) quick = 1;
        else if (strcmp(argv[a], "--seed") == 0 && a + 1 < argc) seed = strtoull(argv[++a], NULL, 10);
        else if (strcmp(argv[a], "--out-dir") == 0 && a + 1 < argc) out_dir = argv[++a];
        else usage();
    }
    {
        struct stat st;
        if (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(stderr, "word2vec: output directory %s does not exist\n", out_dir);
            return 1;
        }
    }
    if (qembed_version_number() / 10000 != QEMBED_VERSION_MAJOR) {
        fprintf(stderr, "word2vec: built against qembed %d.x, running with %s\n", QEMBED_VERSION_MAJOR, qembed_version());
        return 1;
    }
    vocab = quick ? 2000 : 10000;
    clusters = quick ? 20 : 40;
    dim = quick ? 32 : 64;
    steps = quick ? 300 : 2500;
    length = quick ? 200000 : 2000000;
    printf("qembed word2vec (C, qembed %s): skip-gram with negative sampling, %lld tokens in %lld hidden clusters, dim %lld, %d threads\n",
           qembed_version(), (long long)vocab, (long long)clusters, (long long)dim, qembed_get_num_threads());
    c = make_corpus(vocab, clusters, length, seed);
    for (i = 0; i < vocab; i++) {
        if (c.counts[i] > most) most = c.counts[i];
        if (c.counts[i] == 0) unseen++;
    }
    printf("corpus: %lld tokens, Zipf frequencies (most frequent token %lld times, %lld unseen)\n", (long long)c.length,
           (long long)most, (long long)unseen);

    /* the tables: StableEmbedding input, sparse Embedding output */
    qembed_embedding_params_init(&ep);
    ep.num_embeddings = vocab;
    ep.embedding_dim = dim;
    ep.seed = seed;
    check(qembed_stable_embedding_create(&ep, &input), "qembed_stable_embedding_create");
    ep.sparse = true;
    ep.seed = seed + 1;
    check(qembed_embedding_create(&ep, &output), "qembed_embedding_create");
    for (i = 0; i < 3; i++) params[i] = param_of(input, i);
    params[3] = param_of(output, 0);
    /* The output table gets 8-bit state (the layer registered 32); the StableEmbedding keeps its 32-bit state. */
    check(qembed_param_get_override(params[3], QEMBED_OVERRIDE_OPTIM_BITS, &override_value, &override_set), "get_override");
    printf("output.weight optim_bits override: %s", override_set ? fmt(override_value, 3) : "none");
    check(qembed_param_set_override(params[3], QEMBED_OVERRIDE_OPTIM_BITS, 8), "set_override");
    check(qembed_param_get_override(params[3], QEMBED_OVERRIDE_OPTIM_BITS, &override_value, &override_set), "get_override");
    printf(" -> %s\n", fmt(override_value, 3));
    check(qembed_optimizer_params_init(&op, QEMBED_OPTIM_ADAM, 8), "qembed_optimizer_params_init");
    op.lr = 3e-3;
    check(qembed_optimizer_create(&op, params, 4, &opt), "qembed_optimizer_create");

    r.s = seed * 31;
    centers = xmalloc((size_t)batch * sizeof(int64_t));
    targets = xmalloc((size_t)(batch * pairs) * sizeof(int64_t));
    u = xmalloc((size_t)(batch * dim) * sizeof(float));
    gu = xmalloc((size_t)(batch * dim) * sizeof(float));
    v = xmalloc((size_t)(batch * pairs * dim) * sizeof(float));
    gv = xmalloc((size_t)(batch * pairs * dim) * sizeof(float));
    t_train = now();
    for (i = 1; i <= steps; i++) {
        double loss = 0;
        for (b = 0; b < batch; b++) {
            int64_t pos = window + below(&r, c.length - 2 * window);
            int64_t off = 1 + below(&r, window);
            if ((next(&r) & 1) == 0) off = -off;
            centers[b] = c.tokens[pos];
            targets[b * pairs] = c.tokens[pos + off];
            for (k = 1; k <= negatives; k++) targets[b * pairs + k] = c.neg[below(&r, c.neg_len)];
        }
        check(qembed_embedding_forward(input, centers, QEMBED_DTYPE_I64, batch, u, QEMBED_DTYPE_F32, batch * dim), "forward");
        check(qembed_embedding_forward(output, targets, QEMBED_DTYPE_I64, batch * pairs, v, QEMBED_DTYPE_F32,
                                       batch * pairs * dim),
              "forward");
        for (b = 0; b < batch; b++) {
            float *gub = gu + b * dim;
            const float *ub = u + b * dim;
            memset(gub, 0, (size_t)dim * sizeof(float));
            for (p = 0; p < pairs; p++) {
                const float *vb = v + (b * pairs + p) * dim;
                float *gvb = gv + (b * pairs + p) * dim;
                float s = 0, label = p == 0 ? 1.0f : 0.0f, sig, g;
                for (k = 0; k < dim; k++) s += ub[k] * vb[k];
                sig = 1.0f / (1.0f + expf(-s));
                loss -= (double)(p == 0 ? logf(fmaxf(sig, 1e-7f)) : logf(fmaxf(1.0f - sig, 1e-7f)));
                g = (sig - label) / (float)batch;
                for (k = 0; k < dim; k++) {
                    gub[k] += g * vb[k];
                    gvb[k] = g * ub[k];
                }
            }
        }
        loss /= (double)batch;
        avg = i == 1 ? loss : 0.98 * avg + 0.02 * loss;
        if (i == 1) first_loss = loss;
        check(qembed_embedding_backward(input, centers, QEMBED_DTYPE_I64, batch, gu, QEMBED_DTYPE_F32, batch * dim), "backward");
        check(qembed_embedding_backward(output, targets, QEMBED_DTYPE_I64, batch * pairs, gv, QEMBED_DTYPE_F32,
                                        batch * pairs * dim),
              "backward");
        check(qembed_optimizer_step(opt), "qembed_optimizer_step");
        check(qembed_optimizer_zero_grad(opt), "qembed_optimizer_zero_grad");
        if (i % (steps / 10) == 0) {
            printf("training: %lld%% loss %s\n", (long long)(i * 100 / steps), fmt(avg, 4));
            fflush(stdout);
        }
    }
    train_time = now() - t_train;
    printf("training: %lld steps of %lld pairs (+%lld negatives each) in %s s; loss %s -> %s\n", (long long)steps,
           (long long)batch, (long long)negatives, fmt(train_time, 3), fmt(first_loss, 4), fmt(avg, 4));
    printf("optimizer state (Adam, optim_bits=8 with per-parameter overrides):\n");
    for (i = 0; i < 4; i++) {
        qembed_optimizer_state_info s;
        memset(&s, 0, sizeof s);
        s.struct_size = sizeof s;
        check(qembed_optimizer_state_info_get(opt, i, &s), "qembed_optimizer_state_info_get");
        printf("  %s: %d-bit state, %s for %lld params (%s B/param)%s\n", names[i], s.bits, human_bytes((double)s.state_bytes),
               (long long)s.numel, fmt((double)s.state_bytes / (double)s.numel, 3),
               s.row_aligned ? ", row-aligned blocks for sparse rows" : "");
    }

    /* neighbour accuracy of the learned (LayerNorm-ed) input vectors */
    eval = xmalloc((size_t)vocab * sizeof(int64_t));
    cand = xmalloc((size_t)vocab * sizeof(int64_t));
    for (i = 0; i < vocab; i++) {
        if (c.counts[i] < 5) continue;
        cand[n_cand++] = i;
        if (n_eval < (quick ? 500 : 2000)) eval[n_eval++] = i;
    }
    weight = info_of(params[0]).data;
    norm_w = info_of(params[1]).data;
    norm_b = info_of(params[2]).data;
    acc = neighbour_accuracy(weight, dim, clusters, eval, n_eval, cand, n_cand, norm_w, norm_b);
    printf("nearest-neighbour cluster accuracy (cosine, %lld tokens): %s%% (chance %s%%)\n", (long long)n_eval,
           fmt(acc * 100, 3), fmt(100.0 / (double)clusters, 3));

    /* quantize the trained table, save, reload, compare */
    printf("\nquantized copies of the trained %lld x %lld table:\n", (long long)vocab, (long long)dim);
    printf("  kind      file bytes   table B/param  max abs err   RMSE        NN accuracy  lookup rows/s\n");
    snprintf(path, sizeof path, "%s/qembed-word2vec-f32.safetensors", out_dir);
    check(qembed_embedding_save(input, path), "qembed_embedding_save");
    {
        lookup_ctx ctx = {input, NULL};
        double rate = lookup_rate(ctx, vocab, dim);
        char accs[32];
        snprintf(accs, sizeof accs, "%s%%", fmt(acc * 100, 3));
        printf("  ");
        pad("f32", 10);
        pad(human_bytes((double)file_size(path)), 13);
        pad("4", 15);
        pad("0", 14);
        pad("0", 12);
        pad(accs, 13);
        printf("%s  (StableEmbedding: gather + LayerNorm)\n", fmt(rate, 3));
    }
    deq = xmalloc((size_t)(vocab * dim) * sizeof(float));
    {
        static const struct { int kind; bool nested; const char *name, *file; } kinds[3] = {
            {QEMBED_QEMB_NF4, false, "nf4", "nf4"}, {QEMBED_QEMB_NF4, true, "nf4+nest", "nf4-nested"},
            {QEMBED_QEMB_INT8, false, "int8", "int8"}};
        int64_t *all = xmalloc((size_t)vocab * sizeof(int64_t));
        for (i = 0; i < vocab; i++) all[i] = i;
        for (k = 0; k < 3; k++) {
            qembed_qembedding *q = NULL, *back = NULL;
            qembed_qembedding_info qi;
            float max_err = 0;
            double sq = 0, qacc, rate;
            char accs[32];
            lookup_ctx ctx = {NULL, NULL};
            check(qembed_qembedding_from_embedding(input, kinds[k].kind, 64, kinds[k].nested, &q), "qembed_qembedding_from_embedding");
            snprintf(path, sizeof path, "%s/qembed-word2vec-%s.safetensors", out_dir, kinds[k].file);
            check(qembed_qembedding_save(q, path, NULL), "qembed_qembedding_save");
            check(qembed_qembedding_load(path, NULL, &back), "qembed_qembedding_load");
            memset(&qi, 0, sizeof qi);
            qi.struct_size = sizeof qi;
            check(qembed_qembedding_info_get(back, &qi), "qembed_qembedding_info_get");
            check(qembed_qembedding_forward(back, all, QEMBED_DTYPE_I64, vocab, deq, QEMBED_DTYPE_F32, vocab * dim), "forward");
            for (i = 0; i < vocab * dim; i++) {
                float d = fabsf(deq[i] - weight[i]);
                if (d > max_err) max_err = d;
                sq += (double)d * (double)d;
            }
            qacc = neighbour_accuracy(deq, dim, clusters, eval, n_eval, cand, n_cand, norm_w, norm_b);
            ctx.q = back;
            rate = lookup_rate(ctx, vocab, dim);
            snprintf(accs, sizeof accs, "%s%%", fmt(qacc * 100, 3));
            printf("  ");
            pad(kinds[k].name, 10);
            pad(human_bytes((double)file_size(path)), 13);
            pad(fmt((double)qi.table_bytes / (double)(vocab * dim), 3), 15);
            pad(fmt(max_err, 3), 14);
            pad(fmt(sqrt(sq / (double)(vocab * dim)), 3), 12);
            pad(accs, 13);
            printf("%s\n", fmt(rate, 3));
            qembed_qembedding_free(back);
            qembed_qembedding_free(q);
        }
        free(all);
    }
    printf("files in %s (qembed-word2vec-*.safetensors); total %s s\n", out_dir, fmt(now() - t0, 3));

    qembed_optimizer_free(opt);
    qembed_embedding_free(input);
    qembed_embedding_free(output);
    free(centers);
    free(targets);
    free(u);
    free(v);
    free(gu);
    free(gv);
    free(deq);
    free(eval);
    free(cand);
    free(c.tokens);
    free(c.counts);
    free(c.neg);
    free(c.members);
    free(c.cum);
    free(c.start);
    return 0;
}
