/*
 * primaps.h -- the one public header of the primaps C core.
 *
 * Conventions
 * - Every symbol carries the pm_ prefix.
 * - Kernels take raw pointers and sizes, never Python objects, and return a
 *   pm_status.  They never print and never abort.
 * - Arrays are dense and C-contiguous.  Images are stored channel-first:
 *   a batch of features is (B, C, h, w), i.e. element (b, c, y, x) lives at
 *   ((b*C + c)*h + y)*w + x.
 * - Batched kernels run their images (or planes) in parallel on the package's
 *   OpenMP pool (pm_set_num_threads).  Their results do not depend on the
 *   number of threads: the work is split so that every output element is
 *   computed by one thread in a fixed order.
 */
#ifndef PRIMAPS_H
#define PRIMAPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Status codes                                                             */
/* ------------------------------------------------------------------------ */

typedef enum {
    PM_OK = 0,
    PM_ERR_NOMEM = 1,     /* an allocation failed                          */
    PM_ERR_ARG = 2,       /* a size or parameter is out of range           */
    PM_ERR_NONFINITE = 3, /* an input holds NaN or inf                     */
    PM_ERR_BLAS = 4,      /* OpenBLAS / LAPACK reported an error           */
    PM_ERR_DNNL = 5,      /* a oneDNN call failed                          */
    PM_ERR_INTERNAL = 6,  /* an invariant of the core was violated         */
    PM_ERR_INTERRUPTED = 7 /* pm_interrupt_request was called: stopped early,
                            * the outputs are incomplete                     */
} pm_status;

/* A static, human-readable description of a status code. */
const char *pm_status_str(int status);

/* ------------------------------------------------------------------------ */
/* Runtime: threads and library versions (runtime.c)                        */
/* ------------------------------------------------------------------------ */

/* The size of the package's OpenMP pool.  It runs the core's own parallel
 * loops and oneDNN's primitives.  OpenBLAS is called only from inside that
 * pool and is held at one thread, so the two never oversubscribe the cores.
 * pm_set_num_threads returns PM_ERR_ARG for n < 1. */
int pm_set_num_threads(int n);
int pm_get_num_threads(void);

/* Call before a oneDNN primitive is executed from the current thread: makes
 * oneDNN's OpenMP regions use the pool size set by pm_set_num_threads. */
void pm_prepare_onednn_call(void);

/* Pins OpenBLAS to one thread (see pm_set_num_threads). */
void pm_pin_blas(void);

/* Cancellation of long kernels.  pm_interrupt_request (async-signal-safe:
 * one atomic store, callable from a signal handler) asks every running
 * kernel that polls pm_interrupted -- pm_masks between proposals and
 * images, pm_dense_crf between images and mean-field iterations -- to stop
 * and return PM_ERR_INTERRUPTED; pm_interrupt_clear resets the request. */
void pm_interrupt_request(void);
void pm_interrupt_clear(void);
int pm_interrupted(void);

typedef struct {
    int onednn_major, onednn_minor, onednn_patch;
    const char *onednn_hash;    /* git hash of the oneDNN build            */
    const char *onednn_runtime; /* "OpenMP", "TBB", "sequential", ...       */
    const char *onednn_isa;     /* the ISA oneDNN dispatches to            */
    const char *openblas_config;   /* OpenBLAS' get_config() string        */
    const char *openblas_corename; /* the kernel family OpenBLAS picked    */
    int openblas_threads;
    int openmp_max_threads;     /* omp_get_max_threads() of this thread     */
    int openmp_version;         /* _OPENMP of the build                      */
} pm_build_info;

/* Fills *info; every string is static. */
int pm_get_build_info(pm_build_info *info);

/* ------------------------------------------------------------------------ */
/* Feature normalisation (normalize.c)                                      */
/* ------------------------------------------------------------------------ */

/* Per-pixel L2 normalisation over channels.
 *   src, dst: (B, C, n) with n = h*w pixels per image; dst may equal src.
 * dst[b, :, p] = src[b, :, p] / ||src[b, :, p]||, accumulated in double so
 * that no finite float vector under- or overflows; a zero vector stays zero.
 * Returns PM_ERR_NONFINITE (dst untouched or partly written) if src holds a
 * NaN or an inf. */
