/*
 * em.c -- PriMaPs-EM and the linear probe: weight norm, cosine K-means,
 * the focal loss with its gradient, teacher pseudo labels, the EM step,
 * the probe and prediction.  The recipe and its derivations are in
 * docs/method.md, section 1.2; the gradients are derived where they are
 * computed below.
 *
 * The pieces, composed by the estimators (pm_em_step, pm_kmeans_*,
 * pm_probe_*, pm_predict):
 *
 *   weight norm       theta = g v / ||v||                 pm_weightnorm_*
 *   logits            Z[b] = theta F[b] (+ bias)           pm_logits_*
 *                     oneDNN matmul, one image per task    (em_dnnl.c)
 *   label resolution  softmax / CE / argmax of the         pm_label_*
 *                     bilinearly upsampled Z, fused and    (em_label.c)
 *                     tiled
 *
 * Every piece is bitwise identical for any thread count, so the
 * compositions here are too.
 */
#define _POSIX_C_SOURCE 200809L

#include "em_internal.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Images per group in pm_predict (bounds the low-resolution logits). */
#define PM_PREDICT_GROUP 32

/* ======================================================================== */
/* Weight normalisation                                                     */
/* ======================================================================== */

static double row_norm(const float *v, int64_t C)
{
    double s = 0.0;
    for (int64_t c = 0; c < C; c++) s += (double)v[c] * v[c];
    return sqrt(s);
}

int pm_weightnorm_fwd(const float *v, const float *g, int64_t K, int64_t C,
                      float *theta)
{
    if (!v || !theta || K < 1 || C < 1) return PM_ERR_ARG;
    for (int64_t k = 0; k < K; k++) {
        const double n = row_norm(v + k * C, C);
        const double s = n > 0.0 ? (g ? (double)g[k] : 1.0) / n : 0.0;
        for (int64_t c = 0; c < C; c++)
            theta[k * C + c] = (float)(v[k * C + c] * s);
    }
    return PM_OK;
}

/*
 * Backward of theta_k = g_k u_k, u_k = v_k / ||v_k||, for one row
 * (the row index k is dropped):
 *   d theta / d g = u                      -> dg = <dtheta, u>
 *   d u / d v = (I - u u^T) / ||v||        (the Jacobian of v/||v||: the
 *                                           radial part of a change of v
 *                                           does not move u)
 *   -> dv = (g / ||v||) (dtheta - <dtheta, u> u).
 * A zero row of v has no direction; its gradients are set to 0.
 */
int pm_weightnorm_bwd(const float *v, const float *g, const float *dtheta,
                      int64_t K, int64_t C, float *dv, float *dg)
{
    if (!v || !dtheta || !dv || K < 1 || C < 1) return PM_ERR_ARG;
    for (int64_t k = 0; k < K; k++) {
        const float *vk = v + k * C, *dk = dtheta + k * C;
        const double n = row_norm(vk, C);
        if (!(n > 0.0)) {
            for (int64_t c = 0; c < C; c++) dv[k * C + c] = 0.0f;
            if (dg) dg[k] = 0.0f;
            continue;
        }
        double dot = 0.0;
        for (int64_t c = 0; c < C; c++) dot += (double)dk[c] * vk[c];
        dot /= n; /* <dtheta, u> */
        const double gk = g ? (double)g[k] : 1.0;
        for (int64_t c = 0; c < C; c++)
            dv[k * C + c] = (float)(gk / n * (dk[c] - dot * (vk[c] / n)));
        if (dg) dg[k] = (float)dot;
    }
    return PM_OK;
}

/* ======================================================================== */
/* Cosine K-means                                                           */
/* ======================================================================== */

/*
 * With u_k = v_k / ||v_k|| and f_p = F_p / ||F_p||, the loss is
 *   L = -(1/(B N)) sum_p max_k u_k . f_p = -(1/(B N)) sum_p Z_{k*(p) p} / ||F_p||
 * where Z = u F are the logits of the unit prototypes on the raw features
 * and k*(p) the argmax (ties: the smallest k; locally constant, so it
 * passes no gradient).  Hence d L / d Z_kp = -[k = k*(p)] / (B N ||F_p||),
 * d L / d u = (d L / d Z) F^T (pm_logits_bwd), and d L / d v follows from
 * the weight-norm backward with g = 1.  A zero feature vector has cosine 0
 * with every prototype and gives no gradient.
 */
