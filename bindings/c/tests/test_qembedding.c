/* test_qembedding.c - quantized embeddings (Embedding8bit, EmbeddingFP4,
 * EmbeddingNF4) through the C API (include/qembed.h, "Quantized embeddings"):
 *   for INT8, FP4 and NF4 with blocksizes 32/64/128/4096, plain and with
 *   compressed statistics:
 *   - +-1 tables round-trip exactly for dims 64 and 65 (upstream's
 *     test_embedding_lossless) and uniform [0, 1) tables stay within 0.05
 *     (int8) / 0.20 (4-bit) (upstream's test_embedding_error);
 *   - every lookup equals an independent dequantization of the tensors read
 *     back from the saved file (int8: q * (SCB / 127) in float32; 4-bit:
 *     level[nibble] * absmax with element 2k in the high nibble; nested:
 *     absmax = nested_code[q] * nested_absmax[b / 256] + offset, the offset
 *     parsed from the quant_state JSON), to the bit, for f32/f16/bf16 weights
 *     and f32/f16/bf16 outputs; the stored codes are the nearest levels;
 *   - save -> load gives identical lookups and info; a custom prefix; two
 *     layers in one file; from_embedding equals quantize of the same table;
 *     info fields and the table_bytes formula;
 *   - out-of-range indices leave the output untouched; a quant_state JSON
 *     that disagrees with the tensors is refused; a bad-argument battery;
 *   - fixtures written by bitsandbytes 0.50.2 itself (tests/data,
 *     make_fixtures.py) load and look up to F.dequantize_4bit's output. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <limits.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qembed.h"
#include "qtest.h"
#include "qtest_dir.h"

typedef struct cfg {
    int kind;
    int64_t blocksize;
    bool nested;
} cfg;

static const cfg CFGS[] = {
    {QEMBED_QEMB_INT8, 0, false},  {QEMBED_QEMB_FP4, 32, false}, {QEMBED_QEMB_FP4, 64, false},
    {QEMBED_QEMB_FP4, 128, false}, {QEMBED_QEMB_FP4, 4096, false}, {QEMBED_QEMB_FP4, 32, true},
    {QEMBED_QEMB_FP4, 64, true},   {QEMBED_QEMB_FP4, 128, true},  {QEMBED_QEMB_FP4, 4096, true},
    {QEMBED_QEMB_NF4, 32, false},  {QEMBED_QEMB_NF4, 64, false},  {QEMBED_QEMB_NF4, 128, false},
    {QEMBED_QEMB_NF4, 4096, false}, {QEMBED_QEMB_NF4, 32, true},  {QEMBED_QEMB_NF4, 64, true},
    {QEMBED_QEMB_NF4, 128, true},  {QEMBED_QEMB_NF4, 4096, true},
};
#define NCFG ((int)(sizeof CFGS / sizeof CFGS[0]))

static const char *kind_name(int kind) { return kind == QEMBED_QEMB_INT8 ? "int8" : kind == QEMBED_QEMB_FP4 ? "fp4" : "nf4"; }

static char cfg_buf[64];
static const char *cfg_name(const cfg *c) {
    if (c->kind == QEMBED_QEMB_INT8) return "int8";
    snprintf(cfg_buf, sizeof cfg_buf, "%s bs%lld%s", kind_name(c->kind), (long long)c->blocksize,
             c->nested ? " nested" : "");
    return cfg_buf;
}

/* ---- float helpers -------------------------------------------------------- */

static qembed_qembedding *quantize(const void *w, int dtype, int64_t rows, int64_t dim, const cfg *c) {
    qembed_qembedding *q = NULL;
    qembed_status st = qembed_qembedding_quantize(w, dtype, rows, dim, c->kind, c->blocksize, c->nested, &q);
    CHECKF(st == QEMBED_OK && q != NULL, "quantize %s %lldx%lld %s: %s: %s", cfg_name(c), (long long)rows,
           (long long)dim, qembed_dtype_name(dtype), qembed_status_string(st), qembed_last_error());
    return st == QEMBED_OK ? q : NULL;
}

/* all rows, in order, as out_dtype */
static int forward_all(const qembed_qembedding *q, int64_t rows, int64_t dim, int out_dtype, void *out) {
    int64_t *ids = xmalloc((size_t)rows * sizeof(int64_t)), i;
    qembed_status st;
    for (i = 0; i < rows; i++) ids[i] = i;
    st = qembed_qembedding_forward(q, ids, QEMBED_DTYPE_I64, rows, out, out_dtype, rows * dim);
    free(ids);
    return CHECKF(st == QEMBED_OK, "forward: %s", qembed_last_error());
}

