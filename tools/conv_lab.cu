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
 *   2d-sum   three NHWC 2-d convolutions, one per temporal tap, accumulating (beta = 1), then
 *            the bias pass
 *   2d-fused the same with the bias folded into the first tap's convolution: what the backend runs
 *            for equal-width convolutions it runs by taps
 *   2d-stack one NHWC 2-d convolution of 3 cin channels, the three frames side by side in each
 *            pixel (a ring stored channel-interleaved): the 2-d kernels without 2d-fused's two
 *            extra passes over the output. The backend does not do it: such a ring keeps three
 *            frames where taps run apart keep two, 46 MB more a convolution in a 2 GiB plan's
 *            tile (96 channels at 369x649), 276 MB for the six it runs by taps, where that plan
 *            has 77 MiB to spare
 *   2d-pair  the two cached frames side by side in each pixel (a ring of two slots stored
 *            interleaved, the frames taps apart keep): one 2-d convolution of 2 cin channels with the
 *            bias fused, then the new frame's tap adding to y; 2d-pair-slot reads the new frame in
 *            place in the slot the first call has just read (cin channels, a pixel stride of 2 cin: the
 *            producer writing there, as it writes tap 0's slot now), 2d-pair+copy from a packed frame
 *            then copied there. Two calls where 2d-fused makes three, in taps apart's memory: the
 *            backend runs 2d-pair+copy where WANVIDEO_CUDA_PAIRED_TAPS=1 (the copy by a kernel of
 *            its own; here cudaMemcpy2DAsync), not 2d-pair-slot (every producer would write with a
 *            pixel stride)
 *   2d-outsum for a convolution much narrower out than in (the head), output-side partial sums:
 *            one 2-d convolution of the new frame into kt x cout channels, each tap's share, to be
 *            added to the shares kept from the frames before; its cache would keep kt - 1 frames of
 *            cout shares instead of kt frames of cin inputs (the head's 135.5 MiB in a 2 GiB plan's
 *            tile; some 14 MiB in float32 with the new frame's shares), and 4K would fit one cuDNN
 *            operand. 2d-outsum32 writes the shares in float32, sparing their rounding, where cuDNN
 *            takes a bf16 input with a float32 output
 *   3d-graph the 3-d convolution through cuDNN's graph API: the first engine configuration heuristics
 *            mode A ranks that makes a plan without compiling kernels, its plan made once and run
 *   3d-gbias 3d-graph's plan, then the bias pass: what the backend runs where no plan without
 *            compiling takes the bias (3d-gfused none), or the call adds to y (a residual sum)
 *   3d-gbest the fastest of all those configurations (what a per-shape autotune would pick)
 *   3d-native the first configuration whose engine can put its work into a CUDA graph itself
 *            (cudnnBackendPopulateCudaGraph: no stream capture), that graph launched; then how
 *            many of the configurations could, and how many compile kernels (NVRTC)
 *   3d-gfused the graph API with 3d-fused's fusion: the convolution and a pointwise add of the
 *            bias in one operation graph, the first configuration that makes a plan without
 *            compiling (none may: then how many compile), and how many could populate a CUDA graph
 *   2d-graph 2d-fused through the graph API: the first tap's 2-d convolution with the bias in one
 *            graph, the other two as a graph whose convolution adds to y (beta 1). With 3d-gfused,
 *            whether the backend could move to the graph API and keep what it fuses
 * and for the upsample convolutions (resample.1), one NHWC 2-d convolution of a frame: the 3x3 one
 * at the x2 resolution that the decoder defines, then the sub-pixel 2x2 one on the low-resolution
 * frame (four phases in its outputs) that the backend runs instead. Prints milliseconds and
 * TFLOP/s (multiply-adds x 2 over the padded grid the backend computes).
 *
 * Then the host's cost of queueing one call (a tile's small convolution, so the GPU keeps up): a
 * decode in small tiles queues some 260 calls a step, and when their host cost exceeds the step's
 * GPU time, the host sets the pace. Last, the same fused calls captured once into a CUDA graph and
 * replayed: whether cuDNN's calls can be captured at all, the host's cost per call then, and the
 * GPU's time per call queued one by one and replayed (small kernels leave gaps between them); and the
 * host's cost of the 3-d call through the graph API, its plan made once, with its variant pack (the
 * call's pointers) kept or made anew for each call, as the backend's calls would need.
 *
 * Last, the memory-bound kernels on the frames they run on most at 720p: the RMS norm + SiLU the
 * backend launches (and the warp-per-position kernel it falls back on) and the pixel shuffle into
 * the full-resolution frame, in GB/s of what they read and write, beside a device-to-device copy of
 * as many bytes (the bandwidth they can hope for).
 *
 * Build and run: tools/conv_lab.sh (exit 77 without a GPU). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <chrono>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wv_kernels.cuh" /* the backend's own kernels, their launch geometry, channels-last strides */

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
    int cin, cout, kt, k; /* kt 3: causal over a 3-frame ring; kt 1: a 2-d k x k convolution */
    int H, W;             /* padded grid */
} lab_shape;

/* Every convolution shape of the decoder at 1280x720 (a 90x160 latent), grids padded by one pixel. */
static const lab_shape SHAPES[] = {
    {"conv1: 16->384 3x3x3 at 90x160", 16, 384, 3, 3, 92, 162},
    {"middle, upsamples.0-2: 384->384 3x3x3 at 90x160", 384, 384, 3, 3, 92, 162},
    {"upsamples.3.time_conv: 384->768 3x1x1 at 90x160", 384, 768, 3, 1, 92, 162},
    {"upsamples.3.resample: 384->192 3x3 at 180x320", 384, 192, 1, 3, 182, 322},
    {"upsamples.4.residual.2: 192->384 3x3x3 at 180x320", 192, 384, 3, 3, 182, 322},
    {"upsamples.4-6: 384->384 3x3x3 at 180x320", 384, 384, 3, 3, 182, 322},
    {"upsamples.7.time_conv: 384->768 3x1x1 at 180x320", 384, 768, 3, 1, 182, 322},
    {"upsamples.7.resample: 384->192 3x3 at 360x640", 384, 192, 1, 3, 362, 642},
    {"upsamples.8-10: 192->192 3x3x3 at 360x640", 192, 192, 3, 3, 362, 642},
    {"upsamples.11.resample: 192->96 3x3 at 720x1280", 192, 96, 1, 3, 722, 1282},
    {"upsamples.12-14: 96->96 3x3x3 at 720x1280", 96, 96, 3, 3, 722, 1282},
    {"head.2: 96->3 3x3x3 at 720x1280", 96, 3, 3, 3, 722, 1282},
    /* the resample convs as the decoder runs them: sub-pixel, four phases of 2x2 on the low frame */
    {"upsamples.3.resample sub-pixel: 384->4x192 2x2 at 90x160", 384, 768, 1, 2, 92, 162},
    {"upsamples.7.resample sub-pixel: 384->4x192 2x2 at 180x320", 384, 768, 1, 2, 182, 322},
    {"upsamples.11.resample sub-pixel: 192->4x96 2x2 at 360x640", 192, 384, 1, 2, 362, 642},
    /* a corner tile of the 2 GiB plan (2x2): is a 2-d convolution per tap still the faster way? */
    {"upsamples.4-6 in a 2 GiB plan tile (2x2): 384->384 3x3x3 at 102x172", 384, 384, 3, 3, 104, 174},
    {"upsamples.8-10 in a 2 GiB plan tile (2x2): 192->192 3x3x3 at 190x330", 192, 192, 3, 3, 192, 332},
    {"upsamples.12-14 in a 2 GiB plan tile (2x2): 96->96 3x3x3 at 367x647", 96, 96, 3, 3, 369, 649},
    {"head.2 in a 2 GiB plan tile (2x2): 96->3 3x3x3 at 367x647", 96, 3, 3, 3, 369, 649},
};

