/*
 * stress.c - concurrency stress of libqembed (issue 7).
 *
 *   stress [--readers N] [--churners N] [--seconds S]
 *
 * Shared, created once in main:
 *   E   Embedding       2000 x 64, f32
 *   S   StableEmbedding 1000 x 48, bf16 weight
 *   Q4  NF4 (nested statistics, blocksize 64) quantized from E
 *   Q8  int8 row-wise quantized from an f16 table 1500 x 40
 *   F4  FP4 blocksize 128 loaded back from a safetensors file (mapped table)
 * Reference outputs of 64 index batches on each shared layer are computed
 * single-threaded first. Then, for S seconds:
 *   - N reader threads (default 8) look up random batches on all five shared
 *     layers (f32, f16 or bf16 output) and compare every output byte for byte
 *     with the single-threaded reference; every 64th iteration each makes a
 *     call fail with an index only it uses and checks that
 *     qembed_last_error() names that index (the message is per thread);
 *   - M churn threads (default 4) each create their own Embedding or
 *     StableEmbedding (dense or sparse, f32/f16/bf16), an optimizer of every
 *     kind with 32- or 8-bit state, run forward/backward/step/zero_grad
 *     cycles, quantize their layer (from_embedding) and look it up, and free
 *     everything; they also accumulate gradients into the shared E (backward
 *     takes E's exclusive lock while the readers hold shared ones; the weights
 *     do not change, so the readers' references stay valid) and switch the
 *     process-wide kernel thread count (qembed_set_num_threads 1..4, which
 *     must not change any result).
 * Prints threads x operations and "stress: P passed, F failed" (P counts
 * the checks that held). Exit status 1 on any mismatch or unexpected error.
 * Built against the release library by Tests/stress/run.sh and with
 * -fsanitize=thread against a TSan library by tools/sanitize.sh.
 */
#define _GNU_SOURCE 1
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qembed.h"

#define NBATCH 64
#define BATCH 48
#define NLAYERS 5

static const char *layer_names[NLAYERS] = {"Embedding", "StableEmbedding", "NF4", "int8", "FP4(loaded)"};

static qembed_embedding *E, *S;
static qembed_qembedding *Q4, *Q8, *F4;
static int64_t rows_of[NLAYERS], dim_of[NLAYERS];
static int64_t batches[NLAYERS][NBATCH][BATCH];
static uint8_t *reference[NLAYERS][NBATCH][3]; /* per out dtype: f32, f16, bf16 */

static atomic_int stop;
static atomic_long checks_passed, checks_failed;
static atomic_long lookups, error_checks, churn_cycles, churn_steps, churn_quantized, shared_backwards, thread_switches;

static void die(const char *what) {
    fprintf(stderr, "stress: %s failed: %s\n", what, qembed_last_error());
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "stress: out of memory\n");
        exit(2);
    }
    return p;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static float rng_float(uint64_t *s) { return (float)((int64_t)(rng_next(s) >> 40) - (1 << 23)) / (float)(1 << 23); }

static void fail(const char *fmt, const char *a, long b, long c) {
    atomic_fetch_add(&checks_failed, 1);
    if (atomic_load(&checks_failed) <= 20) {
        fprintf(stderr, "stress: FAILED: ");
        fprintf(stderr, fmt, a, b, c);
        fputc('\n', stderr);
    }
}

static qembed_status lookup(int layer, const int64_t *idx, int64_t count, void *out, int od) {
    const int64_t len = count * dim_of[layer];
    switch (layer) {
    case 0: return qembed_embedding_forward(E, idx, QEMBED_DTYPE_I64, count, out, od, len);
    case 1: return qembed_embedding_forward(S, idx, QEMBED_DTYPE_I64, count, out, od, len);
    case 2: return qembed_qembedding_forward(Q4, idx, QEMBED_DTYPE_I64, count, out, od, len);
    case 3: return qembed_qembedding_forward(Q8, idx, QEMBED_DTYPE_I64, count, out, od, len);
    default: return qembed_qembedding_forward(F4, idx, QEMBED_DTYPE_I64, count, out, od, len);
    }
}

static size_t out_bytes(int layer, int od) { return (size_t)(BATCH * dim_of[layer]) * qembed_dtype_size(od); }

/* ---- readers ---------------------------------------------------------------- */

