/*
 * crf.c -- the fully connected CRF with Gaussian edge potentials
 * (Krähenbühl & Koltun, NIPS 2011): mean-field inference whose message
 * passing is Gaussian filtering on a permutohedral lattice (Adams, Baek &
 * Davis, Eurographics 2010).
 *
 * The model, with pydensecrf's defaults (DIAG_KERNEL, NORMALIZE_SYMMETRIC,
 * PottsCompatibility): for kernels m with features f^m and weights w_m,
 * K_m[i, j] = exp(-|f^m_i - f^m_j|^2 / 2) (self term included),
 * D_m = diag(K_m 1), and every iteration sets, per pixel, over labels,
 *
 *     Q <- softmax(-U + sum_m w_m D_m^{-1/2} K_m D_m^{-1/2} Q).
 *
 * (densecrf's PottsCompatibility::apply returns -w Q and inference subtracts
 * every pairwise term from -U, so the signs above are its signs.)  The
 * lattice replaces K_m by alpha S B S^T, with S the splat (barycentric
 * weights of each point's d+1 enclosing vertices), B the blur (a
 * [1/2, 1, 1/2] stencil along each of the d+1 lattice directions, in order
 * 0..d) and alpha = 1 / (1 + 2^-d); D_m is computed with the same operator,
 * as densecrf does; the appearance kernel's numbers are pydensecrf's.  The
 * smoothness kernel (position only) is separable: for theta_xy <= 4 it is
 * computed exactly, as two 1-D filterings of the pixel grid (see "The
 * smoothness kernel, exactly"), cheaper than densecrf's 2-D lattice and
 * free of its error; wider ones use the lattice (d = 2) as densecrf does.
 *
 * Layout and threads.  Labels are padded to blocks of 4 lanes; values live
 * row-major with the lanes of a row contiguous, pixels (N, Lp) and lattice
 * vertices (M+1, Lp), so every splat, blur, slice and grid step works on
 * whole rows.  An iteration is a splat and blur of the appearance lattice,
 * then one pass over the image rows that filters the smoothness kernel,
 * slices the appearance values, adds the unary and takes the softmax, a
 * row at a time in cache.  A batch with at least as many images as threads
 * runs one image per thread; otherwise the threads share each image (see
 * mean_field_parallel: the splats of the two halves of the pixels, the
 * blur, the grid's rows and the row updates go to whichever thread is
 * free, two barriers an iteration).
 *
 * Determinism.  The lattice is numbered by one thread in pixel order (vertex
 * ids = order of first appearance); a splat adds each vertex's
 * contributions from the first half of the pixels in pixel order, starting
 * from 0, the same from the second half, then the two sums; every value is
 * computed by one thread in a fixed order, whichever thread it is.  So
 * marginals are bitwise identical for every thread count (and instruction
 * set: the AVX2 and baseline clones of the loops do the same IEEE
 * operations).
 */
#define _DEFAULT_SOURCE /* madvise, posix_memalign */
#include "primaps.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

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

/* ------------------------------------------------------------------------ */
/* Buffers                                                                  */
/* ------------------------------------------------------------------------ */

/* malloc for the big buffers: from 2 MiB up, aligned to 2 MiB and marked
 * for transparent huge pages where the kernel offers them on request.  The
 * lattice passes gather rows from all over multi-megabyte arrays; on 4 KiB
 * pages (under a hypervisor's nested paging above all) TLB misses and
 * first-touch page faults cost as much as the arithmetic.  Free with free. */
#define PM_HUGE ((size_t)2 << 20)

static void *big_malloc(size_t n)
{
    if (n < PM_HUGE) return malloc(n ? n : 1);
    void *p = NULL;
    const size_t rounded = (n + PM_HUGE - 1) & ~(PM_HUGE - 1);
    if (posix_memalign(&p, PM_HUGE, rounded) != 0) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, rounded, MADV_HUGEPAGE); /* a hint: failure is harmless */
#endif
    return p;
}

/* Makes *p hold at least `need` bytes; the old contents are dropped. */
static int reserve(void **p, size_t *have, size_t need)
{
    if (need <= *have && *p) return PM_OK;
    free(*p);
    *p = big_malloc(need);
    *have = *p ? need : 0;
    return *p ? PM_OK : PM_ERR_NOMEM;
}

static void lattice_free(lattice *L)
{
    free(L->offset);
    free(L->bary);
    free(L->rem0);
    free(L->rank);
    free(L->nbr);
    free(L->tab.keys);
    free(L->tab.table);
    free(L->side.keys);
    free(L->side.table);
    free(L->map);
    memset(L, 0, sizeof *L);
}

/* ------------------------------------------------------------------------ */
/* Hash table of lattice vertices                                           */
/* ------------------------------------------------------------------------ */

static inline uint64_t key_hash(uint64_t k0, uint64_t k1)
{
    uint64_t h = k0 * 0x9E3779B97F4A7C15ull ^ (k1 + 0x632BE59BD9B4E019ull) *
                                                  0xC2B2AE3D27D4EB4Full;
    h ^= h >> 31;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
}

static inline int32_t table_find(const vtable *T, uint64_t k0, uint64_t k1)
{
    const uint64_t mask = (uint64_t)T->cap - 1, h = key_hash(k0, k1);
    const uint64_t tag = h >> 32;
    for (uint64_t at = h & mask;; at = (at + 1) & mask) {
        const uint64_t s = T->table[at];
        if (s == 0) return 0;
        const int64_t id = (int64_t)(s & 0xFFFFFFFFu);
        if (s >> 32 == tag && T->keys[2 * id] == k0 &&
            T->keys[2 * id + 1] == k1)
            return (int32_t)id;
    }
}

/* Places vertex id (whose key is not in the table) into a free slot. */
static inline void table_place(vtable *T, uint64_t k0, uint64_t k1,
                               int32_t id)
{
    const uint64_t mask = (uint64_t)T->cap - 1, h = key_hash(k0, k1);
    uint64_t at = h & mask;
    while (T->table[at] != 0) at = (at + 1) & mask;
    T->table[at] = (h >> 32) << 32 | (uint64_t)(uint32_t)id;
}

/* Sizes the table for `expect` vertices (load <= 1/4) and reinserts the
 * vertices 1..M already known.  It starts small and grows with the vertex
 * count. */
static int table_resize(vtable *T, int64_t expect)
{
    int64_t cap = 4096;
    while (cap < 4 * expect) cap *= 2;
    if (reserve((void **)&T->table, &T->sz_table,
                (size_t)cap * sizeof(uint64_t)) != PM_OK)
        return PM_ERR_NOMEM;
    T->cap = cap;
    memset(T->table, 0, (size_t)cap * sizeof(uint64_t));
    for (int64_t v = 1; v <= T->M; v++)
        table_place(T, T->keys[2 * v], T->keys[2 * v + 1], (int32_t)v);
    return PM_OK;
}

/* An empty table whose keys array holds up to `most` vertices. */
static int table_init(vtable *T, int64_t most)
{
    T->M = 0;
    if (reserve((void **)&T->keys, &T->sz_keys,
                (size_t)(most + 1) * 2 * sizeof(uint64_t)) != PM_OK)
        return PM_ERR_NOMEM;
    return table_resize(T, 0);
}

