/*
 * fuzz_tensorfile.h - what the file targets do with a file that may or may
 * not be valid: open it, walk every tensor (info, find by name, read every
 * data byte), ask for metadata, and load it as a quantized embedding and look
 * rows up. Oracles beyond "no crash, no sanitizer report":
 *   - an accepted file is self-consistent: ndim <= 8, numel = product of the
 *     shape, nbytes = numel * dtype size for known dtypes, names unique and
 *     found again by qembed_tensor_file_find at their own index;
 *   - out-of-range tensor indices and row indices are rejected, and a
 *     rejected lookup writes nothing (sentinel-filled output unchanged);
 *   - lookups are deterministic (the same row twice gives the same bytes,
 *     alone or inside a batch), which also catches reads of uninitialized
 *     memory that ASan does not see;
 *   - an accepted safetensors file obeys the format's layout rule: its
 *     tensors' bytes add up to exactly the data area (no hole, nothing
 *     before or after them), and no name holds a NUL (each is found again
 *     at its own index);
 *   - opening with QEMBED_OPEN_MMAP accepts or refuses exactly as the
 *     default (owned) open does, with the same tensors.
 */
#ifndef QEMBED_FUZZ_TENSORFILE_H
#define QEMBED_FUZZ_TENSORFILE_H

#include "fuzz_common.h"

static volatile uint64_t fuzz_sink; /* keeps the data reads from being optimized away */

/* The data area of a safetensors file: its size minus 8 minus the header
 * length (-1 when the file is not read as safetensors: .npy magic or short). */
static inline int64_t safetensors_data_bytes(const char *path) {
    unsigned char h[8];
    uint64_t hl = 0;
    long size;
    int k;
    size_t plen = strlen(path);
    FILE *fp;
    if (plen >= 4 && strcmp(path + plen - 4, ".npy") == 0) return -1;  /* read as .npy by its name */
    fp = fopen(path, "rb");
    if (fp == NULL) return -1;
    if (fread(h, 1, 8, fp) != 8 || h[0] == 0x93) { fclose(fp); return -1; }
    fseek(fp, 0, SEEK_END);
    size = ftell(fp);
    fclose(fp);
    for (k = 7; k >= 0; k--) hl = hl << 8 | h[k];
    return (int64_t)size - 8 - (int64_t)hl;
}

static inline void exercise_tensor_file(const char *path) {
    qembed_tensor_file *f = (qembed_tensor_file *)0x1, *m = (qembed_tensor_file *)0x1;
    int64_t n = -1, i, idx, total = 0, mn = -1;
    int complete = 1;  /* every tensor's info was given (> 8 dimensions are refused) */
    const char *value;
    qembed_tensor_info info;
    qembed_status s = qembed_tensor_file_open(path, &f);
    qembed_status sm = qembed_tensor_file_open_ex(path, QEMBED_OPEN_MMAP, &m);
    FUZZ_ASSERT(s == sm);
    if (sm == QEMBED_OK) {
        FUZZ_ASSERT(qembed_tensor_file_count(m, &mn) == QEMBED_OK);
        qembed_tensor_file_close(m);
    }
    if (s != QEMBED_OK) {
        FUZZ_ASSERT(f == NULL);
        FUZZ_ASSERT(s == QEMBED_ERR_FORMAT || s == QEMBED_ERR_IO || s == QEMBED_ERR_UNSUPPORTED);
        FUZZ_ASSERT(qembed_last_error()[0] != '\0');
        return;
    }
    FUZZ_ASSERT(f != NULL);
    FUZZ_ASSERT(qembed_tensor_file_count(f, &n) == QEMBED_OK && n >= 0 && n == mn);
    for (i = 0; i < n; i++) {
        int64_t numel = 1, k, j;
        uint64_t acc = 0;
        const uint8_t *d;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        s = qembed_tensor_file_info(f, i, &info);
        if (s != QEMBED_OK) { /* more than 8 dimensions is the only documented refusal */
            FUZZ_ASSERT(s == QEMBED_ERR_UNSUPPORTED);
            complete = 0;
            continue;
        }
        FUZZ_ASSERT(info.name != NULL && info.dtype_name != NULL);
        FUZZ_ASSERT(info.ndim >= 0 && info.ndim <= QEMBED_MAX_DIMS);
        for (k = 0; k < info.ndim; k++) {
            FUZZ_ASSERT(info.shape[k] >= 0);
            numel *= info.shape[k];
        }
        FUZZ_ASSERT(numel == info.numel);
        FUZZ_ASSERT(info.dtype >= -1 && info.dtype < QEMBED_DTYPE_COUNT);
        if (info.dtype >= 0) FUZZ_ASSERT(info.nbytes == info.numel * (int64_t)qembed_dtype_size(info.dtype));
        FUZZ_ASSERT(info.nbytes >= 0);
        total += info.nbytes;
        /* every data byte is readable (inside the mapping) */
        d = (const uint8_t *)info.data;
        for (j = 0; j < info.nbytes; j++) acc += d[j];
        fuzz_sink += acc + strlen(info.name) + strlen(info.dtype_name);
        /* found again at its own index (names with a NUL are refused on open) */
        idx = -1;
        FUZZ_ASSERT(qembed_tensor_file_find(f, info.name, &idx) == QEMBED_OK && idx == i);
    }
    {
        int64_t area = safetensors_data_bytes(path);
        if (area >= 0 && complete) FUZZ_ASSERT(total == area);
    }
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    FUZZ_ASSERT(qembed_tensor_file_info(f, n, &info) == QEMBED_ERR_OUT_OF_RANGE);
    FUZZ_ASSERT(qembed_tensor_file_info(f, -1, &info) == QEMBED_ERR_OUT_OF_RANGE);
    idx = 12345;
    s = qembed_tensor_file_find(f, "weight", &idx);
    FUZZ_ASSERT(s == QEMBED_OK ? (idx >= 0 && idx < n) : idx == 12345);
    s = qembed_tensor_file_find(f, "\x01no such tensor\x02", &idx);
    FUZZ_ASSERT(s == QEMBED_ERR_INVALID_ARGUMENT || (s == QEMBED_OK && idx >= 0 && idx < n));
    value = NULL;
    FUZZ_ASSERT(qembed_tensor_file_metadata(f, "format", &value) == QEMBED_OK);
    if (value != NULL) fuzz_sink += strlen(value);
    FUZZ_ASSERT(qembed_tensor_file_metadata(f, "qembed.prefix", &value) == QEMBED_OK);
    if (value != NULL) fuzz_sink += strlen(value);
    FUZZ_ASSERT(qembed_tensor_file_metadata(f, "", &value) == QEMBED_OK);
    qembed_tensor_file_close(f);
}

