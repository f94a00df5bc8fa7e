/*
 * normalize.c -- per-pixel L2 normalisation of channel-first features.
 */
#include "primaps.h"

#include <math.h>

/* Pixels per task: the double accumulators of one task live on the stack. */
#define PM_NORM_CHUNK 512

/* Normalises pixels [p0, p1) of one image; returns 1 if any is non-finite. */
static int normalize_chunk(const float *src, float *dst, int64_t C, int64_t n,
                           int64_t p0, int64_t p1)
{
    double acc[PM_NORM_CHUNK];
    const int64_t len = p1 - p0;
    for (int64_t i = 0; i < len; i++) acc[i] = 0.0;
    for (int64_t c = 0; c < C; c++) {
        const float *row = src + c * n + p0;
        for (int64_t i = 0; i < len; i++) {
            const double v = row[i];
            acc[i] += v * v;
        }
    }
    int bad = 0;
    for (int64_t i = 0; i < len; i++) {
        /* A float squared is finite in double, so a non-finite sum means a
         * NaN or inf in the input. */
        if (!isfinite(acc[i])) bad = 1;
        acc[i] = acc[i] > 0.0 ? 1.0 / sqrt(acc[i]) : 0.0;
    }
    if (bad) return 1;
    for (int64_t c = 0; c < C; c++) {
        const float *row = src + c * n + p0;
        float *out = dst + c * n + p0;
        for (int64_t i = 0; i < len; i++) out[i] = (float)(row[i] * acc[i]);
    }
    return 0;
}

int pm_l2_normalize(const float *src, float *dst, int64_t B, int64_t C,
                    int64_t n)
{
    if (B < 0 || C < 0 || n < 0) return PM_ERR_ARG;
    if (B == 0 || C == 0 || n == 0) return PM_OK;
    if (!src || !dst) return PM_ERR_ARG;
    const int64_t chunks = (n + PM_NORM_CHUNK - 1) / PM_NORM_CHUNK;
    const int64_t tasks = B * chunks;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) \
    num_threads(pm_get_num_threads()) if (B * C * n > 65536)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t b = t / chunks, k = t % chunks;
        const int64_t p0 = k * PM_NORM_CHUNK;
        const int64_t p1 = p0 + PM_NORM_CHUNK < n ? p0 + PM_NORM_CHUNK : n;
        bad |= normalize_chunk(src + b * C * n, dst + b * C * n, C, n, p0, p1);
    }
    return bad ? PM_ERR_NONFINITE : PM_OK;
}
