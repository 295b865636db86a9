/* test_files.c - tensor files through the C API (include/qembed.h, "Tensor
 * files: safetensors and .npy" and qembed_embedding_save):
 *   safetensors round trip of every dtype (0-d, empty and 1..4-d tensors,
 *   NULL data for empty ones) with metadata: open, count, info (name, the
 *   file's dtype spelling, dtype, shape, numel, nbytes, data bytes), find,
 *   metadata, the on-disk layout (8-byte little-endian header length, header
 *   padded to 8); .npy save/open of every dtype it supports (bf16 refused);
 *   atomic saves (a failed save over an existing file leaves it intact and
 *   leaves no temporary file; an open file keeps its old content after a
 *   save replaces it); a battery of hand-written malformed files ->
 *   QEMBED_ERR_FORMAT with a message; missing file / directory ->
 *   QEMBED_ERR_IO; bad arguments; qembed_embedding_save of Embedding and
 *   StableEmbedding reopened and compared with the layer's parameters. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qembed.h"
#include "qtest.h"
#include "qtest_dir.h"


#define LOCAL_PATH(var, name) \
    char var[512];               \
    snprintf(var, sizeof var, "%s", qt_path(name))

static void write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (f == NULL || (len > 0 && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

static unsigned char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* number of entries of the test directory whose name contains ".tmp" */
static int temp_files_left(void) {
    DIR *d = opendir(qt_dir);
    struct dirent *e;
    int n = 0;
    if (d == NULL) return -1;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp") != NULL) n++;
    closedir(d);
    return n;
}

static qembed_tensor_file *open_ok(const char *path) {
    qembed_tensor_file *f = NULL;
    qembed_status st = qembed_tensor_file_open(path, &f);
    if (st != QEMBED_OK || f == NULL) {
        fprintf(stderr, "open %s failed: %s: %s\n", path, qembed_status_string(st), qembed_last_error());
        return NULL;
    }
    return f;
}

static qembed_tensor_info info_at(const qembed_tensor_file *f, int64_t i) {
    qembed_tensor_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (qembed_tensor_file_info(f, i, &info) != QEMBED_OK) {
        fprintf(stderr, "qembed_tensor_file_info(%lld) failed: %s\n", (long long)i, qembed_last_error());
        memset(&info, 0, sizeof info);
    }
    return info;
}

/* ---- 1. safetensors round trip of every dtype ---------------------------- */

static const char *st_names[QEMBED_DTYPE_COUNT] = {"F32", "F16", "BF16", "U8", "I8", "I32", "I64"};

typedef struct fixture {
    qembed_tensor_desc t[12];
    int n;
    unsigned char *bufs[12];
} fixture;

static void fill_random(unsigned char *p, size_t n, qt_rng *r) {
    size_t i;
    for (i = 0; i < n; i++) p[i] = (unsigned char)(qt_next(r) >> 56);
}

static int64_t desc_numel(const qembed_tensor_desc *t) {
    int64_t n = 1;
    int k;
    for (k = 0; k < t->ndim; k++) n *= t->shape[k];
    return n;
}

static void add_tensor(fixture *fx, const char *name, int dtype, int ndim, const int64_t *shape, qt_rng *r) {
    qembed_tensor_desc *t = &fx->t[fx->n];
    int64_t numel;
    size_t bytes;
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = dtype;
    t->ndim = ndim;
    if (ndim > 0) memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    numel = desc_numel(t);
    bytes = (size_t)numel * qembed_dtype_size(dtype);
    fx->bufs[fx->n] = bytes ? malloc(bytes) : NULL;
    if (bytes) fill_random(fx->bufs[fx->n], bytes, r);
    /* keep float payloads finite (the file layer does not care, but make them real numbers) */
    if (dtype == QEMBED_DTYPE_F32) {
        int64_t i;
        for (i = 0; i < numel; i++) ((float *)fx->bufs[fx->n])[i] = qt_normal(r);
    }
    t->data = fx->bufs[fx->n];
    fx->n++;
}

static void free_fixture(fixture *fx) {
    int i;
    for (i = 0; i < fx->n; i++) free(fx->bufs[i]);
    fx->n = 0;
}

/* Does tensor `i` of `f` equal desc `t` (name, spelling, dtype, shape, bytes)? */
static void check_tensor(const qembed_tensor_file *f, int64_t i, const qembed_tensor_desc *t, const char *spelling) {
    qembed_tensor_info info = info_at(f, i);
    int64_t numel = desc_numel(t);
    int64_t nbytes = numel * (int64_t)qembed_dtype_size(t->dtype);
    int shape_ok = info.ndim == t->ndim, k;
    int64_t idx = -1;
    for (k = 0; shape_ok && k < t->ndim; k++) shape_ok = info.shape[k] == t->shape[k];
    CHECKF(info.name != NULL && strcmp(info.name, t->name) == 0, "tensor %lld: name %s, want %s", (long long)i,
           info.name ? info.name : "(null)", t->name);
    CHECKF(info.dtype_name != NULL && strcmp(info.dtype_name, spelling) == 0, "%s: dtype_name %s, want %s", t->name,
           info.dtype_name ? info.dtype_name : "(null)", spelling);
    CHECKF(info.dtype == t->dtype, "%s: dtype %d, want %d", t->name, info.dtype, t->dtype);
    CHECKF(shape_ok, "%s: ndim %d shape [%lld, %lld, ...], want ndim %d", t->name, info.ndim, (long long)info.shape[0],
           (long long)info.shape[1], t->ndim);
    CHECKF(info.numel == numel && info.nbytes == nbytes, "%s: numel %lld nbytes %lld, want %lld %lld", t->name,
           (long long)info.numel, (long long)info.nbytes, (long long)numel, (long long)nbytes);
    CHECKF(nbytes == 0 || (info.data != NULL && memcmp(info.data, t->data, (size_t)nbytes) == 0),
           "%s: the data bytes differ", t->name);
    CHECKF(qembed_tensor_file_find(f, t->name, &idx) == QEMBED_OK && idx == i, "find(%s) = %lld, want %lld", t->name,
           (long long)idx, (long long)i);
}

