/*
 * crf_lattice.c -- the permutohedral lattice (Adams, Baek & Davis,
 * Eurographics 2010) on which the dense CRF's appearance kernel is
 * filtered: the vertices enclosing each point and its barycentric weights,
 * their numbering by a hash table, the splat, the blur (a [1/2, 1, 1/2]
 * stencil along each of the d+1 lattice directions) and the slice on rows
 * of P lanes, and one Gaussian kernel of the CRF built on it, normalised
 * symmetrically as pydensecrf does.  The model it serves is described at
 * the top of crf.c.
 *
 * Determinism.  The lattice is numbered by one thread in pixel order (vertex
 * ids = order of first appearance, a second thread numbering the second
 * half of the points apart and the two merged in order); every value of a
 * splat, blur or slice is computed by one thread in a fixed order, and the
 * AVX2 and baseline clones of the loops do the same IEEE operations.
 */
#define _DEFAULT_SOURCE /* madvise, posix_memalign */
#include "crf_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* ------------------------------------------------------------------------ */
/* Buffers                                                                  */
/* ------------------------------------------------------------------------ */

/* malloc for the big buffers: from 2 MiB up, aligned to 2 MiB and marked
 * for transparent huge pages where the kernel offers them on request.  The
 * lattice passes gather rows from all over multi-megabyte arrays; on 4 KiB
 * pages (under a hypervisor's nested paging above all) TLB misses and
 * first-touch page faults cost as much as the arithmetic.  Free with free. */
#define PM_HUGE ((size_t)2 << 20)

void *pm_crf_malloc(size_t n)
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
int pm_crf_reserve(void **p, size_t *have, size_t need)
{
    if (need <= *have && *p) return PM_OK;
    free(*p);
    *p = pm_crf_malloc(need);
    *have = *p ? need : 0;
    return *p ? PM_OK : PM_ERR_NOMEM;
}

void pm_lattice_free(lattice *L)
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
    if (pm_crf_reserve((void **)&T->table, &T->sz_table,
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
    if (pm_crf_reserve((void **)&T->keys, &T->sz_keys,
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
    if (pm_crf_reserve((void **)&L->map, &L->sz_map,
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
int pm_lattice_build(lattice *L, const float *f, int64_t N, int d, int nt)
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
        L->offset = pm_crf_malloc(np * sizeof(int32_t));
        L->bary = pm_crf_malloc(np * sizeof(float));
        L->rem0 = pm_crf_malloc(np * sizeof(int32_t));
        L->rank = pm_crf_malloc(np);
        L->sz_pts = np;
        if (!L->offset || !L->bary || !L->rem0 || !L->rank) {
            pm_lattice_free(L);
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
    const size_t nbr = (size_t)d1 * (size_t)(M + 1) * 2 * sizeof(int32_t);
    if (pm_crf_reserve((void **)&L->nbr, &L->sz_nbr, nbr) != PM_OK)
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

PM_CLONES void pm_lattice_splat(const lattice *L, const float *w,
                                const float *src, float *vals, int64_t i0,
                                int64_t i1, int64_t P)
{
#define PM_SPLAT(W) splat_body(L, w, src, vals, i0, i1, W)
    PM_WIDTH_SWITCH(P, PM_SPLAT)
#undef PM_SPLAT
}

/* a[v] += b[v] for the vertices 1..M. */
PM_CLONES void pm_lattice_add(const lattice *L, float *a, const float *b,
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
float *pm_lattice_blur(const lattice *L, float *a, float *b, int64_t P)
{
    for (int j = 0; j <= L->d; j++) {
        lattice_blur_pass(L, j, a, b, 1, L->M + 1, P);
        float *t = a;
        a = b;
        b = t;
    }
    return a;
}

PM_CLONES void pm_lattice_slice_range(const lattice *L, const float *w,
                                      const float *vals, float *dst, int64_t i0,
                                      int64_t i1, int64_t P)
{
#define PM_SLICE(W) slice_body(L, w, vals, dst, i0, i1, W)
    PM_WIDTH_SWITCH(P, PM_SLICE)
#undef PM_SLICE
}

void pm_lattice_slice(const lattice *L, const float *w, const float *vals,
                      float *dst, int64_t P)
{
    pm_lattice_slice_range(L, w, vals, dst, 0, L->N, P);
}

float pm_lattice_alpha(int d)
{
    return 1.0f / (1.0f + powf(2.0f, (float)-d));
}

/* ------------------------------------------------------------------------ */
/* One Gaussian kernel of the CRF, normalised symmetrically                 */
/* ------------------------------------------------------------------------ */

void pm_kernel_free(kernel *k)
{
    pm_lattice_free(&k->lat);
    free(k->splat_w);
    free(k->slice_w);
    free(k->feat);
    free(k->ones);
    free(k->va);
    free(k->vb);
    memset(k, 0, sizeof *k);
}

/* Makes the two vertex buffers hold (M+1) rows of P floats, row 0 zero. */
int pm_reserve_vals(float **a, float **b, size_t *have, int64_t M, int64_t P)
{
    const size_t need = (size_t)(M + 1) * (size_t)P * sizeof(float);
    if (need > *have || !*a || !*b) {
        free(*a);
        free(*b);
        *a = pm_crf_malloc(need);
        *b = pm_crf_malloc(need);
        *have = (*a && *b) ? need : 0;
        if (!*a || !*b) return PM_ERR_NOMEM;
    }
    memset(*a, 0, (size_t)P * sizeof(float));
    memset(*b, 0, (size_t)P * sizeof(float));
    return PM_OK;
}

/* Builds the lattice of k->feat (N, d) and the weights of
 * weight D^{-1/2} K D^{-1/2}, with D = diag(K 1) from the same lattice. */
int pm_kernel_build(kernel *k, int64_t N, int d, float weight, int nt)
{
    int st = pm_lattice_build(&k->lat, k->feat, N, d, nt);
    if (st != PM_OK) return st;
    const lattice *L = &k->lat;
    const int64_t np = N * (d + 1);
    const size_t wbytes = (size_t)np * sizeof(float);
    if (pm_crf_reserve((void **)&k->splat_w, &k->sz_w, wbytes) ||
        pm_crf_reserve((void **)&k->slice_w, &k->sz_slice, wbytes) ||
        pm_crf_reserve((void **)&k->ones, &k->sz_ones,
                       (size_t)N * sizeof(float)))
        return PM_ERR_NOMEM;
    st = pm_reserve_vals(&k->va, &k->vb, &k->sz_v, L->M, 1);
    if (st != PM_OK) return st;
    const float alpha = pm_lattice_alpha(d);
    /* K 1: splat ones, blur, slice with alpha. */
    for (int64_t i = 0; i < N; i++) k->ones[i] = 1.0f;
    for (int64_t e = 0; e < np; e++) k->slice_w[e] = alpha * L->bary[e];
    pm_lattice_splat(L, L->bary, k->ones, k->va, 0, N, 1);
    const float *res = pm_lattice_blur(L, k->va, k->vb, 1);
    pm_lattice_slice(L, k->slice_w, res, k->ones, 1);
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
