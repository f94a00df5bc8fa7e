/*
 * crf_grid.c -- the smoothness kernel of the dense CRF, exactly, on the
 * pixel grid.
 *
 * A Gaussian of the positions alone is separable: K[i, j] = g(x_i - x_j)
 * g(y_i - y_j) with g(k) = exp(-k^2 / 2 theta^2), so D = diag(K 1) is
 * Sx(x) Sy(y) with Sx(x) = sum over the columns x' of g(x - x'), and
 * D^-1/2 K D^-1/2 = (Nx Gx Nx) (x) (Ny Gy Ny) with Nx = diag(Sx^-1/2).  The
 * message w D^-1/2 K D^-1/2 Q is a vertical then a horizontal filtering of
 * the pixel rows with per-position taps
 *     wv[y, k] = ny(y) g(k) ny(y + k),  wh[x, k] = w nx(x) g(k) nx(x + k),
 * |k| <= r, zero outside the image.  g is cut where it falls below e^-16
 * (1.1e-7 of its peak): r = floor(sqrt(32) theta).  This is the exact
 * kernel of the model (the lattice only approximates it: entries off by up
 * to 0.1 at theta = 1) and far cheaper at the widths in use: 2 (2r + 1)
 * multiply-adds per value, streaming through contiguous rows.  The cost
 * grows with theta, the lattice's falls: wider kernels use the lattice.
 *
 * Every value is computed by one thread in a fixed order; the AVX2 and
 * baseline clones do the same IEEE operations, so the messages are the
 * same bits for any thread count.
 */
#include "crf_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void pm_grid_free(grid_kernel *g)
{
    free(g->wv);
    free(g->norm);
    memset(g, 0, sizeof *g);
}

static int grid_radius(float theta)
{
    return (int)floor(sqrt(32.0) * (double)theta);
}

/* Taps of one axis of n positions: w[x, k + r] = scale nx(x) g(k) nx(x + k)
 * (0 off the axis); nrm (n) is scratch. */
static void grid_axis(float *w, double *nrm, int64_t n, int r, double theta,
                      double scale)
{
    const int taps = 2 * r + 1;
    const double c = -0.5 / (theta * theta);
    for (int64_t x = 0; x < n; x++) {
        double sum = 0.0;
        for (int k = -r; k <= r; k++)
            if (x + k >= 0 && x + k < n) sum += exp(c * k * k);
        nrm[x] = 1.0 / sqrt(sum);
    }
    for (int64_t x = 0; x < n; x++)
        for (int k = -r; k <= r; k++)
            w[x * taps + k + r] =
                x + k >= 0 && x + k < n
                    ? (float)(scale * nrm[x] * exp(c * k * k) * nrm[x + k])
                    : 0.0f;
}

/* Makes g hold the taps for an H x W image, theta and weight. */
int pm_grid_build(grid_kernel *g, int64_t H, int64_t W, float theta,
                  float weight)
{
    if (g->valid && g->H == H && g->W == W && g->theta == theta &&
        g->weight == weight)
        return PM_OK;
    g->valid = 0;
    const int r = grid_radius(theta);
    const size_t taps = (size_t)(2 * r + 1);
    if (pm_crf_reserve((void **)&g->wv, &g->sz_w,
                       (size_t)(H + W) * taps * sizeof(float)) ||
        pm_crf_reserve((void **)&g->norm, &g->sz_norm,
                       (size_t)(H > W ? H : W) * sizeof(double)))
        return PM_ERR_NOMEM;
    g->wh = g->wv + (size_t)H * taps;
    grid_axis(g->wv, g->norm, H, r, theta, 1.0);
    grid_axis(g->wh, g->norm, W, r, theta, weight);
    g->H = H;
    g->W = W;
    g->r = r;
    g->theta = theta;
    g->weight = weight;
    g->valid = 1;
    return PM_OK;
}

/* out[x] = sum_k wh[x, k] line[x + k] for the W pixels of a row; line
 * holds r zero rows before and after the W pixel rows of P lanes.  The sums
 * run in vector registers, 8 lanes at a time then 4, up to 32 lanes per
 * pass over the row, k in order. */
