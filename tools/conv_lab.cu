/* Convolution lab: how fast cuDNN runs the decoder's convolution shapes at 720p in bf16, and which
 * way of running a causal 3x3x3 convolution is fastest. Measurements only, no correctness (the op
 * tests in tests/c/test_backend_ops.cu check every op against the CPU).
 *
 * For each causal shape (one output frame from a ring of three frames, channels-last):
 *   3d       one NDHWC 3-d convolution over the three frames (what the backend runs), the
 *            algorithm cuDNN's heuristics rank first, then a separate bias pass
 *   3d-find  the same, every algorithm timed by cudnnFindConvolutionForwardAlgorithmEx: the best
 *            the legacy API has for the shape
 *   3d-fused the same with the bias folded in (cudnnConvolutionBiasActivationForward, identity
 *            activation, IMPLICIT_PRECOMP_GEMM): what fusing the bias would give
 *   2d-sum   three NHWC 2-d convolutions, one per temporal tap, accumulating (beta = 1)
 * and for the 2-d upsample convolutions, one NHWC convolution over 4 frames. Prints milliseconds
 * and TFLOP/s (multiply-adds x 2 over the padded grid the backend computes).
 *
 * Build and run: tools/conv_lab.sh (exit 77 without a GPU). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_CUDA(x)                                                                                     \
    do {                                                                                                  \
        cudaError_t e_ = (x);                                                                             \
        if (e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));            \
            exit(1);                                                                                      \
        }                                                                                                 \
    } while (0)

#define REPS 10

typedef struct {
    const char *name;
    int cin, cout, H, W; /* padded grid */
    int causal;          /* 3x3x3 over a 3-frame ring, else 3x3 over n frames */
    int n;
} lab_shape;

/* The decoder's convolutions at 1280x720 (a 90x160 latent), padded by one pixel. */
static const lab_shape SHAPES[] = {
    {"trunk / stage 0: 384->384 at 90x160", 384, 384, 92, 162, 1, 1},
    {"stage 1: 192->384 at 180x320", 192, 384, 182, 322, 1, 1},
    {"stage 1: 384->384 at 180x320", 384, 384, 182, 322, 1, 1},
    {"stage 2: 192->192 at 360x640", 192, 192, 362, 642, 1, 1},
    {"stage 3: 192->96 at 720x1280", 192, 96, 722, 1282, 1, 1},
    {"stage 3: 96->96 at 720x1280", 96, 96, 722, 1282, 1, 1},
    {"head: 96->3 at 720x1280", 96, 3, 722, 1282, 1, 1},
    {"upsample 1: 384->192 3x3 at 360x640, 4 frames", 384, 192, 362, 642, 0, 4},
    {"upsample 2: 192->96 3x3 at 720x1280, 4 frames", 192, 96, 722, 1282, 0, 4},
};

static cudnnHandle_t g_cudnn;
static cudaStream_t g_stream;
static void *g_workspace;
static const size_t WORKSPACE = (size_t)64 << 20;

static int g_failed; /* a cuDNN call of the variant being timed failed: it is reported, the lab goes on */

static void check_cudnn(cudnnStatus_t s, const char *what)
{
    if (s != CUDNN_STATUS_SUCCESS && !g_failed) {
        printf("  (%s: %s)\n", what, cudnnGetErrorString(s));
        g_failed = 1;
    }
}

static void channels_last(cudnnTensorDescriptor_t t, int nd, const int *dims)
{
    int strides[5], s = dims[1];
    strides[1] = 1;
    for (int d = nd - 1; d >= 2; d--) {
        strides[d] = s;
        s *= dims[d];
    }
    strides[0] = s;
    check_cudnn(cudnnSetTensorNdDescriptor(t, CUDNN_DATA_BFLOAT16, nd, dims, strides), "tensor descriptor");
}

typedef struct {
    cudnnTensorDescriptor_t x, y, bias;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
} conv_desc;

