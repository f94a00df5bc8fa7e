/* C tests of crf.c: the dense CRF and the permutohedral filter. */
#include "pm_test.h"

#include <string.h>

/* Exact mean-field in double with dense Gaussian kernels, one image of
 * N = H * W pixels (the twin of tests/twins/crf.py, small N only). */
static void exact_crf(const uint8_t *img, const float *logits, double *q,
                      int64_t L, int64_t H, int64_t W, const pm_crf_params *p)
{
    const int64_t N = H * W;
    double *A = malloc((size_t)(N * N) * sizeof(double));
    double *S = malloc((size_t)(N * N) * sizeof(double));
    double *nu = malloc((size_t)(L * N) * sizeof(double));
    double *e = malloc((size_t)(L * N) * sizeof(double));
    if (!A || !S || !nu || !e) exit(2);
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++) {
            const double dx = (double)(i % W - j % W), dy = (double)(i / W - j / W);
            double da = (dx * dx + dy * dy) /
                        (p->appearance_theta_xy * p->appearance_theta_xy);
            for (int c = 0; c < 3; c++) {
                const double dc = (double)img[i * 3 + c] - img[j * 3 + c];
                da += dc * dc / (p->appearance_theta_rgb * p->appearance_theta_rgb);
            }
            A[i * N + j] = exp(-0.5 * da);
            S[i * N + j] = exp(-0.5 * (dx * dx + dy * dy) /
                               (p->smoothness_theta_xy * p->smoothness_theta_xy));
        }
    double *mats[2] = {A, S};
    for (int m = 0; m < 2; m++) {
        double *K = mats[m];
        double *dg = malloc((size_t)N * sizeof(double));
        for (int64_t i = 0; i < N; i++) {
            dg[i] = 0;
            for (int64_t j = 0; j < N; j++) dg[i] += K[i * N + j];
            dg[i] = 1.0 / sqrt(dg[i]);
        }
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = 0; j < N; j++) K[i * N + j] *= dg[i] * dg[j];
        free(dg);
    }
    for (int64_t i = 0; i < N; i++) {
        double mx = -INFINITY, s = 0;
        for (int64_t l = 0; l < L; l++) mx = fmax(mx, logits[l * N + i]);
        for (int64_t l = 0; l < L; l++) s += exp(logits[l * N + i] - mx);
        for (int64_t l = 0; l < L; l++) {
            nu[l * N + i] = logits[l * N + i] - mx - log(s);
            e[l * N + i] = nu[l * N + i];
        }
    }
    for (int it = 0; it <= p->iterations; it++) {
        for (int64_t i = 0; i < N; i++) {
            double mx = -INFINITY, s = 0;
            for (int64_t l = 0; l < L; l++) mx = fmax(mx, e[l * N + i]);
            for (int64_t l = 0; l < L; l++) s += exp(e[l * N + i] - mx);
            for (int64_t l = 0; l < L; l++) q[l * N + i] = exp(e[l * N + i] - mx) / s;
        }
        if (it == p->iterations) break;
        for (int64_t l = 0; l < L; l++)
            for (int64_t i = 0; i < N; i++) {
                double a = 0, b = 0;
                for (int64_t j = 0; j < N; j++) {
                    a += A[i * N + j] * q[l * N + j];
                    b += S[i * N + j] * q[l * N + j];
                }
                e[l * N + i] = nu[l * N + i] + p->smoothness_weight * b +
                               p->appearance_weight * a;
            }
    }
    free(A);
    free(S);
    free(nu);
    free(e);
}

/* A two-region image with noisy unaries that favour the regions. */
static void two_regions(uint8_t *img, float *logits, int64_t L, int64_t H,
                        int64_t W)
{
    const int64_t N = H * W;
    for (int64_t i = 0; i < N; i++) {
        const int right = i % W >= W / 2;
        for (int c = 0; c < 3; c++)
            img[i * 3 + c] = (uint8_t)(right ? 200 + 10 * pm_test_rand()
                                             : 40 + 10 * pm_test_rand());
        for (int64_t l = 0; l < L; l++)
            logits[l * N + i] = (float)(2.0 * (l == right) + pm_test_rand());
    }
}

static void test_against_exact(void)
{
    const int64_t L = 3, H = 10, W = 12, N = H * W;
    uint8_t img[10 * 12 * 3];
    float logits[3 * 10 * 12], out[3 * 10 * 12];
    double ref[3 * 10 * 12];
    pm_crf_params p;
    pm_crf_params_default(&p);
    two_regions(img, logits, L, H, W);
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, L, H, W, &p), PM_OK);
    exact_crf(img, logits, ref, L, H, W, &p);
    int agree = 0;
    double mad = 0;
    for (int64_t i = 0; i < N; i++) {
        int a = 0, b = 0;
        double s = 0;
        for (int64_t l = 0; l < L; l++) {
            if (out[l * N + i] > out[a * N + i]) a = (int)l;
            if (ref[l * N + i] > ref[b * N + i]) b = (int)l;
            mad += fabs(out[l * N + i] - ref[l * N + i]);
            s += out[l * N + i];
        }
        agree += a == b;
        CHECK_CLOSE(s, 1.0, 3e-6);
    }
    /* Tolerances of tests/test_crf.py (the lattice approximates K). */
    CHECK(agree >= 0.95 * N);
    CHECK(mad / (double)(L * N) <= 0.02);
    /* iterations = 0 is the softmax, to float rounding */
    p.iterations = 0;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, L, H, W, &p), PM_OK);
    exact_crf(img, logits, ref, L, H, W, &p);
    for (int64_t k = 0; k < L * N; k++) CHECK_CLOSE(out[k], ref[k], 2e-6);
}

