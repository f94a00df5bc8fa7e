/* C tests of metrics.c: confusion matrix accumulation. */
#include "pm_test.h"

#include <string.h>

/* The reference: a plain loop over int64 labels. */
static void naive(const int64_t *pred, const int64_t *gt, int64_t n, int64_t R,
                  int64_t K, int64_t *conf, int64_t *skipped)
{
    for (int64_t i = 0; i < n; i++) {
        if (gt[i] < 0 || gt[i] >= K)
            (*skipped)++;
        else
            conf[pred[i] * K + gt[i]]++;
    }
    (void)R;
}

static void test_hand_made(void)
{
    /* S[pred, gt] for K = 3, R = 4 (one extra cluster) */
    const int64_t pred[] = {2, 2, 1, 1, 1, 0, 3, 0, 0};
    const int64_t gt[] = {0, 0, 0, 1, 1, 2, 2, 255, -1};
    int64_t conf[12], skipped = 0, bad = 7;
    memset(conf, 0, sizeof conf);
    CHECK_STATUS(pm_confusion_accumulate(pred, PM_LABEL_I64, gt, PM_LABEL_I64,
                                         9, 4, 3, conf, &skipped, &bad),
                 PM_OK);
    const int64_t want[12] = {0, 0, 1, /* cluster 0 */
                              1, 2, 0, /* cluster 1 */
                              2, 0, 0, /* cluster 2 */
                              0, 0, 1 /* cluster 3 */};
    CHECK(memcmp(conf, want, sizeof want) == 0);
    CHECK(skipped == 2);
    CHECK(bad == -1);
    /* accumulates */
    CHECK_STATUS(pm_confusion_accumulate(pred, PM_LABEL_I64, gt, PM_LABEL_I64,
                                         9, 4, 3, conf, &skipped, NULL),
                 PM_OK);
    for (int i = 0; i < 12; i++) CHECK(conf[i] == 2 * want[i]);
    CHECK(skipped == 4);
}

/* Random blocky label maps of n pixels in every pair of label types. */
static void test_types_against_naive(int64_t n, int64_t R, int64_t K)
{
    int64_t *p64 = malloc((size_t)n * sizeof(int64_t));
    int64_t *g64 = malloc((size_t)n * sizeof(int64_t));
    void *p[4], *g[4];
    const size_t sz[4] = {1, 2, 4, 8};
    for (int t = 0; t < 4; t++) {
        p[t] = malloc((size_t)n * sz[t]);
        g[t] = malloc((size_t)n * sz[t]);
    }
    for (int64_t i = 0; i < n; i++) {
        float a = pm_test_rand(), b = pm_test_rand();
        p64[i] = (int64_t)((a + 1.0f) * 0.5f * (float)R) % R;
        /* a quarter skipped: 255, K, or (for signed types) -1 */
        int64_t gv = (int64_t)((b + 1.0f) * 0.5f * (float)K) % K;
        if (b > 0.5f) gv = (i % 3 == 0) ? 255 : K;
        g64[i] = gv;
    }
    for (int t = 0; t < 4; t++)
        for (int64_t i = 0; i < n; i++) {
            switch (t) {
            case 0:
                ((uint8_t *)p[t])[i] = (uint8_t)p64[i];
                ((uint8_t *)g[t])[i] = (uint8_t)g64[i];
                break;
            case 1:
                ((uint16_t *)p[t])[i] = (uint16_t)p64[i];
                ((uint16_t *)g[t])[i] = (uint16_t)g64[i];
                break;
            case 2:
                ((int32_t *)p[t])[i] = (int32_t)p64[i];
                ((int32_t *)g[t])[i] = (int32_t)(g64[i] == 255 ? -1 : g64[i]);
                break;
            default:
                ((int64_t *)p[t])[i] = p64[i];
                ((int64_t *)g[t])[i] = g64[i] == 255 ? -7 : g64[i];
            }
        }
    int64_t *ref = calloc((size_t)(R * K), sizeof(int64_t));
    int64_t *conf = malloc((size_t)(R * K) * sizeof(int64_t));
    int64_t ref_skipped = 0;
    naive(p64, g64, n, R, K, ref, &ref_skipped);
    for (int tp = 0; tp < 4; tp++)
        for (int tg = 0; tg < 4; tg++) {
            if (R > 256 && tp == 0) continue;
            int64_t skipped = 0, bad = 0;
            memset(conf, 0, (size_t)(R * K) * sizeof(int64_t));
            CHECK_STATUS(pm_confusion_accumulate(p[tp], (pm_label_type)tp,
                                                 g[tg], (pm_label_type)tg, n,
                                                 R, K, conf, &skipped, &bad),
                         PM_OK);
            CHECK(memcmp(conf, ref, (size_t)(R * K) * sizeof(int64_t)) == 0);
            CHECK(skipped == ref_skipped);
            CHECK(bad == -1);
        }
    for (int t = 0; t < 4; t++) {
        free(p[t]);
        free(g[t]);
    }
    free(p64);
    free(g64);
    free(ref);
    free(conf);
}

