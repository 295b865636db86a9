/* tools/avx512_check.c: proves the AVX-512 bag and LoRA kernels
 * (Sources/CQembedSIMD/qembed_bag.c, qembed_lora.c) equal the AVX2 ones
 * (qembed_bag_avx2.c, qembed_lora_avx2.c) bit for bit, on fresh random
 * tables and bags: float32, int8 row-wise and 4-bit rows with and without
 * nested statistics, values over many orders of magnitude with NaN and -0
 * among them, every mode, per-sample weights, padding, int32 and int64
 * indices, empty bags, dims that leave partial vectors, ranks 1-8.
 *
 * The AVX2 kernels are checked against the portable Swift rule by BagTests
 * and LoraTests, so this closes the chain for the AVX-512 kernels on any
 * machine with AVX2: built against SIMDe's portable AVX-512 (the default,
 * -DQEMBED_AVX512_EMULATE; gcc, as for tools/vbmi_check.c) or natively
 * (-DQEMBED_AVX512_NATIVE, AVX-512 machines). Prints "N passed, M failed"
 * and exits 1 on any mismatch (2 when this CPU has no AVX2/FMA). */
#ifndef QEMBED_AVX512_NATIVE
#define QEMBED_AVX512_EMULATE 1
#endif
#include "../Sources/CQembedSIMD/qembed_bag.c"
#include "../Sources/CQembedSIMD/qembed_lora.c"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* qembed_4bit.c's switch, which the AVX2 kernels read (not linked here). */
int qembed__avx2_enabled(void) { return __builtin_cpu_supports("avx2"); }

