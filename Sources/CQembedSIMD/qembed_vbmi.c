/* AVX-512 VBMI register-table kernels: the exact 8-bit code search and
 * dequantization (see include/qembed_vbmi.h for the rule and the method).
 *
 * Every kernel function carries its own target attribute, so this file
 * builds in every CPU tier and runs only where qembed__vbmi_enabled() says.
 * Built with -DQEMBED_VBMI_EMULATE, the same kernels compile against SIMDe's
 * portable AVX-512 (libsimde-dev) for the exhaustive and parity checks on
 * machines without AVX-512 (tools/vbmi_check.c, built with gcc: SIMDe 0.7.4
 * does not build under clang 21). With -DQEMBED_VBMI_EXTERNAL this file is
 * empty and the kernels come from such an emulated object linked in
 * (make test-vbmi-swift). */
#include "qembed_vbmi.h"
#ifndef QEMBED_VBMI_EXTERNAL

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef QEMBED_VBMI_EMULATE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define QE_TARGET
#else
#include <cpuid.h>
#include <immintrin.h>
#if defined(__clang__) && __clang_major__ >= 18
#define QE_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vbmi,evex512")))
#else
#define QE_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vbmi")))
#endif
#endif

#define QE_INLINE static inline __attribute__((always_inline)) QE_TARGET

/* ---- CPU check ---------------------------------------------------------- */

static int qe_cpu_cached = -1;   /* -1 unknown, 0 no, 1 yes */
static int qe_switch = 1;        /* qembed__vbmi_set_enabled */

int qembed__vbmi_cpu(void) {
    int c = __atomic_load_n(&qe_cpu_cached, __ATOMIC_RELAXED);
    if (c >= 0) return c;
    c = 0;
#ifdef QEMBED_VBMI_EMULATE
    /* make test-vbmi-swift: the Swift core over the emulated kernels */
    c = getenv("QEMBED_VBMI_EMULATED") != NULL;
#else
    unsigned a, b, cx, d;
    if (__get_cpuid(1, &a, &b, &cx, &d) && (cx & (1u << 27))) {   /* OSXSAVE */
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        /* SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM state enabled by the OS */
        if ((lo & 0xE6u) == 0xE6u && __get_cpuid_count(7, 0, &a, &b, &cx, &d)) {
            int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vbmi = (cx >> 1) & 1;
            c = f && dq && bw && vbmi;
        }
    }
    const char *env = getenv("QEMBED_CPU");  /* a forced lower tier means no AVX-512 */
    if (env && (strcmp(env, "baseline") == 0 || strcmp(env, "avx2") == 0)) c = 0;
#endif
    __atomic_store_n(&qe_cpu_cached, c, __ATOMIC_RELAXED);
    return c;
}

int qembed__vbmi_enabled(void) {
    return __atomic_load_n(&qe_switch, __ATOMIC_RELAXED) && qembed__vbmi_cpu();
}

void qembed__vbmi_set_enabled(int on) { __atomic_store_n(&qe_switch, on ? 1 : 0, __ATOMIC_RELAXED); }

/* ---- Tables -------------------------------------------------------------- */

struct qembed__vbmi_quant {
    uint8_t cand[512];       /* per bucket: #{T_j below the bucket's first key} */
    uint8_t tplane[4][256];  /* byte k of T[c] (0xFFFFFFFF past the last) */
    uint32_t sh[32], off[32];/* per binade e (index e & 31): bucket = (key >> sh) + off */
    uint32_t kmin, kmax;     /* key clamps: e0 << 24 and key(-1.0) */
    uint32_t neg;            /* N: number of negative midpoints */
    uint32_t small;          /* <= 256 buckets and <= 128 thresholds: the short form */
    uint8_t ilo[64], ihi[64], perm[64]; /* byte selections (long form) and pack -> natural order */
};

struct qembed__vbmi_dequant {
    uint8_t plane[4][256];   /* byte k of bits(code[i]) */
    uint8_t topack[64];      /* natural -> pack order of 64 codes */
};

static void *qe_alloc(size_t size) {
    size = (size + 63) & ~(size_t)63;
    return aligned_alloc(64, size);
}

/* "Pack order": after packus_epi32 / packus_epi16 of four 16-lane vectors,
 * byte P = 16L + 4r + q holds element 16r + 4L + q; the map is an
 * involution, and the byte transposition below undoes it. */
static uint8_t qe_pack_index(int p) { return (uint8_t)(16 * ((p >> 2) & 3) + 4 * (p >> 4) + (p & 3)); }

static uint32_t qe_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