static void test_safetensors_roundtrip(void) {
    fixture fx;
    qt_rng r = qt_rng_make(11);
    static const int64_t s1[1] = {37}, s2[2] = {5, 7}, s3[3] = {2, 3, 4}, s4[4] = {2, 1, 3, 2}, s0[2] = {0, 5};
    static const int64_t s8[8] = {1, 2, 1, 2, 1, 2, 1, 3};
    const char *keys[3] = {"format", "qembed.test", "empty"};
    const char *values[3] = {"pt", "tensor files \"quoted\" \\ and unicode \xc3\xa9", ""};
    LOCAL_PATH(path, "all.safetensors");
    qembed_tensor_file *f;
    int64_t n = -1, i;
    const char *v = NULL;
    size_t len = 0;
    unsigned char *raw;

    fx.n = 0;
    add_tensor(&fx, "f32.matrix", QEMBED_DTYPE_F32, 2, s2, &r);
    add_tensor(&fx, "f16.vector", QEMBED_DTYPE_F16, 1, s1, &r);
    add_tensor(&fx, "bf16.cube", QEMBED_DTYPE_BF16, 3, s3, &r);
    add_tensor(&fx, "u8", QEMBED_DTYPE_U8, 1, s1, &r);
    add_tensor(&fx, "i8.4d", QEMBED_DTYPE_I8, 4, s4, &r);
    add_tensor(&fx, "i32", QEMBED_DTYPE_I32, 2, s2, &r);
    add_tensor(&fx, "i64.scalar", QEMBED_DTYPE_I64, 0, NULL, &r);
    add_tensor(&fx, "f32.empty", QEMBED_DTYPE_F32, 2, s0, &r); /* no bytes, data NULL */
    add_tensor(&fx, "a name with spaces/and.slashes \xc3\xa9", QEMBED_DTYPE_F32, 8, s8, &r);

    CHECKF(qembed_save_safetensors(path, fx.t, fx.n, keys, values, 3) == QEMBED_OK, "save: %s", qembed_last_error());
    f = open_ok(path);
    CHECK(f != NULL);
    if (f != NULL) {
        CHECKF(qembed_tensor_file_count(f, &n) == QEMBED_OK && n == fx.n, "count %lld, want %d", (long long)n, fx.n);
        for (i = 0; i < fx.n && i < n; i++) check_tensor(f, i, &fx.t[i], st_names[fx.t[i].dtype]);
        for (i = 0; i < 3; i++) {
            v = NULL;
            CHECKF(qembed_tensor_file_metadata(f, keys[i], &v) == QEMBED_OK && v != NULL && strcmp(v, values[i]) == 0,
                   "metadata %s = %s, want %s", keys[i], v ? v : "(null)", values[i]);
        }
        v = "sentinel";
        CHECKF(qembed_tensor_file_metadata(f, "absent", &v) == QEMBED_OK && v == NULL, "absent metadata key gives NULL");
        /* a tensor name is not a metadata key and vice versa */
        v = "sentinel";
        CHECK(qembed_tensor_file_metadata(f, "u8", &v) == QEMBED_OK && v == NULL);
        i = 99;
        qembed_clear_error();
        CHECK(qembed_tensor_file_find(f, "format", &i) == QEMBED_ERR_INVALID_ARGUMENT && i == 99);
        CHECKF(qembed_tensor_file_find(f, "no.such.tensor", &i) == QEMBED_ERR_INVALID_ARGUMENT &&
                   strstr(qembed_last_error(), "no.such.tensor") != NULL && i == 99,
               "find of an absent tensor names it: %s", qembed_last_error());
        /* data pointers are inside the mapping: two infos give the same pointer */
        CHECK(info_at(f, 0).data == info_at(f, 0).data && info_at(f, 0).data != NULL);
        qembed_tensor_file_close(f);
    }

    /* the layout: u64 little-endian header length, header padded to 8 bytes, then the data */
    raw = read_all(path, &len);
    if (raw != NULL) {
        uint64_t hl = 0;
        int k;
        for (k = 7; k >= 0; k--) hl = (hl << 8) | raw[k];
        CHECKF(hl % 8 == 0 && 8 + hl <= len && raw[8] == '{', "header length %llu of a %zu-byte file",
               (unsigned long long)hl, len);
        CHECKF(8 + hl < len && memcmp(raw + 8 + hl, fx.bufs[0], 4) == 0, "the first tensor's data follows the header");
        free(raw);
    }

    /* no metadata, no tensors: a valid file with nothing in it */
    CHECKF(qembed_save_safetensors(qt_path("none.safetensors"), NULL, 0, NULL, NULL, 0) == QEMBED_OK, "%s",
           qembed_last_error());
    f = open_ok(qt_path("none.safetensors"));
    if (f != NULL) {
        n = -1;
        v = "sentinel";
        CHECK(qembed_tensor_file_count(f, &n) == QEMBED_OK && n == 0);
        CHECK(qembed_tensor_file_metadata(f, "format", &v) == QEMBED_OK && v == NULL);
        qembed_tensor_file_close(f);
    } else {
        CHECK(0);
    }
    free_fixture(&fx);
}

/* ---- 2. .npy -------------------------------------------------------------- */

