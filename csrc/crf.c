/*
 * crf.c -- the fully connected CRF with Gaussian edge potentials
 * (Krähenbühl & Koltun, NIPS 2011): mean-field inference whose message
 * passing is Gaussian filtering on a permutohedral lattice (Adams, Baek &
 * Davis, Eurographics 2010).
 *
 * The model, with pydensecrf's defaults (DIAG_KERNEL, NORMALIZE_SYMMETRIC,
 * PottsCompatibility): for kernels m with features f^m and weights w_m,
 * K_m[i, j] = exp(-|f^m_i - f^m_j|^2 / 2) (self term included),
 * D_m = diag(K_m 1), and every iteration sets, per pixel, over labels,
 *
 *     Q <- softmax(-U + sum_m w_m D_m^{-1/2} K_m D_m^{-1/2} Q).
 *
 * (densecrf's PottsCompatibility::apply returns -w Q and inference subtracts
 * every pairwise term from -U, so the signs above are its signs.)  The
 * lattice replaces K_m by alpha S B S^T, with S the splat (barycentric
 * weights of each point's d+1 enclosing vertices), B the blur (a
 * [1/2, 1, 1/2] stencil along each of the d+1 lattice directions, in order
 * 0..d) and alpha = 1 / (1 + 2^-d); D_m is computed with the same operator,
 * as densecrf does; the appearance kernel's numbers are pydensecrf's.  The
 * smoothness kernel (position only) is separable: for theta_xy <= 4 it is
 * computed exactly, as two 1-D filterings of the pixel grid (see "The
 * smoothness kernel, exactly"), cheaper than densecrf's 2-D lattice and
 * free of its error; wider ones use the lattice (d = 2) as densecrf does.
 *
 * Layout and threads.  Labels are padded to blocks of 4 lanes; values live
 * row-major with the lanes of a row contiguous, pixels (N, Lp) and lattice
 * vertices (M+1, Lp), so every splat, blur, slice and grid step works on
 * whole rows.  An iteration is a splat and blur of the appearance lattice,
 * then one pass over the image rows that filters the smoothness kernel,
 * slices the appearance values, adds the unary and takes the softmax, a
 * row at a time in cache.  A batch with at least as many images as threads
 * runs one image per thread; otherwise the threads share each image (see
 * mean_field_parallel: the splats of the two halves of the pixels, the
 * blur, the grid's rows and the row updates go to whichever thread is
 * free, two barriers an iteration).
 *
 * Determinism.  The lattice is numbered by one thread in pixel order (vertex
 * ids = order of first appearance); a splat adds each vertex's
 * contributions from the first half of the pixels in pixel order, starting
 * from 0, the same from the second half, then the two sums; every value is
 * computed by one thread in a fixed order, whichever thread it is.  So
 * marginals are bitwise identical for every thread count (and instruction
 * set: the AVX2 and baseline clones of the loops do the same IEEE
 * operations).
 *
 * The files: crf_lattice.c (the lattice and a kernel on it), crf_grid.c
 * (the exact smoothness kernel), this file (the softmax, mean field and
 * the entry points pm_dense_crf and pm_permutohedral_filter).
 */
#include "crf_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

/* ------------------------------------------------------------------------ */
/* exp for the softmax                                                      */
/* ------------------------------------------------------------------------ */

/* exp(x) over a row of n floats, n a multiple of 4, for x <= 0 (the
 * softmax calls it L N times per iteration; libm's expf does not vectorise
 * and was the largest single cost).  Written with GCC/Clang vector
 * extensions, four lanes at a time, in plain IEEE arithmetic: the same bits
 * on every machine and thread count.  Range reduction x = n ln2 + r (ln2
 * split in two parts, n rounded with the 1.5 * 2^23 trick), a degree-6
 * polynomial for exp(r) on |r| <= ln2/2 (Cephes' expf coefficients;
 * relative error under 1e-7), then 2^n through the exponent bits.
 * Arguments below -69, i.e. probabilities under 1e-30, give exactly 0, so
 * no subnormal ever enters the message passing (subnormal arithmetic is
 * slow); -inf (pad lanes) gives 0. */
/* *xp = exp(*xp) over the lanes of a vector of type VF (ints VI), as
 * described above; the 8-lane version does per lane what the 4-lane one
 * does (in place: see load8). */
