/* tools/vbmi_check.c: proves the AVX-512 VBMI code-search and dequantize
 * kernels (Sources/CQembedSIMD/qembed_vbmi.c) equal the scalar spec.
 *
 * The spec (Blockwise8Reference): midpoints m[i] = (code[i] + code[i+1]) / 2
 * in float32; the index of s = clamp(x * recip, -1, 1) is #{m[i] < s}.
 *
 *   vbmi_check quick        parity: every float within 64 ulp of every midpoint,
 *                           a stride through [-1, 1], out-of-range values, 2^22
 *                           random values at several recips, every dequantize
 *                           code; for each map that fits, and the maps that do
 *                           not fit are reported as not fitting (seconds; part of
 *                           make test)
 *   vbmi_check exhaustive   every float in [-1, 1] for the signed dynamic map, NF4 and FP4
 *                           and every float in [+0, 1] (and -0, and [-1, 0) which
 *                           must give 0) for the unsigned one (minutes natively;
 *                           far longer under emulation: make vbmi-exhaustive)
 *
 * Built natively (-DQEMBED_VBMI_NATIVE, AVX-512 VBMI machines only) or against
 * SIMDe's portable AVX-512 (the default: -DQEMBED_VBMI_EMULATE), which proves
 * the kernels' logic on any machine. The maps come from libqembed's C API.
 * Prints "N passed, M failed" and exits 1 on any mismatch. */
#ifndef QEMBED_VBMI_NATIVE
#define QEMBED_VBMI_EMULATE 1
#endif
#include "../Sources/CQembedSIMD/qembed_vbmi.c"

#include <qembed.h>
#include <math.h>
#include <stdio.h>

static int passed, failed;

static float f_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

typedef struct { float mids[255]; } spec_t;

static void spec_init(spec_t *s, const float *code) {
    for (int i = 0; i < 255; i++) s->mids[i] = (code[i] + code[i + 1]) / 2.0f + 0.0f;
}

static uint8_t spec_index(const spec_t *s, float x, float recip) {
    float v = x * recip;
    v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    int lo = 0, hi = 255;
    while (lo < hi) { int m = (lo + hi) / 2; if (s->mids[m] < v) lo = m + 1; else hi = m; }
    return (uint8_t)lo;
}

/* Runs the kernel over xs[0..n) and compares; reports the first mismatches. */
static long check_batch(const char *what, const qembed__vbmi_quant *t, const spec_t *s,
                        const float *xs, size_t n, float recip, uint8_t *out) {
    qembed__vbmi_quantize(t, xs, n, recip, out);
    long bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t want = spec_index(s, xs[i], recip);
        if (out[i] != want) {
            if (bad < 5) fprintf(stderr, "  %s: x=%a recip=%a kernel %u spec %u\n", what, xs[i], recip, out[i], want);
            bad++;
        }
    }
    return bad;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next64(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
static float uniform(void) { return (float)((next64() >> 40) * (1.0 / 16777216.0)); }

#define BATCH 65536

static void check_quick(const char *name, const float *code) {
    spec_t s;
    spec_init(&s, code);
    qembed__vbmi_quant *t = qembed__vbmi_quant_new(code);
    if (!t) { printf("  %-28s does not fit the VBMI search (portable path)\n", name); return; }
    float *xs = malloc(BATCH * sizeof(float));
    uint8_t *out = malloc(BATCH);
    long bad = 0;
    size_t n = 0;
#define FLUSH(recip) do { bad += check_batch(name, t, &s, xs, n, recip, out); n = 0; } while (0)
#define PUSH(v, recip) do { xs[n++] = (v); if (n == BATCH) FLUSH(recip); } while (0)
    /* every float within 64 ulp of every midpoint, both signs (recip 1) */
    for (int i = 0; i < 255; i++) {
        uint32_t m = qe_bits(s.mids[i]) & 0x7FFFFFFFu;
        for (int d = -64; d <= 64; d++) {
            uint32_t u = m + (uint32_t)d;
            if ((int64_t)m + d < 0 || u > 0x3F800000u) continue;
            PUSH(f_of(u), 1.0f);
            PUSH(-f_of(u), 1.0f);
        }
    }
    /* a stride through every magnitude in [0, 1], both signs, and out of range */
    for (uint32_t u = 0; u <= 0x3F800000u; u += 9973) { PUSH(f_of(u), 1.0f); PUSH(-f_of(u), 1.0f); }
    const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, 1.0000001f, -1.0000001f, 1.5f, -1.5f, 2.0f, -2.0f,
                           3.4e38f, -3.4e38f, 1e-45f, -1e-45f, 1.17549435e-38f, -1.17549435e-38f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) PUSH(edges[i], 1.0f);
    FLUSH(1.0f);
    /* random values through x * recip, uniform and log-uniform, in and beyond the block range */
    const float recips[] = {1.0f / 3.7f, 1.0f / 0.0123f, 1.0f / 1e-30f, 1.0f / 6.5e4f, 0.999999f};
    for (size_t r = 0; r < sizeof recips / sizeof recips[0]; r++) {
        float recip = recips[r], amax = 1.0f / recip;
        for (int i = 0; i < (1 << 20); i++) {
            float u = uniform(), v;
            if (i & 1) v = amax * (u * 2.0f - 1.0f);
            else v = amax * powf(2.0f, -30.0f * u) * ((next64() & 1) ? 1.0f : -1.0f);
            if (i % 7 == 0) v *= 1.0f + uniform() * 1e-6f;   /* a hair beyond absmax at times */
            PUSH(v, recip);
        }
        FLUSH(recip);
    }
    /* every length 0..130 (tails) on random values */
    for (size_t len = 0; len <= 130; len++) {
        for (size_t i = 0; i < len; i++) xs[i] = uniform() * 2.0f - 1.0f;
        memset(out, 0xA5, 200);
        bad += check_batch(name, t, &s, xs, len, 1.0f, out);
        if (out[len] != 0xA5) { fprintf(stderr, "  %s: wrote past n=%zu\n", name, len); bad++; }
    }
    printf("  %-28s quantize: %ld mismatches\n", name, bad);
    if (bad) failed++; else passed++;
    free(xs); free(out);
    qembed__vbmi_quant_free(t);
}

