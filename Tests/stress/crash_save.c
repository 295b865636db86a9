/*
 * crash_save.c - qembed's saves are atomic under crashes and write failures
 * ("Writes are atomic" in the Tensor files section of qembed.h).
 *
 *   crash_save [--kills N] [--dir DIR]
 *
 * For each writer - qembed_qembedding_save (int8 table 8192 x 512, 4 MB),
 * qembed_save_safetensors (f32 4096 x 1024 + i64 ids + metadata, 16 MB),
 * qembed_save_npy (f32 4096 x 1024, 16 MB) and qembed_embedding_save
 * (Embedding 4096 x 1024, 16 MB) - two versions A and B of the content are
 * saved once to reference files. Then:
 *
 * 1. Kill test (N rounds per writer, default 6): a forked child saves B, A,
 *    B, A, ... over one path in a loop; the parent SIGKILLs it after a random
 *    0-250 ms, and then checks that
 *      - the file at the path is byte-for-byte version A or version B (old or
 *        new content, never a mix or a truncation), and opens and validates
 *        (qembed_tensor_file_open; qembed_qembedding_load plus lookups equal
 *        to the in-memory layer for the quantized table);
 *      - the directory holds nothing else but at most one temporary file
 *        "<path>.tmp-XXXXXX": the one the killed child was writing. Such a
 *        file is never mistaken for the file (it has another name); the test
 *        deletes it, as a cleanup job would, before the next round.
 * 2. Write failure: a child with RLIMIT_FSIZE = 1 MB and SIGXFSZ ignored (so
 *    write() fails with EFBIG instead of killing it) saves B over A: the save
 *    must return QEMBED_ERR_IO with a message, leave no temporary file, and
 *    the file must still be A, byte for byte, and load.
 * 3. Other failing saves (missing directory, path that is a directory) return
 *    QEMBED_ERR_IO and leave nothing behind.
 *
 * SIGKILL tests process crashes, not power loss: that the data is on disk
 * after fsync + rename + directory fsync cannot be checked without crashing
 * the machine. The children set qembed_set_num_threads(1) first: no
 * libdispatch worker threads are started after fork(). Ends with
 * "crash_save: P passed, F failed".
 */
#define _GNU_SOURCE 1
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qembed.h"

enum { W_QEMBEDDING, W_SAFETENSORS, W_NPY, W_EMBEDDING, W_COUNT };
static const char *wname[W_COUNT] = {"qembed_qembedding_save", "qembed_save_safetensors", "qembed_save_npy",
                                     "qembed_embedding_save"};
static const char *wfile[W_COUNT] = {"table_int8.safetensors", "tables.safetensors", "table.npy", "layer.safetensors"};

#define QROWS 8192
#define QDIM 512
#define FROWS 4096
#define FDIM 1024

static qembed_qembedding *qv[2];
static float *tv[2];     /* f32 tables */
static int64_t ids[2][1000];
static qembed_embedding *ev[2];
static uint8_t *ref[W_COUNT][2];
static size_t ref_size[W_COUNT][2];

static long passed, failed;

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        if (cond) {                                                      \
            passed++;                                                    \
        } else {                                                         \
            failed++;                                                    \
            fprintf(stderr, "crash_save: FAILED: %s: ", #cond);          \
            fprintf(stderr, __VA_ARGS__);                                \
            fputc('\n', stderr);                                         \
        }                                                                \
    } while (0)

