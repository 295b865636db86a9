/* test_errors.c - the bad-input battery.
 *
 * Every exported function that takes pointers or sizes is called with each
 * pointer NULL, zero/negative/overflowing sizes, short buffers, unknown enum
 * values, bad blocksizes, NaN/Inf inputs (every dtype) and bad codes. Each
 * case must return the documented status, leave a non-empty
 * qembed_last_error() naming the argument, and write nothing: every output
 * buffer lives in one arena that is filled with a sentinel before the call
 * and compared after it (the one documented exception, NaN/Inf met by a
 * quantize kernel while streaming, may write inside its outputs and nowhere
 * else). One case = one assertion group. */
#include <limits.h>

#include "qembed.h"
#include "qtest.h"

#define NMAX 100000
#define SENTINEL 0xA5

typedef struct arena {
    uint8_t u8[NMAX + 64];    /* out codes, packed bytes, qabsmax */
    float f32[NMAX + 64];     /* absmax, nested_absmax, row_stats, codes */
    float val[NMAX + 64];     /* dequantized values (any dtype) */
    int8_t i8[NMAX + 64];     /* int8 row-wise out */
    int32_t cols[NMAX + 64];  /* outlier columns */
    int64_t count[4];         /* counts, n_outlier_cols */
    float offset[4];          /* statistics offset */
} arena;

static arena A_, REF_;
static long cases = 0;

static void arena_reset(void) {
    memset(&A_, SENTINEL, sizeof A_);
    qembed_clear_error();
}

#define S(x) (1u << (x))


static void expect(const char *file, int line, const char *call, qembed_status got, unsigned allowed,
                   const char *names) {
    const char *msg = qembed_last_error();
    int status_ok = got >= 0 && got < 32 && (allowed & S(got)) != 0;
    int msg_ok = msg != NULL && msg[0] != '\0';
    int named = msg_ok && qt_names_any(msg, names);
    int untouched = memcmp(&A_, &REF_, sizeof A_) == 0;
    cases++;
    qt_check(status_ok && msg_ok && named && untouched, file, line, call,
             "%s%s%s%s(status %d \"%s\", last_error \"%s\", want %s)", status_ok ? "" : "wrong status; ",
             msg_ok ? "" : "empty last_error; ", !msg_ok || named ? "" : "message does not name the argument; ",
             untouched ? "" : "an output was written; ", (int)got, qembed_status_string((int)got), msg ? msg : "(null)",
             names);
}

/* EXPECT(allowed statuses, "arg|alternative", call) */
#define EXPECT(allowed, names, call) expect(__FILE__, __LINE__, #call, (arena_reset(), (call)), (allowed), (names))

/* The quantize kernels stream their input once, so on QEMBED_ERR_NON_FINITE
 * their outputs are unspecified (qembed.h): blocks before the bad value may
 * have been written. What still must hold: the status, the message, and no
 * byte written outside the outputs' declared lengths (u8, f32 and i8 elements
 * from the start of each arena buffer); everything else stays sentinel. */