#define PM_DEFINE_EXP(NAME, VF, VI)                                           \
    PM_INLINE void NAME(VF *xp)                                               \
    {                                                                         \
        const VF x = *xp;                                                     \
        const VF zero = {0.0f};                                               \
        const VF cut = zero - 69.0f;                                          \
        const VI keep = x >= cut; /* all ones where x >= -69 */               \
        const VF v = (VF)(((VI)x & keep) | ((VI)cut & ~keep));                \
        const VF t = v * 1.44269504088896341f;                                \
        const VF nf = (t + 12582912.0f) - 12582912.0f;                        \
        const VF r = (v - nf * 0.693359375f) - nf * -2.12194440e-4f;          \
        VF p = r * 1.9875691500e-4f + 1.3981999507e-3f;                       \
        p = p * r + 8.3334519073e-3f;                                         \
        p = p * r + 4.1665795894e-2f;                                         \
        p = p * r + 1.6666665459e-1f;                                         \
        p = p * r + 5.0000001201e-1f;                                         \
        p = p * (r * r) + r + 1.0f;                                           \
        const VI bits = (__builtin_convertvector(nf, VI) + 127) << 23;        \
        const VF y = p * (VF)bits;                                            \
        *xp = (VF)((VI)y & keep);                                             \
    }

PM_DEFINE_EXP(exp4, pm_v4f, pm_v4i)
PM_DEFINE_EXP(exp8, pm_v8f, pm_v8i)

/* The largest of the n floats of a row (n a multiple of 4; max is exact,
 * so the order does not matter). */
static inline float row_max(const float *e, int64_t n)
{
    pm_v4f m = load4(e);
    for (int64_t c = 4; c < n; c += 4) {
        const pm_v4f x = load4(e + c);
        const pm_v4i gt = x > m;
        m = (pm_v4f)(((pm_v4i)x & gt) | ((pm_v4i)m & ~gt));
    }
    const float a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
    return a > b ? a : b;
}

/* e <- exp(e - shift) over a row, adding each 4-lane vector into *acc (the
 * lanes are combined in a fixed order by hsum4). */
static inline void exp_shift_row(float *e, int64_t n, float shift,
                                 pm_v4f *acc)
{
    pm_v4f s = *acc;
    for (int64_t c = 0; c < n; c += 4) {
        pm_v4f x = load4(e + c) - shift;
        exp4(&x);
        store4(e + c, x);
        s += x;
    }
    *acc = s;
}

static inline float hsum4(pm_v4f s) { return (s[0] + s[1]) + (s[2] + s[3]); }

/* q = softmax(e) over the n lanes of a row (e is overwritten):
 * exp(e - max e) / sum, as densecrf computes it; used for the unary. */
static void softmax_row(float *e, float *q, int64_t n)
{
    pm_v4f acc = {0.0f, 0.0f, 0.0f, 0.0f};
    exp_shift_row(e, n, row_max(e, n), &acc);
    const float sum = hsum4(acc);
    for (int64_t c = 0; c < n; c += 4) store4(q + c, load4(e + c) / sum);
}

/* Lane-wise maximum (no NaN here). */
#define PM_VMAX(VI, m, x) ((__typeof__(m))(((VI)(x) & (VI)((x) > (m))) |       \
                                           ((VI)(m) & ~(VI)((x) > (m)))))

/* One pixel's update over its n lanes: e = (-U + a) + b into a (a: the
 * smoothness message, b: the appearance one, densecrf's order: -U, minus
 * the Gaussian term, minus the bilateral one; a missing message is left
 * out), then q = exp(e - max e) / sum, as densecrf computes it.  8 lanes
 * at a time, then 4, the same chunks in every pass (a store and a load
 * of different widths would stall); the sum adds the halves of the
 * 8-lane partial sums, then the 4-lane one, then the lanes by hsum4. */
PM_INLINE void energy_softmax_px(const float *u, float *a, const float *b,
                                 float *q, int64_t n, int has_a, int has_b)
{
    const pm_v8f ninf8 = (pm_v8f){0.0f} - INFINITY;
    const pm_v4f ninf4 = (pm_v4f){0.0f} - INFINITY;
    pm_v8f m8 = ninf8;
    pm_v4f m4 = ninf4;
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        pm_v8f e = load8(u + c);
        if (has_a) e = e + load8(a + c);
        if (has_b) e = e + load8(b + c);
        store8(a + c, e);
        m8 = PM_VMAX(pm_v8i, m8, e);
    }
    for (; c < n; c += 4) {
        pm_v4f e = load4(u + c);
        if (has_a) e = e + load4(a + c);
        if (has_b) e = e + load4(b + c);
        store4(a + c, e);
        m4 = PM_VMAX(pm_v4i, m4, e);
    }
    {
        const pm_v4f lo = {m8[0], m8[1], m8[2], m8[3]};
        const pm_v4f hi = {m8[4], m8[5], m8[6], m8[7]};
        m4 = PM_VMAX(pm_v4i, m4, lo);
        m4 = PM_VMAX(pm_v4i, m4, hi);
    }
    const float mxa = m4[0] > m4[1] ? m4[0] : m4[1];
    const float mxb = m4[2] > m4[3] ? m4[2] : m4[3];
    const float mx = mxa > mxb ? mxa : mxb;
    pm_v8f s8 = {0.0f};
    pm_v4f s4 = {0.0f};
    for (c = 0; c + 8 <= n; c += 8) {
        pm_v8f x = load8(a + c) - mx;
        exp8(&x);
        store8(a + c, x);
        s8 += x;
    }
    for (; c < n; c += 4) {
        pm_v4f x = load4(a + c) - mx;
        exp4(&x);
        store4(a + c, x);
        s4 += x;
    }
    const pm_v4f lo = {s8[0], s8[1], s8[2], s8[3]};
    const pm_v4f hi = {s8[4], s8[5], s8[6], s8[7]};
    const float sum = hsum4((lo + hi) + s4);
    for (c = 0; c + 8 <= n; c += 8) store8(q + c, load8(a + c) / sum);
    for (; c < n; c += 4) store4(q + c, load4(a + c) / sum);
}

