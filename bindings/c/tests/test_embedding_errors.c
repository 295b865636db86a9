/* test_embedding_errors.c - the bad-input battery of the embedding and
 * parameter functions.
 *
 * Every function of the "Parameters" and "Embedding and StableEmbedding"
 * sections is called with NULL handles and pointers, wrong struct sizes,
 * zero/negative/overflowing sizes, out-of-range padding and indices, bad
 * max_norm/norm_type, unknown dtypes, short buffers, mismatched gradient
 * lengths, NaN/Inf gradients and sources, bad parameter indices and override
 * keys/values. Each case must return the documented status, leave a
 * non-empty qembed_last_error() naming the argument, and change nothing:
 * every output buffer lives in one arena filled with a sentinel before the
 * call and compared after it, and every layer's weights, gradients (dense
 * and sparse) and overrides are serialized before and compared after. Create
 * calls must also leave *out NULL. One case = one assertion group. */
#include <limits.h>

#include "qembed.h"
#include "qtest.h"

#define SENTINEL 0xA5
#define N 20
#define D 8
#define BIG 4096

typedef struct arena {
    float out[BIG];               /* forward outputs, sparse values */
    int64_t i64[64];              /* nnz_rows, rows, counts */
    double value[4];              /* override values */
    bool flag[4];                 /* is_set, is_stable */
    qembed_param_info info;       /* param_info_get */
    qembed_embedding_params params; /* get_params */
    qembed_param *param[2];       /* qembed_embedding_param */
} arena;

static arena A_, REF_;
static long cases = 0;

/* ---- the layers under test -------------------------------------------------- */

enum { LD, LM, LS, LT, LH, NLAYERS };
static const char *const layer_names[NLAYERS] = {"dense", "max_norm", "sparse", "stable", "f16"};
static qembed_embedding *L[NLAYERS];
static unsigned char *snap_before;
static size_t snap_before_len;

/* every layer's parameter data, dense gradient, sparse gradient and overrides */
static qt_buf snapshot(void) {
    qt_buf b = {NULL, 0, 0};
    int l;
    for (l = 0; l < NLAYERS; l++) {
        int64_t np = 0, i;
        qembed_embedding_params g;
        bool st = false;
        g.struct_size = sizeof g;
        qembed_embedding_get_params(L[l], &g, &st);
        g.weight = NULL;
        qt_put(&b, &g, sizeof g);
        qembed_embedding_num_params(L[l], &np);
        for (i = 0; i < np; i++) {
            qembed_param *p = NULL;
            qembed_param_info info;
            int64_t nnz = 0;
            int key;
            qembed_embedding_param(L[l], i, &p);
            info.struct_size = sizeof info;
            qembed_param_info_get(p, &info);
            qt_put(&b, info.data, (size_t)info.numel * qembed_dtype_size(info.dtype));
            qt_put(&b, &info.requires_grad, sizeof info.requires_grad);
            if (info.grad != NULL) qt_put(&b, info.grad, (size_t)info.numel * sizeof(float));
            else qt_put(&b, "nograd", 6);
            qembed_param_sparse_grad(p, &nnz, NULL, 0, NULL, 0);
            qt_put(&b, &nnz, sizeof nnz);
            if (nnz > 0) {
                int64_t *rows = (int64_t *)malloc((size_t)nnz * sizeof(int64_t));
                float *vals = (float *)malloc((size_t)(nnz * info.shape[1]) * sizeof(float));
                if (rows == NULL || vals == NULL) exit(2);
                qembed_param_sparse_grad(p, &nnz, rows, nnz, vals, nnz * info.shape[1]);
                qt_put(&b, rows, (size_t)nnz * sizeof(int64_t));
                qt_put(&b, vals, (size_t)(nnz * info.shape[1]) * sizeof(float));
                free(rows);
                free(vals);
            }
            for (key = 0; key < QEMBED_OVERRIDE_COUNT; key++) {
                double v = 0.0;
                bool set = false;
                qembed_param_get_override(p, key, &v, &set);
                qt_put(&b, &v, sizeof v);
                qt_put(&b, &set, sizeof set);
            }
        }
    }
    return b;
}

static void arena_reset(void) {
    qt_buf b;
    memset(&A_, SENTINEL, sizeof A_);
    free(snap_before);
    b = snapshot();
    snap_before = b.p;
    snap_before_len = b.len;
    qembed_clear_error();
}

#define S(x) (1u << (x))


static void report(const char *file, int line, const char *call, qembed_status got, unsigned allowed,
                   const char *names, const char *msg, int untouched, int layers_same, const char *extra) {
    int status_ok = got >= 0 && got < 32 && (allowed & S(got)) != 0;
    int msg_ok = msg != NULL && msg[0] != '\0';
    int named = msg_ok && qt_names_any(msg, names);
    cases++;
    qt_check(status_ok && msg_ok && named && untouched && layers_same && extra == NULL, file, line, call,
             "%s%s%s%s%s%s(status %d \"%s\", last_error \"%s\", want %s)", status_ok ? "" : "wrong status; ",
             msg_ok ? "" : "empty last_error; ", !msg_ok || named ? "" : "message does not name the argument; ",
             untouched ? "" : "an output was written; ", layers_same ? "" : "a layer (weights/grads/overrides) changed; ",
             extra ? extra : "", (int)got, qembed_status_string((int)got), msg ? msg : "(null)", names);
}