static void expect_within(const char *file, int line, const char *call, qembed_status got, unsigned allowed,
                          const char *names, size_t u8_len, size_t f32_len, size_t i8_len) {
    static arena seen;
    seen = A_;
    memcpy(seen.u8, REF_.u8, u8_len);
    memcpy(seen.f32, REF_.f32, f32_len * sizeof(float));
    memcpy(seen.i8, REF_.i8, i8_len);
    A_ = seen;
    expect(file, line, call, got, allowed, names);
}
#define EXPECT_WITHIN(allowed, names, u8_len, f32_len, i8_len, call) \
    expect_within(__FILE__, __LINE__, #call, (arena_reset(), (call)), (allowed), (names), (u8_len), (f32_len), (i8_len))

#define NULLPTR S(QEMBED_ERR_NULL_POINTER)
#define INVALID S(QEMBED_ERR_INVALID_ARGUMENT)
#define UNSUPP S(QEMBED_ERR_UNSUPPORTED)
#define NONFIN S(QEMBED_ERR_NON_FINITE)
#define SHAPE S(QEMBED_ERR_SHAPE)
#define SMALL S(QEMBED_ERR_BUFFER_TOO_SMALL)

/* ---- valid inputs ------------------------------------------------------- */

#define N0 1000
#define BS 64
#define NB ((N0 + BS - 1) / BS)
#define ROWS 20
#define COLS 50

static float in_f32[NMAX];
static uint16_t in_f16[NMAX], in_bf16[NMAX];
static uint8_t q8[N0], packed4[N0 / 2];
static float am8[NB], am4[NB];
static int8_t i8q[ROWS * COLS];
static float rstats[ROWS];
static float good_code[256], unsorted_code[256], nan_code[256], inf_code[256], ninf_code[256];
static uint8_t qstat[NB];
static float nested[1];

static const int64_t HUGE_N[] = {INT64_MAX / 2, INT64_MAX / 4 + 1, INT64_MAX, INT64_MAX / 2 + 1};
static const int BAD_DTYPES[] = {QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, QEMBED_DTYPE_I32, QEMBED_DTYPE_I64,
                                 QEMBED_DTYPE_COUNT, 99, -1};

static const void *input_of(int dtype) {
    return dtype == QEMBED_DTYPE_F32 ? (const void *)in_f32
           : dtype == QEMBED_DTYPE_F16 ? (const void *)in_f16
                                        : (const void *)in_bf16;
}

static void setup(void) {
    qt_rng r = qt_rng_make(11);
    int i;
    for (i = 0; i < NMAX; i++) {
        in_f32[i] = qt_normal(&r);
        in_f16[i] = qt_f32_to_f16(in_f32[i]);
        in_bf16[i] = qt_f32_to_bf16(in_f32[i]);
    }
    memset(&REF_, SENTINEL, sizeof REF_);
    qembed_create_dynamic_map(true, 7, 8, good_code);
    memcpy(unsorted_code, good_code, sizeof good_code);
    unsorted_code[100] = good_code[101];
    unsorted_code[101] = good_code[100];
    memcpy(nan_code, good_code, sizeof good_code);
    nan_code[200] = NAN;
    memcpy(inf_code, good_code, sizeof good_code);
    inf_code[255] = INFINITY;
    memcpy(ninf_code, good_code, sizeof good_code);
    ninf_code[0] = -INFINITY;
    if (qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, BS, q8, am8, NB) != QEMBED_OK ||
        qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, BS, QEMBED_QUANT_NF4, packed4, N0 / 2, am4, NB) !=
            QEMBED_OK ||
        qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, 0.0f, i8q, rstats, NULL, NULL) !=
            QEMBED_OK ||
        qembed_quantize_statistics(am4, NB, 256, qstat, nested, 1, &A_.offset[0]) != QEMBED_OK) {
        fprintf(stderr, "setup failed: %s\n", qembed_last_error());
        exit(2);
    }
}

/* ---- the battery ----------------------------------------------------------- */

static void maps_and_sizes(void) {
    EXPECT(NULLPTR, "code", qembed_create_dynamic_map(true, 7, 8, NULL));
    EXPECT(NULLPTR, "code", qembed_create_dynamic_map(false, 7, 8, NULL));
    EXPECT(NULLPTR, "code", qembed_create_linear_map(true, 8, true, NULL));
    EXPECT(NULLPTR, "code", qembed_create_fp8_map(true, 5, 2, 8, NULL));
    EXPECT(NULLPTR, "code", qembed_create_normal_map(0.9677083, true, NULL));
    EXPECT(NULLPTR, "code", qembed_get_4bit_code(QEMBED_QUANT_NF4, NULL));
    EXPECT(NULLPTR, "code", qembed_get_4bit_code(QEMBED_QUANT_FP4, NULL));
    EXPECT(INVALID, "total_bits", qembed_create_dynamic_map(true, 7, 9, A_.f32));
    EXPECT(INVALID, "max_exponent_bits", qembed_create_dynamic_map(true, 0, 8, A_.f32));
    EXPECT(INVALID, "total_bits", qembed_create_linear_map(true, 9, true, A_.f32));
    EXPECT(INVALID, "total_bits|exponent_bits|precision_bits", qembed_create_fp8_map(true, 4, 4, 8, A_.f32));
    EXPECT(INVALID, "offset", qembed_create_normal_map(0.4, true, A_.f32));
    EXPECT(INVALID, "offset", qembed_create_normal_map(1.0, true, A_.f32));
    EXPECT(INVALID | NONFIN, "offset", qembed_create_normal_map((double)NAN, true, A_.f32));
    EXPECT(UNSUPP, "quant_type", qembed_get_4bit_code(7, A_.f32));
    EXPECT(UNSUPP, "quant_type", qembed_get_4bit_code(-1, A_.f32));
    EXPECT(UNSUPP, "quant_type", qembed_get_4bit_code(QEMBED_QUANT_COUNT, A_.f32));

    EXPECT(INVALID, "n|num_threads", qembed_set_num_threads(-1));
    EXPECT(INVALID, "n|num_threads", qembed_set_num_threads(100000));

    EXPECT(NULLPTR, "count", qembed_blockwise_absmax_count(100, 64, NULL));
    EXPECT(INVALID, "n", qembed_blockwise_absmax_count(-1, 64, &A_.count[0]));
    EXPECT(INVALID, "n", qembed_blockwise_absmax_count(INT64_MIN, 64, &A_.count[0]));
    EXPECT(INVALID, "blocksize", qembed_blockwise_absmax_count(100, 0, &A_.count[0]));
    EXPECT(INVALID, "blocksize", qembed_blockwise_absmax_count(100, -1, &A_.count[0]));
    EXPECT(NULLPTR, "bytes", qembed_4bit_packed_bytes(100, NULL));
    EXPECT(INVALID, "n", qembed_4bit_packed_bytes(-1, &A_.count[0]));
    EXPECT(INVALID, "n", qembed_4bit_packed_bytes(INT64_MIN, &A_.count[0]));
    {
        int64_t c = -1;
        CHECK(qembed_blockwise_absmax_count(0, 64, &c) == QEMBED_OK && c == 0);
        CHECK(qembed_blockwise_absmax_count(65, 64, &c) == QEMBED_OK && c == 2);
        CHECK(qembed_4bit_packed_bytes(0, &c) == QEMBED_OK && c == 0);
        CHECK(qembed_4bit_packed_bytes(7, &c) == QEMBED_OK && c == 4);
    }
}

