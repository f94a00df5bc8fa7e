/*
 * masks.c -- PriMaPs principal mask proposals (docs/method.md section 1.1).
 *
 * One image at a time, one image per thread of the package's pool; BLAS is
 * single-threaded inside.  Per image:
 *
 *   prepare     F^ (unit pixel vectors, for the similarities) and X (raw
 *               features scaled by a power of two and centred on the image
 *               mean; the covariance sees neither change, and float32
 *               products cannot overflow), both (C, N) channel-major like
 *               the input, so that they are written with contiguous,
 *               vectorised loops and U's pixels are a prefix [0, n) of the
 *               columns;
 *   covariance  A_U = S_U - t_U t_U^T / |U| with S_U = sum_{p in U} x_p x_p^T
 *               and t_U = sum_{p in U} x_p, held in double.  S is computed
 *               once (SSYRK) and down-dated as pixels leave U: rank-1 DSYR
 *               steps for a few pixels, an SSYRK of the removed rows for
 *               many, a fresh SSYRK of the remaining rows when fewer remain
 *               than leave.  The running sum is double so that ~1500 small
 *               down-dates do not cancel into float32 noise (a float64 covariance);
 *   direction   the leading eigenvector of A_U by Lanczos iteration (below),
 *               warm-started from the previous direction;
 *   mask        s = F^_U v (sign rule, first-index argmax), m = F^_U u,
 *               threshold, removal from U by moving columns from the tail
 *               into the holes (O(removed * C), not a rescan); pixel
 *               indices travel with the columns so that ties still go to
 *               the first pixel index;
 *   post        median filter, gain, background, argmax (or the fused
 *               bilinear upsampling and argmax), renumbering.
 *
 * Masks are disjoint before the median filter, and a median over a window
 * is nonzero only where more than half of the window belongs to the mask
 * (values are >= 0), so after filtering each pixel belongs to at most one
 * mask.  The whole stack M (n x h x w) is therefore held as an owner and a
 * value per pixel, whatever n is (n reaches 0.95 * N on very noisy input).
 */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */

#include "primaps.h"
#include "pm_blas.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Lanczos: Krylov dimension per restart, restarts, and the tolerance. */
#define PM_LANCZOS_DIM 64
#define PM_LANCZOS_RESTARTS 4
#define PM_LANCZOS_TOL 1e-9
/* Down-dates of at most this many pixels are rank-1 DSYR steps. */
#define PM_DSYR_MAX 4
#define PM_MEDIAN_MAX 63

void pm_masks_params_default(pm_masks_params *p)
{
    p->threshold = 0.4;
    p->stop_fraction = 0.95;
    p->gain = 10.0;
    p->median_size = 3;
    p->max_masks = 0;
}

int pm_masks_check_params(const pm_masks_params *p)
{
    if (!p) return PM_ERR_ARG;
    if (!(p->threshold > 0.0 && p->threshold < 1.0)) return PM_ERR_ARG;
    if (!(p->stop_fraction > 0.0 && p->stop_fraction <= 1.0))
        return PM_ERR_ARG;
    if (!(p->gain > 0.0) || !isfinite(p->gain)) return PM_ERR_ARG;
    if (p->median_size < 1 || p->median_size % 2 == 0 ||
        p->median_size > PM_MEDIAN_MAX)
        return PM_ERR_ARG;
    if (p->max_masks < 0) return PM_ERR_ARG;
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* Workspace of one thread                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    int64_t C, N, m;    /* channels, pixels, Krylov dimension */
    float *Fn, *X;      /* (C, N): unit and centred features, U = [0, n) */
    int64_t *mv;        /* (2N,) column moves of a removal */
    float *T;           /* (C, C) float32 SSYRK result */
    float *s, *sim, *vf;/* (N,), (N,), (C,) */
    int64_t *idx;       /* (N,) pixel index of each row of U */
    double *S, *t, *v;  /* (C, C) lower, (C,), (C,) */
    double *Q, *w, *h;  /* (m+1, C) Krylov basis, (C,), (m+1,) */
    double *al, *be, *tri, *y, *ev, *work; /* Lanczos tridiagonal, dstevr */
    blasint *iwork, *isuppz;
    double *rowd;       /* (C,) */
    double *colsum, *sumsq; /* (C,), (N,) */
    int32_t *own0, *own;/* (N,) mask of each pixel before / after median */
    float *val0, *val, *bg, *win; /* (N,), (N,), (N,), (median window) */
    int32_t *wown;
} ws_t;

static void *amalloc(size_t bytes)
{
    /* 64-byte alignment for every buffer: BLAS kernels then see the same
     * alignment in every thread, whatever malloc would have returned. */
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) == 0 ? p : NULL;
}

