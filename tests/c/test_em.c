/* C tests of em.c: every kernel against a direct double-precision
 * computation on explicitly upsampled logits, hand-made pseudo labels,
 * thread invariance and error codes. */
#include "pm_test.h"

#include <string.h>

/* Upsampled logits in double: t (B, K, H, W) from Z (B, K, h, w), with the
 * interpolation tables of resample.c (their values are tested there). */
static double *upsample_ref(const float *Z, int64_t B, int64_t K, int64_t h,
                            int64_t w, int64_t H, int64_t W)
{
    pm_axis_table ty, tx;
    if (pm_axis_table_init(&ty, h, H) != PM_OK) exit(2);
    if (pm_axis_table_init(&tx, w, W) != PM_OK) exit(2);
    double *t = malloc((size_t)(B * K * H * W) * sizeof(double));
    for (int64_t p = 0; p < B * K; p++)
        for (int64_t Y = 0; Y < H; Y++)
            for (int64_t X = 0; X < W; X++) {
                const float *z = Z + p * h * w;
                double r0 = (double)z[ty.i0[Y] * w + tx.i0[X]] * tx.l0[X] +
                            (double)z[ty.i0[Y] * w + tx.i1[X]] * tx.l1[X];
                double r1 = (double)z[ty.i1[Y] * w + tx.i0[X]] * tx.l0[X] +
                            (double)z[ty.i1[Y] * w + tx.i1[X]] * tx.l1[X];
                t[(p * H + Y) * W + X] = r0 * ty.l0[Y] + r1 * ty.l1[Y];
            }
    pm_axis_table_free(&ty);
    pm_axis_table_free(&tx);
    return t;
}

/* Transpose of upsample_ref: g (B, K, H, W) -> out (B, K, h, w). */
static void adjoint_ref(const double *g, int64_t B, int64_t K, int64_t h,
                        int64_t w, int64_t H, int64_t W, double *out)
{
    pm_axis_table ty, tx;
    if (pm_axis_table_init(&ty, h, H) != PM_OK) exit(2);
    if (pm_axis_table_init(&tx, w, W) != PM_OK) exit(2);
    memset(out, 0, (size_t)(B * K * h * w) * sizeof(double));
    for (int64_t p = 0; p < B * K; p++)
        for (int64_t Y = 0; Y < H; Y++)
            for (int64_t X = 0; X < W; X++) {
                const double v = g[(p * H + Y) * W + X];
                double *o = out + p * h * w;
                o[ty.i0[Y] * w + tx.i0[X]] += v * ty.l0[Y] * tx.l0[X];
                o[ty.i0[Y] * w + tx.i1[X]] += v * ty.l0[Y] * tx.l1[X];
                o[ty.i1[Y] * w + tx.i0[X]] += v * ty.l1[Y] * tx.l0[X];
                o[ty.i1[Y] * w + tx.i1[X]] += v * ty.l1[Y] * tx.l1[X];
            }
    pm_axis_table_free(&ty);
    pm_axis_table_free(&tx);
}

/* Softmax over classes of t (B, K, P) in place. */
static void softmax_ref(double *t, int64_t B, int64_t K, int64_t P)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t q = 0; q < P; q++) {
            double m = -1e300, s = 0;
            for (int64_t k = 0; k < K; k++)
                if (t[(b * K + k) * P + q] > m) m = t[(b * K + k) * P + q];
            for (int64_t k = 0; k < K; k++) {
                double *v = &t[(b * K + k) * P + q];
                *v = exp(*v - m);
                s += *v;
            }
            for (int64_t k = 0; k < K; k++) t[(b * K + k) * P + q] /= s;
        }
}