static void die(const char *what) {
    fprintf(stderr, "crash_save: %s: %s (%s)\n", what, qembed_last_error(), strerror(errno));
    exit(2);
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static qembed_status save(int w, int v, const char *path) {
    switch (w) {
    case W_QEMBEDDING: return qembed_qembedding_save(qv[v], path, "embed");
    case W_SAFETENSORS: {
        static const char *keys[2] = {"format", "version"};
        const char *vals[2] = {"pt", v ? "B" : "A"};
        qembed_tensor_desc t[2];
        memset(t, 0, sizeof t);
        t[0].name = "table";
        t[0].dtype = QEMBED_DTYPE_F32;
        t[0].ndim = 2;
        t[0].shape[0] = FROWS;
        t[0].shape[1] = FDIM;
        t[0].data = tv[v];
        t[1].name = "ids";
        t[1].dtype = QEMBED_DTYPE_I64;
        t[1].ndim = 1;
        t[1].shape[0] = 1000;
        t[1].data = ids[v];
        return qembed_save_safetensors(path, t, 2, keys, vals, 2);
    }
    case W_NPY: {
        qembed_tensor_desc t;
        memset(&t, 0, sizeof t);
        t.name = "array";
        t.dtype = QEMBED_DTYPE_F32;
        t.ndim = 2;
        t.shape[0] = FROWS;
        t.shape[1] = FDIM;
        t.data = tv[v];
        return qembed_save_npy(path, &t);
    }
    default: return qembed_embedding_save(ev[v], path);
    }
}

static uint8_t *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    struct stat st;
    if (f == NULL) return NULL;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return NULL;
    }
    buf = (uint8_t *)malloc((size_t)st.st_size + 1);
    if (buf == NULL || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = (size_t)st.st_size;
    return buf;
}

/* Which version the file at path is (0 = A, 1 = B), or -1 (missing, partial, other). */
static int version_of(int w, const char *path) {
    size_t n = 0;
    uint8_t *b = read_all(path, &n);
    int v = -1, k;
    if (b == NULL) return -1;
    for (k = 0; k < 2; k++)
        if (n == ref_size[w][k] && memcmp(b, ref[w][k], n) == 0) v = k;
    free(b);
    return v;
}

/* The file opens and validates through the API; for the quantized table the
 * loaded layer's lookups equal the in-memory layer's. */
static int opens(int w, int v, const char *path) {
    qembed_tensor_file *f = NULL;
    int64_t n = 0;
    int ok;
    if (qembed_tensor_file_open(path, &f) != QEMBED_OK) return 0;
    ok = qembed_tensor_file_count(f, &n) == QEMBED_OK && n >= 1;
    qembed_tensor_file_close(f);
    if (ok && w == W_QEMBEDDING) {
        qembed_qembedding *q = NULL;
        static float a[4 * QDIM], b[4 * QDIM];
        const int64_t rows[4] = {0, 1, QROWS / 2, QROWS - 1};
        ok = qembed_qembedding_load(path, "embed", &q) == QEMBED_OK &&
             qembed_qembedding_forward(q, rows, QEMBED_DTYPE_I64, 4, a, QEMBED_DTYPE_F32, 4 * QDIM) == QEMBED_OK &&
             qembed_qembedding_forward(qv[v], rows, QEMBED_DTYPE_I64, 4, b, QEMBED_DTYPE_F32, 4 * QDIM) == QEMBED_OK &&
             memcmp(a, b, sizeof a) == 0;
        qembed_qembedding_free(q);
    }
    return ok;
}

/* Entries of dir other than `keep`: temporaries "<keep>.tmp-XXXXXX" are
 * counted (and deleted when `remove_tmp`), anything else is counted as other. */
static void scan_dir(const char *dir, const char *keep, int remove_tmp, int *tmps, int *others) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char prefix[256];
    *tmps = *others = 0;
    snprintf(prefix, sizeof prefix, "%s.tmp-", keep);
    if (d == NULL) die("opendir");
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 || strcmp(de->d_name, keep) == 0) continue;
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0 && strlen(de->d_name) == strlen(prefix) + 6) {
            (*tmps)++;
            if (remove_tmp) {
                char p[1024];
                snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
                unlink(p);
            }
        } else {
            (*others)++;
            fprintf(stderr, "crash_save: unexpected file %s/%s\n", dir, de->d_name);
        }
    }
    closedir(d);
}