/* energy_softmax_px over the W pixels of a row. */
PM_INLINE void energy_softmax_body(const float *u, float *a, const float *b,
                                   float *qn, int64_t W, int64_t P,
                                   int has_a, int has_b)
{
    for (int64_t x = 0; x < W; x++)
        energy_softmax_px(u + x * P, a + x * P, b + x * P, qn + x * P, P,
                          has_a, has_b);
}

PM_CLONES static void energy_softmax_row(const float *u, float *a,
                                         const float *b, float *qn, int64_t W,
                                         int64_t P, int has_a, int has_b)
{
#define PM_ESM(PW) energy_softmax_body(u, a, b, qn, W, PW, has_a, has_b)
    PM_WIDTH_SWITCH(P, PM_ESM)
#undef PM_ESM
}

/* ------------------------------------------------------------------------ */
/* Mean-field inference                                                     */
/* ------------------------------------------------------------------------ */

/* Per-thread state: the appearance kernel of the current image and the
 * per-pixel and per-vertex values; all grow-only. */
/* The values of one lattice kernel over an iteration: the splats of the
 * two halves of the pixels (a, c), then the blur ping-ponging between a
 * and b; each (M+1, Lp), row 0 zero. */
typedef struct {
    float *a, *b, *c;
    size_t sz;
} lattice_vals;

/* Per-thread state: the appearance kernel of the current image and the
 * per-pixel and per-vertex values; all grow-only. */
typedef struct {
    kernel app;
    float *negu;    /* (N, Lp) -U = log_softmax(logits); pad lanes -inf     */
    float *q, *q1;  /* (N, Lp) marginals, this and the next iteration's     */
    float *m1;      /* (N, Lp) smoothness messages (grid, several threads);
                       scratch                                              */
    lattice_vals vapp, vsmooth;
    float *rows;    /* per thread: a row line (W + 2r, Lp) with zero ends,
                       two rows (W, Lp) of energies and messages            */
    int64_t rows_stride;
    size_t sz_rows, sz_scratch;
} workspace;

static void vals_free(lattice_vals *v)
{
    free(v->a);
    free(v->b);
    free(v->c);
    memset(v, 0, sizeof *v);
}

/* Makes v hold three buffers of (M+1) rows of P floats, row 0 zero. */
static int vals_reserve(lattice_vals *v, int64_t M, int64_t P)
{
    const size_t need = (size_t)(M + 1) * (size_t)P * sizeof(float);
    if (need > v->sz || !v->a || !v->b || !v->c) {
        vals_free(v);
        v->a = pm_crf_malloc(need);
        v->b = pm_crf_malloc(need);
        v->c = pm_crf_malloc(need);
        if (!v->a || !v->b || !v->c) {
            vals_free(v);
            return PM_ERR_NOMEM;
        }
        v->sz = need;
    }
    memset(v->a, 0, (size_t)P * sizeof(float));
    memset(v->b, 0, (size_t)P * sizeof(float));
    memset(v->c, 0, (size_t)P * sizeof(float));
    return PM_OK;
}

static void workspace_free(workspace *ws)
{
    pm_kernel_free(&ws->app);
    free(ws->negu);
    vals_free(&ws->vapp);
    vals_free(&ws->vsmooth);
    free(ws->rows);
    memset(ws, 0, sizeof *ws);
}

/* Buffers for N pixels of Lp lanes, rows of width W, a smoothness radius r
 * and nt threads. */