static cudnnHandle_t g_cudnn;
static cudnnActivationDescriptor_t g_identity; /* the fused convolution's activation */
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
    int strides[5];
    channels_last_strides(nd, dims, strides);
    check_cudnn(cudnnSetTensorNdDescriptor(t, CUDNN_DATA_BFLOAT16, nd, dims, strides), "tensor descriptor");
}

typedef struct {
    cudnnTensorDescriptor_t x, y, bias;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
} conv_desc;

/* Side of the output grid: odd kernels padded to keep the input's, even ones (the sub-pixel conv's
 * 2x2) unpadded. */
static int out_side(int k, int n) { return k % 2 ? n : n - k + 1; }

/* A convolution's dims, for either API. nd 5: [1][cin][kt][H][W] -> [1][cout][1][H][W] (time unpadded);
 * nd 4: [1][cin][H][W] -> [1][cout][Ho][Wo]; k x k spatially (see out_side). pad: per spatial dim. */
typedef struct {
    int nd;
    int x[5], y[5], w[5], pad[3];
} conv_dims;

static conv_dims dims_of(int nd, int cin, int cout, int kt, int k, int H, int W)
{
    int p = k % 2 ? k / 2 : 0;
    conv_dims d5 = {5, {1, cin, kt, H, W}, {1, cout, 1, H, W}, {cout, cin, kt, k, k}, {0, p, p}};
    conv_dims d4 = {4, {1, cin, H, W}, {1, cout, out_side(k, H), out_side(k, W)}, {cout, cin, k, k}, {p, p}};
    return nd == 5 ? d5 : d4;
}

static conv_desc describe(int nd, int cin, int cout, int kt, int k, int H, int W)
{
    conv_desc d;
    conv_dims dm = dims_of(nd, cin, cout, kt, k, H, W);
    int b5[5] = {1, cout, 1, 1, 1}, ones[3] = {1, 1, 1};
    check_cudnn(cudnnCreateTensorDescriptor(&d.x), "create");
    check_cudnn(cudnnCreateTensorDescriptor(&d.y), "create");
    check_cudnn(cudnnCreateTensorDescriptor(&d.bias), "create");
    check_cudnn(cudnnCreateFilterDescriptor(&d.w), "create");
    check_cudnn(cudnnCreateConvolutionDescriptor(&d.conv), "create");
    channels_last(d.x, nd, dm.x);
    channels_last(d.y, nd, dm.y);
    channels_last(d.bias, nd, b5);
    check_cudnn(cudnnSetFilterNdDescriptor(d.w, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, nd, dm.w), "filter descriptor");
    check_cudnn(cudnnSetConvolutionNdDescriptor(d.conv, nd - 2, dm.pad, ones, ones, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT),
                "convolution descriptor");
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

/* The heuristics' first algorithm that succeeds within the workspace, its math type set on the
 * descriptor as the backend does (tensor ops allowed: bf16). */
static cudnnConvolutionFwdAlgo_t heuristic_algo(const conv_desc *d)
{
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    check_cudnn(cudnnSetConvolutionMathType(d->conv, CUDNN_TENSOR_OP_MATH), "math type");
    check_cudnn(cudnnGetConvolutionForwardAlgorithm_v7(g_cudnn, d->x, d->w, d->conv, d->y,
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf),
                "heuristics");
    for (int i = 0; i < returned; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= WORKSPACE) {
            check_cudnn(cudnnSetConvolutionMathType(d->conv, perf[i].mathType), "math type");
            return perf[i].algo;
        }
    check_cudnn(CUDNN_STATUS_NOT_SUPPORTED, "no algorithm within the workspace");
    return CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
}

/* y = conv(x) + bias (+ y if beta is 1) in one call: IMPLICIT_PRECOMP_GEMM, the only algorithm cuDNN
 * fuses with the identity activation. */
static void fused_conv(const conv_desc *d, const void *x, const void *w, const void *bias, void *y, float beta)
{
    float one = 1.0f;
    check_cudnn(cudnnConvolutionBiasActivationForward(g_cudnn, &one, d->x, x, d->w, w, d->conv,
                                                      CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, g_workspace,
                                                      WORKSPACE, &beta, d->y, y, d->bias, bias, g_identity, d->y, y),
                "fused");
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
    return g_failed ? -1.0f : ms / REPS;
}

/* Values in [-1, 1): zeros would flatter the tensor cores' power draw. */
__global__ void fill_kernel(__nv_bfloat16 *p, long long n, unsigned seed)
{
    WV_GRID_STRIDE_LOOP(i, n)
    {
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
    if (ms < 0) printf("  %-12s failed\n", how);
    else printf("  %-12s %8.3f ms %7.1f TFLOP/s\n", how, ms, flops / (ms * 1e-3) / 1e12);
    g_failed = 0;
}

/* The backend's separate bias pass, which fusing would save. */
static void bias_pass(void *y, const void *bias, long long rows, int C)
{
    bias_add_kernel<__nv_bfloat16><<<1024, 256, 0, g_stream>>>(y, bias, rows, C);
}

/* ---- cuDNN's graph API: the same convolution as a finalized execution plan -------------------------
 * What the backend might move to: the legacy calls above rebuild their plan on every call, which is
 * their host cost; a plan kept per shape leaves only the variant pack (the call's pointers) to make.
 * Some engines can also put their work into a CUDA graph themselves (cudnnBackendPopulateCudaGraph),
 * with no stream capture, which is what keeps the backend's step graphs off by default. */

enum { UID_X = 'x', UID_W = 'w', UID_Y = 'y', UID_BIAS = 'b', UID_SUM = 's' };
#define GRAPH_MAX_CONFIGS 16

/* What the graph computes, each what the backend's calls need: y = conv(x); y += conv(x) (a tap
 * after the first); y = conv(x) + bias (the first tap, or a whole 3-d conv, the bias fused). */
typedef enum { GRAPH_CONV, GRAPH_ACCUMULATE, GRAPH_BIAS } graph_kind;

typedef struct {
    cudnnBackendDescriptor_t x, w, y, conv, op, graph, heur;
    cudnnBackendDescriptor_t sum, bias, add, add_op; /* GRAPH_BIAS: the conv's sum (virtual) + bias -> y */
    cudnnBackendDescriptor_t cfgs[GRAPH_MAX_CONFIGS];
    int n_cfgs;
} graph_conv;

static cudnnBackendDescriptor_t graph_desc(cudnnBackendDescriptorType_t type)
{
    cudnnBackendDescriptor_t d = NULL;
    check_cudnn(cudnnBackendCreateDescriptor(type, &d), "graph API: create");
    return d;
}

static void graph_set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                      int64_t n, const void *value)
{
    check_cudnn(cudnnBackendSetAttribute(d, name, type, n, value), "graph API: set attribute");
}

/* A bf16 channels-last tensor of the graph, as channels_last() describes it for the legacy API; a
 * virtual one (an intermediate no pointer backs) in fp32. */
static cudnnBackendDescriptor_t graph_tensor(int64_t uid, int nd, const int *dims, bool is_virtual)
{
    int strides[5];
    int64_t dims64[5], strides64[5], alignment = 16;
    cudnnDataType_t type = is_virtual ? CUDNN_DATA_FLOAT : CUDNN_DATA_BFLOAT16;
    cudnnBackendDescriptor_t t = graph_desc(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    channels_last_strides(nd, dims, strides);
    for (int i = 0; i < nd; i++) dims64[i] = dims[i], strides64[i] = strides[i];
    graph_set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    graph_set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, nd, dims64);
    graph_set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, nd, strides64);
    graph_set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    graph_set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    graph_set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    check_cudnn(cudnnBackendFinalize(t), "graph API: tensor");
    return t;
}

