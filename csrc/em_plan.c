/*
 * em_plan.c -- the label-resolution plan (em_plan.h): interpolation tables
 * and permutes of an upsampling, its bands, the per-thread tiles, and the
 * horizontal interpolation of a band into segment blocks.
 */
#define _POSIX_C_SOURCE 200809L

#include "em_plan.h"

#include <stdlib.h>
#include <string.h>

void pm_plan_free(up_plan *p)
{
    pm_axis_table_free(&p->ty);
    pm_axis_table_free(&p->tx);
    free(p->x0);
    free(p->a0);
    free(p->boff);
    free(p->vbase);
    free(p->vidx);
    free(p->vl);
    p->x0 = p->x1 = NULL;
    p->a0 = p->a1 = p->boff = NULL;
    p->vbase = p->vidx = NULL;
    p->vl = NULL;
}

static int plan_permutes(up_plan *p, int64_t w, int64_t W)
{
    const int64_t nch = (W + 15) / 16;
    p->vec_ok = 1;
    for (int64_t c = 0; c < nch && p->vec_ok; c++) {
        const int64_t last = (c + 1) * 16 < W ? (c + 1) * 16 - 1 : W - 1;
        p->vec_ok = p->tx.i1[last] - p->tx.i0[c * 16] < 32;
    }
    if (!p->vec_ok) return PM_OK;
    p->vbase = malloc((size_t)nch * sizeof(int32_t));
    p->vidx = malloc((size_t)(32 * nch) * sizeof(int32_t));
    p->vl = malloc((size_t)(32 * nch) * sizeof(float));
    if (!p->vbase || !p->vidx || !p->vl) return PM_ERR_NOMEM;
    for (int64_t c = 0; c < nch; c++) {
        const int64_t base = p->tx.i0[c * 16];
        p->vbase[c] = (int32_t)base;
        for (int64_t j = 0; j < 16; j++) {
            const int64_t X = c * 16 + j;
            const int in = X < W; /* lanes past W: input 0, weight 0 */
            p->vidx[32 * c + j] = in ? (int32_t)(p->tx.i0[X] - base) : 0;
            p->vidx[32 * c + 16 + j] = in ? (int32_t)(p->tx.i1[X] - base) : 0;
            p->vl[32 * c + j] = in ? p->tx.l0[X] : 0.0f;
            p->vl[32 * c + 16 + j] = in ? p->tx.l1[X] : 0.0f;
        }
    }
    (void)w;
    return PM_OK;
}

static int plan_init(up_plan *p, int64_t B, int64_t K, int64_t h, int64_t w,
                     int64_t H, int64_t W)
{
    memset(p, 0, sizeof *p);
    if (B < 1 || K < 1 || K > 255 || h < 1 || w < 1 || H < 1 || W < 1 ||
        h > PM_MAX_SIDE || w > PM_MAX_SIDE || H > PM_MAX_SIDE ||
        W > PM_MAX_SIDE)
        return PM_ERR_ARG;
    int st = pm_axis_table_init(&p->ty, h, H);
    if (st != PM_OK) return st;
    st = pm_axis_table_init(&p->tx, w, W);
    if (st != PM_OK) {
        pm_axis_table_free(&p->ty);
        return st;
    }
    p->x0 = malloc((size_t)(2 * W) * sizeof(int32_t));
    p->a0 = malloc((size_t)(2 * (w + 1)) * sizeof(int64_t));
    p->boff = malloc((size_t)W * sizeof(int64_t));
    if (!p->x0 || !p->a0 || !p->boff) {
        pm_plan_free(p);
        return PM_ERR_NOMEM;
    }
    p->x1 = p->x0 + W;
    p->a1 = p->a0 + w + 1;
    for (int64_t X = 0; X < W; X++) {
        p->x0[X] = (int32_t)p->tx.i0[X];
        p->x1[X] = (int32_t)p->tx.i1[X];
    }
    /* i0 and i1 never decrease: the X of each column form a range */
    for (int64_t x = 0, X0 = 0, X1 = 0; x <= w; x++) {
        while (X0 < W && p->tx.i0[X0] < x) X0++;
        while (X1 < W && p->tx.i1[X1] < x) X1++;
        p->a0[x] = X0;
        p->a1[x] = X1;
    }
    for (int64_t X = 0; X < W; X++)
        p->boff[X] = (X / PM_SEG) * K * PM_SEG + X % PM_SEG;
    st = plan_permutes(p, w, W);
    if (st != PM_OK) {
        pm_plan_free(p);
        return st;
    }
    p->B = B;
    p->K = K;
    p->h = h;
    p->w = w;
    p->H = H;
    p->W = W;
    p->nbands = (H + PM_BAND_ROWS - 1) / PM_BAND_ROWS;
    for (int64_t j = 0; j < p->nbands; j++) {
        int64_t Y0, Y1, ylo, nr;
        band_rows(p, j, &Y0, &Y1, &ylo, &nr);
        if (nr > p->nr_max) p->nr_max = nr;
    }
    /* zh, gh: nr_max x nseg blocks of K x PM_SEG; t, e: K x PM_SEG;
     * lacc: W; 7 rows of PM_SEG; a low-resolution row with 32 spare */
    p->tile = 2 * K * p->nr_max * nseg_of(W) * PM_SEG + 2 * K * PM_SEG +
              pad16(W) + 7 * PM_SEG + pad16(w + 32) +
              2 * p->nr_max * pad16(w); /* + the argmax's class runs */
    return PM_OK;
}