int pm_l2_normalize(const float *src, float *dst, int64_t B, int64_t C,
                    int64_t n);

/* IEEE half precision (binary16 bits) to float, exactly: dst[i] = src[i]
 * for i < n (NaNs stay NaNs, quieted), threaded; the same bits whatever
 * the thread count or instruction set (convert.c). */
int pm_half_to_float(const uint16_t *src, float *dst, int64_t n);

/* ------------------------------------------------------------------------ */
/* Bilinear resampling (resample.c)                                         */
/* ------------------------------------------------------------------------ */

/* Bilinear up- or down-sampling of P independent planes, with the numbers of
 * torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
 * antialias=False) given an output size:
 *   src: (P, h, w), dst: (P, H, W).
 * Source coordinate of output index i: max(0, (i + 0.5) * in / out - 0.5),
 * computed in float as torch does; neighbours are clamped to the edge. */
int pm_upsample_bilinear(const float *src, float *dst, int64_t P, int64_t h,
                         int64_t w, int64_t H, int64_t W);

/* The exact transpose of pm_upsample_bilinear for the same sizes:
 *   src: (P, H, W) (a gradient at output resolution), dst: (P, h, w).
 * <upsample(x), y> == <x, adjoint(y)> up to rounding. dst is overwritten. */
int pm_upsample_bilinear_adjoint(const float *src, float *dst, int64_t P,
                                 int64_t h, int64_t w, int64_t H, int64_t W);

/* The interpolation table of one axis, shared by the resampling kernels and
 * by the fused kernels that upsample on the fly (em.c, masks.c).
 *   i0[o], i1[o]: the two source indices of output index o (i1 = i0 or i0+1)
 *   l0[o], l1[o]: their weights, l0 + l1 = 1. */
typedef struct {
    int64_t *i0, *i1;
    float *l0, *l1;
    int64_t n_out;
} pm_axis_table;

/* The longest axis a resampling takes or makes (so that table sizes and
 * 32-bit column indices never overflow). */
#define PM_MAX_SIDE ((int64_t)2147483647)

/* Allocates and fills a table for in -> out (1 <= in, out <= PM_MAX_SIDE);
 * pm_axis_table_free releases it. */
int pm_axis_table_init(pm_axis_table *t, int64_t in, int64_t out);
void pm_axis_table_free(pm_axis_table *t);

/* ------------------------------------------------------------------------ */
/* Principal mask proposals (masks.c)                                       */
/* ------------------------------------------------------------------------ */

/* Parameters of docs/method.md section 1.1. */
typedef struct {
    double threshold;     /* psi in (0, 1): m_p = 0 where m_p < psi max(m)  */
    double stop_fraction; /* (0, 1]: loop while |assigned| / N < this        */
    double gain;          /* > 0: M = clamp(M * gain, 0, 1)                  */
    int median_size;      /* odd, 1..63: K x K median, reflect padding; 1 off */
    int64_t max_masks;    /* >= 0: at most this many masks; 0 = no bound     */
} pm_masks_params;

/* Defaults: 0.4, 0.95, 10, 3, 0. */
void pm_masks_params_default(pm_masks_params *p);
/* PM_OK if every parameter is in range, else PM_ERR_ARG. */
int pm_masks_check_params(const pm_masks_params *p);

/* PriMaPs mask maps of B images (docs/method.md section 1.1), one image per thread.
 *   features: (B, C, h, w) float32, finite;
 *   maps:     (B, H, W) int32 out: 0 = background, 1..n mask ids renumbered
 *             consecutively in extraction order.  (H, W) = (h, w) takes the
 *             argmax of the logits L = [b, M_1..M_n] at feature resolution;
 *             another size upsamples L bilinearly (the numbers of
 *             pm_upsample_bilinear) on the fly, pixel by pixel, and takes
 *             the argmax there; ties go to the lowest channel.
 * Optional outputs (NULL: not wanted), the post-processed logits at feature
 * resolution in a lossless sparse form (after the median filter a pixel
 * belongs to at most one mask; see pm_masks_soft):
 *   owner:       (B, h, w) int32, channel 1..n of the pixel's mask, or 0;
 *   value:       (B, h, w) float32, M_owner at the pixel (0 if no owner);
 *   level:       (B,) float32, mean(M[M != 0]), so b = clamp(level - value);
 *   n_proposals: (B,) masks extracted (= iterations of the loop) = n;
 *   n_masks:     (B,) ids in the map.
 * The principal direction is computed by Lanczos iteration on a covariance
 * held in double and down-dated as pixels leave (see masks.c).  Results are
 * bitwise identical for any thread count.  PM_ERR_NONFINITE if features
 * hold NaN or inf, PM_ERR_ARG for bad sizes or parameters. */