/* The id of key (k0, k1), inserting it as vertex M+1 if new. */
static inline int table_insert(vtable *T, uint64_t k0, uint64_t k1,
                               int32_t *id)
{
    const uint64_t mask = (uint64_t)T->cap - 1, h = key_hash(k0, k1);
    const uint64_t tag = h >> 32;
    uint64_t at = h & mask;
    for (;; at = (at + 1) & mask) {
        const uint64_t s = T->table[at];
        if (s == 0) break;
        const int64_t v = (int64_t)(s & 0xFFFFFFFFu);
        if (s >> 32 == tag && T->keys[2 * v] == k0 &&
            T->keys[2 * v + 1] == k1) {
            *id = (int32_t)v;
            return PM_OK;
        }
    }
    const int64_t v = ++T->M;
    T->keys[2 * v] = k0;
    T->keys[2 * v + 1] = k1;
    *id = (int32_t)v;
    if (2 * T->M > T->cap) return table_resize(T, T->M);
    T->table[at] = tag << 32 | (uint64_t)v;
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* Construction                                                             */
/* ------------------------------------------------------------------------ */

/*
 * Locates one point in the lattice (Adams et al. 2010, section 3.1).
 * f (d) is the point, already divided by the kernel's standard deviations;
 * sf[i] = sqrt(2/3) (d+1) / sqrt((i+1)(i+2)) scales it so that the blur
 * approximates a unit Gaussian.  Writes the nearest remainder-0 point rem0
 * (d+1), the rank of each coordinate's fractional part (d+1) and the
 * barycentric weights (d+1) of the enclosing simplex.  Returns 0, or 1 if
 * the point is not finite or too far out for the key fields.
 */
static int lattice_locate(const float *f, int d, const double *sf,
                          int32_t *rem0, int8_t *rank, float *bary)
{
    double el[LAT_MAX_D + 1], dif[LAT_MAX_D + 1], b[LAT_MAX_D + 2];
    const int d1 = d + 1;
    const double inv_d1 = 1.0 / d1;
    /* Elevation onto the plane x . 1 = 0 of R^{d+1}. */
    double sm = 0.0;
    for (int j = d; j > 0; j--) {
        const double cf = (double)f[j - 1] * sf[j - 1];
        el[j] = sm - j * cf;
        sm += cf;
    }
    el[0] = sm;
    int sum = 0;
    for (int i = 0; i <= d; i++) {
        if (!(fabs(el[i]) < LAT_MAX_COORD)) return 1;
        /* The nearest multiple of d+1 (ties down).  k is floor(el / d1)
         * or one less near a multiple; either way the nearest of k d1 and
         * (k+1) d1 is the nearest multiple. */
        const double t = el[i] * inv_d1;
        int32_t k = (int32_t)t;
        k -= t < (double)k;
        const double dn = (double)k * d1, up = dn + d1;
        const int32_t q = (up - el[i] < el[i] - dn) ? k + 1 : k;
        rem0[i] = q * d1;
        sum += q;
        dif[i] = el[i] - rem0[i];
        rank[i] = 0;
    }
    /* Rank of each coordinate's offset from rem0, largest first (ties to
     * the lower index). */
    for (int i = 0; i < d; i++)
        for (int j = i + 1; j <= d; j++) {
            const int lt = dif[i] < dif[j];
            rank[i] = (int8_t)(rank[i] + lt);
            rank[j] = (int8_t)(rank[j] + !lt);
        }
    /* Back onto the plane if the rounded point left it. */
    for (int i = 0; i <= d; i++) {
        int rk = rank[i] + sum;
        if (rk < 0) {
            rk += d1;
            rem0[i] += d1;
        } else if (rk > d) {
            rk -= d1;
            rem0[i] -= d1;
        }
        rank[i] = (int8_t)rk;
    }
    for (int i = 0; i <= d + 1; i++) b[i] = 0.0;
    for (int i = 0; i <= d; i++) {
        const double v = (el[i] - rem0[i]) * inv_d1;
        b[d - rank[i]] += v;
        b[d - rank[i] + 1] -= v;
    }
    b[0] += 1.0 + b[d + 1];
    for (int i = 0; i <= d; i++) bary[i] = (float)b[i];
    return 0;
}

/* The packed key of the vertex of remainder r of a located point. */
static inline void vertex_key(const int32_t *rem0, const int8_t *rank, int d,
                              int r, uint64_t *k0, uint64_t *k1)
{
    uint64_t w[2] = {0, 0};
    for (int i = 0; i < d; i++) {
        const int64_t c = rem0[i] + (rank[i] <= d - r ? r : r - (d + 1));
        w[i / 3] |= (uint64_t)(c + LAT_BIAS) << (LAT_FIELD_BITS * (i % 3));
    }
    *k0 = w[0];
    *k1 = w[1];
}

/* Numbers in T the vertices of the located points [i0, i1) in order of
 * first appearance, writing their ids into L->offset.  A point in the
 * same simplex as its predecessor (neighbouring pixels of similar colour)
 * reuses its vertex ids. */
static int number_range(const lattice *L, vtable *T, int64_t i0, int64_t i1)
{
    const int d = L->d, d1 = d + 1;
    for (int64_t i = i0; i < i1; i++) {
        const int32_t *rem = L->rem0 + i * d1;
        const int8_t *rk = L->rank + i * d1;
        int32_t *off = L->offset + i * d1;
        if (i > i0 && !memcmp(rem, rem - d1, (size_t)d * sizeof(int32_t)) &&
            !memcmp(rk, rk - d1, (size_t)d)) {
            memcpy(off, off - d1, (size_t)d1 * sizeof(int32_t));
            continue;
        }
        for (int r = 0; r <= d; r++) {
            uint64_t k0, k1;
            vertex_key(rem, rk, d, r, &k0, &k1);
            const int st = table_insert(T, k0, k1, off + r);
            if (st != PM_OK) return st;
        }
    }
    return PM_OK;
}

/* Numbers the vertices of the located points in order of first appearance
 * (ids 1..M).  On several threads, a second thread numbers the second
 * half of the points apart while the first numbers the first half; then
 * the second half's vertices, in their own order of first appearance, get
 * the first half's id or the next new one, which is exactly the numbering
 * of one pass over all the points: the same lattice for any nt. */
#define PM_SPLIT_MIN 4096
static int number_vertices(lattice *L, int nt)
{
    const int64_t N = L->N, d1 = L->d + 1;
    const int64_t mid = nt > 1 && N >= PM_SPLIT_MIN ? N / 2 : N;
    /* At most N (d+1) vertices; pages past the ones used are never
     * touched. */
    if (table_init(&L->tab, N * d1) != PM_OK) return PM_ERR_NOMEM;
    if (mid == N) {
        const int st = number_range(L, &L->tab, 0, N);
        L->M = L->tab.M;
        return st;
    }
    if (table_init(&L->side, (N - mid) * d1) != PM_OK) return PM_ERR_NOMEM;
    int st0 = PM_OK, st1 = PM_OK, next = 0;
#pragma omp parallel num_threads(2)
    for (;;) { /* the halves go to whichever thread is free */
        const int h = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
        if (h == 0) st0 = number_range(L, &L->tab, 0, mid);
        if (h == 1) st1 = number_range(L, &L->side, mid, N);
        if (h >= 1) break;
    }
    if (st0 != PM_OK) return st0;
    if (st1 != PM_OK) return st1;
    const vtable *S = &L->side;
    if (reserve((void **)&L->map, &L->sz_map,
                (size_t)(S->M + 1) * sizeof(int32_t)) != PM_OK)
        return PM_ERR_NOMEM;
    L->map[0] = 0;
    for (int64_t u = 1; u <= S->M; u++) {
        const int st = table_insert(&L->tab, S->keys[2 * u],
                                    S->keys[2 * u + 1], &L->map[u]);
        if (st != PM_OK) return st;
    }
    int32_t *off = L->offset;
    const int32_t *map = L->map;
#pragma omp parallel for schedule(dynamic, 8192) num_threads(nt)
    for (int64_t e = mid * d1; e < N * d1; e++) off[e] = map[off[e]];
    L->M = L->tab.M;
    return PM_OK;
}

/* Builds the lattice of N points f (N, d) with nt threads (1 inside an
 * outer parallel region).  Returns PM_ERR_ARG for points out of range. */
static int lattice_build(lattice *L, const float *f, int64_t N, int d, int nt)
{
    const int d1 = d + 1;
    if (d < 1 || d > LAT_MAX_D || N < 1 || N > (int64_t)(INT32_MAX / d1 - 1))
        return PM_ERR_ARG;
    const size_t np = (size_t)N * (size_t)d1;
    if (np > L->sz_pts || !L->offset) {
        free(L->offset);
        free(L->bary);
        free(L->rem0);
        free(L->rank);
        L->offset = big_malloc(np * sizeof(int32_t));
        L->bary = big_malloc(np * sizeof(float));
        L->rem0 = big_malloc(np * sizeof(int32_t));
        L->rank = big_malloc(np);
        L->sz_pts = np;
        if (!L->offset || !L->bary || !L->rem0 || !L->rank) {
            lattice_free(L);
            return PM_ERR_NOMEM;
        }
    }
    L->d = d;
    L->N = N;
    L->M = 0;

    double sf[LAT_MAX_D];
    const double inv_std = sqrt(2.0 / 3.0) * d1;
    for (int i = 0; i < d; i++)
        sf[i] = inv_std / sqrt((double)(i + 1) * (i + 2));

    /* 1. Locate every point (parallel, independent). */
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt) if (nt > 1) \
    reduction(| : bad)
    for (int64_t i = 0; i < N; i++)
        bad |= lattice_locate(f + i * d, d, sf, L->rem0 + i * d1,
                              L->rank + i * d1, L->bary + i * d1);
    if (bad) return PM_ERR_ARG;
    if (pm_interrupted()) return PM_ERR_INTERRUPTED;

    /* 2. Number the vertices in order of first appearance. */
    int st = number_vertices(L, nt);
    if (st != PM_OK) return st;
    if (pm_interrupted()) return PM_ERR_INTERRUPTED;
    const int64_t M = L->M;

    /* 3. Blur neighbours along each direction j: n1 = key + (d+1) e_j - 1,
     * n2 = key - (d+1) e_j + 1 (e_d: the implied last coordinate), so n2 of
     * n1(v) is v: look n1 up and fill n2 by inversion (a bijection, so no
     * two threads write the same n2). */
    if (reserve((void **)&L->nbr, &L->sz_nbr,
                (size_t)d1 * (size_t)(M + 1) * 2 * sizeof(int32_t)) != PM_OK)
        return PM_ERR_NOMEM;
    uint64_t ones[2] = {0, 0};
    for (int i = 0; i < d; i++)
        ones[i / 3] += (uint64_t)1 << (LAT_FIELD_BITS * (i % 3));
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#pragma omp for schedule(dynamic, 8192)
        for (int64_t t = 0; t < (int64_t)d1 * (M + 1); t++) {
            L->nbr[2 * t] = 0;
            L->nbr[2 * t + 1] = 0;
        }
        for (int j = 0; j <= d; j++) {
            uint64_t add[2] = {0, 0};
            if (j < d)
                add[j / 3] = (uint64_t)d1 << (LAT_FIELD_BITS * (j % 3));
            int32_t *nb = L->nbr + (size_t)j * (size_t)(M + 1) * 2;
#pragma omp for schedule(dynamic, 1024)
            for (int64_t v = 1; v <= M; v++) {
                const uint64_t k0 = L->tab.keys[2 * v] - ones[0] + add[0];
                const uint64_t k1 = L->tab.keys[2 * v + 1] - ones[1] + add[1];
                const int32_t n1 = table_find(&L->tab, k0, k1);
                nb[2 * v] = n1;
                if (n1) nb[2 * n1 + 1] = (int32_t)v;
            }
        }
    }
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* Filtering: splat, blur, slice on rows of P lanes                        */
/* ------------------------------------------------------------------------ */

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