static void test_bad_predictions(void)
{
    const int64_t n = 100000, R = 5, K = 4;
    int32_t *pred = calloc((size_t)n, sizeof(int32_t));
    uint8_t *gt = calloc((size_t)n, 1);
    int64_t conf[20], skipped = 11, bad = 0;
    memset(conf, 0, sizeof conf);
    pred[70001] = 5;  /* too large */
    pred[40000] = -2; /* negative, earlier: this one is reported */
    for (int threads = 1; threads <= 4; threads *= 2) {
        pm_set_num_threads(threads);
        CHECK_STATUS(pm_confusion_accumulate(pred, PM_LABEL_I32, gt,
                                             PM_LABEL_U8, n, R, K, conf,
                                             &skipped, &bad),
                     PM_ERR_ARG);
        CHECK(bad == 40000);
        for (int i = 0; i < 20; i++) CHECK(conf[i] == 0); /* untouched */
        CHECK(skipped == 11);
    }
    /* a bad prediction where gt is skipped still counts as bad */
    pred[40000] = 0;
    gt[70001] = 255;
    CHECK_STATUS(pm_confusion_accumulate(pred, PM_LABEL_I32, gt, PM_LABEL_U8,
                                         n, R, K, conf, NULL, &bad),
                 PM_ERR_ARG);
    CHECK(bad == 70001);
    /* int64 values beyond 32 bits */
    int64_t p64[3] = {0, (int64_t)1 << 40, 1}, g64[3] = {0, 0, 0};
    CHECK_STATUS(pm_confusion_accumulate(p64, PM_LABEL_I64, g64, PM_LABEL_I64,
                                         3, R, K, conf, NULL, &bad),
                 PM_ERR_ARG);
    CHECK(bad == 1);
    /* huge gt values are skipped, not wrapped onto a class */
    int64_t g_big[3] = {((int64_t)1 << 40) + 1, 1, -((int64_t)1 << 40)};
    int64_t p_ok[3] = {0, 1, 2};
    int64_t c2[20];
    memset(c2, 0, sizeof c2);
    skipped = 0;
    CHECK_STATUS(pm_confusion_accumulate(p_ok, PM_LABEL_I64, g_big,
                                         PM_LABEL_I64, 3, R, K, c2, &skipped,
                                         NULL),
                 PM_OK);
    CHECK(skipped == 2 && c2[1 * K + 1] == 1);
    free(pred);
    free(gt);
    pm_set_num_threads(2);
}