static void expect(const char *file, int line, const char *call, qembed_status got, unsigned allowed, const char *names) {
    /* copy the message first: the snapshot below makes (successful) library calls */
    char msg[600];
    const char *m = qembed_last_error();
    qt_buf after;
    int untouched, same;
    snprintf(msg, sizeof msg, "%s", m ? m : "");
    untouched = memcmp(&A_, &REF_, sizeof A_) == 0;
    after = snapshot();
    same = after.len == snap_before_len && memcmp(after.p, snap_before, after.len) == 0;
    free(after.p);
    report(file, line, call, got, allowed, names, m ? msg : NULL, untouched, same, NULL);
}

/* EXPECT(allowed statuses, "arg|alternative", call) */
#define EXPECT(allowed, names, call) expect(__FILE__, __LINE__, #call, (arena_reset(), (call)), (allowed), (names))

/* create / stable_create with *out pre-set to a non-NULL value: must fail and set it to NULL */
static void expect_create(const char *file, int line, const char *what, const qembed_embedding_params *p, int stable,
                          unsigned allowed, const char *names) {
    int s;
    for (s = 0; s < 2; s++) {
        qembed_embedding *out = (qembed_embedding *)&A_;
        qembed_status st;
        char call[200];
        if (s == 1 && stable == 0) break;
        qembed_clear_error();
        st = s == 0 ? qembed_embedding_create(p, &out) : qembed_stable_embedding_create(p, &out);
        snprintf(call, sizeof call, "%s(%s)", s == 0 ? "qembed_embedding_create" : "qembed_stable_embedding_create", what);
        report(file, line, call, st, allowed, names, qembed_last_error(), 1, 1, out != NULL ? "*out is not NULL; " : NULL);
        if (st == QEMBED_OK && out != NULL && out != (qembed_embedding *)&A_) qembed_embedding_free(out);
    }
}

#define EXPECT_CREATE(allowed, names, what, p) expect_create(__FILE__, __LINE__, (what), (p), 1, (allowed), (names))

#define NULLPTR S(QEMBED_ERR_NULL_POINTER)
#define INVALID S(QEMBED_ERR_INVALID_ARGUMENT)
#define RANGE S(QEMBED_ERR_OUT_OF_RANGE)
#define UNSUPP S(QEMBED_ERR_UNSUPPORTED)
#define NONFIN S(QEMBED_ERR_NON_FINITE)
#define SHAPE S(QEMBED_ERR_SHAPE)
#define SMALL S(QEMBED_ERR_BUFFER_TOO_SMALL)

/* ---- setup ------------------------------------------------------------------- */

static float table[N * D], go_f32[64 * D], nan_src[N * D];
static uint16_t go_f16[64 * D], go_bf16[64 * D];
static const int64_t idx64[4] = {0, 1, 2, 5};
static const int32_t idx32[4] = {0, 1, 2, 5};

static qembed_embedding_params good(void) {
    qembed_embedding_params p;
    qembed_embedding_params_init(&p);
    p.num_embeddings = N;
    p.embedding_dim = D;
    return p;
}

static void setup(void) {
    qt_rng r = qt_rng_make(31);
    int i, l;
    for (i = 0; i < N * D; i++) {
        table[i] = qt_normal(&r); /* row norms ~ sqrt(8) > max_norm */
        nan_src[i] = table[i];
    }
    for (i = 0; i < 64 * D; i++) {
        go_f32[i] = qt_normal(&r);
        go_f16[i] = qt_f32_to_f16(go_f32[i]);
        go_bf16[i] = qt_f32_to_bf16(go_f32[i]);
    }
    memset(&REF_, SENTINEL, sizeof REF_);
    for (l = 0; l < NLAYERS; l++) {
        qembed_embedding_params p = good();
        qembed_status st;
        p.seed = (uint64_t)l;
        if (l == LD) p.padding_idx = 3;
        if (l == LM) {
            p.max_norm = 0.5;
            p.weight = table;
            p.weight_dtype = QEMBED_DTYPE_F32;
        }
        if (l == LS) {
            p.sparse = true;
            p.scale_grad_by_freq = true;
        }
        if (l == LH) p.dtype = QEMBED_DTYPE_F16;
        st = l == LT ? qembed_stable_embedding_create(&p, &L[l]) : qembed_embedding_create(&p, &L[l]);
        if (st != QEMBED_OK) {
            fprintf(stderr, "setup: create %s: %s\n", layer_names[l], qembed_last_error());
            exit(2);
        }
        /* gradients exist (except on the max_norm layer) */
        if (l != LM && qembed_embedding_backward(L[l], idx64, QEMBED_DTYPE_I64, 4, go_f32, QEMBED_DTYPE_F32, 4 * D) !=
                           QEMBED_OK) {
            fprintf(stderr, "setup: backward %s: %s\n", layer_names[l], qembed_last_error());
            exit(2);
        }
    }
    /* an extra override on one layer */
    qembed_param_set_override(qt_param_of(L[LD], 0), QEMBED_OVERRIDE_LR, 0.25);
}