/* Row operations on P lanes: 8 lanes at a time, then 4, then 1 (P = 1 for
 * the normalisation).  o += w s: */
PM_INLINE void row_axpy(float *o, float w, const float *s, int64_t P)
{
    int64_t c = 0;
    for (; c + 8 <= P; c += 8) store8(o + c, load8(o + c) + w * load8(s + c));
    for (; c + 4 <= P; c += 4) store4(o + c, load4(o + c) + w * load4(s + c));
    for (; c < P; c++) o[c] += w * s[c];
}

/* o = w s: */
PM_INLINE void row_scale(float *o, float w, const float *s, int64_t P)
{
    int64_t c = 0;
    for (; c + 8 <= P; c += 8) store8(o + c, w * load8(s + c));
    for (; c + 4 <= P; c += 4) store4(o + c, w * load4(s + c));
    for (; c < P; c++) o[c] = w * s[c];
}

/* o = s + 0.5 (a + b): */
PM_INLINE void row_blur(float *o, const float *s, const float *a,
                        const float *b, int64_t P)
{
    int64_t c = 0;
    for (; c + 8 <= P; c += 8)
        store8(o + c,
               load8(s + c) + 0.5f * (load8(a + c) + load8(b + c)));
    for (; c + 4 <= P; c += 4)
        store4(o + c,
               load4(s + c) + 0.5f * (load4(a + c) + load4(b + c)));
    for (; c < P; c++) o[c] = s[c] + 0.5f * (a[c] + b[c]);
}

/* vals[v] = sum over the points i in [i0, i1) and corners r with
 * offset[i, r] = v of w[i, r] src[i], accumulated in pixel order;
 * (M+1, P), row 0 stays 0. */
PM_INLINE void splat_body(const lattice *L, const float *w, const float *src,
                          float *vals, int64_t i0, int64_t i1, int64_t P)
{
    const int d1 = L->d + 1;
    memset(vals + P, 0, (size_t)(L->M * P) * sizeof(float));
    for (int64_t i = i0; i < i1; i++) {
        const float *s = src + i * P;
        const int32_t *off = L->offset + i * d1;
        const float *wi = w + i * d1;
        for (int r = 0; r < d1; r++)
            row_axpy(vals + (int64_t)off[r] * P, wi[r], s, P);
    }
}

/* One pass of the [1/2, 1, 1/2] stencil along direction j, a -> b, for the
 * vertices [v0, v1). */
PM_INLINE void blur_body(const lattice *L, int j, const float *a, float *b,
                         int64_t v0, int64_t v1, int64_t P)
{
    const int32_t *nb = L->nbr + (size_t)j * (size_t)(L->M + 1) * 2;
    for (int64_t v = v0; v < v1; v++) {
        const float *s = a + v * P;
        const float *n1 = a + (int64_t)nb[2 * v] * P;
        const float *n2 = a + (int64_t)nb[2 * v + 1] * P;
        row_blur(b + v * P, s, n1, n2, P);
    }
}

/* dst[i - i0] = sum_r w[i, r] vals[offset[i, r]] for the points [i0, i1)
 * (dst holds the rows of those points only). */
PM_INLINE void slice_body(const lattice *L, const float *w, const float *vals,
                          float *dst, int64_t i0, int64_t i1, int64_t P)
{
    const int d1 = L->d + 1;
    for (int64_t i = i0; i < i1; i++) {
        float *o = dst + (i - i0) * P;
        const int32_t *off = L->offset + i * d1;
        const float *wi = w + i * d1;
        row_scale(o, wi[0], vals + (int64_t)off[0] * P, P);
        for (int r = 1; r < d1; r++)
            row_axpy(o, wi[r], vals + (int64_t)off[r] * P, P);
    }
}

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

PM_CLONES static void lattice_splat(const lattice *L, const float *w,
                                    const float *src, float *vals, int64_t i0,
                                    int64_t i1, int64_t P)
{
#define PM_SPLAT(W) splat_body(L, w, src, vals, i0, i1, W)
    PM_WIDTH_SWITCH(P, PM_SPLAT)
#undef PM_SPLAT
}

/* a[v] += b[v] for the vertices 1..M. */
PM_CLONES static void lattice_add(const lattice *L, float *a, const float *b,
                                  int64_t P)
{
    for (int64_t k = P; k < (L->M + 1) * P; k++) a[k] += b[k];
}

PM_CLONES static void lattice_blur_pass(const lattice *L, int j,
                                        const float *a, float *b, int64_t v0,
                                        int64_t v1, int64_t P)
{
#define PM_BLUR(W) blur_body(L, j, a, b, v0, v1, W)
    PM_WIDTH_SWITCH(P, PM_BLUR)
#undef PM_BLUR
}

/* d+1 blur passes ping-ponging between a and b; returns the buffer that
 * holds the result.  Row 0 of both must be zero. */
static float *lattice_blur(const lattice *L, float *a, float *b, int64_t P)
{
    for (int j = 0; j <= L->d; j++) {
        lattice_blur_pass(L, j, a, b, 1, L->M + 1, P);
        float *t = a;
        a = b;
        b = t;
    }
    return a;
}

PM_CLONES static void lattice_slice_range(const lattice *L, const float *w,
                                          const float *vals, float *dst,
                                          int64_t i0, int64_t i1, int64_t P)
{
#define PM_SLICE(W) slice_body(L, w, vals, dst, i0, i1, W)
    PM_WIDTH_SWITCH(P, PM_SLICE)
#undef PM_SLICE
}

static void lattice_slice(const lattice *L, const float *w, const float *vals,
                          float *dst, int64_t P)
{
    lattice_slice_range(L, w, vals, dst, 0, L->N, P);
}

static float lattice_alpha(int d)
{
    return 1.0f / (1.0f + powf(2.0f, (float)-d));
}

/* ------------------------------------------------------------------------ */
/* One Gaussian kernel of the CRF, normalised symmetrically                 */
/* ------------------------------------------------------------------------ */

typedef struct {
    lattice lat;
    float *splat_w; /* (N, d+1) norm_i * barycentric                       */
    float *slice_w; /* (N, d+1) alpha * weight * norm_i * barycentric      */
    float *feat;    /* (N, d) features                                     */
    float *ones;    /* (N) and vertex buffers for the normalisation        */
    float *va, *vb;
    size_t sz_w, sz_slice, sz_feat, sz_ones, sz_v;
} kernel;

static void kernel_free(kernel *k)
{
    lattice_free(&k->lat);
    free(k->splat_w);
    free(k->slice_w);
    free(k->feat);
    free(k->ones);
    free(k->va);
    free(k->vb);
    memset(k, 0, sizeof *k);
}

/* Makes the two vertex buffers hold (M+1) rows of P floats, row 0 zero. */
static int reserve_vals(float **a, float **b, size_t *have, int64_t M,
                        int64_t P)
{
    const size_t need = (size_t)(M + 1) * (size_t)P * sizeof(float);
    if (need > *have || !*a || !*b) {
        free(*a);
        free(*b);
        *a = big_malloc(need);
        *b = big_malloc(need);
        *have = (*a && *b) ? need : 0;
        if (!*a || !*b) return PM_ERR_NOMEM;
    }
    memset(*a, 0, (size_t)P * sizeof(float));
    memset(*b, 0, (size_t)P * sizeof(float));
    return PM_OK;
}

