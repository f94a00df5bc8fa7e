/*
 * em_label.c -- softmax and cross-entropy of bilinearly upsampled logits
 * at label resolution, fused and tiled: pm_label_softmax_mean (the class
 * confidences that weight the focal loss) and pm_label_ce_* (the focal and
 * probe losses' cross-entropy and its gradient).  The argmax is in
 * em_argmax.c, the plan of bands and segments both use in em_plan.c.
 *
 * The resolution trick.  The original upsamples the C-channel features to
 * the label size and applies the 1x1 convolution there.  Bilinear
 * interpolation is linear and acts on every channel alike, so it commutes
 * with the per-pixel linear map: up(theta F) = theta up(F) (and a bias
 * passes through because the interpolation weights sum to 1).  The logits
 * are therefore computed at feature resolution (K x h x w, one GEMM per
 * image, em_dnnl.c) and only those K channels are upsampled here; softmax,
 * the class confidences, the loss and every argmax are taken at label
 * resolution on the numbers the original computes, up to the order of
 * float rounding.  The gradient flows back through the transpose of the
 * interpolation to the low-resolution logits, and from there through the
 * GEMM.  Work at label resolution drops by C/K (384/27 = 14x for DINO
 * ViT-S/8 on Cityscapes), and no (B, K, H, W) tensor is ever held: the
 * fused kernels walk fixed bands of output rows.
 *
 * Softmax: hand-written, not oneDNN's softmax primitive.  The softmax over
 * K classes is one step of a chain per tile row (interpolate, max, exp, sum,
 * then either accumulate the probabilities or form the loss and gradient and
 * push it through the adjoint) whose intermediates stay in L1/L2.  oneDNN
 * 3.2's softmax, measured on this project's machine (one thread, K = 27):
 * over the classes of a (K, pixels) tile -- our layout, vectorised over
 * pixels -- it falls back to the reference implementation, ~200 ns per
 * value; on a (pixels, K) tile it is JIT-compiled but still ~2.2 ns per
 * value, a K of 27 filling its vectors badly, plus ~4 us per call, and the
 * interpolated tile would have to be written out and read back.  The fused
 * row kernels below take ~1 ns per value for interpolation, softmax and
 * accumulation together.  The exp and log are vectorisable polynomials
 * (relative error about 1e-7), and the row loops are compiled for AVX-512,
 * AVX with FMA and baseline x86-64 (target_clones) with the clone picked at
 * load time; every clone computes the same per-element operations in the
 * same order, so all give the same bits.
 *
 * Determinism.  Every image is split into bands of PM_BAND_ROWS output
 * rows, whatever the thread count; each band keeps its own partial sums and
 * gradient rows, merged in band order afterwards.  So every result is
 * bitwise identical for any number of threads.
 */
#define _POSIX_C_SOURCE 200809L

#include "em_plan.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* exp and log as vectorisable polynomials                                  */
/* ======================================================================== */

/* exp(x) for x <= 0 (softmax arguments z - max z): x = n ln2 + r with
 * |r| <= ln2/2, exp(r) by the degree-6 minimax polynomial of Cephes' expf,
 * 2^n built in the exponent field.  Below -87 the result (< 2e-38) is
 * flushed to exp(-87), which no sum of K >= 1 terms containing a 1 notices.
 * fmaf is exactly rounded wherever it runs (an FMA instruction in the
 * AVX-512 and FMA clones, libm otherwise), so every clone gives the same
 * bits. */