/* ---- create ------------------------------------------------------------------- */

static void create_cases(void) {
    qembed_embedding_params p;
    static const int64_t bad_counts[] = {0, -1, -100, INT64_MIN};
    static const int bad_dtypes[] = {99, -1, QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, QEMBED_DTYPE_I32, QEMBED_DTYPE_I64,
                                     QEMBED_DTYPE_COUNT};
    size_t i;
    qembed_embedding *out;

    qembed_embedding_params_init(NULL); /* a no-op, no crash */
    cases++;
    CHECK(1);

    /* NULL pointers */
    {
        qembed_status st;
        out = (qembed_embedding *)&A_;
        qembed_clear_error();
        st = qembed_embedding_create(NULL, &out);
        report(__FILE__, __LINE__, "qembed_embedding_create(NULL, &out)", st, NULLPTR, "p", qembed_last_error(), 1, 1,
               out != NULL ? "*out is not NULL; " : NULL);
        out = (qembed_embedding *)&A_;
        qembed_clear_error();
        st = qembed_stable_embedding_create(NULL, &out);
        report(__FILE__, __LINE__, "qembed_stable_embedding_create(NULL, &out)", st, NULLPTR, "p", qembed_last_error(),
               1, 1, out != NULL ? "*out is not NULL; " : NULL);
        p = good();
        qembed_clear_error();
        st = qembed_embedding_create(&p, NULL);
        report(__FILE__, __LINE__, "qembed_embedding_create(&p, NULL)", st, NULLPTR, "out", qembed_last_error(), 1, 1,
               NULL);
        qembed_clear_error();
        st = qembed_stable_embedding_create(&p, NULL);
        report(__FILE__, __LINE__, "qembed_stable_embedding_create(&p, NULL)", st, NULLPTR, "out", qembed_last_error(),
               1, 1, NULL);
    }

    /* struct_size */
    p = good();
    p.struct_size = 0;
    EXPECT_CREATE(INVALID, "struct_size", "struct_size 0", &p);
    p.struct_size = (uint32_t)sizeof p - 8;
    EXPECT_CREATE(INVALID, "struct_size", "struct_size - 8", &p);
    p.struct_size = (uint32_t)sizeof p + 8;
    EXPECT_CREATE(INVALID, "struct_size", "struct_size + 8", &p);

    /* sizes */
    for (i = 0; i < sizeof bad_counts / sizeof bad_counts[0]; i++) {
        p = good();
        p.num_embeddings = bad_counts[i];
        EXPECT_CREATE(INVALID, "num_embeddings", "num_embeddings <= 0", &p);
        p = good();
        p.embedding_dim = bad_counts[i];
        EXPECT_CREATE(INVALID, "embedding_dim", "embedding_dim <= 0", &p);
    }
    p = good();
    p.num_embeddings = INT64_MAX / 2;
    p.embedding_dim = 4;
    EXPECT_CREATE(SHAPE, "num_embeddings|embedding_dim", "INT64_MAX/2 x 4", &p);
    p.num_embeddings = 4;
    p.embedding_dim = INT64_MAX / 2;
    EXPECT_CREATE(SHAPE, "num_embeddings|embedding_dim", "4 x INT64_MAX/2", &p);
    p.num_embeddings = (int64_t)1 << 32;
    p.embedding_dim = (int64_t)1 << 32;
    EXPECT_CREATE(SHAPE, "num_embeddings|embedding_dim", "2^32 x 2^32", &p);
    p.num_embeddings = (int64_t)1 << 31;
    p.embedding_dim = (int64_t)1 << 30;
    EXPECT_CREATE(SHAPE, "num_embeddings|embedding_dim", "2^31 x 2^30 (x 4 bytes overflows)", &p);
    p.num_embeddings = INT64_MAX;
    p.embedding_dim = INT64_MAX;
    EXPECT_CREATE(SHAPE, "num_embeddings|embedding_dim", "INT64_MAX x INT64_MAX", &p);

    /* padding_idx */
    {
        static const int64_t bad_pad[] = {N, -N - 1, N + 1000, INT64_MAX, INT64_MIN + 1, -1000000};
        for (i = 0; i < sizeof bad_pad / sizeof bad_pad[0]; i++) {
            p = good();
            p.padding_idx = bad_pad[i];
            EXPECT_CREATE(RANGE | INVALID, "padding_idx", "padding_idx out of range", &p);
        }
    }
    /* max_norm / norm_type */
    {
        static const double bad_max[] = {-1.0, -1e-300, -INFINITY};
        for (i = 0; i < sizeof bad_max / sizeof bad_max[0]; i++) {
            p = good();
            p.max_norm = bad_max[i];
            EXPECT_CREATE(INVALID, "max_norm", "max_norm negative", &p);
        }
        p = good();
        p.max_norm = NAN;
        EXPECT_CREATE(INVALID | NONFIN, "max_norm", "max_norm NaN", &p);
        {
            static const double bad_type[] = {0.0, -1.0, -INFINITY};
            size_t j;
            for (j = 0; j < sizeof bad_type / sizeof bad_type[0]; j++) {
                p = good();
                p.max_norm = 1.0;
                p.norm_type = bad_type[j];
                EXPECT_CREATE(INVALID, "norm_type", "norm_type <= 0 with max_norm", &p);
            }
            p.norm_type = NAN;
            EXPECT_CREATE(INVALID | NONFIN, "norm_type", "norm_type NaN with max_norm", &p);
        }
    }
    /* dtypes */
    for (i = 0; i < sizeof bad_dtypes / sizeof bad_dtypes[0]; i++) {
        p = good();
        p.dtype = bad_dtypes[i];
        EXPECT_CREATE(UNSUPP, "dtype", "bad dtype", &p);
        p = good();
        p.weight = table;
        p.weight_dtype = bad_dtypes[i];
        EXPECT_CREATE(UNSUPP, "weight_dtype", "bad weight_dtype", &p);
    }
    /* a non-finite pretrained weight */
    {
        static uint16_t h[N * D], b[N * D];
        int k;
        for (k = 0; k < N * D; k++) {
            h[k] = qt_f32_to_f16(table[k]);
            b[k] = qt_f32_to_bf16(table[k]);
        }
        nan_src[N * D - 1] = NAN;
        p = good();
        p.weight = nan_src;
        EXPECT_CREATE(NONFIN, "weight", "NaN in weight", &p);
        nan_src[N * D - 1] = table[N * D - 1];
        nan_src[7] = INFINITY;
        EXPECT_CREATE(NONFIN, "weight", "Inf in weight", &p);
        nan_src[7] = table[7];
        h[0] = 0x7E00;
        p.weight = h;
        p.weight_dtype = QEMBED_DTYPE_F16;
        EXPECT_CREATE(NONFIN, "weight", "NaN in f16 weight", &p);
        b[N * D / 2] = 0xFF80;
        p.weight = b;
        p.weight_dtype = QEMBED_DTYPE_BF16;
        EXPECT_CREATE(NONFIN, "weight", "-Inf in bf16 weight", &p);
    }
    qembed_embedding_free(NULL);
}

