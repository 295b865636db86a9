/*
 * gen_seeds.c - writes the seed corpora of the fuzz targets (committed under
 * fuzz/corpus/<target>/; rerun only to regenerate them):
 *
 *   cc -std=c11 -Iinclude -o /tmp/gen_seeds fuzz/gen_seeds.c \
 *      -L.build/release -lqembed -Wl,-rpath,$PWD/.build/release && /tmp/gen_seeds fuzz/corpus
 *
 * Every seed is a small valid (or nearly valid) input written by qembed's own
 * writers, so the fuzzer starts from the accepted format and mutates it.
 */
#define _GNU_SOURCE 1
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qembed.h"

static const char *root;

static void die(const char *what) {
    fprintf(stderr, "gen_seeds: %s: %s\n", what, qembed_last_error());
    exit(1);
}

static const char *path_of(const char *target, const char *name) {
    static char p[2048];
    char d[1024];
    snprintf(d, sizeof d, "%s/%s", root, target);
    mkdir(root, 0755);
    mkdir(d, 0755);
    snprintf(p, sizeof p, "%s/%s", d, name);
    return p;
}

static void write_raw(const char *target, const char *name, const void *data, size_t n) {
    FILE *f = fopen(path_of(target, name), "wb");
    if (f == NULL || fwrite(data, 1, n, f) != n) die(name);
    fclose(f);
}

static float table[16 * 40];

static void quantized_seeds(void) {
    static const struct {
        int kind;
        int64_t bs;
        int nested;
        const char *prefix;
        const char *name;
    } v[] = {
        {QEMBED_QEMB_NF4, 64, 0, NULL, "nf4_bs64.safetensors"},
        {QEMBED_QEMB_FP4, 32, 0, NULL, "fp4_bs32.safetensors"},
        {QEMBED_QEMB_NF4, 64, 1, NULL, "nf4_bs64_nested.safetensors"},
        {QEMBED_QEMB_FP4, 128, 1, "emb.weight", "fp4_bs128_nested_prefix.safetensors"},
        {QEMBED_QEMB_INT8, 0, 0, NULL, "int8.safetensors"},
        {QEMBED_QEMB_INT8, 0, 0, "model.embed", "int8_prefix.safetensors"},
    };
    size_t i;
    for (i = 0; i < sizeof v / sizeof v[0]; i++) {
        qembed_qembedding *q = NULL;
        int64_t rows = v[i].nested ? 16 : 6;
        if (qembed_qembedding_quantize(table, QEMBED_DTYPE_F32, rows, 40, v[i].kind, v[i].bs, v[i].nested != 0, &q) !=
            QEMBED_OK)
            die("quantize");
        if (qembed_qembedding_save(q, path_of("fuzz_safetensors", v[i].name), v[i].prefix) != QEMBED_OK) die("save");
        qembed_qembedding_free(q);
    }
}

static void float_seeds(void) {
    qembed_embedding_params p;
    qembed_embedding *e = NULL;
    qembed_embedding_params_init(&p);
    p.num_embeddings = 5;
    p.embedding_dim = 3;
    if (qembed_embedding_create(&p, &e) != QEMBED_OK) die("create");
    if (qembed_embedding_save(e, path_of("fuzz_safetensors", "embedding.safetensors")) != QEMBED_OK) die("save");
    qembed_embedding_free(e);
    p.dtype = QEMBED_DTYPE_BF16;
    if (qembed_stable_embedding_create(&p, &e) != QEMBED_OK) die("create");
    if (qembed_embedding_save(e, path_of("fuzz_safetensors", "stable_bf16.safetensors")) != QEMBED_OK) die("save");
    qembed_embedding_free(e);
}

static void mixed_seeds(void) {
    static int64_t i64[3] = {1, -2, 3};
    static int32_t i32[4] = {7, 8, 9, 10};
    static uint16_t f16[2] = {0x3C00, 0xC000};
    static uint8_t u8[5] = {1, 2, 3, 4, 5};
    static const char *keys[2] = {"format", "note"};
    static const char *vals[2] = {"pt", "caf\xc3\xa9 \"quoted\""};
    qembed_tensor_desc t[5];
    memset(t, 0, sizeof t);
    t[0].name = "ids";
    t[0].dtype = QEMBED_DTYPE_I64;
    t[0].ndim = 1;
    t[0].shape[0] = 3;
    t[0].data = i64;
    t[1].name = "matrix";
    t[1].dtype = QEMBED_DTYPE_I32;
    t[1].ndim = 2;
    t[1].shape[0] = 2;
    t[1].shape[1] = 2;
    t[1].data = i32;
    t[2].name = "half";
    t[2].dtype = QEMBED_DTYPE_F16;
    t[2].ndim = 1;
    t[2].shape[0] = 2;
    t[2].data = f16;
    t[3].name = "scalar_u8";
    t[3].dtype = QEMBED_DTYPE_U8;
    t[3].ndim = 0;
    t[3].data = u8;
    t[4].name = "empty";
    t[4].dtype = QEMBED_DTYPE_F32;
    t[4].ndim = 2;
    t[4].shape[0] = 0;
    t[4].shape[1] = 4;
    t[4].data = NULL;
    if (qembed_save_safetensors(path_of("fuzz_safetensors", "mixed.safetensors"), t, 5, keys, vals, 2) != QEMBED_OK)
        die("save mixed");
    if (qembed_save_safetensors(path_of("fuzz_safetensors", "no_tensors.safetensors"), t, 0, NULL, NULL, 0) !=
        QEMBED_OK)
        die("save empty");
    /* dtypes qembed does not compute with, and overlapping/unsorted offsets (rejected) */
    {
        static const char hdr[] =
            "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[8,10]},"
            "\"c\":{\"dtype\":\"U16\",\"shape\":[1,1],\"data_offsets\":[10,12]}}";
        uint8_t buf[8 + sizeof hdr + 12];
        uint64_t len = sizeof hdr - 1;
        memcpy(buf, &len, 8);
        memcpy(buf + 8, hdr, sizeof hdr - 1);
        memset(buf + 8 + len, 0x11, 12);
        write_raw("fuzz_safetensors", "other_dtypes.safetensors", buf, 8 + (size_t)len + 12);
    }
}

