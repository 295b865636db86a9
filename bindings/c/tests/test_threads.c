/* test_threads.c - concurrent callers. Several pthreads quantize and
 * dequantize different arrays at once, under worker-thread counts 1, 2, 4
 * and the default, while another thread keeps changing the count; every
 * result must equal a single-threaded run byte for byte, and each thread's
 * last_error must stay its own. */
#include <pthread.h>
#include <stdatomic.h>

#include "qembed.h"
#include "qtest.h"

#define K 4          /* distinct arrays */
#define N 200003     /* elements per array (odd) */
#define ROWS 401
#define COLS 498     /* ROWS * COLS = 199698 <= N: the int8 calls read ROWS x COLS inputs */
#define BS8 256
#define BS4 64
#define WORKERS 6
#define REPEATS 4

static const int dtype_of[K] = {QEMBED_DTYPE_F32, QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16, QEMBED_DTYPE_F32};

typedef struct results {
    uint8_t q8[N];
    float am8[(N + BS8 - 1) / BS8];
    float deq8[N];
    uint8_t packed[(N + 1) / 2];
    float am4[(N + BS4 - 1) / BS4];
    uint16_t deq4[N]; /* as bf16 */
    int8_t i8[ROWS * COLS];
    float stats[ROWS];
    int32_t ocols[COLS];
    int64_t nocols;
    float deqi8[ROWS * COLS];
    uint8_t qstat[(N + BS4 - 1) / BS4];
    float nested[((N + BS4 - 1) / BS4 + 255) / 256];
    float offset;
    float back[(N + BS4 - 1) / BS4];
} results;

static void *inputs[K];
static results reference[K];

static int run_all(int k, results *r) {
    const void *in = inputs[k];
    const int dt = dtype_of[k];
    const int64_t nb8 = (N + BS8 - 1) / BS8, nb4 = (N + BS4 - 1) / BS4, nn = (nb4 + 255) / 256;
    int ok = 1;
    memset(r, 0, sizeof *r);
    ok &= qembed_quantize_blockwise(in, dt, N, NULL, BS8, r->q8, r->am8, nb8) == QEMBED_OK;
    ok &= qembed_dequantize_blockwise(r->q8, N, r->am8, nb8, NULL, BS8, QEMBED_DTYPE_F32, r->deq8) == QEMBED_OK;
    ok &= qembed_quantize_4bit(in, dt, N, BS4, k & 1 ? QEMBED_QUANT_FP4 : QEMBED_QUANT_NF4, r->packed, (N + 1) / 2,
                               r->am4, nb4) == QEMBED_OK;
    ok &= qembed_dequantize_4bit(r->packed, (N + 1) / 2, N, r->am4, nb4, BS4, k & 1 ? QEMBED_QUANT_FP4 : QEMBED_QUANT_NF4,
                                 QEMBED_DTYPE_BF16, r->deq4) == QEMBED_OK;
    ok &= qembed_int8_vectorwise_quant(in, dt, ROWS, COLS, 2.5f, r->i8, r->stats, r->ocols, &r->nocols) == QEMBED_OK;
    ok &= qembed_int8_vectorwise_dequant(r->i8, ROWS, COLS, r->stats, QEMBED_DTYPE_F32, r->deqi8) == QEMBED_OK;
    ok &= qembed_quantize_statistics(r->am4, nb4, 256, r->qstat, r->nested, nn, &r->offset) == QEMBED_OK;
    ok &= qembed_dequantize_statistics(r->qstat, nb4, r->nested, nn, NULL, 256, r->offset, r->back) == QEMBED_OK;
    return ok;
}

typedef struct worker {
    int id;
    int runs, failures, mismatches, error_leaks;
    results *scratch;
} worker;

