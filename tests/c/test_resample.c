/* C tests of normalize.c, resample.c and runtime.c. */
#include "pm_test.h"

#include <string.h>

/* The 1-D weight of source index i for output index o (a dense reference
 * built from the table, checked against hand-computed values below). */
static void dense_axis(int64_t in, int64_t out, double *A)
{
    pm_axis_table t;
    memset(A, 0, (size_t)(in * out) * sizeof(double));
    if (pm_axis_table_init(&t, in, out) != PM_OK) exit(2);
    for (int64_t o = 0; o < out; o++) {
        A[o * in + t.i0[o]] += t.l0[o];
        A[o * in + t.i1[o]] += t.l1[o];
    }
    pm_axis_table_free(&t);
}

static void test_axis_table(void)
{
    pm_axis_table t;
    /* 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 */
    CHECK_STATUS(pm_axis_table_init(&t, 2, 4), PM_OK);
    CHECK(t.i0[0] == 0 && t.i1[0] == 1);
    CHECK_CLOSE(t.l1[0], 0.0, 1e-7);
    CHECK_CLOSE(t.l1[1], 0.25, 1e-7);
    CHECK_CLOSE(t.l1[2], 0.75, 1e-7);
    CHECK(t.i0[3] == 1 && t.i1[3] == 1); /* clamped at the edge */
    for (int o = 0; o < 4; o++) CHECK_CLOSE(t.l0[o] + t.l1[o], 1.0, 1e-7);
    pm_axis_table_free(&t);
    CHECK_STATUS(pm_axis_table_init(&t, 0, 4), PM_ERR_ARG);
    CHECK_STATUS(pm_axis_table_init(&t, 4, 0), PM_ERR_ARG);
    /* (size_t)out * 2 * 8 wrapped around for out = 2^62: refused now */
    CHECK_STATUS(pm_axis_table_init(&t, 4, (int64_t)1 << 62), PM_ERR_ARG);
    CHECK_STATUS(pm_axis_table_init(&t, PM_MAX_SIDE + 1, 4), PM_ERR_ARG);
}

static void test_upsample_and_adjoint(int64_t h, int64_t w, int64_t H,
                                      int64_t W)
{
    const int64_t P = 3;
    float *x = pm_test_alloc_rand((size_t)(P * h * w));
    float *y = pm_test_alloc_rand((size_t)(P * H * W));
    float *up = malloc((size_t)(P * H * W) * sizeof(float));
    float *adj = malloc((size_t)(P * h * w) * sizeof(float));
    double *Ay = malloc((size_t)(H * h) * sizeof(double));
    double *Ax = malloc((size_t)(W * w) * sizeof(double));
    dense_axis(h, H, Ay);
    dense_axis(w, W, Ax);
    CHECK_STATUS(pm_upsample_bilinear(x, up, P, h, w, H, W), PM_OK);
    CHECK_STATUS(pm_upsample_bilinear_adjoint(y, adj, P, h, w, H, W), PM_OK);
    double lhs = 0, rhs = 0, scale = 0;
    for (int64_t p = 0; p < P; p++) {
        for (int64_t Y = 0; Y < H; Y++)
            for (int64_t X = 0; X < W; X++) {
                double ref = 0;
                for (int64_t yy = 0; yy < h; yy++)
                    for (int64_t xx = 0; xx < w; xx++)
                        ref += Ay[Y * h + yy] * Ax[X * w + xx] *
                               x[(p * h + yy) * w + xx];
                CHECK_CLOSE(up[(p * H + Y) * W + X], ref, 1e-5);
                lhs += (double)up[(p * H + Y) * W + X] * y[(p * H + Y) * W + X];
                scale += fabs((double)up[(p * H + Y) * W + X] *
                              y[(p * H + Y) * W + X]);
            }
        for (int64_t i = 0; i < h * w; i++)
            rhs += (double)x[p * h * w + i] * adj[p * h * w + i];
    }
    CHECK(fabs(lhs - rhs) <= 1e-5 * (scale + 1.0));
    free(x);
    free(y);
    free(up);
    free(adj);
    free(Ay);
    free(Ax);
}

