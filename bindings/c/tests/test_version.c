/* test_version.c - version, status strings, dtype traits, thread count and
 * the per-thread last-error message. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "qembed.h"
#include "qtest.h"

#define STR_(x) #x
#define STR(x) STR_(x)

static void test_version(void) {
    char expect[64];
    CHECKF(qembed_version_number() == QEMBED_VERSION_NUMBER, "library %u, header %d",
           qembed_version_number(), QEMBED_VERSION_NUMBER);
    CHECK(QEMBED_VERSION_NUMBER ==
          QEMBED_VERSION_MAJOR * 10000 + QEMBED_VERSION_MINOR * 100 + QEMBED_VERSION_PATCH);
    snprintf(expect, sizeof expect, "%d.%d.%d", QEMBED_VERSION_MAJOR, QEMBED_VERSION_MINOR,
             QEMBED_VERSION_PATCH);
    CHECK(qembed_version() != NULL);
    CHECKF(qembed_version() != NULL && strcmp(qembed_version(), expect) == 0, "got \"%s\", want \"%s\"",
           qembed_version() ? qembed_version() : "(null)", expect);
    CHECK(strcmp(expect, STR(QEMBED_VERSION_MAJOR) "." STR(QEMBED_VERSION_MINOR) "." STR(QEMBED_VERSION_PATCH)) == 0);
    /* the same static string every time */
    CHECK(qembed_version() == qembed_version());
}

static void test_status_strings(void) {
    static const struct { int code; const char *text; } known[] = {
        {QEMBED_OK, "ok"},
        {QEMBED_ERR_INVALID_ARGUMENT, "invalid argument"},
        {QEMBED_ERR_NULL_POINTER, NULL},
        {QEMBED_ERR_OUT_OF_RANGE, NULL},
        {QEMBED_ERR_UNSUPPORTED, NULL},
        {QEMBED_ERR_NON_FINITE, NULL},
        {QEMBED_ERR_SHAPE, NULL},
        {QEMBED_ERR_BUFFER_TOO_SMALL, NULL},
        {QEMBED_ERR_OUT_OF_MEMORY, NULL},
        {QEMBED_ERR_IO, NULL},
        {QEMBED_ERR_FORMAT, NULL},
        {QEMBED_ERR_INTERNAL, NULL},
    };
    const size_t count = sizeof known / sizeof known[0];
    size_t i, j;
    CHECK(count == 12 && QEMBED_ERR_INTERNAL == 11);
    for (i = 0; i < count; i++) {
        const char *s = qembed_status_string(known[i].code);
        CHECKF(s != NULL && s[0] != '\0', "status %d", known[i].code);
        if (s == NULL) continue;
        CHECKF(strcmp(s, "unknown status") != 0, "status %d has no text", known[i].code);
        if (known[i].text != NULL)
            CHECKF(strcmp(s, known[i].text) == 0, "status %d: \"%s\"", known[i].code, s);
        for (j = 0; j < i; j++) {
            const char *t = qembed_status_string(known[j].code);
            CHECKF(t == NULL || strcmp(s, t) != 0, "statuses %d and %d share \"%s\"", known[i].code,
                   known[j].code, s);
        }
    }
    {
        static const int unknown[] = {999, -1, 12, 1000000, -2147483647 - 1};
        for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
            const char *s = qembed_status_string(unknown[i]);
            CHECKF(s != NULL && strcmp(s, "unknown status") == 0, "status %d: \"%s\"", unknown[i],
                   s ? s : "(null)");
        }
    }
}