/* The smoothness kernel alone is computed exactly (on the pixel grid for
 * theta <= 4): only float32 rounding separates it from the exact twin. */
static void test_smoothness_exact(void)
{
    const int64_t L = 4, H = 9, W = 11, N = H * W;
    uint8_t img[9 * 11 * 3];
    float logits[4 * 9 * 11], out[4 * 9 * 11];
    double ref[4 * 9 * 11];
    pm_crf_params p;
    pm_crf_params_default(&p);
    p.appearance_weight = 0.0f;
    for (int64_t i = 0; i < N * 3; i++) img[i] = (uint8_t)(128 + 120 * pm_test_rand());
    for (int64_t k = 0; k < L * N; k++) logits[k] = 2.0f * pm_test_rand();
    const float thetas[3] = {0.1f, 1.0f, 3.5f};
    for (int t = 0; t < 3; t++) {
        p.smoothness_theta_xy = thetas[t];
        CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, L, H, W, &p), PM_OK);
        exact_crf(img, logits, ref, L, H, W, &p);
        for (int64_t k = 0; k < L * N; k++) CHECK_CLOSE(out[k], ref[k], 2e-5);
    }
}

static void test_degenerate(void)
{
    const int64_t H = 7, W = 9, N = H * W;
    uint8_t img[7 * 9 * 3];
    float logits[5 * 7 * 9], out[5 * 7 * 9];
    pm_crf_params p;
    pm_crf_params_default(&p);
    for (int64_t i = 0; i < N * 3; i++) img[i] = (uint8_t)(128 + 120 * pm_test_rand());
    /* uniform unaries stay exactly uniform */
    for (int64_t k = 0; k < 5 * N; k++) logits[k] = -0.7f;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 5, H, W, &p), PM_OK);
    int uniform = 1;
    for (int64_t k = 0; k < 5 * N; k++) uniform &= out[k] == out[k % N];
    CHECK(uniform);
    CHECK_CLOSE(out[0], 0.2, 1e-6);
    /* one label: all ones */
    for (int64_t k = 0; k < N; k++) logits[k] = pm_test_rand();
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 1, H, W, &p), PM_OK);
    int ones = 1;
    for (int64_t k = 0; k < N; k++) ones &= out[k] == 1.0f;
    CHECK(ones);
    /* min_prob: with iterations = 0, Q = softmax of the floored unary */
    for (int64_t k = 0; k < 5 * N; k++) logits[k] = k < N ? 40.0f : 0.0f;
    p.iterations = 0;
    p.min_prob = 1e-5f;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 5, H, W, &p), PM_OK);
    CHECK_CLOSE(out[N], 1e-5 / (1.0 + 4e-5), 1e-5);
    CHECK_CLOSE(out[0], 1.0 / (1.0 + 4e-5), 1e-6);
    pm_crf_params_default(&p);
    /* in place (marginals == logits) */
    for (int64_t k = 0; k < 5 * N; k++) logits[k] = 3 * pm_test_rand();
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 5, H, W, &p), PM_OK);
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, logits, 1, 5, H, W, &p), PM_OK);
    CHECK(memcmp(out, logits, sizeof out) == 0);
}

static void test_threads_and_context(void)
{
    const int64_t B = 3, L = 6, H = 24, W = 20, N = H * W;
    uint8_t *img = malloc((size_t)(B * N * 3));
    float *logits = pm_test_alloc_rand((size_t)(B * L * N));
    float *ref = malloc((size_t)(B * L * N) * sizeof(float));
    float *out = malloc((size_t)(B * L * N) * sizeof(float));
    for (int64_t i = 0; i < B * N * 3; i++) img[i] = (uint8_t)(128 + 127 * pm_test_rand());
    pm_crf_params p;
    pm_crf_params_default(&p);
    const int before = pm_get_num_threads();
    pm_crf_ctx *ctx = pm_crf_ctx_new();
    CHECK(ctx != NULL);
    pm_set_num_threads(1);
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, ref, B, L, H, W, &p), PM_OK);
    for (int n = 1; n <= 4; n++) {
        pm_set_num_threads(n);
        CHECK_STATUS(pm_dense_crf(ctx, img, logits, out, B, L, H, W, &p), PM_OK);
        CHECK(memcmp(out, ref, (size_t)(B * L * N) * sizeof(float)) == 0);
        for (int64_t b = 0; b < B; b++) {
            CHECK_STATUS(pm_dense_crf(ctx, img + b * N * 3, logits + b * L * N,
                                      out, 1, L, H, W, &p),
                         PM_OK);
            CHECK(memcmp(out, ref + b * L * N, (size_t)(L * N) * sizeof(float)) == 0);
        }
    }
    /* A context reused at another size, then back. */
    CHECK_STATUS(pm_dense_crf(ctx, img, logits, out, 1, L, 10, 12, &p), PM_OK);
    CHECK_STATUS(pm_dense_crf(ctx, img, logits, out, B, L, H, W, &p), PM_OK);
    CHECK(memcmp(out, ref, (size_t)(B * L * N) * sizeof(float)) == 0);
    pm_crf_ctx_free(ctx);
    pm_crf_ctx_free(NULL);
    pm_set_num_threads(before);
    free(img);
    free(logits);
    free(ref);
    free(out);
}

