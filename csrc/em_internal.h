/*
 * em_internal.h -- what the files of PriMaPs-EM share and nothing else
 * needs: the workspace (its buffers and the oneDNN matmul cache) and the
 * three helpers one file defines and another calls.
 *
 *   em_dnnl.c   workspace, oneDNN matmul, logits at feature resolution
 *   em_label.c  softmax / cross-entropy / argmax at label resolution
 *   em.c        weight norm, K-means, focal loss, teacher, EM step, probe
 */
#ifndef PM_EM_INTERNAL_H
#define PM_EM_INTERNAL_H

#include "primaps.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <oneapi/dnnl/dnnl.h>

/* Cached oneDNN matmul primitives (one per shape) in a workspace. */
#define PM_MM_CACHE 8

typedef struct {
    void *p;
    size_t cap;
} pm_buf;

typedef struct {
    int trans_b; /* weights stored transposed ("ba") */
    int64_t M, Kd, N;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    size_t scratch;
} mm_entry;

struct pm_em_ws {
    pthread_mutex_t lock;
    dnnl_engine_t engine;
    mm_entry mm[PM_MM_CACHE];
    int n_mm, evict;
    pm_buf z, dz, pseudo, part, dpart, thread, scratch, small, maps;
    pm_buf wide; /* float16 batches widened to float32 (pm_em_batch_widen) */
};

/* Grows b to at least `bytes` (contents are not kept); PM_ERR_NOMEM. */
int pm_em_reserve(pm_buf *b, size_t bytes);

/* Whether bt describes a batch of features F for K classes. */
int pm_em_batch_ok(const pm_batch *bt, const float *F, int64_t K);

/* Softmax cross-entropy at label resolution of the low-resolution logits
 * Z (B x K x h x w) against labels (n x H x W, 255 = ignored) with class
 * weights wt: the loss and, when dZ is not NULL, its gradient dZ.
 * Defined in em_label.c. */
int pm_em_label_ce(pm_em_ws *ws, const float *Z, const uint8_t *labels,
                   const int64_t *index, const uint8_t *flip, int64_t n,
                   const float *wt, double scale, int64_t B, int64_t K,
                   int64_t h, int64_t w, int64_t H, int64_t W, double *loss,
                   float *dZ);

#endif