qembed__vbmi_quant *qembed__vbmi_quant_new(const float *code) {
    uint32_t T[256];
    float negmag[255];
    int nT = 0, N = 0;
    for (int i = 0; i < 255; i++) {
        float m = (code[i] + code[i + 1]) / 2.0f;   /* float32, as the spec */
        float mid = m + 0.0f;
        if (!(mid > -1.0f && mid < 1.0f) || mid == 0.0f) return NULL;
        if (mid < 0) negmag[N++] = -mid; else T[nT++] = qe_bits(mid) << 1;
    }
    if (nT == 0) return NULL;
    for (int j = 1; j < nT; j++) if (T[j] <= T[j - 1]) return NULL;
    /* Negative magnitudes (ascending) must be the N smallest thresholds. */
    if (N > nT) return NULL;
    for (int j = 0; j < N; j++) if ((qe_bits(negmag[N - 1 - j]) << 1) != T[j]) return NULL;

    struct qembed__vbmi_quant *t = qe_alloc(sizeof *t);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    uint32_t e0 = T[0] >> 24;
    if (127 - e0 > 31) { free(t); return NULL; }
    uint32_t base = 0;
    int j = 0;
    for (uint32_t e = e0; e < 127; e++) {
        int first = j;
        while (j < nT && (T[j] >> 24) == e) j++;
        int n = 0;
        for (;; n++) {
            if (base + (1u << n) > 511) { free(t); return NULL; }
            int ok = 1;
            for (int i = first + 1; i < j && ok; i++)
                ok = ((T[i] - (e << 24)) >> (24 - n)) != ((T[i - 1] - (e << 24)) >> (24 - n));
            if (ok) break;
        }
        uint32_t sh = 24 - (uint32_t)n;
        t->sh[e & 31] = sh;
        t->off[e & 31] = base - ((e << 24) >> sh);
        for (uint32_t b = 0; b < (1u << n); b++) {
            uint32_t lo = (e << 24) + (b << sh);
            int c = 0;
            while (c < nT && T[c] < lo) c++;
            t->cand[base + b] = (uint8_t)c;
        }
        base += 1u << n;
    }
    /* The 1.0 binade: one bucket holding |s| >= 1 (no threshold lies there). */
    t->sh[127 & 31] = 24;
    t->off[127 & 31] = base - 127;
    t->cand[base] = (uint8_t)(nT - 1);
    for (int c = 0; c < 256; c++) {
        uint32_t v = c < nT ? T[c] : 0xFFFFFFFFu;
        for (int k = 0; k < 4; k++) t->tplane[k][c] = (uint8_t)(v >> (8 * k));
    }
    t->kmin = e0 << 24;
    t->kmax = 0x7F000001u;
    t->neg = (uint32_t)N;
    /* Short form: bucket numbers fit a byte (packus saturates at 255, and
     * the last bucket is base) and T has at most 128 entries (one vpermi2b
     * per plane; cand <= nT - 1 < 128). */
    t->small = base <= 255 && nT <= 128;
    for (int p = 0; p < 64; p++) {
        int L = p >> 4, r = (p >> 2) & 3, q = p & 3;
        int byte = r < 2 ? 2 * (8 * L + 4 * r + q) : 64 + 2 * (8 * L + 4 * (r - 2) + q);
        t->ilo[p] = (uint8_t)byte;
        t->ihi[p] = (uint8_t)(byte + 1);
        t->perm[p] = qe_pack_index(p);
    }
    return t;
}

void qembed__vbmi_quant_free(qembed__vbmi_quant *t) { free(t); }

qembed__vbmi_dequant *qembed__vbmi_dequant_new(const float *code) {
    struct qembed__vbmi_dequant *t = qe_alloc(sizeof *t);
    if (!t) return NULL;
    for (int i = 0; i < 256; i++) {
        uint32_t v = qe_bits(code[i]);
        for (int k = 0; k < 4; k++) t->plane[k][i] = (uint8_t)(v >> (8 * k));
    }
    for (int p = 0; p < 64; p++) t->topack[p] = qe_pack_index(p);
    return t;
}

void qembed__vbmi_dequant_free(qembed__vbmi_dequant *t) { free(t); }

/* ---- Kernels ------------------------------------------------------------- */


/* Four planes of bytes in pack order -> four dword vectors in natural order. */
#define QE_TRANSPOSE4(p0, p1, p2, p3, d0, d1, d2, d3) do { \
    __m512i l01 = _mm512_unpacklo_epi8(p0, p1), h01 = _mm512_unpackhi_epi8(p0, p1); \
    __m512i l23 = _mm512_unpacklo_epi8(p2, p3), h23 = _mm512_unpackhi_epi8(p2, p3); \
    d0 = _mm512_unpacklo_epi16(l01, l23); d1 = _mm512_unpackhi_epi16(l01, l23); \
    d2 = _mm512_unpacklo_epi16(h01, h23); d3 = _mm512_unpackhi_epi16(h01, h23); } while (0)