static void nonfinite_inputs(void) {
    /* NaN, +Inf, -Inf at the first, a middle and the last element, each dtype */
    static const uint16_t f16_bad[3] = {0x7E00, 0x7C00, 0xFC00};
    static const uint16_t bf16_bad[3] = {0x7FC0, 0x7F80, 0xFF80};
    const float f32_bad[3] = {NAN, INFINITY, -INFINITY};
    const int64_t positions[3] = {0, N0 / 2 + 3, N0 - 1};
    int d, k, p;
    for (d = 0; d < 3; d++)
        for (k = 0; k < 3; k++)
            for (p = 0; p < 3; p++) {
                static float f[N0];
                static uint16_t h[N0];
                const int dtype = d == 0 ? QEMBED_DTYPE_F32 : d == 1 ? QEMBED_DTYPE_F16 : QEMBED_DTYPE_BF16;
                const void *in;
                if (d == 0) {
                    memcpy(f, in_f32, sizeof f);
                    f[positions[p]] = f32_bad[k];
                    in = f;
                } else {
                    memcpy(h, d == 1 ? in_f16 : in_bf16, sizeof h);
                    h[positions[p]] = d == 1 ? f16_bad[k] : bf16_bad[k];
                    in = h;
                }
                EXPECT_WITHIN(NONFIN, "A", N0, NB, 0, qembed_quantize_blockwise(in, dtype, N0, NULL, BS, A_.u8, A_.f32, NB));
                EXPECT_WITHIN(NONFIN, "A", N0, NB, 0, qembed_quantize_blockwise(in, dtype, N0, good_code, 256, A_.u8, A_.f32, NB));
                EXPECT_WITHIN(NONFIN, "A", N0 / 2, NB, 0,
                              qembed_quantize_4bit(in, dtype, N0, BS, QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32, NB));
                EXPECT_WITHIN(NONFIN, "A", N0 / 2, NB, 0,
                              qembed_quantize_4bit(in, dtype, N0, 128, QEMBED_QUANT_FP4, A_.u8, N0 / 2, A_.f32, NB));
                EXPECT_WITHIN(NONFIN, "A", 0, ROWS, ROWS * COLS,
                              qembed_int8_vectorwise_quant(in, dtype, ROWS, COLS, 0.0f, A_.i8, A_.f32, A_.cols, A_.count));
                EXPECT(NONFIN, "A",
                       qembed_int8_vectorwise_quant(in, dtype, ROWS, COLS, 2.0f, A_.i8, A_.f32, A_.cols, A_.count));
                if (d == 0) {
                    EXPECT(NONFIN, "absmax", qembed_quantize_statistics(f, N0, 256, A_.u8, A_.f32, 4, A_.offset));
                }
            }
    /* long arrays (the multi-threaded paths), bad value in the last block */
    for (d = 0; d < 3; d++) {
        static float f[NMAX];
        static uint16_t h[NMAX];
        const int dtype = d == 0 ? QEMBED_DTYPE_F32 : d == 1 ? QEMBED_DTYPE_F16 : QEMBED_DTYPE_BF16;
        const void *in;
        if (d == 0) {
            memcpy(f, in_f32, sizeof f);
            f[NMAX - 2] = NAN;
            in = f;
        } else {
            memcpy(h, d == 1 ? in_f16 : in_bf16, sizeof h);
            h[NMAX - 2] = d == 1 ? 0x7C00 : 0x7F80;
            in = h;
        }
        EXPECT_WITHIN(NONFIN, "A", NMAX, NMAX / BS + 1, 0,
                      qembed_quantize_blockwise(in, dtype, NMAX, NULL, BS, A_.u8, A_.f32, NMAX / BS + 1));
        EXPECT_WITHIN(NONFIN, "A", NMAX / 2, NMAX / BS + 1, 0,
                      qembed_quantize_4bit(in, dtype, NMAX, BS, QEMBED_QUANT_NF4, A_.u8, NMAX / 2, A_.f32, NMAX / BS + 1));
        EXPECT_WITHIN(NONFIN, "A", 0, NMAX / 100, NMAX,
                      qembed_int8_vectorwise_quant(in, dtype, NMAX / 100, 100, 0.0f, A_.i8, A_.f32, A_.cols, A_.count));
        if (d == 0) EXPECT(NONFIN, "absmax", qembed_quantize_statistics(f, NMAX, 256, A_.u8, A_.f32, NMAX, A_.offset));
    }
}

