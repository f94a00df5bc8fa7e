/*
 * metrics.c -- confusion matrix accumulation for Hungarian-matched
 * evaluation.
 *
 * The pixels are cut into fixed chunks (independent of the thread count);
 * each thread counts its chunks into partial matrices of its own, and the
 * partials are added to the caller's matrix serially in thread order after
 * the parallel loop.  Counts are int64 integers, so the result is exact and
 * identical for every thread count.
 *
 * Per block of pixels, a first pass turns each (pred, gt) pair into a bin
 * index pred*K + gt, or a trash bin R*K for a pixel that is not counted
 * (branch-free, vectorisable, one loop per pair of label dtypes); a second
 * pass increments the bins.  Label maps are spatially coherent, so
 * consecutive pixels mostly hit the same bin: four interleaved partial
 * histograms ("lanes") break the chain of dependent increments that one
 * histogram would serialise on.
 */
#include "primaps.h"

#include <omp.h>
#include <stdlib.h>

/* Pixels per task: big enough to amortise the scheduling, small enough to
 * balance a single image over the threads. */
#define PM_CONF_CHUNK ((int64_t)1 << 15)
/* Pixels per bin-index block: the block's indices stay in L1. */
#define PM_CONF_BLOCK 2048
/* Interleaved partial histograms when the matrix is small enough that four
 * copies stay in cache. */
#define PM_CONF_LANES 4
#define PM_CONF_LANES_MAX_BINS 16384

/* The bin-index loops vectorise well with AVX2, which the baseline x86-64
 * target lacks: where the toolchain supports function multi-versioning,
 * build an AVX2 clone as well and let the loader pick one for this CPU. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__GLIBC__) && \
    !defined(PM_NO_CLONES)
#define PM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PM_CLONES
#endif

typedef void (*pm_bin_fn)(const void *pred, const void *gt, int64_t n,
                          uint64_t R, uint64_t K, uint32_t *bins, int *bad);

/* A label is converted to an unsigned type UP / UG as wide as needed
 * (32 bits for uint8, uint16 and int32, 64 for int64): a negative label
 * wraps to a huge value and fails the same range test as one too large.
 * Narrow arithmetic keeps the loop in 8 lanes per AVX2 vector. */
#define PM_DEFINE_BINS(NAME, TP, UP, TG, UG)                                \
    PM_CLONES static void NAME(const void *pred_, const void *gt_,          \
                               int64_t n, uint64_t R, uint64_t K,           \
                               uint32_t *bins, int *bad)                    \
    {                                                                       \
        const TP *pred = (const TP *)pred_;                                 \
        const TG *gt = (const TG *)gt_;                                     \
        const UP r = (UP)R;                                                 \
        const UG k = (UG)K;                                                 \
        const uint32_t k32 = (uint32_t)K, trash = (uint32_t)(R * K);        \
        int b = 0;                                                          \
        for (int64_t i = 0; i < n; i++) {                                   \
            const UP p = (UP)pred[i];                                       \
            const UG g = (UG)gt[i];                                         \
            const int p_ok = p < r, counted = p_ok & (g < k);               \
            b |= !p_ok;                                                     \
            bins[i] = counted ? (uint32_t)p * k32 + (uint32_t)g : trash;    \
        }                                                                   \
        *bad |= b;                                                          \
    }