/* nd 5: [1][cin][kt][H][W] -> [1][cout][1][H][W]; nd 4: [n][cin][H][W] -> [n][cout][H][W]. */
static conv_desc describe(int nd, int n, int cin, int cout, int kt, int H, int W)
{
    conv_desc d;
    int x5[5] = {1, cin, kt, H, W}, y5[5] = {1, cout, 1, H, W}, w5[5] = {cout, cin, kt, 3, 3}, p3[3] = {0, 1, 1};
    int x4[4] = {n, cin, H, W}, y4[4] = {n, cout, H, W}, w4[4] = {cout, cin, 3, 3}, p2[2] = {1, 1};
    int b5[5] = {1, cout, 1, 1, 1}, ones[3] = {1, 1, 1};
    check_cudnn(cudnnCreateTensorDescriptor(&d.x), "create");
    check_cudnn(cudnnCreateTensorDescriptor(&d.y), "create");
    check_cudnn(cudnnCreateTensorDescriptor(&d.bias), "create");
    check_cudnn(cudnnCreateFilterDescriptor(&d.w), "create");
    check_cudnn(cudnnCreateConvolutionDescriptor(&d.conv), "create");
    channels_last(d.x, nd, nd == 5 ? x5 : x4);
    channels_last(d.y, nd, nd == 5 ? y5 : y4);
    channels_last(d.bias, nd, b5);
    check_cudnn(cudnnSetFilterNdDescriptor(d.w, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, nd, nd == 5 ? w5 : w4),
                "filter descriptor");
    check_cudnn(cudnnSetConvolutionNdDescriptor(d.conv, nd - 2, nd == 5 ? p3 : p2, ones, ones, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT),
                "convolution descriptor");
    check_cudnn(cudnnSetConvolutionMathType(d.conv, CUDNN_TENSOR_OP_MATH), "math type");
    return d;
}

static void destroy(conv_desc *d)
{
    cudnnDestroyTensorDescriptor(d->x);
    cudnnDestroyTensorDescriptor(d->y);
    cudnnDestroyTensorDescriptor(d->bias);
    cudnnDestroyFilterDescriptor(d->w);
    cudnnDestroyConvolutionDescriptor(d->conv);
}

/* The heuristics' first algorithm that succeeds within the workspace. */
static cudnnConvolutionFwdAlgo_t heuristic_algo(const conv_desc *d)
{
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    check_cudnn(cudnnGetConvolutionForwardAlgorithm_v7(g_cudnn, d->x, d->w, d->conv, d->y,
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf),
                "heuristics");
    for (int i = 0; i < returned; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= WORKSPACE) return perf[i].algo;
    check_cudnn(CUDNN_STATUS_NOT_SUPPORTED, "no algorithm within the workspace");
    return CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
}

/* Mean milliseconds of `run` after 3 warm-ups; -1 when a cuDNN call in it failed. */
template <typename F> static float time_ms(F run)
{
    cudaEvent_t a, b;
    float ms = 0.0f;
    for (int i = 0; i < 3 && !g_failed; i++) run();
    if (g_failed) return -1.0f;
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
    CHECK_CUDA(cudaEventRecord(a, g_stream));
    for (int i = 0; i < REPS; i++) run();
    CHECK_CUDA(cudaEventRecord(b, g_stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms / REPS;
}

__global__ void bias_kernel(__nv_bfloat16 *y, const __nv_bfloat16 *bias, long long rows, int C)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < rows * C; i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + __bfloat162float(bias[i % C]));
}

/* Values in [-1, 1): zeros would flatter the tensor cores' power draw. */
__global__ void fill_kernel(__nv_bfloat16 *p, long long n, unsigned seed)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        p[i] = __float2bfloat16_rn((float)(h & 0xffff) / 32768.0f - 1.0f);
    }
}

static void *random_buffer(size_t elems, unsigned seed)
{
    void *p;
    CHECK_CUDA(cudaMalloc(&p, elems * 2));
    fill_kernel<<<1024, 256, 0, g_stream>>>((__nv_bfloat16 *)p, (long long)elems, seed);
    CHECK_CUDA(cudaGetLastError());
    return p;
}

static void report(const char *how, float ms, double flops)
{
    if (ms < 0) printf("  %-9s failed\n", how);
    else printf("  %-9s %8.3f ms %7.1f TFLOP/s\n", how, ms, flops / (ms * 1e-3) / 1e12);
    g_failed = 0;
}