/* ---- layer-level calls ---------------------------------------------------------- */

static void layer_cases(void) {
    int l;
    EXPECT(NULLPTR, "e|embedding", qembed_embedding_get_params(NULL, &A_.params, &A_.flag[0]));
    EXPECT(NULLPTR, "e|embedding", qembed_embedding_num_params(NULL, &A_.i64[0]));
    EXPECT(NULLPTR, "e|embedding", qembed_embedding_param(NULL, 0, &A_.param[0]));
    EXPECT(NULLPTR, "e|embedding", qembed_embedding_zero_grad(NULL));
    EXPECT(NULLPTR, "e|embedding", qembed_embedding_reset_parameters(NULL, 1));
    EXPECT(NULLPTR, "e|embedding",
           qembed_embedding_forward(NULL, idx64, QEMBED_DTYPE_I64, 4, A_.out, QEMBED_DTYPE_F32, 4 * D));
    EXPECT(NULLPTR, "e|embedding",
           qembed_embedding_backward(NULL, idx64, QEMBED_DTYPE_I64, 4, go_f32, QEMBED_DTYPE_F32, 4 * D));
    for (l = 0; l < NLAYERS; l++) {
        qembed_embedding *e = L[l];
        const int64_t np = l == LT ? 3 : 1;
        /* get_params */
        EXPECT(NULLPTR, "p", qembed_embedding_get_params(e, NULL, &A_.flag[0]));
        {
            /* the arena is reset by EXPECT: set struct_size inside the call expression */
            qembed_embedding_params *pp = &A_.params;
            EXPECT(INVALID, "struct_size", (pp->struct_size = 3, REF_.params.struct_size = 3,
                                            qembed_embedding_get_params(e, pp, &A_.flag[0])));
            EXPECT(INVALID, "struct_size",
                   (pp->struct_size = (uint32_t)sizeof *pp + 16, REF_.params.struct_size = (uint32_t)sizeof *pp + 16,
                    qembed_embedding_get_params(e, pp, &A_.flag[0])));
        }
        memset(&REF_, SENTINEL, sizeof REF_);
        /* num_params / param */
        EXPECT(NULLPTR, "n", qembed_embedding_num_params(e, NULL));
        EXPECT(NULLPTR, "param", qembed_embedding_param(e, 0, NULL));
        EXPECT(RANGE, "i", qembed_embedding_param(e, -1, &A_.param[0]));
        EXPECT(RANGE, "i", qembed_embedding_param(e, np, &A_.param[0]));
        EXPECT(RANGE, "i", qembed_embedding_param(e, np + 1, &A_.param[0]));
        EXPECT(RANGE, "i", qembed_embedding_param(e, INT64_MAX, &A_.param[0]));
        EXPECT(RANGE, "i", qembed_embedding_param(e, INT64_MIN, &A_.param[0]));
    }
}