static void *worker_main(void *arg) {
    worker *w = (worker *)arg;
    int rep;
    char mine[32];
    snprintf(mine, sizeof mine, "%d", -(1000 + w->id));
    for (rep = 0; rep < REPEATS; rep++) {
        int k = (w->id + rep) % K;
        float am[1];
        uint8_t q[1];
        float x = 1.0f;
        if (!run_all(k, w->scratch)) w->failures++;
        else if (memcmp(w->scratch, &reference[k], sizeof(results)) != 0) w->mismatches++;
        w->runs++;
        /* an error of our own: the message must carry our blocksize */
        if (qembed_quantize_blockwise(&x, QEMBED_DTYPE_F32, 1, NULL, -(1000 + w->id), q, am, 1) !=
                QEMBED_ERR_INVALID_ARGUMENT ||
            strstr(qembed_last_error(), mine) == NULL)
            w->error_leaks++;
    }
    return NULL;
}

static atomic_int toggling = 0;

static void *toggler_main(void *arg) {
    int i = 0;
    (void)arg;
    while (atomic_load(&toggling)) {
        qembed_set_num_threads(1 + (i++ % 3));
    }
    return NULL;
}

static void run_round(const char *label, int threads, int toggle) {
    pthread_t t[WORKERS], tog;
    worker w[WORKERS];
    int i;
    CHECK(qembed_set_num_threads(threads) == QEMBED_OK);
    atomic_store(&toggling, toggle);
    if (toggle) CHECK(pthread_create(&tog, NULL, toggler_main, NULL) == 0);
    for (i = 0; i < WORKERS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].id = i;
        w[i].scratch = (results *)malloc(sizeof(results));
        CHECK(w[i].scratch != NULL);
        CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
    }
    for (i = 0; i < WORKERS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        CHECKF(w[i].runs == REPEATS && w[i].failures == 0, "%s: worker %d: %d failed calls", label, i, w[i].failures);
        CHECKF(w[i].mismatches == 0, "%s: worker %d: %d of %d runs differ from the single-threaded result", label, i,
               w[i].mismatches, w[i].runs);
        CHECKF(w[i].error_leaks == 0, "%s: worker %d: last_error was not its own %d times", label, i, w[i].error_leaks);
        free(w[i].scratch);
    }
    if (toggle) {
        atomic_store(&toggling, 0);
        CHECK(pthread_join(tog, NULL) == 0);
    }
    CHECK(qembed_set_num_threads(0) == QEMBED_OK);
}

int main(void) {
    int k;
    /* K inputs of normal-ish values (with a few outliers for int8) */
    for (k = 0; k < K; k++) {
        qt_rng r = qt_rng_make(500 + (uint64_t)k);
        int64_t i;
        size_t es = qembed_dtype_size(dtype_of[k]);
        inputs[k] = malloc(N * es);
        if (inputs[k] == NULL) return 2;
        for (i = 0; i < N; i++) {
            float v = qt_normal(&r) * (k + 1) * 0.5f;
            if (i % 997 == 0) v *= 4.0f;
            if (dtype_of[k] == QEMBED_DTYPE_F32) ((float *)inputs[k])[i] = v;
            else if (dtype_of[k] == QEMBED_DTYPE_F16) ((uint16_t *)inputs[k])[i] = qt_f32_to_f16(v);
            else ((uint16_t *)inputs[k])[i] = qt_f32_to_bf16(v);
        }
    }
    /* the single-threaded reference */
    CHECK(qembed_set_num_threads(1) == QEMBED_OK);
    for (k = 0; k < K; k++) CHECKF(run_all(k, &reference[k]), "reference run %d: %s", k, qembed_last_error());
    /* one caller, more workers: same bytes */
    {
        static results again;
        int threads[3] = {2, 4, 0};
        int j;
        for (j = 0; j < 3; j++) {
            CHECK(qembed_set_num_threads(threads[j]) == QEMBED_OK);
            for (k = 0; k < K; k++)
                CHECKF(run_all(k, &again) && memcmp(&again, &reference[k], sizeof again) == 0,
                       "num_threads %d, array %d differs from the single-threaded run", threads[j], k);
        }
    }
    run_round("num_threads=1", 1, 0);
    run_round("num_threads=2", 2, 0);
    run_round("num_threads=4", 4, 0);
    run_round("default", 0, 0);
    run_round("changing num_threads", 2, 1);
    for (k = 0; k < K; k++) free(inputs[k]);
    return qt_summary("test_threads");
}
