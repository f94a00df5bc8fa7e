/*
 * resample.c -- bilinear resampling (align_corners=False) and its transpose.
 */
#include "primaps.h"

#include <math.h>
#include <stdlib.h>

int pm_axis_table_init(pm_axis_table *t, int64_t in, int64_t out)
{
    if (!t || in < 1 || out < 1 || in > PM_MAX_SIDE || out > PM_MAX_SIDE)
        return PM_ERR_ARG;
    t->n_out = out;
    t->i0 = malloc((size_t)out * 2 * sizeof(int64_t));
    t->l0 = malloc((size_t)out * 2 * sizeof(float));
    if (!t->i0 || !t->l0) {
        free(t->i0);
        free(t->l0);
        t->i0 = NULL;
        t->l0 = NULL;
        return PM_ERR_NOMEM;
    }
    t->i1 = t->i0 + out;
    t->l1 = t->l0 + out;
    /* torch: area_pixel_compute_scale / _source_index in float (opmath). */
    const float scale = (float)in / (float)out;
    for (int64_t o = 0; o < out; o++) {
        float src = fmaf(scale, (float)o + 0.5f, -0.5f);
        if (src < 0.0f) src = 0.0f;
        int64_t i0 = (int64_t)src;
        if (i0 > in - 1) i0 = in - 1;
        float l1 = src - (float)i0;
        if (l1 < 0.0f) l1 = 0.0f;
        if (l1 > 1.0f) l1 = 1.0f;
        t->i0[o] = i0;
        t->i1[o] = i0 < in - 1 ? i0 + 1 : i0;
        t->l1[o] = l1;
        t->l0[o] = 1.0f - l1;
    }
    return PM_OK;
}

void pm_axis_table_free(pm_axis_table *t)
{
    if (!t) return;
    free(t->i0);
    free(t->l0);
    t->i0 = t->i1 = NULL;
    t->l0 = t->l1 = NULL;
}

static int check_sizes(int64_t P, int64_t h, int64_t w, int64_t H, int64_t W)
{
    return P >= 0 && h >= 1 && w >= 1 && H >= 1 && W >= 1;
}

/* One output row: a vertical blend of two horizontally interpolated rows,
 * in torch's order (t(y0) * wy0 + t(y1) * wy1). */
static void upsample_row(const float *r0, const float *r1, float a, float b,
                         const pm_axis_table *tx, float *out)
{
    const int64_t W = tx->n_out;
    for (int64_t X = 0; X < W; X++) {
        const int64_t x0 = tx->i0[X], x1 = tx->i1[X];
        const float t0 = r0[x0] * tx->l0[X] + r0[x1] * tx->l1[X];
        const float t1 = r1[x0] * tx->l0[X] + r1[x1] * tx->l1[X];
        out[X] = t0 * a + t1 * b;
    }
}

int pm_upsample_bilinear(const float *src, float *dst, int64_t P, int64_t h,
                         int64_t w, int64_t H, int64_t W)
{
    if (!check_sizes(P, h, w, H, W)) return PM_ERR_ARG;
    if (P == 0) return PM_OK;
    pm_axis_table ty, tx;
    int st = pm_axis_table_init(&ty, h, H);
    if (st != PM_OK) return st;
    st = pm_axis_table_init(&tx, w, W);
    if (st != PM_OK) {
        pm_axis_table_free(&ty);
        return st;
    }
    const int64_t rows = P * H;
#pragma omp parallel for schedule(static) num_threads(pm_get_num_threads()) \
    if (rows * W > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t p = r / H, Y = r % H;
        const float *plane = src + p * h * w;
        upsample_row(plane + ty.i0[Y] * w, plane + ty.i1[Y] * w, ty.l0[Y],
                     ty.l1[Y], &tx, dst + r * W);
    }
    pm_axis_table_free(&ty);
    pm_axis_table_free(&tx);
    return PM_OK;
}

/* Transpose of one plane: for every output row Y, its horizontal transpose
 * hrow (w values) is added to input rows y0(Y) and y1(Y) with the vertical
 * weights.  Rows are visited in order, so the sums do not depend on the
 * thread count. */
static void adjoint_plane(const float *src, float *dst, int64_t h, int64_t w,
                          const pm_axis_table *ty, const pm_axis_table *tx,
                          float *hrow)
{
    const int64_t H = ty->n_out, W = tx->n_out;
    for (int64_t i = 0; i < h * w; i++) dst[i] = 0.0f;
    for (int64_t Y = 0; Y < H; Y++) {
        const float *g = src + Y * W;
        for (int64_t x = 0; x < w; x++) hrow[x] = 0.0f;
        for (int64_t X = 0; X < W; X++) {
            hrow[tx->i0[X]] += tx->l0[X] * g[X];
            hrow[tx->i1[X]] += tx->l1[X] * g[X];
        }
        float *d0 = dst + ty->i0[Y] * w, *d1 = dst + ty->i1[Y] * w;
        const float a = ty->l0[Y], b = ty->l1[Y];
        for (int64_t x = 0; x < w; x++) d0[x] += a * hrow[x];
        for (int64_t x = 0; x < w; x++) d1[x] += b * hrow[x];
    }
}

int pm_upsample_bilinear_adjoint(const float *src, float *dst, int64_t P,
                                 int64_t h, int64_t w, int64_t H, int64_t W)
{
    if (!check_sizes(P, h, w, H, W)) return PM_ERR_ARG;
    if (P == 0) return PM_OK;
    pm_axis_table ty, tx;
    int st = pm_axis_table_init(&ty, h, H);
    if (st != PM_OK) return st;
    st = pm_axis_table_init(&tx, w, W);
    if (st != PM_OK) {
        pm_axis_table_free(&ty);
        return st;
    }
    int nomem = 0;
#pragma omp parallel num_threads(pm_get_num_threads()) if (P * H * W > 32768)
    {
        float *hrow = malloc((size_t)w * sizeof(float));
        if (!hrow) {
#pragma omp atomic write
            nomem = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < P; p++) {
            if (hrow)
                adjoint_plane(src + p * H * W, dst + p * h * w, h, w, &ty,
                              &tx, hrow);
        }
        free(hrow);
    }
    pm_axis_table_free(&ty);
    pm_axis_table_free(&tx);
    return nomem ? PM_ERR_NOMEM : PM_OK;
}
