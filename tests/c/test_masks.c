/* C tests of masks.c: block images with known regions, degenerate input,
 * bad arguments, thread-count invariance, the soft logits and the fused
 * upsampled argmax. */
#include "pm_test.h"

#include <string.h>

/* (B, C, h, w) features: image b is split into 2 x 3 blocks, block k shows
 * prototype (b + k) % 6 (random unit-norm vectors) plus noise. */
static float *blocks(int64_t B, int64_t C, int64_t h, int64_t w, float noise,
                     int32_t *truth)
{
    float proto[6][64];
    for (int k = 0; k < 6; k++) {
        double n2 = 0;
        for (int64_t c = 0; c < C; c++) {
            proto[k][c] = pm_test_rand();
            n2 += (double)proto[k][c] * proto[k][c];
        }
        for (int64_t c = 0; c < C; c++) proto[k][c] /= (float)sqrt(n2);
    }
    float *F = malloc((size_t)(B * C * h * w) * sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++) {
                const int k = (int)((y * 2 / h) * 3 + x * 3 / w);
                const int cls = (int)((b + k) % 6);
                if (truth) truth[(b * h + y) * w + x] = k;
                for (int64_t c = 0; c < C; c++)
                    F[((b * C + c) * h + y) * w + x] =
                        0.2f + 3.0f * (proto[cls][c] + noise * pm_test_rand());
            }
    return F;
}

/* The map refines nothing: the pixels of a truth region all carry one id,
 * or background (where three blocks meet, the median filter leaves none of
 * them a majority). */
static int consistent(const int32_t *m, const int32_t *truth, int64_t n)
{
    int32_t of[6] = {-1, -1, -1, -1, -1, -1};
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (m[i] == 0) continue;
        if (of[truth[i]] < 0) of[truth[i]] = m[i];
        bad += of[truth[i]] != m[i];
    }
    return bad == 0;
}

static int32_t max_id(const int32_t *m, int64_t n)
{
    int32_t mx = 0;
    for (int64_t i = 0; i < n; i++) mx = m[i] > mx ? m[i] : mx;
    return mx;
}

static void test_blocks_and_threads(void)
{
    const int64_t B = 5, C = 24, h = 12, w = 18, N = h * w;
    int32_t *truth = malloc((size_t)(B * N) * sizeof(int32_t));
    float *F = blocks(B, C, h, w, 0.05f, truth);
    pm_masks_params p;
    pm_masks_params_default(&p);
    int32_t *m1 = malloc((size_t)(B * N) * sizeof(int32_t));
    int32_t *m2 = malloc((size_t)(B * N) * sizeof(int32_t));
    int64_t np1[5], nm1[5], np2[5], nm2[5];
    pm_set_num_threads(1);
    CHECK_STATUS(pm_masks(F, B, C, h, w, &p, h, w, m1, NULL, NULL, NULL, np1,
                          nm1), PM_OK);
    pm_set_num_threads(3);
    CHECK_STATUS(pm_masks(F, B, C, h, w, &p, h, w, m2, NULL, NULL, NULL, np2,
                          nm2), PM_OK);
    CHECK(memcmp(m1, m2, (size_t)(B * N) * sizeof(int32_t)) == 0);
    for (int64_t b = 0; b < B; b++) {
        CHECK(consistent(m1 + b * N, truth + b * N, N));
        CHECK(max_id(m1 + b * N, N) == nm1[b]);
        CHECK(nm1[b] >= 3 && nm1[b] <= 6 && np1[b] == np2[b]);
    }
    pm_set_num_threads(2);
    free(truth);
    free(F);
    free(m1);
    free(m2);
}

/* The fused upsampled argmax equals the argmax of pm_upsample_bilinear
 * applied to the soft logits (before renumbering: compare partitions). */
static void test_upsampled_and_soft(void)
{
    const int64_t C = 16, h = 9, w = 7, N = h * w, H = 31, W = 22;
    float *F = blocks(1, C, h, w, 0.6f, NULL);
    pm_masks_params p;
    pm_masks_params_default(&p);
    int32_t *m = malloc((size_t)(H * W) * sizeof(int32_t));
    int32_t owner[63], id;
    float value[63], level;
    int64_t n, ids;
    CHECK_STATUS(pm_masks(F, 1, C, h, w, &p, H, W, m, owner, value, &level,
                          &n, &ids), PM_OK);
    float *soft = malloc((size_t)((n + 1) * N) * sizeof(float));
    float *up = malloc((size_t)((n + 1) * H * W) * sizeof(float));
    CHECK_STATUS(pm_masks_soft(owner, value, level, n, N, soft), PM_OK);
    CHECK_STATUS(pm_upsample_bilinear(soft, up, n + 1, h, w, H, W), PM_OK);
    int32_t *lut = calloc((size_t)(n + 1), sizeof(int32_t));
    int32_t *raw = malloc((size_t)(H * W) * sizeof(int32_t));
    for (int64_t i = 0; i < H * W; i++) {
        int64_t best = 0;
        for (int64_t k = 1; k <= n; k++)
            if (up[k * H * W + i] > up[best * H * W + i]) best = k;
        raw[i] = (int32_t)best;
        lut[best] = 1;
    }
    /* ids follow the extraction order of the masks that win a pixel */
    id = 0;
    for (int64_t k = 1; k <= n; k++) lut[k] = lut[k] ? ++id : 0;
    int bad = 0;
    for (int64_t i = 0; i < H * W; i++) bad += (raw[i] ? lut[raw[i]] : 0) != m[i];
    free(raw);
    CHECK(bad == 0);
    CHECK(id == ids);
    for (int64_t i = 0; i < (n + 1) * N; i++) CHECK(soft[i] >= 0 && soft[i] <= 1);
    owner[3] = (int32_t)n + 1;
    CHECK_STATUS(pm_masks_soft(owner, value, level, n, N, soft), PM_ERR_ARG);
    free(F);
    free(m);
    free(soft);
    free(up);
    free(lut);
}

