/*
 * qtest.h - the tiny assertion helper of qembed's C tests.
 *
 * CHECK(cond) / CHECKF(cond, fmt, ...) count one passed or failed assertion
 * group; a failure prints file:line, the condition and an optional message.
 * qt_summary(name) prints "name: P passed, F failed" (the line
 * bindings/c/run_tests.sh adds up) and returns the process exit status.
 *
 * Also here, shared by the tests: a xorshift PRNG with normal-ish values,
 * float32 <-> float16 / bfloat16 conversions (round to nearest even), and
 * a check that a qembed_last_error() message names an argument.
 */
#ifndef QTEST_H
#define QTEST_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef QT_MAX_REPORTS
#define QT_MAX_REPORTS 40 /* failures printed in full; the rest are only counted */
#endif

static long qt_passed = 0;
static long qt_failed = 0;

static inline void qt_vreport(int ok, const char *file, int line, const char *cond,
                       const char *fmt, va_list ap) {
    if (ok) {
        qt_passed++;
        return;
    }
    qt_failed++;
    if (qt_failed > QT_MAX_REPORTS) {
        if (qt_failed == QT_MAX_REPORTS + 1)
            fprintf(stderr, "(more than %d failures: the rest are counted, not shown)\n", QT_MAX_REPORTS);
        return;
    }
    fprintf(stderr, "%s:%d: FAILED: %s", file, line, cond);
    if (fmt != NULL && fmt[0] != '\0') {
        fputs(" -- ", stderr);
        vfprintf(stderr, fmt, ap);
    }
    fputc('\n', stderr);
    fflush(stderr);
}

static inline int qt_check(int ok, const char *file, int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    qt_vreport(ok, file, line, cond, fmt, ap);
    va_end(ap);
    return ok;
}

#define CHECK(cond) qt_check(!!(cond), __FILE__, __LINE__, #cond, "")
#define CHECKF(cond, ...) qt_check(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)

static inline int qt_summary(const char *name) {
    printf("%s: %ld passed, %ld failed\n", name, qt_passed, qt_failed);
    fflush(stdout);
    return qt_failed == 0 ? 0 : 1;
}

/* ---- PRNG: xorshift64* ------------------------------------------------ */

typedef struct qt_rng { uint64_t s; } qt_rng;

static inline qt_rng qt_rng_make(uint64_t seed) {
    qt_rng r;
    r.s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    if (r.s == 0) r.s = 1;
    return r;
}

static inline uint64_t qt_next(qt_rng *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* uniform in [0, 1) with 24 random bits */
static inline float qt_uniform(qt_rng *r) { return (float)(qt_next(r) >> 40) * (1.0f / 16777216.0f); }

/* normal-ish: the sum of 4 uniforms, centred and scaled to unit variance
 * (Irwin-Hall; tails bounded at +-3.46 sigma, which is all the tests need). */
static inline float qt_normal(qt_rng *r) {
    float s = qt_uniform(r) + qt_uniform(r) + qt_uniform(r) + qt_uniform(r);
    return (s - 2.0f) * 1.7320508f;
}

/* ---- float16 / bfloat16 conversions ----------------------------------- */

/* malloc that ends the test program (exit 2) when memory is short */
static inline void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static inline uint32_t qt_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float qt_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* float32 -> IEEE binary16, round to nearest even (subnormals, overflow to inf, NaN kept quiet). */
static inline uint16_t qt_f32_to_f16(float f) {
    uint32_t u = qt_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exp = (u >> 23) & 0xFFu;
    uint32_t man = u & 0x7FFFFFu;
    if (exp == 0xFF) return (uint16_t)(sign | 0x7C00u | (man ? 0x200u | (man >> 13) : 0u));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7C00u);
    if (e <= 0) {
        if (e < -10) return sign;            /* below half the smallest subnormal: +-0 */
        man |= 0x800000u;                    /* implicit bit */
        int shift = 14 - e;                  /* 14..24 */
        uint32_t half = 1u << (shift - 1);
        uint32_t rest = man & ((1u << shift) - 1);
        uint32_t q = man >> shift;
        if (rest > half || (rest == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);         /* q may carry into the smallest normal: still right */
    }
    uint32_t q = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rest = man & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (q & 1u))) q++; /* may carry to inf: right */
    return (uint16_t)(sign | q);
}

