/*
 * em_dnnl.c -- the EM workspace and its oneDNN matmuls: one cached
 * primitive per shape, run one image per task inside our thread pool, with
 * the per-image work (mirroring flipped images, bias, finiteness check)
 * done on the image's own data; and on top of it the logits at feature
 * resolution, Z[b] = theta F[b] (+ bias), with their backward pass.
 *
 * Determinism.  oneDNN primitives are created for one thread and executed
 * one image per task; per-image weight gradients are summed in image
 * order, so the results are the same bits for any thread count.
 * The derivation of what is computed: docs/method.md, section 1.2.
 */
#define _POSIX_C_SOURCE 200809L

#include "em_internal.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DNNL_TRY(call)                                                      \
    do {                                                                    \
        if ((call) != dnnl_success) {                                       \
            st = PM_ERR_DNNL;                                               \
            goto done;                                                      \
        }                                                                   \
    } while (0)

/* ======================================================================== */
/* Workspace                                                                */
/* ======================================================================== */

int pm_em_reserve(pm_buf *b, size_t bytes)
{
    if (bytes == 0) bytes = 64;
    if (b->cap >= bytes) return PM_OK;
    free(b->p);
    b->p = NULL;
    b->cap = 0;
    bytes = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&b->p, 64, bytes) != 0) {
        b->p = NULL;
        return PM_ERR_NOMEM;
    }
    b->cap = bytes;
    return PM_OK;
}

int pm_em_ws_create(pm_em_ws **out)
{
    if (!out) return PM_ERR_ARG;
    *out = NULL;
    pm_em_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return PM_ERR_NOMEM;
    if (pthread_mutex_init(&ws->lock, NULL) != 0) {
        free(ws);
        return PM_ERR_INTERNAL;
    }
    if (dnnl_engine_create(&ws->engine, dnnl_cpu, 0) != dnnl_success) {
        pthread_mutex_destroy(&ws->lock);
        free(ws);
        return PM_ERR_DNNL;
    }
    *out = ws;
    return PM_OK;
}

static void mm_entry_clear(mm_entry *e)
{
    if (e->prim) dnnl_primitive_destroy(e->prim);
    if (e->pd) dnnl_primitive_desc_destroy(e->pd);
    memset(e, 0, sizeof *e);
}

void pm_em_ws_free(pm_em_ws *ws)
{
    if (!ws) return;
    for (int i = 0; i < ws->n_mm; i++) mm_entry_clear(&ws->mm[i]);
    pm_buf *bufs[] = {&ws->z,     &ws->dz,      &ws->pseudo,
                      &ws->part,  &ws->dpart,   &ws->thread,
                      &ws->scratch, &ws->small, &ws->maps, &ws->wide};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]->p);
    dnnl_engine_destroy(ws->engine);
    pthread_mutex_destroy(&ws->lock);
    free(ws);
}

void pm_em_ws_lock(pm_em_ws *ws) { pthread_mutex_lock(&ws->lock); }
void pm_em_ws_unlock(pm_em_ws *ws) { pthread_mutex_unlock(&ws->lock); }

size_t pm_em_ws_bytes(const pm_em_ws *ws)
{
    if (!ws) return 0;
    return ws->z.cap + ws->dz.cap + ws->pseudo.cap + ws->part.cap +
           ws->dpart.cap + ws->thread.cap + ws->scratch.cap + ws->small.cap +
           ws->maps.cap + ws->wide.cap;
}

int pm_em_batch_widen(pm_em_ws *ws, pm_batch *bt)
{
    if (!ws || !bt) return PM_ERR_ARG;
    if (!bt->features16 && !bt->student16) return PM_OK;
    if (bt->index || bt->n < 0 || bt->C < 0 || bt->h < 0 || bt->w < 0)
        return PM_ERR_ARG;
    const int64_t count = bt->n * bt->C * bt->h * bt->w;
    const int two = bt->features16 && bt->student16;
    int st = pm_em_reserve(&ws->wide, (size_t)(count * (two ? 2 : 1)) * sizeof(float));
    if (st != PM_OK) return st;
    float *dst = ws->wide.p;
    const uint16_t **half[2] = {&bt->features16, &bt->student16};
    const float **wide[2] = {&bt->features, &bt->student};
    for (int i = 0; i < 2; i++) {
        if (!*half[i]) continue;
        st = pm_half_to_float(*half[i], dst, count);
        if (st != PM_OK) return st;
        *wide[i] = dst;
        *half[i] = NULL;
        dst += count;
    }
    return PM_OK;
}

