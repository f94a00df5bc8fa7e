/*
 * convert.c -- IEEE 754 half precision (binary16) to single precision.
 *
 * Feature stores keep float16; the kernels compute in float32.  Widening is
 * exact (every binary16 value, subnormals, infinities and NaNs included, is
 * a binary32 value), so the result does not depend on how it is computed:
 * the F16C instruction (VCVTPH2PS, 8 values at a time) where the CPU has
 * it, else the same mapping in integer arithmetic, chunked over the
 * threads.  NaN payloads are kept (quieted, as VCVTPH2PS does).
 */
#include "primaps.h"

#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && !defined(PM_NO_F16C)
#include <immintrin.h>
#define PM_HAVE_F16C_PATH 1
#endif

/* Values per task: large enough to amortise the task, small enough for
 * parallel slack. */
#define PM_CVT_CHUNK 65536

static float half_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu, bits;
    if (exp == 0x1fu) { /* inf or NaN (quiet bit set, as F16C does) */
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0u);
    } else if (exp != 0) { /* normal */
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) { /* zero */
        bits = sign;
    } else { /* subnormal: normalise */
        uint32_t e = 113u;
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void chunk_portable(const uint16_t *src, float *dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

#ifdef PM_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) static void chunk_f16c(const uint16_t *src,
                                                           float *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) dst[i] = half_to_float(src[i]);
}
#endif

int pm_half_to_float(const uint16_t *src, float *dst, int64_t n)
{
    if (n < 0 || (n > 0 && (!src || !dst))) return PM_ERR_ARG;
    void (*chunk)(const uint16_t *, float *, int64_t) = chunk_portable;
#ifdef PM_HAVE_F16C_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c"))
        chunk = chunk_f16c;
#endif
    const int64_t tasks = (n + PM_CVT_CHUNK - 1) / PM_CVT_CHUNK;
#pragma omp parallel for schedule(static) num_threads(pm_get_num_threads()) \
    if (tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t lo = t * PM_CVT_CHUNK;
        const int64_t len = n - lo < PM_CVT_CHUNK ? n - lo : PM_CVT_CHUNK;
        chunk(src + lo, dst + lo, len);
    }
    return PM_OK;
}