/* Builds the lattice of k->feat (N, d) and the weights of
 * weight D^{-1/2} K D^{-1/2}, with D = diag(K 1) from the same lattice. */
static int kernel_build(kernel *k, int64_t N, int d, float weight, int nt)
{
    int st = lattice_build(&k->lat, k->feat, N, d, nt);
    if (st != PM_OK) return st;
    const lattice *L = &k->lat;
    const int64_t np = N * (d + 1);
    if (reserve((void **)&k->splat_w, &k->sz_w, (size_t)np * sizeof(float)) ||
        reserve((void **)&k->slice_w, &k->sz_slice,
                (size_t)np * sizeof(float)) ||
        reserve((void **)&k->ones, &k->sz_ones, (size_t)N * sizeof(float)))
        return PM_ERR_NOMEM;
    st = reserve_vals(&k->va, &k->vb, &k->sz_v, L->M, 1);
    if (st != PM_OK) return st;
    const float alpha = lattice_alpha(d);
    /* K 1: splat ones, blur, slice with alpha. */
    for (int64_t i = 0; i < N; i++) k->ones[i] = 1.0f;
    for (int64_t e = 0; e < np; e++) k->slice_w[e] = alpha * L->bary[e];
    lattice_splat(L, L->bary, k->ones, k->va, 0, N, 1);
    const float *res = lattice_blur(L, k->va, k->vb, 1);
    lattice_slice(L, k->slice_w, res, k->ones, 1);
    /* norm = D^{-1/2} (densecrf adds 1e-20 under the root). */
#pragma omp parallel for schedule(dynamic, 2048) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < N; i++) {
        const float norm = (float)(1.0 / sqrt((double)k->ones[i] + 1e-20));
        for (int r = 0; r <= d; r++) {
            const int64_t e = i * (d + 1) + r;
            k->splat_w[e] = norm * L->bary[e];
            k->slice_w[e] = alpha * weight * norm * L->bary[e];
        }
    }
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* exp for the softmax                                                      */
/* ------------------------------------------------------------------------ */

/* exp(x) over a row of n floats, n a multiple of 4, for x <= 0 (the
 * softmax calls it L N times per iteration; libm's expf does not vectorise
 * and was the largest single cost).  Written with GCC/Clang vector
 * extensions, four lanes at a time, in plain IEEE arithmetic: the same bits
 * on every machine and thread count.  Range reduction x = n ln2 + r (ln2
 * split in two parts, n rounded with the 1.5 * 2^23 trick), a degree-6
 * polynomial for exp(r) on |r| <= ln2/2 (Cephes' expf coefficients;
 * relative error under 1e-7), then 2^n through the exponent bits.
 * Arguments below -69, i.e. probabilities under 1e-30, give exactly 0, so
 * no subnormal ever enters the message passing (subnormal arithmetic is
 * slow); -inf (pad lanes) gives 0. */
/* *xp = exp(*xp) over the lanes of a vector of type VF (ints VI), as
 * described above; the 8-lane version does per lane what the 4-lane one
 * does (in place: see load8). */
#define PM_DEFINE_EXP(NAME, VF, VI)                                           \
    PM_INLINE void NAME(VF *xp)                                               \
    {                                                                         \
        const VF x = *xp;                                                     \
        const VF zero = {0.0f};                                               \
        const VF cut = zero - 69.0f;                                          \
        const VI keep = x >= cut; /* all ones where x >= -69 */               \
        const VF v = (VF)(((VI)x & keep) | ((VI)cut & ~keep));                \
        const VF t = v * 1.44269504088896341f;                                \
        const VF nf = (t + 12582912.0f) - 12582912.0f;                        \
        const VF r = (v - nf * 0.693359375f) - nf * -2.12194440e-4f;          \
        VF p = r * 1.9875691500e-4f + 1.3981999507e-3f;                       \
        p = p * r + 8.3334519073e-3f;                                         \
        p = p * r + 4.1665795894e-2f;                                         \
        p = p * r + 1.6666665459e-1f;                                         \
        p = p * r + 5.0000001201e-1f;                                         \
        p = p * (r * r) + r + 1.0f;                                           \
        const VI bits = (__builtin_convertvector(nf, VI) + 127) << 23;        \
        const VF y = p * (VF)bits;                                            \
        *xp = (VF)((VI)y & keep);                                             \
    }

PM_DEFINE_EXP(exp4, pm_v4f, pm_v4i)
PM_DEFINE_EXP(exp8, pm_v8f, pm_v8i)

/* The largest of the n floats of a row (n a multiple of 4; max is exact,
 * so the order does not matter). */
static inline float row_max(const float *e, int64_t n)
{
    pm_v4f m = load4(e);
    for (int64_t c = 4; c < n; c += 4) {
        const pm_v4f x = load4(e + c);
        const pm_v4i gt = x > m;
        m = (pm_v4f)(((pm_v4i)x & gt) | ((pm_v4i)m & ~gt));
    }
    const float a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
    return a > b ? a : b;
}

/* e <- exp(e - shift) over a row, adding each 4-lane vector into *acc (the
 * lanes are combined in a fixed order by hsum4). */
static inline void exp_shift_row(float *e, int64_t n, float shift,
                                 pm_v4f *acc)
{
    pm_v4f s = *acc;
    for (int64_t c = 0; c < n; c += 4) {
        pm_v4f x = load4(e + c) - shift;
        exp4(&x);
        store4(e + c, x);
        s += x;
    }
    *acc = s;
}

static inline float hsum4(pm_v4f s) { return (s[0] + s[1]) + (s[2] + s[3]); }

/* q = softmax(e) over the n lanes of a row (e is overwritten):
 * exp(e - max e) / sum, as densecrf computes it; used for the unary. */
static void softmax_row(float *e, float *q, int64_t n)
{
    pm_v4f acc = {0.0f, 0.0f, 0.0f, 0.0f};
    exp_shift_row(e, n, row_max(e, n), &acc);
    const float sum = hsum4(acc);
    for (int64_t c = 0; c < n; c += 4) store4(q + c, load4(e + c) / sum);
}

/* Lane-wise maximum (no NaN here). */
#define PM_VMAX(VI, m, x) ((__typeof__(m))(((VI)(x) & (VI)((x) > (m))) |       \
                                           ((VI)(m) & ~(VI)((x) > (m)))))

/* One pixel's update over its n lanes: e = (-U + a) + b into a (a: the
 * smoothness message, b: the appearance one, densecrf's order: -U, minus
 * the Gaussian term, minus the bilateral one; a missing message is left
 * out), then q = exp(e - max e) / sum, as densecrf computes it.  8 lanes
 * at a time, then 4, the same chunks in every pass (a store and a load
 * of different widths would stall); the sum adds the halves of the
 * 8-lane partial sums, then the 4-lane one, then the lanes by hsum4. */
PM_INLINE void energy_softmax_px(const float *u, float *a, const float *b,
                                 float *q, int64_t n, int has_a, int has_b)
{
    const pm_v8f ninf8 = (pm_v8f){0.0f} - INFINITY;
    const pm_v4f ninf4 = (pm_v4f){0.0f} - INFINITY;
    pm_v8f m8 = ninf8;
    pm_v4f m4 = ninf4;
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        pm_v8f e = load8(u + c);
        if (has_a) e = e + load8(a + c);
        if (has_b) e = e + load8(b + c);
        store8(a + c, e);
        m8 = PM_VMAX(pm_v8i, m8, e);
    }
    for (; c < n; c += 4) {
        pm_v4f e = load4(u + c);
        if (has_a) e = e + load4(a + c);
        if (has_b) e = e + load4(b + c);
        store4(a + c, e);
        m4 = PM_VMAX(pm_v4i, m4, e);
    }
    {
        const pm_v4f lo = {m8[0], m8[1], m8[2], m8[3]};
        const pm_v4f hi = {m8[4], m8[5], m8[6], m8[7]};
        m4 = PM_VMAX(pm_v4i, m4, lo);
        m4 = PM_VMAX(pm_v4i, m4, hi);
    }
    const float mxa = m4[0] > m4[1] ? m4[0] : m4[1];
    const float mxb = m4[2] > m4[3] ? m4[2] : m4[3];
    const float mx = mxa > mxb ? mxa : mxb;
    pm_v8f s8 = {0.0f};
    pm_v4f s4 = {0.0f};
    for (c = 0; c + 8 <= n; c += 8) {
        pm_v8f x = load8(a + c) - mx;
        exp8(&x);
        store8(a + c, x);
        s8 += x;
    }
    for (; c < n; c += 4) {
        pm_v4f x = load4(a + c) - mx;
        exp4(&x);
        store4(a + c, x);
        s4 += x;
    }
    const pm_v4f lo = {s8[0], s8[1], s8[2], s8[3]};
    const pm_v4f hi = {s8[4], s8[5], s8[6], s8[7]};
    const float sum = hsum4((lo + hi) + s4);
    for (c = 0; c + 8 <= n; c += 8) store8(q + c, load8(a + c) / sum);
    for (; c < n; c += 4) store4(q + c, load4(a + c) / sum);
}