static inline float pm_exp_neg(float x)
{
    x = x > -87.0f ? x : -87.0f;
    /* Round x / ln2 to the nearest integer: adding 1.5 * 2^23 leaves no
     * fraction bits; exact because |x / ln2| < 2^22. */
    float n = fmaf(x, 1.44269504088896341f, 12582912.0f);
    n -= 12582912.0f;
    float r = fmaf(n, -0.693359375f, x); /* ln2 in two parts */
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

/* log(x) for a positive normal float (softmax denominators, in [1, K]):
 * x = m 2^k with m in [sqrt(1/2), sqrt(2)), f = m - 1, s = f / (2 + f),
 * log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), R the fdlibm/musl logf
 * minimax polynomial. */
static inline float pm_log_pos(float x)
{
    int32_t ix;
    memcpy(&ix, &x, sizeof ix);
    ix += 0x3f800000 - 0x3f3504f3;
    const float k = (float)((ix >> 23) - 0x7f);
    ix = (ix & 0x007fffff) + 0x3f3504f3;
    float m;
    memcpy(&m, &ix, sizeof m);
    const float f = m - 1.0f;
    const float s = f / (2.0f + f);
    const float z = s * s, w = z * z;
    const float t1 = w * (0.40000972152f + w * 0.24279078841f);
    const float t2 = z * (0.66666662693f + w * 0.28498786688f);
    const float hfsq = 0.5f * f * f;
    return s * (hfsq + t2 + t1) + k * 9.0580006145e-06f - hfsq + f +
           k * 6.9313812256e-01f;
}

/* ======================================================================== */
/* Softmax, cross-entropy: the row kernels and the passes                   */
/* ======================================================================== */

/* The row kernels below work on a segment of n <= PM_SEG pixels of one
 * output row, so that the K x PM_SEG tiles t and e stay in L1.  zh0 and zh1
 * are the segment's blocks of low-resolution rows r0 and r1 (class k is
 * kstride = PM_SEG floats further). */

/* t[k][X] = zh0[k][X] a + zh1[k][X] b (the numbers of pm_upsample_bilinear),
 * m = max_k t, e[k] = exp(t[k] - m), s = sum_k e, inv = 1 / s. */
PM_CLONES
static void seg_softmax(const float *restrict zh0, const float *restrict zh1,
                        int64_t kstride, float a, float b, int64_t K,
                        int64_t n, float *restrict t, float *restrict e,
                        float *restrict m, float *restrict s,
                        float *restrict inv)
{
    for (int64_t X = 0; X < n; X++) {
        const float v = zh0[X] * a + zh1[X] * b;
        t[X] = v;
        m[X] = v;
    }
    for (int64_t k = 1; k < K; k++) {
        const float *z0 = zh0 + k * kstride, *z1 = zh1 + k * kstride;
        float *tk = t + k * PM_SEG;
        for (int64_t X = 0; X < n; X++) {
            const float v = z0[X] * a + z1[X] * b;
            tk[X] = v;
            m[X] = v > m[X] ? v : m[X];
        }
    }
    for (int64_t X = 0; X < n; X++) s[X] = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        const float *tk = t + k * PM_SEG;
        float *ek = e + k * PM_SEG;
        for (int64_t X = 0; X < n; X++) {
            const float v = pm_exp_neg(tk[X] - m[X]);
            ek[X] = v;
            s[X] += v;
        }
    }
    for (int64_t X = 0; X < n; X++) inv[X] = 1.0f / s[X];
}

/* Pass 1: acc[k][X] += e[k][X] / s[X] (acc: a block of K x PM_SEG). */
PM_CLONES
static void seg_prob_acc(const float *restrict e, const float *restrict inv,
                         int64_t K, int64_t n, float *restrict acc)
{
    for (int64_t k = 0; k < K; k++)
        for (int64_t X = 0; X < n; X++)
            acc[k * PM_SEG + X] += e[k * PM_SEG + X] * inv[X];
}

/* Pass 2, the loss.  c[X] = wt[y_X] (0 where ignored), zt[X] = t[y_X][X]:
 *   lacc[X] += c (log s - (zt - m))            (= c * -log softmax[y]) */
PM_CLONES
static void seg_loss(const float *restrict s, const float *restrict m,
                     const float *restrict c, const float *restrict zt,
                     int64_t n, float *restrict lacc)
{
    for (int64_t X = 0; X < n; X++)
        lacc[X] += c[X] * (pm_log_pos(s[X]) - (zt[X] - m[X]));
}

/* Pass 2, the gradient of a segment, pushed through the vertical adjoint:
 *   g[k][X] = cs[X] (e[k][X] inv[X] - [k == lt[X]])   (d loss / d t[k][X])
 *   gh0[k][X] += a g[k][X];  gh1[k][X] += b g[k][X]
 * cs = scale * c; lt = -1 where ignored.  gh0, gh1: the blocks of the
 * output row's low-resolution rows r0 and r1, or gh1 NULL when r0 = r1
 * (then gh0 receives both terms, in the same order). */
PM_CLONES
static void seg_grad(const float *restrict e, const float *restrict inv,
                     const float *restrict cs, const int32_t *restrict lt,
                     float a, float b, int64_t K, int64_t n,
                     float *restrict gh0, float *restrict gh1)
{
    for (int64_t k = 0; k < K; k++) {
        const float *ek = e + k * PM_SEG;
        float *g0 = gh0 + k * PM_SEG;
        const int32_t kk = (int32_t)k;
        if (gh1) {
            float *g1 = gh1 + k * PM_SEG;
            for (int64_t X = 0; X < n; X++) {
                const float onehot = lt[X] == kk ? 1.0f : 0.0f;
                const float g = cs[X] * (ek[X] * inv[X] - onehot);
                g0[X] += a * g;
                g1[X] += b * g;
            }
        } else {
            for (int64_t X = 0; X < n; X++) {
                const float onehot = lt[X] == kk ? 1.0f : 0.0f;
                const float g = cs[X] * (ek[X] * inv[X] - onehot);
                g0[X] += a * g;
                g0[X] += b * g;
            }
        }
    }
}