static void test_bad_arguments(void)
{
    uint8_t img[4 * 4 * 3] = {0};
    float logits[2 * 16] = {0}, out[2 * 16];
    pm_crf_params p, bad;
    pm_crf_params_default(&p);
    CHECK(p.iterations == 10 && p.appearance_weight == 4.0f &&
          p.appearance_theta_xy == 67.0f && p.appearance_theta_rgb == 3.0f &&
          p.smoothness_weight == 3.0f && p.smoothness_theta_xy == 1.0f &&
          p.min_prob == 0.0f);
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 0, 4, 4, &p), PM_ERR_ARG);
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 0, 4, &p), PM_ERR_ARG);
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, -1, 2, 4, 4, &p), PM_ERR_ARG);
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 0, 2, 4, 4, &p), PM_OK);
    CHECK_STATUS(pm_dense_crf(NULL, NULL, logits, out, 1, 2, 4, 4, &p), PM_ERR_ARG);
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, NULL), PM_ERR_ARG);
    bad = p;
    bad.iterations = -1;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &bad), PM_ERR_ARG);
    bad = p;
    bad.appearance_theta_xy = 0.0f;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &bad), PM_ERR_ARG);
    bad = p;
    bad.smoothness_weight = NAN;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &bad), PM_ERR_ARG);
    bad = p;
    bad.appearance_weight = -1.0f;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &bad), PM_ERR_ARG);
    bad = p;
    bad.appearance_theta_xy = 1e-7f; /* coordinates beyond the key range */
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &bad), PM_ERR_ARG);
    bad = p;
    bad.min_prob = 1.0f;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &bad), PM_ERR_ARG);
    bad.min_prob = NAN;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &bad), PM_ERR_ARG);
    logits[5] = NAN;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &p), PM_ERR_NONFINITE);
    logits[5] = INFINITY;
    CHECK_STATUS(pm_dense_crf(NULL, img, logits, out, 1, 2, 4, 4, &p), PM_ERR_NONFINITE);
    float f[2] = {0, 0}, v[1] = {1}, o[1];
    CHECK_STATUS(pm_permutohedral_filter(f, v, o, 0, 2, 1), PM_ERR_ARG);
    CHECK_STATUS(pm_permutohedral_filter(f, v, o, 1, 7, 1), PM_ERR_ARG);
    CHECK_STATUS(pm_permutohedral_filter(f, v, o, 1, 2, 0), PM_ERR_ARG);
}

/* The lattice filter: linear, positive, about c * Gaussian. */
static void test_filter(void)
{
    enum { N = 40, D = 3 };
    float f[N * D], e[N * N], k[N * N];
    for (int i = 0; i < N * D; i++) f[i] = 2.0f * (pm_test_rand() + 1.0f);
    for (int i = 0; i < N * N; i++) e[i] = i / N == i % N;
    CHECK_STATUS(pm_permutohedral_filter(f, e, k, N, D, N), PM_OK);
    double num = 0, den = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double d2 = 0;
            for (int c = 0; c < D; c++) d2 += (f[i * D + c] - f[j * D + c]) * (f[i * D + c] - f[j * D + c]);
            const double g = exp(-0.5 * d2);
            num += k[i * N + j] * g;
            den += g * g;
            CHECK(k[i * N + j] >= 0);
        }
    const double c = num / den;
    double err = 0, ref = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double d2 = 0;
            for (int cc = 0; cc < D; cc++) d2 += (f[i * D + cc] - f[j * D + cc]) * (f[i * D + cc] - f[j * D + cc]);
            const double g = c * exp(-0.5 * d2);
            err += (k[i * N + j] - g) * (k[i * N + j] - g);
            ref += g * g;
        }
    CHECK(sqrt(err / ref) < 0.2); /* measured 0.13-0.14 for d = 3 */
    CHECK(c > 0.5 && c < 1.0);
}

int main(void)
{
    test_against_exact();
    test_smoothness_exact();
    test_degenerate();
    test_threads_and_context();
    test_bad_arguments();
    test_filter();
    return pm_test_report("test_crf");
}