/* GRAPH_BIAS's second node: y = sum + bias, the bias [cout] broadcast over the positions. */
static void graph_add_bias(graph_conv *g, int nd, const int *ydims)
{
    int bdims[5] = {1, ydims[1], 1, 1, 1};
    cudnnPointwiseMode_t mode = CUDNN_POINTWISE_ADD;
    cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    g->bias = graph_tensor(UID_BIAS, nd, bdims, false);
    g->add = graph_desc(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    graph_set(g->add, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    graph_set(g->add, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    check_cudnn(cudnnBackendFinalize(g->add), "graph API: pointwise");
    g->add_op = graph_desc(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    graph_set(g->add_op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->add);
    graph_set(g->add_op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->sum);
    graph_set(g->add_op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->bias);
    graph_set(g->add_op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->y);
    check_cudnn(cudnnBackendFinalize(g->add_op), "graph API: bias operation");
}

/* describe()'s convolution as an operation graph of the kind asked (its conv node alone, or with
 * the bias added after it), and the engine configurations heuristics mode A ranks for it. */
static graph_conv graph_describe(graph_kind kind, int nd, int cin, int cout, int kt, int k, int H, int W)
{
    graph_conv g;
    conv_dims dm = dims_of(nd, cin, cout, kt, k, H, W);
    int64_t spatial = nd - 2, pad[3], ones[3] = {1, 1, 1}, n = 0, n_ops = kind == GRAPH_BIAS ? 2 : 1;
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    cudnnBackendHeurMode_t heur_mode = CUDNN_HEUR_MODE_A;
    float alpha = 1.0f, beta = kind == GRAPH_ACCUMULATE ? 1.0f : 0.0f;
    memset(&g, 0, sizeof g);
    for (int i = 0; i < spatial; i++) pad[i] = dm.pad[i];
    g.x = graph_tensor(UID_X, nd, dm.x, false);
    g.w = graph_tensor(UID_W, nd, dm.w, false);
    g.y = graph_tensor(UID_Y, nd, dm.y, false);
    g.sum = kind == GRAPH_BIAS ? graph_tensor(UID_SUM, nd, dm.y, true) : g.y;
    g.conv = graph_desc(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    graph_set(g.conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    graph_set(g.conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    graph_set(g.conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial);
    graph_set(g.conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, spatial, ones);
    graph_set(g.conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, spatial, ones);
    graph_set(g.conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, spatial, pad);
    graph_set(g.conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, spatial, pad);
    check_cudnn(cudnnBackendFinalize(g.conv), "graph API: convolution");
    g.op = graph_desc(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR);
    graph_set(g.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g.x);
    graph_set(g.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g.w);
    graph_set(g.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g.sum);
    graph_set(g.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g.conv);
    graph_set(g.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
    graph_set(g.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
    check_cudnn(cudnnBackendFinalize(g.op), "graph API: operation");
    if (kind == GRAPH_BIAS) graph_add_bias(&g, nd, dm.y);
    cudnnBackendDescriptor_t ops[2] = {g.op, g.add_op};
    g.graph = graph_desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    graph_set(g.graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_ops, ops);
    graph_set(g.graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_cudnn);
    check_cudnn(cudnnBackendFinalize(g.graph), "graph API: operation graph");
    g.heur = graph_desc(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    graph_set(g.heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g.graph);
    graph_set(g.heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &heur_mode);
    check_cudnn(cudnnBackendFinalize(g.heur), "graph API: heuristics");
    for (int i = 0; i < GRAPH_MAX_CONFIGS; i++) g.cfgs[i] = graph_desc(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    check_cudnn(cudnnBackendGetAttribute(g.heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         GRAPH_MAX_CONFIGS, &n, g.cfgs),
                "graph API: heuristics' results");
    g.n_cfgs = (int)n;
    return g;
}

static void graph_destroy(graph_conv *g)
{
    cudnnBackendDescriptor_t all[] = {g->heur, g->graph, g->add_op, g->add, g->bias, g->op, g->conv,
                                      g->sum != g->y ? g->sum : NULL, g->y, g->w, g->x};
    for (int i = 0; i < GRAPH_MAX_CONFIGS; i++)
        if (g->cfgs[i]) cudnnBackendDestroyDescriptor(g->cfgs[i]);
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i]) cudnnBackendDestroyDescriptor(all[i]);
}

/* An execution plan of configuration cfg within the workspace, or NULL where it declines (not a
 * failure of the lab: engines decline shapes). */
static cudnnBackendDescriptor_t graph_plan(cudnnBackendDescriptor_t cfg)
{
    cudnnBackendDescriptor_t plan = NULL;
    int64_t workspace = 0, n = 0;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) != CUDNN_STATUS_SUCCESS) return NULL;
    if (cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_cudnn) ||
        cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg) ||
        cudnnBackendFinalize(plan) ||
        cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &workspace) ||
        workspace > (int64_t)WORKSPACE) {
        cudnnBackendDestroyDescriptor(plan);
        return NULL;
    }
    return plan;
}

/* The call's pointers (bias: NULL for a graph without it). */
static cudnnBackendDescriptor_t graph_pack(void *x, void *w, void *y, void *bias)
{
    int64_t uids[4] = {UID_X, UID_W, UID_Y, UID_BIAS}, n = bias ? 4 : 3;
    void *pointers[4] = {x, w, y, bias}, *workspace = g_workspace;
    cudnnBackendDescriptor_t pack = graph_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    graph_set(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    graph_set(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, pointers);
    graph_set(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    check_cudnn(cudnnBackendFinalize(pack), "graph API: variant pack");
    return pack;
}

/* What the engine behind configuration cfg notes of itself. */
typedef struct {
    int64_t index;    /* in cuDNN's global list */
    int native_graph; /* it can populate a CUDA graph itself */
    int compiles;     /* it compiles its kernels when a plan is made (NVRTC: seconds), which the lab skips */
} graph_engine_info;

static graph_engine_info graph_engine(cudnnBackendDescriptor_t cfg)
{
    graph_engine_info info = {-1, 0, 1};
    cudnnBackendDescriptor_t engine = NULL;
    cudnnBackendBehaviorNote_t notes[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
    int64_t n = 0, n_notes = 0;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine)) return info;
    if (!cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &engine) &&
        !cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &info.index) &&
        !cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                  CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &n_notes, notes)) {
        info.compiles = 0;
        for (int64_t i = 0; i < n_notes; i++) {
            info.native_graph |= notes[i] == CUDNN_BEHAVIOR_NOTE_SUPPORTS_CUDA_GRAPH_NATIVE_API;
            info.compiles |= notes[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
        }
    }
    cudnnBackendDestroyDescriptor(engine);
    return info;
}

/* The plan of the first configuration heuristics mode A ranks that finalizes without compiling (the
 * legacy API's kind of engine), its index in *cfg; or NULL. */
static cudnnBackendDescriptor_t graph_first_plan(const graph_conv *g, int *cfg)
{
    for (int i = 0; i < g->n_cfgs && i < GRAPH_MAX_CONFIGS; i++) {
        cudnnBackendDescriptor_t plan;
        *cfg = i;
        if (!graph_engine(g->cfgs[i]).compiles && (plan = graph_plan(g->cfgs[i]))) return plan;
    }
    return NULL;
}

/* How many of g's configurations could populate a CUDA graph themselves, and how many compile kernels. */
static void report_configs(const char *what, const graph_conv *g)
{
    int natives = 0, compiling = 0;
    for (int i = 0; i < g->n_cfgs && i < GRAPH_MAX_CONFIGS; i++) {
        graph_engine_info info = graph_engine(g->cfgs[i]);
        natives += info.native_graph;
        compiling += info.compiles;
    }
    printf("  graph API%s: %d configurations, %d of them can populate a CUDA graph, %d compile kernels\n", what,
           g->n_cfgs, natives, compiling);
}

/* The engine behind configuration cfg of g, under the row it ran. */
static void report_engine(const graph_conv *g, int cfg)
{
    printf("               (engine %lld, configuration %d of %d)\n", (long long)graph_engine(g->cfgs[cfg]).index,
           cfg + 1, g->n_cfgs);
}

/* Configuration i's engine populating a CUDA graph itself, the graph then launched and timed; 0 where
 * that fails (said). */
static int time_native_graph(const graph_conv *g, int i, graph_engine_info info, cudnnBackendDescriptor_t pack,
                             double flops)
{
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudnnStatus_t st = CUDNN_STATUS_NOT_SUPPORTED;
    cudnnBackendDescriptor_t plan = graph_plan(g->cfgs[i]);
    int ok = 0;
    CHECK_CUDA(cudaGraphCreate(&graph, 0));
    if (plan) st = cudnnBackendPopulateCudaGraph(g_cudnn, plan, pack, graph);
    if (st == CUDNN_STATUS_SUCCESS && cudaGraphInstantiateWithFlags(&exec, graph, 0) == cudaSuccess) {
        ok = 1;
        report("3d-native", time_ms([&] { g_failed |= cudaGraphLaunch(exec, g_stream) != cudaSuccess; }), flops);
        printf("               (engine %lld, configuration %d of %d, its own CUDA graph)\n", (long long)info.index, i + 1,
               g->n_cfgs);
        cudaGetLastError();
    } else {
        printf("  3d-native engine %lld, configuration %d of %d: %s\n", (long long)info.index, i + 1, g->n_cfgs,
               !plan ? "no plan" : st != CUDNN_STATUS_SUCCESS ? cudnnGetErrorString(st) : "the graph did not instantiate");
        cudaGetLastError();
    }
    if (exec) cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    if (plan) cudnnBackendDestroyDescriptor(plan);
    return ok;
}

/* Configuration i's plan run, timed (ms; -1 where it has no plan, or a run failed); with a bias, each
 * run followed by the bias pass over y (rows x C). */
static float time_graph_config(const graph_conv *g, int i, cudnnBackendDescriptor_t pack, void *y = NULL,
                               const void *bias = NULL, long long rows = 0, int C = 0)
{
    cudnnBackendDescriptor_t plan = graph_plan(g->cfgs[i]);
    float ms = -1.0f;
    if (!plan) return ms;
    ms = time_ms([&] {
        check_cudnn(cudnnBackendExecute(g_cudnn, plan, pack), "graph API: execute");
        if (bias) bias_pass(y, bias, rows, C);
    });
    g_failed = 0;
    cudnnBackendDestroyDescriptor(plan);
    return ms;
}

/* The causal shape (3-d, as the backend runs it) through the graph API: the plan of the first
 * configuration heuristics mode A ranks that makes one without compiling, alone and with the bias
 * pass after it, then the fastest of all such, then the first whose engine populates a CUDA graph
 * itself, that graph launched; and how many of the configurations could (and how many compile their
 * kernels). */
static void run_graph_api(const lab_shape *s, void *x, void *w, void *bias, void *y, double flops)
{
    graph_conv g = graph_describe(GRAPH_CONV, 5, s->cin, s->cout, 3, s->k, s->H, s->W);
    cudnnBackendDescriptor_t pack = g_failed ? NULL : graph_pack(x, w, y, NULL);
    graph_engine_info info[GRAPH_MAX_CONFIGS];
    int timed = 0, first = -1, best = -1, populated = 0;
    float best_ms = -1.0f;
    if (!pack) {
        report("3d-graph", -1.0f, flops);
        graph_destroy(&g);
        return;
    }
    for (int i = 0; i < g.n_cfgs && i < GRAPH_MAX_CONFIGS; i++) {
        float ms;
        info[i] = graph_engine(g.cfgs[i]);
        if (info[i].compiles || (ms = time_graph_config(&g, i, pack)) < 0) continue;
        timed++;
        if (first < 0) {
            first = i;
            report("3d-graph", ms, flops);
            report_engine(&g, i);
            report("3d-gbias", time_graph_config(&g, i, pack, y, bias, (long long)s->H * s->W, s->cout), flops);
        }
        if (best_ms < 0 || ms < best_ms) best_ms = ms, best = i;
    }
    if (first < 0) {
        printf("  3d-graph     no plan without compiling, of %d configurations\n", g.n_cfgs);
    } else {
        report("3d-gbest", best_ms, flops);
        printf("               (engine %lld, configuration %d, the fastest of the %d timed)\n",
               (long long)info[best].index, best + 1, timed);
    }
    for (int i = 0; i < g.n_cfgs && i < GRAPH_MAX_CONFIGS && !populated; i++)
        if (info[i].native_graph && !info[i].compiles) populated = time_native_graph(&g, i, info[i], pack, flops);
    report_configs("", &g);
    cudnnBackendDestroyDescriptor(pack);
    graph_destroy(&g);
    g_failed = 0;
}

/* Plans of the graphs' first configurations that make one without compiling (NULL where one has
 * none: its row says so, with its configurations). */
static int first_plans(const char *how, const graph_conv *g, int n, cudnnBackendDescriptor_t *plans, int *cfgs)
{
    int all = 1;
    if (g_failed) { /* a descriptor failed: said above */
        report(how, -1.0f, 0.0);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        if ((plans[i] = graph_first_plan(&g[i], &cfgs[i]))) continue;
        printf("  %-12s no plan without compiling (graph %d of %d)\n", how, i + 1, n);
        report_configs(" there", &g[i]);
        all = 0;
    }
    return all;
}

/* The causal shape as the backend would run it through the graph API, each way with what it fuses:
 * 3d-gfused, the 3-d convolution and the bias in one graph (3d-fused's legacy call); 2d-graph, a 2-d
 * graph per tap: the first with the bias, the others adding to y (beta 1), as 2d-fused. */
static void run_graph_fused(const lab_shape *s, void *x, void *w, void *bias, void *y, double flops)
{
    size_t frame_in = (size_t)s->H * s->W * s->cin * 2, tap = (size_t)s->cout * s->cin * s->k * s->k * 2;
    graph_conv g[3] = {graph_describe(GRAPH_BIAS, 5, s->cin, s->cout, 3, s->k, s->H, s->W),
                       graph_describe(GRAPH_BIAS, 4, s->cin, s->cout, 1, s->k, s->H, s->W),
                       graph_describe(GRAPH_ACCUMULATE, 4, s->cin, s->cout, 1, s->k, s->H, s->W)};
    cudnnBackendDescriptor_t plans[3] = {NULL, NULL, NULL}, packs[4] = {NULL, NULL, NULL, NULL};
    int cfgs[3];
    if (!g_failed) {
        packs[0] = graph_pack(x, w, y, bias);
        for (int t = 1; t < 3; t++) packs[t + 1] = graph_pack((char *)x + t * frame_in, (char *)w + t * tap, y, NULL);
    }
    if (first_plans("3d-gfused", g, 1, plans, cfgs)) {
        report("3d-gfused", time_ms([&] { check_cudnn(cudnnBackendExecute(g_cudnn, plans[0], packs[0]), "3d"); }),
               flops);
        report_engine(&g[0], cfgs[0]);
        report_configs(" (bias fused)", &g[0]);
    }
    if (first_plans("2d-graph", g + 1, 2, plans + 1, cfgs + 1)) {
        report("2d-graph", time_ms([&] {
                   check_cudnn(cudnnBackendExecute(g_cudnn, plans[1], packs[0]), "2d, bias");
                   for (int t = 1; t < 3; t++)
                       check_cudnn(cudnnBackendExecute(g_cudnn, plans[2], packs[t + 1]), "2d, beta 1");
               }),
               flops);
        report_engine(&g[1], cfgs[1]);
        report_engine(&g[2], cfgs[2]);
    }
    for (int i = 0; i < 4; i++)
        if (packs[i]) cudnnBackendDestroyDescriptor(packs[i]);
    for (int i = 0; i < 3; i++) {
        if (plans[i]) cudnnBackendDestroyDescriptor(plans[i]);
        graph_destroy(&g[i]);
    }
    g_failed = 0;
}

/* The two cached frames side by side in each pixel ([P][2 cin], a ring of two slots stored
 * interleaved): one 2-d convolution of 2 cin channels with the bias fused, then the new frame's tap
 * adding to y, read from a packed frame (2d-pair), from the slot the first call has just read, a
 * pixel stride of 2 cin (2d-pair-slot: the producer writing there, as it writes tap 0's slot now), or
 * from a packed frame then copied into that slot (2d-pair+copy). d2 and a2: run_causal's 2-d
 * convolution of one tap, packed. */
static void run_pairs(const lab_shape *s, void *x, void *y, void *w, void *bias, double flops, const conv_desc *d2,
                      cudnnConvolutionFwdAlgo_t a2)
{
    float one = 1.0f;
    size_t frame_in = (size_t)s->H * s->W * s->cin, tap = (size_t)s->cout * s->cin * s->k * s->k;
    char *new_frame = (char *)x + 2 * frame_in * 2, *tap2 = (char *)w + 2 * tap * 2;
    conv_desc dp = describe(4, 2 * s->cin, s->cout, 1, s->k, s->H, s->W);
    conv_desc dslot = describe(4, s->cin, s->cout, 1, s->k, s->H, s->W);
    int dims[4] = {1, s->cin, s->H, s->W};
    int strides[4] = {s->H * s->W * 2 * s->cin, 1, s->W * 2 * s->cin, 2 * s->cin};
    heuristic_algo(&dp); /* sets the math type it goes with */
    auto pair_then = [&](const conv_desc *d, const void *frame, cudnnConvolutionFwdAlgo_t a) {
        fused_conv(&dp, x, w, bias, y, 0.0f);
        check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d->x, frame, d->w, tap2, d->conv, a, g_workspace,
                                            WORKSPACE, &one, d->y, y),
                    "2d");
    };
    report("2d-pair", time_ms([&] { pair_then(d2, new_frame, a2); }), flops);
    report("2d-pair+copy", time_ms([&] {
               pair_then(d2, new_frame, a2);
               cudaError_t e = cudaMemcpy2DAsync(x, 4 * s->cin, new_frame, 2 * s->cin, 2 * s->cin,
                                                 (size_t)s->H * s->W, cudaMemcpyDeviceToDevice, g_stream);
               if (e != cudaSuccess && !g_failed) printf("  (copy: %s)\n", cudaGetErrorString(e)), g_failed = 1;
           }),
           flops);
    check_cudnn(cudnnSetTensorNdDescriptor(dslot.x, CUDNN_DATA_BFLOAT16, 4, dims, strides),
                "strided tensor descriptor");
    {
        cudnnConvolutionFwdAlgo_t aslot = g_failed ? a2 : heuristic_algo(&dslot);
        report("2d-pair-slot", time_ms([&] { pair_then(&dslot, x, aslot); }), flops);
    }
    destroy(&dp);
    destroy(&dslot);
}

/* A narrow causal convolution (the head: 96 -> 3) by output-side partial sums: one 2-d convolution of
 * the new frame into kt x cout channels, each tap's share of the outputs, which a small kernel (not
 * timed: it moves some 50 bytes a position) would add to the sums kept from the kt - 1 frames before.
 * Its cache: kt - 1 frames of cout partial sums instead of kt frames of cin inputs. 2d-outsum writes
 * the shares in bf16 (one more rounding each), 2d-outsum32 in float32, where cuDNN takes it. */
static void run_output_partials(const lab_shape *s, const void *x, const void *w, double flops)
{
    float one = 1.0f, zero = 0.0f;
    size_t outs = (size_t)s->H * s->W * s->kt * s->cout;
    int dims[4] = {1, s->kt * s->cout, s->H, s->W}, strides[4];
    conv_desc dq = describe(4, s->cin, s->kt * s->cout, 1, s->k, s->H, s->W);
    void *shares;
    CHECK_CUDA(cudaMalloc(&shares, outs * sizeof(float)));
    {
        cudnnConvolutionFwdAlgo_t a = heuristic_algo(&dq);
        report("2d-outsum", time_ms([&] {
                   check_cudnn(cudnnConvolutionForward(g_cudnn, &one, dq.x, x, dq.w, w, dq.conv, a, g_workspace,
                                                       WORKSPACE, &zero, dq.y, shares),
                               "2d");
               }),
               flops);
    }
    channels_last_strides(4, dims, strides);
    check_cudnn(cudnnSetTensorNdDescriptor(dq.y, CUDNN_DATA_FLOAT, 4, dims, strides), "float32 output descriptor");
    {
        cudnnConvolutionFwdAlgo_t a = g_failed ? CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM : heuristic_algo(&dq);
        report("2d-outsum32", time_ms([&] {
                   check_cudnn(cudnnConvolutionForward(g_cudnn, &one, dq.x, x, dq.w, w, dq.conv, a, g_workspace,
                                                       WORKSPACE, &zero, dq.y, shares),
                               "2d");
               }),
               flops);
    }
    destroy(&dq);
    cudaFree(shares);
}

/* The causal shape four ways (see the top of the file). */
static void run_causal(const lab_shape *s, void *x, void *y, void *w, void *bias, double flops)
{
    float one = 1.0f, zero = 0.0f;
    size_t frame_in = (size_t)s->H * s->W * s->cin, tap = (size_t)s->cout * s->cin * s->k * s->k;
    long long rows = (long long)s->H * s->W;
    conv_desc d3 = describe(5, s->cin, s->cout, 3, s->k, s->H, s->W);
    conv_desc d2 = describe(4, s->cin, s->cout, 1, s->k, s->H, s->W);
    cudnnConvolutionFwdAlgo_t a3 = heuristic_algo(&d3), a2;
    cudnnConvolutionFwdAlgoPerf_t found[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    report("3d", time_ms([&] {
               check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d3.x, x, d3.w, w, d3.conv, a3, g_workspace,
                                                   WORKSPACE, &zero, d3.y, y),
                           "3d");
               bias_pass(y, bias, rows, s->cout);
           }),
           flops);
    check_cudnn(cudnnSetConvolutionMathType(d3.conv, CUDNN_TENSOR_OP_MATH), "math type");
    check_cudnn(cudnnFindConvolutionForwardAlgorithmEx(g_cudnn, d3.x, x, d3.w, w, d3.conv, d3.y, y,
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, found, g_workspace,
                                                       WORKSPACE),
                "find");
    for (int i = 0; i < returned && !g_failed; i++)
        if (found[i].status == CUDNN_STATUS_SUCCESS) {
            printf("  3d-find      %8.3f ms %7.1f TFLOP/s  (algo %d, math %d; the heuristics chose %d)\n",
                   found[i].time, flops / (found[i].time * 1e-3) / 1e12, (int)found[i].algo, (int)found[i].mathType,
                   (int)a3);
            break;
        }
    g_failed = 0;
    check_cudnn(cudnnSetConvolutionMathType(d3.conv, CUDNN_TENSOR_OP_MATH), "math type");
    report("3d-fused", time_ms([&] { /* cuDNN declining it shows as the status before "failed" */
               fused_conv(&d3, x, w, bias, y, 0.0f);
           }),
           flops);
    a2 = heuristic_algo(&d2);
    report("2d-sum", time_ms([&] { /* the weights read as three taps: their layout does not matter for timing */
               for (int t = 0; t < 3; t++)
                   check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d2.x, (char *)x + t * frame_in * 2, d2.w,
                                                       (char *)w + t * tap * 2, d2.conv, a2, g_workspace, WORKSPACE,
                                                       t ? &one : &zero, d2.y, y),
                               "2d");
               bias_pass(y, bias, rows, s->cout);
           }),
           flops);
    report("2d-fused", time_ms([&] {
               fused_conv(&d2, x, w, bias, y, 0.0f);
               for (int t = 1; t < 3; t++)
                   check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d2.x, (char *)x + t * frame_in * 2, d2.w,
                                                       (char *)w + t * tap * 2, d2.conv, a2, g_workspace, WORKSPACE,
                                                       &one, d2.y, y),
                               "2d");
           }),
           flops);
    {
        /* the three frames side by side in each pixel's channels (a ring stored interleaved): one 2-d
         * convolution of 3 cin channels, the bias fused, no passes over y to add the taps up */
        conv_desc ds = describe(4, 3 * s->cin, s->cout, 1, s->k, s->H, s->W);
        heuristic_algo(&ds); /* sets the math type it goes with */
        report("2d-stack", time_ms([&] { fused_conv(&ds, x, w, bias, y, 0.0f); }), flops);
        destroy(&ds);
    }
    run_pairs(s, x, y, w, bias, flops, &d2, a2);
    if ((s->kt - 1) * s->cout < s->cin) run_output_partials(s, x, w, flops);
    run_graph_api(s, x, w, bias, y, flops);
    run_graph_fused(s, x, w, bias, y, flops);
    destroy(&d3);
    destroy(&d2);
}

