/*
 * crf_internal.h -- what the files of the dense CRF share: the lattice and
 * the kernels built on it, the 4- and 8-lane vector helpers, and the
 * functions one file defines and another calls.
 *
 *   crf_lattice.c  permutohedral lattice: construction, splat, blur,
 *                  slice; one normalised Gaussian kernel on it
 *   crf_grid.c     the smoothness kernel, exactly, on the pixel grid
 *   crf.c          mean-field inference and the public entry points
 */
#ifndef PM_CRF_INTERNAL_H
#define PM_CRF_INTERNAL_H

#include "primaps.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Lattice keys: the first d coordinates of a vertex of the scaled lattice
 * (the last is minus their sum), 21 bits each with a bias, three per word. */
#define LAT_MAX_D 6
#define LAT_FIELD_BITS 21
#define LAT_BIAS ((int64_t)1 << 20)
/* Elevated coordinates beyond 2^19 in magnitude could leave the 21-bit
 * fields; such features (a theta far below a pixel) are refused. */
#define LAT_MAX_COORD 524288.0

/* Vertices numbered 1..M in order of first appearance: their keys and a
 * hash table from key to number.  A slot holds the upper 32 bits of the
 * key's hash above the vertex id (0: empty); only on equal hash bits are
 * the keys compared.  8-byte slots keep the table of a colour image's
 * lattice in the L2 cache: lookups that miss it were most of the cost. */
typedef struct {
    int64_t M;
    uint64_t *keys;   /* (M+1, 2) packed key of each vertex                */
    uint64_t *table;  /* open addressing, linear probing                   */
    int64_t cap;      /* table slots, a power of two                       */
    size_t sz_table, sz_keys; /* bytes                                     */
} vtable;

/* A lattice and the scratch of its construction.  Buffers only grow, so a
 * lattice rebuilt for every image of a batch allocates once per size. */
typedef struct {
    int d;
    int64_t N, M;           /* points, vertices (ids 1..M; 0 = none)       */
    int32_t *offset;        /* (N, d+1) vertex id of each enclosing vertex */
    float *bary;            /* (N, d+1) barycentric weights                */
    int32_t *rem0;          /* (N, d+1) construction scratch               */
    int8_t *rank;           /* (N, d+1) construction scratch               */
    int32_t *nbr;           /* (d+1, M+1, 2) blur neighbours, 0 = none     */
    vtable tab;             /* the vertices; tab.M == M                    */
    vtable side;            /* those of the second half of the points,
                               numbered apart by a second thread           */
    int32_t *map;           /* (side.M + 1) side numbers -> tab numbers    */
    size_t sz_pts;          /* entries (N (d+1)) the point arrays hold     */
    size_t sz_nbr, sz_map;  /* bytes                                       */
} lattice;

/* The bodies take the row width P (a multiple of 4) as an argument and are
 * inlined into switches over the common widths, so that their inner loops
 * have constant trip counts and vectorise completely. */
#define PM_INLINE static inline __attribute__((always_inline))

/* The filtering loops are compiled twice, for AVX2 and for the baseline
 * (SSE2), and picked at load time.  Each lane's arithmetic is the same
 * sequence of IEEE operations in both (no FMA: -ffp-contract=off), so the
 * results are bitwise equal. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(PM_NO_CLONES)
#define PM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PM_CLONES
#endif

/* Vectors of 4 and 8 lanes (GCC/Clang vector extensions): the loops over
 * a row's lanes are written with them, since the compiler does not
 * vectorise loops whose source and destination rows may alias.  Each
 * lane does the same IEEE operations as a scalar loop would. */
typedef float pm_v4f __attribute__((vector_size(16)));
typedef int32_t pm_v4i __attribute__((vector_size(16)));
typedef float pm_v8f __attribute__((vector_size(32)));
typedef int32_t pm_v8i __attribute__((vector_size(32)));