/* ---- forward / backward ---------------------------------------------------------- */

static void forward_cases(void) {
    static const int bad_index_dtypes[] = {QEMBED_DTYPE_F32, QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16, QEMBED_DTYPE_U8,
                                           QEMBED_DTYPE_I8,  QEMBED_DTYPE_COUNT, 99, -1};
    static const int bad_out_dtypes[] = {QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, QEMBED_DTYPE_I32, QEMBED_DTYPE_I64,
                                         QEMBED_DTYPE_COUNT, 99, -1};
    static const int64_t bad64[][4] = {{0, 1, 2, N}, {-1, 0, 1, 2}, {0, 1, 2, INT64_MAX}, {INT64_MIN, 0, 0, 0},
                                       {0, N + 7, 1, 2}, {0, 1, 2, -N}};
    static const int32_t bad32[][4] = {{0, 1, 2, N}, {-1, 0, 1, 2}, {0, 1, 2, INT32_MAX}, {INT32_MIN, 0, 0, 0}};
    int l;
    size_t i;
    for (l = 0; l < NLAYERS; l++) {
        qembed_embedding *e = L[l];
        EXPECT(NULLPTR, "indices", qembed_embedding_forward(e, NULL, QEMBED_DTYPE_I64, 4, A_.out, QEMBED_DTYPE_F32, 4 * D));
        EXPECT(NULLPTR, "out", qembed_embedding_forward(e, idx64, QEMBED_DTYPE_I64, 4, NULL, QEMBED_DTYPE_F32, 4 * D));
        EXPECT(INVALID, "count", qembed_embedding_forward(e, idx64, QEMBED_DTYPE_I64, -1, A_.out, QEMBED_DTYPE_F32, 4 * D));
        EXPECT(INVALID, "count",
               qembed_embedding_forward(e, idx64, QEMBED_DTYPE_I64, INT64_MIN, A_.out, QEMBED_DTYPE_F32, 4 * D));
        EXPECT(SHAPE | SMALL, "count|out|out_len",
               qembed_embedding_forward(e, idx64, QEMBED_DTYPE_I64, INT64_MAX / 2, A_.out, QEMBED_DTYPE_F32, INT64_MAX));
        EXPECT(SHAPE | SMALL, "count|out|out_len",
               qembed_embedding_forward(e, idx64, QEMBED_DTYPE_I64, INT64_MAX / 8, A_.out, QEMBED_DTYPE_F32, INT64_MAX));
        for (i = 0; i < sizeof bad_index_dtypes / sizeof bad_index_dtypes[0]; i++)
            EXPECT(UNSUPP, "index_dtype",
                   qembed_embedding_forward(e, idx64, bad_index_dtypes[i], 4, A_.out, QEMBED_DTYPE_F32, 4 * D));
        for (i = 0; i < sizeof bad_out_dtypes / sizeof bad_out_dtypes[0]; i++)
            EXPECT(UNSUPP, "out_dtype",
                   qembed_embedding_forward(e, idx64, QEMBED_DTYPE_I64, 4, A_.out, bad_out_dtypes[i], 4 * D));
        EXPECT(SMALL, "out|out_len", qembed_embedding_forward(e, idx64, QEMBED_DTYPE_I64, 4, A_.out, QEMBED_DTYPE_F32, 4 * D - 1));
        EXPECT(SMALL, "out|out_len", qembed_embedding_forward(e, idx64, QEMBED_DTYPE_I64, 4, A_.out, QEMBED_DTYPE_F16, 0));
        EXPECT(SMALL, "out|out_len", qembed_embedding_forward(e, idx32, QEMBED_DTYPE_I32, 4, A_.out, QEMBED_DTYPE_BF16, -1));
        EXPECT(SMALL, "out|out_len", qembed_embedding_forward(e, idx32, QEMBED_DTYPE_I32, 1, A_.out, QEMBED_DTYPE_F32, D - 1));
        /* out-of-range indices: nothing is written, and on the max_norm layer no row is renormalized
         * although the earlier indices are valid */
        for (i = 0; i < sizeof bad64 / sizeof bad64[0]; i++)
            EXPECT(RANGE, "indices", qembed_embedding_forward(e, bad64[i], QEMBED_DTYPE_I64, 4, A_.out, QEMBED_DTYPE_F32, 4 * D));
        for (i = 0; i < sizeof bad32 / sizeof bad32[0]; i++)
            EXPECT(RANGE, "indices", qembed_embedding_forward(e, bad32[i], QEMBED_DTYPE_I32, 4, A_.out, QEMBED_DTYPE_F16, 4 * D));
        /* a long batch whose last index is bad (the parallel paths) */
        {
            static int64_t longidx[BIG / D];
            int64_t k;
            for (k = 0; k < BIG / D; k++) longidx[k] = k % N;
            longidx[BIG / D - 1] = N;
            EXPECT(RANGE, "indices",
                   qembed_embedding_forward(e, longidx, QEMBED_DTYPE_I64, BIG / D, A_.out, QEMBED_DTYPE_F32, BIG));
        }
    }
}