static void check_dequant(const char *name, const float *code) {
    qembed__vbmi_dequant *t = qembed__vbmi_dequant_new(code);
    uint8_t q[1000];
    float out[1001];
    long bad = 0;
    const float amax[] = {1.0f, 3.7f, 1e-30f, 6.5e4f, 0.0f};
    for (size_t a = 0; a < sizeof amax / sizeof amax[0]; a++) {
        for (int i = 0; i < 1000; i++) q[i] = (uint8_t)(i < 256 ? (uint64_t)i : next64());
        for (size_t n = 0; n <= 1000; n += (n < 130 ? 1 : 87)) {
            out[n] = 12345.0f;
            qembed__vbmi_dequantize(t, q, n, amax[a], out);
            for (size_t i = 0; i < n; i++) {
                float want = code[q[i]] * amax[a];
                if (qe_bits(out[i]) != qe_bits(want)) {
                    if (bad < 5) fprintf(stderr, "  %s: dequantize q=%u absmax=%g got %a want %a\n", name, q[i], amax[a], out[i], want);
                    bad++;
                }
            }
            if (out[n] != 12345.0f) { fprintf(stderr, "  %s: dequantize wrote past n=%zu\n", name, n); bad++; }
        }
    }
    printf("  %-28s dequantize: %ld mismatches\n", name, bad);
    if (bad) failed++; else passed++;
    qembed__vbmi_dequant_free(t);
}

static void check_exhaustive(const char *name, const float *code, uint32_t neg_from) {
    spec_t s;
    spec_init(&s, code);
    qembed__vbmi_quant *t = qembed__vbmi_quant_new(code);
    if (!t) { printf("  %s does not fit\n", name); failed++; return; }
    float *xs = malloc(BATCH * sizeof(float));
    uint8_t *out = malloc(BATCH);
    long bad = 0;
    size_t n = 0;
    /* magnitudes 0 .. bits(1.0), positive then negative (negatives from neg_from) */
    for (int sign = 0; sign < 2; sign++) {
        for (uint64_t u = sign ? neg_from : 0; u <= 0x3F800000u; u++) {
            xs[n++] = sign ? -f_of((uint32_t)u) : f_of((uint32_t)u);
            if (n == BATCH) { bad += check_batch(name, t, &s, xs, n, 1.0f, out); n = 0; }
            if ((u & 0x0FFFFFFF) == 0 && u) { fprintf(stderr, "  %s: sign %d at %#llx, %ld mismatches\n", name, sign, (unsigned long long)u, bad); }
        }
    }
    bad += check_batch(name, t, &s, xs, n, 1.0f, out);
    printf("  %-28s exhaustive over %s: %ld mismatches\n", name, "[-1, 1]", bad);
    if (bad) failed++; else passed++;
    free(xs); free(out);
    qembed__vbmi_quant_free(t);
}