static void ws_free(ws_t *ws)
{
    void *bufs[] = {ws->Fn,  ws->X,     ws->mv,      ws->T,   ws->s,
                    ws->sim, ws->vf,    ws->idx,    ws->S,   ws->t,
                    ws->v,   ws->Q,     ws->w,      ws->h,   ws->al,
                    ws->be,  ws->tri,   ws->y,      ws->ev,  ws->work,
                    ws->iwork, ws->isuppz, ws->rowd, ws->colsum, ws->sumsq,
                    ws->own0, ws->own,  ws->val0,   ws->val, ws->bg,
                    ws->win, ws->wown};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    memset(ws, 0, sizeof *ws);
}

static int ws_init(ws_t *ws, int64_t C, int64_t N, int median_size)
{
    memset(ws, 0, sizeof *ws);
    const size_t c = (size_t)C, n = (size_t)N;
    const int64_t m = C < PM_LANCZOS_DIM ? C : PM_LANCZOS_DIM;
    const size_t mm = (size_t)m, K2 = (size_t)median_size * median_size;
    ws->C = C;
    ws->N = N;
    ws->m = m;
    ws->Fn = amalloc(n * c * sizeof(float));
    ws->X = amalloc(n * c * sizeof(float));
    ws->mv = amalloc(2 * n * sizeof(int64_t));
    ws->T = amalloc(c * c * sizeof(float));
    ws->s = amalloc(n * sizeof(float));
    ws->sim = amalloc(n * sizeof(float));
    ws->vf = amalloc(c * sizeof(float));
    ws->idx = amalloc(n * sizeof(int64_t));
    ws->S = amalloc(c * c * sizeof(double));
    ws->t = amalloc(c * sizeof(double));
    ws->v = amalloc(c * sizeof(double));
    ws->Q = amalloc((mm + 1) * c * sizeof(double));
    ws->w = amalloc(c * sizeof(double));
    ws->h = amalloc((mm + 1) * sizeof(double));
    ws->al = amalloc(mm * sizeof(double));
    ws->be = amalloc(mm * sizeof(double));
    ws->tri = amalloc(2 * mm * sizeof(double));
    ws->y = amalloc(mm * sizeof(double));
    ws->ev = amalloc(mm * sizeof(double));
    ws->work = amalloc(26 * mm * sizeof(double));
    ws->iwork = amalloc(10 * mm * sizeof(blasint));
    ws->isuppz = amalloc(2 * mm * sizeof(blasint));
    ws->rowd = amalloc(c * sizeof(double));
    ws->colsum = amalloc(c * sizeof(double));
    ws->sumsq = amalloc(n * sizeof(double));
    ws->own0 = amalloc(n * sizeof(int32_t));
    ws->own = amalloc(n * sizeof(int32_t));
    ws->val0 = amalloc(n * sizeof(float));
    ws->val = amalloc(n * sizeof(float));
    ws->bg = amalloc(n * sizeof(float));
    ws->win = amalloc(K2 * sizeof(float));
    ws->wown = amalloc(K2 * sizeof(int32_t));
    if (!ws->Fn || !ws->X || !ws->mv || !ws->T || !ws->s || !ws->sim ||
        !ws->vf || !ws->idx || !ws->S || !ws->t || !ws->v || !ws->Q ||
        !ws->w || !ws->h || !ws->al || !ws->be || !ws->tri || !ws->y ||
        !ws->ev || !ws->work || !ws->iwork || !ws->isuppz || !ws->rowd ||
        !ws->colsum || !ws->sumsq || !ws->own0 || !ws->own || !ws->val0 ||
        !ws->val || !ws->bg || !ws->win || !ws->wown) {
        ws_free(ws);
        return PM_ERR_NOMEM;
    }
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* Preparation: pixel-major unit rows and centred raw rows                  */
/* ------------------------------------------------------------------------ */

/* F: (C, N) channel-first features of one image. */
static int prepare(ws_t *ws, const float *restrict F)
{
    const int64_t C = ws->C, N = ws->N;
    double *restrict sumsq = ws->sumsq, *restrict colsum = ws->colsum;
    for (int64_t p = 0; p < N; p++) sumsq[p] = 0.0;
    for (int64_t c = 0; c < C; c++) {
        const float *restrict row = F + c * N;
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t p = 0;
        for (; p + 8 <= N; p += 8)
            for (int l = 0; l < 8; l++) {
                const double x = row[p + l];
                sumsq[p + l] += x * x;
                acc[l] += x;
            }
        for (; p < N; p++) {
            const double x = row[p];
            sumsq[p] += x * x;
            acc[0] += x;
        }
        colsum[c] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                    ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
    /* A float squared is finite in double: a non-finite sum means a NaN or
     * an inf in the input. */
    double maxsq = 0.0;
    for (int64_t p = 0; p < N; p++) {
        if (!isfinite(sumsq[p])) return PM_ERR_NONFINITE;
        if (sumsq[p] > maxsq) maxsq = sumsq[p];
    }
    /* X = F * 2^-e - mean with the largest pixel norm * 2^-e in [0.5, 1):
     * the scaling is exact, and products of X and their sums stay far from
     * float32's range whatever the input's magnitude. */
    int e = 0;
    if (maxsq > 0.0) frexp(sqrt(maxsq), &e);
    const double scale = ldexp(1.0, -e);
    double *restrict inv = sumsq, *restrict mean = colsum;
    for (int64_t p = 0; p < N; p++)
        inv[p] = sumsq[p] > 0.0 ? 1.0 / sqrt(sumsq[p]) : 0.0;
    for (int64_t c = 0; c < C; c++) mean[c] = colsum[c] / (double)N * scale;
    /* In double: 1 / ||F_p|| and 2^-e leave float32's range for tiny or
     * subnormal features. */
    for (int64_t c = 0; c < C; c++) {
        const float *restrict row = F + c * N;
        float *restrict fn = ws->Fn + c * N, *restrict x = ws->X + c * N;
        const double mc = mean[c];
        for (int64_t p = 0; p < N; p++) {
            const double f = row[p];
            fn[p] = (float)(f * inv[p]);
            x[p] = (float)(f * scale - mc);
        }
    }
    for (int64_t p = 0; p < N; p++) ws->idx[p] = p;
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* Covariance of U                                                          */
/* ------------------------------------------------------------------------ */

/* The sum over pixels p0 <= p < p0 + n of x_p: t (C,). */
static void column_sum(const ws_t *ws, int64_t p0, int64_t n, double *t)
{
    const int64_t N = ws->N;
    for (int64_t c = 0; c < ws->C; c++) {
        const float *restrict x = ws->X + c * N + p0;
        double acc[4] = {0, 0, 0, 0};
        int64_t p = 0;
        for (; p + 4 <= n; p += 4)
            for (int l = 0; l < 4; l++) acc[l] += x[p + l];
        for (; p < n; p++) acc[0] += x[p];
        t[c] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

/* S = sum of x x^T over the pixels [0, n) (lower triangle), t = sum of x. */
static void cov_from_rows(ws_t *ws, int64_t n)
{
    const int64_t C = ws->C;
    pm_cblas_ssyrk(CblasColMajor, CblasLower, CblasTrans, (blasint)C,
                   (blasint)n, 1.0f, ws->X, (blasint)ws->N, 0.0f, ws->T,
                   (blasint)C);
    double *restrict S = ws->S;
    const float *restrict T = ws->T;
    for (int64_t j = 0; j < C; j++)
        for (int64_t i = j; i < C; i++) S[j * C + i] = T[j * C + i];
    column_sum(ws, 0, n, ws->t);
}

/* S -= sum of x x^T over the k removed pixels [p0, p0 + k); t -= their
 * sum. */
static void cov_downdate(ws_t *ws, int64_t p0, int64_t k)
{
    const int64_t C = ws->C, N = ws->N;
    double *restrict S = ws->S, *restrict t = ws->t;
    const float *restrict T = ws->T;
    if (k <= PM_DSYR_MAX) {
        for (int64_t r = p0; r < p0 + k; r++) {
            for (int64_t c = 0; c < C; c++) ws->rowd[c] = ws->X[c * N + r];
            pm_cblas_dsyr(CblasColMajor, CblasLower, (blasint)C, -1.0,
                          ws->rowd, 1, S, (blasint)C);
        }
    } else {
        pm_cblas_ssyrk(CblasColMajor, CblasLower, CblasTrans, (blasint)C,
                       (blasint)k, 1.0f, ws->X + p0, (blasint)N, 0.0f, ws->T,
                       (blasint)C);
        for (int64_t j = 0; j < C; j++)
            for (int64_t i = j; i < C; i++) S[j * C + i] -= T[j * C + i];
    }
    column_sum(ws, p0, k, ws->rowd);
    for (int64_t c = 0; c < C; c++) t[c] -= ws->rowd[c];
}

/* y = A_U x = S x - t (t . x) / n. */
static void cov_apply(ws_t *ws, int64_t n, const double *x, double *y)
{
    const int64_t C = ws->C;
    pm_cblas_dsymv(CblasColMajor, CblasLower, (blasint)C, 1.0, ws->S,
                   (blasint)C, x, 1, 0.0, y, 1);
    const double tx = pm_cblas_ddot((blasint)C, ws->t, 1, x, 1) / (double)n;
    for (int64_t c = 0; c < C; c++) y[c] -= ws->t[c] * tx;
}

/* ------------------------------------------------------------------------ */
/* Leading eigenvector                                                      */
/* ------------------------------------------------------------------------ */

/* The largest eigenpair (theta, y) of the symmetric tridiagonal k x k
 * matrix with diagonal al and off-diagonal be, by LAPACK dstevr (O(k)). */
static int tri_top(ws_t *ws, int64_t k, double *theta)
{
    double *d = ws->tri, *e = ws->tri + ws->m;
    memcpy(d, ws->al, (size_t)k * sizeof(double));
    memcpy(e, ws->be, (size_t)k * sizeof(double));
    const blasint n = (blasint)k, lwork = (blasint)(20 * ws->m),
                  liwork = (blasint)(10 * ws->m);
    blasint found = 0, info = 0;
    const double zero = 0.0, abstol = 0.0;
    pm_lapack_dstevr("V", "I", &n, d, e, &zero, &zero, &n, &n, &abstol,
                     &found, ws->ev, ws->y, &n, ws->isuppz, ws->work, &lwork,
                     ws->iwork, &liwork, &info, 1, 1);
    if (info != 0 || found != 1) return PM_ERR_BLAS;
    *theta = ws->ev[0];
    return PM_OK;
}

/* Fallback: the leading eigenvector of the dense A_U by dsyevr. */
static int direction_dense(ws_t *ws, int64_t n)
{
    const int64_t C = ws->C;
    const size_t c = (size_t)C;
    double *A = malloc(c * c * sizeof(double)), *ev = malloc(c * sizeof(double));
    double *work = malloc(26 * c * sizeof(double));
    blasint *iwork = malloc(10 * c * sizeof(blasint)),
            *isuppz = malloc(2 * c * sizeof(blasint));
    int st = PM_ERR_NOMEM;
    if (A && ev && work && iwork && isuppz) {
        for (int64_t j = 0; j < C; j++)
            for (int64_t i = j; i < C; i++)
                A[j * C + i] = ws->S[j * C + i] - ws->t[i] * ws->t[j] / (double)n;
        const blasint nn = (blasint)C, lw = (blasint)(26 * C),
                      liw = (blasint)(10 * C);
        blasint found = 0, info = 0;
        const double zero = 0.0, abstol = 0.0;
        pm_lapack_dsyevr("V", "I", "L", &nn, A, &nn, &zero, &zero, &nn, &nn,
                         &abstol, &found, ev, ws->v, &nn, isuppz, work, &lw,
                         iwork, &liw, &info, 1, 1, 1);
        st = (info != 0 || found != 1) ? PM_ERR_BLAS : PM_OK;
    }
    free(A);
    free(ev);
    free(work);
    free(iwork);
    free(isuppz);
    return st;
}

/*
 * v = the eigenvector of the largest eigenvalue of A_U (n = |U| rows), by
 * Lanczos iteration with full reorthogonalisation (classical Gram-Schmidt,
 * twice) and explicit restarts from the current Ritz vector.
 *
 * Start: the previous direction (warm start: after a small down-date it is
 * nearly converged already), or for the first mask the column of A_U with
 * the largest diagonal entry (e_0 if A_U = 0).
 *
 * Convergence test, after every Lanczos step j: with (theta, y) the largest
 * Ritz pair of the tridiagonal T_j, the residual of the Ritz vector z = Q y
 * is exactly ||A z - theta z|| = beta_j |y_j|; stop when it is at most
 * 1e-9 * |theta| (or theta = 0, the zero matrix).  By the Davis-Kahan
 * bound the angle to the true eigenvector is then at most that residual
 * over the eigengap.  If PM_LANCZOS_RESTARTS restarts of PM_LANCZOS_DIM
 * steps do not reach it (a near-multiple leading eigenvalue), LAPACK's
 * dsyevr solves the dense C x C problem instead.  Every step is a fixed
 * sequence of single-threaded BLAS calls: the result is deterministic.
 */
static int principal_direction(ws_t *ws, int64_t n, int warm)
{
    const int64_t C = ws->C, m = ws->m;
    double *Q = ws->Q, *w = ws->w, *v = ws->v;
    if (!warm) {
        int64_t jmax = 0;
        double dmax = -1.0;
        for (int64_t j = 0; j < C; j++) {
            const double d = ws->S[j * C + j] - ws->t[j] * ws->t[j] / (double)n;
            if (d > dmax) {
                dmax = d;
                jmax = j;
            }
        }
        for (int64_t c = 0; c < C; c++) Q[c] = c == jmax ? 1.0 : 0.0;
        cov_apply(ws, n, Q, v);
        if (!(pm_cblas_ddot((blasint)C, v, 1, v, 1) > 0.0))
            for (int64_t c = 0; c < C; c++) v[c] = c == 0 ? 1.0 : 0.0;
    }
    for (int restart = 0; restart < PM_LANCZOS_RESTARTS; restart++) {
        const double nv = sqrt(pm_cblas_ddot((blasint)C, v, 1, v, 1));
        if (!(nv > 0.0) || !isfinite(nv)) break;
        for (int64_t c = 0; c < C; c++) Q[c] = v[c] / nv;
        for (int64_t j = 0; j < m; j++) {
            double *q = Q + j * C;
            cov_apply(ws, n, q, w);
            ws->al[j] = pm_cblas_ddot((blasint)C, q, 1, w, 1);
            /* w -= Q_{0..j} (Q_{0..j}^T w), twice: the three-term
             * recurrence is contained in it, and two passes keep the basis
             * orthogonal to working precision. */
            for (int pass = 0; pass < 2; pass++) {
                pm_cblas_dgemv(CblasRowMajor, CblasNoTrans, (blasint)(j + 1),
                               (blasint)C, 1.0, Q, (blasint)C, w, 1, 0.0,
                               ws->h, 1);
                pm_cblas_dgemv(CblasRowMajor, CblasTrans, (blasint)(j + 1),
                               (blasint)C, -1.0, Q, (blasint)C, ws->h, 1, 1.0,
                               w, 1);
            }
            ws->be[j] = sqrt(pm_cblas_ddot((blasint)C, w, 1, w, 1));
            double theta;
            int st = tri_top(ws, j + 1, &theta);
            if (st != PM_OK) return st;
            const double resid = fabs(ws->be[j] * ws->y[j]);
            const int last = j + 1 == m;
            if (resid <= PM_LANCZOS_TOL * fabs(theta) || theta == 0.0 ||
                last || j + 1 == C) {
                /* v = Q_{0..j} y */
                pm_cblas_dgemv(CblasRowMajor, CblasTrans, (blasint)(j + 1),
                               (blasint)C, 1.0, Q, (blasint)C, ws->y, 1, 0.0,
                               v, 1);
                if (resid <= PM_LANCZOS_TOL * fabs(theta) || theta == 0.0 ||
                    j + 1 == C)
                    return PM_OK;
                break; /* restart from the Ritz vector */
            }
            for (int64_t c = 0; c < C; c++) Q[(j + 1) * C + c] = w[c] / ws->be[j];
        }
    }
    return direction_dense(ws, n);
}

/* ------------------------------------------------------------------------ */
/* The proposal loop                                                        */
/* ------------------------------------------------------------------------ */

/* Index (row of U) of the first maximum of s over n rows; ties go to the
 * smallest pixel index. */
static int64_t first_argmax(const float *s, const int64_t *idx, int64_t n)
{
    int64_t best = 0;
    for (int64_t r = 1; r < n; r++)
        if (s[r] > s[best] || (s[r] == s[best] && idx[r] < idx[best]))
            best = r;
    return best;
}

/* Removes the pixels flagged in drop from U: a partition that leaves the
 * kept pixels in columns [0, n - k) and the k removed ones of X in
 * [n - k, n) (for the down-date), moving only columns from the tail into
 * holes, O(k * C), channel by channel.  Returns k. */
static int64_t remove_rows(ws_t *ws, int64_t *n_io, unsigned char *drop)
{
    const int64_t C = ws->C, N = ws->N;
    int64_t n = *n_io, k = 0, moves = 0;
    int64_t *mv = ws->mv;
    for (int64_t r = 0; r < n; r++) k += drop[r] != 0;
    int64_t r = 0, end = n;
    while (r < end) {
        if (!drop[r]) {
            r++;
            continue;
        }
        while (end - 1 > r && drop[end - 1]) end--;
        if (end - 1 <= r) break; /* no kept pixel after r */
        const int64_t j = end - 1;
        mv[2 * moves] = r;
        mv[2 * moves + 1] = j;
        moves++;
        ws->idx[r] = ws->idx[j];
        drop[j] = 1;
        end = j;
        r++;
    }
    for (int64_t c = 0; c < C; c++) {
        float *restrict x = ws->X + c * N, *restrict fn = ws->Fn + c * N;
        for (int64_t i = 0; i < moves; i++) {
            const int64_t dst = mv[2 * i], src = mv[2 * i + 1];
            const float tmp = x[dst];
            x[dst] = x[src];
            x[src] = tmp;
            fn[dst] = fn[src];
        }
    }
    *n_io = n - k;
    return k;
}

/*
 * The loop of docs/method.md section 1.1 on a prepared image.  Writes own0/val0 (mask
 * number 1..n of each pixel, 0 = unassigned; value m_p / max(m)) and the
 * number of masks.
 */
static int propose(ws_t *ws, const pm_masks_params *p, int64_t *n_masks)
{
    const int64_t C = ws->C, N = ws->N;
    int64_t n = N, assigned = 0, count = 0, still = 0;
    unsigned char *drop = (unsigned char *)ws->s; /* reused after s */
    for (int64_t q = 0; q < N; q++) {
        ws->own0[q] = 0;
        ws->val0[q] = 0.0f;
    }
    cov_from_rows(ws, N);
    const float psi = (float)p->threshold;
    while ((double)assigned / (double)N < p->stop_fraction && n > 0 &&
           (p->max_masks == 0 || count < p->max_masks) && still < 2) {
        if (pm_interrupted()) return PM_ERR_INTERRUPTED;
        int st = principal_direction(ws, n, count > 0);
        if (st != PM_OK) return st;
        for (int64_t c = 0; c < C; c++) ws->vf[c] = (float)ws->v[c];
        /* s = F^_U v and the sign rule. */
        float *s = ws->s, *sim = ws->sim;
        pm_cblas_sgemv(CblasRowMajor, CblasTrans, (blasint)C, (blasint)n,
                       1.0f, ws->Fn, (blasint)N, ws->vf, 1, 0.0f, s, 1);
        float smax = s[0], smin = s[0];
        for (int64_t r = 1; r < n; r++) {
            if (s[r] > smax) smax = s[r];
            if (s[r] < smin) smin = s[r];
        }
        if (smax < -smin) {
            for (int64_t c = 0; c < C; c++) ws->v[c] = -ws->v[c];
            for (int64_t r = 0; r < n; r++) s[r] = -s[r];
        }
        const int64_t seed = first_argmax(s, ws->idx, n);
        /* m = F^_U u, u = F^_seed (gathered from its column). */
        for (int64_t c = 0; c < C; c++) ws->vf[c] = ws->Fn[c * N + seed];
        pm_cblas_sgemv(CblasRowMajor, CblasTrans, (blasint)C, (blasint)n,
                       1.0f, ws->Fn, (blasint)N, ws->vf, 1, 0.0f, sim, 1);
        float mx = sim[0];
        for (int64_t r = 1; r < n; r++)
            if (sim[r] > mx) mx = sim[r];
        count++;
        const int32_t id = (int32_t)count;
        if (mx > 0.0f) {
            const float thr = psi * mx;
            for (int64_t r = 0; r < n; r++) {
                drop[r] = !(sim[r] < thr);
                if (drop[r]) {
                    ws->own0[ws->idx[r]] = id;
                    ws->val0[ws->idx[r]] = sim[r] / mx;
                }
            }
        } else {
            /* The seed's feature is the zero vector: the seed alone. */
            for (int64_t r = 0; r < n; r++) drop[r] = r == seed;
            ws->own0[ws->idx[seed]] = id;
            ws->val0[ws->idx[seed]] = 1.0f;
        }
        int64_t k = 0;
        for (int64_t r = 0; r < n; r++) k += drop[r] != 0;
        assigned += k;
        still = k == 0 ? still + 1 : 0;
        const int more = (double)assigned / (double)N < p->stop_fraction &&
                         (p->max_masks == 0 || count < p->max_masks) &&
                         still < 2 && n - k > 0;
        if (!more) break; /* U, S and t are not needed any more */
        remove_rows(ws, &n, drop);
        if (k > 0) {
            if (k > n)
                cov_from_rows(ws, n);
            else
                cov_downdate(ws, n, k);
        }
    }
    *n_masks = count;
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* Post-processing                                                          */
/* ------------------------------------------------------------------------ */

/* numpy.pad(mode="reflect") index: edges not repeated; size 1 replicates. */
static int64_t reflect(int64_t i, int64_t n)
{
    if (n == 1) return 0;
    const int64_t period = 2 * (n - 1);
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - i;
}

/* The k-th smallest (0-based) of a[0..n), by quickselect (a is permuted). */
static float kth_smallest(float *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const float pivot = a[(lo + hi) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                const float tmp = a[i];
                a[i] = a[j];
                a[j] = tmp;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return a[k];
    }
    return a[k];
}

/*
 * Median filter of every mask (own0/val0 -> own/val), K x K window,
 * reflect padding.  The median of mask k at a pixel is nonzero only if more
 * than half the window belongs to k: find that majority owner, then the
 * median is its (mid - zeros)-th smallest value.
 */
static void median_masks(ws_t *ws, int64_t h, int64_t w, int K)
{
    const int64_t N = h * w, r = K / 2, K2 = (int64_t)K * K, mid = K2 / 2;
    if (K == 1) {
        memcpy(ws->own, ws->own0, (size_t)N * sizeof(int32_t));
        memcpy(ws->val, ws->val0, (size_t)N * sizeof(float));
        return;
    }
    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < w; x++) {
            int64_t nw = 0;
            int32_t cand = 0;
            int64_t votes = 0;
            for (int64_t dy = -r; dy <= r; dy++) {
                const int64_t yy = reflect(y + dy, h);
                for (int64_t dx = -r; dx <= r; dx++) {
                    const int64_t q = yy * w + reflect(x + dx, w);
                    const int32_t o = ws->own0[q];
                    ws->wown[nw] = o;
                    ws->win[nw++] = ws->val0[q];
                    if (o == 0) continue;
                    if (votes == 0) {
                        cand = o;
                        votes = 1;
                    } else {
                        votes += o == cand ? 1 : -1;
                    }
                }
            }
            int64_t cnt = 0;
            if (cand != 0)
                for (int64_t i = 0; i < K2; i++)
                    if (ws->wown[i] == cand) ws->win[cnt++] = ws->win[i];
            const int64_t q = y * w + x;
            if (cnt > mid) {
                ws->own[q] = cand;
                ws->val[q] = kth_smallest(ws->win, cnt, mid - (K2 - cnt));
            } else {
                ws->own[q] = 0;
                ws->val[q] = 0.0f;
            }
        }
}

/* Gain, clamp and the background channel; returns mean(M[M != 0]). */
static float gain_background(ws_t *ws, int64_t N, float gain)
{
    double sum = 0.0;
    int64_t cnt = 0;
    for (int64_t q = 0; q < N; q++) {
        float v = ws->val[q] * gain;
        v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
        ws->val[q] = v;
        if (v != 0.0f) {
            sum += v;
            cnt++;
        } else {
            ws->own[q] = 0;
        }
    }
    const float level = cnt ? (float)(sum / (double)cnt) : 0.0f;
    for (int64_t q = 0; q < N; q++) {
        const float b = level - ws->val[q];
        ws->bg[q] = b < 0.0f ? 0.0f : (b > 1.0f ? 1.0f : b);
    }
    return level;
}

/* Value at one output pixel of the bilinear upsampling of the channel whose
 * values at the four sources are a..d; torch's order of operations (the
 * numbers of pm_upsample_bilinear). */
static inline float blend(float v00, float v01, float v10, float v11,
                          float lx0, float lx1, float ly0, float ly1)
{
    const float t0 = v00 * lx0 + v01 * lx1;
    const float t1 = v10 * lx0 + v11 * lx1;
    return t0 * ly0 + t1 * ly1;
}

/* Argmax over [b, M_1..M_n] upsampled to (H, W) (ties: lowest channel).
 * Only the background and the owners of the four source pixels can be
 * nonzero at an output pixel; every other channel is exactly 0 there and
 * loses to the background (>= 0, lower channel). */
static void argmax_upsampled(const ws_t *ws, int64_t w,
                             const pm_axis_table *ty,
                             const pm_axis_table *tx, int32_t *out)
{
    const int64_t H = ty->n_out, W = tx->n_out;
    const int32_t *own = ws->own;
    const float *val = ws->val, *bg = ws->bg;
    for (int64_t Y = 0; Y < H; Y++) {
        const int64_t y0 = ty->i0[Y] * w, y1 = ty->i1[Y] * w;
        const float ly0 = ty->l0[Y], ly1 = ty->l1[Y];
        for (int64_t X = 0; X < W; X++) {
            const int64_t x0 = tx->i0[X], x1 = tx->i1[X];
            const float lx0 = tx->l0[X], lx1 = tx->l1[X];
            const int64_t q[4] = {y0 + x0, y0 + x1, y1 + x0, y1 + x1};
            int32_t best = 0;
            float bv = blend(bg[q[0]], bg[q[1]], bg[q[2]], bg[q[3]], lx0,
                             lx1, ly0, ly1);
            int32_t c[4];
            for (int i = 0; i < 4; i++) c[i] = own[q[i]];
            /* candidates in ascending channel order */
            for (int i = 1; i < 4; i++)
                for (int j = i; j > 0 && c[j - 1] > c[j]; j--) {
                    const int32_t tmp = c[j];
                    c[j] = c[j - 1];
                    c[j - 1] = tmp;
                }
            for (int i = 0; i < 4; i++) {
                const int32_t k = c[i];
                if (k == 0 || (i > 0 && c[i - 1] == k)) continue;
                float v[4];
                for (int j = 0; j < 4; j++) v[j] = own[q[j]] == k ? val[q[j]] : 0.0f;
                const float vk = blend(v[0], v[1], v[2], v[3], lx0, lx1, ly0, ly1);
                if (vk > bv) {
                    bv = vk;
                    best = k;
                }
            }
            out[Y * W + X] = best;
        }
    }
}

/* Renumbers the ids of a map consecutively in extraction order (dropping
 * masks that win no pixel); returns the number of ids. */
static int64_t renumber(int32_t *map, int64_t npix, int64_t n_masks,
                        int32_t *lut)
{
    for (int64_t k = 0; k <= n_masks; k++) lut[k] = 0;
    for (int64_t i = 0; i < npix; i++) lut[map[i]] = 1;
    int32_t next = 0;
    for (int64_t k = 1; k <= n_masks; k++) lut[k] = lut[k] ? ++next : 0;
    lut[0] = 0;
    for (int64_t i = 0; i < npix; i++) map[i] = lut[map[i]];
    return next;
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                             */
/* ------------------------------------------------------------------------ */

static int one_image(ws_t *ws, const float *F, int64_t h, int64_t w,
                     const pm_masks_params *p, const pm_axis_table *ty,
                     const pm_axis_table *tx, int32_t *map, int32_t *owner,
                     float *value, float *level, int64_t *n_prop,
                     int64_t *n_ids)
{
    const int64_t N = h * w;
    int st = prepare(ws, F);
    if (st != PM_OK) return st;
    int64_t n = 0;
    st = propose(ws, p, &n);
    if (st != PM_OK) return st;
    median_masks(ws, h, w, p->median_size);
    const float lev = gain_background(ws, N, (float)p->gain);
    int64_t npix;
    if (ty) {
        argmax_upsampled(ws, w, ty, tx, map);
        npix = ty->n_out * tx->n_out;
    } else {
        for (int64_t q = 0; q < N; q++)
            map[q] = ws->val[q] > ws->bg[q] ? ws->own[q] : 0;
        npix = N;
    }
    int32_t *lut = malloc((size_t)(n + 1) * sizeof(int32_t));
    if (!lut) return PM_ERR_NOMEM;
    const int64_t ids = renumber(map, npix, n, lut);
    free(lut);
    if (owner) memcpy(owner, ws->own, (size_t)N * sizeof(int32_t));
    if (value) memcpy(value, ws->val, (size_t)N * sizeof(float));
    if (level) *level = lev;
    if (n_prop) *n_prop = n;
    if (n_ids) *n_ids = ids;
    return PM_OK;
}

int pm_masks(const float *features, int64_t B, int64_t C, int64_t h,
             int64_t w, const pm_masks_params *p, int64_t H, int64_t W,
             int32_t *maps, int32_t *owner, float *value, float *level,
             int64_t *n_proposals, int64_t *n_masks)
{
    if (B < 0 || C < 1 || h < 1 || w < 1 || H < 1 || W < 1) return PM_ERR_ARG;
    if (pm_masks_check_params(p) != PM_OK) return PM_ERR_ARG;
    /* BLAS takes 32-bit sizes: C, N and the row length must fit. */
    if (h > INT32_MAX / w || C > INT32_MAX || (h * w) > INT64_MAX / C)
        return PM_ERR_ARG;
    if (B == 0) return PM_OK;
    if (!features || !maps) return PM_ERR_ARG;
    const int64_t N = h * w;
    const int up = H != h || W != w;
    pm_axis_table ty = {0}, tx = {0};
    if (up) {
        int st = pm_axis_table_init(&ty, h, H);
        if (st != PM_OK) return st;
        st = pm_axis_table_init(&tx, w, W);
        if (st != PM_OK) {
            pm_axis_table_free(&ty);
            return st;
        }
    }
    int status = PM_OK;
    const int nth = pm_get_num_threads();
#pragma omp parallel num_threads(nth) if (B > 1 && nth > 1)
    {
        pm_pin_blas();
        ws_t ws;
        int st = ws_init(&ws, C, N, p->median_size);
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < B; b++) {
            int sb = st;
            if (sb == PM_OK && pm_interrupted()) sb = PM_ERR_INTERRUPTED;
            if (sb == PM_OK)
                sb = one_image(&ws, features + b * C * N, h, w, p,
                               up ? &ty : NULL, up ? &tx : NULL,
                               maps + b * H * W, owner ? owner + b * N : NULL,
                               value ? value + b * N : NULL,
                               level ? level + b : NULL,
                               n_proposals ? n_proposals + b : NULL,
                               n_masks ? n_masks + b : NULL);
            if (sb != PM_OK) {
                /* The same status for any thread count: every image runs,
                 * and the lowest code that is not PM_OK wins. */
#pragma omp critical(pm_masks_status)
                if (status == PM_OK || sb < status) status = sb;
            }
        }
        if (st == PM_OK) ws_free(&ws);
    }
    pm_axis_table_free(&ty);
    pm_axis_table_free(&tx);
    return status;
}

int pm_masks_soft(const int32_t *owner, const float *value, float level,
                  int64_t n, int64_t N, float *soft)
{
    if (n < 0 || N < 1 || !owner || !value || !soft) return PM_ERR_ARG;
    memset(soft, 0, (size_t)((n + 1) * N) * sizeof(float));
    for (int64_t q = 0; q < N; q++) {
        const float b = level - value[q];
        soft[q] = b < 0.0f ? 0.0f : (b > 1.0f ? 1.0f : b);
        const int32_t k = owner[q];
        if (k < 0 || k > n) return PM_ERR_ARG;
        if (k > 0) soft[k * N + q] = value[q];
    }
    return PM_OK;
}