static void test_dtypes(void) {
    static const struct { int dtype; size_t size; const char *name; } known[] = {
        {QEMBED_DTYPE_F32, 4, "f32"}, {QEMBED_DTYPE_F16, 2, "f16"}, {QEMBED_DTYPE_BF16, 2, "bf16"},
        {QEMBED_DTYPE_U8, 1, "u8"},   {QEMBED_DTYPE_I8, 1, "i8"},   {QEMBED_DTYPE_I32, 4, "i32"},
        {QEMBED_DTYPE_I64, 8, "i64"},
    };
    static const int unknown[] = {QEMBED_DTYPE_COUNT, 99, -1, 1 << 30};
    size_t i;
    CHECK(QEMBED_DTYPE_COUNT == 7);
    for (i = 0; i < sizeof known / sizeof known[0]; i++) {
        const char *name = qembed_dtype_name(known[i].dtype);
        CHECKF(qembed_dtype_size(known[i].dtype) == known[i].size, "dtype %d size %zu", known[i].dtype,
               qembed_dtype_size(known[i].dtype));
        CHECKF(name != NULL && strcmp(name, known[i].name) == 0, "dtype %d name \"%s\"", known[i].dtype,
               name ? name : "(null)");
    }
    for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *name = qembed_dtype_name(unknown[i]);
        CHECKF(qembed_dtype_size(unknown[i]) == 0, "dtype %d", unknown[i]);
        CHECKF(name != NULL && strcmp(name, "unknown") == 0, "dtype %d name \"%s\"", unknown[i],
               name ? name : "(null)");
    }
}

static void test_threads_setting(void) {
    int def = qembed_get_num_threads();
    qembed_status st;
    CHECKF(def >= 1, "default %d", def);
    qembed_clear_error();
    CHECK(qembed_set_num_threads(3) == QEMBED_OK);
    CHECK(qembed_get_num_threads() == 3);
    CHECK(qembed_set_num_threads(1) == QEMBED_OK);
    CHECK(qembed_get_num_threads() == 1);
    CHECK(qembed_set_num_threads(1024) == QEMBED_OK);
    CHECK(qembed_get_num_threads() == 1024);
    CHECK(strcmp(qembed_last_error(), "") == 0);
    CHECK(qembed_set_num_threads(0) == QEMBED_OK);
    CHECKF(qembed_get_num_threads() == def, "0 restores %d, got %d", def, qembed_get_num_threads());

    CHECK(qembed_set_num_threads(5) == QEMBED_OK);
    {
        static const int bad[] = {-1, 100000, 1025, -2147483647 - 1};
        size_t i;
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            qembed_clear_error();
            st = qembed_set_num_threads(bad[i]);
            CHECKF(st == QEMBED_ERR_INVALID_ARGUMENT, "n=%d gives %d", bad[i], (int)st);
            CHECKF(qembed_last_error() != NULL && qembed_last_error()[0] != '\0', "n=%d: empty last_error", bad[i]);
            CHECKF(qembed_get_num_threads() == 5, "n=%d changed the count to %d", bad[i], qembed_get_num_threads());
        }
    }
    CHECK(qembed_set_num_threads(0) == QEMBED_OK);
    CHECK(qembed_get_num_threads() == def);
}

/* ---- last_error is per thread ------------------------------------------ */

typedef struct thread_probe {
    int make_error;
    char seen_before[512];
    char seen_after[512];
    qembed_status status;
} thread_probe;

static void *probe_thread(void *arg) {
    thread_probe *p = (thread_probe *)arg;
    snprintf(p->seen_before, sizeof p->seen_before, "%s", qembed_last_error());
    if (p->make_error) p->status = qembed_create_dynamic_map(true, 7, 9, NULL);
    snprintf(p->seen_after, sizeof p->seen_after, "%s", qembed_last_error());
    return NULL;
}

