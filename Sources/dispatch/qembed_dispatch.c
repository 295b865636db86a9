/*
 * qembed_dispatch.c - libqembed.so on x86-64: picks, once per process, the
 * best build of the library this CPU and OS can run, and forwards every
 * function of include/qembed.h to it.
 *
 * The Swift library is built three times (Makefile, QEMBED_CPU=dispatch):
 *   libqembed-baseline.so  -target-cpu x86-64-v2 (SSE4.2, POPCNT)
 *   libqembed-avx2.so      -target-cpu x86-64-v3 (AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE)
 *   libqembed-avx512.so    -target-cpu x86-64-v4 (AVX-512 F/BW/DQ/VL on top of v3)
 * as ggml builds its CPU backend variants. This file is the only code in
 * libqembed.so itself: a constructor checks cpuid and XGETBV (the OS must
 * save the AVX / AVX-512 register state), dlopens the variant that sits in
 * the same directory as libqembed.so, and fills a table with its functions;
 * each exported function is a one-instruction thunk (jmp through the table),
 * so arguments and return values pass through untouched whatever the
 * signature.
 *
 * QEMBED_CPU=baseline|avx2|avx512 forces a tier (a lower one, to compare or
 * to test; QEMBED_CPU=auto or unset picks the best). A tier the CPU lacks,
 * an unknown name or a missing variant file is refused: no variant is
 * loaded, every function that returns a status returns
 * QEMBED_ERR_UNSUPPORTED, qembed_last_error() and qembed_cpu_tier() say why,
 * and nothing executes an instruction the CPU does not have.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qembed.h"
#include "qembed_dispatch_gen.h" /* QEMBED_DISPATCH_FUNCTIONS(X): X(index, name) per forwarded function */

#define QEMBED_DISPATCH_COUNT_ONE(i, name) +1
enum { NFUNCS = 0 QEMBED_DISPATCH_FUNCTIONS(QEMBED_DISPATCH_COUNT_ONE) };

__attribute__((visibility("hidden"))) void *qembed__table[NFUNCS];

static const char *const names[NFUNCS] = {
#define QEMBED_DISPATCH_NAME(i, name) #name,
    QEMBED_DISPATCH_FUNCTIONS(QEMBED_DISPATCH_NAME)
};