static void blockwise(void) {
    size_t i;
    int d;
    /* NULL pointers */
    EXPECT(NULLPTR, "A", qembed_quantize_blockwise(NULL, QEMBED_DTYPE_F32, N0, NULL, BS, A_.u8, A_.f32, NB));
    EXPECT(NULLPTR, "out", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, BS, NULL, A_.f32, NB));
    EXPECT(NULLPTR, "absmax", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, BS, A_.u8, NULL, NB));
    /* sizes */
    EXPECT(INVALID, "n", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, 0, NULL, BS, A_.u8, A_.f32, NB));
    EXPECT(INVALID, "n", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, -1, NULL, BS, A_.u8, A_.f32, NB));
    EXPECT(INVALID, "n", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, INT64_MIN, NULL, BS, A_.u8, A_.f32, NB));
    for (i = 0; i < sizeof HUGE_N / sizeof HUGE_N[0]; i++)
        for (d = 0; d < 3; d++)
            EXPECT(SHAPE, "n|A",
                   qembed_quantize_blockwise(input_of(d), d, HUGE_N[i], NULL, BS, A_.u8, A_.f32, INT64_MAX));
    EXPECT(SMALL, "absmax", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, BS, A_.u8, A_.f32, NB - 1));
    EXPECT(SMALL, "absmax", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, BS, A_.u8, A_.f32, 0));
    EXPECT(SMALL, "absmax", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, BS, A_.u8, A_.f32, -1));
    EXPECT(SMALL, "absmax", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, 65, NULL, 64, A_.u8, A_.f32, 1));
    /* dtype */
    for (i = 0; i < sizeof BAD_DTYPES / sizeof BAD_DTYPES[0]; i++)
        EXPECT(UNSUPP, "dtype", qembed_quantize_blockwise(in_f32, BAD_DTYPES[i], N0, NULL, BS, A_.u8, A_.f32, NB));
    /* blocksize */
    EXPECT(INVALID, "blocksize", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, 0, A_.u8, A_.f32, NB));
    EXPECT(INVALID, "blocksize", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, -1, A_.u8, A_.f32, NB));
    EXPECT(INVALID, "blocksize",
           qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, NULL, INT64_MIN, A_.u8, A_.f32, NB));
    /* caller codes: unsorted or non-finite */
    EXPECT(INVALID, "code", qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, unsorted_code, BS, A_.u8, A_.f32, NB));
    EXPECT(INVALID | NONFIN, "code",
           qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, nan_code, BS, A_.u8, A_.f32, NB));
    EXPECT(INVALID | NONFIN, "code",
           qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, inf_code, BS, A_.u8, A_.f32, NB));
    EXPECT(INVALID | NONFIN, "code",
           qembed_quantize_blockwise(in_f32, QEMBED_DTYPE_F32, N0, ninf_code, BS, A_.u8, A_.f32, NB));
    EXPECT(INVALID, "code", qembed_quantize_blockwise(in_bf16, QEMBED_DTYPE_BF16, N0, unsorted_code, BS, A_.u8, A_.f32, NB));

    /* dequantize */
    EXPECT(NULLPTR, "A", qembed_dequantize_blockwise(NULL, N0, am8, NB, NULL, BS, QEMBED_DTYPE_F32, A_.val));
    EXPECT(NULLPTR, "absmax", qembed_dequantize_blockwise(q8, N0, NULL, NB, NULL, BS, QEMBED_DTYPE_F32, A_.val));
    EXPECT(NULLPTR, "out", qembed_dequantize_blockwise(q8, N0, am8, NB, NULL, BS, QEMBED_DTYPE_F32, NULL));
    EXPECT(INVALID, "n", qembed_dequantize_blockwise(q8, 0, am8, NB, NULL, BS, QEMBED_DTYPE_F32, A_.val));
    EXPECT(INVALID, "n", qembed_dequantize_blockwise(q8, -1, am8, NB, NULL, BS, QEMBED_DTYPE_F32, A_.val));
    for (i = 0; i < sizeof HUGE_N / sizeof HUGE_N[0]; i++)
        for (d = 0; d < 3; d++)
            EXPECT(SHAPE, "n|out", qembed_dequantize_blockwise(q8, HUGE_N[i], am8, INT64_MAX, NULL, BS, d, A_.val));
    EXPECT(SMALL, "absmax", qembed_dequantize_blockwise(q8, N0, am8, NB - 1, NULL, BS, QEMBED_DTYPE_F32, A_.val));
    EXPECT(SMALL, "absmax", qembed_dequantize_blockwise(q8, N0, am8, 0, NULL, BS, QEMBED_DTYPE_F16, A_.val));
    for (i = 0; i < sizeof BAD_DTYPES / sizeof BAD_DTYPES[0]; i++)
        EXPECT(UNSUPP, "out_dtype", qembed_dequantize_blockwise(q8, N0, am8, NB, NULL, BS, BAD_DTYPES[i], A_.val));
    EXPECT(INVALID, "blocksize", qembed_dequantize_blockwise(q8, N0, am8, NB, NULL, 0, QEMBED_DTYPE_F32, A_.val));
    EXPECT(INVALID, "blocksize", qembed_dequantize_blockwise(q8, N0, am8, NB, NULL, -1, QEMBED_DTYPE_F32, A_.val));
}