static void make_data(void) {
    int v;
    int64_t i;
    for (v = 0; v < 2; v++) {
        uint64_t s = 1000 + (uint64_t)v;
        qembed_embedding_params p;
        float *q = (float *)malloc((size_t)QROWS * QDIM * 4);
        tv[v] = (float *)malloc((size_t)FROWS * FDIM * 4);
        if (q == NULL || tv[v] == NULL) die("malloc");
        for (i = 0; i < (int64_t)QROWS * QDIM; i++) q[i] = (float)((int64_t)(rng_next(&s) >> 41) - (1 << 22)) / (1 << 20);
        for (i = 0; i < (int64_t)FROWS * FDIM; i++) tv[v][i] = (float)((int64_t)(rng_next(&s) >> 41) - (1 << 22)) / (1 << 20);
        for (i = 0; i < 1000; i++) ids[v][i] = (int64_t)rng_next(&s);
        if (qembed_qembedding_quantize(q, QEMBED_DTYPE_F32, QROWS, QDIM, QEMBED_QEMB_INT8, 0, false, &qv[v]) != QEMBED_OK)
            die("quantize");
        free(q);
        qembed_embedding_params_init(&p);
        p.num_embeddings = FROWS;
        p.embedding_dim = FDIM;
        p.seed = 77 + (uint64_t)v;
        if (qembed_embedding_create(&p, &ev[v]) != QEMBED_OK) die("embedding_create");
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int kills = 6, w, i, k;
    char dir[512], refdir[512], path[1024];
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    uint64_t s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    long total_kills = 0, during_save = 0, saw_new = 0, saw_old = 0;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--kills") == 0 && i + 1 < argc) kills = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) base = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--kills N] [--dir DIR]\n", argv[0]);
            return 2;
        }
    }
    snprintf(dir, sizeof dir, "%s/qembed-crash-save-XXXXXX", base);
    snprintf(refdir, sizeof refdir, "%s/qembed-crash-ref-XXXXXX", base);
    if (mkdtemp(dir) == NULL || mkdtemp(refdir) == NULL) die("mkdtemp");
    make_data();
    printf("crash_save: in %s (random seed %llu)\n", dir, (unsigned long long)s);

    for (w = 0; w < W_COUNT; w++) {
        int v;
        double t0 = now_s();
        for (v = 0; v < 2; v++) {
            snprintf(path, sizeof path, "%s/%c_%s", refdir, 'A' + v, wfile[w]);
            if (save(w, v, path) != QEMBED_OK) die("reference save");
            ref[w][v] = read_all(path, &ref_size[w][v]);
            if (ref[w][v] == NULL) die("read reference");
            unlink(path);
        }
        printf("crash_save: %s: %zu-byte file, one save %.0f ms\n", wname[w], ref_size[w][0], (now_s() - t0) * 500.0);
    }
    rmdir(refdir);

    /* 1. SIGKILL at random moments */
    for (w = 0; w < W_COUNT; w++) {
        int tmp_left = 0, news = 0;
        snprintf(path, sizeof path, "%s/%s", dir, wfile[w]);
        if (save(w, 0, path) != QEMBED_OK) die("initial save");
        for (k = 0; k < kills; k++) {
            int v, tmps, others, st;
            const int prev = version_of(w, path);
            pid_t pid = fork();
            if (pid < 0) die("fork");
            if (pid == 0) {
                int n;
                qembed_set_num_threads(1); /* no libdispatch worker threads after fork */
                for (n = 1;; n++)
                    if (save(w, (prev + n) % 2, path) != QEMBED_OK) _exit(3);
            }
            usleep((useconds_t)(rng_next(&s) % 250000));
            kill(pid, SIGKILL);
            if (waitpid(pid, &st, 0) != pid) die("waitpid");
            CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s: the saving child did not die by SIGKILL (status %d)",
                  wname[w], st);
            total_kills++;
            v = version_of(w, path);
            CHECK(v == 0 || v == 1, "%s, kill %d: the file is neither the old nor the new content", wname[w], k);
            if (v == 0 || v == 1) {
                CHECK(opens(w, v, path), "%s, kill %d: the file does not open/validate: %s", wname[w], k,
                      qembed_last_error());
                if (v != prev) news++;
            }
            scan_dir(dir, wfile[w], 1, &tmps, &others);
            CHECK(tmps <= 1 && others == 0, "%s, kill %d: %d temporary and %d other files left", wname[w], k, tmps, others);
            tmp_left += tmps;
        }
        printf("crash_save: %s: %d kills, %d during a save (temporary file left); the file held the other version "
               "after %d kills, the same one after %d (no save or an even number completed); always complete and valid\n",
               wname[w], kills, tmp_left, news, kills - news);
        during_save += tmp_left;
        saw_new += news;
        saw_old += kills - news;
        unlink(path);
    }

    /* 2. a write failure (file size limit) keeps the previous file */
    for (w = 0; w < W_COUNT; w++) {
        int st, tmps, others;
        pid_t pid;
        snprintf(path, sizeof path, "%s/%s", dir, wfile[w]);
        if (save(w, 0, path) != QEMBED_OK) die("save A");
        pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            struct rlimit rl;
            qembed_status r;
            qembed_set_num_threads(1);
            signal(SIGXFSZ, SIG_IGN);
            rl.rlim_cur = rl.rlim_max = 1 << 20;
            if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(100);
            r = save(w, 1, path);
            if (r != QEMBED_OK) fprintf(stderr, "crash_save: (expected) %s under a 1 MB file size limit: %s: %s\n",
                                        wname[w], qembed_status_string(r), qembed_last_error());
            _exit(r == QEMBED_OK ? 101 : (r == QEMBED_ERR_IO && qembed_last_error()[0] != '\0') ? 0 : 102);
        }
        if (waitpid(pid, &st, 0) != pid) die("waitpid");
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: the save under RLIMIT_FSIZE did not fail with QEMBED_ERR_IO "
              "(child status %d)", wname[w], WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        CHECK(version_of(w, path) == 0, "%s: the previous file changed after a failed save", wname[w]);
        CHECK(opens(w, 0, path), "%s: the previous file does not load after a failed save", wname[w]);
        scan_dir(dir, wfile[w], 1, &tmps, &others);
        CHECK(tmps == 0 && others == 0, "%s: a failed save left %d temporary and %d other files", wname[w], tmps, others);
        unlink(path);
    }

    /* 3. saves that cannot even start */
    for (w = 0; w < W_COUNT; w++) {
        int tmps, others;
        qembed_status r;
        snprintf(path, sizeof path, "%s/no-such-dir/%s", dir, wfile[w]);
        r = save(w, 0, path);
        CHECK(r == QEMBED_ERR_IO, "%s into a missing directory: %s", wname[w], qembed_status_string(r));
        snprintf(path, sizeof path, "%s/%s", dir, wfile[w]);
        if (mkdir(path, 0755) != 0) die("mkdir");
        r = save(w, 0, path);
        CHECK(r == QEMBED_ERR_IO, "%s over a directory: %s", wname[w], qembed_status_string(r));
        rmdir(path);
        scan_dir(dir, wfile[w], 0, &tmps, &others);
        CHECK(tmps == 0 && others == 0, "%s: failed saves left %d temporary and %d other files", wname[w], tmps, others);
    }

    printf("crash_save: %ld SIGKILLs in all (%ld during a save), file the same version %ld / the other %ld times, never partial; "
           "write failures under RLIMIT_FSIZE kept the previous file for all %d writers\n",
           total_kills, during_save, saw_old, saw_new, W_COUNT);
    for (i = 0; i < 2; i++) {
        qembed_qembedding_free(qv[i]);
        qembed_embedding_free(ev[i]);
        free(tv[i]);
        for (w = 0; w < W_COUNT; w++) free(ref[w][i]);
    }
    rmdir(dir);
    printf("crash_save: %ld passed, %ld failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