static void test_npy(void) {
    fixture fx;
    qt_rng r = qt_rng_make(12);
    static const int64_t s1[1] = {33}, s2[2] = {6, 9}, s3[3] = {2, 3, 5};
    static const char *spell[QEMBED_DTYPE_COUNT] = {"F32", "F16", "BF16", "U8", "I8", "I32", "I64"};
    int k;
    fx.n = 0;
    add_tensor(&fx, "a", QEMBED_DTYPE_F32, 2, s2, &r);
    add_tensor(&fx, "b", QEMBED_DTYPE_F16, 1, s1, &r);
    add_tensor(&fx, "c", QEMBED_DTYPE_U8, 3, s3, &r);
    add_tensor(&fx, "d", QEMBED_DTYPE_I8, 2, s2, &r);
    add_tensor(&fx, "e", QEMBED_DTYPE_I32, 1, s1, &r);
    add_tensor(&fx, "f", QEMBED_DTYPE_I64, 2, s2, &r);
    for (k = 0; k < fx.n; k++) {
        char name[64];
        qembed_tensor_file *f;
        qembed_tensor_desc t = fx.t[k];
        int64_t n = -1, idx = -1;
        const char *v = "sentinel";
        snprintf(name, sizeof name, "t%d.npy", k);
        CHECKF(qembed_save_npy(qt_path(name), &t) == QEMBED_OK, "save_npy %s: %s", qembed_dtype_name(t.dtype),
               qembed_last_error());
        f = open_ok(qt_path(name));
        CHECK(f != NULL);
        if (f == NULL) continue;
        t.name = "array";
        CHECK(qembed_tensor_file_count(f, &n) == QEMBED_OK && n == 1);
        check_tensor(f, 0, &t, spell[t.dtype]);
        CHECK(qembed_tensor_file_find(f, "array", &idx) == QEMBED_OK && idx == 0);
        CHECK(qembed_tensor_file_metadata(f, "format", &v) == QEMBED_OK && v == NULL);
        qembed_tensor_file_close(f);
        {
            size_t len = 0;
            unsigned char *raw = read_all(qt_path(name), &len);
            CHECKF(raw != NULL && len > 10 && raw[0] == 0x93 && memcmp(raw + 1, "NUMPY", 5) == 0 &&
                       (10 + (raw[8] | raw[9] << 8)) % 64 == 0,
                   "%s: .npy magic and a 64-byte aligned header", name);
            free(raw);
        }
    }
    {
        /* bf16 has no .npy dtype: refused, nothing written */
        qembed_tensor_desc t;
        uint16_t b[4] = {0x3F80, 0x4000, 0, 0x8000};
        memset(&t, 0, sizeof t);
        t.name = "x";
        t.dtype = QEMBED_DTYPE_BF16;
        t.ndim = 1;
        t.shape[0] = 4;
        t.data = b;
        qembed_clear_error();
        CHECK(qembed_save_npy(qt_path("bf16.npy"), &t) == QEMBED_ERR_UNSUPPORTED && qembed_last_error()[0] != '\0');
        CHECK(!file_exists(qt_path("bf16.npy")));
    }
    /* a hand-written version 2.0 file and a 0-d scalar */
    {
        unsigned char buf[128 + 8];
        const char *hdr = "{'descr': '<i4', 'fortran_order': False, 'shape': (), }";
        size_t hl = 128 - 12;
        int32_t val = -123456;
        qembed_tensor_file *f;
        memset(buf, ' ', sizeof buf);
        buf[0] = 0x93;
        memcpy(buf + 1, "NUMPY", 5);
        buf[6] = 2;
        buf[7] = 0;
        buf[8] = (unsigned char)hl;
        buf[9] = buf[10] = buf[11] = 0;
        memcpy(buf + 12, hdr, strlen(hdr));
        buf[127] = '\n';
        memcpy(buf + 128, &val, 4);
        write_bytes(qt_path("v2.npy"), buf, 132);
        f = open_ok(qt_path("v2.npy"));
        CHECK(f != NULL);
        if (f != NULL) {
            qembed_tensor_info info = info_at(f, 0);
            CHECKF(info.ndim == 0 && info.numel == 1 && info.dtype == QEMBED_DTYPE_I32 && info.data != NULL &&
                       memcmp(info.data, &val, 4) == 0,
                   "v2 scalar: ndim %d numel %lld dtype %d", info.ndim, (long long)info.numel, info.dtype);
            qembed_tensor_file_close(f);
        }
    }
    free_fixture(&fx);
}

/* ---- 3. atomic saves ------------------------------------------------------ */

static void test_atomic(void) {
    LOCAL_PATH(path, "atomic.safetensors");
    float old_data[6] = {1, 2, 3, 4, 5, 6}, new_data[6] = {-1, -2, -3, -4, -5, -6};
    qembed_tensor_desc good[2], bad[2];
    qembed_tensor_file *f, *g;
    const char *mk[1] = {"version"}, *mv_old[1] = {"old"}, *mv_new[1] = {"new"};
    const char *v = NULL;

    memset(good, 0, sizeof good);
    good[0].name = "w";
    good[0].dtype = QEMBED_DTYPE_F32;
    good[0].ndim = 2;
    good[0].shape[0] = 2;
    good[0].shape[1] = 3;
    good[0].data = old_data;
    good[1] = good[0];
    good[1].name = "w2";
    CHECK(qembed_save_safetensors(path, good, 2, mk, mv_old, 1) == QEMBED_OK);

    /* a bad second tensor: unknown dtype, then NULL data, then a repeated name */
    memcpy(bad, good, sizeof bad);
    bad[0].data = new_data;
    bad[1].dtype = 42;
    qembed_clear_error();
    CHECK(qembed_save_safetensors(path, bad, 2, mk, mv_new, 1) == QEMBED_ERR_UNSUPPORTED && qembed_last_error()[0]);
    bad[1].dtype = QEMBED_DTYPE_F32;
    bad[1].data = NULL;
    CHECK(qembed_save_safetensors(path, bad, 2, mk, mv_new, 1) == QEMBED_ERR_NULL_POINTER);
    bad[1].data = new_data;
    bad[1].name = "w";
    CHECK(qembed_save_safetensors(path, bad, 2, mk, mv_new, 1) == QEMBED_ERR_INVALID_ARGUMENT);
    bad[1].name = "w2";
    bad[1].shape[1] = -3;
    CHECK(qembed_save_safetensors(path, bad, 2, mk, mv_new, 1) == QEMBED_ERR_INVALID_ARGUMENT);
    bad[1].shape[1] = 3;
    {
        /* .npy over the same file: bf16 refused */
        qembed_tensor_desc t = bad[0];
        t.dtype = QEMBED_DTYPE_BF16;
        CHECK(qembed_save_npy(path, &t) == QEMBED_ERR_UNSUPPORTED);
    }
    f = open_ok(path);
    CHECK(f != NULL);
    if (f != NULL) {
        qembed_tensor_info info = info_at(f, 0);
        int64_t n = 0;
        CHECK(qembed_tensor_file_count(f, &n) == QEMBED_OK && n == 2);
        CHECKF(info.data != NULL && memcmp(info.data, old_data, sizeof old_data) == 0,
               "the old content survives failed saves");
        CHECK(qembed_tensor_file_metadata(f, "version", &v) == QEMBED_OK && v != NULL && strcmp(v, "old") == 0);

        /* a successful save replaces the file; the open mapping keeps the old bytes */
        CHECK(qembed_save_safetensors(path, bad, 2, mk, mv_new, 1) == QEMBED_OK);
        info = info_at(f, 0);
        CHECKF(info.data != NULL && memcmp(info.data, old_data, sizeof old_data) == 0,
               "an open file keeps its content after a save replaced the path");
        g = open_ok(path);
        CHECK(g != NULL);
        if (g != NULL) {
            qembed_tensor_info gi = info_at(g, 0);
            CHECK(gi.data != NULL && memcmp(gi.data, new_data, sizeof new_data) == 0);
            CHECK(qembed_tensor_file_metadata(g, "version", &v) == QEMBED_OK && v != NULL && strcmp(v, "new") == 0);
            qembed_tensor_file_close(g);
        }
        qembed_tensor_file_close(f);
    }
    CHECKF(temp_files_left() == 0, "%d temporary files left in %s", temp_files_left(), qt_dir);

    /* a missing directory: QEMBED_ERR_IO, nothing created */
    qembed_clear_error();
    CHECK(qembed_save_safetensors(qt_path("no/such/dir/x.safetensors"), good, 1, NULL, NULL, 0) == QEMBED_ERR_IO &&
          qembed_last_error()[0]);
    CHECK(qembed_save_npy(qt_path("no/such/dir/x.npy"), &good[0]) == QEMBED_ERR_IO);
    CHECK(!file_exists(qt_path("no")));
    /* a directory as the path: the rename fails, the directory survives */
    mkdir(qt_path("adir"), 0755);
    CHECK(qembed_save_safetensors(qt_path("adir"), good, 1, NULL, NULL, 0) != QEMBED_OK);
    {
        struct stat st;
        CHECK(stat(qt_path("adir"), &st) == 0 && S_ISDIR(st.st_mode));
    }
    CHECKF(temp_files_left() == 0, "%d temporary files left after the failed saves", temp_files_left());
    rmdir(qt_path("adir"));
}