/* energy_softmax_px over the W pixels of a row. */
PM_INLINE void energy_softmax_body(const float *u, float *a, const float *b,
                                   float *qn, int64_t W, int64_t P,
                                   int has_a, int has_b)
{
    for (int64_t x = 0; x < W; x++)
        energy_softmax_px(u + x * P, a + x * P, b + x * P, qn + x * P, P,
                          has_a, has_b);
}

PM_CLONES static void energy_softmax_row(const float *u, float *a,
                                         const float *b, float *qn, int64_t W,
                                         int64_t P, int has_a, int has_b)
{
#define PM_ESM(PW) energy_softmax_body(u, a, b, qn, W, PW, has_a, has_b)
    PM_WIDTH_SWITCH(P, PM_ESM)
#undef PM_ESM
}

/* ------------------------------------------------------------------------ */
/* The smoothness kernel, exactly, on the pixel grid                        */
/* ------------------------------------------------------------------------ */

/* A Gaussian of the positions alone is separable: K[i, j] = g(x_i - x_j)
 * g(y_i - y_j) with g(k) = exp(-k^2 / 2 theta^2), so D = diag(K 1) is
 * Sx(x) Sy(y) with Sx(x) = sum over the columns x' of g(x - x'), and
 * D^-1/2 K D^-1/2 = (Nx Gx Nx) (x) (Ny Gy Ny) with Nx = diag(Sx^-1/2).  The
 * message w D^-1/2 K D^-1/2 Q is a vertical then a horizontal filtering of
 * the pixel rows with per-position taps
 *     wv[y, k] = ny(y) g(k) ny(y + k),  wh[x, k] = w nx(x) g(k) nx(x + k),
 * |k| <= r, zero outside the image.  g is cut where it falls below e^-16
 * (1.1e-7 of its peak): r = floor(sqrt(32) theta).  This is the exact
 * kernel of the model (the lattice only approximates it: entries off by up
 * to 0.1 at theta = 1) and far cheaper at the widths in use: 2 (2r + 1)
 * multiply-adds per value, streaming through contiguous rows.  The cost
 * grows with theta, the lattice's falls: wider kernels use the lattice. */
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

static void grid_free(grid_kernel *g)
{
    free(g->wv);
    free(g->norm);
    memset(g, 0, sizeof *g);
}

static int grid_radius(float theta)
{
    return (int)floor(sqrt(32.0) * (double)theta);
}

/* Taps of one axis of n positions: w[x, k + r] = scale nx(x) g(k) nx(x + k)
 * (0 off the axis); nrm (n) is scratch. */
static void grid_axis(float *w, double *nrm, int64_t n, int r, double theta,
                      double scale)
{
    const int taps = 2 * r + 1;
    const double c = -0.5 / (theta * theta);
    for (int64_t x = 0; x < n; x++) {
        double sum = 0.0;
        for (int k = -r; k <= r; k++)
            if (x + k >= 0 && x + k < n) sum += exp(c * k * k);
        nrm[x] = 1.0 / sqrt(sum);
    }
    for (int64_t x = 0; x < n; x++)
        for (int k = -r; k <= r; k++)
            w[x * taps + k + r] =
                x + k >= 0 && x + k < n
                    ? (float)(scale * nrm[x] * exp(c * k * k) * nrm[x + k])
                    : 0.0f;
}

/* Makes g hold the taps for an H x W image, theta and weight. */
static int grid_build(grid_kernel *g, int64_t H, int64_t W, float theta,
                      float weight)
{
    if (g->valid && g->H == H && g->W == W && g->theta == theta &&
        g->weight == weight)
        return PM_OK;
    g->valid = 0;
    const int r = grid_radius(theta);
    const size_t taps = (size_t)(2 * r + 1);
    if (reserve((void **)&g->wv, &g->sz_w,
                (size_t)(H + W) * taps * sizeof(float)) ||
        reserve((void **)&g->norm, &g->sz_norm,
                (size_t)(H > W ? H : W) * sizeof(double)))
        return PM_ERR_NOMEM;
    g->wh = g->wv + (size_t)H * taps;
    grid_axis(g->wv, g->norm, H, r, theta, 1.0);
    grid_axis(g->wh, g->norm, W, r, theta, weight);
    g->H = H;
    g->W = W;
    g->r = r;
    g->theta = theta;
    g->weight = weight;
    g->valid = 1;
    return PM_OK;
}

/* out[x] = sum_k wh[x, k] line[x + k] for the W pixels of a row; line
 * holds r zero rows before and after the W pixel rows of P lanes.  The sums
 * run in vector registers, 8 lanes at a time then 4, up to 32 lanes per
 * pass over the row, k in order. */
PM_INLINE void grid_horizontal_body(const float *line, const float *wh,
                                    int taps, float *out, int64_t W,
                                    int64_t P)
{
    for (int64_t c0 = 0; c0 < P; c0 += 32) {
        const int64_t n = P - c0 < 32 ? P - c0 : 32;
        const int64_t n8 = n / 8, n4 = (n % 8) / 4;
        for (int64_t x = 0; x < W; x++) {
            const float *w = wh + x * taps, *s = line + x * P + c0;
            pm_v8f a8[4];
            pm_v4f a4 = {0.0f};
            for (int64_t v = 0; v < n8; v++) a8[v] = w[0] * load8(s + 8 * v);
            if (n4) a4 = w[0] * load4(s + 8 * n8);
            for (int k = 1; k < taps; k++) {
                const float wk = w[k];
                const float *sk = s + k * P;
                for (int64_t v = 0; v < n8; v++) a8[v] += wk * load8(sk + 8 * v);
                if (n4) a4 += wk * load4(sk + 8 * n8);
            }
            float *o = out + x * P + c0;
            for (int64_t v = 0; v < n8; v++) store8(o + 8 * v, a8[v]);
            if (n4) store4(o + 8 * n8, a4);
        }
    }
}

/* dst[i] = sum_k w[k] src[k * stride + i] over k = 0..nk-1 (in order)
 * for the 32 values of a block, in four 8-lane registers. */
#define PM_VBLOCK 32
PM_INLINE void grid_vertical_block(const float *src, int64_t stride,
                                   const float *w, int nk, float *dst)
{
    pm_v8f a0 = w[0] * load8(src), a1 = w[0] * load8(src + 8);
    pm_v8f a2 = w[0] * load8(src + 16), a3 = w[0] * load8(src + 24);
    for (int k = 1; k < nk; k++) {
        const float wk = w[k];
        const float *sk = src + k * stride;
        a0 += wk * load8(sk);
        a1 += wk * load8(sk + 8);
        a2 += wk * load8(sk + 16);
        a3 += wk * load8(sk + 24);
    }
    store8(dst, a0);
    store8(dst + 8, a1);
    store8(dst + 16, a2);
    store8(dst + 24, a3);
}

/* The same for the last values of a row (n a multiple of 4, under 32). */
PM_INLINE void grid_vertical_tail(const float *src, int64_t stride,
                                  const float *w, int nk, float *dst,
                                  int64_t n)
{
    for (int64_t c = 0; c < n; c += 4) {
        pm_v4f a = w[0] * load4(src + c);
        for (int k = 1; k < nk; k++) a += w[k] * load4(src + k * stride + c);
        store4(dst + c, a);
    }
}

/* The smoothness message of image row y into out (W, P): the rows of q
 * within r of y weighted into line (vertical), then filtered along the row
 * (horizontal).  line: (W + 2r, P) scratch whose first and last r rows
 * are zero. */
PM_CLONES static void grid_message_row(const grid_kernel *g, const float *q,
                                       float *line, float *out, int64_t y,
                                       int64_t P)
{
    const int r = g->r, taps = 2 * r + 1;
    const int64_t W = g->W, n = W * P;
    const int k0 = y < r ? (int)-y : -r;
    const int k1 = g->H - 1 - y < r ? (int)(g->H - 1 - y) : r;
    const float *wv = g->wv + y * taps + k0 + r, *src = q + (y + k0) * n;
    float *s = line + (int64_t)r * P;
    int64_t i = 0;
    for (; i + PM_VBLOCK <= n; i += PM_VBLOCK)
        grid_vertical_block(src + i, n, wv, k1 - k0 + 1, s + i);
    grid_vertical_tail(src + i, n, wv, k1 - k0 + 1, s + i, n - i);
    const float *wh = g->wh;
#define PM_HORIZ(PW) grid_horizontal_body(line, wh, taps, out, W, PW)
    PM_WIDTH_SWITCH(P, PM_HORIZ)
#undef PM_HORIZ
}