/* ---- 4-bit (FP4/NF4) ---------------------------------------------------- */

typedef struct { float mids[16]; uint8_t order[16]; } spec4_t;

/* FourBit.Levels: levels sorted stably, float32 midpoints, +inf pad. */
static void spec4_init(spec4_t *s, int type) {
    float c[16];
    qembed_get_4bit_code(type, c);
    int idx[16];
    for (int i = 0; i < 16; i++) idx[i] = i;
    for (int i = 1; i < 16; i++)
        for (int j = i; j > 0 && c[idx[j]] < c[idx[j - 1]]; j--) { int x = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = x; }
    for (int i = 0; i < 15; i++) s->mids[i] = (c[idx[i]] + c[idx[i + 1]]) / 2.0f;
    s->mids[15] = INFINITY;
    for (int i = 0; i < 16; i++) s->order[i] = (uint8_t)idx[i];
}

static uint8_t spec4_nibble(const spec4_t *s, float x, float recip) {
    float v = x * recip;
    v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    int c = 0;
    for (int i = 0; i < 15; i++) c += s->mids[i] < v;
    return s->order[c];
}

static long check4_batch(const char *what, const spec4_t *s, const float *xs, size_t n, float recip, uint8_t *out) {
    qembed__vbmi_quantize_4bit(s->mids, s->order, xs, n, recip, out);
    long bad = 0;
    for (size_t k = 0; k < (n + 1) / 2; k++) {
        uint8_t lo = 2 * k + 1 < n ? spec4_nibble(s, xs[2 * k + 1], recip) : spec4_nibble(s, 0.0f, recip);
        uint8_t want = (uint8_t)(spec4_nibble(s, xs[2 * k], recip) << 4 | lo);
        if (out[k] != want) {
            if (bad < 5) fprintf(stderr, "  %s: x=%a,%a recip=%a kernel %#x spec %#x\n", what, xs[2 * k],
                                 2 * k + 1 < n ? xs[2 * k + 1] : 0.0f, recip, out[k], want);
            bad++;
        }
    }
    return bad;
}

/* The 4-bit kernel against the spec: quick (parity set) or exhaustive
 * (every float in [-1, 1], both signs). */
static void check4(const char *name, int type, int exhaustive) {
    spec4_t s;
    spec4_init(&s, type);
    float *xs = malloc(BATCH * sizeof(float));
    uint8_t *out = malloc(BATCH);
    long bad = 0;
    size_t n = 0;
#define FLUSH4(recip) do { bad += check4_batch(name, &s, xs, n, recip, out); n = 0; } while (0)
#define PUSH4(v, recip) do { xs[n++] = (v); if (n == BATCH) FLUSH4(recip); } while (0)
    if (exhaustive) {
        for (int sign = 0; sign < 2; sign++)
            for (uint64_t u = 0; u <= 0x3F800000u; u++) {
                xs[n++] = sign ? -f_of((uint32_t)u) : f_of((uint32_t)u);
                if (n == BATCH) { bad += check4_batch(name, &s, xs, n, 1.0f, out); n = 0; }
            }
        bad += check4_batch(name, &s, xs, n, 1.0f, out);
    } else {
        for (int i = 0; i < 15; i++) {
            uint32_t m = qe_bits(s.mids[i]) & 0x7FFFFFFFu;
            for (int d = -256; d <= 256; d++) {
                if ((int64_t)m + d < 0 || m + (uint32_t)d > 0x3F800000u) continue;
                PUSH4(f_of(m + (uint32_t)d), 1.0f);
                PUSH4(-f_of(m + (uint32_t)d), 1.0f);
            }
        }
        for (uint32_t u = 0; u <= 0x3F800000u; u += 9973) { PUSH4(f_of(u), 1.0f); PUSH4(-f_of(u), 1.0f); }
        const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, 1.0000001f, -1.0000001f, 1.5f, -1.5f, 3.4e38f, -3.4e38f, 1e-45f, -1e-45f};
        for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) PUSH4(edges[i], 1.0f);
        if (n & 1) PUSH4(0.5f, 1.0f);
        FLUSH4(1.0f);
        const float recips[] = {1.0f / 3.7f, 1.0f / 0.0123f, 1.0f / 1e-30f, 0.999999f};
        for (size_t r = 0; r < sizeof recips / sizeof recips[0]; r++) {
            float recip = recips[r], amax = 1.0f / recip;
            for (int i = 0; i < (1 << 20); i++) {
                float u = uniform(), v = (i & 1) ? amax * (u * 2.0f - 1.0f)
                                                 : amax * powf(2.0f, -12.0f * u) * ((next64() & 1) ? 1.0f : -1.0f);
                if (i % 7 == 0) v *= 1.0f + uniform() * 1e-6f;
                PUSH4(v, recip);
            }
            FLUSH4(recip);
        }
        for (size_t len = 0; len <= 130; len++) {
            for (size_t i = 0; i < len; i++) xs[i] = uniform() * 2.0f - 1.0f;
            memset(out, 0xA5, 200);
            bad += check4_batch(name, &s, xs, len, 1.0f, out);
            if (out[(len + 1) / 2] != 0xA5) { fprintf(stderr, "  %s: wrote past n=%zu\n", name, len); bad++; }
        }
    }
    printf("  %-28s 4-bit %s: %ld mismatches\n", name, exhaustive ? "exhaustive over [-1, 1]" : "quantize", bad);
    if (bad) failed++; else passed++;
    free(xs); free(out);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "quick";
