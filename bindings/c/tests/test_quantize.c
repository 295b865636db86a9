/* test_quantize.c - the quantization kernels against an independent scalar
 * re-implementation of the documented rules (include/qembed.h):
 *   blockwise 8-bit (f32/f16/bf16 in and out, any code), 4-bit NF4/FP4,
 *   int8 row-wise (with outliers), nested statistics.
 * Every kernel result is recomputed here in float32 and compared bit for bit. */
#include "qembed.h"
#include "qtest.h"

#define GUARD 64
#define GUARD_BYTE 0xA5

static const int dtypes[3] = {QEMBED_DTYPE_F32, QEMBED_DTYPE_F16, QEMBED_DTYPE_BF16};
static const char *const dtype_names[3] = {"f32", "f16", "bf16"};

/* ---- test data ----------------------------------------------------------- */

/* An input array: `raw` in the given dtype, `x` the float32 values the
 * library sees (the dtype's values converted exactly to float32). */
typedef struct input {
    int dtype;
    int64_t n;
    void *raw;
    float *x;
} input;

/* n normal-ish values times `scale`; kind 1 adds exact zeros and a zero block
 * of 64 elements, kind 2 adds values at +-scale*3.5 and tiny ones. */
static float *make_values(uint64_t seed, int64_t n, float scale, int kind) {
    qt_rng r = qt_rng_make(seed);
    float *v = (float *)xmalloc((size_t)n * sizeof(float));
    int64_t i;
    for (i = 0; i < n; i++) v[i] = qt_normal(&r) * scale;
    if (kind == 1) {
        for (i = 0; i < n; i += 7) v[i] = 0.0f;
        for (i = 0; i < n && i < 64; i++) v[i] = (i & 1) ? -0.0f : 0.0f;
    } else if (kind == 2) {
        for (i = 0; i < n; i += 13) v[i] = (i & 2) ? scale * 3.5f : -scale * 3.5f;
        for (i = 5; i < n; i += 11) v[i] = scale * 1e-4f * qt_normal(&r);
    }
    return v;
}

static input make_input(const float *v, int64_t n, int dtype) {
    input in;
    int64_t i;
    in.dtype = dtype;
    in.n = n;
    in.x = (float *)xmalloc((size_t)n * sizeof(float));
    in.raw = xmalloc((size_t)n * qembed_dtype_size(dtype));
    for (i = 0; i < n; i++) {
        if (dtype == QEMBED_DTYPE_F32) {
            ((float *)in.raw)[i] = v[i];
            in.x[i] = v[i];
        } else if (dtype == QEMBED_DTYPE_F16) {
            uint16_t h = qt_f32_to_f16(v[i]);
            ((uint16_t *)in.raw)[i] = h;
            in.x[i] = qt_f16_to_f32(h);
        } else {
            uint16_t b = qt_f32_to_bf16(v[i]);
            ((uint16_t *)in.raw)[i] = b;
            in.x[i] = qt_bf16_to_f32(b);
        }
    }
    return in;
}

static void free_input(input *in) {
    free(in->raw);
    free(in->x);
}

static int guards_ok(const void *p, size_t from) {
    const unsigned char *b = (const unsigned char *)p + from;
    size_t i;
    for (i = 0; i < GUARD; i++)
        if (b[i] != GUARD_BYTE) return 0;
    return 1;
}

/* ---- the reference rules ------------------------------------------------- */

static int64_t nblocks_of(int64_t n, int64_t bs) { return (n + bs - 1) / bs; }

/* absmax of each block: max |x| in float32 */
static void ref_absmax(const float *x, int64_t n, int64_t bs, float *absmax) {
    int64_t b, i, nb = nblocks_of(n, bs);
    for (b = 0; b < nb; b++) {
        float m = 0.0f;
        for (i = b * bs; i < n && i < (b + 1) * bs; i++) {
            float a = fabsf(x[i]);
            if (a > m) m = a;
        }
        absmax[b] = m;
    }
}

/* scaled = clamp(x * (1/absmax), -1, 1) in float32; x / absmax when 1/absmax
 * overflows; 0 for a zero block. */
static float ref_scale(float x, float absmax) {
    float s, r;
    if (absmax == 0.0f) return 0.0f;
    r = 1.0f / absmax;
    s = isinf(r) ? x / absmax : x * r;
    if (s < -1.0f) s = -1.0f;
    if (s > 1.0f) s = 1.0f;
    return s;
}

