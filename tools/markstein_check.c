/* tools/markstein_check.c - checks the divide-free x / c2 of the 8-bit Adam
 * step (Sources/QembedCore/Optim/UpdateRules.swift, divideByC2):
 *   q = x * r, r = RN(1 / c2);  q' = fma(fma(-q, c2, x), r, q)  ==  RN(x / c2) ?
 * for c2 = sqrt(1 - beta2^t): every normal float x for t <= 3 and beta2 in
 * {0.999, 0.99}, a 1-in-9973 sample of x for ~600 other (beta2, t).
 *   cc -O2 -march=native tools/markstein_check.c -o /tmp/mk -lm && /tmp/mk   (~20 s)
 * Prints the count of differences and the largest x with one; the Swift code
 * relies on that x being below 2^-100 (sqrt(v) is 0 or >= 2^-75). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int main(void) {
    static const double betas[] = {0.999, 0.99, 0.9, 0.95, 0.9999, 0.5};
    long bad = 0, tested = 0;
    float worst = 0;
    int bi, t;
    for (bi = 0; bi < 6; bi++) {
        for (t = 1; t <= 3000; t += (t < 20 ? 1 : 37)) {
            const float c2 = (float)sqrt(1 - pow(betas[bi], t)), r = 1.0f / c2;
            const uint32_t step = (t <= 3 && bi < 2) ? 1 : 9973;
            uint32_t u;
            if (!(c2 > 0)) continue;
            for (u = 0x00800000u; u < 0x7effffffu; u += step) {
                const float x = from_bits(u), want = x / c2;
                float q;
                if (!isfinite(want)) continue;
                q = x * r;
                q = fmaf(fmaf(-q, c2, x), r, q);
                tested++;
                if (q != want) {
                    bad++;
                    if (x > worst) worst = x;
                }
            }
        }
    }
    printf("markstein_check: %ld quotients, %ld differ, largest x that differs %a (must be < 2^-100 = %a)\n", tested,
           bad, (double)worst, 0x1p-100);
    return worst < 0x1p-100f ? 0 : 1;
}