/* ---- 4. malformed files ---------------------------------------------------- */

/* writes [u64 header length][header][data]; hl_override >= 0 replaces the length field */
static void write_st(const char *path, const char *header, const void *data, size_t data_len, int64_t hl_override) {
    size_t hl = strlen(header);
    unsigned char *buf = malloc(8 + hl + data_len + 1);
    uint64_t len = hl_override >= 0 ? (uint64_t)hl_override : (uint64_t)hl;
    int k;
    for (k = 0; k < 8; k++) buf[k] = (unsigned char)(len >> (8 * k));
    memcpy(buf + 8, header, hl);
    if (data_len) memcpy(buf + 8 + hl, data, data_len);
    write_bytes(path, buf, 8 + hl + data_len);
    free(buf);
}

static void expect_open_fails(const char *desc, const char *path, unsigned allowed) {
    qembed_tensor_file *f = (qembed_tensor_file *)path; /* any non-NULL value: must become NULL */
    qembed_status st;
    const char *msg;
    qembed_clear_error();
    st = qembed_tensor_file_open(path, &f);
    msg = qembed_last_error();
#ifdef SHOW_MESSAGES
    fprintf(stderr, "%-55s -> %s: %s\n", desc, qembed_status_string(st), msg);
#endif
    CHECKF((int)st >= 0 && (int)st < 32 && (allowed & (1u << st)) && f == NULL && msg[0] != '\0',
           "%s: status %d \"%s\", out %p, message \"%s\"", desc, (int)st, qembed_status_string(st), (void *)f, msg);
    if (st == QEMBED_OK) qembed_tensor_file_close(f);
}

#define FMT (1u << QEMBED_ERR_FORMAT)
#define IO (1u << QEMBED_ERR_IO)

static void malformed(const char *desc, const char *header, size_t data_len, int64_t hl_override) {
    static unsigned char zeros[4096];
    LOCAL_PATH(path, "bad.safetensors");
    write_st(path, header, zeros, data_len, hl_override);
    expect_open_fails(desc, path, FMT);
}