/* Horizontal adjoint of a band's gradient blocks: gh (blocks of nr rows)
 * -> out (K x nr x w), out overwritten.  Column x gathers its share,
 *   out[x] = sum_{X: i0[X] = x} l0[X] g[X] + sum_{X: i1[X] = x} l1[X] g[X],
 * over the contiguous ranges of X the monotone tables give, for all classes
 * at once (acc: K floats); a scatter out[i0[X]] += ... would chain every
 * update to the previous one. */
static void band_hadjoint(const up_plan *p, const float *gh, int64_t nr,
                          float *restrict acc, float *out)
{
    const int64_t w = p->w, K = p->K, nseg = nseg_of(p->W);
    const float *l0 = p->tx.l0, *l1 = p->tx.l1;
    for (int64_t r = 0; r < nr; r++) {
        const float *row = gh + r * nseg * K * PM_SEG;
        for (int64_t x = 0; x < w; x++) {
            for (int64_t k = 0; k < K; k++) acc[k] = 0.0f;
            for (int64_t X = p->a0[x]; X < p->a0[x + 1]; X++) {
                const float *src = row + p->boff[X];
                const float c = l0[X];
                for (int64_t k = 0; k < K; k++) acc[k] += c * src[k * PM_SEG];
            }
            for (int64_t X = p->a1[x]; X < p->a1[x + 1]; X++) {
                const float *src = row + p->boff[X];
                const float c = l1[X];
                for (int64_t k = 0; k < K; k++) acc[k] += c * src[k * PM_SEG];
            }
            for (int64_t k = 0; k < K; k++) out[(k * nr + r) * w + x] = acc[k];
        }
    }
}

int pm_label_softmax_mean(pm_em_ws *ws, const float *Z, int64_t B, int64_t K,
                          int64_t h, int64_t w, int64_t H, int64_t W,
                          double *chi)
{
    if (!ws || !Z || !chi) return PM_ERR_ARG;
    up_plan p;
    int nt;
    int st = pm_plan_begin(ws, &p, B, K, h, w, H, W, &nt);
    if (st != PM_OK) return st;
    const int64_t items = B * p.nbands;
    st = pm_em_reserve(&ws->part, (size_t)(items * K) * sizeof(double));
    if (st != PM_OK) {
        pm_plan_free(&p);
        return st;
    }
    double *part = ws->part.p;
    const int64_t nseg = nseg_of(W);
#pragma omp parallel num_threads(nt)
    {
        tile_t tl = tile_carve(&p, (float *)ws->thread.p +
                                       p.tile * omp_get_thread_num());
        float *acc = tl.gh; /* nseg blocks of K x PM_SEG */
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            const int64_t b = it / p.nbands, j = it % p.nbands;
            int64_t Y0, Y1, ylo, nr;
            band_rows(&p, j, &Y0, &Y1, &ylo, &nr);
            pm_band_hinterp(&p, Z + b * K * h * w, ylo, nr, tl.zh, tl.row);
            for (int64_t i = 0; i < nseg * K * PM_SEG; i++) acc[i] = 0.0f;
            for (int64_t Y = Y0; Y < Y1; Y++) {
                const vrow v = vrow_of(&p, Y, ylo);
                for (int64_t sg = 0; sg < nseg; sg++) {
                    const int64_t n = seg_len(W, sg);
                    seg_softmax(seg_block(tl.zh, v.r0, sg, nseg, K),
                                seg_block(tl.zh, v.r1, sg, nseg, K), PM_SEG,
                                v.a, v.b, K, n, tl.t, tl.e, tl.m, tl.s, tl.inv);
                    seg_prob_acc(tl.e, tl.inv, K, n,
                                 acc + sg * K * PM_SEG);
                }
            }
            for (int64_t k = 0; k < K; k++) {
                double sk = 0.0;
                for (int64_t sg = 0; sg < nseg; sg++) {
                    const float *a = acc + (sg * K + k) * PM_SEG;
                    for (int64_t X = 0; X < seg_len(W, sg); X++) sk += a[X];
                }
                part[it * K + k] = sk;
            }
        }
    }
    const double inv_n = 1.0 / ((double)B * (double)H * (double)W);
    for (int64_t k = 0; k < K; k++) {
        double sk = 0.0;
        for (int64_t it = 0; it < items; it++) sk += part[it * K + k];
        chi[k] = sk * inv_n;
    }
    pm_plan_free(&p);
    return PM_OK;
}