#define PM_DEFINE_BINS_ROW(NP, TP, UP)                                      \
    PM_DEFINE_BINS(bins_##NP##_u8, TP, UP, uint8_t, uint32_t)               \
    PM_DEFINE_BINS(bins_##NP##_u16, TP, UP, uint16_t, uint32_t)             \
    PM_DEFINE_BINS(bins_##NP##_i32, TP, UP, int32_t, uint32_t)              \
    PM_DEFINE_BINS(bins_##NP##_i64, TP, UP, int64_t, uint64_t)

PM_DEFINE_BINS_ROW(u8, uint8_t, uint32_t)
PM_DEFINE_BINS_ROW(u16, uint16_t, uint32_t)
PM_DEFINE_BINS_ROW(i32, int32_t, uint32_t)
PM_DEFINE_BINS_ROW(i64, int64_t, uint64_t)

/* Indexed [pred_type][gt_type] in the order of pm_label_type. */
static const pm_bin_fn pm_bin_table[4][4] = {
    {bins_u8_u8, bins_u8_u16, bins_u8_i32, bins_u8_i64},
    {bins_u16_u8, bins_u16_u16, bins_u16_i32, bins_u16_i64},
    {bins_i32_u8, bins_i32_u16, bins_i32_i32, bins_i32_i64},
    {bins_i64_u8, bins_i64_u16, bins_i64_i32, bins_i64_i64},
};

static const size_t pm_label_size[4] = {1, 2, 4, 8};

/* The value of element i of a label array, widened to int64. */
static int64_t label_at(const void *a, pm_label_type t, int64_t i)
{
    switch (t) {
    case PM_LABEL_U8: return ((const uint8_t *)a)[i];
    case PM_LABEL_U16: return ((const uint16_t *)a)[i];
    case PM_LABEL_I32: return ((const int32_t *)a)[i];
    default: return ((const int64_t *)a)[i];
    }
}

/* Counts bins[0..n) into `lanes` interleaved histograms of stride `nbins`. */
static void count_bins(const uint32_t *bins, int64_t n, int64_t *hist,
                       int lanes, int64_t nbins)
{
    int64_t i = 0;
    if (lanes == PM_CONF_LANES) {
        int64_t *h0 = hist, *h1 = hist + nbins, *h2 = hist + 2 * nbins,
                *h3 = hist + 3 * nbins;
        for (; i + 4 <= n; i += 4) {
            h0[bins[i]]++;
            h1[bins[i + 1]]++;
            h2[bins[i + 2]]++;
            h3[bins[i + 3]]++;
        }
    }
    for (; i < n; i++) hist[bins[i]]++;
}

/* Counts pixels [p0, p1) into hist; returns the index of the first
 * prediction outside [0, R) in the range, or -1. */
static int64_t count_chunk(const void *pred, pm_label_type pt, const void *gt,
                           pm_label_type gtt, int64_t p0, int64_t p1,
                           int64_t R, int64_t K, int64_t *hist, int lanes,
                           int64_t nbins)
{
    uint32_t bins[PM_CONF_BLOCK];
    const pm_bin_fn fn = pm_bin_table[pt][gtt];
    const char *pb = (const char *)pred, *gb = (const char *)gt;
    int bad = 0;
    for (int64_t s = p0; s < p1; s += PM_CONF_BLOCK) {
        const int64_t len = p1 - s < PM_CONF_BLOCK ? p1 - s : PM_CONF_BLOCK;
        fn(pb + (size_t)s * pm_label_size[pt],
           gb + (size_t)s * pm_label_size[gtt], len, (uint64_t)R, (uint64_t)K,
           bins, &bad);
        count_bins(bins, len, hist, lanes, nbins);
    }
    if (!bad) return -1;
    for (int64_t i = p0; i < p1; i++) {
        const int64_t v = label_at(pred, pt, i);
        if (v < 0 || v >= R) return i;
    }
    return -1; /* unreachable: the block pass saw a bad value */
}

int pm_confusion_accumulate(const void *pred, pm_label_type pred_type,
                            const void *gt, pm_label_type gt_type, int64_t n,
                            int64_t R, int64_t K, int64_t *conf,
                            int64_t *n_skipped, int64_t *bad_index)
{
    if (bad_index) *bad_index = -1;
    if (n < 0 || R < 1 || K < 1 || R > INT32_MAX / K || !conf)
        return PM_ERR_ARG;
    if ((unsigned)pred_type > PM_LABEL_I64 || (unsigned)gt_type > PM_LABEL_I64)
        return PM_ERR_ARG;
    if (n == 0) return PM_OK;
    if (!pred || !gt) return PM_ERR_ARG;

    const int64_t nbins = R * K + 1; /* the last bin collects skipped pixels */
    const int lanes = nbins <= PM_CONF_LANES_MAX_BINS ? PM_CONF_LANES : 1;
    const int64_t chunks = (n + PM_CONF_CHUNK - 1) / PM_CONF_CHUNK;
    int nthreads = pm_get_num_threads();
    if (nthreads > chunks) nthreads = (int)chunks;
    const size_t per_thread = (size_t)lanes * (size_t)nbins;
    int64_t *partial = calloc((size_t)nthreads * per_thread, sizeof(int64_t));
    int64_t *first_bad = malloc((size_t)nthreads * sizeof(int64_t));
    if (!partial || !first_bad) {
        free(partial);
        free(first_bad);
        return PM_ERR_NOMEM;
    }
    for (int t = 0; t < nthreads; t++) first_bad[t] = -1;

#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num();
        int64_t *hist = partial + (size_t)t * per_thread;
        int64_t mine = -1;
        /* Dynamic: the counts do not depend on which thread takes a
         * chunk, and a core busy with other work then slows no one. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t p0 = c * PM_CONF_CHUNK;
            const int64_t p1 = p0 + PM_CONF_CHUNK < n ? p0 + PM_CONF_CHUNK : n;
            const int64_t b = count_chunk(pred, pred_type, gt, gt_type, p0, p1,
                                          R, K, hist, lanes, nbins);
            if (b >= 0 && (mine < 0 || b < mine)) mine = b;
        }
        first_bad[t] = mine;
    }

    int64_t bad = -1;
    for (int t = 0; t < nthreads; t++)
        if (first_bad[t] >= 0 && (bad < 0 || first_bad[t] < bad))
            bad = first_bad[t];
    if (bad >= 0) {
        if (bad_index) *bad_index = bad;
        free(partial);
        free(first_bad);
        return PM_ERR_ARG;
    }
    /* Fixed order: thread by thread, lane by lane. */
    int64_t skipped = 0;
    for (int t = 0; t < nthreads; t++)
        for (int l = 0; l < lanes; l++) {
            const int64_t *h = partial + (size_t)t * per_thread +
                               (size_t)l * (size_t)nbins;
            for (int64_t i = 0; i < R * K; i++) conf[i] += h[i];
            skipped += h[R * K];
        }
    if (n_skipped) *n_skipped += skipped;
    free(partial);
    free(first_bad);
    return PM_OK;
}