static void run_shape(const lab_shape *s)
{
    long long out_positions = (long long)out_side(s->k, s->H) * out_side(s->k, s->W);
    size_t frame_in = (size_t)s->H * s->W * s->cin, frame_out = (size_t)out_positions * s->cout;
    double flops = 2.0 * out_positions * (double)s->cout * s->cin * s->kt * s->k * s->k;
    float one = 1.0f, zero = 0.0f;
    void *x = random_buffer(frame_in * s->kt, 1), *y = random_buffer(frame_out, 2);
    void *w = random_buffer((size_t)s->cout * s->cin * s->kt * s->k * s->k, 3), *bias = random_buffer(s->cout, 4);
    g_failed = 0;
    printf("%s\n", s->name);
    if (s->kt > 1) {
        run_causal(s, x, y, w, bias, flops);
    } else {
        conv_desc d = describe(4, s->cin, s->cout, 1, s->k, s->H, s->W);
        cudnnConvolutionFwdAlgo_t a = heuristic_algo(&d);
        report("2d", time_ms([&] {
                   check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d.x, x, d.w, w, d.conv, a, g_workspace, WORKSPACE,
                                                       &zero, d.y, y),
                               "2d");
                   bias_pass(y, bias, out_positions, s->cout);
               }),
               flops);
        destroy(&d);
    }
    CHECK_CUDA(cudaStreamSynchronize(g_stream));
    cudaFree(x), cudaFree(y), cudaFree(w), cudaFree(bias);
}

