/*
 * fuzz_quant_state - the input is spliced into an otherwise valid 4-bit
 * quantized-embedding file as its quant_state JSON bytes, then the file is
 * loaded and looked up.
 *
 * Input layout: byte 0 selects the base table, the rest is the JSON.
 *   bits 0-1: 0 NF4 blocksize 64, 6 x 40 f32 weight
 *             1 FP4 blocksize 32, 6 x 40 f32 weight
 *             2 NF4 blocksize 64, 16 x 40 f32 weight, nested statistics
 *             3 FP4 blocksize 128, 16 x 40 bf16 weight, nested statistics
 *   bit 2:    tensors under the prefix "emb.weight" instead of "weight"
 *   bit 3:    the quant_state key names the other 4-bit type (nf4 <-> fp4)
 * The base tables are made once with qembed_qembedding_quantize +
 * qembed_qembedding_save; their tensors are re-laid out around the new JSON
 * by a tiny safetensors writer here (no fsync per input).
 */
#include "fuzz_tensorfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TENSORS 8

typedef struct base_tensor {
    char name[128];
    char dtype[16];
    int ndim;
    int64_t shape[QEMBED_MAX_DIMS];
    uint8_t *data;
    int64_t nbytes;
    int is_state; /* the quant_state JSON tensor (replaced by the input) */
} base_tensor;

typedef struct base_file {
    base_tensor t[MAX_TENSORS];
    int n;
    const char *suffix; /* "nf4" or "fp4" */
} base_file;

static base_file bases[8];
static int initialized = 0;

static void make_base(int v) {
    static float wf[16 * 40];
    static uint16_t wb[16 * 40];
    const int kind = (v & 1) ? QEMBED_QEMB_FP4 : QEMBED_QEMB_NF4;
    const int64_t bs = (v & 3) == 0 ? 64 : (v & 3) == 1 ? 32 : (v & 3) == 2 ? 64 : 128;
    const int nested = (v & 2) != 0;
    const int64_t rows = nested ? 16 : 6;
    const char *prefix = (v & 4) ? "emb.weight" : NULL;
    const char *path = fuzz_path(1, "base.safetensors");
    qembed_qembedding *q = NULL;
    qembed_tensor_file *f = NULL;
    int64_t n = 0, i;
    int k;
    for (k = 0; k < 16 * 40; k++) {
        uint32_t bits;
        wf[k] = (float)((k * 7919) % 201 - 100) / 37.0f;
        memcpy(&bits, &wf[k], 4);
        wb[k] = (uint16_t)(bits >> 16);
    }
    FUZZ_ASSERT(qembed_qembedding_quantize((v & 3) == 3 ? (const void *)wb : (const void *)wf,
                                           (v & 3) == 3 ? QEMBED_DTYPE_BF16 : QEMBED_DTYPE_F32, rows, 40, kind, bs,
                                           nested, &q) == QEMBED_OK);
    FUZZ_ASSERT(qembed_qembedding_save(q, path, prefix) == QEMBED_OK);
    qembed_qembedding_free(q);
    FUZZ_ASSERT(qembed_tensor_file_open(path, &f) == QEMBED_OK);
    FUZZ_ASSERT(qembed_tensor_file_count(f, &n) == QEMBED_OK && n <= MAX_TENSORS);
    bases[v].n = (int)n;
    bases[v].suffix = kind == QEMBED_QEMB_FP4 ? "fp4" : "nf4";
    for (i = 0; i < n; i++) {
        qembed_tensor_info info;
        base_tensor *t = &bases[v].t[i];
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        FUZZ_ASSERT(qembed_tensor_file_info(f, i, &info) == QEMBED_OK);
        FUZZ_ASSERT(strlen(info.name) < sizeof t->name && strlen(info.dtype_name) < sizeof t->dtype);
        strcpy(t->name, info.name);
        strcpy(t->dtype, info.dtype_name);
        t->ndim = info.ndim;
        memcpy(t->shape, info.shape, sizeof t->shape);
        t->nbytes = info.nbytes;
        t->data = (uint8_t *)malloc((size_t)info.nbytes + 1);
        FUZZ_ASSERT(t->data != NULL);
        memcpy(t->data, info.data, (size_t)info.nbytes);
        t->is_state = strstr(info.name, ".quant_state.bitsandbytes__") != NULL;
    }
    qembed_tensor_file_close(f);
    unlink(path);
}

/* Appends to a growing buffer. */
typedef struct sbuf {
    uint8_t *p;
    size_t len, cap;
} sbuf;

static void sb_put(sbuf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        b->p = (uint8_t *)realloc(b->p, cap);
        FUZZ_ASSERT(b->p != NULL);
        b->cap = cap;
    }
    if (n > 0) memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static sbuf header, file;
    const char *path = fuzz_path(0, "in.safetensors");
    const base_file *base;
    const uint8_t *json = size > 0 ? data + 1 : data;
    const size_t json_len = size > 0 ? size - 1 : 0;
    uint8_t sel = size > 0 ? data[0] : 0;
    int64_t offset = 0;
    uint64_t hlen;
    char tmp[256];
    int i, k;
    if (!initialized) {
        for (i = 0; i < 8; i++) make_base(i);
        initialized = 1;
    }
    base = &bases[sel & 7];
    header.len = 0;
    file.len = 0;
    sb_str(&header, "{\"__metadata__\": {\"format\": \"pt\"}");
    for (i = 0; i < base->n; i++) {
        const base_tensor *t = &base->t[i];
        const int64_t nbytes = t->is_state ? (int64_t)json_len : t->nbytes;
        if (t->is_state && (sel & 8)) {
            /* the key names the other 4-bit type */
            char name[160];
            size_t stem = strlen(t->name) - 3;
            memcpy(name, t->name, stem);
            strcpy(name + stem, strcmp(base->suffix, "nf4") == 0 ? "fp4" : "nf4");
            snprintf(tmp, sizeof tmp, ", \"%s\": {\"dtype\": \"U8\", \"shape\": [", name);
        } else {
            snprintf(tmp, sizeof tmp, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [", t->name, t->dtype);
        }
        sb_str(&header, tmp);
        if (t->is_state) {
            snprintf(tmp, sizeof tmp, "%lld", (long long)json_len);
            sb_str(&header, tmp);
        } else {
            for (k = 0; k < t->ndim; k++) {
                snprintf(tmp, sizeof tmp, "%s%lld", k ? ", " : "", (long long)t->shape[k]);
                sb_str(&header, tmp);
            }
        }
        snprintf(tmp, sizeof tmp, "], \"data_offsets\": [%lld, %lld]}", (long long)offset, (long long)(offset + nbytes));
        sb_str(&header, tmp);
        offset += nbytes;
    }
    sb_str(&header, "}");
    while (header.len % 8 != 0) sb_str(&header, " ");
    hlen = header.len;
    sb_put(&file, &hlen, 8); /* little-endian host */
    sb_put(&file, header.p, header.len);
    for (i = 0; i < base->n; i++) {
        const base_tensor *t = &base->t[i];
        if (t->is_state)
            sb_put(&file, json, json_len);
        else
            sb_put(&file, t->data, (size_t)t->nbytes);
    }
    fuzz_write_file(path, file.p, file.len);
    exercise_qembedding_load(path, (sel & 4) ? "emb.weight" : NULL);
    return 0;
}