static qembed_qembedding_info info_of(const qembed_qembedding *q) {
    qembed_qembedding_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK(qembed_qembedding_info_get(q, &info) == QEMBED_OK);
    return info;
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* table_bytes: int8 rows*dim + 4*rows (SCB); 4-bit: packed ceil(n/2) + the
 * 16-float level table + either 4*blocks (absmax) or blocks (qabsmax) +
 * 4*ceil(blocks/256) (nested absmax) + 256*4 (nested code) + 4 (offset). */
static int64_t expected_table_bytes(const cfg *c, int64_t rows, int64_t dim) {
    int64_t n = rows * dim, blocks;
    if (c->kind == QEMBED_QEMB_INT8) return n + 4 * rows;
    blocks = cdiv(n, c->blocksize);
    return cdiv(n, 2) + 64 + (c->nested ? blocks + 4 * cdiv(blocks, 256) + 1024 + 4 : 4 * blocks);
}

/* ---- 1. lossless +-1 and bounded error (upstream's intent) --------------- */

static void test_lossless_and_error(void) {
    int ci, di, dt;
    static const int64_t dims[2] = {64, 65};
    const int64_t rows = 128;
    for (ci = 0; ci < NCFG; ci++) {
        const cfg *c = &CFGS[ci];
        for (di = 0; di < 2; di++) {
            int64_t dim = dims[di], n = rows * dim, i;
            float *v = xmalloc((size_t)n * 4), *out = xmalloc((size_t)n * 4);
            int32_t idx[1000];
            float *out2 = xmalloc(sizeof(float) * 1000 * (size_t)dim);
            qt_rng r = qt_rng_make(100 + (uint64_t)ci * 7 + (uint64_t)di);
            for (dt = QEMBED_DTYPE_F32; dt <= QEMBED_DTYPE_BF16; dt++) {
                void *w;
                qembed_qembedding *q;
                int exact = 1;
                float maxerr = 0;
                /* +-1: exact */
                for (i = 0; i < n; i++) v[i] = (qt_next(&r) >> 63) ? 1.0f : -1.0f;
                w = qt_to_dtype(v, n, dt);
                q = quantize(w, dt, rows, dim, c);
                if (q != NULL && forward_all(q, rows, dim, QEMBED_DTYPE_F32, out)) {
                    CHECKF(memcmp(out, v, (size_t)n * 4) == 0, "%s dim %lld %s: a +-1 table is not reproduced exactly",
                           cfg_name(c), (long long)dim, qembed_dtype_name(dt));
                    /* a 10x10x10 batch of random ids with repeats (i32 indices) */
                    for (i = 0; i < 1000; i++) idx[i] = (int32_t)(qt_next(&r) % (uint64_t)rows);
                    CHECK(qembed_qembedding_forward(q, idx, QEMBED_DTYPE_I32, 1000, out2, QEMBED_DTYPE_F32, 1000 * dim) == QEMBED_OK);
                    for (i = 0; i < 1000 && exact; i++)
                        exact = memcmp(out2 + i * dim, v + (int64_t)idx[i] * dim, (size_t)dim * 4) == 0;
                    CHECKF(exact, "%s dim %lld: a batch of ids does not give the +-1 rows", cfg_name(c), (long long)dim);
                }
                qembed_qembedding_free(q);
                free(w);

                /* uniform [0, 1): max error 0.05 (int8), 0.20 (4-bit) */
                for (i = 0; i < n; i++) v[i] = qt_uniform(&r);
                w = qt_to_dtype(v, n, dt);
                q = quantize(w, dt, rows, dim, c);
                if (q != NULL && forward_all(q, rows, dim, QEMBED_DTYPE_F32, out)) {
                    float bound = c->kind == QEMBED_QEMB_INT8 ? 0.05f : 0.20f;
                    for (i = 0; i < n; i++) {
                        float e = fabsf(out[i] - qt_load_f(w, dt, i));
                        if (!(e <= maxerr)) maxerr = e;
                    }
                    CHECKF(maxerr <= bound, "%s dim %lld %s: max error %g > %g", cfg_name(c), (long long)dim,
                           qembed_dtype_name(dt), (double)maxerr, (double)bound);
                }
                qembed_qembedding_free(q);
                free(w);
            }
            free(v);
            free(out);
            free(out2);
        }
    }
}

/* ---- 2. lookups vs an independent dequantization of the saved file -------- */

typedef struct tensor {
    bool found;
    qembed_tensor_info info;
} tensor;

static tensor get_tensor(const qembed_tensor_file *f, const char *prefix, const char *suffix) {
    tensor t;
    char name[256];
    int64_t idx = -1;
    memset(&t, 0, sizeof t);
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    if (qembed_tensor_file_find(f, name, &idx) != QEMBED_OK) return t;
    t.info.struct_size = sizeof t.info;
    t.found = qembed_tensor_file_info(f, idx, &t.info) == QEMBED_OK;
    return t;
}

/* value of "key" in a flat JSON object: the text after the colon */
static const char *json_value(const char *json, const char *key) {
    char pat[64];
    const char *p;
    snprintf(pat, sizeof pat, "\"%s\"", key);
    p = strstr(json, pat);
    if (p == NULL) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

static bool json_number(const char *json, const char *key, double *v) {
    const char *p = json_value(json, key);
    char *end;
    if (p == NULL) return false;
    *v = strtod(p, &end);
    return end != p;
}

static bool json_string_is(const char *json, const char *key, const char *want) {
    const char *p = json_value(json, key);
    size_t n = strlen(want);
    return p != NULL && p[0] == '"' && strncmp(p + 1, want, n) == 0 && p[1 + n] == '"';
}

/* Dequantizes rows x dim from the tensors of `path` under `prefix` by the
 * documented rules, then rounds to the weight dtype `wdtype` (as lookups do).
 * Checks the layout on the way; returns false when it cannot. */
static bool dequant_from_file(const char *path, const char *prefix, int kind, int64_t rows, int64_t dim, int wdtype,
                              int64_t want_bs, bool want_nested, float *out) {
    qembed_tensor_file *f = NULL;
    int64_t n = rows * dim, i;
    bool ok = false;
    if (qembed_tensor_file_open(path, &f) != QEMBED_OK) {
        CHECKF(0, "open %s: %s", path, qembed_last_error());
        return false;
    }
    if (kind == QEMBED_QEMB_INT8) {
        tensor w = get_tensor(f, prefix, ""), scb = get_tensor(f, prefix, ".SCB");
        int64_t count = 0;
        CHECK(qembed_tensor_file_count(f, &count) == QEMBED_OK && count == 2);
        if (CHECKF(w.found && scb.found, "int8 file: %s and %s.SCB", prefix, prefix) &&
            CHECKF(w.info.dtype == QEMBED_DTYPE_I8 && w.info.ndim == 2 && w.info.shape[0] == rows &&
                       w.info.shape[1] == dim,
                   "int8 weight: %s ndim %d", w.info.dtype_name, w.info.ndim) &&
            CHECKF(scb.info.dtype == QEMBED_DTYPE_F32 && scb.info.ndim == 1 && scb.info.shape[0] == rows,
                   "SCB: %s [%lld]", scb.info.dtype_name, (long long)scb.info.shape[0])) {
            const int8_t *q = w.info.data;
            for (i = 0; i < n; i++) {
                float s;
                memcpy(&s, (const char *)scb.info.data + 4 * (i / dim), 4);
                out[i] = qt_round_to((float)q[i] * (s / 127.0f), wdtype);
            }
            ok = true;
        }
    } else {
        const char *tname = kind == QEMBED_QEMB_NF4 ? "nf4" : "fp4";
        char suffix[64], json[1024];
        tensor w = get_tensor(f, prefix, ""), am = get_tensor(f, prefix, ".absmax"), qm = get_tensor(f, prefix, ".quant_map");
        tensor na = get_tensor(f, prefix, ".nested_absmax"), nc = get_tensor(f, prefix, ".nested_quant_map"), js;
        int64_t count = 0, blocks, bs = want_bs, nbs = 256;
        double d = 0;
        float level[16], std_level[16], offset = 0;
        snprintf(suffix, sizeof suffix, ".quant_state.bitsandbytes__%s", tname);
        js = get_tensor(f, prefix, suffix);
        CHECK(qembed_tensor_file_count(f, &count) == QEMBED_OK && count == (want_nested ? 6 : 4));
        if (!CHECKF(w.found && am.found && qm.found && js.found && na.found == want_nested && nc.found == want_nested,
                    "4-bit file layout under %s", prefix))
            goto done;
        CHECKF(js.info.dtype == QEMBED_DTYPE_U8 && js.info.nbytes < (int64_t)sizeof json, "quant_state is U8 JSON");
        memcpy(json, js.info.data, (size_t)js.info.nbytes);
        json[js.info.nbytes] = '\0';
        CHECKF(json_string_is(json, "quant_type", tname), "quant_state quant_type: %s", json);
        CHECKF(json_number(json, "blocksize", &d) && d == (double)want_bs, "quant_state blocksize: %s", json);
        CHECKF(json_string_is(json, "dtype", wdtype == QEMBED_DTYPE_F32 ? "float32" : wdtype == QEMBED_DTYPE_F16 ? "float16" : "bfloat16"),
               "quant_state dtype: %s", json);
        {
            const char *s = json_value(json, "shape");
            long long a = -1, b = -1;
            CHECKF(s != NULL && sscanf(s, "[%lld, %lld]", &a, &b) == 2 && a == rows && b == dim, "quant_state shape: %s", json);
        }
        blocks = cdiv(n, bs);
        CHECKF(w.info.dtype == QEMBED_DTYPE_U8 && w.info.ndim == 2 && w.info.shape[0] == cdiv(n, 2) && w.info.shape[1] == 1,
               "packed weight: %s [%lld, %lld]", w.info.dtype_name, (long long)w.info.shape[0], (long long)w.info.shape[1]);
        CHECKF(qm.info.dtype == QEMBED_DTYPE_F32 && qm.info.numel == 16, "quant_map: 16 F32");
        memcpy(level, qm.info.data, 64);
        CHECK(qembed_get_4bit_code(kind == QEMBED_QEMB_NF4 ? QEMBED_QUANT_NF4 : QEMBED_QUANT_FP4, std_level) == QEMBED_OK);
        CHECKF(memcmp(level, std_level, 64) == 0, "the saved quant_map is the standard %s level table", tname);
        if (want_nested) {
            CHECKF(am.info.dtype == QEMBED_DTYPE_U8 && am.info.numel == blocks, "nested absmax: %lld U8", (long long)blocks);
            CHECKF(json_number(json, "nested_blocksize", &d) && d == 256, "nested_blocksize 256: %s", json);
            CHECKF(json_string_is(json, "nested_dtype", "float32"), "nested_dtype: %s", json);
            CHECKF(json_number(json, "nested_offset", &d), "nested_offset: %s", json);
            offset = (float)d;
            CHECKF((double)offset == d, "the JSON offset %.17g is a float32 value", d);
            CHECKF(na.info.dtype == QEMBED_DTYPE_F32 && na.info.numel == cdiv(blocks, nbs), "nested_absmax count");
            CHECKF(nc.info.dtype == QEMBED_DTYPE_F32 && nc.info.numel == 256, "nested_quant_map: 256 F32");
        } else {
            CHECKF(am.info.dtype == QEMBED_DTYPE_F32 && am.info.numel == blocks, "absmax: %lld F32", (long long)blocks);
            CHECKF(!json_value(json, "nested_blocksize") && !json_value(json, "nested_offset"), "no nested keys: %s", json);
        }
        if (qt_failed == 0 || (w.info.numel == cdiv(n, 2) && am.info.numel == blocks)) {
            float *absmax = xmalloc((size_t)blocks * 4);
            const uint8_t *packed = w.info.data;
            int64_t b;
            for (b = 0; b < blocks; b++) {
                if (want_nested) {
                    float code, nab;
                    uint8_t qa = ((const uint8_t *)am.info.data)[b];
                    memcpy(&code, (const char *)nc.info.data + 4 * qa, 4);
                    memcpy(&nab, (const char *)na.info.data + 4 * (b / nbs), 4);
                    absmax[b] = code * nab + offset;
                } else {
                    memcpy(&absmax[b], (const char *)am.info.data + 4 * b, 4);
                }
            }
            for (i = 0; i < n; i++) {
                uint8_t byte = packed[i / 2];
                int nib = (i % 2 == 0) ? byte >> 4 : byte & 15;
                out[i] = qt_round_to(level[nib] * absmax[i / bs], wdtype);
            }
            if (n % 2 == 1) CHECKF(level[packed[n / 2] & 15] == 0.0f, "the padding nibble of an odd n is a zero level");
            free(absmax);
            ok = true;
        }
    }
done:
    qembed_tensor_file_close(f);
    return ok;
}

/* the stored codes are the nearest: checked against the original weight
 * (absmax / SCB exact; each value within half a level of its code) */
static void check_nearest(const char *path, const cfg *c, const void *w, int dtype, int64_t rows, int64_t dim) {
    qembed_tensor_file *f = NULL;
    int64_t n = rows * dim, i, bad = 0;
    if (c->nested || qembed_tensor_file_open(path, &f) != QEMBED_OK) return;
    if (c->kind == QEMBED_QEMB_INT8) {
        tensor q = get_tensor(f, "weight", ""), scb = get_tensor(f, "weight", ".SCB");
        int64_t r;
        for (r = 0; q.found && scb.found && r < rows; r++) {
            float s, m = 0;
            memcpy(&s, (const char *)scb.info.data + 4 * r, 4);
            for (i = 0; i < dim; i++) m = fmaxf(m, fabsf(qt_load_f(w, dtype, r * dim + i)));
            if (s != m) bad++;
            for (i = 0; i < dim && s > 0; i++) {
                double exact = (double)qt_load_f(w, dtype, r * dim + i) * 127.0 / (double)s;
                if (fabs(exact - ((const int8_t *)q.info.data)[r * dim + i]) > 0.5 + 1e-4) bad++;
            }
        }
    } else {
        tensor q = get_tensor(f, "weight", ""), am = get_tensor(f, "weight", ".absmax");
        float level[16];
        int64_t blocks = cdiv(n, c->blocksize), b;
        qembed_get_4bit_code(c->kind == QEMBED_QEMB_NF4 ? QEMBED_QUANT_NF4 : QEMBED_QUANT_FP4, level);
        for (b = 0; q.found && am.found && b < blocks; b++) {
            float a, m = 0;
            int64_t lo = b * c->blocksize, hi = lo + c->blocksize < n ? lo + c->blocksize : n;
            memcpy(&a, (const char *)am.info.data + 4 * b, 4);
            for (i = lo; i < hi; i++) m = fmaxf(m, fabsf(qt_load_f(w, dtype, i)));
            if (a != m) bad++;
            for (i = lo; i < hi && a > 0; i++) {
                uint8_t byte = ((const uint8_t *)q.info.data)[i / 2];
                int nib = (i % 2 == 0) ? byte >> 4 : byte & 15, k;
                double x = (double)qt_load_f(w, dtype, i) / (double)a, best = 1e9;
                for (k = 0; k < 16; k++) best = fmin(best, fabs(x - level[k]));
                if (fabs(x - level[nib]) > best + 1e-6) bad++;
            }
        }
    }
    CHECKF(bad == 0, "%s: %lld stored statistics/codes are not the exact/nearest ones", cfg_name(c), (long long)bad);
    qembed_tensor_file_close(f);
}

static bool same_info(const qembed_qembedding_info *a, const qembed_qembedding_info *b) {
    return a->kind == b->kind && a->num_embeddings == b->num_embeddings && a->embedding_dim == b->embedding_dim &&
           a->dtype == b->dtype && a->blocksize == b->blocksize && a->nested == b->nested && a->table_bytes == b->table_bytes;
}

static void test_against_file(void) {
    static const int64_t shapes[4][2] = {{128, 64}, {128, 65}, {601, 7}, {600, 64}};
    int ci, si, dt;
    for (ci = 0; ci < NCFG; ci++) {
        const cfg *c = &CFGS[ci];
        for (si = 0; si < 4; si++) {
            int64_t rows = shapes[si][0], dim = shapes[si][1], n = rows * dim, i;
            for (dt = QEMBED_DTYPE_F32; dt <= QEMBED_DTYPE_BF16; dt++) {
                float *v = xmalloc((size_t)n * 4), *ref = xmalloc((size_t)n * 4), *out = xmalloc((size_t)n * 4);
                float *out2 = xmalloc((size_t)n * 4);
                uint16_t *h = xmalloc((size_t)n * 2);
                qt_rng r = qt_rng_make(1000 + (uint64_t)(ci * 16 + si * 4 + dt));
                void *w;
                qembed_qembedding *q, *back = NULL;
                qembed_qembedding_info info, binfo;
                char name[64];
                int64_t bad = 0;
                const char *path;
                for (i = 0; i < n; i++) v[i] = qt_normal(&r) * (i % 97 == 0 ? 3.0f : 0.5f);
                for (i = 0; i < dim; i++) v[5 * dim + i] = 0.0f; /* a zero row */
                w = qt_to_dtype(v, n, dt);
                q = quantize(w, dt, rows, dim, c);
                if (q == NULL) goto next;
                info = info_of(q);
                CHECKF(info.kind == c->kind && info.num_embeddings == rows && info.embedding_dim == dim && info.dtype == dt &&
                           info.blocksize == (c->kind == QEMBED_QEMB_INT8 ? dim : c->blocksize) && info.nested == c->nested,
                       "%s: info kind %d %lldx%lld dtype %d blocksize %lld nested %d", cfg_name(c), info.kind,
                       (long long)info.num_embeddings, (long long)info.embedding_dim, info.dtype, (long long)info.blocksize,
                       (int)info.nested);
                CHECKF(info.table_bytes == expected_table_bytes(c, rows, dim), "%s %lldx%lld: table_bytes %lld, want %lld",
                       cfg_name(c), (long long)rows, (long long)dim, (long long)info.table_bytes,
                       (long long)expected_table_bytes(c, rows, dim));
                snprintf(name, sizeof name, "q_%d_%d_%d.safetensors", ci, si, dt);
                path = qt_path(name);
                if (!CHECKF(qembed_qembedding_save(q, path, NULL) == QEMBED_OK, "save: %s", qembed_last_error())) goto next;
                if (!dequant_from_file(path, "weight", c->kind, rows, dim, dt, c->kind == QEMBED_QEMB_INT8 ? 0 : c->blocksize,
                                       c->nested, ref))
                    goto next;
                check_nearest(path, c, w, dt, rows, dim);
                /* f32 lookups: bit-exact */
                if (forward_all(q, rows, dim, QEMBED_DTYPE_F32, out)) {
                    for (i = 0; i < n; i++) bad += qt_f32_bits(out[i]) != qt_f32_bits(ref[i]);
                    CHECKF(bad == 0, "%s %lldx%lld %s: %lld of %lld f32 lookups differ from the file's dequantization (first: %g vs %g)",
                           cfg_name(c), (long long)rows, (long long)dim, qembed_dtype_name(dt), (long long)bad, (long long)n,
                           (double)out[0], (double)ref[0]);
                }
                /* f16 and bf16 lookups: the f32 value rounded to nearest even */
                if (forward_all(q, rows, dim, QEMBED_DTYPE_F16, h)) {
                    for (bad = 0, i = 0; i < n; i++) bad += h[i] != qt_f32_to_f16(ref[i]);
                    CHECKF(bad == 0, "%s %s: %lld f16 lookups differ", cfg_name(c), qembed_dtype_name(dt), (long long)bad);
                }
                if (forward_all(q, rows, dim, QEMBED_DTYPE_BF16, h)) {
                    for (bad = 0, i = 0; i < n; i++) bad += h[i] != qt_f32_to_bf16(ref[i]);
                    CHECKF(bad == 0, "%s %s: %lld bf16 lookups differ", cfg_name(c), qembed_dtype_name(dt), (long long)bad);
                }
                /* save -> load: identical lookups and info */
                if (CHECKF(qembed_qembedding_load(path, NULL, &back) == QEMBED_OK && back != NULL, "load %s: %s", path,
                           qembed_last_error())) {
                    binfo = info_of(back);
                    CHECKF(same_info(&binfo, &info),
                           "%s from a %s table: the loaded layer's info differs (dtype %s -> %s, blocksize %lld -> %lld, "
                           "table_bytes %lld -> %lld)",
                           cfg_name(c), qembed_dtype_name(dt), qembed_dtype_name(info.dtype), qembed_dtype_name(binfo.dtype),
                           (long long)info.blocksize, (long long)binfo.blocksize, (long long)info.table_bytes,
                           (long long)binfo.table_bytes);
                    if (forward_all(back, rows, dim, QEMBED_DTYPE_F32, out2)) {
                        for (bad = 0, i = 0; i < n; i++) bad += qt_f32_bits(out2[i]) != qt_f32_bits(out[i]);
                        CHECKF(bad == 0, "%s from a %s table %lldx%lld: %lld of %lld lookups differ after save -> load",
                               cfg_name(c), qembed_dtype_name(dt), (long long)rows, (long long)dim, (long long)bad,
                               (long long)n);
                    }
                    qembed_qembedding_free(back);
                }
            next:
                qembed_qembedding_free(q);
                free(w);
                free(v);
                free(ref);
                free(out);
                free(out2);
                free(h);
            }
        }
    }
}

/* ---- 3. prefixes, two layers in one file, from_embedding ------------------ */

static bool lookups_equal(const qembed_qembedding *a, const qembed_qembedding *b, int64_t rows, int64_t dim) {
    float *x = xmalloc((size_t)(rows * dim) * 4), *y = xmalloc((size_t)(rows * dim) * 4);
    bool same = forward_all(a, rows, dim, QEMBED_DTYPE_F32, x) && forward_all(b, rows, dim, QEMBED_DTYPE_F32, y) &&
                memcmp(x, y, (size_t)(rows * dim) * 4) == 0;
    free(x);
    free(y);
    return same;
}

static void test_prefix(void) {
    const int64_t rows = 50, dim = 24;
    float v[50 * 24];
    int64_t i;
    int ci;
    qt_rng r = qt_rng_make(5);
    for (i = 0; i < rows * dim; i++) v[i] = qt_normal(&r);
    for (ci = 0; ci < NCFG; ci++) {
        const cfg *c = &CFGS[ci];
        qembed_qembedding *q = quantize(v, QEMBED_DTYPE_F32, rows, dim, c), *back = (qembed_qembedding *)&r;
        char path[512];
        const char *prefix = "model.embed_tokens.weight";
        qembed_status st;
        if (q == NULL) continue;
        snprintf(path, sizeof path, "%s", qt_path("prefix.safetensors"));
        CHECK(qembed_qembedding_save(q, path, prefix) == QEMBED_OK);
        {
            qembed_tensor_file *f = NULL;
            int64_t idx = -1;
            char name[128];
            CHECK(qembed_tensor_file_open(path, &f) == QEMBED_OK);
            CHECKF(qembed_tensor_file_find(f, prefix, &idx) == QEMBED_OK, "the table is stored under the prefix");
            snprintf(name, sizeof name, "%s%s", prefix, c->kind == QEMBED_QEMB_INT8 ? ".SCB" : ".absmax");
            CHECKF(qembed_tensor_file_find(f, name, &idx) == QEMBED_OK, "%s is stored", name);
            CHECK(qembed_tensor_file_find(f, "weight", &idx) == QEMBED_ERR_INVALID_ARGUMENT);
            qembed_tensor_file_close(f);
        }
        if (c->kind == QEMBED_QEMB_INT8) {
            float ref[50 * 24];
            CHECK(dequant_from_file(path, prefix, c->kind, rows, dim, QEMBED_DTYPE_F32, 0, false, ref));
        }
        st = qembed_qembedding_load(path, prefix, &back);
        CHECKF(st == QEMBED_OK && back != NULL, "%s: load under %s: %s", cfg_name(c), prefix, qembed_last_error());
        if (st == QEMBED_OK) CHECKF(lookups_equal(q, back, rows, dim), "%s: lookups after a prefixed save/load", cfg_name(c));
        qembed_qembedding_free(back);
        /* no prefix: the file's only layer; "weight" and a shorter prefix are not there */
        st = qembed_qembedding_load(path, NULL, &back);
        CHECKF(st == QEMBED_OK && back != NULL, "load with no prefix (the file's only layer): %s", qembed_last_error());
        if (st == QEMBED_OK) CHECK(lookups_equal(q, back, rows, dim));
        qembed_qembedding_free(back);
        /* the mapped load gives the same layer; unknown flags and NULL are refused, nothing returned */
        st = qembed_qembedding_load_ex(path, prefix, QEMBED_OPEN_MMAP, &back);
        CHECKF(st == QEMBED_OK && back != NULL, "mapped load: %s", qembed_last_error());
        if (st == QEMBED_OK) CHECK(lookups_equal(q, back, rows, dim));
        qembed_qembedding_free(back);
        back = (qembed_qembedding *)&r;
        CHECK(qembed_qembedding_load_ex(path, prefix, 4u, &back) == QEMBED_ERR_INVALID_ARGUMENT && back == NULL);
        CHECK(strstr(qembed_last_error(), "flags") != NULL);
        back = (qembed_qembedding *)&r;
        CHECK(qembed_qembedding_load_ex(NULL, prefix, 0, &back) == QEMBED_ERR_NULL_POINTER && back == NULL);
        CHECK(qembed_qembedding_load_ex(path, prefix, 0, NULL) == QEMBED_ERR_NULL_POINTER);
        back = (qembed_qembedding *)&r;
        qembed_clear_error();
        st = qembed_qembedding_load(path, "weight", &back);
        CHECKF(st == QEMBED_ERR_INVALID_ARGUMENT && back == NULL && qt_names(qembed_last_error(), "weight"),
               "load under \"weight\": status %d, %s", (int)st, qembed_last_error());
        back = (qembed_qembedding *)&r;
        st = qembed_qembedding_load(path, "model.embed_tokens", &back);
        CHECKF(st != QEMBED_OK && back == NULL, "load with a truncated prefix: status %d", (int)st);
        qembed_qembedding_free(q);
    }

    /* two layers (int8 "enc.weight", nested nf4 "dec.weight") merged into one file */
    {
        cfg ci8 = {QEMBED_QEMB_INT8, 0, false}, cnf = {QEMBED_QEMB_NF4, 32, true};
        qembed_qembedding *a = quantize(v, QEMBED_DTYPE_F32, rows, dim, &ci8);
        qembed_qembedding *b = quantize(v, QEMBED_DTYPE_F32, rows, dim, &cnf);
        qembed_tensor_file *fa = NULL, *fb = NULL;
        qembed_tensor_desc d[16];
        int64_t na = 0, nb = 0, k, m = 0;
        char pa[512], pb[512], pm[512];
        snprintf(pa, sizeof pa, "%s", qt_path("enc.safetensors"));
        snprintf(pb, sizeof pb, "%s", qt_path("dec.safetensors"));
        snprintf(pm, sizeof pm, "%s", qt_path("merged.safetensors"));
        if (a && b && qembed_qembedding_save(a, pa, "enc.weight") == QEMBED_OK &&
            qembed_qembedding_save(b, pb, "dec.weight") == QEMBED_OK && qembed_tensor_file_open(pa, &fa) == QEMBED_OK &&
            qembed_tensor_file_open(pb, &fb) == QEMBED_OK) {
            qembed_tensor_file_count(fa, &na);
            qembed_tensor_file_count(fb, &nb);
            for (k = 0; k < na + nb && m < 16; k++) {
                qembed_tensor_info ti;
                memset(&ti, 0, sizeof ti);
                ti.struct_size = sizeof ti;
                qembed_tensor_file_info(k < na ? fa : fb, k < na ? k : k - na, &ti);
                memset(&d[m], 0, sizeof d[m]);
                d[m].name = ti.name;
                d[m].dtype = ti.dtype;
                d[m].ndim = ti.ndim;
                memcpy(d[m].shape, ti.shape, sizeof ti.shape);
                d[m].data = ti.data;
                m++;
            }
            CHECKF(qembed_save_safetensors(pm, d, m, NULL, NULL, 0) == QEMBED_OK, "merge: %s", qembed_last_error());
            {
                qembed_qembedding *la = NULL, *lb = NULL;
                CHECKF(qembed_qembedding_load(pm, "enc.weight", &la) == QEMBED_OK, "%s", qembed_last_error());
                CHECKF(qembed_qembedding_load(pm, "dec.weight", &lb) == QEMBED_OK, "%s", qembed_last_error());
                if (la && lb) {
                    CHECK(info_of(la).kind == QEMBED_QEMB_INT8 && info_of(lb).kind == QEMBED_QEMB_NF4 && info_of(lb).nested);
                    CHECK(lookups_equal(a, la, rows, dim));
                    CHECK(lookups_equal(b, lb, rows, dim));
                }
                qembed_qembedding_free(la);
                qembed_qembedding_free(lb);
            }
        } else {
            CHECKF(0, "two-layer setup: %s", qembed_last_error());
        }
        qembed_tensor_file_close(fa);
        qembed_tensor_file_close(fb);
        qembed_qembedding_free(a);
        qembed_qembedding_free(b);
    }
}

static bool files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa != NULL && fb != NULL;
    while (same) {
        int x = fgetc(fa), y = fgetc(fb);
        if (x != y) same = false;
        if (x == EOF || y == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static void test_from_embedding(void) {
    int ci, dt, stable;
    for (stable = 0; stable <= 1; stable++) {
        for (dt = QEMBED_DTYPE_F32; dt <= QEMBED_DTYPE_BF16; dt++) {
            qembed_embedding_params p;
            qembed_embedding *e = NULL;
            qembed_param *w = NULL;
            qembed_param_info pi;
            qembed_embedding_params_init(&p);
            p.num_embeddings = 300;
            p.embedding_dim = 40;
            p.dtype = dt;
            p.seed = 9;
            p.padding_idx = 2;
            if (!CHECK((stable ? qembed_stable_embedding_create(&p, &e) : qembed_embedding_create(&p, &e)) == QEMBED_OK))
                continue;
            CHECK(qembed_embedding_param(e, 0, &w) == QEMBED_OK);
            memset(&pi, 0, sizeof pi);
            pi.struct_size = sizeof pi;
            CHECK(qembed_param_info_get(w, &pi) == QEMBED_OK);
            for (ci = 0; ci < NCFG; ci++) {
                const cfg *c = &CFGS[ci];
                qembed_qembedding *a = NULL, *b;
                qembed_status st = qembed_qembedding_from_embedding(e, c->kind, c->blocksize, c->nested, &a);
                char pa[512], pb[512];
                CHECKF(st == QEMBED_OK && a != NULL, "from_embedding %s: %s", cfg_name(c), qembed_last_error());
                b = quantize(pi.data, pi.dtype, 300, 40, c);
                if (a && b) {
                    qembed_qembedding_info ia = info_of(a), ib = info_of(b);
                    CHECKF(same_info(&ia, &ib) && ia.dtype == dt, "%s: info of from_embedding and quantize differ",
                           cfg_name(c));
                    CHECKF(lookups_equal(a, b, 300, 40), "%s %s: from_embedding and quantize look up differently", cfg_name(c),
                           qembed_dtype_name(dt));
                    snprintf(pa, sizeof pa, "%s", qt_path("from_emb.safetensors"));
                    snprintf(pb, sizeof pb, "%s", qt_path("from_table.safetensors"));
                    CHECK(qembed_qembedding_save(a, pa, NULL) == QEMBED_OK && qembed_qembedding_save(b, pb, NULL) == QEMBED_OK);
                    CHECKF(files_equal(pa, pb), "%s: the saved files differ", cfg_name(c));
                }
                qembed_qembedding_free(a);
                qembed_qembedding_free(b);
            }
            qembed_embedding_free(e);
        }
    }
}

/* ---- 4. out of range, JSON disagreement ---------------------------------- */

static void test_out_of_range(void) {
    const int64_t rows = 20, dim = 16;
    float v[20 * 16], out[4 * 16], keep[4 * 16];
    int ci;
    int64_t i;
    qt_rng r = qt_rng_make(3);
    for (i = 0; i < rows * dim; i++) v[i] = qt_normal(&r);
    for (ci = 0; ci < NCFG; ci++) {
        const cfg *c = &CFGS[ci];
        qembed_qembedding *q = quantize(v, QEMBED_DTYPE_F32, rows, dim, c);
        int64_t bad64[5][4] = {{0, 1, 20, 3}, {-1, 0, 0, 0}, {0, 0, 0, INT64_MAX}, {INT64_MIN, 0, 0, 0}, {19, 19, 19, 21}};
        int32_t bad32[2][4] = {{0, 1, 2, 20}, {-5, 0, 0, 0}};
        int k;
        if (q == NULL) continue;
        for (k = 0; k < 5 + 2; k++) {
            qembed_status st;
            for (i = 0; i < 4 * dim; i++) out[i] = keep[i] = 1234.5f + (float)i;
            qembed_clear_error();
            if (k < 5) st = qembed_qembedding_forward(q, bad64[k], QEMBED_DTYPE_I64, 4, out, QEMBED_DTYPE_F32, 4 * dim);
            else st = qembed_qembedding_forward(q, bad32[k - 5], QEMBED_DTYPE_I32, 4, out, QEMBED_DTYPE_F32, 4 * dim);
            CHECKF(st == QEMBED_ERR_OUT_OF_RANGE && qembed_last_error()[0] != '\0' && memcmp(out, keep, sizeof out) == 0,
                   "%s case %d: status %d, message \"%s\", output %s", cfg_name(c), k, (int)st, qembed_last_error(),
                   memcmp(out, keep, sizeof out) == 0 ? "unchanged" : "WRITTEN");
        }
        /* the last valid row works */
        {
            int64_t last = rows - 1;
            CHECK(qembed_qembedding_forward(q, &last, QEMBED_DTYPE_I64, 1, out, QEMBED_DTYPE_F32, dim) == QEMBED_OK);
        }
        qembed_qembedding_free(q);
    }
}

/* Rewrites `src` into `dst` with the quant_state JSON replaced by `json`
 * (NULL: unchanged), dropping the tensor named `drop` and, when `patch` is
 * given, replacing tensor `patch` by `patch_desc`. */
static bool rewrite(const char *src, const char *dst, const char *prefix, const char *json, const char *drop,
                    const char *patch, const qembed_tensor_desc *patch_desc) {
    qembed_tensor_file *f = NULL;
    qembed_tensor_desc d[16];
    int64_t n = 0, k, m = 0;
    char qs[128];
    bool ok;
    if (qembed_tensor_file_open(src, &f) != QEMBED_OK) return false;
    snprintf(qs, sizeof qs, "%s.quant_state.bitsandbytes__", prefix);
    qembed_tensor_file_count(f, &n);
    for (k = 0; k < n && m < 16; k++) {
        qembed_tensor_info ti;
        memset(&ti, 0, sizeof ti);
        ti.struct_size = sizeof ti;
        qembed_tensor_file_info(f, k, &ti);
        if (drop != NULL && strcmp(ti.name, drop) == 0) continue;
        memset(&d[m], 0, sizeof d[m]);
        d[m].name = ti.name;
        d[m].dtype = ti.dtype;
        d[m].ndim = ti.ndim;
        memcpy(d[m].shape, ti.shape, sizeof ti.shape);
        d[m].data = ti.data;
        if (json != NULL && strncmp(ti.name, qs, strlen(qs)) == 0) {
            d[m].ndim = 1;
            d[m].shape[0] = (int64_t)strlen(json);
            d[m].data = json;
        }
        if (patch != NULL && strcmp(ti.name, patch) == 0) {
            d[m] = *patch_desc;
            d[m].name = ti.name;
        }
        m++;
    }
    ok = qembed_save_safetensors(dst, d, m, NULL, NULL, 0) == QEMBED_OK;
    qembed_tensor_file_close(f);
    return ok;
}

static void expect_load_fails(const char *desc, const char *path, unsigned allowed) {
    qembed_qembedding *q = (qembed_qembedding *)path;
    qembed_status st;
    qembed_clear_error();
    st = qembed_qembedding_load(path, NULL, &q);
    CHECKF(st != QEMBED_OK && (allowed & (1u << st)) && q == NULL && qembed_last_error()[0] != '\0',
           "%s: status %d \"%s\", message \"%s\"", desc, (int)st, qembed_status_string(st), qembed_last_error());
    if (st == QEMBED_OK) qembed_qembedding_free(q);
}

#define FMT (1u << QEMBED_ERR_FORMAT)
#define MISSING (1u << QEMBED_ERR_INVALID_ARGUMENT)

static void test_disagreement(void) {
    const int64_t rows = 64, dim = 32;
    float v[64 * 32];
    int64_t i;
    int nested;
    qt_rng r = qt_rng_make(8);
    char src[512], dst[512], json[512];
    for (i = 0; i < rows * dim; i++) v[i] = qt_normal(&r);
    snprintf(src, sizeof src, "%s", qt_path("disagree_src.safetensors"));
    snprintf(dst, sizeof dst, "%s", qt_path("disagree.safetensors"));
    for (nested = 0; nested <= 1; nested++) {
        cfg c = {QEMBED_QEMB_NF4, 64, nested != 0};
        qembed_qembedding *q = quantize(v, QEMBED_DTYPE_F32, rows, dim, &c), *back = NULL;
        float offset = 0;
        char tail[200] = "";
        if (q == NULL || !CHECK(qembed_qembedding_save(q, src, NULL) == QEMBED_OK)) {
            qembed_qembedding_free(q);
            continue;
        }
        if (nested) {
            /* the offset as saved, so the control file below is equivalent */
            qembed_tensor_file *f = NULL;
            tensor js;
            char buf[512];
            double d = 0;
            CHECK(qembed_tensor_file_open(src, &f) == QEMBED_OK);
            js = get_tensor(f, "weight", ".quant_state.bitsandbytes__nf4");
            memcpy(buf, js.info.data, (size_t)js.info.nbytes);
            buf[js.info.nbytes] = '\0';
            CHECK(json_number(buf, "nested_offset", &d));
            offset = (float)d;
            qembed_tensor_file_close(f);
            snprintf(tail, sizeof tail, ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": %.9g",
                     (double)offset);
        }
#define QS(qt, bs, dt, r0, r1, extra) \
    snprintf(json, sizeof json, "{\"quant_type\": \"%s\", \"blocksize\": %s, \"dtype\": \"%s\", \"shape\": [%s, %s]%s}", qt, bs, dt, r0, r1, extra)
        /* control: the same JSON written by this test loads and looks up the same */
        QS("nf4", "64", "float32", "64", "32", tail);
        CHECK(rewrite(src, dst, "weight", json, NULL, NULL, NULL));
        CHECKF(qembed_qembedding_load(dst, NULL, &back) == QEMBED_OK, "control rewrite: %s", qembed_last_error());
        if (back) CHECK(lookups_equal(q, back, rows, dim));
        qembed_qembedding_free(back);

        /* one field of the QuantState JSON wrong at a time */
        static const struct { const char *quant_type, *blocksize, *dtype, *rows, *cols, *what; } bad_fields[] = {
            {"nf4", "64", "float32", "65", "32", "shape [65, 32] for a 64x32 table"},
            {"nf4", "64", "float32", "64", "64", "shape [64, 64] for a 64x32 table"},
            {"nf4", "128", "float32", "64", "32", "blocksize 128 for blocksize-64 tensors"},
            {"nf4", "100", "float32", "64", "32", "blocksize 100"},
            {"nf4", "\"64\"", "float32", "64", "32", "blocksize as a string"},
            {"fp4", "64", "float32", "64", "32", "quant_type fp4 under a bitsandbytes__nf4 key"},
            {"nf4", "64", "float64", "64", "32", "dtype float64"},
            {"nf4", "64", "float32", "-64", "32", "a negative shape"},
            {"nf4", "64", "float32", "64", "32.5", "a fractional shape"},
        };
        for (size_t k = 0; k < sizeof bad_fields / sizeof bad_fields[0]; k++) {
            QS(bad_fields[k].quant_type, bad_fields[k].blocksize, bad_fields[k].dtype, bad_fields[k].rows, bad_fields[k].cols, tail);
            rewrite(src, dst, "weight", json, NULL, NULL, NULL);
            expect_load_fails(bad_fields[k].what, dst, FMT);
        }
        snprintf(json, sizeof json, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\"%s}", tail);
        rewrite(src, dst, "weight", json, NULL, NULL, NULL);
        expect_load_fails("no shape", dst, FMT);
        rewrite(src, dst, "weight", "[\"nf4\", 64]", NULL, NULL, NULL);
        expect_load_fails("a JSON array", dst, FMT);
        rewrite(src, dst, "weight", "{\"quant_type\": \"nf4\", ", NULL, NULL, NULL);
        expect_load_fails("cut JSON", dst, FMT);
        if (nested) {
            QS("nf4", "64", "float32", "64", "32", "");
            rewrite(src, dst, "weight", json, NULL, NULL, NULL);
            expect_load_fails("nested tensors without nested keys", dst, FMT);
            QS("nf4", "64", "float32", "64", "32", ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\"");
            rewrite(src, dst, "weight", json, NULL, NULL, NULL);
            expect_load_fails("no nested_offset", dst, FMT);
            QS("nf4", "64", "float32", "64", "32", ", \"nested_blocksize\": 1, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5");
            rewrite(src, dst, "weight", json, NULL, NULL, NULL);
            expect_load_fails("nested_blocksize 1 (nested_absmax count disagrees)", dst, FMT);
            rewrite(src, dst, "weight", NULL, "weight.nested_absmax", NULL, NULL);
            expect_load_fails("nested keys without weight.nested_absmax", dst, FMT);
            rewrite(src, dst, "weight", NULL, "weight.nested_quant_map", NULL, NULL);
            expect_load_fails("no weight.nested_quant_map", dst, FMT | MISSING);
        } else {
            QS("nf4", "64", "float32", "64", "32", ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5");
            rewrite(src, dst, "weight", json, NULL, NULL, NULL);
            expect_load_fails("nested keys without nested tensors", dst, FMT);
        }
        /* tensors that disagree */
        /* a missing tensor: refused with a message naming it (the status is
         * QEMBED_ERR_INVALID_ARGUMENT, as qembed_tensor_file_find's, today) */
        rewrite(src, dst, "weight", NULL, "weight.absmax", NULL, NULL);
        expect_load_fails("no weight.absmax", dst, FMT | MISSING);
        CHECK(strstr(qembed_last_error(), "weight.absmax") != NULL);
        rewrite(src, dst, "weight", NULL, "weight.quant_map", NULL, NULL);
        expect_load_fails("no weight.quant_map", dst, FMT | MISSING);
        CHECK(strstr(qembed_last_error(), "weight.quant_map") != NULL);
        rewrite(src, dst, "weight", NULL, "weight", NULL, NULL);
        expect_load_fails("no packed weight", dst, FMT | MISSING);
        CHECK(strstr(qembed_last_error(), "\"weight\"") != NULL);
        {
            float fp4[16], nan_absmax[32];
            uint8_t packed[64 * 32 / 2 + 1];
            qembed_tensor_desc d;
            qembed_get_4bit_code(QEMBED_QUANT_FP4, fp4);
            memset(&d, 0, sizeof d);
            d.dtype = QEMBED_DTYPE_F32;
            d.ndim = 1;
            d.shape[0] = 16;
            d.data = fp4;
            rewrite(src, dst, "weight", NULL, NULL, "weight.quant_map", &d);
            expect_load_fails("an FP4 quant_map in an NF4 layer", dst, FMT | (1u << QEMBED_ERR_UNSUPPORTED));
            memset(packed, 0, sizeof packed);
            d.dtype = QEMBED_DTYPE_U8;
            d.ndim = 2;
            d.shape[0] = 64 * 32 / 2 + 1;
            d.shape[1] = 1;
            d.data = packed;
            rewrite(src, dst, "weight", NULL, NULL, "weight", &d);
            expect_load_fails("one packed byte too many", dst, FMT);
            d.dtype = QEMBED_DTYPE_I8;
            d.shape[0] = 64 * 32 / 2;
            rewrite(src, dst, "weight", NULL, NULL, "weight", &d);
            expect_load_fails("an I8 packed weight", dst, FMT);
            if (!nested) {
                for (i = 0; i < 32; i++) nan_absmax[i] = 1.0f;
                nan_absmax[7] = NAN;
                d.dtype = QEMBED_DTYPE_F32;
                d.ndim = 1;
                d.shape[0] = 32;
                d.data = nan_absmax;
                rewrite(src, dst, "weight", NULL, NULL, "weight.absmax", &d);
                expect_load_fails("a NaN absmax", dst, FMT | (1u << QEMBED_ERR_NON_FINITE));
                d.shape[0] = 31;
                rewrite(src, dst, "weight", NULL, NULL, "weight.absmax", &d);
                expect_load_fails("31 absmax values for 32 blocks", dst, FMT);
            }
        }
        qembed_qembedding_free(q);
    }
    /* int8 */
    {
        cfg c = {QEMBED_QEMB_INT8, 0, false};
        qembed_qembedding *q = quantize(v, QEMBED_DTYPE_F32, rows, dim, &c);
        float scb[65];
        qembed_tensor_desc d;
        for (i = 0; i < 65; i++) scb[i] = 1.0f;
        if (q != NULL && CHECK(qembed_qembedding_save(q, src, NULL) == QEMBED_OK)) {
            memset(&d, 0, sizeof d);
            d.dtype = QEMBED_DTYPE_F32;
            d.ndim = 1;
            d.shape[0] = 65;
            d.data = scb;
            rewrite(src, dst, "weight", NULL, NULL, "weight.SCB", &d);
            expect_load_fails("65 SCB values for 64 rows", dst, FMT);
            scb[3] = INFINITY;
            d.shape[0] = 64;
            rewrite(src, dst, "weight", NULL, NULL, "weight.SCB", &d);
            expect_load_fails("an infinite SCB", dst, FMT | (1u << QEMBED_ERR_NON_FINITE));
            rewrite(src, dst, "weight", NULL, "weight", NULL, NULL);
            expect_load_fails("SCB without its weight", dst, FMT | MISSING);
        }
        qembed_qembedding_free(q);
    }
    /* a float file (no quantized layer) and malformed files */
    {
        qembed_tensor_desc d;
        memset(&d, 0, sizeof d);
        d.name = "weight";
        d.dtype = QEMBED_DTYPE_F32;
        d.ndim = 2;
        d.shape[0] = rows;
        d.shape[1] = dim;
        d.data = v;
        CHECK(qembed_save_safetensors(dst, &d, 1, NULL, NULL, 0) == QEMBED_OK);
        expect_load_fails("a float table", dst, MISSING);
        {
            FILE *f = fopen(dst, "wb");
            fputs("\x10\0\0\0\0\0\0\0{\"weight\": 1}  ", f);
            fclose(f);
        }
        expect_load_fails("a malformed file", dst, FMT);
        expect_load_fails("a missing file", qt_path("missing.safetensors"), 1u << QEMBED_ERR_IO);
    }
}

/* ---- 5. bad arguments ------------------------------------------------------ */

static void expect_status(const char *desc, qembed_status got, unsigned allowed) {
    const char *msg = qembed_last_error();
    CHECKF(got != QEMBED_OK && (allowed & (1u << got)) && msg[0] != '\0', "%s: status %d \"%s\", message \"%s\"", desc,
           (int)got, qembed_status_string(got), msg);
}

#define EXPECT(allowed, call) (qembed_clear_error(), expect_status(#call, (call), (allowed)))
#define S(x) (1u << (x))

static void test_bad_args(void) {
    float w[8 * 16];
    int64_t i, ids[2] = {0, 1};
    qembed_qembedding *q = NULL, *out = (qembed_qembedding *)w;
    qembed_qembedding_info info;
    float o[2 * 16], keep[2 * 16];
    qembed_embedding *e = NULL;
    qembed_embedding_params p;
    qt_rng r = qt_rng_make(4);
    for (i = 0; i < 8 * 16; i++) w[i] = qt_normal(&r);

#define QUANT(allowed, weight, dtype, rows, dim, kind, bs, nest)                                                   \
    do {                                                                                                          \
        out = (qembed_qembedding *)w;                                                                             \
        EXPECT(allowed, qembed_qembedding_quantize(weight, dtype, rows, dim, kind, bs, nest, &out));              \
        CHECKF(out == NULL, "*out is NULL after a failed quantize (line %d)", __LINE__);                          \
        if (out != NULL && out != (qembed_qembedding *)w) qembed_qembedding_free(out);                           \
    } while (0)
    QUANT(S(QEMBED_ERR_NULL_POINTER), NULL, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, 64, false);
    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_quantize(w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, 64, false, NULL));
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, 7, 64, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, -1, 64, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_COUNT, 64, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, 100, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_FP4, 100, true);
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_FP4, 16, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, 8192, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, 0, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, -64, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED), w, QEMBED_DTYPE_I32, 8, 16, QEMBED_QEMB_NF4, 64, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED), w, QEMBED_DTYPE_U8, 8, 16, QEMBED_QEMB_INT8, 64, false);
    QUANT(S(QEMBED_ERR_UNSUPPORTED), w, 99, 8, 16, QEMBED_QEMB_INT8, 64, false);
    QUANT(S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 0, 16, QEMBED_QEMB_NF4, 64, false);
    QUANT(S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, 8, 0, QEMBED_QEMB_INT8, 64, false);
    QUANT(S(QEMBED_ERR_INVALID_ARGUMENT), w, QEMBED_DTYPE_F32, -8, 16, QEMBED_QEMB_NF4, 64, false);
    QUANT(S(QEMBED_ERR_SHAPE), w, QEMBED_DTYPE_F32, INT64_MAX / 32, 64, QEMBED_QEMB_NF4, 64, false);
    QUANT(S(QEMBED_ERR_SHAPE), w, QEMBED_DTYPE_F32, (int64_t)1 << 40, (int64_t)1 << 40, QEMBED_QEMB_INT8, 64, false);
    QUANT(S(QEMBED_ERR_SHAPE), w, QEMBED_DTYPE_F32, INT64_MAX, INT64_MAX, QEMBED_QEMB_FP4, 64, true);
    w[37] = NAN;
    QUANT(S(QEMBED_ERR_NON_FINITE), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, 64, false);
    QUANT(S(QEMBED_ERR_NON_FINITE), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_FP4, 32, true);
    QUANT(S(QEMBED_ERR_NON_FINITE), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_INT8, 0, false);
    w[37] = -INFINITY;
    QUANT(S(QEMBED_ERR_NON_FINITE), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_INT8, 0, false);
    QUANT(S(QEMBED_ERR_NON_FINITE), w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, 128, false);
    {
        uint16_t h[8 * 16];
        for (i = 0; i < 8 * 16; i++) h[i] = qt_f32_to_bf16(0.5f);
        h[100] = 0x7FC0; /* bf16 NaN */
        QUANT(S(QEMBED_ERR_NON_FINITE), h, QEMBED_DTYPE_BF16, 8, 16, QEMBED_QEMB_NF4, 64, false);
        h[100] = 0x7C00; /* f16 inf */
        QUANT(S(QEMBED_ERR_NON_FINITE), h, QEMBED_DTYPE_F16, 8, 16, QEMBED_QEMB_INT8, 0, false);
    }
    w[37] = 0.25f;

    /* from_embedding */
    qembed_embedding_params_init(&p);
    p.num_embeddings = 8;
    p.embedding_dim = 16;
    CHECK(qembed_embedding_create(&p, &e) == QEMBED_OK);
    out = (qembed_qembedding *)w;
    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_from_embedding(NULL, QEMBED_QEMB_NF4, 64, false, &out));
    CHECK(out == NULL);
    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_from_embedding(e, QEMBED_QEMB_NF4, 64, false, NULL));
    out = (qembed_qembedding *)w;
    EXPECT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), qembed_qembedding_from_embedding(e, 7, 64, false, &out));
    CHECK(out == NULL);
    EXPECT(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT),
           qembed_qembedding_from_embedding(e, QEMBED_QEMB_FP4, 100, false, &out));
    qembed_embedding_free(e);

    /* info, forward, save, load */
    CHECK(qembed_qembedding_quantize(w, QEMBED_DTYPE_F32, 8, 16, QEMBED_QEMB_NF4, 32, true, &q) == QEMBED_OK);
    if (q == NULL) return;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_info_get(NULL, &info));
    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_info_get(q, NULL));
    info.struct_size = 0;
    EXPECT(S(QEMBED_ERR_INVALID_ARGUMENT), qembed_qembedding_info_get(q, &info));
    info.struct_size = sizeof info + 4;
    EXPECT(S(QEMBED_ERR_INVALID_ARGUMENT), qembed_qembedding_info_get(q, &info));