/* Unaligned 8-lane loads and stores.  They are macros on an unaligned,
 * aliasing vector type: an 8-lane value passed to or returned from a
 * function has an ABI that depends on AVX (the baseline clones lack it). */
typedef float pm_v8f_u
    __attribute__((vector_size(32), aligned(4), may_alias));
#define load8(p) (*(const pm_v8f_u *)(const void *)(p))
#define store8(p, v) (*(pm_v8f_u *)(void *)(p) = (v))

static inline pm_v4f load4(const float *p)
{
    pm_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, pm_v4f v) { memcpy(p, &v, sizeof v); }

#define PM_WIDTH_SWITCH(P, CALL)                                              \
    switch (P) {                                                              \
    case 1: CALL(1); break;                                                   \
    case 4: CALL(4); break;                                                   \
    case 8: CALL(8); break;                                                   \
    case 12: CALL(12); break;                                                 \
    case 16: CALL(16); break;                                                 \
    case 20: CALL(20); break;                                                 \
    case 24: CALL(24); break;                                                 \
    case 28: CALL(28); break;                                                 \
    case 32: CALL(32); break;                                                 \
    default: CALL(P); break;                                                  \
    }

/* One Gaussian kernel of the CRF on a lattice, normalised symmetrically. */
typedef struct {
    lattice lat;
    float *splat_w; /* (N, d+1) norm_i * barycentric                       */
    float *slice_w; /* (N, d+1) alpha * weight * norm_i * barycentric      */
    float *feat;    /* (N, d) features                                     */
    float *ones;    /* (N) and vertex buffers for the normalisation        */
    float *va, *vb;
    size_t sz_w, sz_slice, sz_feat, sz_ones, sz_v;
} kernel;

/* The smoothness kernel on the pixel grid, taps for an H x W image (see
 * crf_grid.c); wider kernels than PM_GRID_MAX_THETA use the lattice. */
#define PM_GRID_MAX_THETA 4.0f

typedef struct {
    int64_t H, W;
    int r;
    float theta, weight;
    float *wv, *wh; /* (H, 2r+1) and (W, 2r+1) taps                         */
    double *norm;   /* (H + W) scratch                                      */
    size_t sz_w, sz_norm;
    int valid;
} grid_kernel;

/* Buffers: a large allocation (huge pages where they help), and growth of
 * a buffer whose old contents are dropped. */
void *pm_crf_malloc(size_t n);
int pm_crf_reserve(void **p, size_t *have, size_t need);

/* The lattice of N points f (N, d), built with nt threads, and the three
 * filtering steps on rows of P lanes (crf_lattice.c). */
int pm_lattice_build(lattice *L, const float *f, int64_t N, int d, int nt);
void pm_lattice_free(lattice *L);
void pm_lattice_splat(const lattice *L, const float *w, const float *src,
                      float *vals, int64_t i0, int64_t i1, int64_t P);
void pm_lattice_add(const lattice *L, float *a, const float *b, int64_t P);
float *pm_lattice_blur(const lattice *L, float *a, float *b, int64_t P);
void pm_lattice_slice_range(const lattice *L, const float *w, const float *vals,
                            float *dst, int64_t i0, int64_t i1, int64_t P);
void pm_lattice_slice(const lattice *L, const float *w, const float *vals,
                      float *dst, int64_t P);
float pm_lattice_alpha(int d);

/* A kernel's lattice and weights, and its vertex buffers (crf_lattice.c). */
int pm_kernel_build(kernel *k, int64_t N, int d, float weight, int nt);
void pm_kernel_free(kernel *k);
int pm_reserve_vals(float **a, float **b, size_t *have, int64_t M, int64_t P);

/* The grid's taps and the smoothness message of one image row
 * (crf_grid.c). */
int pm_grid_build(grid_kernel *g, int64_t H, int64_t W, float theta,
                  float weight);
void pm_grid_free(grid_kernel *g);
void pm_grid_message_row(const grid_kernel *g, const float *q, float *line,
                         float *out, int64_t y, int64_t P);

#endif