static void test_thread_invariance(void)
{
    const int64_t n = 4 * 320 * 320 + 17, R = 30, K = 27;
    int64_t *pred = malloc((size_t)n * sizeof(int64_t));
    uint8_t *gt = malloc((size_t)n);
    for (int64_t i = 0; i < n; i++) {
        pred[i] = ((i / 8) * 7 + (i / 2560) * 3) % R;
        gt[i] = (uint8_t)(((i / 16) * 5) % 29); /* 27, 28 skipped */
    }
    int64_t *c1 = calloc((size_t)(R * K), sizeof(int64_t));
    int64_t *c2 = calloc((size_t)(R * K), sizeof(int64_t));
    int64_t s1 = 0, s2 = 0;
    pm_set_num_threads(1);
    CHECK_STATUS(pm_confusion_accumulate(pred, PM_LABEL_I64, gt, PM_LABEL_U8,
                                         n, R, K, c1, &s1, NULL),
                 PM_OK);
    for (int threads = 2; threads <= 4; threads++) {
        pm_set_num_threads(threads);
        memset(c2, 0, (size_t)(R * K) * sizeof(int64_t));
        s2 = 0;
        CHECK_STATUS(pm_confusion_accumulate(pred, PM_LABEL_I64, gt,
                                             PM_LABEL_U8, n, R, K, c2, &s2,
                                             NULL),
                     PM_OK);
        CHECK(memcmp(c1, c2, (size_t)(R * K) * sizeof(int64_t)) == 0);
        CHECK(s1 == s2);
    }
    int64_t total = s1;
    for (int64_t i = 0; i < R * K; i++) total += c1[i];
    CHECK(total == n);
    pm_set_num_threads(2);
    free(pred);
    free(gt);
    free(c1);
    free(c2);
}

static void test_arguments(void)
{
    int64_t p[1] = {0}, g[1] = {0}, conf[4] = {0, 0, 0, 0}, bad = 0;
    CHECK_STATUS(pm_confusion_accumulate(p, PM_LABEL_I64, g, PM_LABEL_I64, -1,
                                         2, 2, conf, NULL, &bad),
                 PM_ERR_ARG);
    CHECK(bad == -1);
    CHECK_STATUS(pm_confusion_accumulate(p, PM_LABEL_I64, g, PM_LABEL_I64, 1,
                                         0, 2, conf, NULL, NULL),
                 PM_ERR_ARG);
    CHECK_STATUS(pm_confusion_accumulate(p, PM_LABEL_I64, g, PM_LABEL_I64, 1,
                                         2, 0, conf, NULL, NULL),
                 PM_ERR_ARG);
    CHECK_STATUS(pm_confusion_accumulate(p, PM_LABEL_I64, g, PM_LABEL_I64, 1,
                                         (int64_t)1 << 20, (int64_t)1 << 12,
                                         conf, NULL, NULL),
                 PM_ERR_ARG); /* R*K >= 2^31 */
    CHECK_STATUS(pm_confusion_accumulate(p, (pm_label_type)9, g, PM_LABEL_I64,
                                         1, 2, 2, conf, NULL, NULL),
                 PM_ERR_ARG);
    CHECK_STATUS(pm_confusion_accumulate(p, PM_LABEL_I64, g, PM_LABEL_I64, 1,
                                         2, 2, NULL, NULL, NULL),
                 PM_ERR_ARG);
    CHECK_STATUS(pm_confusion_accumulate(NULL, PM_LABEL_I64, NULL,
                                         PM_LABEL_I64, 0, 2, 2, conf, NULL,
                                         NULL),
                 PM_OK); /* nothing to count */
    CHECK_STATUS(pm_confusion_accumulate(NULL, PM_LABEL_I64, g, PM_LABEL_I64,
                                         1, 2, 2, conf, NULL, NULL),
                 PM_ERR_ARG);
    for (int i = 0; i < 4; i++) CHECK(conf[i] == 0);
}

int main(void)
{
    test_hand_made();
    test_types_against_naive(1000, 3, 2);
    test_types_against_naive(100003, 30, 27);  /* several chunks, a tail */
    test_types_against_naive(70001, 300, 150); /* > 16384 bins: one lane */
    test_bad_predictions();
    test_thread_invariance();
    test_arguments();
    return pm_test_report("test_metrics");
}