#define FWD(allowed, qq, idx, idt, cnt, dst, odt, len)                                                \
    do {                                                                                              \
        for (i = 0; i < 2 * 16; i++) o[i] = keep[i] = -77.0f;                                         \
        EXPECT(allowed, qembed_qembedding_forward(qq, idx, idt, cnt, dst, odt, len));                 \
        CHECKF(memcmp(o, keep, sizeof o) == 0, "a failed forward wrote its output (line %d)", __LINE__); \
    } while (0)
    FWD(S(QEMBED_ERR_NULL_POINTER), NULL, ids, QEMBED_DTYPE_I64, 2, o, QEMBED_DTYPE_F32, 32);
    FWD(S(QEMBED_ERR_NULL_POINTER), q, NULL, QEMBED_DTYPE_I64, 2, o, QEMBED_DTYPE_F32, 32);
    FWD(S(QEMBED_ERR_NULL_POINTER), q, ids, QEMBED_DTYPE_I64, 2, NULL, QEMBED_DTYPE_F32, 32);
    FWD(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), q, ids, QEMBED_DTYPE_F32, 2, o, QEMBED_DTYPE_F32, 32);
    FWD(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), q, ids, QEMBED_DTYPE_U8, 2, o, QEMBED_DTYPE_F32, 32);
    FWD(S(QEMBED_ERR_UNSUPPORTED) | S(QEMBED_ERR_INVALID_ARGUMENT), q, ids, 42, 2, o, QEMBED_DTYPE_F32, 32);
    FWD(S(QEMBED_ERR_UNSUPPORTED), q, ids, QEMBED_DTYPE_I64, 2, o, QEMBED_DTYPE_I32, 32);
    FWD(S(QEMBED_ERR_UNSUPPORTED), q, ids, QEMBED_DTYPE_I64, 2, o, 42, 32);
    FWD(S(QEMBED_ERR_BUFFER_TOO_SMALL), q, ids, QEMBED_DTYPE_I64, 2, o, QEMBED_DTYPE_F32, 31);
    FWD(S(QEMBED_ERR_BUFFER_TOO_SMALL), q, ids, QEMBED_DTYPE_I64, 2, o, QEMBED_DTYPE_F32, -1);
    FWD(S(QEMBED_ERR_INVALID_ARGUMENT), q, ids, QEMBED_DTYPE_I64, -1, o, QEMBED_DTYPE_F32, 32);
    FWD(S(QEMBED_ERR_SHAPE) | S(QEMBED_ERR_BUFFER_TOO_SMALL), q, ids, QEMBED_DTYPE_I64, INT64_MAX / 4, o, QEMBED_DTYPE_F32, 32);
    /* count 0 writes nothing and succeeds, even with NULL buffers */
    qembed_clear_error();
    CHECK(qembed_qembedding_forward(q, NULL, QEMBED_DTYPE_I64, 0, NULL, QEMBED_DTYPE_F32, 0) == QEMBED_OK);
    CHECK(qembed_qembedding_forward(q, ids, QEMBED_DTYPE_I64, 2, o, QEMBED_DTYPE_BF16, 32) == QEMBED_OK); /* 2x16 bf16 */

    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_save(NULL, qt_path("x.safetensors"), NULL));
    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_save(q, NULL, NULL));
    EXPECT(S(QEMBED_ERR_IO), qembed_qembedding_save(q, qt_path("no/such/dir/x.safetensors"), NULL));
    EXPECT(S(QEMBED_ERR_INVALID_ARGUMENT), qembed_qembedding_save(q, qt_path("x.safetensors"), ""));
    out = (qembed_qembedding *)w;
    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_load(NULL, NULL, &out));
    CHECK(out == NULL);
    EXPECT(S(QEMBED_ERR_NULL_POINTER), qembed_qembedding_load(qt_path("x.safetensors"), NULL, NULL));
    qembed_qembedding_free(NULL);
    qembed_qembedding_free(q);
}

