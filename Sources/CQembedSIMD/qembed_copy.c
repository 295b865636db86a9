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

typedef float qe_f32x8 __attribute__((ext_vector_type(8)));

__attribute__((no_builtin("memcpy"))) void qembed__stream_store(void *dst, const void *src, long bytes) {
    char *d = (char *)dst;
    const char *s = (const char *)src;
    long head = (long)(-(uintptr_t)d & 63);
    if (head > bytes) head = bytes;
    memcpy(d, s, (size_t)head);
    d += head;
    s += head;
    bytes -= head;
    for (; bytes >= 64; bytes -= 64, d += 64, s += 64) {
        qe_f32x8 a, b;
        __builtin_memcpy(&a, s, 32);
        __builtin_memcpy(&b, s + 32, 32);
        __builtin_nontemporal_store(a, (qe_f32x8 *)d);
        __builtin_nontemporal_store(b, (qe_f32x8 *)(d + 32));
    }
    if (bytes > 0) memcpy(d, s, (size_t)bytes);
}

void qembed__stream_fence(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_sfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}