static void test_degenerate(void)
{
    pm_masks_params p;
    pm_masks_params_default(&p);
    float F[3 * 40];
    int32_t m[40];
    int64_t np, nm;
    /* all equal: one mask covering everything */
    for (int i = 0; i < 120; i++) F[i] = 2.0f;
    CHECK_STATUS(pm_masks(F, 1, 3, 5, 8, &p, 5, 8, m, NULL, NULL, NULL, &np,
                          &nm), PM_OK);
    CHECK(np == 1 && nm == 1 && m[0] == 1 && m[39] == 1);
    /* all zero: a pixel per mask until 95 %, all erased by the median */
    memset(F, 0, sizeof F);
    CHECK_STATUS(pm_masks(F, 1, 3, 5, 8, &p, 5, 8, m, NULL, NULL, NULL, &np,
                          &nm), PM_OK);
    CHECK(np == 38 && nm == 0 && max_id(m, 40) == 0);
    /* single pixel, C == 1, 1 x N */
    F[0] = -1.0f;
    CHECK_STATUS(pm_masks(F, 1, 1, 1, 1, &p, 1, 1, m, NULL, NULL, NULL, &np,
                          &nm), PM_OK);
    CHECK(np == 1 && m[0] == 1);
    for (int i = 0; i < 40; i++) F[i] = (float)(i % 7) - 3.0f;
    CHECK_STATUS(pm_masks(F, 1, 1, 5, 8, &p, 5, 8, m, NULL, NULL, NULL, &np,
                          &nm), PM_OK);
    CHECK(np >= 1 && np <= 40 && max_id(m, 40) == nm);
    for (int i = 0; i < 120; i++) F[i] = pm_test_rand();
    CHECK_STATUS(pm_masks(F, 1, 3, 1, 40, &p, 1, 40, m, NULL, NULL, NULL, &np,
                          &nm), PM_OK);
    CHECK(np >= 1 && max_id(m, 40) == nm);
    /* max_masks and stop_fraction 1 */
    p.max_masks = 2;
    p.median_size = 1;
    CHECK_STATUS(pm_masks(F, 1, 3, 1, 40, &p, 1, 40, m, NULL, NULL, NULL, &np,
                          &nm), PM_OK);
    CHECK(np == 2 && nm <= 2);
    p.max_masks = 0;
    p.stop_fraction = 1.0;
    p.gain = 1.0;
    float value[40];
    int32_t owner[40];
    CHECK_STATUS(pm_masks(F, 1, 3, 1, 40, &p, 1, 40, m, owner, value, NULL,
                          &np, &nm), PM_OK);
    int unassigned = 0;
    for (int i = 0; i < 40; i++) unassigned += owner[i] == 0;
    CHECK(unassigned == 0); /* stop_fraction 1 assigns every pixel */
}

static void test_bad_arguments(void)
{
    pm_masks_params p;
    float F[2 * 9];
    int32_t m[9];
    for (int i = 0; i < 18; i++) F[i] = pm_test_rand();
    pm_masks_params_default(&p);
    CHECK_STATUS(pm_masks_check_params(&p), PM_OK);
    p.threshold = 1.0;
    CHECK_STATUS(pm_masks(F, 1, 2, 3, 3, &p, 3, 3, m, NULL, NULL, NULL, NULL,
                          NULL), PM_ERR_ARG);
    pm_masks_params_default(&p);
    p.stop_fraction = 0.0;
    CHECK_STATUS(pm_masks_check_params(&p), PM_ERR_ARG);
    pm_masks_params_default(&p);
    p.median_size = 4;
    CHECK_STATUS(pm_masks_check_params(&p), PM_ERR_ARG);
    pm_masks_params_default(&p);
    p.gain = -1.0;
    CHECK_STATUS(pm_masks_check_params(&p), PM_ERR_ARG);
    pm_masks_params_default(&p);
    CHECK_STATUS(pm_masks(F, 1, 2, 0, 3, &p, 3, 3, m, NULL, NULL, NULL, NULL,
                          NULL), PM_ERR_ARG);
    CHECK_STATUS(pm_masks(F, 0, 2, 3, 3, &p, 3, 3, m, NULL, NULL, NULL, NULL,
                          NULL), PM_OK);
    F[4] = NAN;
    CHECK_STATUS(pm_masks(F, 1, 2, 3, 3, &p, 3, 3, m, NULL, NULL, NULL, NULL,
                          NULL), PM_ERR_NONFINITE);
    F[4] = INFINITY;
    CHECK_STATUS(pm_masks(F, 1, 2, 3, 3, &p, 3, 3, m, NULL, NULL, NULL, NULL,
                          NULL), PM_ERR_NONFINITE);
}

int main(void)
{
    test_blocks_and_threads();
    test_upsampled_and_soft();
    test_degenerate();
    test_bad_arguments();
    return pm_test_report("test_masks");
}
