/* The two GEMMs the CPU backend needs, row-major, on any CBLAS, and the BLAS's threads.
 *
 * Only cblas_sgemm (and, from OpenBLAS, its thread count) is used, so each is declared here, with the
 * standard CBLAS enum values, rather than taken from a cblas.h, whose flavour varies (the Linux
 * OpenBLAS header declares cpu_set_t affinity calls that do not exist on Windows). Builds against
 * scipy-openblas32, whose symbols carry the scipy_ prefix, define WV_BLAS_SCIPY_PREFIX; the integer
 * type is the 32-bit-index build's int. */
#ifndef WV_BLAS_H
#define WV_BLAS_H

#ifdef WV_BLAS_SCIPY_PREFIX
#define WV_CBLAS_SGEMM scipy_cblas_sgemm
int scipy_openblas_get_num_threads(void);
void scipy_openblas_set_num_threads(int num_threads);

/* OpenBLAS's thread count (OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs it may run on). */
static inline int wv_blas_threads(void)
{
    int n = scipy_openblas_get_num_threads();
    return n > 1 ? n : 1;
}

/* One thread for each GEMM: the caller's threads split the work instead. */
static inline void wv_blas_one_thread(void) { scipy_openblas_set_num_threads(1); }
#else
#define WV_CBLAS_SGEMM cblas_sgemm

/* Another CBLAS keeps its own threads (CBLAS has no call to set them): the caller runs alone. */
static inline int wv_blas_threads(void) { return 1; }
static inline void wv_blas_one_thread(void) {}
#endif

enum { WV_CBLAS_ROW_MAJOR = 101, WV_CBLAS_NO_TRANS = 111, WV_CBLAS_TRANS = 112 };

void WV_CBLAS_SGEMM(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc);

/* C[M][N] = alpha A[M][K] B[K][N] + beta C */
static inline void wv_sgemm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                               int ldb, float beta, float *C, int ldc)
{
    WV_CBLAS_SGEMM(WV_CBLAS_ROW_MAJOR, WV_CBLAS_NO_TRANS, WV_CBLAS_NO_TRANS, M, N, K, alpha, A, lda, B, ldb, beta, C,
                   ldc);
}

/* C[M][N] = alpha A[M][K] B[N][K]^T + beta C */
static inline void wv_sgemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                               int ldb, float beta, float *C, int ldc)
{
    WV_CBLAS_SGEMM(WV_CBLAS_ROW_MAJOR, WV_CBLAS_NO_TRANS, WV_CBLAS_TRANS, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#endif