/* Microseconds of host time per call of `queue`, over HOST_CALLS calls queued back to back. */
#define HOST_CALLS 200

template <typename F> static double host_us(F queue)
{
    for (int i = 0; i < 10 && !g_failed; i++) queue(); /* first-call setup out of the way */
    CHECK_CUDA(cudaStreamSynchronize(g_stream));
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < HOST_CALLS && !g_failed; i++) queue();
    auto t1 = std::chrono::steady_clock::now();
    CHECK_CUDA(cudaStreamSynchronize(g_stream));
    return g_failed ? -1.0 : std::chrono::duration<double, std::micro>(t1 - t0).count() / HOST_CALLS;
}

static void report_host(const char *how, double us)
{
    if (us < 0) printf("  %-34s failed\n", how);
    else printf("  %-34s %7.1f us\n", how, us);
    g_failed = 0;
}

/* HOST_CALLS fused calls captured into a CUDA graph, then replayed (see the top). */
static void run_graph_costs(const conv_desc *d, void *x, void *w, void *bias, void *y)
{
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e;
    auto queue_all = [&] {
        for (int i = 0; i < HOST_CALLS && !g_failed; i++) fused_conv(d, x, w, bias, y, 1.0f);
    };
    CHECK_CUDA(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
    queue_all();
    e = cudaStreamEndCapture(g_stream, &graph);
    if (e == cudaSuccess && !g_failed) e = cudaGraphInstantiateWithFlags(&exec, graph, 0);
    if (e != cudaSuccess || g_failed) {
        printf("  CUDA graph of %d fused calls: capture failed (%s)\n", HOST_CALLS,
               g_failed ? "a cuDNN call failed while capturing" : cudaGetErrorString(e));
        cudaGetLastError();
        g_failed = 0;
    } else {
        report_host("graph replay, per fused call", host_us([&] { CHECK_CUDA(cudaGraphLaunch(exec, g_stream)); }) /
                                                        HOST_CALLS);
        printf("  GPU time per fused call: %.1f us queued one by one, %.1f us replayed from the graph\n",
               1e3 * time_ms(queue_all) / HOST_CALLS,
               1e3 * time_ms([&] { CHECK_CUDA(cudaGraphLaunch(exec, g_stream)); }) / HOST_CALLS);
        g_failed = 0;
    }
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
}

/* The 3-d convolution of run_host_costs through the graph API: an execution plan kept, with the
 * variant pack kept too (pointers that never change) or made anew for each call, as the backend's
 * calls would (their pointers change with the ring's slots and the tiles). */
static void run_graph_api_costs(void *x, void *w, void *y, int H, int W, int C)
{
    graph_conv g = graph_describe(GRAPH_CONV, 5, C, C, 3, 3, H, W);
    cudnnBackendDescriptor_t pack = g_failed ? NULL : graph_pack(x, w, y, NULL), plan = NULL;
    int cfg;
    if (pack) plan = graph_first_plan(&g, &cfg);
    if (!plan) {
        report_host("graph API 3-d: no plan", -1.0);
    } else {
        report_host("graph API 3-d, plan and pack kept", host_us([&] {
                        check_cudnn(cudnnBackendExecute(g_cudnn, plan, pack), "graph API: execute");
                    }));
        report_host("graph API 3-d, a new pack a call", host_us([&] {
                        cudnnBackendDescriptor_t fresh = graph_pack(x, w, y, NULL);
                        check_cudnn(cudnnBackendExecute(g_cudnn, plan, fresh), "graph API: execute");
                        cudnnBackendDestroyDescriptor(fresh);
                    }));
        cudnnBackendDestroyDescriptor(plan);
    }
    if (pack) cudnnBackendDestroyDescriptor(pack);
    graph_destroy(&g);
    g_failed = 0;
}

/* The host's cost per call for a 96->96 3x3 convolution of a 34x34 grid (a small tile's frame). */
static void run_host_costs(void)
{
    const int C = 96, H = 34, W = 34;
    float one = 1.0f, zero = 0.0f;
    void *x = random_buffer((size_t)H * W * C * 3, 5), *y = random_buffer((size_t)H * W * C, 6);
    void *w = random_buffer((size_t)C * C * 27, 7), *bias = random_buffer(C, 8);
    conv_desc d3 = describe(5, C, C, 3, 3, H, W), d2 = describe(4, C, C, 1, 3, H, W);
    cudnnConvolutionFwdAlgo_t a3 = heuristic_algo(&d3), a2 = heuristic_algo(&d2);
    printf("host time per call, %d calls queued (96->96 3x3 at %dx%d)\n", HOST_CALLS, H, W);
    report_host("kernel launch (bias pass)", host_us([&] { bias_pass(y, bias, (long long)H * W, C); }));
    report_host("cudnnConvolutionForward 2-d", host_us([&] {
                    check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d2.x, x, d2.w, w, d2.conv, a2, g_workspace,
                                                        WORKSPACE, &zero, d2.y, y),
                                "2d");
                }));
    report_host("cudnnConvolutionForward 3-d", host_us([&] {
                    check_cudnn(cudnnConvolutionForward(g_cudnn, &one, d3.x, x, d3.w, w, d3.conv, a3, g_workspace,
                                                        WORKSPACE, &zero, d3.y, y),
                                "3d");
                }));
    report_host("cudnnConvolutionBiasActivationForward", host_us([&] {
                    fused_conv(&d2, x, w, bias, y, 1.0f);
                }));
    run_graph_costs(&d2, x, w, bias, y);
    run_graph_api_costs(x, w, y, H, W, C);
    destroy(&d3);
    destroy(&d2);
    cudaFree(x), cudaFree(y), cudaFree(w), cudaFree(bias);
}

