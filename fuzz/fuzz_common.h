/*
 * fuzz_common.h - shared helpers of qembed's libFuzzer targets (fuzz/fuzz_*.c).
 *
 * Each target is one C file with LLVMFuzzerTestOneInput; tools/fuzz.sh builds
 * them with clang -fsanitize=fuzzer,address,undefined against a libqembed.so
 * that is itself built with ASan and libFuzzer's coverage instrumentation.
 *
 * The helpers: a per-process scratch directory (in /dev/shm when it exists,
 * so writing the input to a file costs no disk I/O), a whole-buffer file
 * writer, a byte reader that turns the fuzz input into integers without ever
 * running past its end, and FUZZ_ASSERT, which prints the condition and
 * aborts (libFuzzer then saves the input as a crash).
 */
#ifndef QEMBED_FUZZ_COMMON_H
#define QEMBED_FUZZ_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* mkdtemp, ftruncate */
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qembed.h"

#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_ASSERT failed: %s (last_error: \"%s\")\n", __FILE__,      \
                    __LINE__, #cond, qembed_last_error());                                         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Known open bugs (fuzz/regressions/KNOWN_OPEN): tools/fuzz.sh lists their ids
 * in QEMBED_FUZZ_KNOWN_OPEN while fuzzing, so that an oracle can step over a
 * bug that is already reported and keep looking for new ones. Run by hand
 * (variable unset) every oracle is strict. */
static inline int fuzz_known_open(const char *id) {
    const char *k = getenv("QEMBED_FUZZ_KNOWN_OPEN");
    return k != NULL && strstr(k, id) != NULL;
}

/* ---- scratch files --------------------------------------------------------- */

static char fuzz_dir[256];

static inline void fuzz_cleanup_dir(void) {
    /* the targets only ever create the files named by fuzz_path() */
    static const char *const names[] = {"in.safetensors", "in.npy", "base.safetensors", "base_nested.safetensors",
                                        "base_fp4.safetensors", "base_int8.safetensors"};
    char p[512];
    size_t i;
    if (fuzz_dir[0] == '\0') return;
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", fuzz_dir, names[i]);
        unlink(p);
    }
    rmdir(fuzz_dir);
}

/* A private directory for this process, created on first use, removed at exit. */
static inline const char *fuzz_scratch_dir(void) {
    if (fuzz_dir[0] == '\0') {
        /* tools/fuzz.sh names a directory it removes afterwards (a crashing run
         * skips atexit); by hand: /dev/shm when writable, else $TMPDIR or /tmp */
        const char *base = getenv("QEMBED_FUZZ_TMPDIR");
        if (base == NULL || base[0] == '\0')
            base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/qembed-fuzz-XXXXXX", base);
        if (mkdtemp(fuzz_dir) == NULL) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_cleanup_dir);
    }
    return fuzz_dir;
}

/* "<scratch>/<name>" in a static buffer per name slot (0..3). */
static inline const char *fuzz_path(int slot, const char *name) {
    static char paths[4][512];
    snprintf(paths[slot], sizeof paths[slot], "%s/%s", fuzz_scratch_dir(), name);
    return paths[slot];
}

/* Writes exactly `size` bytes to `path` (truncating); aborts on I/O errors,
 * which are the harness's problem, not the library's. */
static inline void fuzz_write_file(const char *path, const void *data, size_t size) {
    const uint8_t *p = (const uint8_t *)data;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(path);
        abort();
    }
    while (size > 0) {
        ssize_t w = write(fd, p, size);
        if (w < 0) {
            if (errno == EINTR) continue;
            perror("write");
            abort();
        }
        p += w;
        size -= (size_t)w;
    }
    close(fd);
}

/* Reads a whole file into a malloc'ed buffer (NULL on failure). */
static inline uint8_t *fuzz_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long len;
    if (f == NULL) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    buf = (uint8_t *)malloc((size_t)len + 1);
    if (buf != NULL && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)len;
    return buf;
}

/* ---- reading the input ------------------------------------------------------ */

typedef struct fuzz_reader {
    const uint8_t *p;
    size_t n;
} fuzz_reader;

static inline size_t fr_left(const fuzz_reader *r) { return r->n; }

static inline uint8_t fr_u8(fuzz_reader *r) {
    uint8_t v;
    if (r->n == 0) return 0;
    v = r->p[0];
    r->p++;
    r->n--;
    return v;
}

/* little-endian; each byte read in its own statement (C leaves the order of
 * operands unspecified) */
static inline uint16_t fr_u16(fuzz_reader *r) {
    uint16_t lo = fr_u8(r);
    uint16_t hi = fr_u8(r);
    return (uint16_t)(lo | hi << 8);
}

static inline uint32_t fr_u32(fuzz_reader *r) {
    uint32_t lo = fr_u16(r);
    uint32_t hi = fr_u16(r);
    return lo | hi << 16;
}

static inline uint64_t fr_u64(fuzz_reader *r) {
    uint64_t lo = fr_u32(r);
    uint64_t hi = fr_u32(r);
    return lo | hi << 32;
}

/* Copies up to `size` bytes into dst and zero-fills the rest. */
static inline void fr_bytes(fuzz_reader *r, void *dst, size_t size) {
    size_t k = size < r->n ? size : r->n;
    if (k > 0) memcpy(dst, r->p, k);
    if (k < size) memset((uint8_t *)dst + k, 0, size - k);
    r->p += k;
    r->n -= k;
}

#endif /* QEMBED_FUZZ_COMMON_H */