static void npy_seeds(void) {
    static float f[6] = {0.5f, -1.0f, 2.0f, 3.5f, -0.25f, 8.0f};
    static int64_t i64[3] = {4, 5, 6};
    static uint8_t u8[4] = {9, 8, 7, 6};
    static uint16_t f16[1] = {0x3C00};
    qembed_tensor_desc t;
    memset(&t, 0, sizeof t);
    t.name = "array";
    t.dtype = QEMBED_DTYPE_F32;
    t.ndim = 2;
    t.shape[0] = 2;
    t.shape[1] = 3;
    t.data = f;
    if (qembed_save_npy(path_of("fuzz_npy", "f32_2x3.npy"), &t) != QEMBED_OK) die("npy");
    t.dtype = QEMBED_DTYPE_I64;
    t.ndim = 1;
    t.shape[0] = 3;
    t.data = i64;
    if (qembed_save_npy(path_of("fuzz_npy", "i64_3.npy"), &t) != QEMBED_OK) die("npy");
    t.dtype = QEMBED_DTYPE_U8;
    t.ndim = 3;
    t.shape[0] = 1;
    t.shape[1] = 2;
    t.shape[2] = 2;
    t.data = u8;
    if (qembed_save_npy(path_of("fuzz_npy", "u8_1x2x2.npy"), &t) != QEMBED_OK) die("npy");
    t.dtype = QEMBED_DTYPE_F16;
    t.ndim = 0;
    t.data = f16;
    if (qembed_save_npy(path_of("fuzz_npy", "f16_scalar.npy"), &t) != QEMBED_OK) die("npy");
    /* version 2.0 header (4-byte length), as numpy writes for long headers */
    {
        static const char h[] = "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }";
        uint8_t buf[12 + 64 + 8];
        size_t hl = 64 - 12;
        memset(buf, ' ', sizeof buf);
        memcpy(buf, "\x93NUMPY\x02\x00", 8);
        buf[8] = (uint8_t)hl;
        buf[9] = buf[10] = buf[11] = 0;
        memcpy(buf + 12, h, sizeof h - 1);
        buf[12 + hl - 1] = '\n';
        memset(buf + 12 + hl, 0x01, 8);
        write_raw("fuzz_npy", "i4_v2.npy", buf, 12 + hl + 8);
    }
}

/* fuzz_quant_state: byte 0 picks the base table (see fuzz_quant_state.c), the
 * rest is the quant_state JSON. */
static void quant_state_seeds(void) {
    static const char *const seeds[][2] = {
        {"\x00", "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [6, 40]}"},
        {"\x01", "{\"quant_type\": \"fp4\", \"blocksize\": 32, \"dtype\": \"float32\", \"shape\": [6, 40]}"},
        {"\x02", "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [16, 40], "
                 "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.0123}"},
        {"\x03", "{\"quant_type\": \"fp4\", \"blocksize\": 128, \"dtype\": \"bfloat16\", \"shape\": [16, 40], "
                 "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5}"},
        {"\x00", "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [3, 80]}"},
        {"\x02", "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [40, 16], "
                 "\"nested_blocksize\": 1, \"nested_dtype\": \"float32\", \"nested_offset\": -1e30}"},
    };
    size_t i;
    for (i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char name[64];
        uint8_t buf[512];
        size_t n = strlen(seeds[i][1]);
        buf[0] = (uint8_t)seeds[i][0][0];
        memcpy(buf + 1, seeds[i][1], n);
        snprintf(name, sizeof name, "seed%02zu.json", i);
        write_raw("fuzz_quant_state", name, buf, n + 1);
    }
}

/* fuzz_capi: every input is a program (see fuzz_capi.c); one seed per opcode,
 * followed by filler bytes that decode to valid, small operands (0x05) or to
 * bad ones (0x02, 0x00), plus a few pseudo-random programs. */
static void capi_seeds(void) {
    static const uint8_t fillers[3] = {0x05, 0x02, 0x00};
    uint8_t buf[96];
    char name[64];
    int op, f, k;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (op = 0; op < 15; op++) /* the primary opcodes of fuzz_capi.c's ops[] */
        for (f = 0; f < 3; f++) {
            if (f == 2 && op % 2) continue;
            memset(buf, fillers[f], 64);
            buf[0] = (uint8_t)op;
            snprintf(name, sizeof name, "op%02d_fill%02x", op, fillers[f]);
            write_raw("fuzz_capi", name, buf, 64);
        }
    for (k = 0; k < 6; k++) {
        for (f = 0; f < (int)sizeof buf; f++) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            buf[f] = (uint8_t)((x * 0x2545F4914F6CDD1Dull) >> 56);
        }
        snprintf(name, sizeof name, "random%d", k);
        write_raw("fuzz_capi", name, buf, sizeof buf);
    }
}

int main(int argc, char **argv) {
    int i;
    root = argc > 1 ? argv[1] : "fuzz/corpus";
    for (i = 0; i < 16 * 40; i++) table[i] = (float)((i * 7919) % 201 - 100) / 37.0f;
    quantized_seeds();
    float_seeds();
    mixed_seeds();
    npy_seeds();
    quant_state_seeds();
    capi_seeds();
    printf("gen_seeds: wrote the seed corpora under %s\n", root);
    return 0;
}