/* ------------------------------------------------------------------------ */
/* Mean-field inference                                                     */
/* ------------------------------------------------------------------------ */

/* Per-thread state: the appearance kernel of the current image and the
 * per-pixel and per-vertex values; all grow-only. */
/* The values of one lattice kernel over an iteration: the splats of the
 * two halves of the pixels (a, c), then the blur ping-ponging between a
 * and b; each (M+1, Lp), row 0 zero. */
typedef struct {
    float *a, *b, *c;
    size_t sz;
} lattice_vals;

/* Per-thread state: the appearance kernel of the current image and the
 * per-pixel and per-vertex values; all grow-only. */
typedef struct {
    kernel app;
    float *negu;    /* (N, Lp) -U = log_softmax(logits); pad lanes -inf     */
    float *q, *q1;  /* (N, Lp) marginals, this and the next iteration's     */
    float *m1;      /* (N, Lp) smoothness messages (grid, several threads);
                       scratch                                              */
    lattice_vals vapp, vsmooth;
    float *rows;    /* per thread: a row line (W + 2r, Lp) with zero ends,
                       two rows (W, Lp) of energies and messages            */
    int64_t rows_stride;
    size_t sz_rows, sz_scratch;
} workspace;

static void vals_free(lattice_vals *v)
{
    free(v->a);
    free(v->b);
    free(v->c);
    memset(v, 0, sizeof *v);
}

/* Makes v hold three buffers of (M+1) rows of P floats, row 0 zero. */
static int vals_reserve(lattice_vals *v, int64_t M, int64_t P)
{
    const size_t need = (size_t)(M + 1) * (size_t)P * sizeof(float);
    if (need > v->sz || !v->a || !v->b || !v->c) {
        vals_free(v);
        v->a = big_malloc(need);
        v->b = big_malloc(need);
        v->c = big_malloc(need);
        if (!v->a || !v->b || !v->c) {
            vals_free(v);
            return PM_ERR_NOMEM;
        }
        v->sz = need;
    }
    memset(v->a, 0, (size_t)P * sizeof(float));
    memset(v->b, 0, (size_t)P * sizeof(float));
    memset(v->c, 0, (size_t)P * sizeof(float));
    return PM_OK;
}

static void workspace_free(workspace *ws)
{
    kernel_free(&ws->app);
    free(ws->negu);
    vals_free(&ws->vapp);
    vals_free(&ws->vsmooth);
    free(ws->rows);
    memset(ws, 0, sizeof *ws);
}

/* Buffers for N pixels of Lp lanes, rows of width W, a smoothness radius r
 * and nt threads. */
static int workspace_rows(workspace *ws, int64_t N, int64_t W, int64_t Lp,
                          int r, int nt)
{
    const size_t row = (size_t)N * (size_t)Lp;
    if (reserve((void **)&ws->negu, &ws->sz_rows, 4 * row * sizeof(float)))
        return PM_ERR_NOMEM;
    ws->q = ws->negu + row;
    ws->q1 = ws->q + row;
    ws->m1 = ws->q1 + row;
    /* 16-float (64-byte) multiples keep the threads' rows apart. */
    const int64_t stride = ((3 * W + 2 * r) * Lp + 15) & ~(int64_t)15;
    const size_t bytes = (size_t)stride * (size_t)nt * sizeof(float);
    if (reserve((void **)&ws->rows, &ws->sz_scratch, bytes))
        return PM_ERR_NOMEM;
    memset(ws->rows, 0, bytes);
    ws->rows_stride = stride;
    return PM_OK;
}

/* 1 if any of the n floats is a NaN or an inf. */
static int any_nonfinite(const float *x, int64_t n, int nt)
{
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 16384) num_threads(nt) if (nt > 1) \
    reduction(| : bad)
    for (int64_t i = 0; i < n; i++) bad |= !isfinite(x[i]);
    return bad;
}

/* Plane-major (L, N) <-> pixel rows (N, Lp), a block of pixels at a time so
 * that each plane is read or written in runs (a pixel at a time, the planes
 * are a page apart and every access is a TLB miss). */
#define PM_TBLOCK 64

static void planes_to_rows(const float *src, float *dst, int64_t N, int64_t L,
                           int64_t Lp, float pad, int nt)
{
    const int64_t blocks = (N + PM_TBLOCK - 1) / PM_TBLOCK;
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < blocks; t++) {
        const int64_t i0 = t * PM_TBLOCK;
        const int64_t i1 = i0 + PM_TBLOCK < N ? i0 + PM_TBLOCK : N;
        for (int64_t c = 0; c < Lp; c++) {
            if (c < L)
                for (int64_t i = i0; i < i1; i++)
                    dst[i * Lp + c] = src[c * N + i];
            else
                for (int64_t i = i0; i < i1; i++) dst[i * Lp + c] = pad;
        }
    }
}

static void rows_to_planes(const float *src, float *dst, int64_t N, int64_t L,
                           int64_t Lp, int nt)
{
    const int64_t blocks = (N + PM_TBLOCK - 1) / PM_TBLOCK;
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < blocks; t++) {
        const int64_t i0 = t * PM_TBLOCK;
        const int64_t i1 = i0 + PM_TBLOCK < N ? i0 + PM_TBLOCK : N;
        for (int64_t c = 0; c < L; c++)
            for (int64_t i = i0; i < i1; i++) dst[c * N + i] = src[i * Lp + c];
    }
}

/* -U = log_softmax(logits) and Q = softmax(-U) as pixel rows.  The logits
 * are finite (checked up front).  Pad lanes get -U = -inf, so that every
 * softmax gives them exactly 0.  With min_prob > 0, -U = log max(softmax,
 * min_prob), as pydensecrf's unary_from_softmax gives. */
static void load_unary(const float *logits, workspace *ws, int64_t N,
                       int64_t L, int64_t Lp, float min_prob, int nt)
{
    const float floor_u = min_prob > 0.0f ? logf(min_prob) : -INFINITY;
    /* The logits, pad lanes -inf, into m1 (scratch). */
    planes_to_rows(logits, ws->m1, N, L, Lp, -INFINITY, nt);
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < N; i++) {
        float *x = ws->m1 + i * Lp;
        float *u = ws->negu + i * Lp, *q = ws->q + i * Lp;
        /* -U = x - max - log(sum exp(x - max)); exp(x - max) into q. */
        const float mx = row_max(x, Lp);
        memcpy(q, x, (size_t)Lp * sizeof(float));
        pm_v4f acc = {0.0f, 0.0f, 0.0f, 0.0f};
        exp_shift_row(q, Lp, mx, &acc);
        const float sum = hsum4(acc), lse = mx + logf(sum);
        for (int64_t c = 0; c < Lp; c++) {
            u[c] = x[c] - lse; /* -inf stays */
            q[c] /= sum;       /* Q = softmax(logits) = softmax(-U) */
        }
        if (min_prob > 0.0f) {
            for (int64_t c = 0; c < L; c++)
                u[c] = u[c] > floor_u ? u[c] : floor_u;
            memcpy(x, u, (size_t)Lp * sizeof(float));
            softmax_row(x, q, Lp); /* Q = softmax(-U) of the floored U */
        }
    }
}

/* The kernels of one image: the smoothness kernel on the grid or on a
 * lattice (or neither), the appearance lattice (or none). */
typedef struct {
    const grid_kernel *grid;
    const kernel *smooth;
    const kernel *app;
} kernels;

/* The splat of q through lattice kernel k for the pixels of half h (0:
 * [0, N/2), 1: [N/2, N)) into v->a or v->c, a scatter in pixel order. */
static void splat_half(const kernel *k, const float *q, lattice_vals *v,
                       int h, int64_t P)
{
    const int64_t N = k->lat.N, mid = N / 2;
    lattice_splat(&k->lat, k->splat_w, q, h ? v->c : v->a, h ? mid : 0,
                  h ? N : mid, P);
}

/* The sum of the two halves' splats, blurred; returns the buffer holding
 * the result. */
static const float *add_blur(const kernel *k, lattice_vals *v, int64_t P)
{
    lattice_add(&k->lat, v->a, v->c, P);
    return lattice_blur(&k->lat, v->a, v->b, P);
}

/* The new marginals qn of image row y from q: energies -U + smoothness +
 * appearance message, then the softmax.  The smoothness message is
 * sliced from a lattice (svals), computed on the grid here, or read from
 * ws->m1 (grid, precomputed: pre != 0); avals: the appearance lattice's
 * blurred values; scratch: this thread's rows. */