PM_INLINE void grid_horizontal_body(const float *line, const float *wh,
                                    int taps, float *out, int64_t W,
                                    int64_t P)
{
    for (int64_t c0 = 0; c0 < P; c0 += 32) {
        const int64_t n = P - c0 < 32 ? P - c0 : 32;
        const int64_t n8 = n / 8, n4 = (n % 8) / 4;
        for (int64_t x = 0; x < W; x++) {
            const float *w = wh + x * taps, *s = line + x * P + c0;
            pm_v8f a8[4];
            pm_v4f a4 = {0.0f};
            for (int64_t v = 0; v < n8; v++) a8[v] = w[0] * load8(s + 8 * v);
            if (n4) a4 = w[0] * load4(s + 8 * n8);
            for (int k = 1; k < taps; k++) {
                const float wk = w[k];
                const float *sk = s + k * P;
                for (int64_t v = 0; v < n8; v++) a8[v] += wk * load8(sk + 8 * v);
                if (n4) a4 += wk * load4(sk + 8 * n8);
            }
            float *o = out + x * P + c0;
            for (int64_t v = 0; v < n8; v++) store8(o + 8 * v, a8[v]);
            if (n4) store4(o + 8 * n8, a4);
        }
    }
}

/* dst[i] = sum_k w[k] src[k * stride + i] over k = 0..nk-1 (in order)
 * for the 32 values of a block, in four 8-lane registers. */
#define PM_VBLOCK 32
PM_INLINE void grid_vertical_block(const float *src, int64_t stride,
                                   const float *w, int nk, float *dst)
{
    pm_v8f a0 = w[0] * load8(src), a1 = w[0] * load8(src + 8);
    pm_v8f a2 = w[0] * load8(src + 16), a3 = w[0] * load8(src + 24);
    for (int k = 1; k < nk; k++) {
        const float wk = w[k];
        const float *sk = src + k * stride;
        a0 += wk * load8(sk);
        a1 += wk * load8(sk + 8);
        a2 += wk * load8(sk + 16);
        a3 += wk * load8(sk + 24);
    }
    store8(dst, a0);
    store8(dst + 8, a1);
    store8(dst + 16, a2);
    store8(dst + 24, a3);
}

/* The same for the last values of a row (n a multiple of 4, under 32). */
PM_INLINE void grid_vertical_tail(const float *src, int64_t stride,
                                  const float *w, int nk, float *dst,
                                  int64_t n)
{
    for (int64_t c = 0; c < n; c += 4) {
        pm_v4f a = w[0] * load4(src + c);
        for (int k = 1; k < nk; k++) a += w[k] * load4(src + k * stride + c);
        store4(dst + c, a);
    }
}

/* The smoothness message of image row y into out (W, P): the rows of q
 * within r of y weighted into line (vertical), then filtered along the row
 * (horizontal).  line: (W + 2r, P) scratch whose first and last r rows
 * are zero. */
PM_CLONES void pm_grid_message_row(const grid_kernel *g, const float *q,
                                   float *line, float *out, int64_t y,
                                   int64_t P)
{
    const int r = g->r, taps = 2 * r + 1;
    const int64_t W = g->W, n = W * P;
    const int k0 = y < r ? (int)-y : -r;
    const int k1 = g->H - 1 - y < r ? (int)(g->H - 1 - y) : r;
    const float *wv = g->wv + y * taps + k0 + r, *src = q + (y + k0) * n;
    float *s = line + (int64_t)r * P;
    int64_t i = 0;
    for (; i + PM_VBLOCK <= n; i += PM_VBLOCK)
        grid_vertical_block(src + i, n, wv, k1 - k0 + 1, s + i);
    grid_vertical_tail(src + i, n, wv, k1 - k0 + 1, s + i, n - i);
    const float *wh = g->wh;
#define PM_HORIZ(PW) grid_horizontal_body(line, wh, taps, out, W, PW)
    PM_WIDTH_SWITCH(P, PM_HORIZ)
#undef PM_HORIZ
}