static void report_bandwidth(const char *how, float ms, double bytes)
{
    if (ms < 0) printf("  %-9s failed\n", how);
    else printf("  %-9s %8.3f ms %7.0f GB/s\n", how, ms, bytes / (ms * 1e-3) / 1e9);
    g_failed = 0;
}

/* A device-to-device copy of `bytes` from x to y, timed: the ceiling for a kernel moving as many. */
static void report_copy(void *y, const void *x, double bytes)
{
    report_bandwidth("memcpy", time_ms([&] {
                         CHECK_CUDA(cudaMemcpyAsync(y, x, (size_t)(bytes / 2), cudaMemcpyDeviceToDevice, g_stream));
                     }),
                     bytes);
}

/* RMS norm + SiLU over n frames from a padded grid to a padded grid (a conv's output to the next
 * conv's input), as exec_rms_norm launches it. */
static void run_rms_norm(int C, int h, int w, int n)
{
    wv_grid g = {h, w, 1};
    size_t elems = (size_t)n * (size_t)wv_grid_positions(g) * C;
    double bytes = 2.0 * 2.0 * (double)elems; /* bf16, read once and written once */
    void *x = random_buffer(elems, 11), *y = random_buffer(elems, 12), *gamma = random_buffer((size_t)C, 13);
    int lanes_log2 = 0;
    unsigned row_blocks = 0;
    printf("rms_norm + silu: %d channels at %dx%d, %d frames (%.0f MB in and out)\n", C, h, w, n, bytes / 1e6);
    if (rms_norm_vec_launch(g, n, C, 2, THREADS, &lanes_log2, &row_blocks))
        report_bandwidth("vectors", time_ms([&] {
                             rms_norm_vec_kernel<__nv_bfloat16><<<dim3(row_blocks, (unsigned)(h + 2), (unsigned)n),
                                                                  THREADS, 0, g_stream>>>(x, g, y, g, C, gamma, 1,
                                                                                          lanes_log2);
                         }),
                         bytes);
    report_bandwidth("warp", time_ms([&] {
                         rms_norm_kernel<__nv_bfloat16><<<blocks_for((int64_t)elems / C * 32, THREADS), THREADS, 0,
                                                          g_stream>>>(x, g, y, g, C, n, gamma, 1);
                     }),
                     bytes);
    report_copy(y, x, bytes);
    CHECK_CUDA(cudaGetLastError());
    cudaFree(x), cudaFree(y), cudaFree(gamma);
}