static void update_row(const workspace *ws, const kernels *ks,
                       const float *svals, const float *avals, int pre,
                       const float *q, float *qn, float *scratch, int64_t y,
                       int64_t W, int64_t P)
{
    const int r = ks->grid ? ks->grid->r : 0;
    float *line = scratch, *e = line + (W + 2 * r) * P, *a = e + W * P;
    const int has_s = ks->grid || ks->smooth, has_a = ks->app != NULL;
    const int64_t i0 = y * W;
    float *er = e;
    if (ks->grid && pre)
        er = ws->m1 + i0 * P;
    else if (ks->grid)
        grid_message_row(ks->grid, q, line, e, y, P);
    else if (ks->smooth)
        lattice_slice_range(&ks->smooth->lat, ks->smooth->slice_w, svals, e,
                            i0, i0 + W, P);
    if (has_a)
        lattice_slice_range(&ks->app->lat, ks->app->slice_w, avals, a, i0,
                            i0 + W, P);
    energy_softmax_row(ws->negu + i0 * P, er, a, qn + i0 * P, W, P, has_s,
                       has_a);
}

/* Mean-field by one thread. */
static float *mean_field_serial(workspace *ws, const kernels *ks, int64_t H,
                                int64_t W, int64_t P, int iterations)
{
    float *q = ws->q, *qn = ws->q1;
    for (int it = 0; it < iterations; it++) {
        if (pm_interrupted()) break; /* the caller returns PM_ERR_INTERRUPTED */
        const float *sv = NULL, *av = NULL;
        if (ks->smooth) {
            splat_half(ks->smooth, q, &ws->vsmooth, 0, P);
            splat_half(ks->smooth, q, &ws->vsmooth, 1, P);
            sv = add_blur(ks->smooth, &ws->vsmooth, P);
        }
        if (ks->app) {
            splat_half(ks->app, q, &ws->vapp, 0, P);
            splat_half(ks->app, q, &ws->vapp, 1, P);
            av = add_blur(ks->app, &ws->vapp, P);
        }
        for (int64_t y = 0; y < H; y++)
            update_row(ws, ks, sv, av, 0, q, qn, ws->rows, y, W, P);
        float *tmp = q;
        q = qn;
        qn = tmp;
    }
    return q;
}

/* Rows of the grid's smoothness messages into ws->m1, taken in blocks
 * from the shared counter *next until none is left. */
#define PM_ROW_BLOCK 4
static void grid_rows(const workspace *ws, const grid_kernel *g,
                      const float *q, float *scratch, int64_t *next,
                      int64_t P)
{
    for (;;) {
        const int64_t y0 = __atomic_fetch_add(next, PM_ROW_BLOCK,
                                              __ATOMIC_RELAXED);
        if (y0 >= g->H) return;
        const int64_t y1 = y0 + PM_ROW_BLOCK < g->H ? y0 + PM_ROW_BLOCK : g->H;
        for (int64_t y = y0; y < y1; y++)
            grid_message_row(g, q, scratch, ws->m1 + y * g->W * P, y, P);
    }
}

/* Mean-field on T >= 2 threads, two barriers an iteration, every piece of
 * work going to whichever thread is free, so that a thread the system
 * holds back holds up the others as little as possible.  Per iteration:
 * the splats of the two halves of the pixels of each lattice kernel are
 * tasks taken from a shared counter; the thread that completes a kernel's
 * second half adds the halves and blurs them; threads without a task
 * compute the grid's smoothness messages, rows taken from a counter;
 * barrier; then all update the rows, taken from a counter; barrier.
 * Every value is computed in the same way by whichever thread: the bits
 * are mean_field_serial's. */
static float *mean_field_parallel(workspace *ws, const kernels *ks,
                                  int64_t H, int64_t W, int64_t P,
                                  int iterations, int nt)
{
    const kernel *lk[2] = {ks->smooth, ks->app};
    lattice_vals *lv[2] = {&ws->vsmooth, &ws->vapp};
    const float *res[2] = {NULL, NULL};
    /* Tasks 2m + h: kernel m, half h; the kernels present only. */
    int tasks[4], ntasks = 0;
    for (int m = 0; m < 2; m++)
        if (lk[m]) {
            tasks[ntasks++] = 2 * m;
            tasks[ntasks++] = 2 * m + 1;
        }
    int64_t next_task = 0, next_grid = 0, next_row = 0;
    int done[2] = {0, 0};
    int stop = 0; /* written by thread 0, read by all after a barrier */
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        float *scratch = ws->rows + t * ws->rows_stride;
        float *q = ws->q, *qn = ws->q1;
        for (int it = 0; it < iterations; it++) {
            /* Nobody takes rows (or reads stop) before the next barrier. */
            if (t == 0) {
                next_row = 0;
                __atomic_store_n(&stop, pm_interrupted(), __ATOMIC_RELAXED);
            }
            for (;;) {
                const int64_t k = __atomic_fetch_add(&next_task, 1,
                                                     __ATOMIC_RELAXED);
                if (k >= ntasks) break;
                const int m = tasks[k] / 2, h = tasks[k] % 2;
                splat_half(lk[m], q, lv[m], h, P);
                if (__atomic_add_fetch(&done[m], 1, __ATOMIC_ACQ_REL) == 2)
                    res[m] = add_blur(lk[m], lv[m], P);
            }
            if (ks->grid) grid_rows(ws, ks->grid, q, scratch, &next_grid, P);
#pragma omp barrier
            /* Every thread leaves at the same point (the caller returns
             * PM_ERR_INTERRUPTED). */
            if (__atomic_load_n(&stop, __ATOMIC_RELAXED)) break;
            /* Nobody takes tasks or grid rows before the next barrier. */
            if (t == 0) {
                next_task = next_grid = 0;
                done[0] = done[1] = 0;
            }
            for (;;) {
                const int64_t y0 = __atomic_fetch_add(&next_row, PM_ROW_BLOCK,
                                                      __ATOMIC_RELAXED);
                if (y0 >= H) break;
                const int64_t y1 = y0 + PM_ROW_BLOCK < H ? y0 + PM_ROW_BLOCK : H;
                for (int64_t y = y0; y < y1; y++)
                    update_row(ws, ks, res[0], res[1], 1, q, qn, scratch, y,
                               W, P);
            }
            float *tmp = q;
            q = qn;
            qn = tmp;
#pragma omp barrier
        }
    }
    return iterations % 2 ? ws->q1 : ws->q;
}

/* Positional features x / theta, y / theta at the start of each stride. */
static void position_features(float *f, int64_t H, int64_t W, float theta,
                              int stride)
{
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            float *p = f + (y * W + x) * stride;
            p[0] = (float)x / theta;
            p[1] = (float)y / theta;
        }
}

/* One image: appearance lattice, unary, iterations, and the marginals
 * back in (L, H, W).  ks holds the smoothness kernel (grid or lattice, or
 * none); the appearance kernel is added here. */
static int crf_image(workspace *ws, kernels ks, const uint8_t *img,
                     const float *logits, float *out, int64_t L, int64_t H,
                     int64_t W, const pm_crf_params *p, int nt)
{
    const int64_t N = H * W, Lp = (L + 3) & ~(int64_t)3;
    const int run = L > 1 && p->iterations > 0;
    int st = workspace_rows(ws, N, W, Lp, ks.grid ? ks.grid->r : 0, nt);
    if (st != PM_OK) return st;
    ks.app = NULL;
    if (run && p->appearance_weight != 0.0f) {
        kernel *k = &ws->app;
        if (reserve((void **)&k->feat, &k->sz_feat,
                    (size_t)N * 5 * sizeof(float)) != PM_OK)
            return PM_ERR_NOMEM;
        position_features(k->feat, H, W, p->appearance_theta_xy, 5);
        for (int64_t i = 0; i < N; i++)
            for (int c = 0; c < 3; c++)
                k->feat[i * 5 + 2 + c] =
                    (float)img[i * 3 + c] / p->appearance_theta_rgb;
        st = kernel_build(k, N, 5, p->appearance_weight, nt);
        if (st != PM_OK) return st;
        if (pm_interrupted()) return PM_ERR_INTERRUPTED;
        ks.app = k;
    }
    load_unary(logits, ws, N, L, Lp, p->min_prob, nt);
    const float *q = ws->q;
    if (run && (ks.app || ks.smooth || ks.grid)) {
        if (ks.app && vals_reserve(&ws->vapp, ks.app->lat.M, Lp) != PM_OK)
            return PM_ERR_NOMEM;
        if (ks.smooth &&
            vals_reserve(&ws->vsmooth, ks.smooth->lat.M, Lp) != PM_OK)
            return PM_ERR_NOMEM;
        q = nt > 1 ? mean_field_parallel(ws, &ks, H, W, Lp, p->iterations, nt)
                   : mean_field_serial(ws, &ks, H, W, Lp, p->iterations);
        if (pm_interrupted()) return PM_ERR_INTERRUPTED;
    }
    rows_to_planes(q, out, N, L, Lp, nt);
    return PM_OK;
}