static int passed, failed;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t next_u64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static long below(long n) { return (long)(next_u64() % (uint64_t)n); }
static float uniform(void) { return (float)((next_u64() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

/* A value of magnitude 10^-3 .. 10^3; one in eight from {+0, -0, 0.5,
 * -0.5} (ties, where max must keep the earlier value, and signed zeros),
 * and now and then (nan_ok) NaN. */
static float draw(int nan_ok) {
    static const float ties[4] = {0.0f, -0.0f, 0.5f, -0.5f};
    long c = below(200);
    if (c < 25) return ties[c & 3];
    if (c == 25 && nan_ok) return NAN;
    return uniform() * powf(10.0f, (float)below(7) - 3.0f);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "avx512_check: out of memory\n"); exit(2); }
    return p;
}

typedef struct {
    qembed__bag_rows r;
    void *data;
    float *scales, code[16], *nested_code, *nested_absmax;
    uint8_t *qabsmax;
} table;

static void table_make(table *t, int kind, long rows, long dim, long bs, int nested, long nbs) {
    memset(t, 0, sizeof *t);
    t->r.kind = kind;
    t->r.dim = dim;
    long n = rows * dim;
    if (kind == QEMBED__BAG_F32) {
        float *f = xmalloc((size_t)n * 4);
        for (long i = 0; i < n; i++) f[i] = draw(1);
        t->data = f;
    } else if (kind == QEMBED__BAG_I8) {
        int8_t *q = xmalloc((size_t)n);
        for (long i = 0; i < n; i++) q[i] = (int8_t)(below(255) - 127);
        t->scales = xmalloc((size_t)rows * 4);
        for (long i = 0; i < rows; i++) t->scales[i] = below(4) ? fabsf(draw(0)) + 1e-3f : 127.0f;  /* equal scales: ties */
        t->data = q;
    } else {
        uint8_t *p = xmalloc((size_t)n / 2);
        for (long i = 0; i < n / 2; i++) p[i] = (uint8_t)below(256);
        for (int j = 0; j < 16; j++) t->code[j] = uniform();
        t->code[0] = -0.0f, t->code[1] = 0.0f, t->code[2] = t->code[3];  /* signed zeros and a tie */
        long blocks = (n + bs - 1) / bs;
        if (nested) {
            long nb = (blocks + nbs - 1) / nbs;
            t->qabsmax = xmalloc((size_t)blocks);
            t->nested_code = xmalloc(256 * 4);
            t->nested_absmax = xmalloc((size_t)nb * 4);
            for (long b = 0; b < blocks; b++) t->qabsmax[b] = (uint8_t)below(256);
            for (int j = 0; j < 256; j++) t->nested_code[j] = uniform();
            for (long b = 0; b < nb; b++) t->nested_absmax[b] = fabsf(draw(0));
            t->r.qabsmax = t->qabsmax;
            t->r.nested_code = t->nested_code;
            t->r.nested_absmax = t->nested_absmax;
            t->r.nested_blocksize = nbs;
            t->r.offset = uniform();
        } else {
            t->scales = xmalloc((size_t)blocks * 4);
            for (long b = 0; b < blocks; b++) t->scales[b] = below(4) ? fabsf(draw(0)) : 1.0f;
        }
        t->r.code = t->code;
        t->r.blocksize = bs;
        t->data = p;
    }
    t->r.data = t->data;
    t->r.scales = t->scales;
}

static void table_free(table *t) {
    free(t->data); free(t->scales); free(t->qabsmax); free(t->nested_code); free(t->nested_absmax);
}

static void expect_same(const float *a, const float *b, long n, const char *what) {
    if (memcmp(a, b, (size_t)n * 4) == 0) { passed++; return; }
    failed++;
    for (long j = 0; j < n; j++) {
        uint32_t x, y;
        memcpy(&x, a + j, 4); memcpy(&y, b + j, 4);
        if (x != y) { fprintf(stderr, "FAIL %s: element %ld: %08x (AVX-512) vs %08x (AVX2)\n", what, j, x, y); break; }
    }
}

/* Bags of 0 .. 40 rows over t, every mode (sum, weighted sum, mean, max),
 * with and without padding, both index widths, in the three layouts
 * (offsets with and without the last offset, fixed length), reduced one
 * range of bags per call: bag512 against bag256. */
static void check_bags(table *t, long rows, const char *name) {
    const long dim = t->r.dim, count = 600;
    int64_t *i64 = xmalloc(count * 8), *o64 = xmalloc((count + 1) * 8);
    int32_t *i32 = xmalloc(count * 4), *o32 = xmalloc((count + 1) * 4);
    float *w = xmalloc(count * 4), *a = xmalloc((size_t)count * dim * 4), *b = xmalloc((size_t)count * dim * 4);
    for (long k = 0; k < count; k++) { i64[k] = below(rows); i32[k] = (int32_t)i64[k]; w[k] = draw(0); }
    long nbags = 0;
    for (long lo = 0; lo < count; nbags++) {  /* bags of 0 .. 40 rows */
        o64[nbags] = lo; o32[nbags] = (int32_t)lo;
        lo += below(41);
        if (lo > count) lo = count;
    }
    o64[nbags] = count; o32[nbags] = (int32_t)count;
    char what[160];
    for (int mode = 0; mode < 4; mode++) {  /* sum, weighted sum, mean, max */
        for (int variant = 0; variant < 12; variant++) {
            int is64 = variant & 1, layout = (variant >> 2) % 3;
            long pad = variant & 2 ? i64[below(count)] : -1;
            qembed__bag_bounds bb = {is64 ? (const void *)o64 : (const void *)o32, -2, nbags, count};
            if (layout == 1) bb.fixed = -1;  /* include_last_offset: the last offset ends the last bag */
            if (layout == 2) { bb.offsets = NULL; bb.fixed = 24; bb.num_bags = count / 24; }
            const long nb = bb.num_bags;
            for (long j = 0; j < nb * dim; j++) { a[j] = 1234.5f; b[j] = 1234.5f; }
            const void *idx = is64 ? (const void *)i64 : (const void *)i32;
            const float *wk = mode == 1 ? w : NULL;
            const int m = mode == 3 ? 2 : (mode == 2 ? 1 : 0);
            /* uneven ranges: one call for the first bags, then one per bag, then the rest */
            long cut1 = nb / 3, cut2 = cut1 + 5 < nb ? cut1 + 5 : nb;
            qembed__bag512_reduce_bags(&t->r, idx, is64, &bb, 0, cut1, 4, count, pad, wk, m, a);
            qembed__bag256_reduce_bags(&t->r, idx, is64, &bb, 0, nb, 4, count, pad, wk, m, b);
            for (long k = cut1; k < cut2; k++)
                qembed__bag512_reduce_bags(&t->r, idx, is64, &bb, k, k + 1, 4, count, pad, wk, m, a + k * dim);
            qembed__bag512_reduce_bags(&t->r, idx, is64, &bb, cut2, nb, 4, count, pad, wk, m, a + cut2 * dim);
            snprintf(what, sizeof what, "%s %ld bags mode %d i64 %d pad %ld layout %d", name, nb, mode, is64, pad, layout);
            expect_same(a, b, nb * dim, what);
        }
    }
    free(i64); free(i32); free(o64); free(o32); free(w); free(a); free(b);
}

static void check_lora(table *t, long rows, const char *name) {
    const long dim = t->r.dim, n = 37;
    int64_t *ids = xmalloc(n * 8);
    int32_t *ids32 = xmalloc(n * 4);
    for (long k = 0; k < n; k++) { ids[k] = below(rows); ids32[k] = (int32_t)ids[k]; }
    float *bt = xmalloc((size_t)8 * dim * 4), *at = xmalloc((size_t)rows * 8 * 4);
    float *a = xmalloc((size_t)n * dim * 4), *b = xmalloc((size_t)n * dim * 4);
    char what[160];
    for (long r = 1; r <= 8; r += (r < 2 ? 1 : 3)) {  /* 1, 2, 5, 8 */
        for (long j = 0; j < r * dim; j++) bt[j] = draw(0);
        for (long j = 0; j < rows * r; j++) at[j] = draw(0);
        float scaling = draw(0);
        for (int is64 = 0; is64 < 2; is64++) {
            const void *idx = is64 ? (const void *)ids : (const void *)ids32;
            int ra = qembed__lora512_forward(&t->r, idx, is64, n, at, r, bt, scaling, a);
            int rb = qembed__lora256_forward(&t->r, idx, is64, n, at, r, bt, scaling, b);
            snprintf(what, sizeof what, "%s lora r %ld i64 %d", name, r, is64);
            if (ra != 1 || rb != 1) { failed++; fprintf(stderr, "FAIL %s: kernels declined (%d, %d)\n", what, ra, rb); }
            else expect_same(a, b, n * dim, what);
        }
    }
    free(ids); free(ids32); free(bt); free(at); free(a); free(b);
}

int main(void) {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        printf("avx512_check: this CPU has no AVX2/FMA, the reference kernels cannot run\n");
        return 2;
    }
    if (!qembed__avx512_enabled()) {
        printf("avx512_check: the AVX-512 kernels are off here (no AVX-512 F+BW+DQ+VL, or QEMBED_CPU)\n");
        return 2;
    }
    const long rows = 97;
    char name[96];
    static const long float_dims[] = {8, 16, 40, 128, 136, 264};
    for (int kind = QEMBED__BAG_F32; kind <= QEMBED__BAG_I8; kind++) {
        for (size_t d = 0; d < sizeof float_dims / sizeof *float_dims; d++) {
            table t;
            table_make(&t, kind, rows, float_dims[d], 0, 0, 0);
            snprintf(name, sizeof name, "%s dim %ld", kind == QEMBED__BAG_F32 ? "f32" : "int8", float_dims[d]);
            check_bags(&t, rows, name);
            if (float_dims[d] % 16 == 0) check_lora(&t, rows, name);
            table_free(&t);
        }
    }
    static const long four_dims[] = {16, 48, 128, 272};
    static const long blocksizes[] = {16, 32, 64, 256};
    for (size_t d = 0; d < sizeof four_dims / sizeof *four_dims; d++) {
        for (size_t s = 0; s < sizeof blocksizes / sizeof *blocksizes; s++) {
            for (int nested = 0; nested < 3; nested++) {  /* plain, nested (power of two), nested (any) */
                table t;
                table_make(&t, QEMBED__BAG_4BIT, rows, four_dims[d], blocksizes[s], nested > 0, nested == 2 ? 100 : 256);
                snprintf(name, sizeof name, "4-bit dim %ld blocksize %ld%s", four_dims[d], blocksizes[s],
                         nested == 0 ? "" : nested == 1 ? " nested 256" : " nested 100");
                check_bags(&t, rows, name);
                check_lora(&t, rows, name);
                table_free(&t);
            }
        }
    }
#ifdef QEMBED_AVX512_EMULATE
    printf("avx512_check: %d passed, %d failed\n", passed, failed);
#else
    printf("avx512_check_native: %d passed, %d failed\n", passed, failed);
#endif
    return failed ? 1 : 0;
}
