/*
 * em_plan.h -- the label-resolution plan shared by em_label.c (softmax,
 * cross-entropy) and em_argmax.c: the interpolation tables of an
 * upsampling, its bands of output rows and segments, the per-thread tiles,
 * and the horizontal interpolation of a band (em_plan.c).  See em_label.c
 * for the resolution trick and the determinism of the bands.
 */
#ifndef PM_EM_PLAN_H
#define PM_EM_PLAN_H

#include "em_internal.h"

#include <stdint.h>

/* Output rows per band of the label-resolution kernels: small enough for
 * parallel slack on one image, large enough that the interpolated
 * low-resolution rows (about PM_BAND_ROWS * h / H + 2 of them) are reused. */
#define PM_BAND_ROWS 64
/* Pixels of a row segment: its K x PM_SEG softmax tiles stay in L1. */
#define PM_SEG 64

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PM_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define PM_CLONES
#endif

typedef struct {
    pm_axis_table ty, tx;
    int32_t *x0, *x1; /* tx.i0, tx.i1 as int32 */
    int64_t *a0, *a1; /* X with i0[X] = x: [a0[x], a0[x+1]); a1 for i1 */
    int64_t *boff;    /* offset of pixel X of class 0 in a row of blocks */
    /* Horizontal interpolation by 16-wide permutes (when every 16 outputs
     * read at most 32 consecutive inputs, i.e. when upsampling): chunk c
     * reads inputs vbase[c] + [0, 32), output j takes inputs vidx[32c + j]
     * and vidx[32c + 16 + j] with weights vl[32c + j], vl[32c + 16 + j]. */
    int vec_ok;
    int32_t *vbase, *vidx;
    float *vl;
    int64_t B, K, h, w, H, W;
    int64_t nbands; /* per image */
    int64_t nr_max; /* low-resolution rows one band reads, at most */
    int64_t tile;   /* floats of one thread's tile block */
} up_plan;

/* Output rows [Y0, Y1) of band j read low-resolution rows ylo..ylo+nr-1. */
static inline void band_rows(const up_plan *p, int64_t j, int64_t *Y0, int64_t *Y1,
                      int64_t *ylo, int64_t *nr)
{
    *Y0 = j * PM_BAND_ROWS;
    *Y1 = *Y0 + PM_BAND_ROWS < p->H ? *Y0 + PM_BAND_ROWS : p->H;
    *ylo = p->ty.i0[*Y0];
    *nr = p->ty.i1[*Y1 - 1] - *ylo + 1;
}

static inline int64_t pad16(int64_t n) { return (n + 15) & ~(int64_t)15; }
static inline int64_t nseg_of(int64_t W) { return (W + PM_SEG - 1) / PM_SEG; }
static inline int64_t seg_len(int64_t W, int64_t sg)
{
    return W - sg * PM_SEG < PM_SEG ? W - sg * PM_SEG : PM_SEG;
}

typedef struct {
    float *zh, *gh, *t, *e, *lacc;
    float *m, *s, *inv, *c, *cs, *zt, *row;
    int32_t *lt;
    int32_t *cls, *run; /* nr_max x pad16(w) each: band_classes */
} tile_t;

/* The interpolated rows of a band are stored in blocks of PM_SEG pixels:
 * block (r, sg) holds K x PM_SEG floats, class-major, for low-resolution
 * row r and pixels [sg PM_SEG, (sg + 1) PM_SEG), so that one segment of
 * one output row reads two contiguous blocks. */
static inline float *seg_block(float *base, int64_t r, int64_t sg, int64_t nseg,
                        int64_t K)
{
    return base + (r * nseg + sg) * K * PM_SEG;
}

static inline tile_t tile_carve(const up_plan *p, float *base)
{
    tile_t tl;
    const int64_t big = p->K * p->nr_max * nseg_of(p->W) * PM_SEG;
    tl.zh = base;
    tl.gh = tl.zh + big;
    tl.t = tl.gh + big;
    tl.e = tl.t + p->K * PM_SEG;
    tl.lacc = tl.e + p->K * PM_SEG;
    tl.m = tl.lacc + pad16(p->W);
    tl.s = tl.m + PM_SEG;
    tl.inv = tl.s + PM_SEG;
    tl.c = tl.inv + PM_SEG;
    tl.cs = tl.c + PM_SEG;
    tl.zt = tl.cs + PM_SEG;
    tl.lt = (int32_t *)(tl.zt + PM_SEG);
    tl.row = tl.zt + 2 * PM_SEG;
    tl.cls = (int32_t *)(tl.row + pad16(p->w + 32));
    tl.run = tl.cls + p->nr_max * pad16(p->w);
    return tl;
}

/* The geometry of output row Y inside a band starting at ylo. */
typedef struct {
    int64_t r0, r1;
    float a, b;
} vrow;

static inline vrow vrow_of(const up_plan *p, int64_t Y, int64_t ylo)
{
    vrow v = {p->ty.i0[Y] - ylo, p->ty.i1[Y] - ylo, p->ty.l0[Y], p->ty.l1[Y]};
    return v;
}

/* The plan of an upsampling (h, w) -> (H, W) of B images of K classes
 * and the per-thread tiles in ws (nt threads); on failure nothing is left
 * to free, else pm_plan_free releases the tables. */
int pm_plan_begin(pm_em_ws *ws, up_plan *p, int64_t B, int64_t K, int64_t h,
                  int64_t w, int64_t H, int64_t W, int *nt);
void pm_plan_free(up_plan *p);
/* Horizontal interpolation of rows ylo..ylo+nr-1 of image Zimg into zh. */
void pm_band_hinterp(const up_plan *p, const float *Zimg, int64_t ylo,
                     int64_t nr, float *restrict zh, float *restrict row);

#endif