int pm_masks(const float *features, int64_t B, int64_t C, int64_t h,
             int64_t w, const pm_masks_params *p, int64_t H, int64_t W,
             int32_t *maps, int32_t *owner, float *value, float *level,
             int64_t *n_proposals, int64_t *n_masks);

/* Dense soft logits of one image from pm_masks' sparse form:
 *   owner, value: (N,); soft: (n + 1, N) out, soft[0] = b =
 *   clamp(level - value, 0, 1), soft[k] = value where owner == k, else 0.
 * PM_ERR_ARG if an owner lies outside [0, n]. */
int pm_masks_soft(const int32_t *owner, const float *value, float level,
                  int64_t n, int64_t N, float *soft);

/* ------------------------------------------------------------------------ */
/* Evaluation: confusion matrices (metrics.c)                               */
/* ------------------------------------------------------------------------ */

/* Element types of label arrays read by the evaluation kernels.  Other
 * integer types are converted by the caller (int8, int16 -> int32; uint32,
 * uint64 -> int64). */
typedef enum {
    PM_LABEL_U8 = 0,
    PM_LABEL_U16 = 1,
    PM_LABEL_I32 = 2,
    PM_LABEL_I64 = 3
} pm_label_type;

/* Adds the confusion counts of n pixels to conf.
 *   pred: (n,) cluster ids of type pred_type, each must lie in [0, R);
 *   gt:   (n,) class ids of type gt_type; a pixel whose gt lies outside
 *         [0, K) (the ignore label 255, -1, ...) is not counted;
 *   conf: (R, K) int64, conf[p*K + g] += #pixels with pred p and gt g.
 * n_skipped (may be NULL) is increased by the number of pixels not counted.
 * A prediction outside [0, R) makes it return PM_ERR_ARG with *bad_index
 * (may be NULL) set to the flat index of the first one; conf and n_skipped
 * are then untouched.  Otherwise *bad_index = -1.  R*K must be < 2^31.
 * Pixels are counted in parallel; the counts are exact for any thread
 * count. */
int pm_confusion_accumulate(const void *pred, pm_label_type pred_type,
                            const void *gt, pm_label_type gt_type, int64_t n,
                            int64_t R, int64_t K, int64_t *conf,
                            int64_t *n_skipped, int64_t *bad_index);
/* Dense CRF (crf.c)                                                        */
/* ------------------------------------------------------------------------ */

/* Parameters of the fully connected CRF (Krähenbühl & Koltun 2011) with
 * Potts compatibility and pydensecrf's symmetric kernel normalisation.
 * Kernels: appearance exp(-|p_i-p_j|^2 / 2 theta_xy^2
 * - |I_i-I_j|^2 / 2 theta_rgb^2) and smoothness exp(-|p_i-p_j|^2 / 2
 * theta_xy^2), p in pixels (x, y), I in RGB intensity units.  A weight of 0
 * drops its kernel.  pm_crf_params_default fills the defaults of the
 * original recipe: 10 iterations, appearance w 4, theta_xy 67, theta_rgb 3,
 * smoothness w 3, theta_xy 1, and min_prob 0 (no floor on the softmax). */
typedef struct {
    int iterations;             /* >= 0; 0 returns softmax(logits)          */
    float appearance_weight;    /* >= 0                                     */
    float appearance_theta_xy;  /* > 0, pixels                              */
    float appearance_theta_rgb; /* > 0, intensity units                     */
    float smoothness_weight;    /* >= 0                                     */
    float smoothness_theta_xy;  /* > 0, pixels                              */
    float min_prob;             /* in [0, 1): U = -log max(softmax, min_prob)
                                   (pydensecrf's unary_from_softmax clips at
                                   1e-5); 0 = no floor                      */
} pm_crf_params;