/* Adds the bands' gradient rows into dZ (B, K, h, w), band by band in
 * order; one task per (image, class) plane. */
static void merge_bands(const up_plan *p, const float *bands, int64_t stride,
                        float *dZ)
{
    const int64_t h = p->h, w = p->w, K = p->K;
#pragma omp parallel for schedule(static) num_threads(pm_get_num_threads())
    for (int64_t bk = 0; bk < p->B * K; bk++) {
        const int64_t b = bk / K, k = bk % K;
        float *dst = dZ + bk * h * w;
        for (int64_t i = 0; i < h * w; i++) dst[i] = 0.0f;
        for (int64_t j = 0; j < p->nbands; j++) {
            int64_t Y0, Y1, ylo, nr;
            band_rows(p, j, &Y0, &Y1, &ylo, &nr);
            const float *src = bands + (b * p->nbands + j) * stride + k * nr * w;
            float *d = dst + ylo * w;
            for (int64_t i = 0; i < nr * w; i++) d[i] += src[i];
        }
    }
}

static int all_ignored(const uint8_t *lab, int64_t n)
{
    int all = 1;
    for (int64_t X = 0; X < n; X++) all &= lab[X] == PM_IGNORE;
    return all;
}

/* The labels of one row segment: c, cs, zt, lt as seg_loss and seg_grad
 * want them.  Returns nonzero if a label is neither a class nor PM_IGNORE. */
static int seg_labels(const uint8_t *lab, int mirror, int64_t W, int64_t X0,
                      int64_t n, int64_t K, const float *wt, float scale,
                      const float *restrict t, const float *restrict m,
                      float *restrict c, float *restrict cs,
                      float *restrict zt, int32_t *restrict lt)
{
    const uint8_t *l = lab + (mirror ? W - X0 - n : X0);
    const int32_t step = mirror ? -1 : 1;
    const int64_t first = mirror ? n - 1 : 0;
    int bad = 0;
    for (int64_t X = 0; X < n; X++) {
        const int32_t y = l[first + step * X];
        const int ok = y < K;
        bad |= !ok & (y != PM_IGNORE);
        const int32_t yy = ok ? y : 0; /* loads below stay in bounds */
        const float wv = wt[yy], tv = t[yy * PM_SEG + X];
        const float cv = ok ? wv : 0.0f;
        c[X] = cv;
        cs[X] = scale * cv;
        zt[X] = ok ? tv : m[X];
        lt[X] = ok ? yy : -1;
    }
    return bad;
}

/*
 * Pass 2: the weighted cross-entropy at label resolution and, with dZ, its
 * gradient with respect to the low-resolution logits.
 *
 * Per pixel p with label y != 255 and weight c = wt[y] (a constant: for
 * the focal loss wt = (1 - chi)^gamma, chi held fixed), and t = A Z the
 * upsampled logits (A = Ay (x) Ax, the bilinear operator):
 *   l_p = -c log softmax(t_p)[y] = c (log sum_k exp t_kp - t_yp)
 *   d l_p / d t_kp = c (softmax(t_p)_k - [k == y])
 * summed with the factor `scale`.  The chain rule through t = A Z gives
 *   d loss / d Z = A^T (d loss / d t),
 * applied as the transpose of each interpolation step in reverse order:
 * vertically, output row Y adds l0[Y] g and l1[Y] g to the band's rows
 * i0[Y] and i1[Y] (kept at output width), then horizontally, each band row
 * adds l0[X] g[X] and l1[X] g[X] to columns i0[X] and i1[X].  Ignored
 * pixels have c = 0 and contribute nothing.
 */