static int kmeans(pm_em_ws *ws, const pm_batch *bt, const float *v, int64_t K,
                  double *loss, float *dv)
{
    if (!ws || !v || !loss ||
        !pm_em_batch_ok(bt, bt ? bt->features : NULL, K))
        return PM_ERR_ARG;
    const int64_t B = bt->B, C = bt->C, N = bt->h * bt->w;
    pm_batch nb = *bt;
    nb.flip = NULL; /* a mirror only reorders the per-pixel sum */
    int st = pm_em_reserve(&ws->small, (size_t)(2 * K * C) * sizeof(float));
    if (st == PM_OK)
        st = pm_em_reserve(&ws->z, (size_t)(B * K * N) * sizeof(float));
    if (st == PM_OK && dv)
        st = pm_em_reserve(&ws->dz, (size_t)(B * K * N) * sizeof(float));
    if (st == PM_OK)
        st = pm_em_reserve(&ws->part, (size_t)B * sizeof(double));
    int nt = pm_get_num_threads();
    if (nt > B) nt = (int)B;
    if (st == PM_OK)
        st = pm_em_reserve(&ws->thread, (size_t)(nt * N) * 2 * sizeof(double));
    if (st != PM_OK) return st;
    float *u = ws->small.p, *du = u + K * C;
    float *Z = ws->z.p, *dZ = dv ? (float *)ws->dz.p : NULL;
    double *part = ws->part.p;
    pm_weightnorm_fwd(v, NULL, K, C, u);
    st = pm_logits_fwd(ws, &nb, bt->features, u, NULL, K, Z);
    if (st != PM_OK) return st;
    const double scale = 1.0 / ((double)B * (double)N);
#pragma omp parallel num_threads(nt)
    {
        double *nrm = (double *)ws->thread.p + (size_t)omp_get_thread_num() * 2 * N;
        double *best = nrm + N;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < B; b++) {
            const int64_t row = bt->index ? bt->index[b] : b;
            const float *f = bt->features + row * C * N;
            const float *zb = Z + b * K * N;
            for (int64_t q = 0; q < N; q++) nrm[q] = 0.0;
            for (int64_t c = 0; c < C; c++)
                for (int64_t q = 0; q < N; q++)
                    nrm[q] += (double)f[c * N + q] * f[c * N + q];
            for (int64_t q = 0; q < N; q++) nrm[q] = sqrt(nrm[q]);
            double sum = 0.0;
            for (int64_t q = 0; q < N; q++) {
                int64_t kb = 0;
                double bv = nrm[q] > 0.0 ? zb[q] / nrm[q] : 0.0;
                for (int64_t k = 1; k < K && nrm[q] > 0.0; k++) {
                    const double cv = zb[k * N + q] / nrm[q];
                    if (cv > bv) {
                        bv = cv;
                        kb = k;
                    }
                }
                best[q] = (double)kb;
                sum += bv;
            }
            part[b] = sum;
            if (dZ) {
                float *db = dZ + b * K * N;
                for (int64_t i = 0; i < K * N; i++) db[i] = 0.0f;
                for (int64_t q = 0; q < N; q++)
                    if (nrm[q] > 0.0)
                        db[(int64_t)best[q] * N + q] = (float)(-scale / nrm[q]);
            }
        }
    }
    double total = 0.0;
    for (int64_t b = 0; b < B; b++) total += part[b];
    *loss = -total * scale;
    if (!dv) return PM_OK;
    st = pm_logits_bwd(ws, &nb, bt->features, dZ, K, du, NULL);
    if (st != PM_OK) return st;
    return pm_weightnorm_bwd(v, NULL, du, K, C, dv, NULL);
}

int pm_kmeans_fwd(pm_em_ws *ws, const pm_batch *bt, const float *v,
                  int64_t K, double *loss)
{
    return kmeans(ws, bt, v, K, loss, NULL);
}

int pm_kmeans_bwd(pm_em_ws *ws, const pm_batch *bt, const float *v,
                  int64_t K, double *loss, float *dv)
{
    if (!dv) return PM_ERR_ARG;
    return kmeans(ws, bt, v, K, loss, dv);
}

/* ======================================================================== */
/* Focal loss, pseudo labels, the EM step                                   */
/* ======================================================================== */

static int maps_ok(const pm_batch *bt)
{
    return bt->H >= 1 && bt->W >= 1;
}