void pm_crf_params_default(pm_crf_params *p);

/* A context of pm_dense_crf: per-thread workspaces (grown as needed, kept
 * between calls) and the smoothness kernel of the last image size, which
 * depends on the size and its two parameters only.  Reusing one context over
 * a dataset avoids rebuilding and re-faulting them.  A call that finds its
 * context in use by another thread runs on a temporary one (same results).
 * pm_crf_ctx_new returns NULL when out of memory; pm_crf_ctx_free(NULL) is
 * a no-op; free a context only when no call is using it. */
typedef struct pm_crf_ctx pm_crf_ctx;
pm_crf_ctx *pm_crf_ctx_new(void);
void pm_crf_ctx_free(pm_crf_ctx *ctx);

/* Mean-field marginals of the dense CRF for B images.
 *   ctx:       a context, or NULL for a temporary one
 *   images:    (B, H, W, 3) uint8 RGB, pixel-interleaved
 *   logits:    (B, L, H, W) logits or log-probabilities (the unary is
 *              U = -log_softmax(logits), the same for both)
 *   marginals: (B, L, H, W) output, Q after p->iterations updates
 *              Q <- softmax(-U + sum_m w_m D_m^-1/2 K_m D_m^-1/2 Q)
 *              (D_m = diag(K_m 1); the appearance K_m through a
 *              permutohedral lattice, the smoothness one exactly on the
 *              pixel grid if theta_xy <= 4, else on a lattice);
 *              may equal logits.
 * Images run in parallel when B >= the thread count, otherwise the threads
 * share each image; the result is bitwise the same for any thread
 * count.  Returns PM_ERR_NONFINITE if the logits hold NaN or inf,
 * PM_ERR_ARG for bad sizes or parameters (or an appearance theta so small
 * that lattice coordinates leave the range of the keys, |x / theta| about
 * 10^5). */
int pm_dense_crf(pm_crf_ctx *ctx, const uint8_t *images, const float *logits,
                 float *marginals, int64_t B, int64_t L, int64_t H, int64_t W,
                 const pm_crf_params *p);

/* Gaussian filtering on a permutohedral lattice, with no normalisation:
 *   features: (N, d) points already divided by the kernel widths, d <= 6
 *   values:   (N, V);  out: (N, V)
 * out ~= c sum_j exp(-|f_i - f_j|^2 / 2) values_j, the lattice operator
 * alpha S B S^T that pm_dense_crf uses (c: the lattice's constant scale). */
int pm_permutohedral_filter(const float *features, const float *values,
                            float *out, int64_t N, int d, int64_t V);

/* ------------------------------------------------------------------------ */
/* PriMaPs-EM and the linear probe (em.c)                                   */
/* ------------------------------------------------------------------------ */

/* Shapes: K classes (1 <= K <= 255; label 255 = ignore), C channels,
 * features at (h, w) with N = h*w pixels, label maps at (H, W).
 * Prototypes are weight-normalised: theta_k = g_k v_k / ||v_k|| (v: (K, C),
 * g: (K,)).  Logits of pixel p: z_kp = theta_k . F_p (+ bias_k for the
 * probe), computed at feature resolution with oneDNN and upsampled
 * bilinearly (the numbers of pm_upsample_bilinear) only inside the fused
 * label-resolution kernels, which never hold the (B, K, H, W) logits.
 *
 * Every result is bitwise identical for any thread count: matmuls run one
 * image per task (each primitive single-threaded inside our pool), the
 * label-resolution work is split into fixed bands of output rows, and every
 * reduction sums per-image / per-band partials in a fixed order. */

#define PM_IGNORE 255
#define PM_MAX_MASK_ID 65535

/* A workspace: oneDNN primitives cached per shape and buffers reused from
 * call to call (allocated when a larger shape first needs them).  Functions
 * that take a workspace must not run concurrently on the same one; callers
 * that share one across threads hold pm_em_ws_lock around each call. */