int pm_em_label_ce(pm_em_ws *ws, const float *Z, const uint8_t *labels,
                   const int64_t *index, const uint8_t *flip, int64_t n,
                   const float *wt, double scale, int64_t B, int64_t K,
                   int64_t h, int64_t w, int64_t H, int64_t W, double *loss,
                   float *dZ)
{
    if (!ws || !Z || !labels || !wt || !loss || n < 1) return PM_ERR_ARG;
    if (!index && B > n) return PM_ERR_ARG;
    if (index)
        for (int64_t b = 0; b < B; b++)
            if (index[b] < 0 || index[b] >= n) return PM_ERR_ARG;
    up_plan p;
    int nt;
    int st = pm_plan_begin(ws, &p, B, K, h, w, H, W, &nt);
    if (st != PM_OK) return st;
    const int64_t items = B * p.nbands;
    const int64_t bstride = pad16(K * p.nr_max * w);
    st = pm_em_reserve(&ws->part, (size_t)items * sizeof(double));
    if (st == PM_OK && dZ)
        st = pm_em_reserve(&ws->dz, (size_t)(items * bstride) * sizeof(float));
    if (st != PM_OK) {
        pm_plan_free(&p);
        return st;
    }
    double *part = ws->part.p;
    float *bands = dZ ? (float *)ws->dz.p : NULL;
    const float fscale = (float)scale;
    const int64_t nseg = nseg_of(W);
    int badlabel = 0;
#pragma omp parallel num_threads(nt) reduction(| : badlabel)
    {
        tile_t tl = tile_carve(&p, (float *)ws->thread.p +
                                       p.tile * omp_get_thread_num());
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            const int64_t b = it / p.nbands, j = it % p.nbands;
            const int64_t row = index ? index[b] : b;
            const int mirror = flip && flip[b];
            int64_t Y0, Y1, ylo, nr;
            band_rows(&p, j, &Y0, &Y1, &ylo, &nr);
            pm_band_hinterp(&p, Z + b * K * h * w, ylo, nr, tl.zh, tl.row);
            if (dZ)
                for (int64_t i = 0; i < nr * nseg * K * PM_SEG; i++)
                    tl.gh[i] = 0.0f;
            for (int64_t X = 0; X < W; X++) tl.lacc[X] = 0.0f;
            for (int64_t Y = Y0; Y < Y1; Y++) {
                const vrow v = vrow_of(&p, Y, ylo);
                const uint8_t *lab = labels + (row * H + Y) * W;
                for (int64_t sg = 0; sg < nseg; sg++) {
                    const int64_t X0 = sg * PM_SEG, ns = seg_len(W, sg);
                    /* ignored pixels carry no loss and no gradient */
                    if (all_ignored(lab + (mirror ? W - X0 - ns : X0), ns))
                        continue;
                    seg_softmax(seg_block(tl.zh, v.r0, sg, nseg, K),
                                seg_block(tl.zh, v.r1, sg, nseg, K), PM_SEG,
                                v.a, v.b, K, ns, tl.t, tl.e, tl.m, tl.s, tl.inv);
                    badlabel |=
                        seg_labels(lab, mirror, W, X0, ns, K, wt, fscale, tl.t,
                                   tl.m, tl.c, tl.cs, tl.zt, tl.lt);
                    seg_loss(tl.s, tl.m, tl.c, tl.zt, ns, tl.lacc + X0);
                    if (dZ)
                        seg_grad(tl.e, tl.inv, tl.cs, tl.lt, v.a, v.b, K, ns,
                                 seg_block(tl.gh, v.r0, sg, nseg, K),
                                 v.r1 == v.r0
                                     ? NULL
                                     : seg_block(tl.gh, v.r1, sg, nseg, K));
                }
            }
            double lsum = 0.0;
            for (int64_t X = 0; X < W; X++) lsum += tl.lacc[X];
            part[it] = lsum;
            if (dZ) band_hadjoint(&p, tl.gh, nr, tl.t, bands + it * bstride);
        }
    }
    if (badlabel) {
        pm_plan_free(&p);
        return PM_ERR_ARG;
    }
    double total = 0.0;
    for (int64_t it = 0; it < items; it++) total += part[it];
    *loss = total * scale;
    if (dZ) merge_bands(&p, bands, bstride, dZ);
    pm_plan_free(&p);
    return PM_OK;
}

int pm_label_ce_fwd(pm_em_ws *ws, const float *Z, const uint8_t *labels,
                    const int64_t *index, const uint8_t *flip, int64_t n,
                    const float *wt, double scale, int64_t B, int64_t K,
                    int64_t h, int64_t w, int64_t H, int64_t W, double *loss)
{
    return pm_em_label_ce(ws, Z, labels, index, flip, n, wt, scale, B, K, h,
                          w, H, W, loss, NULL);
}

int pm_label_ce_bwd(pm_em_ws *ws, const float *Z, const uint8_t *labels,
                    const int64_t *index, const uint8_t *flip, int64_t n,
                    const float *wt, double scale, int64_t B, int64_t K,
                    int64_t h, int64_t w, int64_t H, int64_t W, double *loss,
                    float *dZ)
{
    if (!dZ) return PM_ERR_ARG;
    return pm_em_label_ce(ws, Z, labels, index, flip, n, wt, scale, B, K, h,
                          w, H, W, loss, dZ);
}