/* 256-entry byte table (4 registers) at 64 indices. */
#define QE_LOOKUP256(t0, t1, t2, t3, idx) \
    _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), _mm512_permutex2var_epi8(t0, idx, t1), \
                           _mm512_permutex2var_epi8(t2, idx, t3))

typedef struct {
    __m512i cand[8], tp[4][4];
    __m512i sh0, sh1, of0, of1, kmin, kmax, ilo, ihi, perm, neg;
    __m512 r;
} qe_qregs;

QE_INLINE __m512i qe_load(const void *p) { return _mm512_loadu_si512(p); }

/* Keys (bits(s) << 1 | sign), sign masks and bucket numbers of 64 floats. */
QE_INLINE uint64_t qe_keys(const qe_qregs *R, const float *x, __m512i k[4], __m512i b[4]) {
    uint64_t neg = 0;
    for (int j = 0; j < 4; j++) {
        __m512i si = _mm512_castps_si512(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * j), R->r));
        neg |= (uint64_t)(uint16_t)_mm512_movepi32_mask(si) << (16 * j);
        k[j] = _mm512_rol_epi32(si, 1);
        __m512i kc = _mm512_min_epu32(_mm512_max_epu32(k[j], R->kmin), R->kmax);
        __m512i e = _mm512_srli_epi32(kc, 24);
        __m512i sh = _mm512_permutex2var_epi32(R->sh0, e, R->sh1);
        __m512i of = _mm512_permutex2var_epi32(R->of0, e, R->of1);
        b[j] = _mm512_add_epi32(_mm512_srlv_epi32(kc, sh), of);
    }
    return neg;
}

/* The count from cand (pack order) and T[cand] (natural order), stored. */
QE_INLINE void qe_finish(const qe_qregs *R, const __m512i k[4], uint64_t neg, __m512i c,
                         __m512i p0, __m512i p1, __m512i p2, __m512i p3, uint8_t *out) {
    __m512i d0, d1, d2, d3;
    QE_TRANSPOSE4(p0, p1, p2, p3, d0, d1, d2, d3);
    /* key > T[cand], i.e. not (T[cand] >= key) */
    uint64_t gt = (uint64_t)(uint16_t)~_mm512_cmpge_epu32_mask(d0, k[0])
                | (uint64_t)(uint16_t)~_mm512_cmpge_epu32_mask(d1, k[1]) << 16
                | (uint64_t)(uint16_t)~_mm512_cmpge_epu32_mask(d2, k[2]) << 32
                | (uint64_t)(uint16_t)~_mm512_cmpge_epu32_mask(d3, k[3]) << 48;
    __m512i cn = _mm512_permutexvar_epi8(R->perm, c);
    __m512i cnt = _mm512_mask_sub_epi8(cn, gt, cn, _mm512_set1_epi8(-1));
    /* s >= +0: N + count; s < 0: max(N - count, 0) */
    __m512i q = _mm512_mask_subs_epu8(_mm512_add_epi8(cnt, R->neg), neg, R->neg, cnt);
    _mm512_storeu_si512(out, q);
}

/* Long form: up to 512 buckets (9-bit numbers), up to 256 thresholds. */
QE_INLINE void qe_q64(const qe_qregs *R, const float *x, uint8_t *out) {
    __m512i k[4], b[4];
    uint64_t neg = qe_keys(R, x, k, b);
    /* 9-bit bucket numbers as low bytes and bit 8, in pack order */
    __m512i w0 = _mm512_packus_epi32(b[0], b[1]), w1 = _mm512_packus_epi32(b[2], b[3]);
    __m512i lo = _mm512_permutex2var_epi8(w0, R->ilo, w1);
    __m512i hi = _mm512_permutex2var_epi8(w0, R->ihi, w1);
    __m512i c01 = QE_LOOKUP256(R->cand[0], R->cand[1], R->cand[2], R->cand[3], lo);
    __m512i c23 = QE_LOOKUP256(R->cand[4], R->cand[5], R->cand[6], R->cand[7], lo);
    __m512i c = _mm512_mask_blend_epi8(_mm512_test_epi8_mask(hi, hi), c01, c23);
    /* T[cand] as four byte planes */
    qe_finish(R, k, neg, c,
              QE_LOOKUP256(R->tp[0][0], R->tp[0][1], R->tp[0][2], R->tp[0][3], c),
              QE_LOOKUP256(R->tp[1][0], R->tp[1][1], R->tp[1][2], R->tp[1][3], c),
              QE_LOOKUP256(R->tp[2][0], R->tp[2][1], R->tp[2][2], R->tp[2][3], c),
              QE_LOOKUP256(R->tp[3][0], R->tp[3][1], R->tp[3][2], R->tp[3][3], c), out);
}