typedef struct pm_em_ws pm_em_ws;
int pm_em_ws_create(pm_em_ws **ws);
void pm_em_ws_free(pm_em_ws *ws);
void pm_em_ws_lock(pm_em_ws *ws);
void pm_em_ws_unlock(pm_em_ws *ws);
/* Bytes held by the workspace's buffers (not counting oneDNN's code). */
size_t pm_em_ws_bytes(const pm_em_ws *ws);

/* A batch of B images taken from dataset arrays of n images.
 *   features: (n, C, h, w); student: (n, C, h, w), the student's view, or
 *   NULL (the student sees features); masks: (n, H, W) mask maps (0 =
 *   background, ids <= PM_MAX_MASK_ID) or NULL; labels: (n, H, W), values
 *   in [0, K) or PM_IGNORE, or NULL;
 *   index: (B,) rows of those arrays forming the batch, or NULL for 0..B-1;
 *   flip: (B,) nonzero mirrors image b left-right (features and maps
 *   together), or NULL;
 *   features16, student16: the features / student view as float16 bits
 *   (binary16) in place of features / student, or NULL: pm_em_batch_widen
 *   converts them into the workspace (exactly) and points features /
 *   student there.  Only with index NULL. */
typedef struct {
    const float *features;
    const float *student;
    const int32_t *masks;
    const uint8_t *labels;
    const int64_t *index;
    const uint8_t *flip;
    int64_t n, B, C, h, w, H, W;
    const uint16_t *features16;
    const uint16_t *student16;
} pm_batch;

/* Widens the float16 features (and student view) of a batch into the
 * workspace, where they stay valid until the next call on it; a batch
 * without them is left as it is.  PM_ERR_ARG with an index. */
int pm_em_batch_widen(pm_em_ws *ws, pm_batch *bt);

/* Weight normalisation, row by row: v (K, C), g (K,) -> theta (K, C).
 * A zero row of v gives a zero row of theta.  g may be NULL (g = 1). */
int pm_weightnorm_fwd(const float *v, const float *g, int64_t K, int64_t C,
                      float *theta);
/* dtheta (K, C) -> dv (K, C), dg (K,) (dg may be NULL). */
int pm_weightnorm_bwd(const float *v, const float *g, const float *dtheta,
                      int64_t K, int64_t C, float *dv, float *dg);

/* Low-resolution logits of a batch: Z[b] = theta F[index[b]] (+ bias), then
 * mirrored left-right where flip[b] is set.  theta (K, C), bias (K,) or
 * NULL, Z (B, K, h, w).  PM_ERR_NONFINITE if a logit is NaN or inf. */
int pm_logits_fwd(pm_em_ws *ws, const pm_batch *bt, const float *F,
                  const float *theta, const float *bias, int64_t K, float *Z);
/* dtheta = sum_b unflip(dZ[b]) F[index[b]]^T (K, C); dbias = sum of dZ over
 * b and pixels (K,), or NULL.  dZ (B, K, h, w) is unflipped in place. */
int pm_logits_bwd(pm_em_ws *ws, const pm_batch *bt, const float *F,
                  float *dZ, int64_t K, float *dtheta, float *dbias);

/* The fused label-resolution kernels.  Z: (B, K, h, w) low-resolution
 * logits, upsampled bilinearly to (H, W) on the fly, tile by tile.
 *
 * Pass 1: chi (K,) = the mean softmax probability of each class over all
 * B*H*W pixels. */
int pm_label_softmax_mean(pm_em_ws *ws, const float *Z, int64_t B, int64_t K,
                          int64_t h, int64_t w, int64_t H, int64_t W,
                          double *chi);
/* Pass 2: the weighted cross-entropy at label resolution,
 *   loss = scale * sum_{p: y_p != 255} wt[y_p] * (-log softmax(z_p)[y_p]),
 * with labels y (n, H, W) read at rows index[b] (index NULL: b), mirrored
 * where flip[b] is set (flip NULL: none); wt (K,).  _bwd also writes
 * dZ = d loss / d Z (B, K, h, w). */