/* The sub-pixel phases of upsamples.11 (4 x C channels on the half-resolution grid the 2x2 conv
 * leaves) into the interior of the full-resolution frame, as exec_pixel_shuffle launches it. */
static void run_pixel_shuffle(int C, int h, int w)
{
    wv_grid gs = {h / 2 + 1, w / 2 + 1, 0}, gd = {h, w, 1};
    int units = C * 2 / 16;
    size_t src_elems = (size_t)wv_grid_positions(gs) * 4 * C, dst_elems = (size_t)wv_grid_positions(gd) * C;
    double bytes = 2.0 * 2.0 * h * w * C;
    void *src = random_buffer(src_elems, 14), *dst = random_buffer(dst_elems, 15);
    printf("pixel_shuffle: %d channels into %dx%d (%.0f MB in and out)\n", C, h, w, bytes / 1e6);
    report_bandwidth("vectors", time_ms([&] {
                         pixel_shuffle_kernel<uint4><<<blocks_for((int64_t)h * w * units, THREADS), THREADS, 0,
                                                       g_stream>>>(src, gs, 0, 0, dst, gd, 0, 0, units);
                     }),
                     bytes);
    report_copy(dst, src, bytes);
    CHECK_CUDA(cudaGetLastError());
    cudaFree(src), cudaFree(dst);
}

static void run_memory_kernels(void)
{
    run_rms_norm(96, 720, 1280, 4);
    run_rms_norm(192, 360, 640, 4);
    run_rms_norm(384, 180, 320, 2);
    run_pixel_shuffle(96, 720, 1280);
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
    check_cudnn(cudnnCreateActivationDescriptor(&g_identity), "activation");
    check_cudnn(cudnnSetActivationDescriptor(g_identity, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0),
                "activation");
    CHECK_CUDA(cudaMalloc(&g_workspace, WORKSPACE));
    for (size_t i = 0; i < sizeof SHAPES / sizeof *SHAPES; i++) run_shape(&SHAPES[i]);
    run_host_costs();
    run_memory_kernels();
    cudaFree(g_workspace);
    cudnnDestroyActivationDescriptor(g_identity);
    cudnnDestroy(g_cudnn);
    cudaStreamDestroy(g_stream);
    return 0;
}