/* ---- 6. fixtures written by bitsandbytes 0.50.2 ----------------------------- */

static char data_dir[512];

static bool find_data_dir(void) {
    const char *env = getenv("QEMBED_TEST_DATA");
    char exe[512], probe[600];
    ssize_t n;
    struct stat st;
    if (env != NULL && env[0]) {
        snprintf(data_dir, sizeof data_dir, "%s", env);
        return true;
    }
    /* next to the test binary: bindings/c/build/<test> -> bindings/c/tests/data */
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        char *slash;
        exe[n] = '\0';
        slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        snprintf(probe, sizeof probe, "%s/../tests/data/table_64x32.npy", exe);
        if (stat(probe, &st) == 0) {
            snprintf(data_dir, sizeof data_dir, "%.490s/../tests/data", exe);
            return true;
        }
    }
    if (stat("tests/data/table_64x32.npy", &st) == 0) {
        snprintf(data_dir, sizeof data_dir, "tests/data");
        return true;
    }
    return false;
}

/* the float32 contents of a .npy (rows x cols), via qembed itself */
static float *read_npy(const char *name, int64_t rows, int64_t cols) {
    char path[700];
    qembed_tensor_file *f = NULL;
    qembed_tensor_info ti;
    float *out = NULL;
    snprintf(path, sizeof path, "%s/%s", data_dir, name);
    if (!CHECKF(qembed_tensor_file_open(path, &f) == QEMBED_OK, "%s: %s", path, qembed_last_error())) return NULL;
    memset(&ti, 0, sizeof ti);
    ti.struct_size = sizeof ti;
    if (CHECK(qembed_tensor_file_info(f, 0, &ti) == QEMBED_OK) &&
        CHECKF(ti.dtype == QEMBED_DTYPE_F32 && ti.ndim == 2 && ti.shape[0] == rows && ti.shape[1] == cols, "%s shape", name)) {
        out = xmalloc((size_t)(rows * cols) * 4);
        memcpy(out, ti.data, (size_t)(rows * cols) * 4);
    }
    qembed_tensor_file_close(f);
    return out;
}