/* ======================================================================== */
/* oneDNN matmul, one image per task                                        */
/* ======================================================================== */

/* The primitive for dst (M x N) = src (M x Kd) . wei (Kd x N), all f32 and
 * row-major, wei optionally stored transposed; created once per shape.  It
 * is created while the calling thread's pool size is 1, so that oneDNN
 * plans it for one thread (no split of the reduction): it then runs inside
 * our parallel loops, one image per task, and computes the same bits
 * whatever the pool size. */
static int mm_get(pm_em_ws *ws, int trans_b, int64_t M, int64_t Kd, int64_t N,
                  mm_entry **out)
{
    for (int i = 0; i < ws->n_mm; i++) {
        mm_entry *e = &ws->mm[i];
        if (e->trans_b == trans_b && e->M == M && e->Kd == Kd && e->N == N) {
            *out = e;
            return PM_OK;
        }
    }
    mm_entry *e;
    if (ws->n_mm < PM_MM_CACHE) {
        e = &ws->mm[ws->n_mm++];
    } else {
        e = &ws->mm[ws->evict];
        ws->evict = (ws->evict + 1) % PM_MM_CACHE;
        mm_entry_clear(e);
    }
    int st = PM_OK;
    dnnl_memory_desc_t src = NULL, wei = NULL, dst = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_dims_t ds = {M, Kd}, dw = {Kd, N}, dd = {M, N};
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&src, 2, ds, dnnl_f32, dnnl_ab));
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&wei, 2, dw, dnnl_f32,
                                              trans_b ? dnnl_ba : dnnl_ab));
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&dst, 2, dd, dnnl_f32, dnnl_ab));
    DNNL_TRY(dnnl_primitive_attr_create(&attr));
    DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr,
                                                     dnnl_scratchpad_mode_user));
    DNNL_TRY(dnnl_matmul_primitive_desc_create(&e->pd, ws->engine, src, wei,
                                               NULL, dst, attr));
    DNNL_TRY(dnnl_primitive_create(&e->prim, e->pd));
    e->scratch = dnnl_memory_desc_get_size(
        dnnl_primitive_desc_query_md(e->pd, dnnl_query_scratchpad_md, 0));
    e->trans_b = trans_b;
    e->M = M;
    e->Kd = Kd;
    e->N = N;
done:
    omp_set_num_threads(saved);
    if (src) dnnl_memory_desc_destroy(src);
    if (wei) dnnl_memory_desc_destroy(wei);
    if (dst) dnnl_memory_desc_destroy(dst);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (st != PM_OK) {
        mm_entry_clear(e);
        ws->n_mm--;
        if (e != &ws->mm[ws->n_mm]) { /* keep the table dense */
            *e = ws->mm[ws->n_mm];
            memset(&ws->mm[ws->n_mm], 0, sizeof(mm_entry));
        }
        return st;
    }
    *out = e;
    return PM_OK;
}

/* No NaN or inf in x: an all-ones exponent field marks both. */
static int all_finite(const float *x, int64_t n)
{
    uint32_t hit = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        hit |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return !hit;
}

static void mirror_rows(float *p, int64_t rows, int64_t w)
{
    for (int64_t r = 0; r < rows; r++) {
        float *row = p + r * w;
        for (int64_t x = 0; x < w / 2; x++) {
            const float t = row[x];
            row[x] = row[w - 1 - x];
            row[w - 1 - x] = t;
        }
    }
}

/* Work done inside a matmul task, on the image's own data: before the
 * product, mirror A_i's rows of width w (a gradient, back to the image's
 * frame); after it, add a bias per row of C_i, mirror its rows and check
 * that it is finite. */
typedef struct {
    const float *bias;   /* post: C_i[r] += bias[r], or NULL */
    const uint8_t *flip; /* images to mirror, or NULL */
    int64_t planes, h, w; /* A_i (pre) or C_i (post): planes x h x w */
    int pre, post;
} mm_hook;