static void test_malformed(void) {
    static unsigned char zeros[64];
    LOCAL_PATH(path, "bad.safetensors");
    char deep[2048];
    int k;
    size_t len = 0;
    unsigned char *raw;
    const char *T16 = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";

    /* the well-formed reference opens */
    write_st(path, T16, zeros, 16, -1);
    {
        qembed_tensor_file *f = open_ok(path);
        CHECK(f != NULL);
        qembed_tensor_file_close(f);
    }
    write_bytes(path, "", 0);
    expect_open_fails("empty file", path, FMT);
    write_bytes(path, "\x10\0\0", 3);
    expect_open_fails("3-byte file", path, FMT);
    malformed("truncated data (16 bytes declared, 10 present)", T16, 10, -1);
    malformed("header length larger than the file", T16, 16, 1000);
    malformed("header length 2^62", T16, 16, (int64_t)1 << 62);
    malformed("header length past the header (JSON cut)", T16, 16, (int64_t)strlen(T16) + 12);
    malformed("header length 0", T16, 16, 0);
    malformed("header length cuts the JSON", T16, 16, 20);
    malformed("JSON array, not an object", "[1, 2, 3]", 0, -1);
    malformed("JSON string", "\"tensors\"", 0, -1);
    malformed("JSON number", "42", 0, -1);
    malformed("invalid JSON", "{\"t\": {\"dtype\": \"F32\",}", 0, -1);
    malformed("unterminated string", "{\"t", 0, -1);
    malformed("trailing characters after the object", "{} x", 0, -1);
    /* NUL is not JSON whitespace (spaces are the padding safetensors allows) */
    write_bytes(path, "\x08\0\0\0\0\0\0\0{}  \0\0\0\0", 16);
    expect_open_fails("NUL bytes padding the header", path, FMT);
    write_bytes(path, "\x08\0\0\0\0\0\0\0{}      ", 16);
    {
        qembed_tensor_file *f = open_ok(path);
        int64_t n = -1;
        CHECK(f != NULL && qembed_tensor_file_count(f, &n) == QEMBED_OK && n == 0);
        qembed_tensor_file_close(f);
    }
    malformed("tensor value not an object", "{\"t\": 3}", 0, -1);
    malformed("unknown dtype", "{\"t\":{\"dtype\":\"F128\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, -1);
    malformed("lower-case dtype", "{\"t\":{\"dtype\":\"f32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, -1);
    malformed("dtype not a string", "{\"t\":{\"dtype\":4,\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, -1);
    malformed("missing dtype", "{\"t\":{\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, -1);
    malformed("missing shape", "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", 16, -1);
    malformed("negative shape entry", "{\"t\":{\"dtype\":\"F32\",\"shape\":[-2,-2],\"data_offsets\":[0,16]}}", 16, -1);
    malformed("fractional shape entry", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2.5,2],\"data_offsets\":[0,20]}}", 20, -1);
    malformed("shape product overflows",
              "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", 16, -1);
    malformed("missing data_offsets", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2]}}", 16, -1);
    malformed("one data offset", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16]}}", 16, -1);
    malformed("offsets outside the data", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}", 16, -1);
    malformed("end before begin", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 16, -1);
    malformed("negative offset", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 16, -1);
    malformed("huge offsets", "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[18446744073709551615,0]}}", 16,
              -1);
    malformed("byte count does not match the shape (12 for 2x2 F32)",
              "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16, -1);
    malformed("byte count does not match the dtype (I64 2x2 in 16 bytes)",
              "{\"t\":{\"dtype\":\"I64\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, -1);
    malformed("overlapping tensors",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
              16, -1);
    malformed("the same range twice",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
              16, -1);
    malformed("one tensor inside another",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
              "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}",
              16, -1);
    malformed("__metadata__ not an object", "{\"__metadata__\": [\"a\"]}", 0, -1);
    malformed("__metadata__ value not a string", "{\"__metadata__\": {\"format\": 1}}", 0, -1);
    /* nesting deeper than the parser's limit, inside __metadata__ and inside a tensor */
    strcpy(deep, "{\"__metadata__\": {\"x\": ");
    for (k = 0; k < 100; k++) strcat(deep, "[");
    for (k = 0; k < 100; k++) strcat(deep, "]");
    strcat(deep, "}}");
    malformed("nesting 100 deep", deep, 0, -1);
    strcpy(deep, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16],\"extra\":");
    for (k = 0; k < 70; k++) strcat(deep, "{\"a\":");
    strcat(deep, "1");
    for (k = 0; k < 70; k++) strcat(deep, "}");
    strcat(deep, "}}");
    malformed("objects nested 70 deep", deep, 16, -1);

    /* a valid file cut anywhere is rejected (every cut of the header and the data) */
    {
        qembed_tensor_desc t[2];
        float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        int bad_cuts = 0, cut;
        memset(t, 0, sizeof t);
        t[0].name = "a";
        t[0].dtype = QEMBED_DTYPE_F32;
        t[0].ndim = 1;
        t[0].shape[0] = 8;
        t[0].data = a;
        t[1] = t[0];
        t[1].name = "b";
        t[1].shape[0] = 4;
        CHECK(qembed_save_safetensors(qt_path("good.safetensors"), t, 2, NULL, NULL, 0) == QEMBED_OK);
        raw = read_all(qt_path("good.safetensors"), &len);
        for (cut = 0; raw != NULL && (size_t)cut < len; cut++) {
            qembed_tensor_file *f = NULL;
            qembed_status st;
            write_bytes(path, raw, (size_t)cut);
            st = qembed_tensor_file_open(path, &f);
            if (st != QEMBED_ERR_FORMAT || f != NULL || qembed_last_error()[0] == '\0') {
                if (bad_cuts++ < 3) fprintf(stderr, "cut at %d of %zu: status %d\n", cut, len, (int)st);
            }
            if (f != NULL) qembed_tensor_file_close(f);
        }
        CHECKF(bad_cuts == 0, "%d of %zu truncations were not rejected as QEMBED_ERR_FORMAT", bad_cuts, len);
        free(raw);
    }

    /* .npy */
    {
        LOCAL_PATH(np, "bad.npy");
        unsigned char buf[256];
        const char *hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        char *descr = (char *)buf + 10 + (strstr(hdr, "<f4") - hdr);
        char *shape = (char *)buf + 10 + (strstr(hdr, "(2, 2)") - hdr);
        char *fortran = (char *)buf + 10 + (strstr(hdr, "False") - hdr);
        size_t hl = 128 - 10;
        memset(buf, ' ', sizeof buf);
        buf[0] = 0x93;
        memcpy(buf + 1, "NUMPY", 5);
        buf[6] = 1;
        buf[7] = 0;
        buf[8] = (unsigned char)hl;
        buf[9] = 0;
        memcpy(buf + 10, hdr, strlen(hdr));
        buf[127] = '\n';
        memset(buf + 128, 0, 16);
        write_bytes(np, buf, 144);
        {
            qembed_tensor_file *f = open_ok(np);
            CHECK(f != NULL);
            qembed_tensor_file_close(f);
        }
        write_bytes(np, buf, 136);
        expect_open_fails(".npy with truncated data", np, FMT);
        write_bytes(np, buf, 60);
        expect_open_fails(".npy with a truncated header", np, FMT);
        write_bytes(np, buf, 5);
        expect_open_fails(".npy of 5 bytes", np, FMT);
        buf[1] = 'X';
        write_bytes(np, buf, 144);
        expect_open_fails(".npy with a bad magic", np, FMT);
        buf[1] = 'N';
        buf[6] = 9;
        write_bytes(np, buf, 144);
        expect_open_fails(".npy version 9", np, FMT);
        buf[6] = 1;
        memcpy(descr, "<c8", 3);
        write_bytes(np, buf, 144);
        expect_open_fails(".npy with an unsupported dtype (complex)", np, FMT | (1u << QEMBED_ERR_UNSUPPORTED));
        memcpy(descr, "<f4", 3);
        memcpy(shape, "(2, 3)", 6);
        write_bytes(np, buf, 144);
        expect_open_fails(".npy whose shape does not match the data", np, FMT);
        memcpy(shape, "(2, 2)", 6);
        memcpy(fortran, "True ", 5); /* fortran_order: True (valid .npy, not supported) */
        write_bytes(np, buf, 144);
        expect_open_fails(".npy in Fortran order", np, FMT | (1u << QEMBED_ERR_UNSUPPORTED));
        buf[8] = 250;
        write_bytes(np, buf, 144);
        expect_open_fails(".npy header length past the end", np, FMT);
    }
    /* a .safetensors name does not make a .npy a safetensors file, and vice versa */
    write_bytes(path, "\x93NUMPY\x01\x00", 8);
    expect_open_fails(".npy bytes named .safetensors", path, FMT);
    write_st(qt_path("st.npy"), T16, zeros, 16, -1);
    expect_open_fails("safetensors bytes named .npy", qt_path("st.npy"), FMT);

    /* missing files and non-files */
    expect_open_fails("missing file", qt_path("does-not-exist.safetensors"), IO);
    expect_open_fails("missing .npy", qt_path("does-not-exist.npy"), IO);
    expect_open_fails("a directory", qt_dir, IO);
    expect_open_fails("missing directory", "/nonexistent-qembed-dir/x.safetensors", IO);
    expect_open_fails("empty path", "", IO | (1u << QEMBED_ERR_INVALID_ARGUMENT));
}