/*
 * The focal loss on the student's view against labels read at rows
 * lab_index (NULL: b), mirrored where lab_flip is set.
 *   theta = weightnorm(v, g); Z = theta F (+ mirror);
 *   chi = pass 1 (Z); wt_k = (1 - chi_k)^gamma, held constant;
 *   loss = pass 2 (Z, labels, wt, 1 / (B H W)).
 * Backward: d loss / d Z from pass 2, then d theta = (d loss / d Z) F^T
 * (pm_logits_bwd) and dv, dg from the weight-norm backward.
 */
static int focal(pm_em_ws *ws, const pm_batch *bt, const uint8_t *labels,
                 const int64_t *lab_index, const uint8_t *lab_flip,
                 int64_t lab_n, const float *v, const float *g, int64_t K,
                 double gamma, double *chi, double *loss, float *dv, float *dg)
{
    const float *F = bt->student ? bt->student : bt->features;
    if (!ws || !v || !g || !chi || !loss || !labels || !maps_ok(bt) ||
        !pm_em_batch_ok(bt, F, K) || !(gamma >= 0.0))
        return PM_ERR_ARG;
    const int64_t B = bt->B, C = bt->C, h = bt->h, w = bt->w, N = h * w;
    int st = pm_em_reserve(&ws->small, (size_t)(2 * K * C + K) * sizeof(float));
    if (st == PM_OK)
        st = pm_em_reserve(&ws->z, (size_t)(B * K * N) * sizeof(float));
    if (st != PM_OK) return st;
    float *theta = ws->small.p, *dtheta = theta + K * C, *wt = dtheta + K * C;
    pm_weightnorm_fwd(v, g, K, C, theta);
    float *Z = ws->z.p;
    st = pm_logits_fwd(ws, bt, F, theta, NULL, K, Z);
    if (st != PM_OK) return st;
    st = pm_label_softmax_mean(ws, Z, B, K, h, w, bt->H, bt->W, chi);
    if (st != PM_OK) return st;
    for (int64_t k = 0; k < K; k++) {
        const double q = 1.0 - chi[k];
        wt[k] = (float)pow(q > 0.0 ? q : 0.0, gamma);
    }
    const double scale = 1.0 / ((double)B * (double)bt->H * (double)bt->W);
    if (!dv)
        return pm_em_label_ce(ws, Z, labels, lab_index, lab_flip, lab_n, wt,
                              scale, B, K, h, w, bt->H, bt->W, loss, NULL);
    /* dZ overwrites Z once pass 2 has read it: pass 2 keeps its gradient in
     * band buffers and merges them only at the end. */
    st = pm_em_label_ce(ws, Z, labels, lab_index, lab_flip, lab_n, wt, scale,
                        B, K, h, w, bt->H, bt->W, loss, Z);
    if (st != PM_OK) return st;
    st = pm_logits_bwd(ws, bt, F, Z, K, dtheta, NULL);
    if (st != PM_OK) return st;
    return pm_weightnorm_bwd(v, g, dtheta, K, C, dv, dg);
}

int pm_focal_fwd(pm_em_ws *ws, const pm_batch *bt, const float *v,
                 const float *g, int64_t K, double gamma, double *chi,
                 double *loss)
{
    if (!bt || !bt->labels) return PM_ERR_ARG;
    return focal(ws, bt, bt->labels, bt->index, bt->flip, bt->n, v, g, K,
                 gamma, chi, loss, NULL, NULL);
}

int pm_focal_bwd(pm_em_ws *ws, const pm_batch *bt, const float *v,
                 const float *g, int64_t K, double gamma, double *chi,
                 double *loss, float *dv, float *dg)
{
    if (!bt || !bt->labels || !dv || !dg) return PM_ERR_ARG;
    return focal(ws, bt, bt->labels, bt->index, bt->flip, bt->n, v, g, K,
                 gamma, chi, loss, dv, dg);
}

/* The mode of the teacher's argmax over every mask of one image; mask ids
 * lie in [0, top] (checked by the caller). */