static void *reader(void *arg) {
    const long id = (long)(intptr_t)arg;
    uint64_t s = 0x1234567ull + (uint64_t)id * 7919;
    uint8_t *out = (uint8_t *)xmalloc(out_bytes(0, QEMBED_DTYPE_F32) * 2);
    long iter = 0;
    while (!atomic_load(&stop)) {
        const int layer = (int)(rng_next(&s) % NLAYERS);
        const int b = (int)(rng_next(&s) % NBATCH);
        const int od = (int)(rng_next(&s) % 3);
        if (lookup(layer, batches[layer][b], BATCH, out, od) != QEMBED_OK) {
            fail("%s lookup by reader %ld failed (batch %ld)", layer_names[layer], id, b);
        } else if (memcmp(out, reference[layer][b][od], out_bytes(layer, od)) != 0) {
            fail("%s lookup by reader %ld differs from the single-threaded result (batch %ld)", layer_names[layer], id, b);
        } else {
            atomic_fetch_add(&checks_passed, 1);
        }
        atomic_fetch_add(&lookups, 1);
        if (++iter % 64 == 0) {
            /* a failing call whose message only this thread can produce */
            int64_t bad = rows_of[layer] + 1000 + id;
            char want[64];
            qembed_status st = lookup(layer, &bad, 1, out, QEMBED_DTYPE_F32);
            snprintf(want, sizeof want, "%lld", (long long)bad);
            usleep(50); /* let other threads fail in between */
            if (st != QEMBED_ERR_OUT_OF_RANGE || strstr(qembed_last_error(), want) == NULL)
                fail("reader %s/%ld: last_error does not name its own index (%ld)", layer_names[layer], id, (long)bad);
            else
                atomic_fetch_add(&checks_passed, 1);
            atomic_fetch_add(&error_checks, 1);
        }
    }
    free(out);
    return NULL;
}

/* ---- churners --------------------------------------------------------------- */

static void *churner(void *arg) {
    const long id = (long)(intptr_t)arg;
    uint64_t s = 0xABCDEFull + (uint64_t)id * 104729;
    long cycle = 0;
    while (!atomic_load(&stop)) {
        qembed_embedding_params p;
        qembed_embedding *e = NULL;
        qembed_optimizer_params op;
        qembed_optimizer *o = NULL;
        qembed_param *params[3];
        int64_t np = 0, i, k;
        const int stable = (int)(rng_next(&s) & 1);
        const int kind = (int)(rng_next(&s) % QEMBED_OPTIM_COUNT);
        const int bits = (rng_next(&s) & 1) ? 8 : 32;
        const int64_t n = 64 + (int64_t)(rng_next(&s) % 200), d = 8 + (int64_t)(rng_next(&s) % 40);
        int64_t idx[32];
        float *out, *grad;
        qembed_embedding_params_init(&p);
        p.num_embeddings = n;
        p.embedding_dim = d;
        p.seed = rng_next(&s);
        p.sparse = (rng_next(&s) & 1) != 0;
        p.dtype = (int)(rng_next(&s) % 3);
        p.padding_idx = (rng_next(&s) & 1) ? 0 : QEMBED_NO_PADDING;
        if ((stable ? qembed_stable_embedding_create(&p, &e) : qembed_embedding_create(&p, &e)) != QEMBED_OK)
            die("create");
        if (qembed_embedding_num_params(e, &np) != QEMBED_OK || np < 1 || np > 3) die("num_params");
        for (i = 0; i < np; i++)
            if (qembed_embedding_param(e, i, &params[i]) != QEMBED_OK) die("param");
        /* 8-bit state on the weight too (Embedding pins 32 by default) */
        if (bits == 8 && qembed_param_set_override(params[0], QEMBED_OVERRIDE_OPTIM_BITS, 8) != QEMBED_OK) die("override");
        if (qembed_optimizer_params_init(&op, kind, bits) != QEMBED_OK) die("optimizer_params_init");
        op.min_8bit_size = 16;
        if (qembed_optimizer_create(&op, params, np, &o) != QEMBED_OK) die("optimizer_create");
        out = (float *)xmalloc((size_t)(32 * d) * 4);
        grad = (float *)xmalloc((size_t)(32 * d) * 4);
        for (k = 0; k < 4 && !atomic_load(&stop); k++) {
            for (i = 0; i < 32; i++) idx[i] = (int64_t)(rng_next(&s) % (uint64_t)n);
            for (i = 0; i < 32 * d; i++) grad[i] = rng_float(&s);
            if (qembed_embedding_forward(e, idx, QEMBED_DTYPE_I64, 32, out, QEMBED_DTYPE_F32, 32 * d) != QEMBED_OK)
                fail("churner %s%ld: forward failed (%ld)", "", id, k);
            if (qembed_embedding_backward(e, idx, QEMBED_DTYPE_I64, 32, grad, QEMBED_DTYPE_F32, 32 * d) != QEMBED_OK)
                fail("churner %s%ld: backward failed (%ld)", "", id, k);
            if (qembed_optimizer_step(o) != QEMBED_OK) fail("churner %s%ld: step failed (%ld): see last_error", "", id, k);
            if (qembed_optimizer_zero_grad(o) != QEMBED_OK) fail("churner %s%ld: zero_grad failed (%ld)", "", id, k);
            atomic_fetch_add(&churn_steps, 1);
        }
        if (cycle % 3 == 0) { /* quantize the trained layer and look it up */
            qembed_qembedding *q = NULL;
            const int qk = (int)(cycle / 3 % 3);
            if (qembed_qembedding_from_embedding(e, qk, 64, qk == QEMBED_QEMB_NF4, &q) != QEMBED_OK) die("from_embedding");
            if (qembed_qembedding_forward(q, idx, QEMBED_DTYPE_I64, 32, out, QEMBED_DTYPE_F32, 32 * d) != QEMBED_OK)
                fail("churner %s%ld: quantized lookup failed (%ld)", "", id, cycle);
            qembed_qembedding_free(q);
            atomic_fetch_add(&churn_quantized, 1);
        }
        /* gradients into the shared layer (weights unchanged) */
        {
            const int64_t dE = dim_of[0];
            float *g = (float *)xmalloc((size_t)(8 * dE) * 4);
            int64_t ei[8];
            for (i = 0; i < 8; i++) ei[i] = (int64_t)(rng_next(&s) % (uint64_t)rows_of[0]);
            for (i = 0; i < 8 * dE; i++) g[i] = rng_float(&s) * 1e-3f;
            if (qembed_embedding_backward(E, ei, QEMBED_DTYPE_I64, 8, g, QEMBED_DTYPE_F32, 8 * dE) != QEMBED_OK)
                fail("churner %s%ld: backward into the shared layer failed (%ld)", "", id, cycle);
            if (cycle % 16 == 0 && qembed_embedding_zero_grad(E) != QEMBED_OK) fail("churner %s%ld: zero_grad (%ld)", "", id, cycle);
            free(g);
            atomic_fetch_add(&shared_backwards, 1);
        }
        if (cycle % 8 == 7) { /* process-wide kernel threads: results must not depend on it */
            if (qembed_set_num_threads((int)(1 + rng_next(&s) % 4)) != QEMBED_OK) die("set_num_threads");
            atomic_fetch_add(&thread_switches, 1);
        }
        free(out);
        free(grad);
        qembed_optimizer_free(o);
        qembed_embedding_free(e);
        cycle++;
        atomic_fetch_add(&churn_cycles, 1);
    }
    return NULL;
}