static int workspace_rows(workspace *ws, int64_t N, int64_t W, int64_t Lp,
                          int r, int nt)
{
    const size_t row = (size_t)N * (size_t)Lp;
    if (pm_crf_reserve((void **)&ws->negu, &ws->sz_rows,
                       4 * row * sizeof(float)))
        return PM_ERR_NOMEM;
    ws->q = ws->negu + row;
    ws->q1 = ws->q + row;
    ws->m1 = ws->q1 + row;
    /* 16-float (64-byte) multiples keep the threads' rows apart. */
    const int64_t stride = ((3 * W + 2 * r) * Lp + 15) & ~(int64_t)15;
    const size_t bytes = (size_t)stride * (size_t)nt * sizeof(float);
    if (pm_crf_reserve((void **)&ws->rows, &ws->sz_scratch, bytes))
        return PM_ERR_NOMEM;
    memset(ws->rows, 0, bytes);
    ws->rows_stride = stride;
    return PM_OK;
}

/* 1 if any of the n floats is a NaN or an inf. */
static int any_nonfinite(const float *x, int64_t n, int nt)
{
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 16384) num_threads(nt) if (nt > 1) \
    reduction(| : bad)
    for (int64_t i = 0; i < n; i++) bad |= !isfinite(x[i]);
    return bad;
}

/* Plane-major (L, N) <-> pixel rows (N, Lp), a block of pixels at a time so
 * that each plane is read or written in runs (a pixel at a time, the planes
 * are a page apart and every access is a TLB miss). */
#define PM_TBLOCK 64

static void planes_to_rows(const float *src, float *dst, int64_t N, int64_t L,
                           int64_t Lp, float pad, int nt)
{
    const int64_t blocks = (N + PM_TBLOCK - 1) / PM_TBLOCK;
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < blocks; t++) {
        const int64_t i0 = t * PM_TBLOCK;
        const int64_t i1 = i0 + PM_TBLOCK < N ? i0 + PM_TBLOCK : N;
        for (int64_t c = 0; c < Lp; c++) {
            if (c < L)
                for (int64_t i = i0; i < i1; i++)
                    dst[i * Lp + c] = src[c * N + i];
            else
                for (int64_t i = i0; i < i1; i++) dst[i * Lp + c] = pad;
        }
    }
}

static void rows_to_planes(const float *src, float *dst, int64_t N, int64_t L,
                           int64_t Lp, int nt)
{
    const int64_t blocks = (N + PM_TBLOCK - 1) / PM_TBLOCK;
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < blocks; t++) {
        const int64_t i0 = t * PM_TBLOCK;
        const int64_t i1 = i0 + PM_TBLOCK < N ? i0 + PM_TBLOCK : N;
        for (int64_t c = 0; c < L; c++)
            for (int64_t i = i0; i < i1; i++) dst[c * N + i] = src[i * Lp + c];
    }
}

/* -U = log_softmax(logits) and Q = softmax(-U) as pixel rows.  The logits
 * are finite (checked up front).  Pad lanes get -U = -inf, so that every
 * softmax gives them exactly 0.  With min_prob > 0, -U = log max(softmax,
 * min_prob), as pydensecrf's unary_from_softmax gives. */
static void load_unary(const float *logits, workspace *ws, int64_t N,
                       int64_t L, int64_t Lp, float min_prob, int nt)
{
    const float floor_u = min_prob > 0.0f ? logf(min_prob) : -INFINITY;
    /* The logits, pad lanes -inf, into m1 (scratch). */
    planes_to_rows(logits, ws->m1, N, L, Lp, -INFINITY, nt);
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < N; i++) {
        float *x = ws->m1 + i * Lp;
        float *u = ws->negu + i * Lp, *q = ws->q + i * Lp;
        /* -U = x - max - log(sum exp(x - max)); exp(x - max) into q. */
        const float mx = row_max(x, Lp);
        memcpy(q, x, (size_t)Lp * sizeof(float));
        pm_v4f acc = {0.0f, 0.0f, 0.0f, 0.0f};
        exp_shift_row(q, Lp, mx, &acc);
        const float sum = hsum4(acc), lse = mx + logf(sum);
        for (int64_t c = 0; c < Lp; c++) {
            u[c] = x[c] - lse; /* -inf stays */
            q[c] /= sum;       /* Q = softmax(logits) = softmax(-U) */
        }
        if (min_prob > 0.0f) {
            for (int64_t c = 0; c < L; c++)
                u[c] = u[c] > floor_u ? u[c] : floor_u;
            memcpy(x, u, (size_t)Lp * sizeof(float));
            softmax_row(x, q, Lp); /* Q = softmax(-U) of the floored U */
        }
    }
}

/* The kernels of one image: the smoothness kernel on the grid or on a
 * lattice (or neither), the appearance lattice (or none). */
typedef struct {
    const grid_kernel *grid;
    const kernel *smooth;
    const kernel *app;
} kernels;

