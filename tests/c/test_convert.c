/*
 * test_convert.c -- pm_half_to_float against binary16 decoded from its
 * definition, on all 65 536 bit patterns, for 1 and 2 threads, with F16C
 * and with the portable integer path.
 * variant: -DPM_NO_F16C
 */
#include "pm_test.h"

#include <string.h>

/* (-1)^s 2^(e-15) (1 + m/1024), subnormals 2^-14 (m/1024). */
static double half_value(uint16_t h, int *is_nan)
{
    const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    *is_nan = e == 0x1f && m != 0;
    double v;
    if (e == 0x1f)
        v = INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -24);
    else
        v = ldexp(1024.0 + m, e - 25);
    return s ? -v : v;
}

static void test_all_patterns(int threads)
{
    const int64_t n = 65536 + 13; /* a tail that is not a multiple of 8 */
    uint16_t *src = malloc((size_t)n * sizeof *src);
    float *dst = malloc((size_t)n * sizeof *dst);
    for (int64_t i = 0; i < n; i++) src[i] = (uint16_t)(i * 40503u);
    pm_set_num_threads(threads);
    CHECK_STATUS(pm_half_to_float(src, dst, n), PM_OK);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        int is_nan;
        const double want = half_value(src[i], &is_nan);
        uint32_t bits;
        memcpy(&bits, &dst[i], sizeof bits);
        if (is_nan) {
            /* a quiet NaN of the same sign keeping the payload */
            const uint32_t want_bits = ((uint32_t)(src[i] & 0x8000u) << 16) |
                                       0x7fc00000u | ((uint32_t)(src[i] & 0x3ffu) << 13);
            if (bits != want_bits) bad++;
        } else if ((double)dst[i] != want || !signbit(dst[i]) != !signbit(want)) {
            bad++;
        }
    }
    CHECK(bad == 0);
    free(src);
    free(dst);
}

int main(void)
{
    const int before = pm_get_num_threads();
    test_all_patterns(1);
    test_all_patterns(2);
    pm_set_num_threads(before);
    float f = 1.0f;
    CHECK_STATUS(pm_half_to_float(NULL, &f, 1), PM_ERR_ARG);
    CHECK_STATUS(pm_half_to_float(NULL, NULL, 0), PM_OK);
    CHECK_STATUS(pm_half_to_float(NULL, NULL, -1), PM_ERR_ARG);
    return pm_test_report("test_convert");
}
