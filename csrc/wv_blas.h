/* The two GEMMs the CPU backend needs, row-major, on top of any CBLAS.
 * Builds against scipy-openblas32 (symbols prefixed scipy_) define WV_BLAS_SCIPY_PREFIX. */
#ifndef WV_BLAS_H
#define WV_BLAS_H

#include <cblas.h>

#ifdef WV_BLAS_SCIPY_PREFIX
#define WV_CBLAS_SGEMM scipy_cblas_sgemm
#else
#define WV_CBLAS_SGEMM cblas_sgemm
#endif

/* C[M][N] = alpha A[M][K] B[K][N] + beta C */
static inline void wv_sgemm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                               int ldb, float beta, float *C, int ldc)
{
    WV_CBLAS_SGEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* C[M][N] = alpha A[M][K] B[N][K]^T + beta C */
static inline void wv_sgemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                               int ldb, float beta, float *C, int ldc)
{
    WV_CBLAS_SGEMM(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#endif