static void backward_cases(void) {
    static const int bad_grad_dtypes[] = {QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, QEMBED_DTYPE_I32, QEMBED_DTYPE_I64,
                                          QEMBED_DTYPE_COUNT, 99, -1};
    static const int64_t bad64[][4] = {{0, 1, 2, N}, {-1, 0, 1, 2}, {0, 1, 2, INT64_MAX}, {3, 3, 3, -N - 1}};
    static const int32_t bad32[][4] = {{0, 1, 2, N}, {-1, 0, 1, 2}, {INT32_MIN, 0, 0, 0}};
    int l;
    size_t i;
    for (l = 0; l < NLAYERS; l++) {
        qembed_embedding *e = L[l];
        EXPECT(NULLPTR, "indices", qembed_embedding_backward(e, NULL, QEMBED_DTYPE_I64, 4, go_f32, QEMBED_DTYPE_F32, 4 * D));
        EXPECT(NULLPTR, "grad_output", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 4, NULL, QEMBED_DTYPE_F32, 4 * D));
        EXPECT(INVALID, "count", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, -1, go_f32, QEMBED_DTYPE_F32, 4 * D));
        EXPECT(SHAPE, "count|grad_output|grad_len",
               qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, INT64_MAX / 2, go_f32, QEMBED_DTYPE_F32, 4 * D));
        for (i = 0; i < 8; i++) {
            static const int bad_index_dtypes[] = {QEMBED_DTYPE_F32, QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16, QEMBED_DTYPE_U8,
                                                   QEMBED_DTYPE_I8,  QEMBED_DTYPE_COUNT, 99, -1};
            EXPECT(UNSUPP, "index_dtype",
                   qembed_embedding_backward(e, idx64, bad_index_dtypes[i], 4, go_f32, QEMBED_DTYPE_F32, 4 * D));
        }
        for (i = 0; i < sizeof bad_grad_dtypes / sizeof bad_grad_dtypes[0]; i++)
            EXPECT(UNSUPP, "grad_dtype",
                   qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 4, go_f32, bad_grad_dtypes[i], 4 * D));
        /* grad_len must equal count x embedding_dim */
        EXPECT(SHAPE, "grad_len|grad_output", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 4, go_f32, QEMBED_DTYPE_F32, 4 * D - 1));
        EXPECT(SHAPE, "grad_len|grad_output", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 4, go_f32, QEMBED_DTYPE_F32, 4 * D + 1));
        EXPECT(SHAPE, "grad_len|grad_output", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 4, go_f32, QEMBED_DTYPE_F32, 0));
        EXPECT(SHAPE, "grad_len|grad_output", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 4, go_f32, QEMBED_DTYPE_F32, -1));
        EXPECT(SHAPE, "grad_len|grad_output", qembed_embedding_backward(e, idx32, QEMBED_DTYPE_I32, 2, go_f16, QEMBED_DTYPE_F16, 4 * D));
        EXPECT(SHAPE, "grad_len|grad_output", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 0, go_f32, QEMBED_DTYPE_F32, D));
        /* out-of-range indices */
        for (i = 0; i < sizeof bad64 / sizeof bad64[0]; i++)
            EXPECT(RANGE, "indices", qembed_embedding_backward(e, bad64[i], QEMBED_DTYPE_I64, 4, go_f32, QEMBED_DTYPE_F32, 4 * D));
        for (i = 0; i < sizeof bad32 / sizeof bad32[0]; i++)
            EXPECT(RANGE, "indices", qembed_embedding_backward(e, bad32[i], QEMBED_DTYPE_I32, 4, go_bf16, QEMBED_DTYPE_BF16, 4 * D));
        /* non-finite grad_output: NaN, +Inf, -Inf at the first, a middle and the last element, each dtype */
        {
            static const uint16_t f16_bad[3] = {0x7E00, 0x7C00, 0xFC00};
            static const uint16_t bf16_bad[3] = {0x7FC0, 0x7F80, 0xFF80};
            const float f32_bad[3] = {NAN, INFINITY, -INFINITY};
            const int pos[3] = {0, 2 * D + 3, 4 * D - 1};
            int k, q;
            for (k = 0; k < 3; k++)
                for (q = 0; q < 3; q++) {
                    float f[4 * D];
                    uint16_t h[4 * D], b[4 * D];
                    memcpy(f, go_f32, sizeof f);
                    memcpy(h, go_f16, sizeof h);
                    memcpy(b, go_bf16, sizeof b);
                    f[pos[q]] = f32_bad[k];
                    h[pos[q]] = f16_bad[k];
                    b[pos[q]] = bf16_bad[k];
                    EXPECT(NONFIN, "grad_output", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 4, f, QEMBED_DTYPE_F32, 4 * D));
                    EXPECT(NONFIN, "grad_output", qembed_embedding_backward(e, idx32, QEMBED_DTYPE_I32, 4, h, QEMBED_DTYPE_F16, 4 * D));
                    EXPECT(NONFIN, "grad_output", qembed_embedding_backward(e, idx64, QEMBED_DTYPE_I64, 4, b, QEMBED_DTYPE_BF16, 4 * D));
                }
            /* a long batch with a NaN in its last row */
            {
                static int64_t longidx[BIG / D];
                static float g[BIG];
                int64_t m;
                for (m = 0; m < BIG / D; m++) longidx[m] = m % N;
                for (m = 0; m < BIG; m++) g[m] = go_f32[m % (64 * D)];
                g[BIG - 2] = NAN;
                EXPECT(NONFIN, "grad_output",
                       qembed_embedding_backward(e, longidx, QEMBED_DTYPE_I64, BIG / D, g, QEMBED_DTYPE_F32, BIG));
            }
        }
    }
}