/* Short form (the signed dynamic map): bucket numbers are bytes, cand a
 * 256-byte table (4 registers), T at most 128 entries (2 per plane):
 * 21 table registers in all, against 35 for the long form. */
QE_INLINE void qe_q64_small(const qe_qregs *R, const float *x, uint8_t *out) {
    __m512i k[4], b[4];
    uint64_t neg = qe_keys(R, x, k, b);
    __m512i bb = _mm512_packus_epi16(_mm512_packus_epi32(b[0], b[1]), _mm512_packus_epi32(b[2], b[3]));
    __m512i c = QE_LOOKUP256(R->cand[0], R->cand[1], R->cand[2], R->cand[3], bb);
    qe_finish(R, k, neg, c,
              _mm512_permutex2var_epi8(R->tp[0][0], c, R->tp[0][1]),
              _mm512_permutex2var_epi8(R->tp[1][0], c, R->tp[1][1]),
              _mm512_permutex2var_epi8(R->tp[2][0], c, R->tp[2][1]),
              _mm512_permutex2var_epi8(R->tp[3][0], c, R->tp[3][1]), out);
}

#define QE_QUANTIZE_LOOP(KERNEL) do { \
    size_t i = 0; \
    for (; i + 64 <= n; i += 64) KERNEL(&R, x + i, out + i); \
    if (i < n) { \
        float buf[64]; \
        uint8_t res[64]; \
        memset(buf, 0, sizeof buf); \
        memcpy(buf, x + i, (n - i) * sizeof(float)); \
        KERNEL(&R, buf, res); \
        memcpy(out + i, res, n - i); \
    } } while (0)

QE_TARGET void qembed__vbmi_quantize(const qembed__vbmi_quant *t, const float *x, size_t n, float recip, uint8_t *out) {
    qe_qregs R;
    R.sh0 = qe_load(t->sh); R.sh1 = qe_load(t->sh + 16);
    R.of0 = qe_load(t->off); R.of1 = qe_load(t->off + 16);
    R.kmin = _mm512_set1_epi32((int)t->kmin);
    R.kmax = _mm512_set1_epi32((int)t->kmax);
    R.perm = qe_load(t->perm);
    R.neg = _mm512_set1_epi8((char)t->neg);
    R.r = _mm512_set1_ps(recip);
    if (t->small) {
        for (int i = 0; i < 4; i++) R.cand[i] = qe_load(t->cand + 64 * i);
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < 2; i++) R.tp[k][i] = qe_load(t->tplane[k] + 64 * i);
        QE_QUANTIZE_LOOP(qe_q64_small);
        return;
    }
    for (int i = 0; i < 8; i++) R.cand[i] = qe_load(t->cand + 64 * i);
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 4; i++) R.tp[k][i] = qe_load(t->tplane[k] + 64 * i);
    R.ilo = qe_load(t->ilo); R.ihi = qe_load(t->ihi);
    QE_QUANTIZE_LOOP(qe_q64);
}

QE_INLINE void qe_dq64(const __m512i P[4][4], __m512i topack, __m512 a, const uint8_t *q, float *out) {
    __m512i c = _mm512_permutexvar_epi8(topack, qe_load(q));
    __m512i p0 = QE_LOOKUP256(P[0][0], P[0][1], P[0][2], P[0][3], c);
    __m512i p1 = QE_LOOKUP256(P[1][0], P[1][1], P[1][2], P[1][3], c);
    __m512i p2 = QE_LOOKUP256(P[2][0], P[2][1], P[2][2], P[2][3], c);
    __m512i p3 = QE_LOOKUP256(P[3][0], P[3][1], P[3][2], P[3][3], c);
    __m512i d0, d1, d2, d3;
    QE_TRANSPOSE4(p0, p1, p2, p3, d0, d1, d2, d3);
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_castsi512_ps(d0), a));
    _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_castsi512_ps(d1), a));
    _mm512_storeu_ps(out + 32, _mm512_mul_ps(_mm512_castsi512_ps(d2), a));
    _mm512_storeu_ps(out + 48, _mm512_mul_ps(_mm512_castsi512_ps(d3), a));
}