static void test_normalize(void)
{
    const int64_t B = 2, C = 5, n = 1037; /* crosses a task boundary */
    float *x = pm_test_alloc_rand((size_t)(B * C * n));
    float *out = malloc((size_t)(B * C * n) * sizeof(float));
    for (int64_t c = 0; c < C; c++) x[(1 * C + c) * n + 7] = 0.0f;
    CHECK_STATUS(pm_l2_normalize(x, out, B, C, n), PM_OK);
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < n; p++) {
            double s = 0;
            for (int64_t c = 0; c < C; c++) {
                double v = out[(b * C + c) * n + p];
                s += v * v;
            }
            if (b == 1 && p == 7)
                CHECK(s == 0.0);
            else
                CHECK_CLOSE(s, 1.0, 1e-6);
        }
    /* in place */
    CHECK_STATUS(pm_l2_normalize(x, x, B, C, n), PM_OK);
    CHECK(memcmp(x, out, (size_t)(B * C * n) * sizeof(float)) == 0);
    x[3] = NAN;
    CHECK_STATUS(pm_l2_normalize(x, out, B, C, n), PM_ERR_NONFINITE);
    x[3] = INFINITY;
    CHECK_STATUS(pm_l2_normalize(x, out, B, C, n), PM_ERR_NONFINITE);
    CHECK_STATUS(pm_l2_normalize(x, out, -1, C, n), PM_ERR_ARG);
    CHECK_STATUS(pm_l2_normalize(x, out, 0, C, n), PM_OK);
    free(x);
    free(out);
}

static void test_threads_and_info(void)
{
    CHECK_STATUS(pm_set_num_threads(0), PM_ERR_ARG);
    CHECK_STATUS(pm_set_num_threads(3), PM_OK);
    CHECK(pm_get_num_threads() == 3);
    pm_build_info bi;
    CHECK_STATUS(pm_get_build_info(&bi), PM_OK);
    CHECK(bi.onednn_major == 3);
    CHECK(bi.openblas_threads == 1);
    CHECK(strstr(bi.openblas_config, "OpenBLAS") != NULL);
    CHECK_STATUS(pm_get_build_info(NULL), PM_ERR_ARG);
    CHECK_STATUS(pm_set_num_threads(2), PM_OK);
}

static void test_thread_invariance(void)
{
    const int64_t P = 5, h = 7, w = 9, H = 31, W = 29;
    float *x = pm_test_alloc_rand((size_t)(P * h * w));
    float *g = pm_test_alloc_rand((size_t)(P * H * W));
    float *a1 = malloc((size_t)(P * H * W) * sizeof(float));
    float *a2 = malloc((size_t)(P * H * W) * sizeof(float));
    float *b1 = malloc((size_t)(P * h * w) * sizeof(float));
    float *b2 = malloc((size_t)(P * h * w) * sizeof(float));
    pm_set_num_threads(1);
    pm_upsample_bilinear(x, a1, P, h, w, H, W);
    pm_upsample_bilinear_adjoint(g, b1, P, h, w, H, W);
    pm_set_num_threads(4);
    pm_upsample_bilinear(x, a2, P, h, w, H, W);
    pm_upsample_bilinear_adjoint(g, b2, P, h, w, H, W);
    CHECK(memcmp(a1, a2, (size_t)(P * H * W) * sizeof(float)) == 0);
    CHECK(memcmp(b1, b2, (size_t)(P * h * w) * sizeof(float)) == 0);
    pm_set_num_threads(2);
    free(x);
    free(g);
    free(a1);
    free(a2);
    free(b1);
    free(b2);
}

int main(void)
{
    test_axis_table();
    test_upsample_and_adjoint(5, 7, 20, 28);
    test_upsample_and_adjoint(3, 5, 7, 11);
    test_upsample_and_adjoint(9, 6, 4, 3);
    test_upsample_and_adjoint(1, 1, 3, 2);
    test_upsample_and_adjoint(1, 6, 3, 13);
    CHECK_STATUS(pm_upsample_bilinear(NULL, NULL, 1, 0, 2, 3, 3), PM_ERR_ARG);
    test_normalize();
    test_threads_and_info();
    test_thread_invariance();
    return pm_test_report("test_resample");
}