/* ---- parameter calls ---------------------------------------------------------------- */

static void param_cases(void) {
    static const struct { int key; double v; const char *name; } bad_values[] = {
        {QEMBED_OVERRIDE_OPTIM_BITS, 16.0, "optim_bits"}, {QEMBED_OVERRIDE_OPTIM_BITS, 0.0, "optim_bits"},
        {QEMBED_OVERRIDE_OPTIM_BITS, 4.0, "optim_bits"},  {QEMBED_OVERRIDE_OPTIM_BITS, NAN, "optim_bits"},
        {QEMBED_OVERRIDE_OPTIM_BITS, 31.9, "optim_bits"}, {QEMBED_OVERRIDE_LR, -1.0, "lr"},
        {QEMBED_OVERRIDE_LR, NAN, "lr"},                  {QEMBED_OVERRIDE_LR, INFINITY, "lr"},
        {QEMBED_OVERRIDE_BETA1, 1.0, "beta1"},            {QEMBED_OVERRIDE_BETA1, -0.5, "beta1"},
        {QEMBED_OVERRIDE_BETA1, NAN, "beta1"},            {QEMBED_OVERRIDE_BETA2, 1.0, "beta2"},
        {QEMBED_OVERRIDE_BETA2, 2.0, "beta2"},            {QEMBED_OVERRIDE_BETA2, -INFINITY, "beta2"},
        {QEMBED_OVERRIDE_EPS, -1e-8, "eps"},              {QEMBED_OVERRIDE_EPS, INFINITY, "eps"},
        {QEMBED_OVERRIDE_WEIGHT_DECAY, -0.1, "weight_decay"}, {QEMBED_OVERRIDE_WEIGHT_DECAY, NAN, "weight_decay"},
    };
    static const int bad_keys[] = {-1, QEMBED_OVERRIDE_COUNT, 99, INT32_MIN};
    static const int bad_load_dtypes[] = {QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, QEMBED_DTYPE_I32, QEMBED_DTYPE_I64,
                                          QEMBED_DTYPE_COUNT, 99, -1};
    size_t i;
    int l;

    /* NULL parameter handles */
    EXPECT(NULLPTR, "param", qembed_param_info_get(NULL, &A_.info));
    EXPECT(NULLPTR, "param", qembed_param_sparse_grad(NULL, &A_.i64[0], NULL, 0, NULL, 0));
    EXPECT(NULLPTR, "param", qembed_param_set_override(NULL, QEMBED_OVERRIDE_LR, 0.1));
    EXPECT(NULLPTR, "param", qembed_param_get_override(NULL, QEMBED_OVERRIDE_LR, &A_.value[0], &A_.flag[0]));
    EXPECT(NULLPTR, "param", qembed_param_clear_override(NULL, QEMBED_OVERRIDE_LR));
    EXPECT(NULLPTR, "param", qembed_param_load(NULL, table, QEMBED_DTYPE_F32, N * D));

    for (l = 0; l < NLAYERS; l++) {
        const int64_t np = l == LT ? 3 : 1;
        int64_t pi;
        for (pi = 0; pi < np; pi++) {
            qembed_param *p = qt_param_of(L[l], pi);
            const int64_t numel = pi == 0 ? N * D : D;
            const int64_t cols = pi == 0 ? D : 1;
            qembed_param_info *ip = &A_.info;
            /* info */
            EXPECT(NULLPTR, "info", qembed_param_info_get(p, NULL));
            EXPECT(INVALID, "struct_size",
                   (ip->struct_size = 0, REF_.info.struct_size = 0, qembed_param_info_get(p, ip)));
            EXPECT(INVALID, "struct_size",
                   (ip->struct_size = (uint32_t)sizeof *ip - 8, REF_.info.struct_size = (uint32_t)sizeof *ip - 8,
                    qembed_param_info_get(p, ip)));
            EXPECT(INVALID, "struct_size",
                   (ip->struct_size = (uint32_t)sizeof *ip + 8, REF_.info.struct_size = (uint32_t)sizeof *ip + 8,
                    qembed_param_info_get(p, ip)));
            memset(&REF_, SENTINEL, sizeof REF_);
            /* sparse gradient */
            EXPECT(NULLPTR, "nnz_rows", qembed_param_sparse_grad(p, NULL, NULL, 0, NULL, 0));
            EXPECT(NULLPTR, "nnz_rows", qembed_param_sparse_grad(p, NULL, &A_.i64[1], 60, A_.out, BIG));
            EXPECT(NULLPTR, "values", qembed_param_sparse_grad(p, &A_.i64[0], &A_.i64[1], 60, NULL, BIG));
            EXPECT(NULLPTR, "rows", qembed_param_sparse_grad(p, &A_.i64[0], NULL, 60, A_.out, BIG));
            if (l == LS && pi == 0) {
                /* the sparse layer holds 4 distinct rows (idx64) */
                EXPECT(SMALL, "rows|rows_cap", qembed_param_sparse_grad(p, &A_.i64[0], &A_.i64[1], 3, A_.out, BIG));
                EXPECT(SMALL, "rows|rows_cap", qembed_param_sparse_grad(p, &A_.i64[0], &A_.i64[1], 0, A_.out, BIG));
                EXPECT(SMALL, "rows|rows_cap", qembed_param_sparse_grad(p, &A_.i64[0], &A_.i64[1], -1, A_.out, BIG));
                EXPECT(SMALL, "values|values_cap",
                       qembed_param_sparse_grad(p, &A_.i64[0], &A_.i64[1], 60, A_.out, 4 * D - 1));
                EXPECT(SMALL, "values|values_cap", qembed_param_sparse_grad(p, &A_.i64[0], &A_.i64[1], 60, A_.out, 0));
                EXPECT(SMALL, "values|values_cap", qembed_param_sparse_grad(p, &A_.i64[0], &A_.i64[1], 60, A_.out, -5));
            }
            /* overrides */
            for (i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
                EXPECT(INVALID | UNSUPP, "key", qembed_param_set_override(p, bad_keys[i], 0.1));
                EXPECT(INVALID | UNSUPP, "key", qembed_param_get_override(p, bad_keys[i], &A_.value[0], &A_.flag[0]));
                EXPECT(INVALID | UNSUPP, "key", qembed_param_clear_override(p, bad_keys[i]));
            }
            for (i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++)
                EXPECT(INVALID | NONFIN, bad_values[i].name, qembed_param_set_override(p, bad_values[i].key, bad_values[i].v));
            EXPECT(NULLPTR, "value", qembed_param_get_override(p, QEMBED_OVERRIDE_OPTIM_BITS, NULL, &A_.flag[0]));
            EXPECT(NULLPTR, "is_set", qembed_param_get_override(p, QEMBED_OVERRIDE_OPTIM_BITS, &A_.value[0], NULL));
            /* load */
            EXPECT(NULLPTR, "src", qembed_param_load(p, NULL, QEMBED_DTYPE_F32, numel));
            for (i = 0; i < sizeof bad_load_dtypes / sizeof bad_load_dtypes[0]; i++)
                EXPECT(UNSUPP, "dtype", qembed_param_load(p, table, bad_load_dtypes[i], numel));
            EXPECT(SHAPE | INVALID, "numel", qembed_param_load(p, table, QEMBED_DTYPE_F32, numel - 1));
            EXPECT(SHAPE | INVALID, "numel", qembed_param_load(p, table, QEMBED_DTYPE_F32, numel + 1));
            EXPECT(SHAPE | INVALID, "numel", qembed_param_load(p, table, QEMBED_DTYPE_F16, 0));
            EXPECT(SHAPE | INVALID, "numel", qembed_param_load(p, table, QEMBED_DTYPE_F32, -1));
            EXPECT(SHAPE | INVALID, "numel", qembed_param_load(p, table, QEMBED_DTYPE_F32, INT64_MIN));
            EXPECT(SHAPE | INVALID, "numel", qembed_param_load(p, table, QEMBED_DTYPE_BF16, INT64_MAX));
            {
                static float f[N * D];
                static uint16_t h[N * D], b[N * D];
                int64_t k;
                for (k = 0; k < numel; k++) {
                    f[k] = table[k];
                    h[k] = qt_f32_to_f16(table[k]);
                    b[k] = qt_f32_to_bf16(table[k]);
                }
                f[numel - 1] = NAN;
                h[0] = 0x7C00;
                b[numel / 2] = 0x7FC1;
                EXPECT(NONFIN, "src", qembed_param_load(p, f, QEMBED_DTYPE_F32, numel));
                EXPECT(NONFIN, "src", qembed_param_load(p, h, QEMBED_DTYPE_F16, numel));
                EXPECT(NONFIN, "src", qembed_param_load(p, b, QEMBED_DTYPE_BF16, numel));
                f[numel - 1] = table[numel - 1];
                f[0] = -INFINITY;
                EXPECT(NONFIN, "src", qembed_param_load(p, f, QEMBED_DTYPE_F32, numel));
            }
            (void)cols;
        }
    }
}

int main(void) {
    int l;
    setup();
    create_cases();
    layer_cases();
    forward_cases();
    backward_cases();
    param_cases();
    for (l = 0; l < NLAYERS; l++) qembed_embedding_free(L[l]);
    free(snap_before);
    printf("test_embedding_errors: %ld bad-input cases\n", cases);
    return qt_summary("test_embedding_errors");
}