/* The splat of q through lattice kernel k for the pixels of half h (0:
 * [0, N/2), 1: [N/2, N)) into v->a or v->c, a scatter in pixel order. */
static void splat_half(const kernel *k, const float *q, lattice_vals *v,
                       int h, int64_t P)
{
    const int64_t N = k->lat.N, mid = N / 2;
    pm_lattice_splat(&k->lat, k->splat_w, q, h ? v->c : v->a, h ? mid : 0,
                     h ? N : mid, P);
}

/* The sum of the two halves' splats, blurred; returns the buffer holding
 * the result. */
static const float *add_blur(const kernel *k, lattice_vals *v, int64_t P)
{
    pm_lattice_add(&k->lat, v->a, v->c, P);
    return pm_lattice_blur(&k->lat, v->a, v->b, P);
}

/* The new marginals qn of image row y from q: energies -U + smoothness +
 * appearance message, then the softmax.  The smoothness message is
 * sliced from a lattice (svals), computed on the grid here, or read from
 * ws->m1 (grid, precomputed: pre != 0); avals: the appearance lattice's
 * blurred values; scratch: this thread's rows. */
static void update_row(const workspace *ws, const kernels *ks,
                       const float *svals, const float *avals, int pre,
                       const float *q, float *qn, float *scratch, int64_t y,
                       int64_t W, int64_t P)
{
    const int r = ks->grid ? ks->grid->r : 0;
    float *line = scratch, *e = line + (W + 2 * r) * P, *a = e + W * P;
    const int has_s = ks->grid || ks->smooth, has_a = ks->app != NULL;
    const int64_t i0 = y * W;
    float *er = e;
    if (ks->grid && pre)
        er = ws->m1 + i0 * P;
    else if (ks->grid)
        pm_grid_message_row(ks->grid, q, line, e, y, P);
    else if (ks->smooth)
        pm_lattice_slice_range(&ks->smooth->lat, ks->smooth->slice_w, svals, e,
                               i0, i0 + W, P);
    if (has_a)
        pm_lattice_slice_range(&ks->app->lat, ks->app->slice_w, avals, a, i0,
                               i0 + W, P);
    energy_softmax_row(ws->negu + i0 * P, er, a, qn + i0 * P, W, P, has_s,
                       has_a);
}

/* Mean-field by one thread. */
static float *mean_field_serial(workspace *ws, const kernels *ks, int64_t H,
                                int64_t W, int64_t P, int iterations)
{
    float *q = ws->q, *qn = ws->q1;
    for (int it = 0; it < iterations; it++) {
        if (pm_interrupted()) break; /* the caller returns PM_ERR_INTERRUPTED */
        const float *sv = NULL, *av = NULL;
        if (ks->smooth) {
            splat_half(ks->smooth, q, &ws->vsmooth, 0, P);
            splat_half(ks->smooth, q, &ws->vsmooth, 1, P);
            sv = add_blur(ks->smooth, &ws->vsmooth, P);
        }
        if (ks->app) {
            splat_half(ks->app, q, &ws->vapp, 0, P);
            splat_half(ks->app, q, &ws->vapp, 1, P);
            av = add_blur(ks->app, &ws->vapp, P);
        }
        for (int64_t y = 0; y < H; y++)
            update_row(ws, ks, sv, av, 0, q, qn, ws->rows, y, W, P);
        float *tmp = q;
        q = qn;
        qn = tmp;
    }
    return q;
}

/* Rows of the grid's smoothness messages into ws->m1, taken in blocks
 * from the shared counter *next until none is left. */
#define PM_ROW_BLOCK 4
static void grid_rows(const workspace *ws, const grid_kernel *g,
                      const float *q, float *scratch, int64_t *next,
                      int64_t P)
{
    for (;;) {
        const int64_t y0 = __atomic_fetch_add(next, PM_ROW_BLOCK,
                                              __ATOMIC_RELAXED);
        if (y0 >= g->H) return;
        const int64_t y1 = y0 + PM_ROW_BLOCK < g->H ? y0 + PM_ROW_BLOCK : g->H;
        for (int64_t y = y0; y < y1; y++)
            pm_grid_message_row(g, q, scratch, ws->m1 + y * g->W * P, y, P);
    }
}

/* Mean-field on T >= 2 threads, two barriers an iteration, every piece of
 * work going to whichever thread is free, so that a thread the system
 * holds back holds up the others as little as possible.  Per iteration:
 * the splats of the two halves of the pixels of each lattice kernel are
 * tasks taken from a shared counter; the thread that completes a kernel's
 * second half adds the halves and blurs them; threads without a task
 * compute the grid's smoothness messages, rows taken from a counter;
 * barrier; then all update the rows, taken from a counter; barrier.
 * Every value is computed in the same way by whichever thread: the bits
 * are mean_field_serial's. */