/* ---- 5. bad arguments ------------------------------------------------------- */

static void expect_status(const char *desc, qembed_status got, qembed_status want, const char *names) {
    const char *msg = qembed_last_error();
    CHECKF(got == want && msg[0] != '\0' && (names == NULL || qt_names(msg, names)),
           "%s: status %d \"%s\" (want %d \"%s\"), message \"%s\"%s%s", desc, (int)got, qembed_status_string(got),
           (int)want, qembed_status_string(want), msg, names ? " should name " : "", names ? names : "");
}

#define EXPECT(want, names, call) (qembed_clear_error(), expect_status(#call, (call), (want), (names)))

static void test_bad_args(void) {
    LOCAL_PATH(path, "args.safetensors");
    float data[4] = {1, 2, 3, 4};
    qembed_tensor_desc t, tt[2];
    qembed_tensor_file *f = NULL, *out = NULL;
    qembed_tensor_info info;
    int64_t n = -7, idx = -7;
    const char *v = "sentinel";
    const char *keys[1] = {"k"}, *vals[1] = {"v"}, *null_key[1] = {NULL};

    memset(&t, 0, sizeof t);
    t.name = "t";
    t.dtype = QEMBED_DTYPE_F32;
    t.ndim = 2;
    t.shape[0] = 2;
    t.shape[1] = 2;
    t.data = data;
    CHECK(qembed_save_safetensors(path, &t, 1, keys, vals, 1) == QEMBED_OK);
    f = open_ok(path);
    if (f == NULL) {
        CHECK(0);
        return;
    }
    EXPECT(QEMBED_ERR_NULL_POINTER, "path", qembed_tensor_file_open(NULL, &out));
    CHECK(out == NULL);
    EXPECT(QEMBED_ERR_NULL_POINTER, "out", qembed_tensor_file_open(path, NULL));
    EXPECT(QEMBED_ERR_NULL_POINTER, NULL, qembed_tensor_file_count(NULL, &n));
    EXPECT(QEMBED_ERR_NULL_POINTER, "n", qembed_tensor_file_count(f, NULL));
    CHECK(n == -7);
    memset(&info, 0x5A, sizeof info);
    info.struct_size = sizeof info;
    EXPECT(QEMBED_ERR_NULL_POINTER, NULL, qembed_tensor_file_info(NULL, 0, &info));
    EXPECT(QEMBED_ERR_NULL_POINTER, "info", qembed_tensor_file_info(f, 0, NULL));
    EXPECT(QEMBED_ERR_OUT_OF_RANGE, "i", qembed_tensor_file_info(f, 1, &info));
    EXPECT(QEMBED_ERR_OUT_OF_RANGE, "i", qembed_tensor_file_info(f, -1, &info));
    EXPECT(QEMBED_ERR_OUT_OF_RANGE, "i", qembed_tensor_file_info(f, INT64_MAX, &info));
    EXPECT(QEMBED_ERR_OUT_OF_RANGE, "i", qembed_tensor_file_info(f, INT64_MIN, &info));
    info.struct_size = 0;
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "struct_size", qembed_tensor_file_info(f, 0, &info));
    info.struct_size = sizeof info + 8;
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "struct_size", qembed_tensor_file_info(f, 0, &info));
    info.struct_size = sizeof info - 8;
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "struct_size", qembed_tensor_file_info(f, 0, &info));
    CHECKF(info.name == NULL || info.ndim == 0x5A5A5A5A, "a failed info call wrote nothing");
    EXPECT(QEMBED_ERR_NULL_POINTER, NULL, qembed_tensor_file_find(NULL, "t", &idx));
    EXPECT(QEMBED_ERR_NULL_POINTER, "name", qembed_tensor_file_find(f, NULL, &idx));
    EXPECT(QEMBED_ERR_NULL_POINTER, "index", qembed_tensor_file_find(f, "t", NULL));
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, NULL, qembed_tensor_file_find(f, "", &idx));
    CHECK(idx == -7);
    EXPECT(QEMBED_ERR_NULL_POINTER, NULL, qembed_tensor_file_metadata(NULL, "k", &v));
    EXPECT(QEMBED_ERR_NULL_POINTER, "key", qembed_tensor_file_metadata(f, NULL, &v));
    EXPECT(QEMBED_ERR_NULL_POINTER, "value", qembed_tensor_file_metadata(f, "k", NULL));
    CHECK(v != NULL && strcmp(v, "sentinel") == 0);
    qembed_tensor_file_close(NULL); /* a no-op */
    qembed_tensor_file_close(f);

    /* saves */
    EXPECT(QEMBED_ERR_NULL_POINTER, "path", qembed_save_safetensors(NULL, &t, 1, NULL, NULL, 0));
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "path", qembed_save_safetensors("", &t, 1, NULL, NULL, 0));
    EXPECT(QEMBED_ERR_NULL_POINTER, "tensors", qembed_save_safetensors(path, NULL, 1, NULL, NULL, 0));
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "n", qembed_save_safetensors(path, &t, -1, NULL, NULL, 0));
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "n_meta", qembed_save_safetensors(path, &t, 1, keys, vals, -1));
    EXPECT(QEMBED_ERR_NULL_POINTER, "meta_keys", qembed_save_safetensors(path, &t, 1, NULL, vals, 1));
    EXPECT(QEMBED_ERR_NULL_POINTER, "meta_values", qembed_save_safetensors(path, &t, 1, keys, NULL, 1));
    EXPECT(QEMBED_ERR_NULL_POINTER, "meta_keys", qembed_save_safetensors(path, &t, 1, null_key, vals, 1));
    tt[0] = t;
    tt[1] = t;
    tt[1].name = NULL;
    EXPECT(QEMBED_ERR_NULL_POINTER, "name", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].name = "";
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "name", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].name = "__metadata__";
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "name", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].name = "t";
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "name", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].name = "u";
    tt[1].dtype = -1;
    EXPECT(QEMBED_ERR_UNSUPPORTED, "dtype", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].dtype = QEMBED_DTYPE_COUNT;
    EXPECT(QEMBED_ERR_UNSUPPORTED, "dtype", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].dtype = QEMBED_DTYPE_F32;
    tt[1].ndim = QEMBED_MAX_DIMS + 1;
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "ndim", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].ndim = -1;
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "ndim", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].ndim = 2;
    tt[1].shape[0] = INT64_MAX;
    tt[1].shape[1] = 4;
    EXPECT(QEMBED_ERR_SHAPE, "shape", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].shape[0] = 2;
    tt[1].shape[1] = -2;
    EXPECT(QEMBED_ERR_INVALID_ARGUMENT, "shape", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    tt[1].shape[1] = 2;
    tt[1].data = NULL;
    EXPECT(QEMBED_ERR_NULL_POINTER, "data", qembed_save_safetensors(path, tt, 2, NULL, NULL, 0));
    EXPECT(QEMBED_ERR_NULL_POINTER, "path", qembed_save_npy(NULL, &t));
    EXPECT(QEMBED_ERR_NULL_POINTER, "tensor", qembed_save_npy(qt_path("x.npy"), NULL));
    t.dtype = 99;
    EXPECT(QEMBED_ERR_UNSUPPORTED, "dtype", qembed_save_npy(qt_path("x.npy"), &t));
    t.dtype = QEMBED_DTYPE_F32;
    t.data = NULL;
    EXPECT(QEMBED_ERR_NULL_POINTER, "data", qembed_save_npy(qt_path("x.npy"), &t));
    CHECK(!file_exists(qt_path("x.npy")));
    /* the file written first is still the one there */
    f = open_ok(path);
    if (f != NULL) {
        qembed_tensor_info i0 = info_at(f, 0);
        CHECK(i0.data != NULL && memcmp(i0.data, data, sizeof data) == 0);
        qembed_tensor_file_close(f);
    }
    EXPECT(QEMBED_ERR_NULL_POINTER, NULL, qembed_embedding_save(NULL, path));
    {
        qembed_embedding_params p;
        qembed_embedding *e = NULL;
        qembed_embedding_params_init(&p);
        p.num_embeddings = 3;
        p.embedding_dim = 2;
        if (qembed_embedding_create(&p, &e) == QEMBED_OK) {
            EXPECT(QEMBED_ERR_NULL_POINTER, "path", qembed_embedding_save(e, NULL));
            EXPECT(QEMBED_ERR_IO, NULL, qembed_embedding_save(e, qt_path("no/such/dir/e.safetensors")));
            qembed_embedding_free(e);
        } else {
            CHECK(0);
        }
    }
}

