/* Row copies for gathers (see qembed_simd.h). */
#include "qembed_simd.h"

#include <stdint.h>
#include <string.h>

typedef float qe_f32x4 __attribute__((ext_vector_type(4)));

/* no_builtin: the loop must not be turned back into a memcpy call. */
__attribute__((no_builtin("memcpy"))) void qembed__copy_row(void *dst, const void *src, long bytes) {
    if (bytes < 2048 || ((uintptr_t)dst & 63) == 0) {
        memcpy(dst, src, (size_t)bytes);
        return;
    }
    char *d = (char *)dst;
    const char *s = (const char *)src;
    long i = 0;
    for (; i + 64 <= bytes; i += 64) {
        qe_f32x4 a, b, c, e;
        __builtin_memcpy(&a, s + i, 16);
        __builtin_memcpy(&b, s + i + 16, 16);
        __builtin_memcpy(&c, s + i + 32, 16);
        __builtin_memcpy(&e, s + i + 48, 16);
        __builtin_memcpy(d + i, &a, 16);
        __builtin_memcpy(d + i + 16, &b, 16);
        __builtin_memcpy(d + i + 32, &c, 16);
        __builtin_memcpy(d + i + 48, &e, 16);
    }
    if (i < bytes) memcpy(d + i, s + i, (size_t)(bytes - i));
}