/* the thunks: `name: jmp *qembed__table + 8 * index(%rip)` */
#define QEMBED_DISPATCH_THUNK(i, name)                                                                                 \
    __asm__(".text\n.globl " #name "\n.type " #name ",@function\n.p2align 4\n" #name ":\n\tjmp *qembed__table+8*" #i \
            "(%rip)\n.size " #name ",.-" #name "\n");
QEMBED_DISPATCH_FUNCTIONS(QEMBED_DISPATCH_THUNK)

/* ---- the CPU ----------------------------------------------------------------- */

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

#define BIT(x, n) (((x) >> (n)) & 1u)

/* 0 none, 1 baseline (x86-64-v2), 2 avx2 (x86-64-v3), 3 avx512 (x86-64-v4) */
static int best_tier(void) {
    uint32_t l0[4], l1[4], l7[4] = {0, 0, 0, 0}, e1[4] = {0, 0, 0, 0}, ext[4];
    int v2, v3, v4;
    uint64_t xcr0 = 0;
    cpuid(0, 0, l0);
    if (l0[0] < 1) return 0;
    cpuid(1, 0, l1);
    if (l0[0] >= 7) cpuid(7, 0, l7);
    cpuid(0x80000000u, 0, ext);
    if (ext[0] >= 0x80000001u) cpuid(0x80000001u, 0, e1);
    /* v2: CX16, LAHF-SAHF, POPCNT, SSE3, SSE4.1, SSE4.2, SSSE3 */
    v2 = BIT(l1[2], 13) && BIT(e1[2], 0) && BIT(l1[2], 23) && BIT(l1[2], 0) && BIT(l1[2], 19) && BIT(l1[2], 20) &&
         BIT(l1[2], 9);
    if (!v2) return 0;
    if (BIT(l1[2], 27)) xcr0 = xgetbv0(); /* OSXSAVE */
    /* v3: AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, OS-saved YMM state */
    v3 = BIT(l1[2], 28) && BIT(l7[1], 5) && BIT(l7[1], 3) && BIT(l7[1], 8) && BIT(l1[2], 29) && BIT(l1[2], 12) &&
         BIT(e1[2], 5) && BIT(l1[2], 22) && (xcr0 & 0x6) == 0x6;
    if (!v3) return 1;
    /* v4: AVX-512 F, BW, CD, DQ, VL and OS-saved opmask/ZMM state */
    v4 = BIT(l7[1], 16) && BIT(l7[1], 30) && BIT(l7[1], 28) && BIT(l7[1], 17) && BIT(l7[1], 31) && (xcr0 & 0xE6) == 0xE6;
    return v4 ? 3 : 2;
}

static const char *const tier_names[4] = {"none", "baseline", "avx2", "avx512"};

static int tier = 0;                   /* the tier in use (0: none loaded) */
static char refusal[512];              /* why no tier is in use */

/* ---- refusal stubs (no variant loaded) ---------------------------------------- */

static int refused_status(void) { return QEMBED_ERR_UNSUPPORTED; }
static const char *refused_message(void) { return refusal; }
#define QEMBED_STR2(x) #x
#define QEMBED_STR(x) QEMBED_STR2(x)
static const char *refused_version(void) {
    return QEMBED_STR(QEMBED_VERSION_MAJOR) "." QEMBED_STR(QEMBED_VERSION_MINOR) "." QEMBED_STR(QEMBED_VERSION_PATCH);
}
static unsigned refused_version_number(void) {
    return QEMBED_VERSION_MAJOR * 10000 + QEMBED_VERSION_MINOR * 100 + QEMBED_VERSION_PATCH;
}
static void refused_nothing(void) {}
static size_t refused_size(void) { return 0; }
static const char *refused_name(void) { return "unknown"; }
static const char *refused_status_string(void) { return "unsupported (qembed: no CPU tier loaded)"; }
static int refused_threads(void) { return 0; }

static void *refusal_stub(const char *name) {
    static const struct {
        const char *name;
        void *fn;
    } special[] = {
        {"qembed_version", (void *)refused_version},
        {"qembed_version_number", (void *)refused_version_number},
        {"qembed_last_error", (void *)refused_message},
        {"qembed_status_string", (void *)refused_status_string},
        {"qembed_dtype_size", (void *)refused_size},
        {"qembed_dtype_name", (void *)refused_name},
        {"qembed_get_num_threads", (void *)refused_threads},
        {"qembed_clear_error", (void *)refused_nothing},
        {"qembed_embedding_params_init", (void *)refused_nothing},
        {"qembed_embedding_free", (void *)refused_nothing},
        {"qembed_optimizer_free", (void *)refused_nothing},
        {"qembed_tensor_file_close", (void *)refused_nothing},
        {"qembed_qembedding_free", (void *)refused_nothing},
    };
    size_t i;
    for (i = 0; i < sizeof special / sizeof special[0]; i++)
        if (strcmp(special[i].name, name) == 0) return special[i].fn;
    return (void *)refused_status;
}

static void refuse(const char *fmt, const char *a, const char *b) {
    size_t i;
    snprintf(refusal, sizeof refusal, fmt, a, b);
    for (i = 0; i < NFUNCS; i++) qembed__table[i] = refusal_stub(names[i]);
    tier = 0;
}

/* ---- loading ------------------------------------------------------------------ */

static int load(int t, const char *dir) {
    char path[4096 + 64];
    void *h;
    size_t i;
    snprintf(path, sizeof path, "%s/libqembed-%s.so", dir, tier_names[t]);
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        refuse("qembed: cannot load the %s build of the library: %s", tier_names[t], dlerror());
        return 0;
    }
    for (i = 0; i < NFUNCS; i++) {
        void *f = dlsym(h, names[i]);
        if (f == NULL) {
            refuse("qembed: %s does not define %s (mismatched files)", path, names[i]);
            dlclose(h);
            return 0;
        }
        qembed__table[i] = f;
    }
    tier = t;
    return 1;
}

__attribute__((constructor)) static void qembed_dispatch_init(void) {
    Dl_info info;
    char dir[4096];
    const char *want = getenv("QEMBED_CPU"), *slash, *file;
    char *real;
    int best = best_tier(), t = best;
    if (dladdr((void *)qembed_dispatch_init, &info) == 0 || info.dli_fname == NULL) {
        refuse("qembed: cannot find the directory of libqembed.so%s%s", "", "");
        return;
    }
    /* the variants sit beside the real file (libqembed.so may be reached
     * through a symlink, as from the Python package) */
    real = realpath(info.dli_fname, NULL);
    file = real != NULL ? real : info.dli_fname;
    slash = strrchr(file, '/');
    if (slash == NULL) {
        snprintf(dir, sizeof dir, ".");
    } else {
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - file), file);
    }
    free(real);
    if (best == 0) {
        refuse("qembed: this CPU lacks x86-64-v2 (SSE4.2, POPCNT, ...), the lowest tier qembed is built for%s%s", "", "");
        return;
    }
    if (want != NULL && *want != '\0' && strcmp(want, "auto") != 0 && strcmp(want, "native") != 0) {
        for (t = 1; t <= 3; t++)
            if (strcmp(want, tier_names[t]) == 0) break;
        if (t > 3) {
            refuse("qembed: QEMBED_CPU=%s is not a tier (baseline, avx2, avx512 or auto)%s", want, "");
            return;
        }
        if (t > best) {
            refuse("qembed: QEMBED_CPU=%s refused: this CPU (or OS) supports at most %s", want, tier_names[best]);
            return;
        }
    }
    load(t, dir);
}

/* The tier in use ("none" when refused: qembed_last_error() says why). */
QEMBED_API const char *qembed_cpu_tier(void) { return tier_names[tier]; }