QE_TARGET void qembed__vbmi_dequantize(const qembed__vbmi_dequant *t, const uint8_t *q, size_t n, float absmax, float *out) {
    __m512i P[4][4];
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 4; i++) P[k][i] = qe_load(t->plane[k] + 64 * i);
    __m512i tp = qe_load(t->topack);
    __m512 a = _mm512_set1_ps(absmax);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) qe_dq64((const __m512i (*)[4])P, tp, a, q + i, out + i);
    if (i < n) {
        uint8_t buf[64];
        float res[64];
        memset(buf, 0, sizeof buf);
        memcpy(buf, q + i, n - i);
        qe_dq64((const __m512i (*)[4])P, tp, a, buf, res);
        memcpy(out + i, res, (n - i) * sizeof(float));
    }
}
/* ---- Fused Adam 8-bit block ---------------------------------------------- */

/* 64 codes -> four 16-float vectors (code[q] * a), natural order. */
QE_INLINE void qe_dq64_regs(const qembed__vbmi_dequant *t, __m512 a, const uint8_t *q, __m512 out[4]) {
    __m512i c = _mm512_permutexvar_epi8(qe_load(t->topack), qe_load(q));
    __m512i p[4];
    for (int k = 0; k < 4; k++)
        p[k] = QE_LOOKUP256(qe_load(t->plane[k]), qe_load(t->plane[k] + 64), qe_load(t->plane[k] + 128),
                            qe_load(t->plane[k] + 192), c);
    __m512i d0, d1, d2, d3;
    QE_TRANSPOSE4(p[0], p[1], p[2], p[3], d0, d1, d2, d3);
    out[0] = _mm512_mul_ps(_mm512_castsi512_ps(d0), a);
    out[1] = _mm512_mul_ps(_mm512_castsi512_ps(d1), a);
    out[2] = _mm512_mul_ps(_mm512_castsi512_ps(d2), a);
    out[3] = _mm512_mul_ps(_mm512_castsi512_ps(d3), a);
}

/* a * b + c with one rounding. (SIMDe's portable _mm512_fmadd_ps rounds
 * twice where the build has no FMA: the emulated build uses fmaf.) */
QE_INLINE __m512 qe_fmadd(__m512 a, __m512 b, __m512 c) {
#ifdef QEMBED_VBMI_EMULATE
    float x[16], y[16], z[16];
    _mm512_storeu_ps(x, a); _mm512_storeu_ps(y, b); _mm512_storeu_ps(z, c);
    for (int i = 0; i < 16; i++) z[i] = fmaf(x[i], y[i], z[i]);
    return _mm512_loadu_ps(z);
#else
    return _mm512_fmadd_ps(a, b, c);
#endif
}

typedef struct {
    __m512 b1, b2, omb1, omb2, eps, decay, c2, ic2, nlr, am1, am2;
    __m512i mag, sign;
    int wd, skip;
} qe_adam_regs;

/* The update of 64 elements (every pointer valid for 64); the new states'
 * magnitude bits are folded into max1/max2. */
QE_INLINE void qe_adam64(const qembed__adam8 *k, const qe_adam_regs *A, float *p, const float *g, const uint8_t *c1,
                         const uint8_t *c2, float *t1, float *t2, __m512i *max1, __m512i *max2) {
    __m512 m[4], v[4];
    qe_dq64_regs(k->dq1, A->am1, c1, m);
    qe_dq64_regs(k->dq2, A->am2, c2, v);
    for (int j = 0; j < 4; j++) {
        __m512 gv = _mm512_loadu_ps(g + 16 * j), p0 = _mm512_loadu_ps(p + 16 * j);
        __m512 s1 = _mm512_add_ps(_mm512_mul_ps(m[j], A->b1), _mm512_mul_ps(gv, A->omb1));
        __m512 s2 = _mm512_add_ps(_mm512_mul_ps(v[j], A->b2), _mm512_mul_ps(_mm512_mul_ps(A->omb2, gv), gv));
        __m512 r = _mm512_sqrt_ps(s2);
        /* r / c2 correctly rounded (divideByC2): q = r * (1 / c2), then q + (r - q c2) / c2 */
        __m512 q = _mm512_mul_ps(r, A->ic2);
        __m512 nq = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(q), A->sign));
        __m512 den = _mm512_add_ps(qe_fmadd(qe_fmadd(nq, A->c2, r), A->ic2, q), A->eps);
        __m512 pv = A->wd ? _mm512_mul_ps(p0, A->decay) : p0;
        pv = _mm512_add_ps(pv, _mm512_mul_ps(A->nlr, _mm512_div_ps(s1, den)));
        if (A->skip) {
            uint16_t z = (uint16_t)_mm512_cmp_ps_mask(gv, _mm512_setzero_ps(), _CMP_EQ_OQ);
            pv = _mm512_mask_blend_ps(z, pv, p0);
            s1 = _mm512_mask_blend_ps(z, s1, m[j]);
            s2 = _mm512_mask_blend_ps(z, s2, v[j]);
        }
        _mm512_storeu_ps(p + 16 * j, pv);
        _mm512_storeu_ps(t1 + 16 * j, s1);
        _mm512_storeu_ps(t2 + 16 * j, s2);
        *max1 = _mm512_max_epu32(*max1, _mm512_and_si512(_mm512_castps_si512(s1), A->mag));
        *max2 = _mm512_max_epu32(*max2, _mm512_and_si512(_mm512_castps_si512(s2), A->mag));
    }
}