static void test_fixtures(void) {
    static const struct {
        const char *file, *deq;
        int kind;
        int64_t bs;
        bool nested;
    } fx[2] = {{"nf4_nested_bs64.safetensors", "nf4_nested_bs64_dequant.npy", QEMBED_QEMB_NF4, 64, true},
               {"fp4_bs128.safetensors", "fp4_bs128_dequant.npy", QEMBED_QEMB_FP4, 128, false}};
    float *table;
    int k;
    if (!CHECKF(find_data_dir(), "tests/data not found (set QEMBED_TEST_DATA)")) return;
    table = read_npy("table_64x32.npy", 64, 32);
    for (k = 0; k < 2; k++) {
        char path[700];
        qembed_qembedding *q = NULL;
        float *want = read_npy(fx[k].deq, 64, 32), out[64 * 32], ref[64 * 32];
        qembed_status st;
        snprintf(path, sizeof path, "%s/%s", data_dir, fx[k].file);
        st = qembed_qembedding_load(path, NULL, &q);
        CHECKF(st == QEMBED_OK && q != NULL, "load the bitsandbytes file %s: %s", fx[k].file, qembed_last_error());
        if (q != NULL && want != NULL) {
            qembed_qembedding_info info = info_of(q);
            int64_t i, bad = 0;
            float maxd = 0;
            CHECKF(info.kind == fx[k].kind && info.num_embeddings == 64 && info.embedding_dim == 32 &&
                       info.dtype == QEMBED_DTYPE_F32 && info.blocksize == fx[k].bs && info.nested == fx[k].nested,
                   "%s: info", fx[k].file);
            if (forward_all(q, 64, 32, QEMBED_DTYPE_F32, out)) {
                int64_t signed_zeros = 0;
                for (i = 0; i < 64 * 32; i++) {
                    if (out[i] != want[i]) bad++;
                    else if (qt_f32_bits(out[i]) != qt_f32_bits(want[i])) signed_zeros++;
                    maxd = fmaxf(maxd, fabsf(out[i] - want[i]));
                }
                /* equal as numbers; bitsandbytes' CPU dequantize gives -0.0 for FP4's nibble 8
                 * where qembed documents +0 (include/qembed.h, 4-bit quantization) */
                CHECKF(bad == 0, "%s: %lld of 2048 lookups differ from F.dequantize_4bit (max diff %g)", fx[k].file,
                       (long long)bad, (double)maxd);
                if (signed_zeros > 0)
                    printf("test_qembedding: %s: %lld lookups are +0 where bitsandbytes gives -0 (FP4 nibble 8)\n",
                           fx[k].file, (long long)signed_zeros);
                CHECK(fx[k].kind == QEMBED_QEMB_FP4 || signed_zeros == 0);
            }
            /* the same rule as for qembed's own files */
            if (dequant_from_file(path, "weight", fx[k].kind, 64, 32, QEMBED_DTYPE_F32, fx[k].bs, fx[k].nested, ref)) {
                for (bad = 0, i = 0; i < 64 * 32; i++) bad += ref[i] != want[i];
                CHECKF(bad == 0, "%s: the documented dequantization rule differs from bitsandbytes' in %lld values",
                       fx[k].file, (long long)bad);
                for (bad = 0, i = 0; i < 64 * 32; i++) bad += qt_f32_bits(ref[i]) != qt_f32_bits(out[i]);
                CHECKF(bad == 0, "%s: %lld lookups differ from the file's dequantization", fx[k].file, (long long)bad);
            }
            /* a random batch */
            {
                int32_t ids[300];
                float *o = xmalloc(300 * 32 * 4);
                qt_rng r = qt_rng_make(66);
                for (i = 0; i < 300; i++) ids[i] = (int32_t)(qt_next(&r) % 64);
                CHECK(qembed_qembedding_forward(q, ids, QEMBED_DTYPE_I32, 300, o, QEMBED_DTYPE_F32, 300 * 32) == QEMBED_OK);
                for (bad = 0, i = 0; i < 300; i++) bad += memcmp(o + i * 32, out + ids[i] * 32, 32 * 4) != 0;
                CHECKF(bad == 0, "%s: %lld batch rows differ", fx[k].file, (long long)bad);
                free(o);
            }
            /* re-saved by qembed, it loads to the same lookups */
            {
                char resaved[512];
                qembed_qembedding *back = NULL;
                snprintf(resaved, sizeof resaved, "%s", qt_path("resaved.safetensors"));
                CHECK(qembed_qembedding_save(q, resaved, NULL) == QEMBED_OK);
                CHECK(qembed_qembedding_load(resaved, NULL, &back) == QEMBED_OK);
                if (back) CHECK(lookups_equal(q, back, 64, 32));
                qembed_qembedding_free(back);
            }
            /* qembed quantizing the same table (plain statistics) gives bitsandbytes' bytes */
            if (table != NULL && !fx[k].nested) {
                cfg c = {fx[k].kind, fx[k].bs, false};
                qembed_qembedding *mine = quantize(table, QEMBED_DTYPE_F32, 64, 32, &c);
                if (mine) {
                    CHECKF(lookups_equal(mine, q, 64, 32), "%s: quantizing table_64x32.npy with qembed differs from bitsandbytes",
                           fx[k].file);
                    qembed_qembedding_free(mine);
                }
            }
            if (table != NULL) {
                float maxe = 0;
                for (i = 0; i < 64 * 32; i++) maxe = fmaxf(maxe, fabsf(out[i] - table[i]));
                CHECKF(maxe < 0.1f, "%s: max error %g against the float table", fx[k].file, (double)maxe);
            }
        }
        qembed_qembedding_free(q);
        free(want);
    }
    free(table);
}

/* ---- cleanup ---------------------------------------------------------------- */

int main(void) {
    qt_dir_make("test-qembedding");
    test_lossless_and_error();
    test_against_file();
    test_prefix();
    test_from_embedding();
    test_out_of_range();
    test_disagreement();
    test_bad_args();
    test_fixtures();
    qt_dir_remove();
    return qt_summary("test_qembedding");
}