/* the number of the `count` float32 midpoints strictly below s */
static int count_below(const float *mids, int count, float s) {
    int lo = 0, hi = count;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (mids[mid] < s) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static void make_mids(const float *code, int count, float *mids) {
    int i;
    for (i = 0; i + 1 < count; i++) mids[i] = (code[i] + code[i + 1]) / 2.0f;
}

/* 4-bit levels sorted ascending; equal values keep index order. */
typedef struct levels4 {
    float code[16];   /* nibble order */
    float sorted[16];
    int order[16];    /* sorted position -> nibble */
    float mids[15];
} levels4;

static levels4 make_levels(int quant_type) {
    levels4 L;
    int i, j;
    if (qembed_get_4bit_code(quant_type, L.code) != QEMBED_OK) {
        fprintf(stderr, "qembed_get_4bit_code failed\n");
        exit(2);
    }
    for (i = 0; i < 16; i++) L.order[i] = i;
    for (i = 1; i < 16; i++) /* stable insertion sort */
        for (j = i; j > 0 && L.code[L.order[j]] < L.code[L.order[j - 1]]; j--) {
            int t = L.order[j];
            L.order[j] = L.order[j - 1];
            L.order[j - 1] = t;
        }
    for (i = 0; i < 16; i++) L.sorted[i] = L.code[L.order[i]];
    make_mids(L.sorted, 16, L.mids);
    return L;
}

/* The nearest level: position = number of midpoints below s (a value on a
 * midpoint takes the lower one) in the stably sorted levels, mapped back to
 * its nibble. FP4's two zero levels (nibble 0 = +0, nibble 8 = 0) sort as
 * 0 then 8 with a midpoint of 0 between them, so a small positive value takes
 * nibble 8: the same bytes bitsandbytes 0.50.2 writes on the CPU. */
static int ref_nibble(const levels4 *L, float s) {
    return L->order[count_below(L->mids, 15, s)];
}

/* Is code[q] nearest to s among its sorted neighbours, up to the rounding of
 * a float32 midpoint, with exact ties on the lower index? */
static int nearest_ok(const float *sorted, int count, int q, float s) {
    double dq = fabs((double)s - sorted[q]);
    if (q > 0) {
        double dl = fabs((double)s - sorted[q - 1]);
        double tol = ldexp(fmax(fabs(sorted[q]), fabs(sorted[q - 1])), -23);
        if (dq > dl + tol) return 0;
        if (sorted[q - 1] != sorted[q] && dl == dq) return 0; /* tie must take the lower */
    }
    if (q + 1 < count) {
        double du = fabs((double)s - sorted[q + 1]);
        double tol = ldexp(fmax(fabs(sorted[q]), fabs(sorted[q + 1])), -23);
        if (dq > du + tol) return 0;
    }
    return 1;
}

/* ---- blockwise 8-bit ------------------------------------------------------ */

typedef struct code8 {
    const char *name;
    const float *code; /* passed to the library (NULL = signed dynamic) */
    float values[256]; /* the code actually meant */
} code8;

static long first_bad_report = 0;

static void check_blockwise(const input *in, int64_t bs, const code8 *c, float scale) {
    const int64_t n = in->n, nb = nblocks_of(n, bs);
    uint8_t *q = (uint8_t *)xmalloc((size_t)n + GUARD);
    float *absmax = (float *)xmalloc((size_t)nb * sizeof(float) + GUARD);
    float *ref_am = (float *)xmalloc((size_t)nb * sizeof(float));
    float mids[255];
    void *copy = xmalloc((size_t)n * qembed_dtype_size(in->dtype));
    qembed_status st;
    int64_t i, bad_idx = -1, bad_near = -1;
    int d;
    char what[160];

    snprintf(what, sizeof what, "blockwise %s n=%lld bs=%lld code=%s scale=%g", qembed_dtype_name(in->dtype),
             (long long)n, (long long)bs, c->name, (double)scale);
    memset(q, GUARD_BYTE, (size_t)n + GUARD);
    memset(absmax, GUARD_BYTE, (size_t)nb * sizeof(float) + GUARD);
    memcpy(copy, in->raw, (size_t)n * qembed_dtype_size(in->dtype));

    st = qembed_quantize_blockwise(in->raw, in->dtype, n, c->code, bs, q, absmax, nb);
    if (!CHECKF(st == QEMBED_OK, "%s: status %d (%s)", what, (int)st, qembed_last_error())) goto done;
    CHECKF(memcmp(copy, in->raw, (size_t)n * qembed_dtype_size(in->dtype)) == 0, "%s: input modified", what);
    CHECKF(guards_ok(q, (size_t)n) && guards_ok(absmax, (size_t)nb * sizeof(float)), "%s: wrote past the end", what);

    ref_absmax(in->x, n, bs, ref_am);
    for (i = 0; i < nb; i++)
        if (qt_f32_bits(absmax[i]) != qt_f32_bits(ref_am[i])) break;
    CHECKF(i == nb, "%s: absmax[%lld] = %.9g, max|x| = %.9g", what, (long long)i, i < nb ? absmax[i] : 0.0,
           i < nb ? ref_am[i] : 0.0);

    make_mids(c->values, 256, mids);
    for (i = 0; i < n; i++) {
        float s = ref_scale(in->x[i], ref_am[i / bs]);
        int want = count_below(mids, 255, s);
        if (q[i] != want && bad_idx < 0) bad_idx = i;
        if (!nearest_ok(c->values, 256, q[i], s) && bad_near < 0) bad_near = i;
    }
    CHECKF(bad_idx < 0, "%s: q[%lld] = %d, rule gives %d (x=%.9g absmax=%.9g)", what, (long long)bad_idx,
           bad_idx < 0 ? 0 : q[bad_idx],
           bad_idx < 0 ? 0 : count_below(mids, 255, ref_scale(in->x[bad_idx], ref_am[bad_idx / bs])),
           bad_idx < 0 ? 0.0 : in->x[bad_idx], bad_idx < 0 ? 0.0 : ref_am[bad_idx / bs]);
    CHECKF(bad_near < 0, "%s: q[%lld] = %d is not the nearest code entry", what, (long long)bad_near,
           bad_near < 0 ? 0 : q[bad_near]);

    /* dequantize to each dtype: code[q] * absmax in float32, then converted */
    for (d = 0; d < 3; d++) {
        int od = dtypes[d];
        size_t es = qembed_dtype_size(od);
        unsigned char *out = (unsigned char *)xmalloc((size_t)n * es + GUARD);
        int64_t bad = -1;
        memset(out, GUARD_BYTE, (size_t)n * es + GUARD);
        st = qembed_dequantize_blockwise(q, n, absmax, nb, c->code, bs, od, out);
        if (CHECKF(st == QEMBED_OK, "%s: dequantize to %s: status %d", what, dtype_names[d], (int)st)) {
            for (i = 0; i < n && bad < 0; i++) {
                float v = c->values[q[i]] * absmax[i / bs];
                if (qt_load_bits(out, od, i) != qt_store_bits(v, od)) bad = i;
            }
            CHECKF(bad < 0, "%s: dequantized %s [%lld] differs from code[q]*absmax", what, dtype_names[d],
                   (long long)bad);
            CHECKF(guards_ok(out, (size_t)n * es), "%s: dequantize %s wrote past the end", what, dtype_names[d]);
        }
        free(out);
    }
    /* a zero block (kind 1 data starts with one) has absmax 0 and dequantizes to zeros */
    if (n >= 64 && bs <= 64 && in->x[0] == 0.0f && in->x[63] == 0.0f) {
        float *zero_out = (float *)xmalloc((size_t)n * sizeof(float));
        int64_t zb = -1;
        CHECKF(absmax[0] == 0.0f, "%s: zero block absmax %.9g", what, (double)absmax[0]);
        if (qembed_dequantize_blockwise(q, n, absmax, nb, c->code, bs, QEMBED_DTYPE_F32, zero_out) == QEMBED_OK)
            for (i = 0; i < bs && zb < 0; i++)
                if (zero_out[i] != 0.0f) zb = i;
        CHECKF(zb < 0, "%s: zero block dequantizes to %.9g at %lld", what, zb < 0 ? 0.0 : zero_out[zb], (long long)zb);
        free(zero_out);
    }
done:
    (void)first_bad_report;
    free(copy);
    free(ref_am);
    free(absmax);
    free(q);
}

static void test_blockwise(void) {
    static const int64_t lengths[] = {1, 2, 3, 63, 64, 65, 1001, 4097};
    static const int64_t blocksizes[] = {64, 100, 256, 4096, 1, 7, 100000};
    static const float scales[] = {1.0f, 1e-3f, 50.0f, 1e-39f};
    code8 codes[4];
    size_t li, bi, si, ci, di;
    int kind;

    codes[0].name = "NULL";
    codes[0].code = NULL;
    qembed_create_dynamic_map(true, 7, 8, codes[0].values);
    codes[1].name = "dynamic";
    codes[1].code = codes[1].values;
    qembed_create_dynamic_map(true, 7, 8, codes[1].values);
    codes[2].name = "linear";
    codes[2].code = codes[2].values;
    qembed_create_linear_map(true, 8, true, codes[2].values);
    codes[3].name = "unsigned-dynamic";
    codes[3].code = codes[3].values;
    qembed_create_dynamic_map(false, 7, 8, codes[3].values);

    for (di = 0; di < 3; di++)
        for (li = 0; li < sizeof lengths / sizeof lengths[0]; li++)
            for (si = 0; si < sizeof scales / sizeof scales[0]; si++) {
                kind = (int)((li + si) % 3);
                {
                    float *v = make_values(1000 + li * 31 + si, lengths[li], scales[si], kind);
                    input in = make_input(v, lengths[li], dtypes[di]);
                    for (bi = 0; bi < sizeof blocksizes / sizeof blocksizes[0]; bi++)
                        for (ci = 0; ci < 4; ci++) {
                            if (ci >= 2 && bi >= 4) continue; /* custom codes: the main blocksizes */
                            check_blockwise(&in, blocksizes[bi], &codes[ci], scales[si]);
                        }
                    free_input(&in);
                    free(v);
                }
            }

    /* a long array: the multi-threaded paths */
    for (di = 0; di < 3; di++) {
        float *v = make_values(77 + di, 300001, 0.02f, 1);
        input in = make_input(v, 300001, dtypes[di]);
        check_blockwise(&in, 64, &codes[0], 0.02f);
        check_blockwise(&in, 256, &codes[2], 0.02f);
        check_blockwise(&in, 4096, &codes[1], 0.02f);
        free_input(&in);
        free(v);
    }

    /* NULL code and the signed dynamic map give the same bytes */
    {
        float *v = make_values(5, 5000, 1.0f, 0);
        uint8_t q1[5000], q2[5000];
        float a1[20], a2[20];
        CHECK(qembed_quantize_blockwise(v, QEMBED_DTYPE_F32, 5000, NULL, 256, q1, a1, 20) == QEMBED_OK);
        CHECK(qembed_quantize_blockwise(v, QEMBED_DTYPE_F32, 5000, codes[1].values, 256, q2, a2, 20) == QEMBED_OK);
        CHECK(memcmp(q1, q2, sizeof q1) == 0 && memcmp(a1, a2, sizeof a1) == 0);
        free(v);
    }

    /* values exactly on, just above and just below every midpoint */
    {
        float mids[255];
        float x[1 + 3 * 255];
        uint8_t q[1 + 3 * 255];
        float am[1];
        int i, ok_on = 1, ok_up = 1, ok_down = 1;
        make_mids(codes[1].values, 256, mids);
        x[0] = 1.0f; /* absmax 1: scaled == x */
        for (i = 0; i < 255; i++) {
            x[1 + 3 * i] = mids[i];
            x[2 + 3 * i] = nextafterf(mids[i], 2.0f);
            x[3 + 3 * i] = nextafterf(mids[i], -2.0f);
        }
        CHECK(qembed_quantize_blockwise(x, QEMBED_DTYPE_F32, 766, NULL, 4096, q, am, 1) == QEMBED_OK);
        CHECK(am[0] == 1.0f && q[0] == 255);
        for (i = 0; i < 255; i++) {
            ok_on &= q[1 + 3 * i] == i;
            ok_up &= q[2 + 3 * i] == i + 1;
            ok_down &= q[3 + 3 * i] == i;
        }
        CHECKF(ok_on, "a value on midpoint i must take index i (the lower)");
        CHECKF(ok_up, "a value just above midpoint i must take index i+1");
        CHECKF(ok_down, "a value just below midpoint i must take index i");
    }

    /* subnormal absmax: 1/absmax overflows, the kernel divides */
    {
        float x[4] = {1e-39f, -5e-40f, 2.5e-40f, 0.0f};
        uint8_t q[4];
        float am[1], mids[255];
        int i, ok = 1;
        make_mids(codes[1].values, 256, mids);
        CHECK(isinf(1.0f / 1e-39f));
        CHECK(qembed_quantize_blockwise(x, QEMBED_DTYPE_F32, 4, NULL, 64, q, am, 1) == QEMBED_OK);
        CHECK(am[0] == 1e-39f);
        for (i = 0; i < 4; i++) ok &= q[i] == count_below(mids, 255, ref_scale(x[i], am[0]));
        CHECK(ok && q[0] == 255);
    }
}

/* ---- 4-bit ------------------------------------------------------------------ */

static void check_4bit(const input *in, int64_t bs, int quant_type, const levels4 *L, float scale) {
    const int64_t n = in->n, nb = nblocks_of(n, bs), nbytes = (n + 1) / 2;
    uint8_t *packed = (uint8_t *)xmalloc((size_t)nbytes + GUARD);
    float *absmax = (float *)xmalloc((size_t)nb * sizeof(float) + GUARD);
    float *ref_am = (float *)xmalloc((size_t)nb * sizeof(float));
    int64_t i, bad = -1, bad_zero = -1, bad_near = -1, got_bytes = -1;
    qembed_status st;
    int d;
    char what[160];

    snprintf(what, sizeof what, "4bit %s %s n=%lld bs=%lld scale=%g", quant_type == QEMBED_QUANT_NF4 ? "nf4" : "fp4",
             qembed_dtype_name(in->dtype), (long long)n, (long long)bs, (double)scale);
    CHECK(qembed_4bit_packed_bytes(n, &got_bytes) == QEMBED_OK && got_bytes == nbytes);
    memset(packed, GUARD_BYTE, (size_t)nbytes + GUARD);
    memset(absmax, GUARD_BYTE, (size_t)nb * sizeof(float) + GUARD);

    st = qembed_quantize_4bit(in->raw, in->dtype, n, bs, quant_type, packed, nbytes, absmax, nb);
    if (!CHECKF(st == QEMBED_OK, "%s: status %d (%s)", what, (int)st, qembed_last_error())) goto done;
    CHECKF(guards_ok(packed, (size_t)nbytes) && guards_ok(absmax, (size_t)nb * sizeof(float)), "%s: wrote past the end",
           what);

    ref_absmax(in->x, n, bs, ref_am);
    for (i = 0; i < nb; i++)
        if (qt_f32_bits(absmax[i]) != qt_f32_bits(ref_am[i])) break;
    CHECKF(i == nb, "%s: absmax[%lld] is not max|x|", what, (long long)i);

    for (i = 0; i < n; i++) {
        int nib = (i & 1) ? packed[i / 2] & 15 : packed[i / 2] >> 4; /* element 2k: high nibble */
        float s = ref_scale(in->x[i], ref_am[i / bs]);
        int p;
        int want = ref_nibble(L, s);
        /* a different level is one failure; the right value under the other
         * zero nibble (FP4's +0/-0) is reported on its own */
        if (L->code[nib] != L->code[want] && bad < 0) bad = i;
        if (nib != want && L->code[nib] == L->code[want] && bad_zero < 0) bad_zero = i;
        for (p = 0; p < 16 && L->order[p] != nib; p++) {
        }
        if (!nearest_ok(L->sorted, 16, p, s) && bad_near < 0) bad_near = i;
    }
    CHECKF(bad < 0, "%s: element %lld: nibble %d, rule gives %d (x=%.9g absmax=%.9g scaled=%.9g)", what, (long long)bad,
           bad < 0 ? 0 : ((bad & 1) ? packed[bad / 2] & 15 : packed[bad / 2] >> 4),
           bad < 0 ? 0 : ref_nibble(L, ref_scale(in->x[bad], ref_am[bad / bs])), bad < 0 ? 0.0 : in->x[bad],
           bad < 0 ? 0.0 : ref_am[bad / bs], bad < 0 ? 0.0 : ref_scale(in->x[bad], ref_am[bad / bs]));
    CHECKF(bad_zero < 0, "%s: element %lld (x=%.9g, scaled %.9g) rounds to zero but packs as nibble %d, not %d", what,
           (long long)bad_zero, bad_zero < 0 ? 0.0 : in->x[bad_zero],
           bad_zero < 0 ? 0.0 : ref_scale(in->x[bad_zero], ref_am[bad_zero / bs]),
           bad_zero < 0 ? 0 : ((bad_zero & 1) ? packed[bad_zero / 2] & 15 : packed[bad_zero / 2] >> 4),
           bad_zero < 0 ? 0 : ref_nibble(L, ref_scale(in->x[bad_zero], ref_am[bad_zero / bs])));
    CHECKF(bad_near < 0, "%s: element %lld is not on its nearest level", what, (long long)bad_near);
    if (n & 1)
        CHECKF((packed[n / 2] & 15) == ref_nibble(L, 0.0f), "%s: odd n: padding nibble %d, want the zero level %d",
               what, packed[n / 2] & 15, ref_nibble(L, 0.0f));

    for (d = 0; d < 3; d++) {
        int od = dtypes[d];
        size_t es = qembed_dtype_size(od);
        unsigned char *out = (unsigned char *)xmalloc((size_t)n * es + GUARD);
        int64_t badd = -1;
        memset(out, GUARD_BYTE, (size_t)n * es + GUARD);
        st = qembed_dequantize_4bit(packed, nbytes, n, absmax, nb, bs, quant_type, od, out);
        if (CHECKF(st == QEMBED_OK, "%s: dequantize to %s: status %d", what, dtype_names[d], (int)st)) {
            for (i = 0; i < n && badd < 0; i++) {
                int nib = (i & 1) ? packed[i / 2] & 15 : packed[i / 2] >> 4;
                if (qt_load_bits(out, od, i) != qt_store_bits(L->code[nib] * absmax[i / bs], od)) badd = i;
            }
            CHECKF(badd < 0, "%s: dequantized %s [%lld] differs from level*absmax", what, dtype_names[d],
                   (long long)badd);
            CHECKF(guards_ok(out, (size_t)n * es), "%s: dequantize %s wrote past the end", what, dtype_names[d]);
        }
        free(out);
    }
done:
    free(ref_am);
    free(absmax);
    free(packed);
}

static void test_4bit(void) {
    static const int64_t lengths[] = {1, 2, 3, 63, 64, 65, 1001, 4097};
    static const int64_t blocksizes[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
    static const float scales[] = {1.0f, 1e-3f, 50.0f};
    levels4 L[2];
    size_t li, bi, si, di;
    int t;
    L[0] = make_levels(QEMBED_QUANT_FP4);
    L[1] = make_levels(QEMBED_QUANT_NF4);

    for (t = 0; t < 2; t++)
        for (di = 0; di < 3; di++)
            for (li = 0; li < sizeof lengths / sizeof lengths[0]; li++)
                for (si = 0; si < sizeof scales / sizeof scales[0]; si++) {
                    float *v = make_values(2000 + li * 17 + si, lengths[li], scales[si], (int)((li + si) % 3));
                    input in = make_input(v, lengths[li], dtypes[di]);
                    for (bi = 0; bi < sizeof blocksizes / sizeof blocksizes[0]; bi++)
                        check_4bit(&in, blocksizes[bi], t == 0 ? QEMBED_QUANT_FP4 : QEMBED_QUANT_NF4, &L[t], scales[si]);
                    free_input(&in);
                    free(v);
                }
    for (t = 0; t < 2; t++)
        for (di = 0; di < 3; di++) {
            float *v = make_values(99 + di, 300001, 0.02f, 1);
            input in = make_input(v, 300001, dtypes[di]);
            check_4bit(&in, 64, t == 0 ? QEMBED_QUANT_FP4 : QEMBED_QUANT_NF4, &L[t], 0.02f);
            check_4bit(&in, 4096, t == 0 ? QEMBED_QUANT_FP4 : QEMBED_QUANT_NF4, &L[t], 0.02f);
            free_input(&in);
            free(v);
        }

    /* midpoints of the sorted levels: on -> lower level, above -> upper */
    for (t = 0; t < 2; t++) {
        const int qt = t == 0 ? QEMBED_QUANT_FP4 : QEMBED_QUANT_NF4;
        float x[1 + 3 * 15];
        uint8_t packed[23];
        float am[1];
        int i, ok_on = 1, ok_up = 1, ok_down = 1;
        x[0] = 1.0f;
        for (i = 0; i < 15; i++) {
            x[1 + 3 * i] = L[t].mids[i];
            x[2 + 3 * i] = nextafterf(L[t].mids[i], 2.0f);
            x[3 + 3 * i] = nextafterf(L[t].mids[i], -2.0f);
        }
        CHECK(qembed_quantize_4bit(x, QEMBED_DTYPE_F32, 46, 64, qt, packed, 23, am, 1) == QEMBED_OK);
        for (i = 0; i < 15; i++) {
            int e;
            int nib_on, nib_up, nib_down;
            e = 1 + 3 * i;
            nib_on = (e & 1) ? packed[e / 2] & 15 : packed[e / 2] >> 4;
            e = 2 + 3 * i;
            nib_up = (e & 1) ? packed[e / 2] & 15 : packed[e / 2] >> 4;
            e = 3 + 3 * i;
            nib_down = (e & 1) ? packed[e / 2] & 15 : packed[e / 2] >> 4;
            if (L[t].sorted[i] == L[t].sorted[i + 1]) continue; /* FP4's two zeros */
            ok_on &= L[t].code[nib_on] == L[t].sorted[i];
            ok_up &= L[t].code[nib_up] == L[t].sorted[i + 1];
            ok_down &= L[t].code[nib_down] == L[t].sorted[i];
        }
        CHECKF(ok_on, "%s: a value on a midpoint must take the lower level", qt == QEMBED_QUANT_FP4 ? "fp4" : "nf4");
        CHECKF(ok_up, "%s: a value above a midpoint must take the upper level", qt == QEMBED_QUANT_FP4 ? "fp4" : "nf4");
        CHECKF(ok_down, "%s: a value below a midpoint must take the lower level", qt == QEMBED_QUANT_FP4 ? "fp4" : "nf4");
    }

    /* FP4 has two zero levels (nibbles 0 and 8). Bytes checked against
     * bitsandbytes 0.50.2's CPU quantize_4bit of [1, 1e-4, -1e-4, 0, 2e-3, ...]:
     * a tiny positive value takes nibble 8, zero and tiny negatives nibble 0. */
    {
        float x[6] = {1.0f, 1e-4f, -1e-4f, 0.0f, -0.0f, 2e-3f};
        uint8_t packed[3];
        float am[1];
        CHECK(qembed_quantize_4bit(x, QEMBED_DTYPE_F32, 6, 64, QEMBED_QUANT_FP4, packed, 3, am, 1) == QEMBED_OK);
        CHECKF((packed[0] & 15) == 8, "fp4: +1e-4 (scaled) packs as nibble %d, want 8 (as bitsandbytes)", packed[0] & 15);
        CHECKF((packed[1] >> 4) == 0, "fp4: -1e-4 (scaled) packs as nibble %d, want 0", packed[1] >> 4);
        CHECKF((packed[1] & 15) == 0, "fp4: 0.0 packs as nibble %d, want 0", packed[1] & 15);
        CHECKF((packed[2] >> 4) == 0, "fp4: -0.0 packs as nibble %d, want 0", packed[2] >> 4);
        CHECKF((packed[2] & 15) == 8, "fp4: 2e-3 packs as nibble %d, want 8 (as bitsandbytes)", packed[2] & 15);
    }
    /* NF4: zero is level 7; +-1 are levels 15 and 0; an all-zero block */
    {
        float x[5] = {0.0f, 1.0f, -1.0f, 0.0f, 0.0f};
        float z[64], out[64];
        uint8_t packed[32];
        float am[1];
        int i, ok = 1;
        CHECK(qembed_quantize_4bit(x, QEMBED_DTYPE_F32, 5, 64, QEMBED_QUANT_NF4, packed, 3, am, 1) == QEMBED_OK);
        CHECK(packed[0] == 0x7F && packed[1] == 0x07 && packed[2] == 0x77);
        for (i = 0; i < 64; i++) z[i] = 0.0f;
        CHECK(qembed_quantize_4bit(z, QEMBED_DTYPE_F32, 64, 64, QEMBED_QUANT_NF4, packed, 32, am, 1) == QEMBED_OK);
        CHECK(am[0] == 0.0f);
        CHECK(qembed_dequantize_4bit(packed, 32, 64, am, 1, 64, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, out) == QEMBED_OK);
        for (i = 0; i < 64; i++) ok &= out[i] == 0.0f;
        CHECKF(ok, "a zero block must dequantize to zeros");
    }
}

/* ---- int8 row-wise ------------------------------------------------------------ */

static void check_int8(const input *in, int64_t rows, int64_t cols, float threshold) {
    const int64_t n = rows * cols;
    int8_t *q = (int8_t *)xmalloc((size_t)n + GUARD);
    float *stats = (float *)xmalloc((size_t)rows * sizeof(float) + GUARD);
    float *ref_stats = (float *)xmalloc((size_t)rows * sizeof(float));
    int32_t *ocols = (int32_t *)xmalloc((size_t)cols * sizeof(int32_t) + GUARD);
    unsigned char *is_out = (unsigned char *)xmalloc((size_t)cols);
    int64_t n_out = -1, ref_n_out = 0, r, c, bad = -1;
    qembed_status st;
    int d;
    char what[160];

    snprintf(what, sizeof what, "int8 %s %lldx%lld threshold=%g", qembed_dtype_name(in->dtype), (long long)rows,
             (long long)cols, (double)threshold);
    memset(q, GUARD_BYTE, (size_t)n + GUARD);
    memset(stats, GUARD_BYTE, (size_t)rows * sizeof(float) + GUARD);
    memset(ocols, GUARD_BYTE, (size_t)cols * sizeof(int32_t) + GUARD);
    st = qembed_int8_vectorwise_quant(in->raw, in->dtype, rows, cols, threshold, q, stats, ocols, &n_out);
    if (!CHECKF(st == QEMBED_OK, "%s: status %d (%s)", what, (int)st, qembed_last_error())) goto done;
    CHECKF(guards_ok(q, (size_t)n) && guards_ok(stats, (size_t)rows * sizeof(float)) &&
               guards_ok(ocols, (size_t)cols * sizeof(int32_t)),
           "%s: wrote past the end", what);

    memset(is_out, 0, (size_t)cols);
    if (threshold > 0)
        for (r = 0; r < rows; r++)
            for (c = 0; c < cols; c++)
                if (fabsf(in->x[r * cols + c]) >= threshold) is_out[c] = 1;
    for (c = 0; c < cols; c++) ref_n_out += is_out[c];
    for (r = 0; r < rows; r++) {
        float m = 0.0f;
        for (c = 0; c < cols; c++) {
            float a = fabsf(in->x[r * cols + c]);
            if (threshold > 0 && a >= threshold) continue;
            if (a > m) m = a;
        }
        ref_stats[r] = m;
    }
    for (r = 0; r < rows; r++)
        if (qt_f32_bits(stats[r]) != qt_f32_bits(ref_stats[r])) break;
    CHECKF(r == rows, "%s: row_stats[%lld] = %.9g, want %.9g", what, (long long)r, r < rows ? stats[r] : 0.0,
           r < rows ? ref_stats[r] : 0.0);
    CHECKF(n_out == ref_n_out, "%s: %lld outlier columns, want %lld", what, (long long)n_out, (long long)ref_n_out);
    if (n_out == ref_n_out) {
        int64_t k = 0, ok = 1;
        for (c = 0; c < cols; c++)
            if (is_out[c]) ok &= ocols[k++] == c;
        CHECKF(ok, "%s: outlier column list differs", what);
    }
    for (r = 0; r < rows && bad < 0; r++) {
        float scale = ref_stats[r] == 0.0f ? 0.0f : (1.0f / ref_stats[r]) * 127.0f; /* torch: reciprocal * 127 */
        for (c = 0; c < cols; c++) {
            float v = rintf(in->x[r * cols + c] * scale); /* round half to even */
            int want = is_out[c] ? 0 : (int)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
            if (q[r * cols + c] != want) {
                bad = r * cols + c;
                break;
            }
        }
    }
    CHECKF(bad < 0, "%s: q[%lld] = %d differs from round_half_even(x * ((1/row_stats)*127))", what, (long long)bad,
           bad < 0 ? 0 : q[bad]);

    for (d = 0; d < 3; d++) {
        int od = dtypes[d];
        size_t es = qembed_dtype_size(od);
        unsigned char *out = (unsigned char *)xmalloc((size_t)n * es + GUARD);
        int64_t badd = -1, i;
        memset(out, GUARD_BYTE, (size_t)n * es + GUARD);
        st = qembed_int8_vectorwise_dequant(q, rows, cols, stats, od, out);
        if (CHECKF(st == QEMBED_OK, "%s: dequant to %s: status %d", what, dtype_names[d], (int)st)) {
            for (i = 0; i < n && badd < 0; i++) {
                float v = ((float)q[i] * stats[i / cols]) * (1.0f / 127.0f);
                if (qt_load_bits(out, od, i) != qt_store_bits(v, od)) badd = i;
            }
            CHECKF(badd < 0, "%s: dequant %s [%lld] differs from (q*row_stats)*(1/127)", what, dtype_names[d],
                   (long long)badd);
            CHECKF(guards_ok(out, (size_t)n * es), "%s: dequant %s wrote past the end", what, dtype_names[d]);
        }
        free(out);
    }
done:
    free(is_out);
    free(ocols);
    free(ref_stats);
    free(stats);
    free(q);
}

static void test_int8(void) {
    static const int64_t shapes[][2] = {{1, 1}, {1, 7}, {3, 5}, {7, 64}, {33, 100}, {128, 384}, {1000, 77}, {2, 4097}};
    size_t si, di;
    for (di = 0; di < 3; di++)
        for (si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int64_t n = shapes[si][0] * shapes[si][1];
            float *v = make_values(3000 + si, n, 1.0f, (int)(si % 3));
            input in;
            int64_t k;
            /* a few outliers, in a few columns */
            for (k = 0; k < n; k += 97) v[k] = (k & 1) ? 6.5f : -8.0f;
            in = make_input(v, n, dtypes[di]);
            check_int8(&in, shapes[si][0], shapes[si][1], 0.0f);
            check_int8(&in, shapes[si][0], shapes[si][1], 6.0f);
            check_int8(&in, shapes[si][0], shapes[si][1], 3.0f);
            check_int8(&in, shapes[si][0], shapes[si][1], 100.0f);
            free_input(&in);
            free(v);
        }

    /* exact .5 ties round half to even: a row with absmax 127 has scale 1 */
    {
        float x[2][10] = {{127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, 3.5f},
                          {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}};
        static const int8_t want[2][10] = {{127, 0, 2, 2, 0, -2, -2, 126, -126, 4}, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}};
        int8_t q[2][10];
        float st[2], out[20];
        int i, ok = 1;
        CHECK(qembed_int8_vectorwise_quant(x, QEMBED_DTYPE_F32, 2, 10, 0.0f, &q[0][0], st, NULL, NULL) == QEMBED_OK);
        CHECK(st[0] == 127.0f && st[1] == 0.0f);
        CHECKF(memcmp(q, want, sizeof q) == 0, "ties: got %d %d %d %d %d %d %d %d %d %d", q[0][0], q[0][1], q[0][2],
               q[0][3], q[0][4], q[0][5], q[0][6], q[0][7], q[0][8], q[0][9]);
        CHECK(qembed_int8_vectorwise_dequant(&q[0][0], 2, 10, st, QEMBED_DTYPE_F32, out) == QEMBED_OK);
        for (i = 10; i < 20; i++) ok &= out[i] == 0.0f;
        CHECKF(ok, "a zero row must dequantize to zeros");
    }
    /* outliers: columns 1 and 3 hold |x| >= 4; they are zeroed and listed */
    {
        float x[3][4] = {{1.0f, 5.0f, -2.0f, 0.5f}, {-1.0f, 0.25f, 0.5f, -4.0f}, {0.5f, 0.5f, 0.5f, 0.5f}};
        int8_t q[3][4];
        float st[3];
        int32_t oc[4] = {-1, -1, -1, -1};
        int64_t no = -1;
        CHECK(qembed_int8_vectorwise_quant(x, QEMBED_DTYPE_F32, 3, 4, 4.0f, &q[0][0], st, oc, &no) == QEMBED_OK);
        CHECK(no == 2 && oc[0] == 1 && oc[1] == 3);
        CHECK(st[0] == 2.0f && st[1] == 1.0f && st[2] == 0.5f);
        CHECK(q[0][1] == 0 && q[1][1] == 0 && q[2][1] == 0 && q[0][3] == 0 && q[1][3] == 0 && q[2][3] == 0);
        CHECK(q[0][0] == 64 && q[0][2] == -127 && q[1][0] == -127 && q[1][2] == 64 && q[2][0] == 127);
        /* threshold 0: NULL outlier outputs are fine and nothing is an outlier */
        CHECK(qembed_int8_vectorwise_quant(x, QEMBED_DTYPE_F32, 3, 4, 0.0f, &q[0][0], st, NULL, NULL) == QEMBED_OK);
        CHECK(st[0] == 5.0f && q[0][1] == 127);
        no = -1;
        CHECK(qembed_int8_vectorwise_quant(x, QEMBED_DTYPE_F32, 3, 4, 0.0f, &q[0][0], st, oc, &no) == QEMBED_OK);
        CHECK(no == 0);
    }
}

/* ---- nested statistics ------------------------------------------------------------ */

static void check_statistics(const float *absmax, int64_t count, int64_t nbs, const char *label) {
    const int64_t nb = nblocks_of(count, nbs);
    uint8_t *q = (uint8_t *)xmalloc((size_t)count + GUARD);
    float *nabs = (float *)xmalloc((size_t)nb * sizeof(float) + GUARD);
    float *centered = (float *)xmalloc((size_t)count * sizeof(float));
    float *ref_nabs = (float *)xmalloc((size_t)nb * sizeof(float));
    float *back = (float *)xmalloc((size_t)count * sizeof(float) + GUARD);
    float *back2 = (float *)xmalloc((size_t)count * sizeof(float));
    float code[256], mids[255], offset = -1.0f, want_offset, maxgap = 0.0f;
    double sum = 0.0;
    int64_t i, bad = -1, worst = -1;
    qembed_status st;
    char what[160];

    snprintf(what, sizeof what, "statistics %s count=%lld nested_blocksize=%lld", label, (long long)count,
             (long long)nbs);
    qembed_create_dynamic_map(true, 7, 8, code);
    make_mids(code, 256, mids);
    for (i = 1; i < 256; i++)
        if (code[i] - code[i - 1] > maxgap) maxgap = code[i] - code[i - 1];

    memset(q, GUARD_BYTE, (size_t)count + GUARD);
    memset(nabs, GUARD_BYTE, (size_t)nb * sizeof(float) + GUARD);
    st = qembed_quantize_statistics(absmax, count, nbs, q, nabs, nb, &offset);
    if (!CHECKF(st == QEMBED_OK, "%s: status %d (%s)", what, (int)st, qembed_last_error())) goto done;
    CHECKF(guards_ok(q, (size_t)count) && guards_ok(nabs, (size_t)nb * sizeof(float)), "%s: wrote past the end", what);

    for (i = 0; i < count; i++) sum += absmax[i];
    want_offset = (float)(sum / (double)count);
    CHECKF(qt_f32_bits(offset) == qt_f32_bits(want_offset), "%s: offset %.9g, mean %.9g", what, (double)offset,
           (double)want_offset);
    for (i = 0; i < count; i++) centered[i] = absmax[i] - want_offset;
    ref_absmax(centered, count, nbs, ref_nabs);
    for (i = 0; i < nb; i++)
        if (qt_f32_bits(nabs[i]) != qt_f32_bits(ref_nabs[i])) break;
    CHECKF(i == nb, "%s: nested_absmax[%lld] is not max|absmax - offset|", what, (long long)i);
    for (i = 0; i < count && bad < 0; i++)
        if (q[i] != count_below(mids, 255, ref_scale(centered[i], ref_nabs[i / nbs]))) bad = i;
    CHECKF(bad < 0, "%s: qabsmax[%lld] differs from the rule", what, (long long)bad);

    memset(back, GUARD_BYTE, (size_t)count * sizeof(float) + GUARD);
    st = qembed_dequantize_statistics(q, count, nabs, nb, NULL, nbs, offset, back);
    if (CHECKF(st == QEMBED_OK, "%s: dequantize status %d", what, (int)st)) {
        CHECKF(guards_ok(back, (size_t)count * sizeof(float)), "%s: dequantize wrote past the end", what);
        bad = -1;
        for (i = 0; i < count && bad < 0; i++)
            if (qt_f32_bits(back[i]) != qt_f32_bits(code[q[i]] * nabs[i / nbs] + offset)) bad = i;
        CHECKF(bad < 0, "%s: absmax[%lld] != code[q]*nested_absmax + offset", what, (long long)bad);
        /* round trip within the nested quantization error */
        for (i = 0; i < count; i++) {
            double err = fabs((double)back[i] - absmax[i]);
            double bound = 0.5 * maxgap * nabs[i / nbs] * (1.0 + 1e-6) + 4e-7 * fabs(absmax[i]) + 1e-30;
            if (err > bound && worst < 0) worst = i;
        }
        CHECKF(worst < 0, "%s: absmax[%lld] round trip error above the nested quantization bound", what,
               (long long)worst);
        /* an explicit signed dynamic map gives the same values */
        CHECK(qembed_dequantize_statistics(q, count, nabs, nb, code, nbs, offset, back2) == QEMBED_OK &&
              memcmp(back, back2, (size_t)count * sizeof(float)) == 0);
    }
done:
    free(back2);
    free(back);
    free(ref_nabs);
    free(centered);
    free(nabs);
    free(q);
}

static void test_statistics(void) {
    /* absmax of a 4-bit quantization (blocksize 64) of a 200000-element table */
    const int64_t n = 200000, bs = 64, nb = (n + bs - 1) / bs;
    float *v = make_values(4242, n, 0.02f, 0);
    float *absmax = (float *)xmalloc((size_t)nb * sizeof(float));
    uint8_t *packed = (uint8_t *)xmalloc((size_t)n / 2);
    float one = 0.75f, same[300];
    int i;
    CHECK(qembed_quantize_4bit(v, QEMBED_DTYPE_F32, n, bs, QEMBED_QUANT_NF4, packed, n / 2, absmax, nb) == QEMBED_OK);
    check_statistics(absmax, nb, 256, "4bit");
    check_statistics(absmax, nb, 64, "4bit");
    check_statistics(absmax, 1000, 4096, "8bit-nested");
    check_statistics(absmax, 257, 256, "short-last-block");
    check_statistics(&one, 1, 256, "single");
    for (i = 0; i < 300; i++) same[i] = 0.125f; /* all equal: centred values are 0 */
    check_statistics(same, 300, 256, "constant");
    free(packed);
    free(absmax);
    free(v);
}

/* the test's own float16/bfloat16 conversions: exact round trips, and ties to even */
static void test_converters(void) {
    uint32_t h;
    long bad16 = 0, badbf = 0;
    for (h = 0; h < 65536; h++) {
        float f = qt_f16_to_f32((uint16_t)h);
        float g = qt_bf16_to_f32((uint16_t)h);
        if (!isnan(f) && qt_f32_to_f16(f) != h) bad16++;
        if (!isnan(g) && qt_f32_to_bf16(g) != h) badbf++;
    }
    CHECKF(bad16 == 0, "%ld float16 values do not round-trip", bad16);
    CHECKF(badbf == 0, "%ld bfloat16 values do not round-trip", badbf);
    CHECK(qt_f32_to_f16(1.0f + 0x1p-11f) == 0x3C00 && qt_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3C02);
    CHECK(qt_f32_to_f16(65520.0f) == 0x7C00 && qt_f32_to_f16(65519.0f) == 0x7BFF);
    CHECK(qt_f32_to_f16(0x1p-25f) == 0 && qt_f32_to_f16(0x1.8p-25f) == 1 && qt_f32_to_f16(-0x1p-24f) == 0x8001);
    CHECK(qt_f32_to_bf16(1.0f + 0x1p-8f) == 0x3F80 && qt_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82);
}

int main(void) {
    test_converters();
    test_blockwise();
    test_4bit();
    test_int8();
    test_statistics();
    return qt_summary("test_quantize");
}