/* C_i = A_i . B_i for i < count, where A_i = a + i * a_step,
 * B_i = b + row(i) * b_step with row(i) = index ? index[i] : i, and
 * C_i = c + i * c_step.  One task per i. */
static int mm_run(pm_em_ws *ws, const mm_entry *e, int64_t count,
                  const float *a, int64_t a_step, const float *b,
                  const int64_t *index, int64_t b_step, float *c,
                  int64_t c_step, const mm_hook *hk)
{
    if (count <= 0) return PM_OK;
    int nt = pm_get_num_threads();
    if (nt > count) nt = (int)count;
    const size_t sp = (e->scratch + 63) & ~(size_t)63;
    int st = pm_em_reserve(&ws->scratch, sp * (size_t)nt);
    if (st != PM_OK) return st;
    int status = PM_OK, nonfinite = 0;
#pragma omp parallel num_threads(nt)
    {
        /* oneDNN sees a pool of one inside our tasks. */
        omp_set_num_threads(1);
        const int tid = omp_get_thread_num();
        dnnl_stream_t stream = NULL;
        dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL;
        int ok =
            dnnl_stream_create(&stream, ws->engine, dnnl_stream_default_flags) ==
                dnnl_success &&
            dnnl_memory_create(&ma,
                               dnnl_primitive_desc_query_md(
                                   e->pd, dnnl_query_src_md, 0),
                               ws->engine, DNNL_MEMORY_NONE) == dnnl_success &&
            dnnl_memory_create(&mb,
                               dnnl_primitive_desc_query_md(
                                   e->pd, dnnl_query_weights_md, 0),
                               ws->engine, DNNL_MEMORY_NONE) == dnnl_success &&
            dnnl_memory_create(&mc,
                               dnnl_primitive_desc_query_md(
                                   e->pd, dnnl_query_dst_md, 0),
                               ws->engine, DNNL_MEMORY_NONE) == dnnl_success;
        if (ok && e->scratch > 0)
            ok = dnnl_memory_create(
                     &ms,
                     dnnl_primitive_desc_query_md(e->pd,
                                                  dnnl_query_scratchpad_md, 0),
                     ws->engine,
                     (char *)ws->scratch.p + (size_t)tid * sp) == dnnl_success;
        if (!ok) {
#pragma omp atomic write
            status = PM_ERR_DNNL;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < count; i++) {
            if (!ok) continue;
            const int64_t row = index ? index[i] : i;
            const int mirror = hk && hk->flip && hk->flip[i];
            const int64_t plane = hk ? hk->h * hk->w : 0;
            if (hk && hk->pre && mirror)
                mirror_rows((float *)(a + i * a_step), hk->planes * hk->h, hk->w);
            dnnl_exec_arg_t args[4] = {
                {DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc},
                {DNNL_ARG_SCRATCHPAD, ms}};
            if (dnnl_memory_set_data_handle(ma, (void *)(a + i * a_step)) !=
                    dnnl_success ||
                dnnl_memory_set_data_handle(mb, (void *)(b + row * b_step)) !=
                    dnnl_success ||
                dnnl_memory_set_data_handle(mc, (void *)(c + i * c_step)) !=
                    dnnl_success ||
                dnnl_primitive_execute(e->prim, stream, ms ? 4 : 3, args) !=
                    dnnl_success ||
                dnnl_stream_wait(stream) != dnnl_success) {
                ok = 0;
#pragma omp atomic write
                status = PM_ERR_DNNL;
                continue;
            }
            if (hk && hk->post) {
                float *ci = c + i * c_step;
                if (hk->bias)
                    for (int64_t r = 0; r < hk->planes; r++)
                        for (int64_t q = 0; q < plane; q++)
                            ci[r * plane + q] += hk->bias[r];
                if (mirror) mirror_rows(ci, hk->planes * hk->h, hk->w);
                /* A NaN or inf among the features reaches the logits. */
                if (!all_finite(ci, hk->planes * plane)) {
#pragma omp atomic write
                    nonfinite = 1;
                }
            }
        }
        if (ms) dnnl_memory_destroy(ms);
        if (mc) dnnl_memory_destroy(mc);
        if (mb) dnnl_memory_destroy(mb);
        if (ma) dnnl_memory_destroy(ma);
        if (stream) dnnl_stream_destroy(stream);
    }
    if (status == PM_OK && nonfinite) status = PM_ERR_NONFINITE;
    return status;
}