static double max_abs(const double *x, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

static void test_weightnorm(void)
{
    const int64_t K = 3, C = 5;
    float *v = pm_test_alloc_rand((size_t)(K * C));
    float *D = pm_test_alloc_rand((size_t)(K * C));
    float g[3] = {0.5f, -2.0f, 1.5f}, theta[15], dv[15], dg[3];
    for (int64_t c = 0; c < C; c++) v[2 * C + c] = 0.0f; /* a zero row */
    CHECK_STATUS(pm_weightnorm_fwd(v, g, K, C, theta), PM_OK);
    CHECK_STATUS(pm_weightnorm_bwd(v, g, D, K, C, dv, dg), PM_OK);
    for (int64_t k = 0; k < 2; k++) {
        double n = 0;
        for (int64_t c = 0; c < C; c++) n += (double)v[k * C + c] * v[k * C + c];
        n = sqrt(n);
        double dot = 0;
        for (int64_t c = 0; c < C; c++) {
            CHECK_CLOSE(theta[k * C + c], g[k] * v[k * C + c] / n, 1e-6);
            dot += D[k * C + c] * v[k * C + c] / n;
        }
        CHECK_CLOSE(dg[k], dot, 1e-6);
        /* dv is the Jacobian (g/n)(I - u u^T) applied to D */
        for (int64_t c = 0; c < C; c++)
            CHECK_CLOSE(dv[k * C + c],
                        g[k] / n * (D[k * C + c] - dot * v[k * C + c] / n), 1e-5);
    }
    for (int64_t c = 0; c < C; c++) {
        CHECK(theta[2 * C + c] == 0.0f);
        CHECK(dv[2 * C + c] == 0.0f);
    }
    CHECK(dg[2] == 0.0f);
    CHECK_STATUS(pm_weightnorm_fwd(v, g, 0, C, theta), PM_ERR_ARG);
    free(v);
    free(D);
}

static void test_label_kernels(pm_em_ws *ws, int64_t h, int64_t w, int64_t H,
                               int64_t W)
{
    const int64_t B = 2, K = 5;
    float *Z = pm_test_alloc_rand((size_t)(B * K * h * w));
    for (int64_t i = 0; i < B * K * h * w; i++) Z[i] *= 4.0f;
    uint8_t *y = malloc((size_t)(B * H * W));
    for (int64_t i = 0; i < B * H * W; i++)
        y[i] = (i % 7 == 3) ? PM_IGNORE : (uint8_t)((i * 2654435761u >> 7) % K);
    const float wt[5] = {0.3f, 1.0f, 0.7f, 2.0f, 0.1f};
    const double scale = 1.0 / (double)(B * H * W);
    double chi[5], loss = 0, loss_f = 0;
    float *dZ = malloc((size_t)(B * K * h * w) * sizeof(float));
    int32_t *arg = malloc((size_t)(B * H * W) * sizeof(int32_t));
    CHECK_STATUS(pm_label_softmax_mean(ws, Z, B, K, h, w, H, W, chi), PM_OK);
    CHECK_STATUS(pm_label_ce_bwd(ws, Z, y, NULL, NULL, B, wt, scale, B, K, h, w,
                                 H, W, &loss, dZ),
                 PM_OK);
    CHECK_STATUS(pm_label_ce_fwd(ws, Z, y, NULL, NULL, B, wt, scale, B, K, h, w,
                                 H, W, &loss_f),
                 PM_OK);
    CHECK_STATUS(pm_label_argmax(ws, Z, B, K, h, w, H, W, arg), PM_OK);
    CHECK(loss_f == loss);

    const int64_t P = H * W;
    double *t = upsample_ref(Z, B, K, h, w, H, W);
    double *up = malloc((size_t)(B * K * P) * sizeof(double));
    memcpy(up, t, (size_t)(B * K * P) * sizeof(double));
    softmax_ref(t, B, K, P);
    double rchi[5] = {0}, rloss = 0;
    double *g = calloc((size_t)(B * K * P), sizeof(double));
    double *rdZ = malloc((size_t)(B * K * h * w) * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t q = 0; q < P; q++) {
            const int lab = y[b * P + q];
            int best = 0;
            for (int64_t k = 0; k < K; k++) {
                rchi[k] += t[(b * K + k) * P + q] / (double)(B * P);
                if (up[(b * K + k) * P + q] > up[(b * K + best) * P + q])
                    best = (int)k;
            }
            (void)best;
            if (lab == PM_IGNORE) continue;
            rloss -= scale * wt[lab] * log(t[(b * K + lab) * P + q]);
            for (int64_t k = 0; k < K; k++)
                g[(b * K + k) * P + q] =
                    scale * wt[lab] * (t[(b * K + k) * P + q] - (k == lab));
        }
    adjoint_ref(g, B, K, h, w, H, W, rdZ);
    for (int64_t k = 0; k < K; k++) CHECK_CLOSE(chi[k], rchi[k], 1e-5);
    CHECK_CLOSE(loss, rloss, 1e-5);
    const double gmax = max_abs(rdZ, B * K * h * w);
    int close = 1;
    for (int64_t i = 0; i < B * K * h * w; i++)
        close &= fabs(dZ[i] - rdZ[i]) <= 1e-4 * gmax;
    CHECK(close);
    /* the argmax is that of the float upsampling of resample.c, bitwise */
    float *upf = malloc((size_t)(B * K * P) * sizeof(float));
    CHECK_STATUS(pm_upsample_bilinear(Z, upf, B * K, h, w, H, W), PM_OK);
    int same = 1;
    for (int64_t b = 0; b < B; b++)
        for (int64_t q = 0; q < P; q++) {
            int best = 0;
            for (int64_t k = 1; k < K; k++)
                if (upf[(b * K + k) * P + q] > upf[(b * K + best) * P + q])
                    best = (int)k;
            same &= arg[b * P + q] == best;
        }
    CHECK(same);
    /* a label that is neither a class nor ignore */
    y[5] = (uint8_t)K;
    CHECK_STATUS(pm_label_ce_fwd(ws, Z, y, NULL, NULL, B, wt, scale, B, K, h, w,
                                 H, W, &loss),
                 PM_ERR_ARG);
    free(Z);
    free(y);
    free(dZ);
    free(arg);
    free(t);
    free(up);
    free(g);
    free(rdZ);
    free(upf);
}

static void test_pseudo_labels(pm_em_ws *ws)
{
    /* 1 image, C = 2, K = 3, 2 x 4 features upsampled to 4 x 8; class k
     * wins where feature k is large. */
    const int64_t C = 2, K = 3, h = 2, w = 4, H = 4, W = 8;
    float F[16] = {0};
    for (int64_t x = 0; x < w; x++) {
        F[0 * h * w + 0 * w + x] = x < 2 ? 5.0f : 0.0f; /* class 0 left, top */
        F[1 * h * w + 0 * w + x] = x < 2 ? 0.0f : 5.0f; /* class 1 right, top */
        F[0 * h * w + 1 * w + x] = -5.0f;               /* bottom: class 2 */
        F[1 * h * w + 1 * w + x] = -5.0f;
    }
    const float theta[6] = {1, 0, 0, 1, -1, -1};
    int32_t masks[32];
    for (int64_t Y = 0; Y < H; Y++)
        for (int64_t X = 0; X < W; X++)
            masks[Y * W + X] = Y < 2 ? (X < 5 ? 4 : 9) : 0;
    uint8_t out[32];
    pm_batch bt = {F, NULL, masks, NULL, NULL, NULL, 1, 1, C, h, w, H, W, NULL, NULL};
    CHECK_STATUS(pm_teacher_pseudo(ws, &bt, theta, K, out), PM_OK);
    for (int64_t Y = 0; Y < H; Y++)
        for (int64_t X = 0; X < W; X++) {
            const uint8_t want = Y < 2 ? (X < 5 ? 0 : 1) : PM_IGNORE;
            CHECK(out[Y * W + X] == want);
        }
    /* mirrored: the same labels, mirrored */
    const uint8_t flip = 1;
    float Fm[16];
    int32_t Mm[32];
    for (int64_t c = 0; c < C * h; c++)
        for (int64_t x = 0; x < w; x++) Fm[c * w + x] = F[c * w + w - 1 - x];
    for (int64_t Y = 0; Y < H; Y++)
        for (int64_t X = 0; X < W; X++) Mm[Y * W + X] = masks[Y * W + W - 1 - X];
    uint8_t a[32], b[32];
    pm_batch bf = {Fm, NULL, Mm, NULL, NULL, &flip, 1, 1, C, h, w, H, W, NULL, NULL};
    CHECK_STATUS(pm_teacher_pseudo(ws, &bf, theta, K, a), PM_OK);
    bf.flip = NULL;
    CHECK_STATUS(pm_teacher_pseudo(ws, &bf, theta, K, b), PM_OK);
    for (int64_t Y = 0; Y < H; Y++)
        for (int64_t X = 0; X < W; X++) CHECK(a[Y * W + X] == b[Y * W + W - 1 - X]);
    masks[3] = -1;
    CHECK_STATUS(pm_teacher_pseudo(ws, &bt, theta, K, out), PM_ERR_ARG);
    masks[3] = PM_MAX_MASK_ID + 1;
    CHECK_STATUS(pm_teacher_pseudo(ws, &bt, theta, K, out), PM_ERR_ARG);
}

static void test_kmeans(pm_em_ws *ws)
{
    const int64_t B = 2, C = 6, h = 3, w = 4, N = h * w, K = 3;
    float *F = pm_test_alloc_rand((size_t)(B * C * N));
    for (int64_t c = 0; c < C; c++) F[c * N + 5] = 0.0f; /* a zero pixel */
    float *v = pm_test_alloc_rand((size_t)(K * C));
    float dv[18];
    double loss = 0, loss_f = 0;
    pm_batch bt = {F, NULL, NULL, NULL, NULL, NULL, B, B, C, h, w, 1, 1, NULL, NULL};
    CHECK_STATUS(pm_kmeans_bwd(ws, &bt, v, K, &loss, dv), PM_OK);
    CHECK_STATUS(pm_kmeans_fwd(ws, &bt, v, K, &loss_f), PM_OK);
    CHECK(loss == loss_f);
    double u[18], du[18] = {0}, rloss = 0;
    for (int64_t k = 0; k < K; k++) {
        double n = 0;
        for (int64_t c = 0; c < C; c++) n += (double)v[k * C + c] * v[k * C + c];
        for (int64_t c = 0; c < C; c++) u[k * C + c] = v[k * C + c] / sqrt(n);
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t q = 0; q < N; q++) {
            double n = 0;
            for (int64_t c = 0; c < C; c++)
                n += (double)F[(b * C + c) * N + q] * F[(b * C + c) * N + q];
            n = sqrt(n);
            if (n == 0) continue;
            int best = 0;
            double bv = -2;
            for (int64_t k = 0; k < K; k++) {
                double s = 0;
                for (int64_t c = 0; c < C; c++)
                    s += u[k * C + c] * F[(b * C + c) * N + q] / n;
                if (s > bv) {
                    bv = s;
                    best = (int)k;
                }
            }
            rloss -= bv / (double)(B * N);
            for (int64_t c = 0; c < C; c++)
                du[best * C + c] -= F[(b * C + c) * N + q] / n / (double)(B * N);
        }
    CHECK_CLOSE(loss, rloss, 1e-5);
    for (int64_t k = 0; k < K; k++) {
        double n = 0, dot = 0;
        for (int64_t c = 0; c < C; c++) n += (double)v[k * C + c] * v[k * C + c];
        n = sqrt(n);
        for (int64_t c = 0; c < C; c++) dot += du[k * C + c] * u[k * C + c];
        for (int64_t c = 0; c < C; c++)
            CHECK_CLOSE(dv[k * C + c], (du[k * C + c] - dot * u[k * C + c]) / n,
                        1e-4);
    }
    F[7] = NAN;
    CHECK_STATUS(pm_kmeans_fwd(ws, &bt, v, K, &loss), PM_ERR_NONFINITE);
    free(F);
    free(v);
}

/* The EM step and the probe give the same bits for 1, 2 and 3 threads. */
static void test_thread_invariance(pm_em_ws *ws)
{
    const int64_t n = 5, B = 4, C = 12, h = 5, w = 7, H = 140, W = 45, K = 6;
    float *F = pm_test_alloc_rand((size_t)(n * C * h * w));
    float *v = pm_test_alloc_rand((size_t)(K * C));
    float g[6] = {1, 0.5f, 2, 1, 1.5f, 0.7f}, dv[3][72], dg[3][6];
    int32_t *masks = malloc((size_t)(n * H * W) * sizeof(int32_t));
    uint8_t *labels = malloc((size_t)(n * H * W));
    for (int64_t i = 0; i < n * H * W; i++) {
        masks[i] = (int32_t)((i / 17) % 5);
        labels[i] = (uint8_t)((i / 13) % K);
    }
    const int64_t index[4] = {3, 0, 4, 0};
    const uint8_t flip[4] = {1, 0, 0, 1};
    pm_batch bt = {F, NULL, masks, labels, index, flip, n, B, C, h, w, H, W, NULL, NULL};
    double chi[3][6], loss[3], ploss[3];
    float dW[3][72], db[3][6];
    uint8_t *pseudo[3];
    for (int t = 0; t < 3; t++) {
        pseudo[t] = malloc((size_t)(B * H * W));
        pm_set_num_threads(t + 1);
        CHECK_STATUS(pm_em_step(ws, &bt, v, g, v, g, K, 2.0, chi[t], &loss[t],
                                dv[t], dg[t], pseudo[t]),
                     PM_OK);
        CHECK_STATUS(pm_probe_bwd(ws, &bt, v, g, K, &ploss[t], dW[t], db[t]),
                     PM_OK);
    }
    for (int t = 1; t < 3; t++) {
        CHECK(loss[t] == loss[0] && ploss[t] == ploss[0]);
        CHECK(memcmp(chi[t], chi[0], sizeof chi[0]) == 0);
        CHECK(memcmp(dv[t], dv[0], sizeof dv[0]) == 0);
        CHECK(memcmp(dg[t], dg[0], sizeof dg[0]) == 0);
        CHECK(memcmp(dW[t], dW[0], sizeof dW[0]) == 0);
        CHECK(memcmp(db[t], db[0], sizeof db[0]) == 0);
        CHECK(memcmp(pseudo[t], pseudo[0], (size_t)(B * H * W)) == 0);
    }
    pm_set_num_threads(2);
    CHECK(pm_em_ws_bytes(ws) > 0);
    /* bad arguments */
    const int64_t bad_index[4] = {3, 0, 5, 0};
    pm_batch bb = bt;
    bb.index = bad_index;
    CHECK_STATUS(pm_em_step(ws, &bb, v, g, v, g, K, 2.0, chi[0], &loss[0], dv[0],
                            dg[0], NULL),
                 PM_ERR_ARG);
    CHECK_STATUS(pm_em_step(ws, &bt, v, g, v, g, 256, 2.0, chi[0], &loss[0],
                            dv[0], dg[0], NULL),
                 PM_ERR_ARG);
    CHECK_STATUS(pm_em_step(ws, &bt, v, g, v, g, K, -1.0, chi[0], &loss[0],
                            dv[0], dg[0], NULL),
                 PM_ERR_ARG);
    for (int t = 0; t < 3; t++) free(pseudo[t]);
    free(F);
    free(v);
    free(masks);
    free(labels);
}

int main(void)
{
    pm_em_ws *ws = NULL;
    CHECK_STATUS(pm_em_ws_create(&ws), PM_OK);
    CHECK_STATUS(pm_em_ws_create(NULL), PM_ERR_ARG);
    test_weightnorm();
    test_label_kernels(ws, 5, 7, 20, 28);
    test_label_kernels(ws, 3, 5, 7, 11);
    test_label_kernels(ws, 9, 6, 4, 3);
    test_label_kernels(ws, 1, 1, 3, 2);
    test_label_kernels(ws, 4, 6, 130, 70); /* several bands and segments */
    test_pseudo_labels(ws);
    test_kmeans(ws);
    test_thread_invariance(ws);
    pm_em_ws_free(ws);
    pm_em_ws_free(NULL);
    return pm_test_report("test_em");
}