/* Per-thread tile blocks for nt threads. */
static int plan_threads(pm_em_ws *ws, const up_plan *p, int *nt)
{
    int n = pm_get_num_threads();
    if (n > p->B * p->nbands) n = (int)(p->B * p->nbands);
    *nt = n;
    return pm_em_reserve(&ws->thread, (size_t)(p->tile * n) * sizeof(float));
}

/* plan_init and plan_threads; on failure nothing is left to free. */
int pm_plan_begin(pm_em_ws *ws, up_plan *p, int64_t B, int64_t K,
                      int64_t h, int64_t w, int64_t H, int64_t W, int *nt)
{
    int st = plan_init(p, B, K, h, w, H, W);
    if (st != PM_OK) return st;
    st = plan_threads(ws, p, nt);
    if (st != PM_OK) pm_plan_free(p);
    return st;
}

#if defined(__GNUC__) && !defined(__clang__)
#define PM_PERMUTES 1
typedef float pm_v16f __attribute__((vector_size(64)));
typedef int32_t pm_v16i __attribute__((vector_size(64)));
#endif

/* Horizontal interpolation of low-resolution rows ylo..ylo+nr-1 of every
 * class of one image, in torch's order (the row first), into blocks:
 * dst[X] = src[i0[X]] l0[X] + src[i1[X]] l1[X].  When upsampling, 16
 * outputs at a time take their inputs from a 32-wide window by two
 * permutes (vpermt2ps on AVX-512); the arithmetic, and so the result, is
 * the same as the scalar gathers'.  row: a scratch of w + 32 floats. */
PM_CLONES
void pm_band_hinterp(const up_plan *p, const float *Zimg, int64_t ylo,
                         int64_t nr, float *restrict zh, float *restrict row)
{
    const int64_t W = p->W, w = p->w, K = p->K, nseg = nseg_of(W);
#ifdef PM_PERMUTES
    if (p->vec_ok) {
        const int64_t nch = (W + 15) / 16;
        for (int64_t i = w; i < w + 32; i++) row[i] = 0.0f;
        for (int64_t r = 0; r < nr; r++)
            for (int64_t k = 0; k < K; k++) {
                memcpy(row, Zimg + (k * p->h + ylo + r) * w,
                       (size_t)w * sizeof(float));
                float *dstk = zh + r * nseg * K * PM_SEG + k * PM_SEG;
                for (int64_t c = 0; c < nch; c++) {
                    pm_v16f lo, hi, w0, w1;
                    pm_v16i i0, i1;
                    memcpy(&lo, row + p->vbase[c], sizeof lo);
                    memcpy(&hi, row + p->vbase[c] + 16, sizeof hi);
                    memcpy(&i0, p->vidx + 32 * c, sizeof i0);
                    memcpy(&i1, p->vidx + 32 * c + 16, sizeof i1);
                    memcpy(&w0, p->vl + 32 * c, sizeof w0);
                    memcpy(&w1, p->vl + 32 * c + 16, sizeof w1);
                    const pm_v16f d = __builtin_shuffle(lo, hi, i0) * w0 +
                                      __builtin_shuffle(lo, hi, i1) * w1;
                    const int64_t X0 = c * 16;
                    memcpy(dstk + (X0 / PM_SEG) * K * PM_SEG + X0 % PM_SEG, &d,
                           sizeof d);
                }
            }
        return;
    }
#endif
    (void)row;
    const int32_t *restrict x0 = p->x0, *restrict x1 = p->x1;
    const float *restrict l0 = p->tx.l0, *restrict l1 = p->tx.l1;
    for (int64_t r = 0; r < nr; r++)
        for (int64_t sg = 0; sg < nseg; sg++) {
            const int64_t X0 = sg * PM_SEG;
            const int64_t n = W - X0 < PM_SEG ? W - X0 : PM_SEG;
            float *restrict blk = seg_block(zh, r, sg, nseg, K);
            for (int64_t k = 0; k < K; k++) {
                const float *restrict src = Zimg + (k * p->h + ylo + r) * w;
                float *restrict dst = blk + k * PM_SEG;
                for (int64_t X = 0; X < n; X++)
                    dst[X] = src[x0[X0 + X]] * l0[X0 + X] +
                             src[x1[X0 + X]] * l1[X0 + X];
            }
        }
}

