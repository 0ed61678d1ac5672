/* The arithmetic the CUDA stub (cuda_stub.cpp) does when asked to compute (WANVIDEO_STUB_COMPUTE=1):
 * the backend's kernels, compiled for the host with tests/c/cuda_on_cpu/ (on_cpu.cpp), and plain
 * loops for what cuDNN and cuBLAS do. A plain C interface: the two sides are built against different
 * headers (the toolkit's here, the stand-ins there). */
#ifndef WV_STUB_ON_CPU_H
#define WV_STUB_ON_CPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A kernel launch bound to copies of its arguments (args: one pointer per parameter, as nvcc's host
 * code passes them), for running now or from a graph later; NULL when no kernel of that name (as
 * the demangler prints it, "pixel_shuffle_kernel<uint4>") has a CPU version. serial: a kernel whose
 * threads cooperate (RMS norm, softmax) is replaced by a plain loop over the same sums (fast enough
 * for whole decodes; the kernels themselves are checked op by op). */
void *kernel_on_cpu_bind(const char *name, void **args, const unsigned grid[3], const unsigned block[3], int serial);
void kernel_on_cpu_run(void *bound);
void kernel_on_cpu_free(void *bound);

/* The bytes [*lo, *lo + *bytes) a launch of kernel `name` writes for another stream to read (the
 * stub's race check then sees it); 0 for a kernel whose output stays on its own stream. Only
 * write_output_kernel's staged output crosses streams: the copy stream takes it to the host. */
int kernel_on_cpu_writes(const char *name, void **args, const void **lo, size_t *bytes);

/* Element types, as cuDNN's and cuBLAS's enums say them. */
enum { ON_CPU_F32, ON_CPU_F16, ON_CPU_BF16 };

/* A strided tensor of nd dims (elements). */
typedef struct {
    int nd, type, dims[8];
    int64_t strides[8];
} tensor_on_cpu;

/* Cross-correlation of x [n][c][spatial...] with w [k][c][spatial...] (packed KRSC: k, spatial, c),
 * stride 1, no dilation, zero padding pad[d] on each spatial side:
 * y = alpha1 * conv + alpha2 * z + bias[k] (fused: bias given, of bias_type; z like y, not read when
 * alpha2 is 0) or alpha1 * conv + beta * y (y not read when beta is 0). */
void conv_on_cpu(const tensor_on_cpu *x, const void *xp, const tensor_on_cpu *w, const void *wp, const int *pad,
                 float alpha1, const void *zp, float alpha2, const void *biasp, int bias_type, float beta,
                 const tensor_on_cpu *y, void *yp);

/* C = alpha op(A) op(B) + beta C, column-major (cublasGemmEx), fp32 sums. */
void gemm_on_cpu(int ta, int tb, int m, int n, int k, float alpha, const void *A, int at, int lda, const void *B,
                 int bt, int ldb, float beta, void *C, int ct, int ldc);

#ifdef __cplusplus
}
#endif

#endif