static void run_shape(const lab_shape *s)
{
    size_t frame_in = (size_t)s->H * s->W * s->cin, frame_out = (size_t)s->H * s->W * s->cout;
    int frames_in = s->causal ? 3 : s->n, frames_out = s->causal ? 1 : s->n;
    void *x, *y, *w, *bias;
    float one = 1.0f, zero = 0.0f;
    double flops = 2.0 * frames_out * s->H * s->W * (double)s->cout * s->cin * (s->causal ? 27 : 9);
    long long rows = (long long)frames_out * s->H * s->W;
    x = random_buffer(frame_in * frames_in, 1);
    y = random_buffer(frame_out * frames_out, 2);
    w = random_buffer((size_t)s->cout * s->cin * 27, 3); /* 2d-sum reads it as three taps: for timing */
    bias = random_buffer((size_t)s->cout, 4);
    g_failed = 0;
    printf("%s\n", s->name);
    if (s->causal) {
        conv_desc d3 = describe(5, 1, s->cin, s->cout, 3, s->H, s->W), d2 = describe(4, 1, s->cin, s->cout, 1, s->H, s->W);
        cudnnConvolutionFwdAlgo_t a3 = heuristic_algo(&d3), a2;
        cudnnConvolutionFwdAlgoPerf_t found[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        cudnnActivationDescriptor_t identity;
        int returned = 0;
        size_t tap = (size_t)s->cout * s->cin * 9 * 2;
        report("3d", time_ms([&] {
                   check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d3.x, x, d3.w, w, d3.conv, a3, g_workspace,
                                                       WORKSPACE, &zero, d3.y, y),
                               "3d");
                   bias_kernel<<<1024, 256, 0, g_stream>>>((__nv_bfloat16 *)y, (const __nv_bfloat16 *)bias, rows,
                                                          s->cout);
               }),
               flops);
        check_cudnn(cudnnFindConvolutionForwardAlgorithmEx(g_cudnn, d3.x, x, d3.w, w, d3.conv, d3.y, y,
                                                           CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, found,
                                                           g_workspace, WORKSPACE),
                    "find");
        g_failed = 0;
        for (int i = 0; i < returned; i++)
            if (found[i].status == CUDNN_STATUS_SUCCESS) {
                printf("  3d-find   %8.3f ms %7.1f TFLOP/s  (algo %d, math %d; heuristics chose %d)\n", found[i].time,
                       flops / (found[i].time * 1e-3) / 1e12, (int)found[i].algo, (int)found[i].mathType, (int)a3);
                break;
            }
        check_cudnn(cudnnCreateActivationDescriptor(&identity), "activation");
        check_cudnn(cudnnSetActivationDescriptor(identity, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0),
                    "activation");
        cudnnStatus_t fused = cudnnConvolutionBiasActivationForward(
            g_cudnn, &one, d3.x, x, d3.w, w, d3.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, g_workspace,
            WORKSPACE, &zero, d3.y, y, d3.bias, bias, identity, d3.y, y);
        if (fused == CUDNN_STATUS_SUCCESS)
            report("3d-fused", time_ms([&] {
                       check_cudnn(cudnnConvolutionBiasActivationForward(
                                       g_cudnn, &one, d3.x, x, d3.w, w, d3.conv,
                                       CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, g_workspace, WORKSPACE, &zero,
                                       d3.y, y, d3.bias, bias, identity, d3.y, y),
                                   "fused");
                   }),
                   flops);
        else
            printf("  3d-fused  declined: %s\n", cudnnGetErrorString(fused));
        cudnnDestroyActivationDescriptor(identity);
        a2 = heuristic_algo(&d2);
        report("2d-sum", time_ms([&] {
                   for (int t = 0; t < 3; t++)
                       check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d2.x, (char *)x + t * frame_in * 2, d2.w,
                                                           (char *)w + t * tap, d2.conv, a2, g_workspace, WORKSPACE,
                                                           t ? &one : &zero, d2.y, y),
                                   "2d");
                   bias_kernel<<<1024, 256, 0, g_stream>>>((__nv_bfloat16 *)y, (const __nv_bfloat16 *)bias, rows,
                                                          s->cout);
               }),
               flops);
        destroy(&d3);
        destroy(&d2);
    } else {
        conv_desc d = describe(4, s->n, s->cin, s->cout, 1, s->H, s->W);
        cudnnConvolutionFwdAlgo_t a = heuristic_algo(&d);
        report("2d", time_ms([&] {
                   check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d.x, x, d.w, w, d.conv, a, g_workspace, WORKSPACE,
                                                       &zero, d.y, y),
                               "2d");
               }),
               flops);
        destroy(&d);
    }
    CHECK_CUDA(cudaStreamSynchronize(g_stream));
    cudaFree(x), cudaFree(y), cudaFree(w), cudaFree(bias);
}

int main(void)
{
    int count = 0;
    cudaDeviceProp prop;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    printf("%s, cuDNN %zu, bf16, mean of %d runs after 3 warm-ups\n", prop.name, cudnnGetVersion(), REPS);
    CHECK_CUDA(cudaStreamCreate(&g_stream));
    check_cudnn(cudnnCreate(&g_cudnn), "create");
    check_cudnn(cudnnSetStream(g_cudnn, g_stream), "stream");
    CHECK_CUDA(cudaMalloc(&g_workspace, WORKSPACE));
    for (size_t i = 0; i < sizeof SHAPES / sizeof *SHAPES; i++) run_shape(&SHAPES[i]);
    cudaFree(g_workspace);
    cudnnDestroy(g_cudnn);
    cudaStreamDestroy(g_stream);
    return 0;
}