/* q[i] += 1 where q[i] == zero and t[i] > 0, for 64 elements. */
QE_INLINE void qe_floor64_at(uint8_t *q, const float *t, uint8_t zero) {
    __m512i c = qe_load(q);
    uint64_t pos = 0;
    for (int j = 0; j < 4; j++)
        pos |= (uint64_t)(uint16_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(t + 16 * j), _mm512_setzero_ps(), _CMP_GT_OQ) << (16 * j);
    uint64_t raise = pos & (uint64_t)_mm512_cmpeq_epi8_mask(c, _mm512_set1_epi8((char)zero));
    _mm512_storeu_si512(q, _mm512_mask_add_epi8(c, raise, c, _mm512_set1_epi8(1)));
}

/* The same over n elements (a padded copy for the tail). */
QE_INLINE void qe_floor_at(uint8_t *q, const float *t, size_t n, uint8_t zero) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) qe_floor64_at(q + i, t + i, zero);
    size_t left = n - i;
    if (left) {
        float tb[64];
        uint8_t cb[64];
        memset(tb, 0, sizeof tb);
        memset(cb, 0, sizeof cb);
        memcpy(tb, t + i, left * 4);
        memcpy(cb, q + i, left);
        qe_floor64_at(cb, tb, zero);
        memcpy(q + i, cb, left);
    }
}

QE_INLINE uint32_t qe_max_lane(__m512i v) {
    uint32_t l[16], m = 0;
    _mm512_storeu_si512(l, v);
    for (int i = 0; i < 16; i++) m = l[i] > m ? l[i] : m;
    return m;
}

QE_TARGET int qembed__vbmi_adam8_block(const qembed__adam8 *k, float *p, const float *g, uint8_t *q1, uint8_t *q2,
                                       float *a1, float *a2, size_t n, float *t1, float *t2) {
    qe_adam_regs A;
    A.b1 = _mm512_set1_ps(k->b1); A.b2 = _mm512_set1_ps(k->b2);
    A.omb1 = _mm512_set1_ps(k->one_minus_b1); A.omb2 = _mm512_set1_ps(k->one_minus_b2);
    A.eps = _mm512_set1_ps(k->eps); A.decay = _mm512_set1_ps(k->decay);
    A.c2 = _mm512_set1_ps(k->c2); A.ic2 = _mm512_set1_ps(k->inv_c2); A.nlr = _mm512_set1_ps(k->neg_lr_over_c1);
    A.am1 = _mm512_set1_ps(*a1); A.am2 = _mm512_set1_ps(*a2);
    A.mag = _mm512_set1_epi32(0x7FFFFFFF); A.sign = _mm512_set1_epi32((int)0x80000000);
    A.wd = k->weight_decay; A.skip = k->skip_zeros;
    __m512i max1 = _mm512_setzero_si512(), max2 = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) qe_adam64(k, &A, p + i, g + i, q1 + i, q2 + i, t1 + i, t2 + i, &max1, &max2);
    size_t left = n - i;
    if (left) {
        /* The tail through padded copies (unmasked vectors: masked stores are
         * slow on Zen 4). Padding: gradient 0, parameter 0, both states at
         * their zero codes, so the padded lanes' states are 0 and do not
         * move the block's absmax. */
        float pb[64], gb[64], s1b[64], s2b[64];
        uint8_t c1b[64], c2b[64];
        memset(pb, 0, sizeof pb); memset(gb, 0, sizeof gb);
        memset(c1b, k->zero1, sizeof c1b); memset(c2b, k->zero2, sizeof c2b);
        memcpy(pb, p + i, left * 4); memcpy(gb, g + i, left * 4);
        memcpy(c1b, q1 + i, left); memcpy(c2b, q2 + i, left);
        qe_adam64(k, &A, pb, gb, c1b, c2b, s1b, s2b, &max1, &max2);
        memcpy(p + i, pb, left * 4); memcpy(t1 + i, s1b, left * 4); memcpy(t2 + i, s2b, left * 4);
    }
    uint32_t top1 = qe_max_lane(max1), top2 = qe_max_lane(max2);
    float m1, m2;
    memcpy(&m1, &top1, 4);
    memcpy(&m2, &top2, 4);
    *a1 = m1;
    *a2 = m2;
    int fallback = 0;
    float r1 = m1 == 0 ? 0.0f : 1.0f / m1, r2 = m2 == 0 ? 0.0f : 1.0f / m2;
    if (isfinite(r1)) qembed__vbmi_quantize(k->q1, t1, n, r1, q1); else fallback |= 1;
    if (!isfinite(r2)) return fallback | 2;
    qembed__vbmi_quantize(k->q2, t2, n, r2, q2);
    /* a positive v never rests at the zero code (StateRounding.floorPositive) */
    qe_floor_at(q2, t2, n, k->zero2);
    return fallback;
}