#define FUZZ_SENTINEL 0xA5

static inline int all_sentinel(const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    size_t i;
    for (i = 0; i < n; i++)
        if (b[i] != FUZZ_SENTINEL) return 0;
    return 1;
}

/* Lookups on a loaded quantized layer. Output buffers are allocated at
 * exactly the documented size, so ASan sees a single byte written past it. */
static inline void exercise_qembedding(const qembed_qembedding *q) {
    qembed_qembedding_info qi;
    int64_t rows, dim, picks[4], k;
    int od;
    memset(&qi, 0, sizeof qi);
    qi.struct_size = sizeof qi;
    FUZZ_ASSERT(qembed_qembedding_info_get(q, &qi) == QEMBED_OK);
    FUZZ_ASSERT(qi.kind >= 0 && qi.kind < QEMBED_QEMB_COUNT);
    FUZZ_ASSERT(qi.num_embeddings >= 1 && qi.embedding_dim >= 1);
    FUZZ_ASSERT(qi.table_bytes >= 0);
    rows = qi.num_embeddings;
    dim = qi.embedding_dim;
    if (dim > (1 << 22)) return; /* the rows are backed by file bytes; keep memory bounded anyway */
    picks[0] = 0;
    picks[1] = rows - 1;
    picks[2] = rows / 2;
    picks[3] = rows > 1 ? 1 : 0;
    for (od = 0; od < 3; od++) {
        const size_t es = qembed_dtype_size(od);
        uint8_t *batch = (uint8_t *)malloc((size_t)(4 * dim) * es);
        uint8_t *one = (uint8_t *)malloc((size_t)dim * es);
        int64_t bad[2];
        FUZZ_ASSERT(batch != NULL && one != NULL);
        FUZZ_ASSERT(qembed_qembedding_forward(q, picks, QEMBED_DTYPE_I64, 4, batch, od, 4 * dim) == QEMBED_OK);
        for (k = 0; k < 4; k++) {
            int32_t i32 = (int32_t)picks[k];
            if (picks[k] > INT32_MAX) continue;
            memset(one, 0, (size_t)dim * es);
            FUZZ_ASSERT(qembed_qembedding_forward(q, &i32, QEMBED_DTYPE_I32, 1, one, od, dim) == QEMBED_OK);
            FUZZ_ASSERT(memcmp(one, batch + (size_t)(k * dim) * es, (size_t)dim * es) == 0);
        }
        /* rejected lookups write nothing */
        bad[0] = 0;
        bad[1] = rows;
        memset(batch, FUZZ_SENTINEL, (size_t)(2 * dim) * es);
        FUZZ_ASSERT(qembed_qembedding_forward(q, bad, QEMBED_DTYPE_I64, 2, batch, od, 2 * dim) == QEMBED_ERR_OUT_OF_RANGE);
        FUZZ_ASSERT(all_sentinel(batch, (size_t)(2 * dim) * es));
        bad[1] = -1;
        FUZZ_ASSERT(qembed_qembedding_forward(q, bad, QEMBED_DTYPE_I64, 2, batch, od, 2 * dim) == QEMBED_ERR_OUT_OF_RANGE);
        FUZZ_ASSERT(all_sentinel(batch, (size_t)(2 * dim) * es));
        FUZZ_ASSERT(qembed_qembedding_forward(q, picks, QEMBED_DTYPE_I64, 2, batch, od, 2 * dim - 1) ==
                    QEMBED_ERR_BUFFER_TOO_SMALL);
        FUZZ_ASSERT(all_sentinel(batch, (size_t)(2 * dim) * es));
        free(batch);
        free(one);
    }
}

static inline void exercise_qembedding_load(const char *path, const char *prefix) {
    qembed_qembedding *q = (qembed_qembedding *)0x1;
    qembed_status s = qembed_qembedding_load(path, prefix, &q);
    if (getenv("QEMBED_FUZZ_VERBOSE") != NULL) /* replaying by hand: say what the loader decided */
        fprintf(stderr, "qembed_qembedding_load(%s): %s%s%s\n", prefix ? prefix : "weight", qembed_status_string(s),
                s == QEMBED_OK ? "" : ": ", s == QEMBED_OK ? "" : qembed_last_error());
    if (s != QEMBED_OK) {
        FUZZ_ASSERT(q == NULL);
        FUZZ_ASSERT(s != QEMBED_ERR_INTERNAL && s != QEMBED_ERR_NULL_POINTER);
        FUZZ_ASSERT(qembed_last_error()[0] != '\0');
        return;
    }
    FUZZ_ASSERT(q != NULL);
    exercise_qembedding(q);
    qembed_qembedding_free(q);
}

#endif /* QEMBED_FUZZ_TENSORFILE_H */
