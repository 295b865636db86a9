/* test_maps.c - quantization maps (codebooks): dynamic, linear, fp8, normal
 * and the 4-bit NF4/FP4 level tables, plus their bad arguments. */
#include "qembed.h"
#include "qtest.h"

#define N QEMBED_CODE_SIZE

/* bitsandbytes' NF4 table (bitsandbytes/functional.py get_4bit_type("nf4")):
 * float32 values, given here with the digits that pin them exactly. */
static const float nf4_bnb[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

/* The rounded values of /work/shared/reference/semantics.md (7 decimals). */
static const double nf4_semantics[16] = {
    -1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
    0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0};
static const double fp4_semantics[8] = {0, 0.0052083, 0.6666667, 1, 0.3333333, 0.5, 0.1666667, 0.25};

static int sorted_ascending(const float *c, int strict) {
    int i;
    for (i = 1; i < N; i++)
        if (strict ? !(c[i - 1] < c[i]) : !(c[i - 1] <= c[i])) return 0;
    return 1;
}

static int all_finite(const float *c) {
    int i;
    for (i = 0; i < N; i++)
        if (!isfinite(c[i])) return 0;
    return 1;
}

static int count_nonzero(const float *c) {
    int i, k = 0;
    for (i = 0; i < N; i++) k += c[i] != 0.0f;
    return k;
}

static void fill(float *c, float v) {
    int i;
    for (i = 0; i < N; i++) c[i] = v;
}

static int untouched(const float *c) {
    int i;
    for (i = 0; i < N; i++)
        if (qt_f32_bits(c[i]) != qt_f32_bits(-12345.0f)) return 0;
    return 1;
}

/* A failing call: status, a message naming `arg`, output untouched. */
#define CHECK_FAILS(call, want, arg, code)                                                     \
    do {                                                                                       \
        qembed_status st_;                                                                     \
        qembed_clear_error();                                                                  \
        fill(code, -12345.0f);                                                                 \
        st_ = (call);                                                                          \
        CHECKF(st_ == (want), "%s: status %d, want %d (%s)", #call, (int)st_, (int)(want),     \
               qembed_last_error());                                                           \
        CHECKF(qt_names(qembed_last_error(), arg), "%s: message \"%s\" does not name %s",      \
               #call, qembed_last_error(), arg);                                               \
        CHECKF(untouched(code), "%s: output written on failure", #call);                       \
    } while (0)

#define CHECK_FAILS_NULL(call, want, arg)                                                      \
    do {                                                                                       \
        qembed_status st_;                                                                     \
        qembed_clear_error();                                                                  \
        st_ = (call);                                                                          \
        CHECKF(st_ == (want), "%s: status %d, want %d", #call, (int)st_, (int)(want));         \
        CHECKF(qt_names(qembed_last_error(), arg), "%s: message \"%s\" does not name %s",      \
               #call, qembed_last_error(), arg);                                               \
    } while (0)

static void test_dynamic(void) {
    float c[N], u[N], c2[N];
    int i, sym = 1;
    CHECK(qembed_create_dynamic_map(true, 7, 8, c) == QEMBED_OK);
    CHECK(all_finite(c));
    CHECK(sorted_ascending(c, 1));
    CHECKF(c[127] == 0.0f, "code[127] = %.9g", c[127]);
    CHECKF(fabsf(c[0] - -0.99296875f) < 1e-6f, "min %.9g", c[0]);
    CHECK(c[255] == 1.0f);
    CHECKF(fabsf(c[128] - 5.5e-7f) < 1e-12f, "smallest positive %.9g", c[128]);
    for (i = 0; i < 127; i++) sym &= c[i] == -c[254 - i];
    CHECKF(sym, "negative half is not the mirror of the positive half");
    /* deterministic */
    CHECK(qembed_create_dynamic_map(true, 7, 8, c2) == QEMBED_OK && memcmp(c, c2, sizeof c) == 0);

    CHECK(qembed_create_dynamic_map(false, 7, 8, u) == QEMBED_OK);
    CHECK(all_finite(u));
    CHECK(sorted_ascending(u, 1));
    CHECKF(u[0] == 0.0f, "unsigned code[0] = %.9g", u[0]);
    CHECK(u[255] == 1.0f);
    CHECKF(fabsf(u[1] - 3.25e-7f) < 1e-12f, "unsigned smallest positive %.9g", u[1]);
    CHECKF(fabsf(u[254] - 0.996484375f) < 1e-6f, "unsigned largest below 1: %.9g", u[254]);

    /* smaller types: 2^total_bits values (one zero), padded with zeros */
    {
        static const int combos[][3] = {{1, 4, 3}, {1, 4, 1}, {1, 8, 4}, {1, 2, 1}, {0, 4, 3}, {0, 8, 7}, {1, 5, 2}};
        size_t k;
        for (k = 0; k < sizeof combos / sizeof combos[0]; k++) {
            float d[N];
            qembed_status st = qembed_create_dynamic_map(combos[k][0] != 0, combos[k][2], combos[k][1], d);
            CHECKF(st == QEMBED_OK, "signed=%d total=%d maxexp=%d: %s", combos[k][0], combos[k][1],
                   combos[k][2], qembed_last_error());
            if (st != QEMBED_OK) continue;
            CHECK(all_finite(d) && sorted_ascending(d, 0));
            CHECKF(count_nonzero(d) == (1 << combos[k][1]) - 1, "signed=%d total=%d maxexp=%d: %d non-zero",
                   combos[k][0], combos[k][1], combos[k][2], count_nonzero(d));
            CHECK(d[255] == 1.0f && d[0] >= -1.0f);
            if (!combos[k][0]) CHECK(d[0] == 0.0f);
        }
    }

    CHECK_FAILS_NULL(qembed_create_dynamic_map(true, 7, 8, NULL), QEMBED_ERR_NULL_POINTER, "code");
    CHECK_FAILS(qembed_create_dynamic_map(true, 7, 9, c), QEMBED_ERR_INVALID_ARGUMENT, "total_bits", c);
    CHECK_FAILS(qembed_create_dynamic_map(true, 7, 0, c), QEMBED_ERR_INVALID_ARGUMENT, "total_bits", c);
    /* unsigned with max_exponent_bits = total_bits gives 257 values: bitsandbytes asserts too */
    CHECK_FAILS(qembed_create_dynamic_map(false, 8, 8, c), QEMBED_ERR_INVALID_ARGUMENT, "max_exponent_bits", c);
    CHECK_FAILS(qembed_create_dynamic_map(true, 0, 8, c), QEMBED_ERR_INVALID_ARGUMENT, "max_exponent_bits", c);
    CHECK_FAILS(qembed_create_dynamic_map(true, -3, 8, c), QEMBED_ERR_INVALID_ARGUMENT, "max_exponent_bits", c);
    /* accepted as bitsandbytes accepts them (tests/test_functional.py uses (True, 8, 8)):
     * max_exponent_bits >= total_bits - 1 gives the total_bits - 1 map */
    {
        float d[N], e[N];
        CHECK(qembed_create_dynamic_map(true, 7, 8, d) == QEMBED_OK);
        CHECK(qembed_create_dynamic_map(true, 8, 8, e) == QEMBED_OK && memcmp(d, e, sizeof d) == 0);
        CHECK(qembed_create_dynamic_map(true, 30, 8, e) == QEMBED_OK && memcmp(d, e, sizeof d) == 0);
        CHECK(qembed_create_dynamic_map(true, 1, 1, e) == QEMBED_OK && e[255] == 1.0f && count_nonzero(e) == 1);
    }
}

static void test_linear(void) {
    float c[N];
    int i, ok;
    CHECK(qembed_create_linear_map(true, 8, true, c) == QEMBED_OK);
    CHECK(all_finite(c) && sorted_ascending(c, 0));
    CHECK(c[0] == -1.0f && c[255] == 1.0f && c[127] == 0.0f && c[128] == 0.0f);
    CHECK(count_nonzero(c) == 254);

    CHECK(qembed_create_linear_map(false, 8, false, c) == QEMBED_OK);
    CHECK(sorted_ascending(c, 1) && c[0] == 0.0f && c[255] == 1.0f);
    CHECKF(fabsf(c[1] - 1.0f / 255.0f) < 1e-7f, "linear step %.9g", c[1]);
    /* evenly spaced */
    for (i = 1, ok = 1; i < N; i++) ok &= fabsf((c[i] - c[i - 1]) - 1.0f / 255.0f) < 1e-6f;
    CHECK(ok);

    CHECK(qembed_create_linear_map(true, 4, true, c) == QEMBED_OK);
    CHECK(sorted_ascending(c, 0) && c[0] == -1.0f && c[255] == 1.0f && count_nonzero(c) == 14);

    /* one level: bitsandbytes does not re-sort, the lone -1 lands after the padding */
    CHECK(qembed_create_linear_map(true, 1, true, c) == QEMBED_OK);
    CHECK(count_nonzero(c) == 1 && c[255] == -1.0f);

    CHECK_FAILS_NULL(qembed_create_linear_map(true, 8, true, NULL), QEMBED_ERR_NULL_POINTER, "code");
    CHECK_FAILS(qembed_create_linear_map(true, -1, true, c), QEMBED_ERR_INVALID_ARGUMENT, "total_bits", c);
    CHECK(qembed_create_linear_map(true, 0, true, c) == QEMBED_OK && count_nonzero(c) == 0);  /* as bitsandbytes */
    CHECK_FAILS(qembed_create_linear_map(true, 9, true, c), QEMBED_ERR_INVALID_ARGUMENT, "total_bits", c);
}

static void test_fp8(void) {
    float c[N];
    CHECK(qembed_create_fp8_map(true, 5, 2, 8, c) == QEMBED_OK);
    CHECK(all_finite(c) && sorted_ascending(c, 0));
    CHECK(c[0] == -1.0f && c[255] == 1.0f);
    CHECK(qembed_create_fp8_map(true, 4, 3, 8, c) == QEMBED_OK);
    CHECK(all_finite(c) && sorted_ascending(c, 0) && c[0] == -1.0f && c[255] == 1.0f);
    /* FP4 as bitsandbytes documents it: create_fp8_map(True, 2, 1, 4) */
    CHECK(qembed_create_fp8_map(true, 2, 1, 4, c) == QEMBED_OK);
    CHECK(all_finite(c) && sorted_ascending(c, 0) && c[255] == 1.0f);
    CHECK(qembed_create_fp8_map(false, 4, 4, 8, c) == QEMBED_OK);
    CHECK(all_finite(c) && sorted_ascending(c, 0) && c[0] == 0.0f && c[255] == 1.0f);

    CHECK_FAILS_NULL(qembed_create_fp8_map(true, 5, 2, 8, NULL), QEMBED_ERR_NULL_POINTER, "code");
    /* exponent + precision + sign must equal total_bits */
    CHECK_FAILS(qembed_create_fp8_map(true, 5, 3, 8, c), QEMBED_ERR_INVALID_ARGUMENT, "exponent_bits", c);
    CHECK_FAILS(qembed_create_fp8_map(true, 4, 2, 8, c), QEMBED_ERR_INVALID_ARGUMENT, "precision_bits", c);
    CHECK_FAILS(qembed_create_fp8_map(false, 5, 2, 8, c), QEMBED_ERR_INVALID_ARGUMENT, "total_bits", c);
    CHECK_FAILS(qembed_create_fp8_map(true, 0, 7, 8, c), QEMBED_ERR_INVALID_ARGUMENT, "exponent_bits", c);
    CHECK_FAILS(qembed_create_fp8_map(true, 8, -1, 8, c), QEMBED_ERR_INVALID_ARGUMENT, "precision_bits", c);
    CHECK_FAILS(qembed_create_fp8_map(true, 5, 3, 9, c), QEMBED_ERR_INVALID_ARGUMENT, "total_bits", c);
}

static void test_normal(void) {
    float c[N], nf4[16];
    int i, ok;
    CHECK(qembed_get_4bit_code(QEMBED_QUANT_NF4, nf4) == QEMBED_OK);
    CHECK(qembed_create_normal_map(0.9677083, true, c) == QEMBED_OK);
    CHECK(all_finite(c) && sorted_ascending(c, 0));
    /* 7 negative levels, 241 zeros, 8 positive levels: the 16 NF4 levels
     * (with one zero) once the padding zeros are dropped */
    CHECKF(count_nonzero(c) == 15, "%d non-zero", count_nonzero(c));
    for (i = 0, ok = 1; i < 7; i++)
        ok &= fabsf(c[i] - nf4[i]) <= 1e-7f;
    for (i = 0; i < 8; i++)
        ok &= fabsf(c[248 + i] - nf4[8 + i]) <= 1e-7f;
    for (i = 7; i < 248; i++) ok &= c[i] == 0.0f;
    CHECKF(ok, "normal map differs from NF4 by more than 1e-7");
    for (i = 0; i < 7; i++)
        CHECKF(fabsf(c[i] - nf4[i]) <= 1e-7f, "normal[%d] = %.9g, nf4 %.9g", i, c[i], nf4[i]);
    for (i = 0; i < 8; i++)
        CHECKF(fabsf(c[248 + i] - nf4[8 + i]) <= 1e-7f, "normal[%d] = %.9g, nf4 %.9g", 248 + i, c[248 + i],
               nf4[8 + i]);

    /* symmetric variant: 7 + 7 levels, exact mirror, min -1, max 1 */
    CHECK(qembed_create_normal_map(0.9677083, false, c) == QEMBED_OK);
    CHECK(all_finite(c) && sorted_ascending(c, 0) && count_nonzero(c) == 14);
    for (i = 0, ok = 1; i < N; i++) ok &= c[i] == -c[255 - i];
    CHECK(ok && c[0] == -1.0f && c[255] == 1.0f);
    CHECK(qembed_create_normal_map(0.99, true, c) == QEMBED_OK && sorted_ascending(c, 0) && c[255] == 1.0f);

    CHECK_FAILS_NULL(qembed_create_normal_map(0.9677083, true, NULL), QEMBED_ERR_NULL_POINTER, "code");
    CHECK_FAILS(qembed_create_normal_map(0.4, true, c), QEMBED_ERR_INVALID_ARGUMENT, "offset", c);
    CHECK_FAILS(qembed_create_normal_map(0.5, true, c), QEMBED_ERR_INVALID_ARGUMENT, "offset", c);
    CHECK_FAILS(qembed_create_normal_map(1.0, true, c), QEMBED_ERR_INVALID_ARGUMENT, "offset", c);
    CHECK_FAILS(qembed_create_normal_map(-0.9, false, c), QEMBED_ERR_INVALID_ARGUMENT, "offset", c);
    /* NaN/Inf: "a value outside its domain" or "non-finite": either status is documented */
    {
        double nan = (double)NAN, inf = (double)INFINITY;
        qembed_status st;
        qembed_clear_error();
        fill(c, -12345.0f);
        st = qembed_create_normal_map(nan, true, c);
        CHECKF(st == QEMBED_ERR_INVALID_ARGUMENT || st == QEMBED_ERR_NON_FINITE, "NaN offset: %d", (int)st);
        CHECK(qt_names(qembed_last_error(), "offset") && untouched(c));
        qembed_clear_error();
        st = qembed_create_normal_map(inf, true, c);
        CHECKF(st == QEMBED_ERR_INVALID_ARGUMENT || st == QEMBED_ERR_NON_FINITE, "Inf offset: %d", (int)st);
        CHECK(qt_names(qembed_last_error(), "offset") && untouched(c));
    }
}

static void test_4bit_codes(void) {
    float nf4[16], fp4[16], canary[17];
    int i;
    CHECK(qembed_get_4bit_code(QEMBED_QUANT_NF4, nf4) == QEMBED_OK);
    for (i = 0; i < 16; i++) {
        CHECKF(qt_f32_bits(nf4[i]) == qt_f32_bits(nf4_bnb[i]), "nf4[%d] = %.9g (0x%08x), bitsandbytes %.9g (0x%08x)",
               i, nf4[i], qt_f32_bits(nf4[i]), nf4_bnb[i], qt_f32_bits(nf4_bnb[i]));
        CHECKF(fabs((double)nf4[i] - nf4_semantics[i]) <= 5e-8, "nf4[%d] = %.9g, semantics.md %.7f", i, nf4[i],
               nf4_semantics[i]);
    }
    /* FP4: bitsandbytes' [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, ...] / 12 in float32, bit-pattern order */
    CHECK(qembed_get_4bit_code(QEMBED_QUANT_FP4, fp4) == QEMBED_OK);
    {
        static const float raw[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
        for (i = 0; i < 8; i++) {
            float want = raw[i] / 12.0f;
            CHECKF(fp4[i] == want && qt_f32_bits(fp4[i]) == qt_f32_bits(want), "fp4[%d] = %.9g, want %.9g", i,
                   fp4[i], want);
            if (i > 0)
                CHECKF(qt_f32_bits(fp4[8 + i]) == qt_f32_bits(-want), "fp4[%d] = %.9g, want %.9g", 8 + i, fp4[8 + i],
                       -want);
            CHECKF(fabs((double)fp4[i] - fp4_semantics[i]) <= 5e-8, "fp4[%d] = %.9g vs semantics.md", i, fp4[i]);
        }
        /* bitsandbytes writes index 8 as the Python int -0, i.e. 0: torch.tensor()
         * makes it +0.0, and get_4bit_type("fp4")[8] is +0.0 (bits 0x00000000) */
        CHECK(fp4[8] == 0.0f);
        CHECKF(qt_f32_bits(fp4[8]) == 0u, "fp4[8] has bits 0x%08x (-0.0); bitsandbytes' get_4bit_type(\"fp4\")[8] is +0.0",
               qt_f32_bits(fp4[8]));
    }
    /* exactly 16 floats written */
    for (i = 0; i < 17; i++) canary[i] = 777.0f;
    CHECK(qembed_get_4bit_code(QEMBED_QUANT_NF4, canary) == QEMBED_OK && canary[16] == 777.0f);

    {
        static const int bad[] = {QEMBED_QUANT_COUNT, 7, -1, 255};
        size_t k;
        for (k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            qembed_status st;
            for (i = 0; i < 16; i++) canary[i] = -12345.0f;
            qembed_clear_error();
            st = qembed_get_4bit_code(bad[k], canary);
            CHECKF(st == QEMBED_ERR_UNSUPPORTED, "quant_type %d: status %d", bad[k], (int)st);
            CHECKF(qt_names(qembed_last_error(), "quant_type"), "quant_type %d: \"%s\"", bad[k], qembed_last_error());
            for (i = 0; i < 16; i++)
                if (canary[i] != -12345.0f) break;
            CHECKF(i == 16, "quant_type %d: output written", bad[k]);
        }
    }
    CHECK_FAILS_NULL(qembed_get_4bit_code(QEMBED_QUANT_NF4, NULL), QEMBED_ERR_NULL_POINTER, "code");
    CHECK_FAILS_NULL(qembed_get_4bit_code(QEMBED_QUANT_FP4, NULL), QEMBED_ERR_NULL_POINTER, "code");
}

int main(void) {
    test_dynamic();
    test_linear();
    test_fp8();
    test_normal();
    test_4bit_codes();
    return qt_summary("test_maps");
}