/* ---- 6. qembed_embedding_save -------------------------------------------- */

static void compare_param(const qembed_tensor_file *f, qembed_param *p, const char *want_name) {
    qembed_param_info pi;
    int64_t idx = -1;
    memset(&pi, 0, sizeof pi);
    pi.struct_size = sizeof pi;
    CHECK(qembed_param_info_get(p, &pi) == QEMBED_OK);
    CHECKF(strcmp(pi.name, want_name) == 0, "parameter %s, want %s", pi.name, want_name);
    if (qembed_tensor_file_find(f, want_name, &idx) != QEMBED_OK) {
        CHECKF(0, "%s is not in the saved file: %s", want_name, qembed_last_error());
        return;
    }
    {
        qembed_tensor_info ti = info_at(f, idx);
        int shape_ok = ti.ndim == pi.ndim && ti.shape[0] == pi.shape[0] && (pi.ndim == 1 || ti.shape[1] == pi.shape[1]);
        CHECKF(ti.dtype == pi.dtype && strcmp(ti.dtype_name, st_names[pi.dtype]) == 0, "%s: dtype %s, want %s", want_name,
               ti.dtype_name, st_names[pi.dtype]);
        CHECKF(shape_ok, "%s: shape ndim %d [%lld, %lld], want ndim %d [%lld, %lld]", want_name, ti.ndim,
               (long long)ti.shape[0], (long long)ti.shape[1], pi.ndim, (long long)pi.shape[0], (long long)pi.shape[1]);
        CHECKF(ti.numel == pi.numel && ti.nbytes == pi.numel * (int64_t)qembed_dtype_size(pi.dtype) &&
                   memcmp(ti.data, pi.data, (size_t)ti.nbytes) == 0,
               "%s: the saved bytes differ from the parameter", want_name);
    }
}