static void pseudo_image(const pm_batch *bt, int64_t b, int64_t K,
                         const int32_t *arg, int32_t *hist, int32_t top,
                         uint8_t *out)
{
    const int64_t H = bt->H, W = bt->W;
    const int64_t row = bt->index ? bt->index[b] : b;
    const int mirror = bt->flip && bt->flip[b];
    const int32_t *mask = bt->masks + row * H * W;
    for (int64_t i = 0; i < ((int64_t)top + 1) * K; i++) hist[i] = 0;
    for (int64_t Y = 0; Y < H; Y++)
        for (int64_t X = 0; X < W; X++) {
            const int32_t id = mask[Y * W + (mirror ? W - 1 - X : X)];
            if (id > 0) hist[(int64_t)id * K + arg[Y * W + X]]++;
        }
    /* hist row i becomes the mode of mask i in its first entry */
    for (int64_t i = 1; i <= top; i++) {
        int32_t *hi = hist + i * K, kb = 0;
        for (int64_t k = 1; k < K; k++)
            if (hi[k] > hi[kb]) kb = (int32_t)k;
        hi[0] = kb;
    }
    for (int64_t Y = 0; Y < H; Y++)
        for (int64_t X = 0; X < W; X++) {
            const int32_t id = mask[Y * W + (mirror ? W - 1 - X : X)];
            out[Y * W + X] =
                id > 0 ? (uint8_t)hist[(int64_t)id * K] : (uint8_t)PM_IGNORE;
        }
}

int pm_teacher_pseudo(pm_em_ws *ws, const pm_batch *bt, const float *theta,
                      int64_t K, uint8_t *out)
{
    if (!ws || !theta || !out ||
        !pm_em_batch_ok(bt, bt ? bt->features : NULL, K) || !bt->masks ||
        !maps_ok(bt))
        return PM_ERR_ARG;
    const int64_t B = bt->B, H = bt->H, W = bt->W, N = bt->h * bt->w;
    int st = pm_em_reserve(&ws->z, (size_t)(B * K * N) * sizeof(float));
    if (st == PM_OK)
        st = pm_em_reserve(&ws->maps, (size_t)(B * H * W) * sizeof(int32_t));
    if (st != PM_OK) return st;
    float *Z = ws->z.p;
    int32_t *arg = ws->maps.p;
    st = pm_logits_fwd(ws, bt, bt->features, theta, NULL, K, Z);
    if (st == PM_OK)
        st = pm_label_argmax(ws, Z, B, K, bt->h, bt->w, H, W, arg);
    if (st != PM_OK) return st;
    int nt = pm_get_num_threads();
    if (nt > B) nt = (int)B;
    /* Histograms sized for the largest mask id of the batch. */
    int32_t top = 0, low = 0;
#pragma omp parallel for schedule(static) num_threads(nt) \
    reduction(max : top) reduction(min : low)
    for (int64_t b = 0; b < B; b++) {
        const int64_t row = bt->index ? bt->index[b] : b;
        const int32_t *m = bt->masks + row * H * W;
        for (int64_t i = 0; i < H * W; i++) {
            top = m[i] > top ? m[i] : top;
            low = m[i] < low ? m[i] : low;
        }
    }
    if (low < 0 || top > PM_MAX_MASK_ID) return PM_ERR_ARG;
    const int64_t hsize = ((int64_t)top + 1) * K;
    st = pm_em_reserve(&ws->thread, (size_t)(nt * hsize) * sizeof(int32_t));
    if (st != PM_OK) return st;
#pragma omp parallel num_threads(nt)
    {
        int32_t *hist = (int32_t *)ws->thread.p + omp_get_thread_num() * hsize;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < B; b++)
            pseudo_image(bt, b, K, arg + b * H * W, hist, top, out + b * H * W);
    }
    return PM_OK;
}

int pm_em_step(pm_em_ws *ws, const pm_batch *bt, const float *vt,
               const float *gt, const float *vs, const float *gs, int64_t K,
               double gamma, double *chi, double *loss, float *dv, float *dg,
               uint8_t *pseudo)
{
    if (!ws || !bt || !vt || !gt || !vs || !gs || !dv || !dg || !maps_ok(bt) ||
        !pm_em_batch_ok(bt, bt->features, K) || !bt->masks)
        return PM_ERR_ARG;
    const int64_t B = bt->B, C = bt->C, H = bt->H, W = bt->W;
    int st = pm_em_reserve(&ws->pseudo, (size_t)(B * H * W));
    if (st == PM_OK)
        st = pm_em_reserve(&ws->small, (size_t)(2 * K * C + K) * sizeof(float));
    if (st != PM_OK) return st;
    /* theta_T lives in ws->dpart until pm_logits_bwd needs that buffer. */
    st = pm_em_reserve(&ws->dpart, (size_t)(K * C) * sizeof(float));
    if (st != PM_OK) return st;
    float *theta_t = ws->dpart.p;
    pm_weightnorm_fwd(vt, gt, K, C, theta_t);
    uint8_t *p = ws->pseudo.p;
    st = pm_teacher_pseudo(ws, bt, theta_t, K, p);
    if (st != PM_OK) return st;
    if (pseudo) memcpy(pseudo, p, (size_t)(B * H * W));
    /* The pseudo labels are in the batch's (mirrored) frame already. */
    return focal(ws, bt, p, NULL, NULL, B, vs, gs, K, gamma, chi, loss, dv,
                 dg);
}