/* ---- Fused one-state 8-bit blocks (Momentum, Lion, RMSprop, Adagrad) ---- */

typedef struct {
    __m512 b1, b2, omb1, omb2, eps, wd, decay, nlr, am;
    __m512i mag;
    int rule, wdon, skip, first;
} qe_step1_regs;

QE_INLINE void qe_step1_64(const qembed__step1 *k, const qe_step1_regs *S, float *p, const float *g, const uint8_t *c,
                           float *t, __m512i *mx) {
    __m512 m[4];
    qe_dq64_regs(k->dq, S->am, c, m);
    const __m512 zero = _mm512_setzero_ps();
    for (int j = 0; j < 4; j++) {
        __m512 gv = _mm512_loadu_ps(g + 16 * j), p0 = _mm512_loadu_ps(p + 16 * j);
        __m512 pv = p0, s1 = m[j];
        switch (S->rule) {
        case QEMBED__RULE_MOMENTUM: {
            __m512 gw = S->wdon ? _mm512_add_ps(gv, _mm512_mul_ps(S->wd, p0)) : gv;
            s1 = S->first ? gw : _mm512_add_ps(_mm512_mul_ps(s1, S->b1), gw);
            pv = _mm512_add_ps(pv, _mm512_mul_ps(S->nlr, s1));
            break;
        }
        case QEMBED__RULE_LION: {
            if (S->wdon) pv = _mm512_mul_ps(pv, S->decay);
            __m512 x = _mm512_add_ps(_mm512_mul_ps(s1, S->b1), _mm512_mul_ps(gv, S->omb1));
            __m512 u = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ), zero, _mm512_set1_ps(1.0f));
            u = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), u, _mm512_set1_ps(-1.0f));
            pv = _mm512_add_ps(pv, _mm512_mul_ps(S->nlr, u));
            s1 = _mm512_add_ps(_mm512_mul_ps(s1, S->b2), _mm512_mul_ps(gv, S->omb2));
            break;
        }
        case QEMBED__RULE_RMSPROP: {
            __m512 gw = S->wdon ? _mm512_add_ps(gv, _mm512_mul_ps(S->wd, p0)) : gv;
            s1 = _mm512_add_ps(_mm512_mul_ps(s1, S->b1), _mm512_mul_ps(_mm512_mul_ps(S->omb1, gw), gw));
            pv = _mm512_add_ps(pv, _mm512_mul_ps(S->nlr, _mm512_div_ps(gw, _mm512_add_ps(_mm512_sqrt_ps(s1), S->eps))));
            break;
        }
        default: { /* adagrad */
            __m512 gw = S->wdon ? _mm512_add_ps(gv, _mm512_mul_ps(S->wd, p0)) : gv;
            s1 = _mm512_add_ps(s1, _mm512_mul_ps(gw, gw));
            pv = _mm512_add_ps(pv, _mm512_mul_ps(S->nlr, _mm512_div_ps(gw, _mm512_add_ps(_mm512_sqrt_ps(s1), S->eps))));
            break;
        }
        }
        if (S->skip) {
            uint16_t z = (uint16_t)_mm512_cmp_ps_mask(gv, zero, _CMP_EQ_OQ);
            pv = _mm512_mask_blend_ps(z, pv, p0);
            s1 = _mm512_mask_blend_ps(z, s1, m[j]);
        }
        _mm512_storeu_ps(p + 16 * j, pv);
        _mm512_storeu_ps(t + 16 * j, s1);
        *mx = _mm512_max_epu32(*mx, _mm512_and_si512(_mm512_castps_si512(s1), S->mag));
    }
}