static void test_last_error(void) {
    pthread_t t;
    thread_probe a, b;
    char main_msg[512];
    float code[QEMBED_CODE_SIZE];

    qembed_clear_error();
    CHECK(qembed_last_error() != NULL && strcmp(qembed_last_error(), "") == 0);

    /* an error on the main thread */
    CHECK(qembed_set_num_threads(-1) == QEMBED_ERR_INVALID_ARGUMENT);
    snprintf(main_msg, sizeof main_msg, "%s", qembed_last_error());
    CHECK(main_msg[0] != '\0');
    /* a success does not clear it */
    CHECK(qembed_create_dynamic_map(true, 7, 8, code) == QEMBED_OK);
    CHECK(strcmp(qembed_last_error(), main_msg) == 0);

    /* thread A makes an error: it sees it, main does not see A's */
    memset(&a, 0, sizeof a);
    a.make_error = 1;
    CHECK(pthread_create(&t, NULL, probe_thread, &a) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECKF(a.seen_before[0] == '\0', "new thread starts with \"%s\"", a.seen_before);
    CHECK(a.status == QEMBED_ERR_NULL_POINTER);
    CHECK(a.seen_after[0] != '\0' && strcmp(a.seen_after, main_msg) != 0);
    CHECKF(strcmp(qembed_last_error(), main_msg) == 0, "main sees \"%s\"", qembed_last_error());

    /* thread B makes none: it never sees A's or main's */
    memset(&b, 0, sizeof b);
    CHECK(pthread_create(&t, NULL, probe_thread, &b) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECKF(b.seen_before[0] == '\0' && b.seen_after[0] == '\0', "thread B sees \"%s\"", b.seen_after);

    /* clear_error resets only the calling thread */
    qembed_clear_error();
    CHECK(strcmp(qembed_last_error(), "") == 0);
    /* the message is at most 511 bytes */
    CHECK(qembed_set_num_threads(-7) == QEMBED_ERR_INVALID_ARGUMENT);
    CHECK(strlen(qembed_last_error()) <= 511);
    qembed_clear_error();
}

/* qembed_cpu_tier(): a known tier name. Run with QEMBED_CPU=<not a tier> and
 * QEMBED_TEST_EXPECT_REFUSED=1 (main does that to itself through the
 * dispatcher), the tier is "none", a status call fails with
 * QEMBED_ERR_UNSUPPORTED and writes nothing, and qembed_last_error() says why. */
static int test_cpu_tier(const char *self) {
    const char *t = qembed_cpu_tier();
    CHECK(t != NULL);
    if (t == NULL) return 0;
    if (getenv("QEMBED_TEST_EXPECT_REFUSED") != NULL) {
        float x[4] = {1, 2, 3, 4}, absmax[1] = {-7.0f};
        unsigned char q[4] = {9, 9, 9, 9};
        CHECKF(strcmp(t, "none") == 0, "tier %s, want none", t);
        CHECK(qembed_quantize_blockwise(x, QEMBED_DTYPE_F32, 4, NULL, 64, q, absmax, 1) == QEMBED_ERR_UNSUPPORTED);
        CHECK(q[0] == 9 && absmax[0] == -7.0f);
        CHECKF(strstr(qembed_last_error(), "QEMBED_CPU") != NULL, "message: %s", qembed_last_error());
        CHECK(qembed_version_number() == QEMBED_VERSION_MAJOR * 10000 + QEMBED_VERSION_MINOR * 100 + QEMBED_VERSION_PATCH);
        return 1;
    }
    CHECKF(strcmp(t, "baseline") == 0 || strcmp(t, "avx2") == 0 || strcmp(t, "avx512") == 0 || strcmp(t, "native") == 0,
           "qembed_cpu_tier() = %s", t);
    if (strcmp(t, "native") != 0 && self != NULL) {
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "QEMBED_CPU=no-such-tier QEMBED_TEST_EXPECT_REFUSED=1 '%s' > /dev/null", self);
        CHECKF(system(cmd) == 0, "the refused-tier run of %s failed", self);
    }
    return 0;
}

int main(int argc, char **argv) {
    (void)argc;
    if (test_cpu_tier(argv[0])) return qt_summary("test_version (refused tier)");
    test_version();
    test_status_strings();
    test_dtypes();
    test_threads_setting();
    test_last_error();
    return qt_summary("test_version");
}