/* ------------------------------------------------------------------------ */
/* Public entry points                                                      */
/* ------------------------------------------------------------------------ */

struct pm_crf_ctx {
    /* The smoothness kernel depends on the image size and its own two
     * parameters only: built once, reused while they stay the same. */
    kernel smooth;
    int64_t smooth_h, smooth_w;
    float smooth_theta, smooth_weight;
    int smooth_valid;
    grid_kernel grid; /* the same on the pixel grid (narrow kernels) */
    workspace *ws; /* one per thread of the image-parallel mode */
    int nws;
    int busy; /* a call is running: a concurrent one uses its own context */
};

pm_crf_ctx *pm_crf_ctx_new(void) { return calloc(1, sizeof(pm_crf_ctx)); }

void pm_crf_ctx_free(pm_crf_ctx *ctx)
{
    if (!ctx) return;
    kernel_free(&ctx->smooth);
    grid_free(&ctx->grid);
    for (int t = 0; t < ctx->nws; t++) workspace_free(&ctx->ws[t]);
    free(ctx->ws);
    free(ctx);
}

static int valid_theta(float t) { return isfinite(t) && t > 0.0f; }
static int valid_weight(float w) { return isfinite(w) && w >= 0.0f; }

void pm_crf_params_default(pm_crf_params *p)
{
    p->iterations = 10;
    p->appearance_weight = 4.0f;
    p->appearance_theta_xy = 67.0f;
    p->appearance_theta_rgb = 3.0f;
    p->smoothness_weight = 3.0f;
    p->smoothness_theta_xy = 1.0f;
    p->min_prob = 0.0f;
}

static int params_check(const pm_crf_params *p)
{
    if (!p || p->iterations < 0 || !valid_weight(p->appearance_weight) ||
        !valid_weight(p->smoothness_weight) ||
        !valid_theta(p->appearance_theta_xy) ||
        !valid_theta(p->appearance_theta_rgb) ||
        !valid_theta(p->smoothness_theta_xy) || !(p->min_prob >= 0.0f) ||
        !(p->min_prob < 1.0f))
        return PM_ERR_ARG;
    return PM_OK;
}

/* The context's smoothness kernel for this size and these parameters. */
static int smooth_kernel(pm_crf_ctx *ctx, int64_t H, int64_t W,
                         const pm_crf_params *p, int nt)
{
    if (ctx->smooth_valid && ctx->smooth_h == H && ctx->smooth_w == W &&
        ctx->smooth_theta == p->smoothness_theta_xy &&
        ctx->smooth_weight == p->smoothness_weight)
        return PM_OK;
    ctx->smooth_valid = 0;
    const int64_t N = H * W;
    kernel *k = &ctx->smooth;
    if (reserve((void **)&k->feat, &k->sz_feat, (size_t)N * 2 * sizeof(float)))
        return PM_ERR_NOMEM;
    position_features(k->feat, H, W, p->smoothness_theta_xy, 2);
    int st = kernel_build(k, N, 2, p->smoothness_weight, nt);
    if (st != PM_OK) return st;
    ctx->smooth_h = H;
    ctx->smooth_w = W;
    ctx->smooth_theta = p->smoothness_theta_xy;
    ctx->smooth_weight = p->smoothness_weight;
    ctx->smooth_valid = 1;
    return PM_OK;
}

static int crf_run(pm_crf_ctx *ctx, const uint8_t *images, const float *logits,
                   float *marginals, int64_t B, int64_t L, int64_t H,
                   int64_t W, const pm_crf_params *p)
{
    const int64_t N = H * W;
    const int nthreads = pm_get_num_threads();
    if (any_nonfinite(logits, B * L * N, nthreads)) return PM_ERR_NONFINITE;
    const int run = L > 1 && p->iterations > 0;
    kernels ks = {NULL, NULL, NULL};
    if (run && p->smoothness_weight != 0.0f) {
        if (p->smoothness_theta_xy <= PM_GRID_MAX_THETA) {
            if (grid_build(&ctx->grid, H, W, p->smoothness_theta_xy,
                           p->smoothness_weight) != PM_OK)
                return PM_ERR_NOMEM;
            ks.grid = &ctx->grid;
        } else {
            int st = smooth_kernel(ctx, H, W, p, nthreads);
            if (st != PM_OK) return st;
            ks.smooth = &ctx->smooth;
        }
    }
    /* Images in parallel (one thread each) when there are enough of them;
     * otherwise one image at a time with the threads sharing its labels.
     * The arithmetic is the same either way. */
    const int outer = B >= nthreads ? nthreads : 1;
    const int inner = outer > 1 ? 1 : nthreads;
    if (ctx->nws < outer) {
        workspace *w = realloc(ctx->ws, (size_t)outer * sizeof(workspace));
        if (!w) return PM_ERR_NOMEM;
        memset(w + ctx->nws, 0,
               (size_t)(outer - ctx->nws) * sizeof(workspace));
        ctx->ws = w;
        ctx->nws = outer;
    }
    /* On failure, the status of the first failing image. */
    int status = PM_OK;
    int64_t failed = B;
#pragma omp parallel for schedule(dynamic, 1) num_threads(outer) if (outer > 1)
    for (int64_t b = 0; b < B; b++) {
        const int s =
            pm_interrupted()
                ? PM_ERR_INTERRUPTED
                : crf_image(&ctx->ws[omp_get_thread_num()], ks,
                            images + b * N * 3, logits + b * L * N,
                            marginals + b * L * N, L, H, W, p, inner);
        if (s != PM_OK) {
#pragma omp critical(pm_crf_status)
            if (b < failed) {
                failed = b;
                status = s;
            }
        }
    }
    return status;
}

int pm_dense_crf(pm_crf_ctx *ctx, const uint8_t *images, const float *logits,
                 float *marginals, int64_t B, int64_t L, int64_t H, int64_t W,
                 const pm_crf_params *p)
{
    if (B < 0 || L < 1 || H < 1 || W < 1 || params_check(p) != PM_OK)
        return PM_ERR_ARG;
    if (H > INT32_MAX / W || H * W > (int64_t)(INT32_MAX / 6 - 1))
        return PM_ERR_ARG;
    if (B == 0) return PM_OK;
    if (!images || !logits || !marginals) return PM_ERR_ARG;
    if (ctx && !__atomic_exchange_n(&ctx->busy, 1, __ATOMIC_ACQUIRE)) {
        const int st = crf_run(ctx, images, logits, marginals, B, L, H, W, p);
        __atomic_store_n(&ctx->busy, 0, __ATOMIC_RELEASE);
        return st;
    }
    pm_crf_ctx *tmp = pm_crf_ctx_new();
    if (!tmp) return PM_ERR_NOMEM;
    const int st = crf_run(tmp, images, logits, marginals, B, L, H, W, p);
    pm_crf_ctx_free(tmp);
    return st;
}

int pm_permutohedral_filter(const float *features, const float *values,
                            float *out, int64_t N, int d, int64_t V)
{
    if (N < 1 || d < 1 || d > LAT_MAX_D || V < 1 || !features || !values ||
        !out)
        return PM_ERR_ARG;
    lattice L;
    memset(&L, 0, sizeof L);
    float *va = NULL, *vb = NULL, *w = NULL, *row = NULL;
    size_t vsz = 0;
    const int64_t P = (V + 3) & ~(int64_t)3;
    int st = lattice_build(&L, features, N, d, pm_get_num_threads());
    if (st == PM_OK) st = reserve_vals(&va, &vb, &vsz, L.M, P);
    if (st == PM_OK) {
        w = malloc((size_t)N * (size_t)(d + 1) * sizeof(float));
        row = malloc((size_t)N * (size_t)P * sizeof(float));
        if (!w || !row) st = PM_ERR_NOMEM;
    }
    if (st == PM_OK) {
        const float alpha = lattice_alpha(d);
        for (int64_t e = 0; e < N * (d + 1); e++) w[e] = alpha * L.bary[e];
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = 0; c < P; c++)
                row[i * P + c] = c < V ? values[i * V + c] : 0.0f;
        lattice_splat(&L, L.bary, row, va, 0, N, P);
        const float *res = lattice_blur(&L, va, vb, P);
        lattice_slice(&L, w, res, row, P);
        for (int64_t i = 0; i < N; i++)
            for (int64_t c = 0; c < V; c++) out[i * V + c] = row[i * P + c];
    }
    free(w);
    free(row);
    free(va);
    free(vb);
    lattice_free(&L);
    return st;
}
