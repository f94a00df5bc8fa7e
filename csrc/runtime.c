/*
 * runtime.c -- the thread pool size, status strings and library versions.
 *
 * The package has one pool: libgomp's.  Our parallel loops use it with an
 * explicit num_threads(pm_get_num_threads()), and oneDNN (built for the
 * OpenMP runtime) uses it through omp_get_max_threads() of the calling
 * thread, which pm_prepare_onednn_call sets.  OpenBLAS (the pthreads build of
 * scipy-openblas32) keeps a pool of its own; the core calls BLAS only from
 * inside its parallel loops, one image per thread, so OpenBLAS is pinned to
 * one thread.  This keeps "one level of parallelism at a time" and makes BLAS
 * results independent of the thread count.
 */
#include "primaps.h"

#include <omp.h>

#include <oneapi/dnnl/dnnl.h>
#include "pm_blas.h"

static int pm_nthreads = 0; /* 0: not yet initialised */

const char *pm_status_str(int status)
{
    switch (status) {
    case PM_OK: return "success";
    case PM_ERR_NOMEM: return "out of memory";
    case PM_ERR_ARG: return "invalid argument";
    case PM_ERR_NONFINITE: return "input holds NaN or inf";
    case PM_ERR_BLAS: return "OpenBLAS/LAPACK error";
    case PM_ERR_DNNL: return "oneDNN error";
    case PM_ERR_INTERNAL: return "internal error";
    case PM_ERR_INTERRUPTED: return "interrupted";
    default: return "unknown status";
    }
}

static int pm_interrupt_flag;

void pm_interrupt_request(void)
{
    __atomic_store_n(&pm_interrupt_flag, 1, __ATOMIC_RELAXED);
}

void pm_interrupt_clear(void)
{
    __atomic_store_n(&pm_interrupt_flag, 0, __ATOMIC_RELAXED);
}

int pm_interrupted(void)
{
    return __atomic_load_n(&pm_interrupt_flag, __ATOMIC_RELAXED);
}

int pm_get_num_threads(void)
{
    int n = __atomic_load_n(&pm_nthreads, __ATOMIC_RELAXED);
    if (n <= 0) {
        /* First use: follow OMP_NUM_THREADS, else the number of cores. */
        n = omp_get_max_threads();
        if (n < 1) n = 1;
        int expected = 0;
        if (!__atomic_compare_exchange_n(&pm_nthreads, &expected, n, 0,
                                         __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            n = expected;
    }
    return n;
}

int pm_set_num_threads(int n)
{
    if (n < 1) return PM_ERR_ARG;
    __atomic_store_n(&pm_nthreads, n, __ATOMIC_RELAXED);
    omp_set_num_threads(n);
    pm_pin_blas();
    return PM_OK;
}

void pm_prepare_onednn_call(void)
{
    int n = pm_get_num_threads();
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
}

void pm_pin_blas(void)
{
    if (pm_openblas_get_num_threads() != 1) pm_openblas_set_num_threads(1);
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_default: return "default";
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2_vnni_2: return "avx2_vnni_2";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_fp16: return "avx512_core_fp16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "unknown";
    }
}

static const char *runtime_name(unsigned rt)
{
    switch (rt) {
    case DNNL_RUNTIME_SEQ: return "sequential";
    case DNNL_RUNTIME_OMP: return "OpenMP";
    case DNNL_RUNTIME_TBB: return "TBB";
    case DNNL_RUNTIME_THREADPOOL: return "threadpool";
    default: return "other";
    }
}

int pm_get_build_info(pm_build_info *info)
{
    if (!info) return PM_ERR_ARG;
    const dnnl_version_t *v = dnnl_version();
    info->onednn_major = v->major;
    info->onednn_minor = v->minor;
    info->onednn_patch = v->patch;
    info->onednn_hash = v->hash;
    info->onednn_runtime = runtime_name(v->cpu_runtime);
    info->onednn_isa = isa_name(dnnl_get_effective_cpu_isa());
    info->openblas_config = pm_openblas_get_config();
    info->openblas_corename = pm_openblas_get_corename();
    info->openblas_threads = pm_openblas_get_num_threads();
    info->openmp_max_threads = omp_get_max_threads();
    info->openmp_version = _OPENMP;
    return PM_OK;
}