#ifdef QEMBED_VBMI_EMULATE
    printf("vbmi_check %s: kernels compiled against SIMDe (portable AVX-512)\n", mode);
#else
    if (!qembed__vbmi_cpu()) { printf("vbmi_check: this CPU has no AVX-512 VBMI; build without QEMBED_VBMI_NATIVE\n"); return 1; }
    printf("vbmi_check %s: native AVX-512 VBMI\n", mode);
#endif
    float sd[256], ud[256], code[256];
    qembed_create_dynamic_map(true, 7, 8, sd);
    qembed_create_dynamic_map(false, 7, 8, ud);
    if (strcmp(mode, "exhaustive") == 0) {
        check_exhaustive("dynamic signed", sd, 0);
        check_exhaustive("dynamic unsigned", ud, 0);
        check4("nf4", QEMBED_QUANT_NF4, 1);
        check4("fp4", QEMBED_QUANT_FP4, 1);
    } else {
        check_quick("dynamic signed", sd);
        check_quick("dynamic unsigned", ud);
        check_dequant("dynamic signed", sd);
        check_dequant("dynamic unsigned", ud);
        check4("nf4", QEMBED_QUANT_NF4, 0);
        check4("fp4", QEMBED_QUANT_FP4, 0);
        char name[64];
        for (int sg = 0; sg < 2; sg++)
            for (int tb = 2; tb <= 8; tb++)
                for (int e = 1; e < tb; e++) {
                    if (qembed_create_dynamic_map(sg, e, tb, code) != QEMBED_OK) continue;
                    snprintf(name, sizeof name, "dynamic(%s,%d,%d)", sg ? "signed" : "unsigned", e, tb);
                    check_quick(name, code);
                }
        for (int sg = 0; sg < 2; sg++) {
            qembed_create_linear_map(sg, 8, true, code);
            check_quick(sg ? "linear signed" : "linear unsigned", code);
            check_dequant(sg ? "linear signed" : "linear unsigned", code);
        }
        if (qembed_create_fp8_map(true, 4, 3, 8, code) == QEMBED_OK) { check_quick("fp8 e4m3", code); check_dequant("fp8 e4m3", code); }
        if (qembed_create_normal_map(0.9677083, true, code) == QEMBED_OK) { check_quick("normal", code); check_dequant("normal", code); }
        /* random sorted codes with a zero entry and mirrored negatives (these fit
         * when their thresholds need few enough buckets), and asymmetric ones
         * (never fit: the kernel must refuse them, not misquantize) */
        for (int r = 0; r < 6; r++) {
            float h[128];
            float span = r < 3 ? 6.0f : 14.0f;
            for (int i = 0; i < 128; i++) h[i] = powf(2.0f, -span * uniform());
            for (int i = 1; i < 128; i++) for (int j = i; j > 0 && h[j] < h[j - 1]; j--) { float x = h[j]; h[j] = h[j - 1]; h[j - 1] = x; }
            h[127] = 1.0f;
            code[127] = 0.0f;
            for (int i = 0; i < 128; i++) code[128 + i] = h[i];
            for (int i = 0; i < 127; i++) code[126 - i] = -h[i];
            snprintf(name, sizeof name, "random mirrored %d", r);
            check_quick(name, code);
            check_dequant(name, code);
            code[50] = (code[49] + code[50]) / 2.0f;   /* one negative entry moved: asymmetric */
            qembed__vbmi_quant *t = qembed__vbmi_quant_new(code);
            printf("  %-28s %s\n", "random asymmetric", t ? "FITS (wrong)" : "refused (right)");
            if (t) { failed++; qembed__vbmi_quant_free(t); } else passed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