static float *mean_field_parallel(workspace *ws, const kernels *ks,
                                  int64_t H, int64_t W, int64_t P,
                                  int iterations, int nt)
{
    const kernel *lk[2] = {ks->smooth, ks->app};
    lattice_vals *lv[2] = {&ws->vsmooth, &ws->vapp};
    const float *res[2] = {NULL, NULL};
    /* Tasks 2m + h: kernel m, half h; the kernels present only. */
    int tasks[4], ntasks = 0;
    for (int m = 0; m < 2; m++)
        if (lk[m]) {
            tasks[ntasks++] = 2 * m;
            tasks[ntasks++] = 2 * m + 1;
        }
    int64_t next_task = 0, next_grid = 0, next_row = 0;
    int done[2] = {0, 0};
    int stop = 0; /* written by thread 0, read by all after a barrier */
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        float *scratch = ws->rows + t * ws->rows_stride;
        float *q = ws->q, *qn = ws->q1;
        for (int it = 0; it < iterations; it++) {
            /* Nobody takes rows (or reads stop) before the next barrier. */
            if (t == 0) {
                next_row = 0;
                __atomic_store_n(&stop, pm_interrupted(), __ATOMIC_RELAXED);
            }
            for (;;) {
                const int64_t k = __atomic_fetch_add(&next_task, 1,
                                                     __ATOMIC_RELAXED);
                if (k >= ntasks) break;
                const int m = tasks[k] / 2, h = tasks[k] % 2;
                splat_half(lk[m], q, lv[m], h, P);
                if (__atomic_add_fetch(&done[m], 1, __ATOMIC_ACQ_REL) == 2)
                    res[m] = add_blur(lk[m], lv[m], P);
            }
            if (ks->grid) grid_rows(ws, ks->grid, q, scratch, &next_grid, P);
#pragma omp barrier
            /* Every thread leaves at the same point (the caller returns
             * PM_ERR_INTERRUPTED). */
            if (__atomic_load_n(&stop, __ATOMIC_RELAXED)) break;
            /* Nobody takes tasks or grid rows before the next barrier. */
            if (t == 0) {
                next_task = next_grid = 0;
                done[0] = done[1] = 0;
            }
            for (;;) {
                const int64_t y0 = __atomic_fetch_add(&next_row, PM_ROW_BLOCK,
                                                      __ATOMIC_RELAXED);
                if (y0 >= H) break;
                const int64_t y1 = y0 + PM_ROW_BLOCK < H ? y0 + PM_ROW_BLOCK : H;
                for (int64_t y = y0; y < y1; y++)
                    update_row(ws, ks, res[0], res[1], 1, q, qn, scratch, y,
                               W, P);
            }
            float *tmp = q;
            q = qn;
            qn = tmp;
#pragma omp barrier
        }
    }
    return iterations % 2 ? ws->q1 : ws->q;
}

/* Positional features x / theta, y / theta at the start of each stride. */
static void position_features(float *f, int64_t H, int64_t W, float theta,
                              int stride)
{
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            float *p = f + (y * W + x) * stride;
            p[0] = (float)x / theta;
            p[1] = (float)y / theta;
        }
}

/* One image: appearance lattice, unary, iterations, and the marginals
 * back in (L, H, W).  ks holds the smoothness kernel (grid or lattice, or
 * none); the appearance kernel is added here. */