static void statistics(void) {
    EXPECT(NULLPTR, "absmax", qembed_quantize_statistics(NULL, NB, 256, A_.u8, A_.f32, 1, A_.offset));
    EXPECT(NULLPTR, "qabsmax", qembed_quantize_statistics(am4, NB, 256, NULL, A_.f32, 1, A_.offset));
    EXPECT(NULLPTR, "nested_absmax", qembed_quantize_statistics(am4, NB, 256, A_.u8, NULL, 1, A_.offset));
    EXPECT(NULLPTR, "offset", qembed_quantize_statistics(am4, NB, 256, A_.u8, A_.f32, 1, NULL));
    EXPECT(INVALID, "count", qembed_quantize_statistics(am4, 0, 256, A_.u8, A_.f32, 1, A_.offset));
    EXPECT(INVALID, "count", qembed_quantize_statistics(am4, -1, 256, A_.u8, A_.f32, 1, A_.offset));
    EXPECT(SHAPE, "count", qembed_quantize_statistics(am4, INT64_MAX / 2, 256, A_.u8, A_.f32, INT64_MAX, A_.offset));
    EXPECT(INVALID, "nested_blocksize", qembed_quantize_statistics(am4, NB, 0, A_.u8, A_.f32, 100, A_.offset));
    EXPECT(INVALID, "nested_blocksize", qembed_quantize_statistics(am4, NB, -1, A_.u8, A_.f32, 100, A_.offset));
    EXPECT(SMALL, "nested_absmax", qembed_quantize_statistics(am4, NB, 256, A_.u8, A_.f32, 0, A_.offset));
    EXPECT(SMALL, "nested_absmax", qembed_quantize_statistics(am4, NB, 4, A_.u8, A_.f32, (NB + 3) / 4 - 1, A_.offset));

    EXPECT(NULLPTR, "qabsmax", qembed_dequantize_statistics(NULL, NB, nested, 1, NULL, 256, 0.5f, A_.f32));
    EXPECT(NULLPTR, "nested_absmax", qembed_dequantize_statistics(qstat, NB, NULL, 1, NULL, 256, 0.5f, A_.f32));
    EXPECT(NULLPTR, "absmax", qembed_dequantize_statistics(qstat, NB, nested, 1, NULL, 256, 0.5f, NULL));
    EXPECT(INVALID, "count", qembed_dequantize_statistics(qstat, 0, nested, 1, NULL, 256, 0.5f, A_.f32));
    EXPECT(INVALID, "count", qembed_dequantize_statistics(qstat, -5, nested, 1, NULL, 256, 0.5f, A_.f32));
    EXPECT(SHAPE, "count", qembed_dequantize_statistics(qstat, INT64_MAX, nested, INT64_MAX, NULL, 256, 0.5f, A_.f32));
    EXPECT(INVALID, "nested_blocksize", qembed_dequantize_statistics(qstat, NB, nested, 1, NULL, 0, 0.5f, A_.f32));
    EXPECT(SMALL, "nested_absmax", qembed_dequantize_statistics(qstat, NB, nested, 0, NULL, 256, 0.5f, A_.f32));
    EXPECT(SMALL, "nested_absmax", qembed_dequantize_statistics(qstat, NB, nested, 1, NULL, 8, 0.5f, A_.f32));
    EXPECT(NONFIN | INVALID, "offset", qembed_dequantize_statistics(qstat, NB, nested, 1, NULL, 256, NAN, A_.f32));
    EXPECT(NONFIN | INVALID, "offset", qembed_dequantize_statistics(qstat, NB, nested, 1, NULL, 256, INFINITY, A_.f32));
}

