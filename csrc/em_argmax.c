/*
 * em_argmax.c -- pm_label_argmax: the argmax over classes of bilinearly
 * upsampled logits at label resolution (the teacher's labels, predictions),
 * without holding the (B, K, H, W) logits: bands of output rows as in
 * em_label.c (em_plan.h), with a shortcut for pixels whose four corners
 * share a clear winner (below).  Ties go to the smallest class, as in
 * argmax(primaps.upsample_bilinear(Z, size)), whose bits it reproduces.
 */
#include "em_plan.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

/* Argmax over classes (ties: the smallest class) of a segment. */
PM_CLONES
static void seg_argmax(const float *restrict zh0, const float *restrict zh1,
                       int64_t kstride, float a, float b, int64_t K,
                       int64_t n, float *restrict best, int32_t *restrict arg)
{
    for (int64_t X = 0; X < n; X++) {
        best[X] = zh0[X] * a + zh1[X] * b;
        arg[X] = 0;
    }
    for (int64_t k = 1; k < K; k++) {
        const float *z0 = zh0 + k * kstride, *z1 = zh1 + k * kstride;
        const int32_t kk = (int32_t)k;
        for (int64_t X = 0; X < n; X++) {
            const float v = z0[X] * a + z1[X] * b;
            const int up = v > best[X];
            best[X] = up ? v : best[X];
            arg[X] = up ? kk : arg[X];
        }
    }
}

/*
 * The argmax shortcut.  An output pixel's logits are a convex combination
 * of those of its (at most) four low-resolution corners, so if class c
 * beats every other class at each corner by a margin d_i, it beats them in
 * the combination by at least min d_i.  The float arithmetic of the
 * interpolation (two two-term combinations) is off by at most about
 * 12 u M in a difference of two classes (u = 2^-24, M the corners' largest
 * |logit|), so with every d_i > PM_ARGMAX_MARGIN M (2^-18 M, 5x that
 * bound; M is taken over the whole band) the argmax computed pixel by
 * pixel is c, ties included: the shortcut fills such pixels with c and
 * gives the same bits.
 *
 * cls[r][x]: the argmax of low-resolution pixel (ylo + r, x) when its
 * margin is large enough, else -1 (all -1 if the band holds a NaN or an
 * inf); run[r][x]: the last column x' >= x with cls[r][x..x'] all equal to
 * cls[r][x] >= 0 (x - 1 when cls[r][x] = -1).
 */
#define PM_ARGMAX_MARGIN 3.814697265625e-06f /* 2^-18 */

static void band_classes(const up_plan *p, const float *Zimg, int64_t ylo,
                         int64_t nr, int32_t *cls, int32_t *run)
{
    const int64_t K = p->K, w = p->w, N = p->h * p->w, ld = pad16(w);
    /* one pass: every pixel's winner and margin (kept in run, as floats,
     * until the band's largest |logit| is known), then the test */
    float *margin = (float *)run;
    float M = 0.0f;
    int finite = 1;
    for (int64_t r = 0; r < nr; r++)
        for (int64_t x = 0; x < w; x++) {
            const float *z = Zimg + (ylo + r) * w + x;
            float best = z[0], second = -INFINITY, big = fabsf(z[0]);
            int32_t c = 0;
            for (int64_t k = 1; k < K; k++) {
                const float v = z[k * N], a = fabsf(v);
                big = a > big ? a : big;
                if (v > best) {
                    second = best;
                    best = v;
                    c = (int32_t)k;
                } else if (v > second) {
                    second = v;
                }
            }
            finite &= big <= FLT_MAX; /* NaN and inf: no shortcut */
            M = big > M ? big : M;
            cls[r * ld + x] = c;
            margin[r * ld + x] = K == 1 ? INFINITY : best - second;
        }
    const float need = finite ? PM_ARGMAX_MARGIN * M : INFINITY;
    for (int64_t r = 0; r < nr; r++) {
        int32_t *cr = cls + r * ld, *rr = run + r * ld;
        const float *mr = margin + r * ld;
        for (int64_t x = 0; x < w; x++)
            if (!(finite && mr[x] > need)) cr[x] = -1;
        for (int64_t x = w - 1; x >= 0; x--)
            rr[x] = cr[x] < 0 ? (int32_t)(x - 1)
                    : (x + 1 < w && cr[x + 1] == cr[x]) ? rr[x + 1]
                                                        : (int32_t)x;
    }
}

