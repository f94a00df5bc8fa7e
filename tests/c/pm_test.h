/*
 * pm_test.h -- a minimal harness for the C tests of the core.
 * A test program calls the kernels directly, with no Python.
 */
#ifndef PM_TEST_H
#define PM_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "primaps.h"

static int pm_test_failures = 0;
static int pm_test_checks = 0;

#define CHECK(cond)                                                         \
    do {                                                                    \
        pm_test_checks++;                                                   \
        if (!(cond)) {                                                      \
            pm_test_failures++;                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,          \
                    __LINE__, #cond);                                       \
        }                                                                   \
    } while (0)

#define CHECK_STATUS(expr, want)                                            \
    do {                                                                    \
        int st_ = (expr);                                                   \
        pm_test_checks++;                                                   \
        if (st_ != (want)) {                                                \
            pm_test_failures++;                                             \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d\n",    \
                    __FILE__, __LINE__, #expr, st_, pm_status_str(st_),     \
                    (int)(want));                                           \
        }                                                                   \
    } while (0)

#define CHECK_CLOSE(a, b, tol)                                              \
    do {                                                                    \
        double a_ = (a), b_ = (b);                                          \
        pm_test_checks++;                                                   \
        if (!(fabs(a_ - b_) <= (tol) * (1.0 + fabs(b_)))) {                 \
            pm_test_failures++;                                             \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %.9g (tol %g)\n",   \
                    __FILE__, __LINE__, #a, a_, b_, (double)(tol));         \
        }                                                                   \
    } while (0)

/* Deterministic pseudo-random numbers in [-1, 1) (xorshift64*). */
static uint64_t pm_test_state = 88172645463325252ull;
static inline float pm_test_rand(void)
{
    pm_test_state ^= pm_test_state >> 12;
    pm_test_state ^= pm_test_state << 25;
    pm_test_state ^= pm_test_state >> 27;
    uint64_t r = pm_test_state * 2685821657736338717ull;
    return (float)((double)(r >> 11) / 4503599627370496.0 - 1.0);
}

static inline float *pm_test_alloc_rand(size_t n)
{
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "allocation failed\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) p[i] = pm_test_rand();
    return p;
}

static inline int pm_test_report(const char *name)
{
    printf("%s: %d checks, %d failures\n", name, pm_test_checks,
           pm_test_failures);
    return pm_test_failures ? 1 : 0;
}

#endif /* PM_TEST_H */