static void four_bit(void) {
    static const int64_t bad_bs[] = {16, 100, 8192, 48, 8, 1 << 20};
    static const int bad_qt[] = {QEMBED_QUANT_COUNT, 7, -1, 100};
    size_t i;
    int d;
    EXPECT(NULLPTR, "A", qembed_quantize_4bit(NULL, QEMBED_DTYPE_F32, N0, BS, QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32, NB));
    EXPECT(NULLPTR, "packed",
           qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, BS, QEMBED_QUANT_NF4, NULL, N0 / 2, A_.f32, NB));
    EXPECT(NULLPTR, "absmax",
           qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, BS, QEMBED_QUANT_FP4, A_.u8, N0 / 2, NULL, NB));
    EXPECT(INVALID, "n", qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, 0, BS, QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32, NB));
    EXPECT(INVALID, "n", qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, -1, BS, QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32, NB));
    for (i = 0; i < sizeof HUGE_N / sizeof HUGE_N[0]; i++)
        for (d = 0; d < 3; d++)
            EXPECT(SHAPE, "n|A",
                   qembed_quantize_4bit(input_of(d), d, HUGE_N[i], BS, QEMBED_QUANT_NF4, A_.u8, INT64_MAX, A_.f32,
                                        INT64_MAX));
    for (i = 0; i < sizeof bad_bs / sizeof bad_bs[0]; i++)
        EXPECT(UNSUPP, "blocksize",
               qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, bad_bs[i], QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32,
                                    N0));
    EXPECT(UNSUPP | INVALID, "blocksize",
           qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, 0, QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32, N0));
    EXPECT(UNSUPP | INVALID, "blocksize",
           qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, -64, QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32, N0));
    for (i = 0; i < sizeof bad_qt / sizeof bad_qt[0]; i++)
        EXPECT(UNSUPP, "quant_type",
               qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, BS, bad_qt[i], A_.u8, N0 / 2, A_.f32, NB));
    for (i = 0; i < sizeof BAD_DTYPES / sizeof BAD_DTYPES[0]; i++)
        EXPECT(UNSUPP, "dtype",
               qembed_quantize_4bit(in_f32, BAD_DTYPES[i], N0, BS, QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32, NB));
    /* one byte / one float too few: even and odd n */
    EXPECT(SMALL, "packed",
           qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, BS, QEMBED_QUANT_NF4, A_.u8, N0 / 2 - 1, A_.f32, NB));
    EXPECT(SMALL, "packed",
           qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0 - 1, BS, QEMBED_QUANT_NF4, A_.u8, N0 / 2 - 1, A_.f32, NB));
    EXPECT(SMALL, "packed", qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, 1, BS, QEMBED_QUANT_FP4, A_.u8, 0, A_.f32, 1));
    EXPECT(SMALL, "absmax",
           qembed_quantize_4bit(in_f32, QEMBED_DTYPE_F32, N0, BS, QEMBED_QUANT_NF4, A_.u8, N0 / 2, A_.f32, NB - 1));
    EXPECT(SMALL, "absmax",
           qembed_quantize_4bit(in_f16, QEMBED_DTYPE_F16, 65, 64, QEMBED_QUANT_NF4, A_.u8, 33, A_.f32, 1));

    EXPECT(NULLPTR, "packed",
           qembed_dequantize_4bit(NULL, N0 / 2, N0, am4, NB, BS, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, A_.val));
    EXPECT(NULLPTR, "absmax",
           qembed_dequantize_4bit(packed4, N0 / 2, N0, NULL, NB, BS, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, A_.val));
    EXPECT(NULLPTR, "out",
           qembed_dequantize_4bit(packed4, N0 / 2, N0, am4, NB, BS, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, NULL));
    EXPECT(INVALID, "n",
           qembed_dequantize_4bit(packed4, N0 / 2, 0, am4, NB, BS, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, A_.val));
    EXPECT(INVALID, "n",
           qembed_dequantize_4bit(packed4, N0 / 2, -1, am4, NB, BS, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, A_.val));
    for (i = 0; i < sizeof HUGE_N / sizeof HUGE_N[0]; i++)
        for (d = 0; d < 3; d++)
            EXPECT(SHAPE, "n|out",
                   qembed_dequantize_4bit(packed4, INT64_MAX, HUGE_N[i], am4, INT64_MAX, BS, QEMBED_QUANT_NF4, d,
                                          A_.val));
    EXPECT(SMALL, "packed",
           qembed_dequantize_4bit(packed4, N0 / 2 - 1, N0, am4, NB, BS, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, A_.val));
    EXPECT(SMALL, "packed",
           qembed_dequantize_4bit(packed4, 0, 1, am4, NB, BS, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, A_.val));
    EXPECT(SMALL, "absmax",
           qembed_dequantize_4bit(packed4, N0 / 2, N0, am4, NB - 1, BS, QEMBED_QUANT_NF4, QEMBED_DTYPE_F32, A_.val));
    for (i = 0; i < sizeof bad_bs / sizeof bad_bs[0]; i++)
        EXPECT(UNSUPP, "blocksize",
               qembed_dequantize_4bit(packed4, N0 / 2, N0, am4, N0, bad_bs[i], QEMBED_QUANT_NF4, QEMBED_DTYPE_F32,
                                      A_.val));
    for (i = 0; i < sizeof bad_qt / sizeof bad_qt[0]; i++)
        EXPECT(UNSUPP, "quant_type",
               qembed_dequantize_4bit(packed4, N0 / 2, N0, am4, NB, BS, bad_qt[i], QEMBED_DTYPE_F32, A_.val));
    for (i = 0; i < sizeof BAD_DTYPES / sizeof BAD_DTYPES[0]; i++)
        EXPECT(UNSUPP, "out_dtype",
               qembed_dequantize_4bit(packed4, N0 / 2, N0, am4, NB, BS, QEMBED_QUANT_NF4, BAD_DTYPES[i], A_.val));
}

