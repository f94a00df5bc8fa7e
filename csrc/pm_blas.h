/*
 * pm_blas.h -- OpenBLAS and LAPACK, as the core calls them.
 *
 * scipy-openblas32 exports every symbol with a scipy_ prefix.  Its cblas.h
 * declares the prefixed CBLAS names; its lapacke.h and some thread helpers
 * in cblas.h name symbols the library does not export (OpenBLAS issue
 * #5493), so LAPACK is reached through the prefixed Fortran symbols declared
 * here, with explicit hidden string lengths.  Only this header knows the
 * prefix: kernels call the pm_ names below.
 */
#ifndef PM_BLAS_H
#define PM_BLAS_H

#include <cblas.h>

#define pm_cblas_sgemm scipy_cblas_sgemm
#define pm_cblas_sgemv scipy_cblas_sgemv
#define pm_cblas_ssyrk scipy_cblas_ssyrk
#define pm_cblas_dgemm scipy_cblas_dgemm
#define pm_cblas_dgemv scipy_cblas_dgemv
#define pm_cblas_dsyrk scipy_cblas_dsyrk
#define pm_cblas_dsymv scipy_cblas_dsymv
#define pm_cblas_dsyr scipy_cblas_dsyr
#define pm_cblas_sdot scipy_cblas_sdot
#define pm_cblas_ddot scipy_cblas_ddot

#define pm_openblas_set_num_threads scipy_openblas_set_num_threads
#define pm_openblas_get_num_threads scipy_openblas_get_num_threads
#define pm_openblas_get_config scipy_openblas_get_config
#define pm_openblas_get_corename scipy_openblas_get_corename

/* LAPACK dsyevr: selected eigenpairs of a symmetric double matrix.
 * Fortran calling convention: every argument by pointer, and the lengths of
 * the three character arguments appended as size_t. */
void scipy_dsyevr_(const char *jobz, const char *range, const char *uplo,
                   const blasint *n, double *a, const blasint *lda,
                   const double *vl, const double *vu, const blasint *il,
                   const blasint *iu, const double *abstol, blasint *m,
                   double *w, double *z, const blasint *ldz, blasint *isuppz,
                   double *work, const blasint *lwork, blasint *iwork,
                   const blasint *liwork, blasint *info, size_t jobz_len,
                   size_t range_len, size_t uplo_len);
#define pm_lapack_dsyevr scipy_dsyevr_

/* LAPACK dstevr: selected eigenpairs of a symmetric tridiagonal matrix
 * (d: diagonal, e: off-diagonal; both overwritten). */
void scipy_dstevr_(const char *jobz, const char *range, const blasint *n,
                   double *d, double *e, const double *vl, const double *vu,
                   const blasint *il, const blasint *iu, const double *abstol,
                   blasint *m, double *w, double *z, const blasint *ldz,
                   blasint *isuppz, double *work, const blasint *lwork,
                   blasint *iwork, const blasint *liwork, blasint *info,
                   size_t jobz_len, size_t range_len);
#define pm_lapack_dstevr scipy_dstevr_

#endif /* PM_BLAS_H */