QE_TARGET int qembed__vbmi_step1_block(const qembed__step1 *k, float *p, const float *g, uint8_t *q1, float *a1, size_t n,
                                       float *t1) {
    qe_step1_regs S;
    S.b1 = _mm512_set1_ps(k->b1); S.b2 = _mm512_set1_ps(k->b2);
    S.omb1 = _mm512_set1_ps(k->one_minus_b1); S.omb2 = _mm512_set1_ps(k->one_minus_b2);
    S.eps = _mm512_set1_ps(k->eps); S.wd = _mm512_set1_ps(k->wd); S.decay = _mm512_set1_ps(k->decay);
    S.nlr = _mm512_set1_ps(k->neg_lr); S.am = _mm512_set1_ps(*a1);
    S.mag = _mm512_set1_epi32(0x7FFFFFFF);
    S.rule = k->rule; S.wdon = k->weight_decay; S.skip = k->skip_zeros; S.first = k->first_step;
    __m512i mx = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) qe_step1_64(k, &S, p + i, g + i, q1 + i, t1 + i, &mx);
    size_t left = n - i;
    if (left) {  /* padded copies, as in the Adam block: padded lanes end at state 0 */
        float pb[64], gb[64], tb[64];
        uint8_t cb[64];
        memset(pb, 0, sizeof pb); memset(gb, 0, sizeof gb); memset(cb, k->zero, sizeof cb);
        memcpy(pb, p + i, left * 4); memcpy(gb, g + i, left * 4); memcpy(cb, q1 + i, left);
        qe_step1_64(k, &S, pb, gb, cb, tb, &mx);
        memcpy(p + i, pb, left * 4); memcpy(t1 + i, tb, left * 4);
    }
    uint32_t top = qe_max_lane(mx);
    float m;
    memcpy(&m, &top, 4);
    *a1 = m;
    float r = m == 0 ? 0.0f : 1.0f / m;
    if (!isfinite(r)) return 1;
    qembed__vbmi_quantize(k->q, t1, n, r, q1);
    if (k->floor_state) qe_floor_at(q1, t1, n, k->zero);
    return 0;
}

/* ---- 4-bit code search -------------------------------------------------- */

/* 16 nibbles of 16 floats: a 4-step binary search over the 16 midpoints
 * held in one register (vpermps), then the sorted-position -> nibble map. */
QE_INLINE __m512i qe_nib16(__m512 mids, __m512i order, __m512 r, const float *x) {
    __m512 s = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x), r), _mm512_set1_ps(-1.0f)),
                             _mm512_set1_ps(1.0f));
    __m512i idx = _mm512_setzero_si512();
    for (int step = 8; step >= 1; step >>= 1) {
        __m512 m = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(step - 1)), mids);
        idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(m, s, _CMP_LT_OQ), idx, _mm512_set1_epi32(step));
    }
    return _mm512_permutexvar_epi32(idx, order);
}

/* Nibbles of two 16-float vectors (one per dword) -> 16 bytes, element 2k
 * in the high nibble: each qword becomes (lo << 4 | hi) in its low byte,
 * then one byte permute gathers those 16 bytes. */
QE_INLINE void qe_store_nibbles(__m512i a, __m512i b, __m512i gather, uint8_t *out) {
    __m512i pa = _mm512_or_si512(_mm512_slli_epi64(a, 4), _mm512_srli_epi64(a, 32));
    __m512i pb = _mm512_or_si512(_mm512_slli_epi64(b, 4), _mm512_srli_epi64(b, 32));
    _mm_storeu_si128((__m128i *)out, _mm512_castsi512_si128(_mm512_permutex2var_epi8(pa, gather, pb)));
}

QE_TARGET void qembed__vbmi_quantize_4bit(const float *mids, const uint8_t *order, const float *x, size_t n, float recip,
                                          uint8_t *out) {
    uint32_t o32[16];
    uint8_t g[64];
    for (int i = 0; i < 16; i++) o32[i] = order[i];
    for (int i = 0; i < 64; i++) g[i] = (uint8_t)(i < 16 ? 8 * i : 0);
    __m512 M = _mm512_loadu_ps(mids), r = _mm512_set1_ps(recip);
    __m512i O = qe_load(o32), G = qe_load(g);
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        qe_store_nibbles(qe_nib16(M, O, r, x + i), qe_nib16(M, O, r, x + i + 16), G, out + i / 2);
    if (i < n) {
        float buf[32];
        uint8_t res[16];
        memset(buf, 0, sizeof buf);
        memcpy(buf, x + i, (n - i) * sizeof(float));
        qe_store_nibbles(qe_nib16(M, O, r, buf), qe_nib16(M, O, r, buf + 16), G, res);
        memcpy(out + i / 2, res, (n - i + 1) / 2);
    }
}
#endif /* QEMBED_VBMI_EXTERNAL */