/* Segment sg of an output row that reads band rows r0, r1, by chunks of
 * PM_ARGMAX_CHUNK pixels (a vector's width): a chunk whose corners are all
 * clear and of one class is filled with it; runs of the other chunks go
 * to seg_argmax. */
#define PM_ARGMAX_CHUNK 16

static void seg_argmax_cells(const up_plan *p, const tile_t *tl, vrow v,
                             int64_t sg, int32_t *out)
{
    const int64_t ld = pad16(p->w), X0 = sg * PM_SEG, n = seg_len(p->W, sg);
    const int64_t nseg = nseg_of(p->W), K = p->K;
    const int32_t *i0 = p->x0 + X0, *i1 = p->x1 + X0;
    const int32_t *c0 = tl->cls + v.r0 * ld, *c1 = tl->cls + v.r1 * ld;
    const int32_t *u0 = tl->run + v.r0 * ld, *u1 = tl->run + v.r1 * ld;
    const float *zh0 = seg_block(tl->zh, v.r0, sg, nseg, K);
    const float *zh1 = seg_block(tl->zh, v.r1, sg, nseg, K);
    int64_t slow = 0; /* start of the pending run of unclear chunks */
    for (int64_t X = 0; X < n; X += PM_ARGMAX_CHUNK) {
        const int64_t E = X + PM_ARGMAX_CHUNK < n ? X + PM_ARGMAX_CHUNK : n;
        const int32_t xa = i0[X], xb = i1[E - 1], c = c0[xa];
        if (c >= 0 && u0[xa] >= xb && c1[xa] == c && u1[xa] >= xb) {
            if (slow < X)
                seg_argmax(zh0 + slow, zh1 + slow, PM_SEG, v.a, v.b, K,
                           X - slow, tl->m, out + slow);
            for (int64_t i = X; i < E; i++) out[i] = c;
            slow = E;
        }
    }
    if (slow < n)
        seg_argmax(zh0 + slow, zh1 + slow, PM_SEG, v.a, v.b, K, n - slow,
                   tl->m, out + slow);
}

int pm_label_argmax(pm_em_ws *ws, const float *Z, int64_t B, int64_t K,
                    int64_t h, int64_t w, int64_t H, int64_t W, int32_t *out)
{
    if (!ws || !Z || !out) return PM_ERR_ARG;
    up_plan p;
    int nt;
    int st = pm_plan_begin(ws, &p, B, K, h, w, H, W, &nt);
    if (st != PM_OK) return st;
    const int64_t items = B * p.nbands;
    const int64_t nseg = nseg_of(W);
#pragma omp parallel num_threads(nt)
    {
        tile_t tl = tile_carve(&p, (float *)ws->thread.p +
                                       p.tile * omp_get_thread_num());
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            const int64_t b = it / p.nbands, j = it % p.nbands;
            int64_t Y0, Y1, ylo, nr;
            band_rows(&p, j, &Y0, &Y1, &ylo, &nr);
            pm_band_hinterp(&p, Z + b * K * h * w, ylo, nr, tl.zh, tl.row);
            band_classes(&p, Z + b * K * h * w, ylo, nr, tl.cls, tl.run);
            for (int64_t Y = Y0; Y < Y1; Y++) {
                const vrow v = vrow_of(&p, Y, ylo);
                for (int64_t sg = 0; sg < nseg; sg++)
                    seg_argmax_cells(&p, &tl, v, sg,
                                     out + (b * H + Y) * W + sg * PM_SEG);
            }
        }
    }
    pm_plan_free(&p);
    return PM_OK;
}