static void int8_rowwise(void) {
    size_t i;
    EXPECT(NULLPTR, "A", qembed_int8_vectorwise_quant(NULL, QEMBED_DTYPE_F32, ROWS, COLS, 0.0f, A_.i8, A_.f32, A_.cols, A_.count));
    EXPECT(NULLPTR, "out",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, 0.0f, NULL, A_.f32, A_.cols, A_.count));
    EXPECT(NULLPTR, "row_stats",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, 0.0f, A_.i8, NULL, A_.cols, A_.count));
    EXPECT(NULLPTR, "outlier_cols",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, 2.0f, A_.i8, A_.f32, NULL, A_.count));
    EXPECT(NULLPTR, "n_outlier_cols",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, 2.0f, A_.i8, A_.f32, A_.cols, NULL));
    EXPECT(INVALID, "rows", qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, 0, COLS, 0.0f, A_.i8, A_.f32, A_.cols, A_.count));
    EXPECT(INVALID, "rows", qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, -1, COLS, 0.0f, A_.i8, A_.f32, A_.cols, A_.count));
    EXPECT(INVALID, "cols", qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, 0, 0.0f, A_.i8, A_.f32, A_.cols, A_.count));
    EXPECT(INVALID, "cols", qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, -1, 0.0f, A_.i8, A_.f32, A_.cols, A_.count));
    EXPECT(SHAPE, "rows|cols",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, (int64_t)1 << 40, (int64_t)1 << 30, 0.0f, A_.i8,
                                        A_.f32, A_.cols, A_.count));
    EXPECT(SHAPE, "rows",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, INT64_MAX / 2, 1, 0.0f, A_.i8, A_.f32, A_.cols,
                                        A_.count));
    EXPECT(SHAPE, "rows|cols",
           qembed_int8_vectorwise_quant(in_bf16, QEMBED_DTYPE_BF16, (int64_t)1 << 31, (int64_t)1 << 30, 0.0f, A_.i8,
                                        A_.f32, A_.cols, A_.count));
    /* column indices are int32: more columns cannot be reported */
    EXPECT(SHAPE | INVALID, "cols",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, 1, (int64_t)INT32_MAX + 1, 0.0f, A_.i8, A_.f32,
                                        A_.cols, A_.count));
    EXPECT(INVALID, "threshold",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, -1.0f, A_.i8, A_.f32, A_.cols, A_.count));
    EXPECT(INVALID, "threshold",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, -1e-30f, A_.i8, A_.f32, A_.cols, A_.count));
    EXPECT(INVALID | NONFIN, "threshold",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, NAN, A_.i8, A_.f32, A_.cols, A_.count));
    EXPECT(INVALID | NONFIN, "threshold",
           qembed_int8_vectorwise_quant(in_f32, QEMBED_DTYPE_F32, ROWS, COLS, INFINITY, A_.i8, A_.f32, A_.cols, A_.count));
    for (i = 0; i < sizeof BAD_DTYPES / sizeof BAD_DTYPES[0]; i++)
        EXPECT(UNSUPP, "dtype",
               qembed_int8_vectorwise_quant(in_f32, BAD_DTYPES[i], ROWS, COLS, 0.0f, A_.i8, A_.f32, A_.cols, A_.count));

    EXPECT(NULLPTR, "A", qembed_int8_vectorwise_dequant(NULL, ROWS, COLS, rstats, QEMBED_DTYPE_F32, A_.val));
    EXPECT(NULLPTR, "row_stats", qembed_int8_vectorwise_dequant(i8q, ROWS, COLS, NULL, QEMBED_DTYPE_F32, A_.val));
    EXPECT(NULLPTR, "out", qembed_int8_vectorwise_dequant(i8q, ROWS, COLS, rstats, QEMBED_DTYPE_F32, NULL));
    EXPECT(INVALID, "rows", qembed_int8_vectorwise_dequant(i8q, 0, COLS, rstats, QEMBED_DTYPE_F32, A_.val));
    EXPECT(INVALID, "rows", qembed_int8_vectorwise_dequant(i8q, -3, COLS, rstats, QEMBED_DTYPE_F32, A_.val));
    EXPECT(INVALID, "cols", qembed_int8_vectorwise_dequant(i8q, ROWS, 0, rstats, QEMBED_DTYPE_F32, A_.val));
    EXPECT(INVALID, "cols", qembed_int8_vectorwise_dequant(i8q, ROWS, -3, rstats, QEMBED_DTYPE_F32, A_.val));
    EXPECT(SHAPE, "rows|cols",
           qembed_int8_vectorwise_dequant(i8q, (int64_t)1 << 40, (int64_t)1 << 30, rstats, QEMBED_DTYPE_F32, A_.val));
    EXPECT(SHAPE, "rows|cols|out",
           qembed_int8_vectorwise_dequant(i8q, (int64_t)1 << 31, (int64_t)1 << 31, rstats, QEMBED_DTYPE_F16, A_.val));
    EXPECT(SHAPE, "rows", qembed_int8_vectorwise_dequant(i8q, INT64_MAX, 1, rstats, QEMBED_DTYPE_F32, A_.val));
    for (i = 0; i < sizeof BAD_DTYPES / sizeof BAD_DTYPES[0]; i++)
        EXPECT(UNSUPP, "out_dtype", qembed_int8_vectorwise_dequant(i8q, ROWS, COLS, rstats, BAD_DTYPES[i], A_.val));
}

int main(void) {
    setup();
    maps_and_sizes();
    blockwise();
    statistics();
    four_bit();
    int8_rowwise();
    nonfinite_inputs();
    printf("test_errors: %ld bad-input cases\n", cases);
    return qt_summary("test_errors");
}