int pm_label_ce_fwd(pm_em_ws *ws, const float *Z, const uint8_t *labels,
                    const int64_t *index, const uint8_t *flip, int64_t n,
                    const float *wt, double scale, int64_t B, int64_t K,
                    int64_t h, int64_t w, int64_t H, int64_t W, double *loss);
int pm_label_ce_bwd(pm_em_ws *ws, const float *Z, const uint8_t *labels,
                    const int64_t *index, const uint8_t *flip, int64_t n,
                    const float *wt, double scale, int64_t B, int64_t K,
                    int64_t h, int64_t w, int64_t H, int64_t W, double *loss,
                    float *dZ);
/* Argmax over classes of the upsampled logits (ties: the smallest class):
 * Z (B, K, h, w) -> out (B, H, W). */
int pm_label_argmax(pm_em_ws *ws, const float *Z, int64_t B, int64_t K,
                    int64_t h, int64_t w, int64_t H, int64_t W, int32_t *out);

/* Cosine K-means at feature resolution on bt->features:
 *   loss = -(1/(B*N)) sum_p max_k (v_k/||v_k||) . (F_p/||F_p||);
 * a zero feature vector has cosine 0 with every prototype.  _bwd also
 * writes dv (K, C) (through the normalisation of v). */
int pm_kmeans_fwd(pm_em_ws *ws, const pm_batch *bt, const float *v,
                  int64_t K, double *loss);
int pm_kmeans_bwd(pm_em_ws *ws, const pm_batch *bt, const float *v,
                  int64_t K, double *loss, float *dv);

/* The focal loss of PriMaPs-EM on the student's view (bt->student, else
 * bt->features) against bt->labels: chi from pass 1 (a constant), class
 * weights (1 - chi_k)^gamma, loss = pass 2 with scale 1/(B*H*W).
 * chi (K,) out; _bwd also writes dv (K, C) and dg (K,). */
int pm_focal_fwd(pm_em_ws *ws, const pm_batch *bt, const float *v,
                 const float *g, int64_t K, double gamma, double *chi,
                 double *loss);
int pm_focal_bwd(pm_em_ws *ws, const pm_batch *bt, const float *v,
                 const float *g, int64_t K, double gamma, double *chi,
                 double *loss, float *dv, float *dg);

/* The E-step: the teacher's argmax at label resolution (theta (K, C) on
 * bt->features), then for every mask id i >= 1 of an image the mode of that
 * argmax over the mask's pixels (ties: the smallest class); background
 * pixels get PM_IGNORE.  out: (B, H, W), in the batch's (mirrored) frame.
 * PM_ERR_ARG if a mask id is negative or above PM_MAX_MASK_ID. */
int pm_teacher_pseudo(pm_em_ws *ws, const pm_batch *bt, const float *theta,
                      int64_t K, uint8_t *out);

/* One EM step: pseudo labels from the teacher (vt, gt) on bt->features and
 * bt->masks, then the focal loss of the student (vs, gs) and its gradient.
 * pseudo (B, H, W) may be NULL; it receives the pseudo labels. */
int pm_em_step(pm_em_ws *ws, const pm_batch *bt, const float *vt,
               const float *gt, const float *vs, const float *gs, int64_t K,
               double gamma, double *chi, double *loss, float *dv, float *dg,
               uint8_t *pseudo);

/* The linear probe: softmax regression with bias, weight (K, C), bias (K,),
 * against bt->labels at label resolution, mean over all B*H*W pixels
 * (ignored pixels count 0).  _bwd also writes dweight (K, C), dbias (K,). */
int pm_probe_fwd(pm_em_ws *ws, const pm_batch *bt, const float *weight,
                 const float *bias, int64_t K, double *loss);
int pm_probe_bwd(pm_em_ws *ws, const pm_batch *bt, const float *weight,
                 const float *bias, int64_t K, double *loss, float *dweight,
                 float *dbias);

/* Prediction: argmax_k of theta . F (+ bias) upsampled to (H, W);
 * bias may be NULL.  out: (B, H, W). */
int pm_predict(pm_em_ws *ws, const pm_batch *bt, const float *theta,
               const float *bias, int64_t K, int32_t *out);

#ifdef __cplusplus
}
#endif

#endif /* PRIMAPS_H */