/* ---- setup -------------------------------------------------------------------- */

static void make_shared(const char *dir) {
    qembed_embedding_params p;
    uint64_t s = 42;
    int64_t i, l, b;
    char path[512];
    uint16_t *f16 = (uint16_t *)xmalloc(1500 * 40 * 2);
    float *fp4w = (float *)xmalloc(777 * 96 * 4);
    qembed_qembedding *tmp = NULL;

    qembed_embedding_params_init(&p);
    p.num_embeddings = 2000;
    p.embedding_dim = 64;
    p.seed = 7;
    if (qembed_embedding_create(&p, &E) != QEMBED_OK) die("Embedding");
    p.num_embeddings = 1000;
    p.embedding_dim = 48;
    p.dtype = QEMBED_DTYPE_BF16;
    p.padding_idx = 3;
    if (qembed_stable_embedding_create(&p, &S) != QEMBED_OK) die("StableEmbedding");
    if (qembed_qembedding_from_embedding(E, QEMBED_QEMB_NF4, 64, true, &Q4) != QEMBED_OK) die("NF4");
    for (i = 0; i < 1500 * 40; i++) { /* f16 values k/256 in [-2, 2): exact */
        int v = (int)(rng_next(&s) % 1024) - 512;
        uint16_t h = 0;
        if (v != 0) {
            int a = v < 0 ? -v : v, e = 0;
            while ((a >> e) > 1) e++;
            h = (uint16_t)((v < 0 ? 0x8000 : 0) | ((e - 8 + 15) << 10) | ((a << (10 - e)) & 0x3FF));
        }
        f16[i] = h;
    }
    if (qembed_qembedding_quantize(f16, QEMBED_DTYPE_F16, 1500, 40, QEMBED_QEMB_INT8, 0, false, &Q8) != QEMBED_OK)
        die("int8");
    for (i = 0; i < 777 * 96; i++) fp4w[i] = rng_float(&s) * 3.0f;
    if (qembed_qembedding_quantize(fp4w, QEMBED_DTYPE_F32, 777, 96, QEMBED_QEMB_FP4, 128, false, &tmp) != QEMBED_OK)
        die("FP4");
    snprintf(path, sizeof path, "%s/fp4.safetensors", dir);
    if (qembed_qembedding_save(tmp, path, "emb") != QEMBED_OK) die("save FP4");
    qembed_qembedding_free(tmp);
    if (qembed_qembedding_load(path, "emb", &F4) != QEMBED_OK) die("load FP4");
    unlink(path); /* the mapping stays valid */
    free(f16);
    free(fp4w);

    rows_of[0] = 2000, dim_of[0] = 64;
    rows_of[1] = 1000, dim_of[1] = 48;
    rows_of[2] = 2000, dim_of[2] = 64;
    rows_of[3] = 1500, dim_of[3] = 40;
    rows_of[4] = 777, dim_of[4] = 96;
    for (l = 0; l < NLAYERS; l++)
        for (b = 0; b < NBATCH; b++) {
            int od;
            for (i = 0; i < BATCH; i++) batches[l][b][i] = (int64_t)(rng_next(&s) % (uint64_t)rows_of[l]);
            for (od = 0; od < 3; od++) {
                reference[l][b][od] = (uint8_t *)xmalloc(out_bytes((int)l, od));
                if (lookup((int)l, batches[l][b], BATCH, reference[l][b][od], od) != QEMBED_OK) die("reference lookup");
            }
        }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int readers = 8, churners = 4, i;
    double seconds = 5.0, t0, t1;
    pthread_t th[256];
    char dir[] = "/tmp/qembed-stress-XXXXXX";
    long passed, failed;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--readers") == 0 && i + 1 < argc) readers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--churners") == 0 && i + 1 < argc) churners = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--readers N] [--churners N] [--seconds S]\n", argv[0]);
            return 2;
        }
    }
    if (readers < 1 || churners < 0 || readers + churners > 256 || seconds <= 0) {
        fprintf(stderr, "stress: bad arguments\n");
        return 2;
    }
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    make_shared(dir);
    rmdir(dir);
    printf("stress: %d reader threads on 5 shared layers (Embedding 2000x64, StableEmbedding bf16 1000x48, NF4 nested, "
           "int8, FP4 loaded from a file), %d churn threads, %.1f s, %d cores\n",
           readers, churners, seconds, (int)sysconf(_SC_NPROCESSORS_ONLN));
    fflush(stdout);
    t0 = now_s();
    for (i = 0; i < readers; i++)
        if (pthread_create(&th[i], NULL, reader, (void *)(intptr_t)i) != 0) die("pthread_create");
    for (i = 0; i < churners; i++)
        if (pthread_create(&th[readers + i], NULL, churner, (void *)(intptr_t)i) != 0) die("pthread_create");
    while (now_s() - t0 < seconds) usleep(20000);
    atomic_store(&stop, 1);
    for (i = 0; i < readers + churners; i++) pthread_join(th[i], NULL);
    t1 = now_s();
    qembed_set_num_threads(0);

    /* the shared layers still give the reference results */
    {
        int l, b, od;
        uint8_t *out = (uint8_t *)xmalloc(out_bytes(0, QEMBED_DTYPE_F32) * 2);
        for (l = 0; l < NLAYERS; l++)
            for (b = 0; b < NBATCH; b++)
                for (od = 0; od < 3; od++) {
                    if (lookup(l, batches[l][b], BATCH, out, od) != QEMBED_OK ||
                        memcmp(out, reference[l][b][od], out_bytes(l, od)) != 0)
                        fail("%s: final lookup differs (batch %ld, dtype %ld)", layer_names[l], b, od);
                    else
                        atomic_fetch_add(&checks_passed, 1);
                    free(reference[l][b][od]);
                }
        free(out);
    }
    printf("stress: readers: %d threads x %ld lookups of %d rows (%.0f lookups/s), %ld per-thread error checks\n",
           readers, atomic_load(&lookups) / readers, BATCH, atomic_load(&lookups) / (t1 - t0), atomic_load(&error_checks));
    printf("stress: churners: %d threads x %ld create/train/free cycles (%ld optimizer steps, %ld quantized copies, "
           "%ld backwards into the shared layer, %ld thread-count switches)\n",
           churners, churners ? atomic_load(&churn_cycles) / churners : 0, atomic_load(&churn_steps),
           atomic_load(&churn_quantized), atomic_load(&shared_backwards), atomic_load(&thread_switches));
    qembed_qembedding_free(Q4);
    qembed_qembedding_free(Q8);
    qembed_qembedding_free(F4);
    qembed_embedding_free(S);
    qembed_embedding_free(E);
    passed = atomic_load(&checks_passed);
    failed = atomic_load(&checks_failed);
    printf("stress: %ld passed, %ld failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