/* ======================================================================== */
/* Logits at feature resolution                                             */
/* ======================================================================== */

int pm_em_batch_ok(const pm_batch *bt, const float *F, int64_t K)
{
    if (!bt || !F || K < 1 || K > 255) return 0;
    if (bt->B < 1 || bt->C < 1 || bt->h < 1 || bt->w < 1 || bt->n < 1)
        return 0;
    if (!bt->index && bt->B > bt->n) return 0;
    if (bt->index)
        for (int64_t b = 0; b < bt->B; b++)
            if (bt->index[b] < 0 || bt->index[b] >= bt->n) return 0;
    return 1;
}

int pm_logits_fwd(pm_em_ws *ws, const pm_batch *bt, const float *F,
                  const float *theta, const float *bias, int64_t K, float *Z)
{
    if (!ws || !theta || !Z || !pm_em_batch_ok(bt, F, K)) return PM_ERR_ARG;
    const int64_t B = bt->B, C = bt->C, N = bt->h * bt->w;
    mm_entry *e;
    int st = mm_get(ws, 0, K, C, N, &e);
    if (st != PM_OK) return st;
    const mm_hook hk = {bias, bt->flip, K, bt->h, bt->w, 0, 1};
    return mm_run(ws, e, B, theta, 0, F, bt->index, C * N, Z, K * N, &hk);
}

/*
 * Backward of Z[b]_kq = sum_c theta_kc F[b]_cq + bias_k (q a pixel), with Z
 * mirrored where flip[b] is set (a permutation P_b of the pixels):
 *   d loss / d theta_kc = sum_b sum_q (P_b^T dZ[b])_kq F[b]_cq
 *                       = sum_b (P_b^T dZ[b] F[b]^T)_kc
 *   d loss / d bias_k   = sum_b sum_q dZ[b]_kq
 * (P_b^T is P_b: a mirror is its own inverse; a sum over pixels does not
 * depend on their order).
 */
int pm_logits_bwd(pm_em_ws *ws, const pm_batch *bt, const float *F,
                  float *dZ, int64_t K, float *dtheta, float *dbias)
{
    if (!ws || !dZ || !dtheta || !pm_em_batch_ok(bt, F, K)) return PM_ERR_ARG;
    const int64_t B = bt->B, C = bt->C, N = bt->h * bt->w;
    int st = pm_em_reserve(&ws->dpart, (size_t)(B * K * C) * sizeof(float));
    if (st == PM_OK)
        st = pm_em_reserve(&ws->part, (size_t)(K * C) * sizeof(double));
    if (st != PM_OK) return st;
    float *part = ws->dpart.p;
    double *acc = ws->part.p;
    mm_entry *e;
    /* dtheta_b (K x C) = dZ_b (K x N) . F_b^T, F_b^T read as (N x C) "ba";
     * dZ_b is mirrored back to the image's frame first. */
    st = mm_get(ws, 1, K, N, C, &e);
    if (st != PM_OK) return st;
    const mm_hook hk = {NULL, bt->flip, K, bt->h, bt->w, 1, 0};
    st = mm_run(ws, e, B, dZ, K * N, F, bt->index, C * N, part, K * C, &hk);
    if (st != PM_OK) return st;
    /* the images' shares summed in image order */
    for (int64_t i = 0; i < K * C; i++) acc[i] = 0.0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < K * C; i++) acc[i] += part[b * K * C + i];
    for (int64_t i = 0; i < K * C; i++) dtheta[i] = (float)acc[i];
    if (dbias) {
        for (int64_t k = 0; k < K; k++) {
            double s = 0.0;
            for (int64_t b = 0; b < B; b++) {
                const float *d = dZ + (b * K + k) * N;
                double sb = 0.0;
                for (int64_t p = 0; p < N; p++) sb += d[p];
                s += sb;
            }
            dbias[k] = (float)s;
        }
    }
    return PM_OK;
}
