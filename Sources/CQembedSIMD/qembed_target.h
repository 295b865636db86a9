/* The target attribute of the AVX-512 (F+BW+DQ+VL) kernels: each kernel
 * function carries it, so the files build in every CPU tier and the kernels
 * run only where qembed__avx512_enabled() says. Private to CQembedSIMD. */
#ifndef QEMBED_TARGET_H
#define QEMBED_TARGET_H
#if defined(QEMBED_AVX512_EMULATE)
/* tools/avx512_check.c: the kernels compiled against SIMDe's portable AVX-512 */
#define QEMBED__AVX512_TARGET
#elif defined(__clang__) && __clang_major__ >= 18
#define QEMBED__AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,evex512")))
#else
#define QEMBED__AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#endif
#endif
