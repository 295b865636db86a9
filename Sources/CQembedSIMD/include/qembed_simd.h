/* Vector helpers the Swift core needs but Swift 6.3 does not lower well:
 * SIMD8<Float>.squareRoot() becomes eight scalar sqrtf calls with errno
 * checks, while __builtin_elementwise_sqrt is one correctly rounded vsqrtps.
 * Header-only and internal to the core; not part of the C API. */
#ifndef QEMBED_SIMD_H
#define QEMBED_SIMD_H

typedef float qembed__f32x8 __attribute__((ext_vector_type(8)));

static inline __attribute__((always_inline)) qembed__f32x8 qembed__sqrt8(qembed__f32x8 x) {
    return __builtin_elementwise_sqrt(x);
}

#endif