static int crf_image(workspace *ws, kernels ks, const uint8_t *img,
                     const float *logits, float *out, int64_t L, int64_t H,
                     int64_t W, const pm_crf_params *p, int nt)
{
    const int64_t N = H * W, Lp = (L + 3) & ~(int64_t)3;
    const int run = L > 1 && p->iterations > 0;
    int st = workspace_rows(ws, N, W, Lp, ks.grid ? ks.grid->r : 0, nt);
    if (st != PM_OK) return st;
    ks.app = NULL;
    if (run && p->appearance_weight != 0.0f) {
        kernel *k = &ws->app;
        if (pm_crf_reserve((void **)&k->feat, &k->sz_feat,
                           (size_t)N * 5 * sizeof(float)) != PM_OK)
            return PM_ERR_NOMEM;
        position_features(k->feat, H, W, p->appearance_theta_xy, 5);
        for (int64_t i = 0; i < N; i++)
            for (int c = 0; c < 3; c++)
                k->feat[i * 5 + 2 + c] =
                    (float)img[i * 3 + c] / p->appearance_theta_rgb;
        st = pm_kernel_build(k, N, 5, p->appearance_weight, nt);
        if (st != PM_OK) return st;
        if (pm_interrupted()) return PM_ERR_INTERRUPTED;
        ks.app = k;
    }
    load_unary(logits, ws, N, L, Lp, p->min_prob, nt);
    const float *q = ws->q;
    if (run && (ks.app || ks.smooth || ks.grid)) {
        if (ks.app && vals_reserve(&ws->vapp, ks.app->lat.M, Lp) != PM_OK)
            return PM_ERR_NOMEM;
        if (ks.smooth &&
            vals_reserve(&ws->vsmooth, ks.smooth->lat.M, Lp) != PM_OK)
            return PM_ERR_NOMEM;
        q = nt > 1 ? mean_field_parallel(ws, &ks, H, W, Lp, p->iterations, nt)
                   : mean_field_serial(ws, &ks, H, W, Lp, p->iterations);
        if (pm_interrupted()) return PM_ERR_INTERRUPTED;
    }
    rows_to_planes(q, out, N, L, Lp, nt);
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* Public entry points                                                      */
/* ------------------------------------------------------------------------ */

struct pm_crf_ctx {
    /* The smoothness kernel depends on the image size and its own two
     * parameters only: built once, reused while they stay the same. */
    kernel smooth;
    int64_t smooth_h, smooth_w;
    float smooth_theta, smooth_weight;
    int smooth_valid;
    grid_kernel grid; /* the same on the pixel grid (narrow kernels) */
    workspace *ws; /* one per thread of the image-parallel mode */
    int nws;
    int busy; /* a call is running: a concurrent one uses its own context */
};

pm_crf_ctx *pm_crf_ctx_new(void) { return calloc(1, sizeof(pm_crf_ctx)); }

void pm_crf_ctx_free(pm_crf_ctx *ctx)
{
    if (!ctx) return;
    pm_kernel_free(&ctx->smooth);
    pm_grid_free(&ctx->grid);
    for (int t = 0; t < ctx->nws; t++) workspace_free(&ctx->ws[t]);
    free(ctx->ws);
    free(ctx);
}

static int valid_theta(float t) { return isfinite(t) && t > 0.0f; }
static int valid_weight(float w) { return isfinite(w) && w >= 0.0f; }

void pm_crf_params_default(pm_crf_params *p)
{
    p->iterations = 10;
    p->appearance_weight = 4.0f;
    p->appearance_theta_xy = 67.0f;
    p->appearance_theta_rgb = 3.0f;
    p->smoothness_weight = 3.0f;
    p->smoothness_theta_xy = 1.0f;
    p->min_prob = 0.0f;
}

static int params_check(const pm_crf_params *p)
{
    if (!p || p->iterations < 0 || !valid_weight(p->appearance_weight) ||
        !valid_weight(p->smoothness_weight) ||
        !valid_theta(p->appearance_theta_xy) ||
        !valid_theta(p->appearance_theta_rgb) ||
        !valid_theta(p->smoothness_theta_xy) || !(p->min_prob >= 0.0f) ||
        !(p->min_prob < 1.0f))
        return PM_ERR_ARG;
    return PM_OK;
}

/* The context's smoothness kernel for this size and these parameters. */
static int smooth_kernel(pm_crf_ctx *ctx, int64_t H, int64_t W,
                         const pm_crf_params *p, int nt)
{
    if (ctx->smooth_valid && ctx->smooth_h == H && ctx->smooth_w == W &&
        ctx->smooth_theta == p->smoothness_theta_xy &&
        ctx->smooth_weight == p->smoothness_weight)
        return PM_OK;
    ctx->smooth_valid = 0;
    const int64_t N = H * W;
    kernel *k = &ctx->smooth;
    if (pm_crf_reserve((void **)&k->feat, &k->sz_feat,
                       (size_t)N * 2 * sizeof(float)))
        return PM_ERR_NOMEM;
    position_features(k->feat, H, W, p->smoothness_theta_xy, 2);
    int st = pm_kernel_build(k, N, 2, p->smoothness_weight, nt);
    if (st != PM_OK) return st;
    ctx->smooth_h = H;
    ctx->smooth_w = W;
    ctx->smooth_theta = p->smoothness_theta_xy;
    ctx->smooth_weight = p->smoothness_weight;
    ctx->smooth_valid = 1;
    return PM_OK;
}

static int crf_run(pm_crf_ctx *ctx, const uint8_t *images, const float *logits,
                   float *marginals, int64_t B, int64_t L, int64_t H,
                   int64_t W, const pm_crf_params *p)
{
    const int64_t N = H * W;
    const int nthreads = pm_get_num_threads();
    if (any_nonfinite(logits, B * L * N, nthreads)) return PM_ERR_NONFINITE;
    const int run = L > 1 && p->iterations > 0;
    kernels ks = {NULL, NULL, NULL};
    if (run && p->smoothness_weight != 0.0f) {
        if (p->smoothness_theta_xy <= PM_GRID_MAX_THETA) {
            if (pm_grid_build(&ctx->grid, H, W, p->smoothness_theta_xy,
                              p->smoothness_weight) != PM_OK)
                return PM_ERR_NOMEM;
            ks.grid = &ctx->grid;
        } else {
            int st = smooth_kernel(ctx, H, W, p, nthreads);
            if (st != PM_OK) return st;
            ks.smooth = &ctx->smooth;
        }
    }
    /* Images in parallel (one thread each) when there are enough of them;
     * otherwise one image at a time with the threads sharing its labels.
     * The arithmetic is the same either way. */
    const int outer = B >= nthreads ? nthreads : 1;
    const int inner = outer > 1 ? 1 : nthreads;
    if (ctx->nws < outer) {
        workspace *w = realloc(ctx->ws, (size_t)outer * sizeof(workspace));
        if (!w) return PM_ERR_NOMEM;
        memset(w + ctx->nws, 0,
               (size_t)(outer - ctx->nws) * sizeof(workspace));
        ctx->ws = w;
        ctx->nws = outer;
    }
    /* On failure, the status of the first failing image. */
    int status = PM_OK;
    int64_t failed = B;
#pragma omp parallel for schedule(dynamic, 1) num_threads(outer) if (outer > 1)
    for (int64_t b = 0; b < B; b++) {
        const int s =
            pm_interrupted()
                ? PM_ERR_INTERRUPTED
                : crf_image(&ctx->ws[omp_get_thread_num()], ks,
                            images + b * N * 3, logits + b * L * N,
                            marginals + b * L * N, L, H, W, p, inner);
        if (s != PM_OK) {
#pragma omp critical(pm_crf_status)
            if (b < failed) {
                failed = b;
                status = s;
            }
        }
    }
    return status;
}

int pm_dense_crf(pm_crf_ctx *ctx, const uint8_t *images, const float *logits,
                 float *marginals, int64_t B, int64_t L, int64_t H, int64_t W,
                 const pm_crf_params *p)
{
    if (B < 0 || L < 1 || H < 1 || W < 1 || params_check(p) != PM_OK)
        return PM_ERR_ARG;
    if (H > INT32_MAX / W || H * W > (int64_t)(INT32_MAX / 6 - 1))
        return PM_ERR_ARG;
    if (B == 0) return PM_OK;
    if (!images || !logits || !marginals) return PM_ERR_ARG;
    if (ctx && !__atomic_exchange_n(&ctx->busy, 1, __ATOMIC_ACQUIRE)) {
        const int st = crf_run(ctx, images, logits, marginals, B, L, H, W, p);
        __atomic_store_n(&ctx->busy, 0, __ATOMIC_RELEASE);
        return st;
    }
    pm_crf_ctx *tmp = pm_crf_ctx_new();
    if (!tmp) return PM_ERR_NOMEM;
    const int st = crf_run(tmp, images, logits, marginals, B, L, H, W, p);
    pm_crf_ctx_free(tmp);
    return st;
}

int pm_permutohedral_filter(const float *features, const float *values,
                            float *out, int64_t N, int d, int64_t V)
{
    if (N < 1 || d < 1 || d > LAT_MAX_D || V < 1 || !features || !values ||
        !out)
        return PM_ERR_ARG;
    lattice L;
    memset(&L, 0, sizeof L);
    float *va = NULL, *vb = NULL, *w = NULL, *row = NULL;
    size_t vsz = 0;
    const int64_t P = (V + 3) & ~(int64_t)3;
    int st = pm_lattice_build(&L, features, N, d, pm_get_num_threads());
    if (st == PM_OK) st = pm_reserve_vals(&va, &vb, &vsz, L.M, P);
    if (st == PM_OK) {
        w = malloc((size_t)N * (size_t)(d + 1) * sizeof(float));
        row = malloc((size_t)N * (size_t)P * sizeof(float));
        if (!w || !row) st = PM_ERR_NOMEM;
    }
    if (st == PM_OK) {
        const float alpha = pm_lattice_alpha(d);
        for (int64_t e = 0; e < N * (d + 1); e++) w[e] = alpha * L.bary[e];
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = 0; c < P; c++)
                row[i * P + c] = c < V ? values[i * V + c] : 0.0f;
        pm_lattice_splat(&L, L.bary, row, va, 0, N, P);
        const float *res = pm_lattice_blur(&L, va, vb, P);
        pm_lattice_slice(&L, w, res, row, P);
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = 0; c < V; c++) out[i * V + c] = row[i * P + c];
    }
    free(w);
    free(row);
    free(va);
    free(vb);
    pm_lattice_free(&L);
    return st;
}