/* ======================================================================== */
/* Linear probe and prediction                                              */
/* ======================================================================== */

/*
 * Softmax regression with bias: Z = W F + b at feature resolution, and the
 * cross-entropy of pass 2 with unit weights and scale 1 / (B H W).
 * Backward: d loss / d Z from pass 2; dW = (d loss / d Z) F^T and
 * db_k = sum over images and pixels of (d loss / d Z)_k (pm_logits_bwd).
 */
static int probe(pm_em_ws *ws, const pm_batch *bt, const float *weight,
                 const float *bias, int64_t K, double *loss, float *dweight,
                 float *dbias)
{
    if (!ws || !weight || !bias || !loss || !bt || !bt->labels ||
        !maps_ok(bt) || !pm_em_batch_ok(bt, bt->features, K))
        return PM_ERR_ARG;
    const int64_t B = bt->B, h = bt->h, w = bt->w, N = h * w;
    int st = pm_em_reserve(&ws->z, (size_t)(B * K * N) * sizeof(float));
    if (st == PM_OK) st = pm_em_reserve(&ws->small, (size_t)K * sizeof(float));
    if (st != PM_OK) return st;
    float *Z = ws->z.p, *ones = ws->small.p;
    for (int64_t k = 0; k < K; k++) ones[k] = 1.0f;
    st = pm_logits_fwd(ws, bt, bt->features, weight, bias, K, Z);
    if (st != PM_OK) return st;
    const double scale = 1.0 / ((double)B * (double)bt->H * (double)bt->W);
    st = pm_em_label_ce(ws, Z, bt->labels, bt->index, bt->flip, bt->n, ones,
                        scale, B, K, h, w, bt->H, bt->W, loss,
                        dweight ? Z : NULL);
    if (st != PM_OK || !dweight) return st;
    return pm_logits_bwd(ws, bt, bt->features, Z, K, dweight, dbias);
}

int pm_probe_fwd(pm_em_ws *ws, const pm_batch *bt, const float *weight,
                 const float *bias, int64_t K, double *loss)
{
    return probe(ws, bt, weight, bias, K, loss, NULL, NULL);
}

int pm_probe_bwd(pm_em_ws *ws, const pm_batch *bt, const float *weight,
                 const float *bias, int64_t K, double *loss, float *dweight,
                 float *dbias)
{
    if (!dweight || !dbias) return PM_ERR_ARG;
    return probe(ws, bt, weight, bias, K, loss, dweight, dbias);
}

int pm_predict(pm_em_ws *ws, const pm_batch *bt, const float *theta,
               const float *bias, int64_t K, int32_t *out)
{
    if (!ws || !theta || !out || !maps_ok(bt) ||
        !pm_em_batch_ok(bt, bt ? bt->features : NULL, K))
        return PM_ERR_ARG;
    const int64_t N = bt->h * bt->w, HW = bt->H * bt->W;
    const int64_t G = bt->B < PM_PREDICT_GROUP ? bt->B : PM_PREDICT_GROUP;
    int st = pm_em_reserve(&ws->z, (size_t)(G * K * N) * sizeof(float));
    if (st != PM_OK) return st;
    for (int64_t s = 0; s < bt->B; s += G) {
        pm_batch sub = *bt;
        sub.B = bt->B - s < G ? bt->B - s : G;
        if (bt->index) {
            sub.index = bt->index + s;
        } else {
            sub.features += s * bt->C * N;
            sub.n -= s;
        }
        if (bt->flip) sub.flip = bt->flip + s;
        st = pm_logits_fwd(ws, &sub, sub.features, theta, bias, K, ws->z.p);
        if (st == PM_OK)
            st = pm_label_argmax(ws, ws->z.p, sub.B, K, bt->h, bt->w, bt->H,
                                 bt->W, out + s * HW);
        if (st != PM_OK) return st;
    }
    return PM_OK;
}