static void test_embedding_save(void) {
    int stable, dt;
    for (stable = 0; stable <= 1; stable++) {
        for (dt = QEMBED_DTYPE_F32; dt <= QEMBED_DTYPE_BF16; dt++) {
            qembed_embedding_params p;
            qembed_embedding *e = NULL, *back = NULL;
            qembed_tensor_file *f;
            qembed_status st;
            int64_t np = 0, n = 0, k;
            char name[64];
            qembed_embedding_params_init(&p);
            p.num_embeddings = 37;
            p.embedding_dim = 19;
            p.dtype = dt;
            p.seed = 5 + (uint64_t)dt;
            p.padding_idx = 3;
            st = stable ? qembed_stable_embedding_create(&p, &e) : qembed_embedding_create(&p, &e);
            if (st != QEMBED_OK) {
                CHECKF(0, "create: %s", qembed_last_error());
                continue;
            }
            CHECK(qembed_embedding_num_params(e, &np) == QEMBED_OK && np == (stable ? 3 : 1));
            if (stable) {
                /* give the LayerNorm parameters values other than ones/zeros */
                float g[19], b[19];
                qt_rng r = qt_rng_make(77);
                qembed_param *pw = NULL, *pb = NULL;
                for (k = 0; k < 19; k++) {
                    g[k] = 1 + 0.1f * qt_normal(&r);
                    b[k] = 0.1f * qt_normal(&r);
                }
                CHECK(qembed_embedding_param(e, 1, &pw) == QEMBED_OK && qembed_param_load(pw, g, QEMBED_DTYPE_F32, 19) == QEMBED_OK);
                CHECK(qembed_embedding_param(e, 2, &pb) == QEMBED_OK && qembed_param_load(pb, b, QEMBED_DTYPE_F32, 19) == QEMBED_OK);
            }
            snprintf(name, sizeof name, "emb_%d_%d.safetensors", stable, dt);
            CHECKF(qembed_embedding_save(e, qt_path(name)) == QEMBED_OK, "embedding_save: %s", qembed_last_error());
            f = open_ok(qt_path(name));
            if (f == NULL) {
                CHECK(0);
                qembed_embedding_free(e);
                continue;
            }
            CHECK(qembed_tensor_file_count(f, &n) == QEMBED_OK && n == np);
            for (k = 0; k < np; k++) {
                qembed_param *prm = NULL;
                static const char *names[3] = {"weight", "norm.weight", "norm.bias"};
                CHECK(qembed_embedding_param(e, k, &prm) == QEMBED_OK);
                compare_param(f, prm, names[k]);
            }
            /* the saved weight recreates the same layer (from_pretrained) */
            {
                int64_t wi = -1;
                qembed_tensor_info wt;
                int64_t ids[4] = {0, 3, 36, 17};
                float a[4 * 19], b[4 * 19];
                CHECK(qembed_tensor_file_find(f, "weight", &wi) == QEMBED_OK);
                wt = info_at(f, wi);
                p.weight = wt.data;
                p.weight_dtype = wt.dtype;
                st = stable ? qembed_stable_embedding_create(&p, &back) : qembed_embedding_create(&p, &back);
                CHECKF(st == QEMBED_OK, "create from the saved weight: %s", qembed_last_error());
                if (st == QEMBED_OK && stable) {
                    for (k = 1; k < 3; k++) {
                        qembed_param *prm = NULL;
                        qembed_tensor_info ti = info_at(f, k);
                        CHECK(qembed_embedding_param(back, k, &prm) == QEMBED_OK &&
                              qembed_param_load(prm, ti.data, ti.dtype, ti.numel) == QEMBED_OK);
                    }
                }
                if (st == QEMBED_OK) {
                    CHECK(qembed_embedding_forward(e, ids, QEMBED_DTYPE_I64, 4, a, QEMBED_DTYPE_F32, 4 * 19) == QEMBED_OK);
                    CHECK(qembed_embedding_forward(back, ids, QEMBED_DTYPE_I64, 4, b, QEMBED_DTYPE_F32, 4 * 19) == QEMBED_OK);
                    CHECKF(memcmp(a, b, sizeof a) == 0, "stable %d dtype %s: lookups of the reloaded layer differ", stable,
                           qembed_dtype_name(dt));
                }
                qembed_embedding_free(back);
            }
            qembed_tensor_file_close(f);
            qembed_embedding_free(e);
        }
    }
    CHECKF(temp_files_left() == 0, "%d temporary files left", temp_files_left());
}

/* ---- cleanup ---------------------------------------------------------------- */

/* The default open owns the file's bytes: truncating the file afterwards
 * changes nothing; QEMBED_OPEN_MMAP maps it (its contract: the file must not
 * change); unknown flags are refused; a FIFO is refused without blocking. */
static void test_open_flags(void) {
    fixture fx;
    qt_rng r = qt_rng_make(12);
    static const int64_t s2[2] = {64, 33};
    LOCAL_PATH(path, "owned.safetensors");
    LOCAL_PATH(fifo, "pipe.safetensors");
    qembed_tensor_file *f = NULL, *m = NULL;
    qembed_tensor_info info;
    float *copy;
    fx.n = 0;
    add_tensor(&fx, "w", QEMBED_DTYPE_F32, 2, s2, &r);
    CHECK(qembed_save_safetensors(path, fx.t, fx.n, NULL, NULL, 0) == QEMBED_OK);
    CHECK(qembed_tensor_file_open_ex(path, 2, &f) == QEMBED_ERR_INVALID_ARGUMENT && f == NULL);
    CHECKF(strstr(qembed_last_error(), "flags") != NULL, "message: %s", qembed_last_error());
    CHECK(qembed_tensor_file_open_ex(NULL, 0, &f) == QEMBED_ERR_NULL_POINTER);
    CHECK(qembed_tensor_file_open_ex(path, QEMBED_OPEN_MMAP, &m) == QEMBED_OK && m != NULL);
    CHECK(qembed_tensor_file_open_ex(path, 0, &f) == QEMBED_OK && f != NULL);
    if (f != NULL && m != NULL) {
        info.struct_size = sizeof info;
        CHECK(qembed_tensor_file_info(f, 0, &info) == QEMBED_OK && info.nbytes == 64 * 33 * 4);
        copy = (float *)malloc((size_t)info.nbytes);
        if (copy == NULL) exit(2);
        memcpy(copy, info.data, (size_t)info.nbytes);
        CHECK(memcmp(copy, fx.t[0].data, (size_t)info.nbytes) == 0);
        qembed_tensor_file_close(m);  /* closed before the truncation: its contract */
        m = NULL;
        CHECK(truncate(path, 16) == 0);
        CHECK(memcmp(info.data, copy, (size_t)info.nbytes) == 0);  /* no SIGBUS, same bytes */
        free(copy);
    }
    qembed_tensor_file_close(f);
    qembed_tensor_file_close(m);
    CHECK(mkfifo(fifo, 0600) == 0);
    f = NULL;
    CHECK(qembed_tensor_file_open(fifo, &f) == QEMBED_ERR_IO && f == NULL);
    CHECKF(strstr(qembed_last_error(), "not a regular file") != NULL, "message: %s", qembed_last_error());
    unlink(fifo);
    free_fixture(&fx);
}

int main(void) {
    qt_dir_make("test-files");
    test_open_flags();
    test_safetensors_roundtrip();
    test_npy();
    test_atomic();
    test_malformed();
    test_bad_args();
    test_embedding_save();
    qt_dir_remove();
    return qt_summary("test_files");
}