static inline float qt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0) {
        float v = (float)man * (1.0f / 16777216.0f); /* man * 2^-24, exact */
        return sign ? -v : v;
    }
    if (exp == 31) return qt_bits_f32(sign | 0x7F800000u | (man << 13));
    return qt_bits_f32(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

/* float32 -> bfloat16, round to nearest even; NaN stays a quiet NaN. */
static inline uint16_t qt_f32_to_bf16(float f) {
    uint32_t u = qt_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float qt_bf16_to_f32(uint16_t b) { return qt_bits_f32((uint32_t)b << 16); }

/* ---- error messages ---------------------------------------------------- */

static inline int qt_ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Does `msg` contain `name` as a whole identifier (not inside a longer one)? */
static inline int qt_names(const char *msg, const char *name) {
    size_t len = strlen(name);
    const char *p = msg;
    if (msg == NULL || len == 0) return 0;
    while ((p = strstr(p, name)) != NULL) {
        int before = p > msg && qt_ident_char(p[-1]);
        int after = qt_ident_char(p[len]);
        if (!before && !after) return 1;
        p++;
    }
    return 0;
}

/* Does the message name one of the '|'-separated names? */
static inline int qt_names_any(const char *msg, const char *names) {
    char buf[128];
    const char *p = names;
    while (*p) {
        size_t len = strcspn(p, "|");
        if (len >= sizeof buf) len = sizeof buf - 1;
        memcpy(buf, p, len);
        buf[len] = '\0';
        if (qt_names(msg, buf)) return 1;
        p += len;
        if (*p == '|') p++;
    }
    return 0;
}

/* ---- f32 / f16 / bf16 buffers ------------------------------------------------ */

/* element i of a f32/f16/bf16 buffer as float32 (exact) */
static inline float qt_load_f(const void *p, int dtype, int64_t i) {
    if (dtype == QEMBED_DTYPE_F16) return qt_f16_to_f32(((const uint16_t *)p)[i]);
    if (dtype == QEMBED_DTYPE_BF16) return qt_bf16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

/* float32 -> the stored bits of `dtype` (round to nearest even) */
static inline uint32_t qt_store_bits(float v, int dtype) {
    if (dtype == QEMBED_DTYPE_F16) return qt_f32_to_f16(v);
    if (dtype == QEMBED_DTYPE_BF16) return qt_f32_to_bf16(v);
    return qt_f32_bits(v);
}

/* the stored bits of element i of a f32/f16/bf16 buffer */
static inline uint32_t qt_load_bits(const void *p, int dtype, int64_t i) {
    if (dtype == QEMBED_DTYPE_F32) return qt_f32_bits(((const float *)p)[i]);
    return ((const uint16_t *)p)[i];
}

/* float32 rounded to `dtype` and back */
static inline float qt_round_to(float v, int dtype) {
    if (dtype == QEMBED_DTYPE_F16) return qt_f16_to_f32(qt_f32_to_f16(v));
    if (dtype == QEMBED_DTYPE_BF16) return qt_bf16_to_f32(qt_f32_to_bf16(v));
    return v;
}

/* n float32 values as a new buffer of `dtype` (rounded to nearest even); free() it */
static inline void *qt_to_dtype(const float *v, int64_t n, int dtype) {
    void *t = xmalloc((size_t)(n > 0 ? n : 1) * qembed_dtype_size(dtype));
    int64_t i;
    for (i = 0; i < n; i++) {
        if (dtype == QEMBED_DTYPE_F32) ((float *)t)[i] = v[i];
        else ((uint16_t *)t)[i] = (uint16_t)qt_store_bits(v[i], dtype);
    }
    return t;
}

/* ---- snapshots: a growable byte buffer -------------------------------------- */

typedef struct qt_buf {
    unsigned char *p;
    size_t len, cap;
} qt_buf;

static inline void qt_put(qt_buf *b, const void *src, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n) cap *= 2;
        b->p = (unsigned char *)realloc(b->p, cap);
        if (b->p == NULL) exit(2);
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

/* ---- layer parameters ---------------------------------------------------- */

/* Parameter i of a layer; exits with status 2 if it cannot be had. */
static inline qembed_param *qt_param_of(qembed_embedding *e, int64_t i) {
    qembed_param *p = NULL;
    if (qembed_embedding_param(e, i, &p) != QEMBED_OK || p == NULL) {
        fprintf(stderr, "qembed_embedding_param(%lld): %s\n", (long long)i, qembed_last_error());
        exit(2);
    }
    return p;
}

/* A parameter's info; exits with status 2 if it cannot be had. */
static inline qembed_param_info qt_info_of(const qembed_param *p) {
    qembed_param_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (qembed_param_info_get(p, &info) != QEMBED_OK) {
        fprintf(stderr, "qembed_param_info_get: %s\n", qembed_last_error());
        exit(2);
    }
    return info;
}

/* A layer's weight as float32 (exact); free() it. */
static inline float *qt_weight_copy(qembed_embedding *e) {
    qembed_param_info w = qt_info_of(qt_param_of(e, 0));
    float *t = (float *)xmalloc((size_t)w.numel * sizeof(float));
    int64_t i;
    for (i = 0; i < w.numel; i++) t[i] = qt_load_f(w.data, w.dtype, i);
    return t;
}

/* A layer for tests; exits with status 2 if it cannot be created. */
static inline qembed_embedding *qt_make_layer(int64_t n, int64_t d, uint64_t seed, int stable, int dtype, bool sparse,
                                              double max_norm, const float *weight) {
    qembed_embedding_params p;
    qembed_embedding *e = NULL;
    qembed_status st;
    qembed_embedding_params_init(&p);
    p.num_embeddings = n;
    p.embedding_dim = d;
    p.seed = seed;
    p.dtype = dtype;
    p.sparse = sparse;
    p.max_norm = max_norm;
    p.weight = weight;
    st = stable ? qembed_stable_embedding_create(&p, &e) : qembed_embedding_create(&p, &e);
    if (st != QEMBED_OK) {
        fprintf(stderr, "create: %s\n", qembed_last_error());
        exit(2);
    }
    return e;
}

#endif /* QTEST_H */
