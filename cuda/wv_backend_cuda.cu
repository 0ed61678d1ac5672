/* The CUDA backend: the op table of wv_backend.h on an NVIDIA GPU.
 *
 * One table per activation type (fp32, fp16, bf16); parameters are stored in the same type and
 * every convolution, GEMM and reduction accumulates in fp32 (fp32 mode uses no TF32). Layouts are
 * the CPU backend's: channels-last frames with a zero ring, so a 3x3 convolution is cuDNN's NHWC
 * convolution of the padded frame with padding 1 (the ring outputs, which nobody reads, come out
 * as by-products), and an upsample's sub-pixel 2x2 one the same without padding (its four phases
 * on a grid one pixel smaller, which pixel_shuffle_kernel spreads over the x2 frame). A causal
 * convolution is one NDHWC convolution over three frames in a row: the driver keeps its cache as a
 * ring of three frame slots (wv_ring), the two previous frames and a free slot the new one is
 * written into, so the ring never moves. The weights are packed once, in time order; when the
 * ring's oldest frame is not in slot 0, a kernel turns their taps to the ring's order in the arena's
 * weight scratch first (a few MiB of copying, against the frames the ring saves moving; three stored
 * rotations cost 264 MiB of device memory in bf16).
 *
 * Causal convolutions run by taps (equal widths of at most TAPS_MAX_CHANNELS, 128 unless
 * WANVIDEO_CUDA_TAPS_MAX_CHANNELS says otherwise: the full-resolution stage's 96-channel residual
 * convs) run instead as three accumulated 2-d convolutions, one per temporal tap, each reading its
 * tap's frame in place with the weights packed tap by tap: cuDNN's 3-d kernels reach 240-280
 * TFLOP/s on them, its 2-d ones 370+ (tools/conv_lab.cu, H200, bf16).
 * Their taps are apart (WV_CACHE_TAPS), so their caches keep only the two previous frames: the driver
 * runs tap 0 before the new frame overwrites its slot (one frame less per cache: 6 x 45 MiB in the
 * 2 GiB plan of 720p x 81, 2x2 tiles).
 *
 * With WANVIDEO_CUDA_PAIRED_TAPS=1 (read with the width; off until a GPU has timed it beside the
 * default: tools/conv_lab.cu's 2d-pair rows, tools/gpu_check.sh's pairs step) they run their taps in
 * pairs instead: the backend keeps their two cached frames side by side in each position
 * ([positions][2][cin], in the same bytes: WV_CACHE_KEPT), taps 0 and 1 run as one 2-d convolution of
 * 2 cin channels with the bias, tap 2 over the new frame adds to y, and the new frame is then copied
 * into the oldest one's half: two convolutions instead of three (cuDNN's 2-d kernels run wider inputs
 * faster: 2d-stack), for that copy, and the sum rounded once less in 16 bits.
 *
 * Convolutions: cuDNN, the algorithms its heuristics rank for a shape kept in the context (which
 * lives with the model), the best one that fits the call's workspace (from the arena) run, with the
 * bias and the residual sum folded in (cudnnConvolutionBiasActivationForward) where the algorithm
 * allows; a shape cuDNN runs nothing for goes to a direct kernel (WANVIDEO_CUDA_GRAPH_API=1: through
 * plans of cuDNN's graph API first, made once per shape, see run_graph_conv). Attention: per query
 * chunk, scores by a cuBLAS GEMM in fp32, softmax kernel, a second GEMM. Output: a kernel writes each tile's core into
 * one of the arena's STAGINGS stagings as float32; at the end of the step a second stream copies it
 * to pinned host memory while the compute stream runs on; the host copies it into the caller's
 * array when its staging comes round again. Errors are recorded in the context at the first failure; later ops then do nothing,
 * and the next status-returning op reports it. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wv_cuda.h"
#include "wv_cudnn_probe.h"
#include "wv_internal.h"
#include "wv_kernels.cuh"

#if CUDNN_MAJOR < 9
#error "the CUDA backend needs cuDNN 9 or newer (its status codes come in categories)"
#endif

#define WV_CUDA_WORKSPACE_BYTES ((size_t)64 << 20)
/* cuBLAS's recommended workspace before Hopper (32 MiB there, which plans of a 720p frame give it: the
 * workspace grows with the largest conv input, up to WV_CUDA_WORKSPACE_BYTES) */
#define CUBLAS_WORKSPACE_BYTES ((size_t)4 << 20)
/* The scalars: small device memory of a context. Offset 0: the latents' first nonfinite element
 * (check_finite); OUTPUT_FLAG_OFFSET: write_output's nonfinite flag; STATS_OFFSET: the latents' mean
 * and std, WV_CUDA_MAX_Z floats each. */
#define WV_CUDA_SCALARS_BYTES ((size_t)64 << 10)
#define OUTPUT_FLAG_OFFSET 64
#define STATS_OFFSET 256
#define WV_CUDA_MAX_Z WV_MAX_WIDTH
static_assert(STATS_OFFSET + 2 * WV_CUDA_MAX_Z * sizeof(float) <= WV_CUDA_SCALARS_BYTES, "the scalars hold mean and std");

#define MAX_CANDIDATES 8
#define TAPS_MAX_CHANNELS 128 /* the default of g_taps_max_channels */
#define KEEP_PINNED_MIB 512   /* pinned host memory a context keeps between calls, at most (keep_pinned) */
#define STAGINGS 3 /* steps of output in the arena: two steps in flight, and the ring's period of 3 */

/* What a plan of cuDNN's graph API (WANVIDEO_CUDA_GRAPH_API=1, see run_graph_conv) computes:
 * y = conv(x); y += conv(x) (a tap after the first, or a residual sum); y = conv(x) + bias. */
typedef enum { FUSE_NONE, FUSE_SUM, FUSE_BIAS, FUSIONS } fusion;
#define GRAPH_DESCRIPTORS 16 /* a graph's descriptors, kept as long as its plan */

typedef struct {
    cudnnBackendDescriptor_t plan; /* NULL: none (tried: it was looked for) */
    cudnnBackendDescriptor_t kept[GRAPH_DESCRIPTORS]; /* what the plan was made of */
    int n_kept;
    int64_t workspace, engine; /* the plan's bytes, and its engine's global index (for WANVIDEO_CUDA_VERBOSE) */
    int64_t passed_over;       /* the least workspace of an engine ranked before the plan's (or any, where none
                                  was found) that suited but did not fit the call's workspace; 0: none */
    char tried, shown;
    char declined; /* cuDNN declined the plan: never run again, destroyed after the call's CUDA graphs, which
                      may hold its kernels (drop_declined_plans) */
} graph_plan;

/* One convolution shape: descriptors and the algorithms cuDNN's heuristics offer for it, best first,
 * each with its math type and workspace; one that cuDNN refused to run is marked and skipped. */
typedef struct {
    int cin, cout, kt, kh, kw, H, W, n;
    int Ho, Wo; /* the output grid: H x W, or where an even kernel (the sub-pixel conv) fits */
    cudnnTensorDescriptor_t x, y, bias;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t algo[MAX_CANDIDATES];
    cudnnMathType_t math[MAX_CANDIDATES];
    cudnnMathType_t math_now; /* the math type `conv` holds: set again only when a candidate differs */
    size_t memory[MAX_CANDIDATES];
    size_t fused_memory[MAX_CANDIDATES]; /* the least workspace the bias-fused call may run in: 0, or more
                                            than one it was short of (the plain call ran there) */
    char refused[MAX_CANDIDATES];
    int n_candidates;      /* 0: cuDNN offers nothing runnable, direct_conv_kernel computes it */
    cudnnStatus_t refusal; /* why it offers nothing: a descriptor or the heuristics declined (else SUCCESS) */
    int unfused;           /* cuDNN declined the bias-fused call: a separate bias pass follows the conv */
    int shown;             /* WANVIDEO_CUDA_VERBOSE: 2 + the candidate last printed as running it (1: direct) */
    long long last_call;   /* the call that last ran it (cuda_ctx.calls) */
    graph_plan graph[FUSIONS];
} conv_shape;

/* A block of a step's output waiting in pinned memory for its copy into the caller's array. */
typedef struct {
    char *dst;
    size_t offset; /* bytes into the staging buffer */
    size_t row;    /* bytes of a row of the block: w x WV_RGB items */
    size_t stride; /* bytes of a row of the caller's array */
    int h;
} pending_copy;

/* Output of one step: the write kernel fills `dev` (in the arena), the copy stream moves it to
 * pinned `host` after the step, and the host copies the blocks into the caller's array. */
typedef struct {
    char *host, *dev;
    size_t cap, used; /* bytes */
    pending_copy *copies;
    int n_copies, cap_copies;
    cudaEvent_t written, done; /* the step's output is in `dev` (compute stream); in `host` (copy stream) */
    int queued;                /* the step's work and copy are queued up to `done` */
    int pageable;              /* `host` is plain malloc memory: pinning it failed (its copy then waits) */
} staging;

/* The caller's device and CUDA context, while ours is current (see enter_device). */
typedef struct {
    int prev;     /* the caller's device (-1: unknown) */
    int have_ctx; /* ctx holds the caller's context (NULL: none was current) */
    void *ctx;
    cudaError_t entered; /* cudaSetDevice's: a device in exclusive or prohibited mode refuses a context */
} device_scope;

/* Deferred ops (WANVIDEO_CUDA_GRAPHS=1, see "step graphs" below): an op's GPU work as a function
 * and its arguments, by value. */
typedef struct cuda_ctx cuda_ctx;
typedef void (*op_exec)(cuda_ctx *c, const void *args);

typedef struct {
    op_exec fn;
    size_t offset, size; /* the arguments' bytes in the list's `args` */
} op_entry;

typedef struct {
    op_entry *ops;
    int n, cap;
    char *args;
    size_t used, cap_args;
} op_list;

/* A list of ops seen before (`exec` NULL: once, it ran as recorded) or captured into a graph. */
typedef struct {
    uint64_t hash;
    op_list list;
    cudaGraphExec_t exec;
    long long last_used; /* the flush that last met it: the least recently used goes first */
} step_graph;

struct cuda_ctx {
    wv_dtype dt;
    int device;
    device_scope caller; /* during a decode: the caller's device, restored by finish */
    cudaStream_t stream, copy_stream; /* the work; the output's copies to the host */
    cudaEvent_t caller_ready;
    cudnnHandle_t cudnn;
    cudnnActivationDescriptor_t identity; /* the fused convolution's activation */
    cublasHandle_t cublas;
    void *scalars; /* WV_CUDA_SCALARS_BYTES of device memory */
    int direct_only; /* WANVIDEO_CUDA_DIRECT_CONV=1: every conv by direct_conv_kernel (to test it) */
    int verbose;     /* WANVIDEO_CUDA_VERBOSE=1: what runs for each conv shape, printed to stderr once */
    int graphs;       /* WANVIDEO_CUDA_GRAPHS=1: ops deferred, repeated steps launched as CUDA graphs */
    int graph_api;    /* WANVIDEO_CUDA_GRAPH_API=1: convolutions by cuDNN's graph API where it has a plan */
    int graphs_failed; /* a capture of this call failed (the reason went to stderr): its later steps run as
                          recorded; the next call tries again (a failure for want of memory may pass) */
    int capturing;     /* a step graph is being captured */
    conv_shape *shapes;
    int n_shapes, cap_shapes;
    long long calls; /* begun so far: the shapes' clock (forget_unused_shapes) */
    void *pinned; /* alloc_host's block of pinned host memory (the trunk output), kept for the next call */
    size_t pinned_bytes;
    int pinned_lent;
    int pinned_pageable; /* the block is plain malloc memory: pinning that much failed (copies then wait) */
    int pageable_shown;  /* pinning failed and pageable memory serves: said once on stderr */
    size_t keep_pinned; /* bytes of pinned memory (that block and the output stagings) kept between calls */
    int drop_pinned;    /* this call's pinned memory passes keep_pinned: it goes back as the call ends */
    /* per call */
    void *workspace;
    size_t workspace_bytes;
    void *weight_scratch; /* the arena's: a causal conv's weights with their taps turned to its ring */
    size_t weight_scratch_bytes;
    wv_view lat_copy;
    void *lat_dev; /* host latents copied to the device, as float32 */
    staging stage[STAGINGS];
    size_t step_out_bytes; /* this call's: the device side of each staging holds that much */
    int cur;
    int stats_loaded; /* mean and std are on the device for this call */
    int in_call;      /* between begin and finish: ops may be deferred */
    int output_unchecked; /* write_output ran since sync last read the nonfinite flag */
    int decline_shown;    /* the first shape no cuDNN algorithm ran was reported on stderr */
    op_list pending;  /* ops recorded since the last flush */
    step_graph *known;
    int n_known, cap_known, n_execs;
    long long flushes, graph_launches, graph_captures;
    wv_error err; /* the first failure since begin */
};

/* Test hook: the n-th allocation from now (device memory, or host memory to pin) fails as if out of memory. */
static int g_fail_alloc_countdown = 0;

static void cuda_fail_nth_alloc(int n) { g_fail_alloc_countdown = n; }

/* ---- error recording ---------------------------------------------------------------------- */

static int failed(cuda_ctx *c) { return c->err.code != WV_OK; }

/* Errors after which the process's CUDA context stays broken: every later call fails too. */
static int context_lost(cudaError_t e)
{
    return e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure || e == cudaErrorIllegalInstruction ||
           e == cudaErrorMisalignedAddress || e == cudaErrorHardwareStackError || e == cudaErrorInvalidPc ||
           e == cudaErrorInvalidAddressSpace || e == cudaErrorAssert || e == cudaErrorLaunchTimeout ||
           e == cudaErrorECCUncorrectable;
}

/* What an error's message ends with: after a lost context, that only a restart helps. */
static const char *restart_hint(cudaError_t e)
{
    return context_lost(e) ? " (this process can no longer use the GPU: restart it)" : "";
}

static int cuda_ok(cuda_ctx *c, cudaError_t e, const char *what)
{
    if (e == cudaSuccess) return 1;
    if (!failed(c))
        wv_fail(&c->err, e == cudaErrorMemoryAllocation ? WV_ERR_NOMEM_DEVICE : WV_ERR_BACKEND,
                "CUDA error in %s: %s%s", what, cudaGetErrorString(e), restart_hint(e));
    cudaGetLastError(); /* a recoverable error must not resurface in the next call's first check */
    return 0;
}

static int cudnn_ok(cuda_ctx *c, cudnnStatus_t s, const char *what)
{
    wv_status code = s == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED     ? WV_ERR_NOMEM
                     : s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ? WV_ERR_NOMEM_DEVICE
                                                                                 : WV_ERR_BACKEND;
    if (s == CUDNN_STATUS_SUCCESS) return 1;
    if (!failed(c)) wv_fail(&c->err, code, "cuDNN error in %s: %s", what, cudnnGetErrorString(s));
    cudaGetLastError(); /* a launch of the library's that failed must not resurface as ours */
    return 0;
}

/* An algorithm declining this shape or these buffers (or an engine failing on them: a parameter,
 * an unsupported case, an internal error of its own): the next candidate may run. What fails every
 * candidate alike (the installation, the driver, an allocation, a fault, a null pointer: ours) is the
 * decode's error. */
static int cudnn_declined(cudnnStatus_t s)
{
    switch (s) {
    case CUDNN_STATUS_BAD_PARAM_NULL_POINTER:
    case CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER:
    case CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART:
    case CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED:
    case CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED:
        return 0;
    default: {
        int category = CUDNN_STATUS_CATEGORY(s);
        return category == CUDNN_STATUS_BAD_PARAM || category == CUDNN_STATUS_NOT_SUPPORTED ||
               category == CUDNN_STATUS_INTERNAL_ERROR;
    }
    }
}

/* What cuDNN says when describing a shape (descriptors, heuristics) that fails every shape alike: a
 * broken installation (a sub-library it cannot load, lacks or finds of another version), where the
 * direct kernel would run the whole decode, far slower, without a word of why. An engine's own
 * prerequisite (nvrtc for runtime-compiled ones) declines that engine only, at run time. */
static int cudnn_broken(cudnnStatus_t s)
{
    return s != CUDNN_STATUS_DEPRECATED &&
           (!cudnn_declined(s) || s == CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE);
}

static int cublas_ok(cuda_ctx *c, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS) return 1;
    if (!failed(c))
        wv_fail(&c->err, s == CUBLAS_STATUS_ALLOC_FAILED ? WV_ERR_NOMEM_DEVICE : WV_ERR_BACKEND,
                "cuBLAS error in %s: %s", what, cublasGetStatusString(s));
    cudaGetLastError(); /* as in cudnn_ok */
    return 0;
}

static int launched(cuda_ctx *c, const char *what) { return cuda_ok(c, cudaGetLastError(), what); }

/* ok, and the created handle NULL unless ok: what a failed create leaves in its handle is not
 * documented, and the cleanup destroys every handle that is not NULL. */
template <typename H> static int made(int ok, H *handle)
{
    if (!ok) *handle = NULL;
    return ok;
}

/* Hands the recorded failure to the caller and clears it. */
static wv_status take_error(cuda_ctx *c, wv_error *err)
{
    wv_status st = c->err.code;
    if (st && err) *err = c->err;
    c->err.code = WV_OK;
    c->err.msg[0] = 0;
    return st;
}

/* Ops called outside a decode (model build and free) switch to the device's primary context (ours:
 * a non-primary one the caller made with the driver API cannot use our memory) and back; a decode
 * does from begin to finish. Back means the caller's CUDA context, read and restored through
 * the driver (found at run time: no link to libcuda): restoring a device with cudaSetDevice would
 * create that device's primary context (hundreds of MiB) in a thread that had none current, e.g.
 * on GPU 0 for a model on GPU 1. Without the driver's entry points, the caller's device. (In a
 * thread that had no context, our own runtime's notion of the current device stays on the model's:
 * this module links a static runtime of its own, so torch's notion is untouched.) */
typedef int (*ctx_get_fn)(void **ctx); /* cuCtxGetCurrent, cuCtxSetCurrent: CUresult, 0 on success */
typedef int (*ctx_set_fn)(void *ctx);

static void *driver_entry_point(const char *name)
{
    void *fn = NULL;
#if CUDART_VERSION >= 12050
    cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, NULL);
#elif CUDART_VERSION >= 12000
    cudaError_t e = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, NULL);
#else
    cudaError_t e = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault);
#endif
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not found: no error for a later launch's check to pick up */
        fn = NULL;
    }
    return fn; /* NULL too when the driver lacks the symbol */
}

typedef struct {
    ctx_get_fn get;
    ctx_set_fn set;
} context_api;

static const context_api *driver_context_api(void)
{
    static const context_api api = {(ctx_get_fn)driver_entry_point("cuCtxGetCurrent"),
                                    (ctx_set_fn)driver_entry_point("cuCtxSetCurrent")};
    return &api;
}

static device_scope enter_device(int device)
{
    const context_api *api = driver_context_api();
    device_scope s = {-1, 0, NULL, cudaSuccess};
    s.have_ctx = api->get && api->set && api->get(&s.ctx) == 0;
    if (cudaGetDevice(&s.prev) != cudaSuccess) s.prev = -1;
    /* on the same device too: a non-primary context current there would get our work */
    if ((s.entered = cudaSetDevice(device)) != cudaSuccess) cudaGetLastError();
    return s;
}

static void leave_device(device_scope s, int device)
{
    void *now = NULL;
    if (s.have_ctx) {
        const context_api *api = driver_context_api();
        if (api->get(&now) != 0 || now != s.ctx) api->set(s.ctx);
    } else if (s.prev >= 0 && s.prev != device) {
        cudaSetDevice(s.prev);
    }
}

/* Launches KERNEL<T> for the context's activation type on `blocks` x `threads`. */
#define LAUNCH_ON(c, KERNEL, blocks, threads, ...)                                                        \
    do {                                                                                                  \
        if ((c)->dt == WV_F32) KERNEL<float><<<(blocks), (threads), 0, (c)->stream>>>(__VA_ARGS__);       \
        else if ((c)->dt == WV_F16) KERNEL<__half><<<(blocks), (threads), 0, (c)->stream>>>(__VA_ARGS__); \
        else KERNEL<__nv_bfloat16><<<(blocks), (threads), 0, (c)->stream>>>(__VA_ARGS__);                 \
        launched((c), #KERNEL);                                                                           \
    } while (0)

/* Launches a data-movement kernel, KERNEL<U> for the unit it moves (`unit` bytes: a 16-byte vector,
 * else an element), with a grid-stride loop over n units. */
#define LAUNCH_BY_UNIT(c, KERNEL, unit, n, ...)                                                                   \
    do {                                                                                                         \
        unsigned blocks_ = blocks_for((n), THREADS);                                                             \
        if ((unit) == 16) KERNEL<uint4><<<blocks_, THREADS, 0, (c)->stream>>>(__VA_ARGS__);                    \
        else if ((unit) == 2) KERNEL<uint16_t><<<blocks_, THREADS, 0, (c)->stream>>>(__VA_ARGS__);             \
        else KERNEL<float><<<blocks_, THREADS, 0, (c)->stream>>>(__VA_ARGS__);                                  \
        launched((c), #KERNEL);                                                                                  \
    } while (0)

/* ... with a grid-stride loop over n elements. */
#define LAUNCH(c, KERNEL, n, ...) LAUNCH_ON(c, KERNEL, blocks_for((n), THREADS), THREADS, __VA_ARGS__)

static cudaDataType_t cuda_type(wv_dtype dt)
{
    return dt == WV_F32 ? CUDA_R_32F : dt == WV_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

static cudnnDataType_t cudnn_type(wv_dtype dt)
{
    return dt == WV_F32 ? CUDNN_DATA_FLOAT : dt == WV_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

/* ---- step graphs ------------------------------------------------------------------------- */

/* With WANVIDEO_CUDA_GRAPHS=1, an op called during a decode does its host bookkeeping at once (output
 * staging) and records its GPU work (a function and its arguments, by value); the
 * records run when the step ends or the host waits. A list of records seen for the first time runs
 * as recorded; when the same list (the same functions and argument bytes, pointers included) comes
 * again, it is captured into a CUDA graph, and from then on the graph is launched instead: one call
 * for the step's some 260. A tile's steps repeat with a period of three (the three orders of the
 * driver's 3-frame rings, and the STAGINGS = 3 output stagings taking turns; 2-frame caches advance
 * 4 frames a step at the default WANVIDEO_CUDA_TAPS_MAX_CHANNELS, 1 or 2 at 384 and more, which
 * makes it six), so the host's cost of a decode in small tiles shrinks to its first six steps per
 * tile. The few ops whose arguments change every step (the latent frame; the trunk frame in pinned
 * memory a tile step starts from or a trunk step ends with) run at once, after what is pending, and
 * so split the lists. Graphs hold
 * the arena's addresses and end with the call. A capture that fails turns graphs off for the rest
 * of the call (its ops then run as recorded, which reports a real error as usual). */
#define GRAPH_MIN_OPS 16  /* shorter lists (a profiled decode flushes op by op) just run */
#define GRAPH_MAX_KNOWN 64 /* lists remembered, and graphs kept, the least recently used dropped */

static int list_append(op_list *l, op_exec fn, const void *args, size_t size)
{
    size_t offset = (l->used + 15) / 16 * 16;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        op_entry *ops = (op_entry *)realloc(l->ops, (size_t)cap * sizeof *ops);
        if (!ops) return 0;
        l->ops = ops;
        l->cap = cap;
    }
    if (offset + size > l->cap_args) {
        size_t cap = l->cap_args ? 2 * l->cap_args : 16384;
        char *grown;
        while (cap < offset + size) cap *= 2;
        if (!(grown = (char *)realloc(l->args, cap))) return 0;
        l->args = grown;
        l->cap_args = cap;
    }
    memset(l->args + l->used, 0, offset - l->used); /* the padding compares too */
    memcpy(l->args + offset, args, size);
    l->ops[l->n].fn = fn;
    l->ops[l->n].offset = offset;
    l->ops[l->n].size = size;
    l->n++;
    l->used = offset + size;
    return 1;
}

static void list_clear(op_list *l)
{
    l->n = 0;
    l->used = 0;
}

static void list_free(op_list *l)
{
    free(l->ops);
    free(l->args);
    memset(l, 0, sizeof *l);
}

/* FNV-1a over the functions and the argument bytes. */
static uint64_t list_hash(const op_list *l)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < l->n; i++) {
        uintptr_t fn = (uintptr_t)l->ops[i].fn;
        for (size_t b = 0; b < sizeof fn; b++) h = (h ^ ((fn >> (8 * b)) & 0xff)) * 1099511628211ull;
    }
    for (size_t i = 0; i < l->used; i++) h = (h ^ (unsigned char)l->args[i]) * 1099511628211ull;
    return h;
}

static int lists_equal(const op_list *a, const op_list *b)
{
    if (a->n != b->n || a->used != b->used) return 0;
    for (int i = 0; i < a->n; i++)
        if (a->ops[i].fn != b->ops[i].fn || a->ops[i].offset != b->ops[i].offset || a->ops[i].size != b->ops[i].size)
            return 0;
    return memcmp(a->args, b->args, a->used) == 0;
}

static void run_list(cuda_ctx *c, const op_list *l)
{
    for (int i = 0; i < l->n && !failed(c); i++) l->ops[i].fn(c, l->args + l->ops[i].offset);
}

static step_graph *find_known(cuda_ctx *c, uint64_t hash, const op_list *l)
{
    for (int i = 0; i < c->n_known; i++)
        if (c->known[i].hash == hash && lists_equal(&c->known[i].list, l)) {
            c->known[i].last_used = c->flushes;
            return &c->known[i];
        }
    return NULL;
}

static void drop_exec(cuda_ctx *c, step_graph *sg)
{
    if (!sg || !sg->exec) return;
    cudaGraphExecDestroy(sg->exec);
    sg->exec = NULL;
    c->n_execs--;
}

/* The least recently used of the known lists, with a graph (graphed) or any. */
static step_graph *least_recent(cuda_ctx *c, int graphed)
{
    step_graph *lru = NULL;
    for (int i = 0; i < c->n_known; i++)
        if ((!graphed || c->known[i].exec) && (!lru || c->known[i].last_used < lru->last_used)) lru = &c->known[i];
    return lru;
}

/* Keeps a copy of list l as seen once, in place of the least recently used one when GRAPH_MAX_KNOWN
 * are kept; without the memory for it, the list is just not kept. */
static void remember(cuda_ctx *c, uint64_t hash, const op_list *l)
{
    step_graph *sg;
    if (c->n_known == GRAPH_MAX_KNOWN) {
        sg = least_recent(c, 0);
        drop_exec(c, sg);
        list_free(&sg->list);
    } else {
        if (c->n_known == c->cap_known) {
            int cap = c->cap_known ? 2 * c->cap_known : GRAPH_MAX_KNOWN;
            step_graph *grown = (step_graph *)realloc(c->known, (size_t)cap * sizeof *grown);
            if (!grown) return;
            c->known = grown;
            c->cap_known = cap;
        }
        sg = &c->known[c->n_known++];
    }
    memset(sg, 0, sizeof *sg);
    sg->last_used = c->flushes;
    sg->hash = hash;
    sg->list.ops = (op_entry *)malloc((size_t)l->n * sizeof *l->ops);
    sg->list.args = (char *)malloc(l->used ? l->used : 1);
    if (!sg->list.ops || !sg->list.args) {
        list_free(&sg->list); /* an empty list: it matches nothing, and goes first */
        sg->hash = 0;
        sg->last_used = -1;
        return;
    }
    memcpy(sg->list.ops, l->ops, (size_t)l->n * sizeof *l->ops);
    memcpy(sg->list.args, l->args, l->used);
    sg->list.n = sg->list.cap = l->n;
    sg->list.used = sg->list.cap_args = l->used;
}

/* Captures the list of sg into a graph and launches it. On a failure the capture is abandoned,
 * graphs are off for the rest of the call, and the list runs as recorded. */
static void capture_and_launch(cuda_ctx *c, step_graph *sg)
{
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e;
    if (c->n_execs == WV_CUDA_GRAPH_EXECS) drop_exec(c, least_recent(c, 1));
    e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) {
        c->capturing = 1;
        run_list(c, &sg->list);
        c->capturing = 0;
        e = cudaStreamEndCapture(c->stream, &graph);
        if (e == cudaSuccess && !failed(c)) e = cudaGraphInstantiateWithFlags(&exec, graph, 0);
        if (graph) cudaGraphDestroy(graph);
    }
    if (e != cudaSuccess || failed(c)) {
        fprintf(stderr, "wanvideo_vae cuda: CUDA graphs off for this decode: capturing a step failed (%s)\n",
                failed(c) ? c->err.msg : cudaGetErrorString(e));
        cudaGetLastError();
        take_error(c, NULL);
        c->graphs_failed = 1;
        run_list(c, &sg->list);
        return;
    }
    sg->exec = exec;
    c->n_execs++;
    c->graph_captures++;
    if (cuda_ok(c, cudaGraphLaunch(sg->exec, c->stream), "cudaGraphLaunch")) c->graph_launches++;
}

/* Runs what is pending: a list seen before as its graph, others as recorded. */
static void flush_pending(cuda_ctx *c)
{
    op_list *l = &c->pending;
    c->flushes++;
    if (l->n && !failed(c)) {
        int graphable = l->n >= GRAPH_MIN_OPS && !c->graphs_failed;
        uint64_t hash = graphable ? list_hash(l) : 0;
        step_graph *sg = graphable ? find_known(c, hash, l) : NULL;
        if (sg && sg->exec) {
            if (cuda_ok(c, cudaGraphLaunch(sg->exec, c->stream), "cudaGraphLaunch")) c->graph_launches++;
        } else if (sg) {
            capture_and_launch(c, sg);
        } else {
            run_list(c, l);
            if (graphable) remember(c, hash, l);
        }
    }
    list_clear(l);
}

/* An op's GPU work: recorded during a decode with graphs on, run at once otherwise. */
static void submit(cuda_ctx *c, op_exec fn, const void *args, size_t size)
{
    if (failed(c)) return;
    if (!c->graphs || !c->in_call) {
        fn(c, args);
        return;
    }
    if (!list_append(&c->pending, fn, args, size)) wv_fail(&c->err, WV_ERR_NOMEM, "out of host memory");
}

/* The call's graphs and remembered lists (their addresses die with the arena). */
static void drop_graphs(cuda_ctx *c)
{
    if (c->verbose && c->graphs && c->graph_launches)
        fprintf(stderr, "wanvideo_vae cuda: %lld steps launched as CUDA graphs (%lld captured)\n", c->graph_launches,
                c->graph_captures);
    for (int i = 0; i < c->n_known; i++) {
        drop_exec(c, &c->known[i]);
        list_free(&c->known[i].list);
    }
    c->n_known = 0;
    c->graph_launches = c->graph_captures = 0;
    list_clear(&c->pending);
}

/* ---- context ------------------------------------------------------------------------------ */

/* A graph-API plan and what it was made of, newest first; tried stays. */
static void drop_graph_plan(graph_plan *g)
{
    while (g->n_kept) cudnnBackendDestroyDescriptor(g->kept[--g->n_kept]);
    g->plan = NULL;
}

/* The plans cuDNN declined during the call, once no CUDA graph of the call is left to hold their kernels
 * (drop_graphs). */
static void drop_declined_plans(cuda_ctx *c)
{
    for (int i = 0; i < c->n_shapes; i++)
        for (int f = 0; f < FUSIONS; f++)
            if (c->shapes[i].graph[f].declined) drop_graph_plan(&c->shapes[i].graph[f]);
}

/* The descriptors of s that were made (describe_conv may fail part way). */
static void destroy_conv_shape(conv_shape *s)
{
    for (int f = 0; f < FUSIONS; f++) drop_graph_plan(&s->graph[f]);
    if (s->x) cudnnDestroyTensorDescriptor(s->x);
    if (s->y) cudnnDestroyTensorDescriptor(s->y);
    if (s->bias) cudnnDestroyTensorDescriptor(s->bias);
    if (s->w) cudnnDestroyFilterDescriptor(s->w);
    if (s->conv) cudnnDestroyConvolutionDescriptor(s->conv);
}

/* Past WV_CUDA_KEEP_SHAPES, the shapes the last call did not run go (the array's order is no one's:
 * ops find their shape by value as they run). */
static void forget_unused_shapes(cuda_ctx *c)
{
    int kept = 0;
    if (c->n_shapes <= WV_CUDA_KEEP_SHAPES) return;
    for (int i = 0; i < c->n_shapes; i++) {
        if (c->shapes[i].last_call == c->calls) c->shapes[kept++] = c->shapes[i];
        else destroy_conv_shape(&c->shapes[i]);
    }
    c->n_shapes = kept;
}

static void free_shapes(cuda_ctx *c)
{
    for (int i = 0; i < c->n_shapes; i++) destroy_conv_shape(&c->shapes[i]);
    free(c->shapes);
    c->shapes = NULL;
    c->n_shapes = c->cap_shapes = 0;
}

static void free_host(void *p, int pageable)
{
    if (!p) return;
    if (pageable)
        free(p);
    else
        cudaFreeHost(p);
}

static void free_staging(staging *s)
{
    free_host(s->host, s->pageable);
    free(s->copies);
    s->host = NULL;
    s->pageable = 0;
    s->copies = NULL;
    s->cap = s->used = 0;
    s->n_copies = s->cap_copies = 0;
    s->queued = 0;
}

/* Gives alloc_host's block back, once the work that may still read it is done. */
static void free_pinned_block(cuda_ctx *c)
{
    device_scope ds;
    if (!c->pinned) return;
    ds = enter_device(c->device);
    cudaStreamSynchronize(c->stream);
    cudaStreamSynchronize(c->copy_stream);
    free_host(c->pinned, c->pinned_pageable);
    leave_device(ds, c->device);
    c->pinned = NULL;
    c->pinned_bytes = 0;
    c->pinned_pageable = 0;
}

static void cuda_ctx_destroy(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    device_scope ds;
    if (!c) return;
    ds = enter_device(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->copy_stream) cudaStreamSynchronize(c->copy_stream);
    drop_graphs(c);
    free(c->known);
    list_free(&c->pending);
    free_shapes(c);
    free_pinned_block(c);
    for (int i = 0; i < STAGINGS; i++) {
        free_staging(&c->stage[i]);
        if (c->stage[i].written) cudaEventDestroy(c->stage[i].written);
        if (c->stage[i].done) cudaEventDestroy(c->stage[i].done);
    }
    if (c->scalars) cudaFree(c->scalars);
    if (c->cublas) cublasDestroy(c->cublas);
    if (c->identity) cudnnDestroyActivationDescriptor(c->identity);
    if (c->cudnn) cudnnDestroy(c->cudnn);
    if (c->caller_ready) cudaEventDestroy(c->caller_ready);
    if (c->copy_stream) cudaStreamDestroy(c->copy_stream);
    if (c->stream) cudaStreamDestroy(c->stream);
    leave_device(ds, c->device);
    free(c);
}

/* The version of the CUDA runtime linked in (statically: the one built with). CUDA 11's
 * cudaRuntimeGetVersion answers 0 where there is no driver. */
static int runtime_version(void)
{
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess || v <= 0) {
        cudaGetLastError();
        v = CUDART_VERSION;
    }
    return v;
}

/* The runtime's own words for a missing or old driver ("CUDA driver version is insufficient for
 * CUDA runtime version") name neither version nor the way out. */
static void explain_driver(char *why, size_t why_size)
{
    int runtime = runtime_version(), driver = 0;
    cudaDriverGetVersion(&driver);
    if (!driver)
        snprintf(why, why_size, "no NVIDIA driver found (this build of the CUDA backend needs one for CUDA %d.%d "
                 "or newer)", runtime / 1000, runtime % 1000 / 10);
    else
        snprintf(why, why_size, "the NVIDIA driver supports CUDA up to %d.%d, older than the CUDA %d.%d this "
                 "backend was built with: update the driver, or rebuild with a CUDA %d toolkit (CUDA_HOME)",
                 driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10, driver / 1000);
}

extern "C" int wv_cuda_device_count(char *why, size_t why_size)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (e == cudaErrorInsufficientDriver)
            explain_driver(why, why_size);
        else
            snprintf(why, why_size, "%s", cudaGetErrorString(e));
        return 0;
    }
    if (!count) snprintf(why, why_size, "no CUDA device found");
    return count;
}

/* nvcc's list of the compute capabilities this file is built for, "750,800,...": the newest also as PTX
 * (setup.py). */
#define WV_STRINGS(...) #__VA_ARGS__
#define WV_STRING_OF(...) WV_STRINGS(__VA_ARGS__)
#ifdef __CUDA_ARCH_LIST__
#define WV_BUILT_ARCHS WV_STRING_OF(__CUDA_ARCH_LIST__)
#else
#define WV_BUILT_ARCHS "" /* nvcc before 11.5 */
#endif

/* "750,800,860" as "7.5, 8.0, 8.6" into out. */
static void format_archs(const char *list, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (const char *p = list; *p && used < size;) {
        char *end;
        long cc = strtol(p, &end, 10);
        int n;
        if (end == p) break;
        n = snprintf(out + used, size - used, "%s%ld.%ld", used ? ", " : "", cc / 100, cc / 10 % 10);
        used += n > 0 ? (size_t)n : 0;
        for (p = end; *p == ',' || *p == ' ';) p++;
    }
}

/* Whether the build has code the GPU runs (a binary of its major and no newer minor, or PTX it can
 * compile): where it has none, every kernel launch would fail, the first one mid-decode. */
static wv_status check_kernel_image(int device, const cudaDeviceProp *prop, wv_error *err)
{
    struct cudaFuncAttributes attr;
    char built[128];
    device_scope ds = enter_device(device);
    /* a device that refuses us a context (exclusive or prohibited mode, no memory for one) is named
     * here, where a Decoder is made: else our work would go to whichever context was current */
    cudaError_t e = ds.entered != cudaSuccess ? ds.entered
                                              : cudaFuncGetAttributes(&attr, (const void *)find_nonfinite_kernel);
    leave_device(ds, device);
    if (e == cudaSuccess) return WV_OK;
    cudaGetLastError(); /* not left for a later launch's check to pick up */
    if (e != cudaErrorNoKernelImageForDevice && e != cudaErrorInvalidDeviceFunction)
        return wv_fail(err, WV_ERR_BACKEND, "cannot use CUDA device %d: %s%s", device, cudaGetErrorString(e),
                       restart_hint(e));
    format_archs(WV_BUILT_ARCHS, built, sizeof built);
    return wv_fail(err, WV_ERR_INVALID,
                   "this build of the CUDA backend has no code for %s (compute capability %d.%d; it was built for "
                   "%s): rebuild it with WANVIDEO_CUDA_ARCHS=%d%d, with a CUDA toolkit that builds for it (CUDA 13's "
                   "oldest is 7.5, CUDA 12's 5.0), or use the CPU backend",
                   prop->name, prop->major, prop->minor, built[0] ? built : "other GPUs", prop->major, prop->minor);
}

extern "C" void wv_cuda_built_archs(char *out, size_t size)
{
    format_archs(WV_BUILT_ARCHS, out, size);
}

/* Whether `device` is one of this machine's devices; else why not, in `why` (cudaSetDevice on one it
 * lacks would fail and leave the current device's figures to read). */
static int device_exists(int device, char *why, size_t why_size)
{
    int count = wv_cuda_device_count(why, why_size);
    if (count <= 0) return 0;
    if (device < 0 || device >= count) {
        snprintf(why, why_size, "no such device (this machine has %d)", count);
        return 0;
    }
    return 1;
}

extern "C" int wv_cuda_device_info_get(int device, wv_cuda_device_info *out, char *why, size_t why_size)
{
    cudaDeviceProp prop;
    cudaError_t e;
    wv_error err;
    wv_status st;
    memset(out, 0, sizeof *out);
    if (!device_exists(device, why, why_size)) return -1;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
        cudaGetLastError();
        snprintf(why, why_size, "%s%s", cudaGetErrorString(e), restart_hint(e));
        return -1;
    }
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->major = prop.major;
    out->minor = prop.minor;
    out->multiprocessors = prop.multiProcessorCount;
    out->total_memory = prop.totalGlobalMem;
    st = check_kernel_image(device, &prop, &err);
    out->has_code = st == WV_OK;
    if (st == WV_ERR_BACKEND) /* the properties stand; whether the code runs there is unknown */
        snprintf(out->code_missing, sizeof out->code_missing, "cannot tell whether this build runs there: %.460s",
                 err.msg); /* the runtime's words, cut where they would not fit (no compiler warning) */
    else if (st)
        snprintf(out->code_missing, sizeof out->code_missing, "%s", err.msg);
    return 0;
}

static wv_status check_device(int *device, wv_dtype dt, wv_error *err)
{
    wv_status st;
    cudaError_t e;
    char why[256] = "";
    cudaDeviceProp prop;
    int count = wv_cuda_device_count(why, sizeof why);
    if (count == 0) return wv_fail(err, WV_ERR_INVALID, "no CUDA device is usable: %s", why);
    if (*device < 0) *device = wv_cuda_current_device();
    if (*device >= count)
        return wv_fail(err, WV_ERR_INVALID, "CUDA device %d does not exist (%d found)", *device, count);
    if ((e = cudaGetDeviceProperties(&prop, *device)) != cudaSuccess) {
        cudaGetLastError();
        return wv_fail(err, WV_ERR_BACKEND, "cannot read the properties of CUDA device %d: %s%s", *device,
                       cudaGetErrorString(e), restart_hint(e));
    }
    if ((st = check_kernel_image(*device, &prop, err))) return st;
    if (dt == WV_BF16 && prop.major < 8)
        return wv_fail(err, WV_ERR_INVALID,
                       "bf16 needs a GPU of compute capability 8.0 or newer; %s is %d.%d: use precision='fp16' or "
                       "'fp32'",
                       prop.name, prop.major, prop.minor);
    return WV_OK;
}

static int env_flag(const char *name)
{
    char v[8];
    return wv_getenv(name, v, sizeof v) && !strcmp(v, "1");
}

/* A whole number from 0 to max in the environment variable `name`, else fallback (a malformed one
 * says so on stderr). */
static long env_count(const char *name, long fallback, long max, const char *what)
{
    char v[64];
    long n;
    if (!wv_getenv(name, v, sizeof v)) return fallback;
    if (!wv_parse_count(v, 0, max, &n)) {
        fprintf(stderr, "wanvideo_vae cuda: %s=%s is not %s from 0 to %ld; using %ld\n", name, v, what, max, fallback);
        return fallback;
    }
    return n;
}

/* cudaMalloc behind the test hook that fails the n-th allocation; *p NULL unless it worked. */
static cudaError_t device_malloc(void **p, size_t bytes)
{
    cudaError_t e = g_fail_alloc_countdown > 0 && --g_fail_alloc_countdown == 0 ? cudaErrorMemoryAllocation
                                                                                  : cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) *p = NULL;
    return e;
}

static int create_event(cuda_ctx *c, cudaEvent_t *e, unsigned flags)
{
    return made(cuda_ok(c, cudaEventCreateWithFlags(e, flags), "cudaEventCreate"), e);
}

static int create_stream(cuda_ctx *c, cudaStream_t *s)
{
    return made(cuda_ok(c, cudaStreamCreateWithFlags(s, cudaStreamNonBlocking), "cudaStreamCreate"), s);
}

/* The host waits for each step's `done` asleep (cudaEventBlockingSync): under the runtime's default
 * scheduling a wait spins, which would keep a CPU core busy for the whole decode (seconds to minutes
 * on a small GPU) in a host process that has other work; two steps stay queued, so waking costs the
 * GPU nothing. */
static int create_staging_events(cuda_ctx *c)
{
    for (int i = 0; i < STAGINGS; i++)
        if (!create_event(c, &c->stage[i].written, cudaEventDisableTiming) ||
            !create_event(c, &c->stage[i].done, cudaEventDisableTiming | cudaEventBlockingSync))
            return 0;
    return 1;
}

static wv_status cuda_ctx_create(const wv_backend *be, int device, void **out, wv_error *err)
{
    cuda_ctx *c;
    device_scope ds;
    wv_status st;
    *out = NULL;
    if ((st = check_device(&device, be->act_dtype, err))) return st;
    if (!(c = (cuda_ctx *)calloc(1, sizeof *c))) return wv_fail(err, WV_ERR_NOMEM, "out of host memory");
    c->dt = be->act_dtype;
    c->device = device;
    c->direct_only = env_flag("WANVIDEO_CUDA_DIRECT_CONV");
    c->verbose = env_flag("WANVIDEO_CUDA_VERBOSE");
    c->graphs = env_flag("WANVIDEO_CUDA_GRAPHS");
    c->graph_api = env_flag("WANVIDEO_CUDA_GRAPH_API");
    c->keep_pinned = (size_t)env_count("WANVIDEO_CUDA_KEEP_PINNED_MIB", KEEP_PINNED_MIB, 1L << 20, "a number of MiB") << 20;
    ds = enter_device(device);
    if (create_stream(c, &c->stream) && create_stream(c, &c->copy_stream) &&
        create_event(c, &c->caller_ready, cudaEventDisableTiming) && create_staging_events(c) &&
        made(cudnn_ok(c, cudnnCreate(&c->cudnn), "cudnnCreate"), &c->cudnn) &&
        cudnn_ok(c, cudnnSetStream(c->cudnn, c->stream), "cudnnSetStream") &&
        made(cudnn_ok(c, cudnnCreateActivationDescriptor(&c->identity), "cudnnCreateActivationDescriptor"),
             &c->identity) &&
        cudnn_ok(c, cudnnSetActivationDescriptor(c->identity, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0),
                 "cudnnSetActivationDescriptor") &&
        made(cublas_ok(c, cublasCreate(&c->cublas), "cublasCreate"), &c->cublas) &&
        cublas_ok(c, cublasSetStream(c->cublas, c->stream), "cublasSetStream") &&
        /* no TF32, and split-K partial sums in fp32 rather than the 16-bit output type */
        cublas_ok(c, cublasSetMathMode(c->cublas, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                                 CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
                  "cublasSetMathMode"))
        cuda_ok(c, device_malloc(&c->scalars, WV_CUDA_SCALARS_BYTES), "cudaMalloc");
    leave_device(ds, device);
    if ((st = take_error(c, err))) {
        cuda_ctx_destroy(c);
        return st;
    }
    *out = c;
    return WV_OK;
}

/* ---- memory ------------------------------------------------------------------------------- */

static wv_status cuda_alloc(void *ctx, size_t bytes, void **out, wv_error *err)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    device_scope ds = enter_device(c->device);
    cudaError_t e;
    size_t free_b = 0, total_b = 0;
    char size[WV_BYTES_TEXT], free_text[WV_BYTES_TEXT], total_text[WV_BYTES_TEXT];
    e = device_malloc(out, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
    }
    leave_device(ds, c->device);
    if (e == cudaErrorMemoryAllocation)
        return wv_fail(err, WV_ERR_NOMEM_DEVICE, "out of GPU memory allocating %s on device %d (%s of %s free)",
                       wv_bytes_text(size, sizeof size, bytes), c->device,
                       wv_size_text(free_text, sizeof free_text, free_b),
                       wv_size_text(total_text, sizeof total_text, total_b));
    if (e != cudaSuccess)
        return wv_fail(err, WV_ERR_BACKEND, "CUDA error in cudaMalloc: %s%s", cudaGetErrorString(e), restart_hint(e));
    return WV_OK;
}

static void cuda_release(void *ctx, void *p)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    device_scope ds = enter_device(c->device);
    flush_pending(c); /* recorded work may still use p */
    cudaFree(p);
    leave_device(ds, c->device);
}

/* cudaHostAlloc's ways of saying the system will not pin this (too much, or not at all: some
 * virtualized or restricted systems), as against a failure of the device (a sticky error). */
static int pinning_refused(cudaError_t e)
{
    return e == cudaErrorMemoryAllocation || e == cudaErrorNotSupported || e == cudaErrorOperatingSystem ||
           e == cudaErrorNotPermitted;
}

/* Pinned host memory, or where the system will not pin that much (a long video's trunk output is
 * GiBs, a 4K step's output hundreds of MiB; some systems cap page-locked memory) plain memory:
 * copies to and from it work but each one waits for the stream (the driver stages them), so the
 * decode runs slower rather than failing. *pageable says which; the first fallback says so on stderr. */
static wv_status pin_or_pageable(cuda_ctx *c, size_t bytes, const char *what, void **out, int *pageable,
                                 wv_error *err)
{
    device_scope ds = enter_device(c->device);
    cudaError_t e;
    char size[WV_BYTES_TEXT];
    *out = NULL;
    *pageable = 0;
    if (g_fail_alloc_countdown > 0 && --g_fail_alloc_countdown == 0)
        e = cudaErrorMemoryAllocation;
    else
        e = cudaHostAlloc(out, bytes ? bytes : 1, cudaHostAllocPortable);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *out = NULL;
    }
    leave_device(ds, c->device);
    if (e == cudaSuccess) return WV_OK;
    if (!pinning_refused(e))
        return wv_fail(err, WV_ERR_BACKEND, "CUDA error in cudaHostAlloc (%s): %s%s", what, cudaGetErrorString(e),
                       restart_hint(e));
    wv_bytes_text(size, sizeof size, bytes);
    if (!(*out = malloc(bytes ? bytes : 1)))
        return wv_fail(err, WV_ERR_NOMEM, "out of host memory allocating %s for %s", size, what);
    if (!c->pageable_shown)
        fprintf(stderr, "wanvideo_vae cuda: could not pin %s for %s (%s); using pageable memory, which is slower\n",
                size, what, cudaGetErrorString(e));
    c->pageable_shown = 1;
    *pageable = 1;
    return WV_OK;
}

/* One block of pinned host memory at a time, kept for the next call (within keep_pinned): pinning a
 * few hundred MiB takes about as long as a decode step. Only copy_region reaches it, by its host
 * address (unified addressing). */
static wv_status cuda_alloc_host(void *ctx, size_t bytes, void **out, wv_error *err)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    *out = NULL;
    if (c->pinned_lent)
        return wv_fail(err, WV_ERR_BACKEND, WV_INTERNAL "the CUDA backend lends one block of pinned memory at a time");
    if (c->pinned_bytes < bytes) {
        wv_status st;
        free_pinned_block(c);
        if ((st = pin_or_pageable(c, bytes, "the trunk output", &c->pinned, &c->pinned_pageable, err))) return st;
        c->pinned_bytes = bytes;
    }
    c->pinned_lent = 1;
    *out = c->pinned;
    return WV_OK;
}

/* The block stays for the next call unless this call's pinned memory passed keep_pinned (finish) or
 * it is pageable (the next call tries to pin again). */
static void cuda_release_host(void *ctx, void *p)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!p || p != c->pinned) return;
    c->pinned_lent = 0;
    if (c->drop_pinned || c->pinned_pageable) free_pinned_block(c);
}

typedef struct {
    void *p;
    size_t bytes;
} zero_args;

static void exec_zero(cuda_ctx *c, const void *args)
{
    const zero_args *a = (const zero_args *)args;
    cuda_ok(c, cudaMemsetAsync(a->p, 0, a->bytes, c->stream), "cudaMemsetAsync");
}

static void cuda_zero(void *ctx, void *p, size_t bytes)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    device_scope ds;
    zero_args a = {p, bytes};
    if (failed(c)) return;
    ds = enter_device(c->device);
    submit(c, exec_zero, &a, sizeof a);
    leave_device(ds, c->device);
}

/* n host floats -> the activation type at dst (device). */
static wv_status cuda_upload(void *ctx, void *dst, const float *src, size_t n, wv_error *err)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    size_t bytes = n * wv_dtype_size(c->dt);
    void *tmp = c->dt == WV_F32 ? NULL : malloc(bytes ? bytes : 1);
    device_scope ds;
    if (c->dt != WV_F32 && !tmp) return wv_fail(err, WV_ERR_NOMEM, "out of host memory converting weights");
    for (size_t i = 0; tmp && i < n; i++) {
        if (c->dt == WV_F16) ((__half *)tmp)[i] = __float2half_rn(src[i]);
        else ((__nv_bfloat16 *)tmp)[i] = __float2bfloat16_rn(src[i]);
    }
    ds = enter_device(c->device);
    flush_pending(c); /* recorded work comes first */
    cuda_ok(c, cudaMemcpyAsync(dst, tmp ? tmp : src, bytes, cudaMemcpyHostToDevice, c->stream), "weight upload");
    cuda_ok(c, cudaStreamSynchronize(c->stream), "weight upload"); /* tmp is freed next */
    leave_device(ds, c->device);
    free(tmp);
    return take_error(c, err);
}

/* The widest causal conv that runs by taps: TAPS_MAX_CHANNELS, or WANVIDEO_CUDA_TAPS_MAX_CHANNELS read
 * once, when the module first asks for the tables (weights packed by it must stay readable); and
 * whether those convs run their taps in pairs (WANVIDEO_CUDA_PAIRED_TAPS=1, read with it). */
static int g_taps_max_channels = TAPS_MAX_CHANNELS;
static int g_paired_taps = 0;

static void read_taps_settings(void)
{
    g_taps_max_channels = (int)env_count("WANVIDEO_CUDA_TAPS_MAX_CHANNELS", TAPS_MAX_CHANNELS, 65536, "a channel count");
    g_paired_taps = env_flag("WANVIDEO_CUDA_PAIRED_TAPS");
}

/* Whether cv is a causal conv of Wan's kernel, 3 frames x 3 x 3: the one running the taps apart is
 * written for (the ring takes any 3-frame conv, the 3x1x1 time conv too). */
static int is_causal_3x3x3(const wv_conv *cv)
{
    return cv->kt == WV_MAX_TAPS && cv->kh == 3 && cv->kw == 3;
}

/* Whether causal conv cv runs as three 2-d convolutions, one per temporal tap (see the top). */
static int runs_by_taps(const wv_conv *cv)
{
    return is_causal_3x3x3(cv) && cv->cin == cv->cout && cv->cin <= g_taps_max_channels;
}

/* Whether causal conv cv, run by taps, runs taps 0 and 1 as one 2-d convolution over its two cached
 * frames, kept side by side in each position (see the top). */
static int runs_paired(const wv_conv *cv) { return g_paired_taps && runs_by_taps(cv); }

static wv_cache_layout cuda_cache_layout(const wv_conv *cv)
{
    return runs_paired(cv) ? WV_CACHE_KEPT : runs_by_taps(cv) ? WV_CACHE_TAPS : WV_CACHE_RING;
}

/* Elements from one temporal tap's 2-d filter to the next in a conv that runs by taps. */
static int64_t tap_stride(const wv_conv *cv) { return wv_param_align((int64_t)cv->cout * cv->cin * cv->kh * cv->kw); }

/* Elements of a paired conv's 2-d filter over its two cached frames, [cout][kh][kw][2 cin]. */
static int64_t pair_stride(const wv_conv *cv) { return 2 * tap_stride(cv); }

static int64_t cuda_packed_weight_elems(const wv_conv *cv)
{
    if (runs_paired(cv)) return 2 * pair_stride(cv) + tap_stride(cv);
    return runs_by_taps(cv) ? cv->kt * tap_stride(cv) : (int64_t)cv->cout * cv->cin * cv->kt * cv->kh * cv->kw;
}

/* A paired conv's filters: for each half of a position the oldest cached frame may be in (0, 1), the
 * 2-d filter over both halves [cout][kh][kw][2][cin] (that half tap 0's, the other tap 1's),
 * pair_stride apart; then tap 2's [cout][kh][kw][cin]. */
static void pack_paired_weight(const float *src, const wv_conv *cv, float *dst)
{
    int space = cv->kh * cv->kw, taps = cv->kt * space;
    for (int oldest = 0; oldest < 2; oldest++)
        for (int o = 0; o < cv->cout; o++)
            for (int k = 0; k < space; k++)
                for (int half = 0; half < 2; half++)
                    for (int i = 0; i < cv->cin; i++)
                        dst[oldest * pair_stride(cv) + (((int64_t)o * space + k) * 2 + half) * cv->cin + i] =
                            src[((int64_t)o * cv->cin + i) * taps + (half == oldest ? 0 : 1) * space + k];
    for (int o = 0; o < cv->cout; o++)
        for (int k = 0; k < space; k++)
            for (int i = 0; i < cv->cin; i++)
                dst[2 * pair_stride(cv) + ((int64_t)o * space + k) * cv->cin + i] =
                    src[((int64_t)o * cv->cin + i) * taps + 2 * space + k];
}

/* [cout][cin][kt][kh][kw] -> [cout][kt][kh][kw][cin]: cuDNN's NHWC (KTRSC) filter layout. A causal
 * conv that runs by taps gets instead its taps' 2-d filters [kt][cout][kh][kw][cin], tap_stride
 * apart (in pairs: pack_paired_weight). */
static void cuda_pack_conv_weight(const float *src, const wv_conv *cv, float *dst)
{
    int space = cv->kh * cv->kw, taps = cv->kt * space;
    if (runs_paired(cv)) {
        pack_paired_weight(src, cv, dst);
        return;
    }
    if (runs_by_taps(cv)) {
        for (int dt = 0; dt < cv->kt; dt++)
            for (int o = 0; o < cv->cout; o++)
                for (int i = 0; i < cv->cin; i++)
                    for (int k = 0; k < space; k++)
                        dst[dt * tap_stride(cv) + ((int64_t)o * space + k) * cv->cin + i] =
                            src[((int64_t)o * cv->cin + i) * taps + dt * space + k];
        return;
    }
    for (int o = 0; o < cv->cout; o++)
        for (int i = 0; i < cv->cin; i++)
            for (int k = 0; k < taps; k++)
                dst[((int64_t)o * taps + k) * cv->cin + i] = src[((int64_t)o * cv->cin + i) * taps + k];
}

/* ---- a decode call ------------------------------------------------------------------------ */

static cudaStream_t caller_stream(uintptr_t handle)
{
    /* CUDA array interface v3: 1 is the legacy default stream, 2 the per-thread one. torch reports
     * its default stream as 0, which is the legacy default stream too. */
    if (handle == 0 || handle == 1) return cudaStreamLegacy;
    if (handle == 2) return cudaStreamPerThread;
    return (cudaStream_t)handle;
}

/* The decode's work ordered after what the caller queued on its stream (device latents' producer). */
static wv_status wait_for_caller(cuda_ctx *c, uintptr_t stream, wv_error *err)
{
    if (!cuda_ok(c, cudaEventRecord(c->caller_ready, caller_stream(stream)), "cudaEventRecord (caller stream)") ||
        !cuda_ok(c, cudaStreamWaitEvent(c->stream, c->caller_ready, 0), "cudaStreamWaitEvent"))
        return take_error(c, err);
    return WV_OK;
}

static wv_status check_device_latents(cuda_ctx *c, const wv_view *lat, wv_error *err)
{
    cudaPointerAttributes attr;
    cudaError_t e = cudaPointerGetAttributes(&attr, lat->data);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return wv_fail(err, context_lost(e) ? WV_ERR_BACKEND : WV_ERR_INVALID,
                       "latents: cannot tell whether the pointer is device memory (%s)%s", cudaGetErrorString(e),
                       restart_hint(e));
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        return wv_fail(err, WV_ERR_INVALID,
                       "latents claim to be in CUDA device memory (__cuda_array_interface__) but the pointer is %s",
                       attr.type == cudaMemoryTypeHost ? "pinned host memory" : "not device memory");
    if (attr.device != c->device)
        return wv_fail(err, WV_ERR_INVALID, "latents are on CUDA device %d but the model is on device %d", attr.device,
                       c->device);
    return WV_OK;
}

/* Host latents go to the device once, as contiguous float32. */
static wv_status copy_host_latents(cuda_ctx *c, wv_call *call, wv_error *err)
{
    const wv_view *v = call->latents;
    int64_t n = wv_view_numel(v);
    float *tmp = (float *)malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    wv_status st;
    if (!tmp) return wv_fail(err, WV_ERR_NOMEM, "out of host memory staging the latents");
    if ((st = cuda_alloc(c, (size_t)n * sizeof(float), &c->lat_dev, err))) {
        free(tmp);
        return st;
    }
    wv_view_to_f32(v, tmp);
    if (cuda_ok(c, cudaMemcpyAsync(c->lat_dev, tmp, (size_t)n * sizeof(float), cudaMemcpyHostToDevice, c->stream),
                "latent upload"))
        cuda_ok(c, cudaStreamSynchronize(c->stream), "latent upload"); /* before tmp goes */
    free(tmp);
    if (failed(c)) return take_error(c, err);
    c->lat_copy = *v;
    c->lat_copy.data = c->lat_dev;
    c->lat_copy.dtype = WV_F32;
    c->lat_copy.on_device = 1;
    for (int64_t d = v->ndim - 1, step = 4; d >= 0; d--) {
        c->lat_copy.strides[d] = step;
        step *= v->shape[d];
    }
    call->latents = &c->lat_copy;
    return WV_OK;
}

static unsigned *output_flag(cuda_ctx *c) { return (unsigned *)((char *)c->scalars + OUTPUT_FLAG_OFFSET); }

/* NaN or Inf in the latents means the sampler failed; refuse them as the CPU path does. */
static wv_status check_finite(cuda_ctx *c, const wv_view *v, wv_error *err)
{
    unsigned long long first = ~0ull, *flag = (unsigned long long *)c->scalars;
    int64_t n = wv_view_numel(v);
    cuda_ok(c, cudaMemcpyAsync(flag, &first, sizeof first, cudaMemcpyHostToDevice, c->stream), "nonfinite check");
    find_nonfinite_kernel<<<blocks_for(n, THREADS), THREADS, 0, c->stream>>>(
        (const char *)v->data, v->shape[0], v->shape[1], v->shape[2], v->shape[3], v->strides[0], v->strides[1],
        v->strides[2], v->strides[3], (int)v->dtype, flag);
    launched(c, "find_nonfinite_kernel");
    cuda_ok(c, cudaMemcpyAsync(&first, flag, sizeof first, cudaMemcpyDeviceToHost, c->stream), "nonfinite check");
    cuda_ok(c, cudaStreamSynchronize(c->stream), "nonfinite check");
    if (failed(c)) return take_error(c, err);
    if (first != ~0ull) {
        int64_t r = (int64_t)first, i3 = r % v->shape[3], i2 = (r /= v->shape[3]) % v->shape[2],
                i1 = (r /= v->shape[2]) % v->shape[1], i0 = r / v->shape[1];
        return wv_fail(err, WV_ERR_INVALID,
                       "latents contain NaN or Inf (first at [%lld, %lld, %lld, %lld]); the sampler that produced them "
                       "failed",
                       (long long)i0, (long long)i1, (long long)i2, (long long)i3);
    }
    return WV_OK;
}

/* Pinned host memory for a step's output (kept for the next call unless pageable), and its device
 * side in the arena. */
static wv_status reserve_staging(cuda_ctx *c, staging *s, void *dev, size_t bytes, wv_error *err)
{
    wv_status st;
    void *host;
    s->dev = (char *)dev;
    if (s->cap >= bytes && s->host) return WV_OK;
    free_staging(s);
    if ((st = pin_or_pageable(c, bytes, "a step's output", &host, &s->pageable, err))) return st;
    s->host = (char *)host;
    s->cap = bytes;
    return WV_OK;
}

static wv_status cuda_begin(void *ctx, wv_call *call, wv_error *err)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    wv_status st;
    take_error(c, NULL);
    cudaGetLastError();
    c->in_call = 1;
    c->graphs_failed = 0;
    c->stats_loaded = 0;
    c->caller = enter_device(c->device);
    if (!cuda_ok(c, cudaSetDevice(c->device), "cudaSetDevice")) return take_error(c, err);
    forget_unused_shapes(c); /* in the device's context, which their plans are of */
    c->calls++;
    c->workspace = call->workspace;
    c->workspace_bytes = call->workspace_bytes;
    c->weight_scratch = call->weight_scratch;
    c->weight_scratch_bytes = call->weight_scratch_bytes;
    c->cur = 0;
    if (call->latents->shape[0] > WV_CUDA_MAX_Z)
        return wv_fail(err, WV_ERR_INVALID, "latents have %lld channels; the CUDA backend takes at most %d",
                       (long long)call->latents->shape[0], WV_CUDA_MAX_Z);
    if (call->latents->on_device) {
        if ((st = check_device_latents(c, call->latents, err)) || (st = wait_for_caller(c, call->stream, err)))
            return st;
    } else if ((st = copy_host_latents(c, call, err))) { /* host latents: nothing of the caller's to wait for */
        return st;
    }
    if (!cublas_ok(c, cublasSetWorkspace(c->cublas, c->workspace, c->workspace_bytes), "cublasSetWorkspace"))
        return take_error(c, err);
    if ((st = check_finite(c, call->latents, err))) return st;
    c->output_unchecked = 0;
    if (!cuda_ok(c, cudaMemsetAsync(output_flag(c), 0, sizeof(unsigned), c->stream), "cudaMemsetAsync"))
        return take_error(c, err);
    c->step_out_bytes = call->step_out_bytes;
    if (!call->output_staging && call->step_out_bytes)
        return wv_fail(err, WV_ERR_BACKEND, WV_INTERNAL "the CUDA backend was given no output staging in the arena");
    for (int i = 0; i < STAGINGS; i++)
        if ((st = reserve_staging(c, &c->stage[i], (char *)call->output_staging + i * call->step_out_bytes,
                                  call->step_out_bytes, err)))
            return st;
    return WV_OK;
}

static void flush_copies(staging *s)
{
    for (int i = 0; i < s->n_copies; i++) {
        const pending_copy *p = &s->copies[i];
        for (int y = 0; y < p->h; y++)
            memcpy(p->dst + (size_t)y * p->stride, s->host + p->offset + (size_t)y * p->row, p->row);
    }
    s->n_copies = 0;
    s->used = 0;
    s->queued = 0;
}

/* The step's work so far, then the copy of its output to the host (on the copy stream, which waits
 * for the work while the compute stream runs on), behind s->done. */
static void queue_step(cuda_ctx *c, staging *s)
{
    cudaStream_t last = c->stream;
    if (s->queued || failed(c)) return;
    if (s->used) {
        if (!cuda_ok(c, cudaEventRecord(s->written, c->stream), "cudaEventRecord") ||
            !cuda_ok(c, cudaStreamWaitEvent(c->copy_stream, s->written, 0), "cudaStreamWaitEvent") ||
            !cuda_ok(c, cudaMemcpyAsync(s->host, s->dev, s->used, cudaMemcpyDeviceToHost, c->copy_stream),
                     "output copy to the host"))
            return;
        last = c->copy_stream;
    }
    if (cuda_ok(c, cudaEventRecord(s->done, last), "cudaEventRecord")) s->queued = 1;
}

/* Waits for a queued step and copies its output out. */
static void drain(cuda_ctx *c, staging *s)
{
    if (!s->queued) return;
    if (cuda_ok(c, cudaEventSynchronize(s->done), "a decode step")) flush_copies(s);
    s->queued = 0;
}

/* The step's work launched (what step graphs deferred: the GPU runs it while the callback does),
 * then the caller's device and context back in the thread while the progress callback runs (it may
 * use them: a PyTorch progress bar, a preview), until end_step sets ours again. Its output's copy
 * waits for end_step: into pageable stagings that copy would hold the host until the step is done. */
static void cuda_release_thread(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    flush_pending(c);
    leave_device(c->caller, c->device);
}

/* The step (and its output's copy, if any) is queued behind an event; the host moves on to the next
 * step and waits only for the step that last used the staging it takes next, whose output it then
 * copies out: STAGINGS - 1 steps in flight. The stagings take turns step by step, so with the
 * rings' three orders a tile's steps repeat every STAGINGS = 3 steps, or 6 (see step graphs). */
static wv_status cuda_end_step(void *ctx, wv_error *err)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    launched(c, "a decode step");
    cuda_ok(c, cudaSetDevice(c->device), "cudaSetDevice"); /* release_thread gave the thread back to the caller */
    flush_pending(c);
    if (!failed(c)) {
        queue_step(c, &c->stage[c->cur]);
        c->cur = (c->cur + 1) % STAGINGS;
        drain(c, &c->stage[c->cur]);
    }
    return take_error(c, err);
}

static wv_status cuda_sync(void *ctx, wv_error *err)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    device_scope ds = enter_device(c->device);
    flush_pending(c);
    for (int i = 1; i < STAGINGS && !failed(c); i++) /* the queued steps, oldest first, asleep */
        drain(c, &c->stage[(c->cur + i) % STAGINGS]);
    cuda_ok(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize"); /* what came after them */
    if (!failed(c)) {
        if (c->stage[c->cur].n_copies) queue_step(c, &c->stage[c->cur]);
        drain(c, &c->stage[c->cur]);
    }
    if (!failed(c) && c->in_call && c->output_unchecked) {
        unsigned nonfinite = 0;
        c->output_unchecked = 0;
        if (cuda_ok(c, cudaMemcpyAsync(&nonfinite, output_flag(c), sizeof nonfinite, cudaMemcpyDeviceToHost,
                                       c->stream), "output check") &&
            cuda_ok(c, cudaStreamSynchronize(c->stream), "output check") && nonfinite)
            wv_fail_nonfinite_output(&c->err, c->dt);
    }
    leave_device(ds, c->device);
    return take_error(c, err);
}

/* Pinned memory stays for the next call up to keep_pinned bytes in all: a long or large decode pins
 * GiBs (the trunk output of every frame, a 4K step's output) that would otherwise stay locked in RAM
 * for the Decoder's life. Past that, the call's stagings go back here and alloc_host's block when
 * the driver releases it. */
static void trim_pinned(cuda_ctx *c)
{
    size_t held = c->pinned_pageable ? 0 : c->pinned_bytes; /* a pageable block goes back anyway */
    for (int i = 0; i < STAGINGS; i++) {
        if (c->stage[i].pageable) free_staging(&c->stage[i]); /* the next call tries to pin again */
        held += c->stage[i].host ? c->stage[i].cap : 0;
    }
    c->drop_pinned = held > c->keep_pinned;
    if (!c->drop_pinned) return;
    for (int i = 0; i < STAGINGS; i++) free_staging(&c->stage[i]);
    if (!c->pinned_lent) free_pinned_block(c);
}

/* The staging buffers stay with the context (pinned host memory, reused by the next call) within
 * keep_pinned. Ops still recorded (after a failure or an interruption) are dropped with the graphs. */
static void cuda_finish(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    c->in_call = 0;
    cudaStreamSynchronize(c->stream); /* nothing may still use the arena when it is released */
    cudaStreamSynchronize(c->copy_stream);
    drop_graphs(c);
    drop_declined_plans(c);
    for (int i = 0; i < STAGINGS; i++) {
        c->stage[i].n_copies = 0;
        c->stage[i].used = 0;
        c->stage[i].queued = 0;
        c->stage[i].dev = NULL;
    }
    trim_pinned(c);
    if (c->lat_dev) cudaFree(c->lat_dev);
    c->lat_dev = NULL;
    cublasSetStream(c->cublas, c->stream); /* documented to drop the workspace, which leaves with the arena */
    c->workspace = NULL;
    c->workspace_bytes = 0;
    c->weight_scratch = NULL;
    c->weight_scratch_bytes = 0;
    take_error(c, NULL);
    leave_device(c->caller, c->device);
}

/* ---- convolution -------------------------------------------------------------------------- */

static cudnnStatus_t set_channels_last(cudnnTensorDescriptor_t t, cudnnDataType_t type, int nd, const int *dims)
{
    int strides[5];
    channels_last_strides(nd, dims, strides);
    return cudnnSetTensorNdDescriptor(t, type, nd, dims, strides);
}

/* The heuristics' workspace figures are estimates: each candidate's is asked for with its own math
 * type set, and the larger kept (one it cannot size is dropped). */
static void confirm_workspaces(cuda_ctx *c, conv_shape *s)
{
    for (int i = 0; i < s->n_candidates; i++) {
        size_t bytes = 0;
        if (cudnnSetConvolutionMathType(s->conv, s->math[i]) != CUDNN_STATUS_SUCCESS) {
            s->refused[i] = 1;
            continue;
        }
        s->math_now = s->math[i];
        if (cudnnGetConvolutionForwardWorkspaceSize(c->cudnn, s->x, s->w, s->conv, s->y, s->algo[i], &bytes) !=
            CUDNN_STATUS_SUCCESS)
            s->refused[i] = 1;
        else if (bytes > s->memory[i])
            s->memory[i] = bytes;
    }
}

/* Elements of the largest tensor cuDNN is handed for a conv: kt frames (a ring's, or one) of the
 * padded grid, by the wider channel count. cuDNN indexes it in int (max_conv_elems). */
static int64_t cudnn_operand(int kt, int64_t positions, int cin, int cout)
{
    return kt * positions * (cin > cout ? cin : cout);
}

static int conv_padding(int k) { return k % 2 ? k / 2 : 0; } /* even kernels: none */

static int create_conv_descriptors(cuda_ctx *c, conv_shape *s)
{
    return made(cudnn_ok(c, cudnnCreateTensorDescriptor(&s->x), "descriptor"), &s->x) &&
           made(cudnn_ok(c, cudnnCreateTensorDescriptor(&s->y), "descriptor"), &s->y) &&
           made(cudnn_ok(c, cudnnCreateTensorDescriptor(&s->bias), "descriptor"), &s->bias) &&
           made(cudnn_ok(c, cudnnCreateFilterDescriptor(&s->w), "descriptor"), &s->w) &&
           made(cudnn_ok(c, cudnnCreateConvolutionDescriptor(&s->conv), "descriptor"), &s->conv);
}

/* A conv shape's tensors as cuDNN takes them (NCHW order of dims, laid out channels-last): x
 * [n][H][W][cin] (a causal conv: [1][kt][H][W][cin]) -> y [n][Ho][Wo][cout], filter KTRSC, bias [cout];
 * pad: per spatial dim (time unpadded). */
typedef struct {
    int nd;
    int x[5], y[5], w[5], bias[5], pad[3];
} conv_dims;

static conv_dims dims_of(const conv_shape *s)
{
    int ph = conv_padding(s->kh), pw = conv_padding(s->kw);
    conv_dims d5 = {5, {1, s->cin, s->kt, s->H, s->W}, {1, s->cout, 1, s->Ho, s->Wo},
                    {s->cout, s->cin, s->kt, s->kh, s->kw}, {1, s->cout, 1, 1, 1}, {0, ph, pw}};
    conv_dims d4 = {4, {s->n, s->cin, s->H, s->W}, {s->n, s->cout, s->Ho, s->Wo}, {s->cout, s->cin, s->kh, s->kw},
                    {1, s->cout, 1, 1}, {ph, pw}};
    return s->kt > 1 ? d5 : d4;
}

/* The legacy descriptors of s (dims_of), in the activation type, accumulating in fp32; the first
 * status of cuDNN's that is not success, if any, and in *same_grid whether cuDNN's output grid is the
 * one planned. */
static cudnnStatus_t set_conv_descriptors(cuda_ctx *c, conv_shape *s, int *same_grid)
{
    cudnnDataType_t type = cudnn_type(c->dt);
    conv_dims d = dims_of(s);
    int stride[3] = {1, 1, 1}, dil[3] = {1, 1, 1}, out[5];
    s->math_now = c->dt == WV_F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
    cudnnStatus_t st;
    if ((st = set_channels_last(s->x, type, d.nd, d.x)) || (st = set_channels_last(s->y, type, d.nd, d.y)) ||
        (st = set_channels_last(s->bias, type, d.nd, d.bias)) ||
        (st = cudnnSetFilterNdDescriptor(s->w, type, CUDNN_TENSOR_NHWC, d.nd, d.w)) ||
        (st = cudnnSetConvolutionNdDescriptor(s->conv, d.nd - 2, d.pad, stride, dil, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT)) ||
        (st = cudnnSetConvolutionMathType(s->conv, s->math_now)) ||
        (st = cudnnGetConvolutionNdForwardOutputDim(s->conv, s->x, s->w, d.nd, out)))
        return st;
    *same_grid = memcmp(out, d.y, sizeof(int) * (size_t)d.nd) == 0;
    return CUDNN_STATUS_SUCCESS;
}

static int is_candidate(const conv_shape *s, cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math)
{
    for (int i = 0; i < s->n_candidates; i++)
        if (s->algo[i] == algo && s->math[i] == math) return 1;
    return 0;
}

/* The algorithms cuDNN's heuristics offer for s, best first, at most MAX_CANDIDATES, each once; fp32
 * stays fp32: no tensor-op (TF32) variants, and FMA math forced on the rest. */
static cudnnStatus_t rank_candidates(cuda_ctx *c, conv_shape *s)
{
    cudnnConvolutionFwdAlgoPerf_t perf[2 * CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    cudnnStatus_t st = cudnnGetConvolutionForwardAlgorithm_v7(c->cudnn, s->x, s->w, s->conv, s->y,
                                                              2 * CUDNN_CONVOLUTION_FWD_ALGO_COUNT, /* per math */
                                                              &returned, perf);
    if (st) return st;
    for (int i = 0; i < returned && s->n_candidates < MAX_CANDIDATES; i++) {
        int k = s->n_candidates;
        cudnnMathType_t math = c->dt == WV_F32 ? CUDNN_FMA_MATH : perf[i].mathType;
        if (perf[i].status != CUDNN_STATUS_SUCCESS ||
            (c->dt == WV_F32 && perf[i].mathType != CUDNN_DEFAULT_MATH && perf[i].mathType != CUDNN_FMA_MATH) ||
            is_candidate(s, perf[i].algo, math))
            continue;
        s->algo[k] = perf[i].algo;
        s->math[k] = math;
        s->memory[k] = perf[i].memory;
        s->fused_memory[k] = 0;
        s->refused[k] = 0;
        s->n_candidates++;
    }
    return CUDNN_STATUS_SUCCESS;
}

/* Descriptors for a conv over n frames of H x W (the padded grid; odd kernels padded to keep it, even
 * ones not), causal ones as 3-frame 3-d convolutions, and the algorithms cuDNN's heuristics offer,
 * best first. What cuDNN declines here (a layout, a channel count) leaves no candidate: the direct
 * kernel takes the shape, as it takes every shape where WANVIDEO_CUDA_DIRECT_CONV asks (cuDNN not
 * asked). Returns 0 on a hard failure (out of memory, a frame too large for cuDNN's int sizes, a
 * cuDNN that fails every shape alike, an output grid not the one planned: our bug). */
static int describe_conv(cuda_ctx *c, conv_shape *s)
{
    s->Ho = s->H + 2 * conv_padding(s->kh) - s->kh + 1;
    s->Wo = s->W + 2 * conv_padding(s->kw) - s->kw + 1;
    s->n_candidates = 0;
    if (!create_conv_descriptors(c, s)) return 0;
    if (c->direct_only) return 1; /* the direct kernel indexes in 64 bits: no frame is too large for it */
    if (cudnn_operand(s->kt, (int64_t)s->H * s->W * (s->kt > 1 ? 1 : s->n), s->cin, s->cout) > INT32_MAX) {
        wv_fail(&c->err, WV_ERR_INVALID,
                "a %dx%d frame with %d channels is too large for one cuDNN convolution: decode it in tiles", s->H,
                s->W, s->cin > s->cout ? s->cin : s->cout);
        return 0;
    }
    int same_grid = 1;
    s->refusal = set_conv_descriptors(c, s, &same_grid);
    if (!s->refusal && !same_grid) {
        wv_fail(&c->err, WV_ERR_BACKEND,
                WV_INTERNAL "conv %d->%d %dx%dx%d on %dx%d: cuDNN's output grid is not the planned %dx%d", s->cin,
                s->cout, s->kt, s->kh, s->kw, s->H, s->W, s->Ho, s->Wo);
        return 0;
    }
    if (!s->refusal) s->refusal = rank_candidates(c, s);
    if (s->refusal && cudnn_broken(s->refusal)) return cudnn_ok(c, s->refusal, "describing a convolution");
    confirm_workspaces(c, s); /* none where refused: the direct kernel takes the shape */
    return 1;
}

/* The shape of a conv cin -> cout with a kt x kh x kw kernel over n frames of an H x W grid (a
 * causal one, kt > 1, over a 3-frame ring: n is 1), described the first time it is asked for. */
static conv_shape *find_conv_shape(cuda_ctx *c, int cin, int cout, int kt, int kh, int kw, int H, int W, int n)
{
    conv_shape key, *s;
    memset(&key, 0, sizeof key);
    key.cin = cin, key.cout = cout, key.kt = kt, key.kh = kh, key.kw = kw;
    key.H = H, key.W = W, key.n = kt > 1 ? 1 : n;
    for (int i = 0; i < c->n_shapes; i++) {
        s = &c->shapes[i];
        if (s->cin == key.cin && s->cout == key.cout && s->kt == key.kt && s->kh == key.kh && s->kw == key.kw &&
            s->H == key.H && s->W == key.W && s->n == key.n) {
            s->last_call = c->calls;
            return s;
        }
    }
    if (c->n_shapes == c->cap_shapes) {
        int cap = c->cap_shapes ? 2 * c->cap_shapes : 64;
        conv_shape *grown = (conv_shape *)realloc(c->shapes, (size_t)cap * sizeof *grown);
        if (!grown) {
            wv_fail(&c->err, WV_ERR_NOMEM, "out of host memory");
            return NULL;
        }
        c->shapes = grown;
        c->cap_shapes = cap;
    }
    s = &c->shapes[c->n_shapes];
    *s = key;
    s->last_call = c->calls;
    if (!describe_conv(c, s)) {
        destroy_conv_shape(s);
        return NULL;
    }
    c->n_shapes++;
    return s;
}

/* y[rows][C] += bias[C]: the bias of a convolution that ran without it fused. */
static int add_bias(cuda_ctx *c, const conv_shape *s, const void *bias, void *y)
{
    int64_t rows = (int64_t)(s->kt > 1 ? 1 : s->n) * s->Ho * s->Wo;
    if (bias) LAUNCH(c, bias_add_kernel, rows * s->cout, y, bias, rows, s->cout);
    return !failed(c);
}

/* The shape on CUDA cores, when cuDNN runs nothing for it. */
static int run_direct_conv(cuda_ctx *c, const conv_shape *s, const void *input, const void *weight, const void *bias,
                           void *y, int accumulate)
{
    int n = s->kt > 1 ? 1 : s->n, groups = (s->cout + DIRECT_OUTS - 1) / DIRECT_OUTS;
    LAUNCH(c, direct_conv_kernel, (int64_t)n * s->Ho * s->Wo * groups, input, weight, y, n, s->kt, s->kh, s->kw,
           s->cin, s->cout, s->H, s->W, accumulate);
    return !failed(c) && add_bias(c, s, bias, y);
}

static const char *algo_name(cudnnConvolutionFwdAlgo_t a)
{
    static const char *names[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT",
                                  "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
    return (int)a >= 0 && (int)a < (int)(sizeof names / sizeof *names) ? names[a] : "?";
}

/* WANVIDEO_CUDA_VERBOSE: which candidate runs a shape (-1: the direct kernel), when that changes (a
 * plan with a smaller workspace may skip the first choice). */
/* WANVIDEO_CUDA_VERBOSE's line on shape s begins so; the caller ends it. */
static void print_shape(const conv_shape *s)
{
    fprintf(stderr, "wanvideo_vae cuda: conv %d->%d %dx%dx%d on %dx%d (n=%d)", s->cin, s->cout, s->kt, s->kh, s->kw,
            s->H, s->W, s->n);
}

static void announce(cuda_ctx *c, conv_shape *s, int i)
{
    if (!c->verbose || s->shown == i + 2) return;
    s->shown = i + 2;
    print_shape(s);
    if (i < 0)
        fprintf(stderr, ": direct kernel (%d cuDNN candidates)\n", s->n_candidates);
    else
        fprintf(stderr, ": %s%s, math %d, workspace %zu B (candidate %d of %d)\n", algo_name(s->algo[i]),
                s->algo[i] == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM && !s->unfused ? " with the bias" : "",
                (int)s->math[i], s->memory[i], i + 1, s->n_candidates);
}

/* The first shape of a context that no cuDNN algorithm runs, on stderr, and why (last: the status of
 * the last candidate tried, SUCCESS when none was): not silent, since a shape cuDNN declines or a
 * workspace short of every candidate is slow, not an error. */
static void report_direct(cuda_ctx *c, conv_shape *s, cudnnStatus_t last)
{
    announce(c, s, -1);
    if (c->decline_shown) return;
    c->decline_shown = 1;
    fprintf(stderr, "wanvideo_vae cuda: conv %d->%d %dx%dx%d on %dx%d runs on the slower direct kernel: ", s->cin,
            s->cout, s->kt, s->kh, s->kw, s->H, s->W);
    if (last != CUDNN_STATUS_SUCCESS)
        fprintf(stderr, "cuDNN declined every algorithm (%s)\n", cudnnGetErrorString(last));
    else if (s->n_candidates)
        fprintf(stderr, "no algorithm cuDNN offers fits the %zu-byte workspace\n", c->workspace_bytes);
    else if (s->refusal)
        fprintf(stderr, "cuDNN refused the shape (%s)\n", cudnnGetErrorString(s->refusal));
    else
        fprintf(stderr, "cuDNN offers no algorithm for it\n");
}

/* y = conv(input) + bias (NULL: none), + y if accumulate, by candidate i. The bias and the sum are
 * folded into the convolution where cuDNN allows it (identity activation: IMPLICIT_PRECOMP_GEMM
 * only), so y is read and written once, rounded once; a fusion declined for the shape leaves the
 * shape unfused, one short of workspace leaves the candidate unfused in a workspace that size (not
 * asked again each call: a step graph's capture fails on any decline). */
static cudnnStatus_t run_candidate(cuda_ctx *c, conv_shape *s, int i, const void *input, const void *weight,
                                   const void *bias, void *y, int accumulate)
{
    /* keep 0: y is not read (beta for cudnnConvolutionForward, alpha2 with z = y for the fused call, as
     * XLA relies on with uninitialized outputs), so stale data in y (arena reuse, NaN patterns) is harmless */
    float one = 1.0f, keep = accumulate ? 1.0f : 0.0f;
    cudnnStatus_t st;
    if (s->math[i] != s->math_now) {
        if ((st = cudnnSetConvolutionMathType(s->conv, s->math[i])) != CUDNN_STATUS_SUCCESS) return st;
        s->math_now = s->math[i];
    }
    if (bias && !s->unfused && s->algo[i] == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM &&
        c->workspace_bytes >= s->fused_memory[i]) {
        st = cudnnConvolutionBiasActivationForward(c->cudnn, &one, s->x, input, s->w, weight, s->conv, s->algo[i],
                                                   c->workspace, c->workspace_bytes, &keep, s->y, y, s->bias, bias,
                                                   c->identity, s->y, y);
        if (!cudnn_declined(st) || c->capturing) return st; /* a capture fails rather than learn */
        cudaGetLastError(); /* as for a declined candidate (run_conv) */
        if (st == CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT) s->fused_memory[i] = c->workspace_bytes + 1;
        else if (st != CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER) s->unfused = 1;
    }
    st = cudnnConvolutionForward(c->cudnn, &one, s->x, input, s->w, weight, s->conv, s->algo[i], c->workspace,
                                 c->workspace_bytes, &keep, s->y, y);
    if (st == CUDNN_STATUS_SUCCESS) add_bias(c, s, bias, y); /* a failed launch is recorded in c */
    return st;
}

/* ---- convolution through cuDNN's graph API (WANVIDEO_CUDA_GRAPH_API=1) ----------------------------
 * The legacy calls make cuDNN find its execution plan anew on each call: their host cost (42 us a 2-d
 * call, 135 us a 3-d one, 61 us fused, tools/conv_lab.cu) is what leaves small tiles waiting for the
 * host. Here each shape and fusion gets an operation graph (the convolution, and for FUSE_BIAS a
 * pointwise add of the bias after it) and the plan of the first engine configuration cuDNN's
 * heuristics (mode A) rank that suits: it compiles no kernels at run time (NVRTC, seconds a shape),
 * accumulates in fp32 (and in fp32 mode stays off the tensor cores' TF32) from inputs it does not
 * convert down, and fits the call's workspace. A call then only makes its variant pack (the pointers).
 * A bias that no fused plan takes (none suits, or the call sums into y) is added by our kernel after
 * the plain or summing plan. The legacy path runs a call where the graph API has no such plan, where
 * the call's pointers are not GRAPH_ALIGNMENT-aligned, where the call's workspace is smaller than the
 * plan's, and after cuDNN declined the plan once. Off by default: no GPU has measured it yet. */
enum { GRAPH_UID_X = 1, GRAPH_UID_W, GRAPH_UID_Y, GRAPH_UID_BIAS, GRAPH_UID_SUM };
#define GRAPH_ALIGNMENT 16
#define GRAPH_CONFIGS 16 /* engine configurations asked of the heuristics */

/* Descriptors made into a graph_plan, the first failure kept (later steps then do nothing). */
typedef struct {
    graph_plan *g;
    cudnnStatus_t st;
} graph_build;

static cudnnBackendDescriptor_t build_new(graph_build *b, cudnnBackendDescriptorType_t type)
{
    cudnnBackendDescriptor_t d = NULL;
    if (b->st) return NULL;
    if (b->g->n_kept == GRAPH_DESCRIPTORS) {
        b->st = CUDNN_STATUS_INTERNAL_ERROR; /* ours: GRAPH_DESCRIPTORS too small */
        return NULL;
    }
    if ((b->st = cudnnBackendCreateDescriptor(type, &d)) == CUDNN_STATUS_SUCCESS) b->g->kept[b->g->n_kept++] = d;
    return d;
}

/* One attribute of a descriptor: n values of the type, at value. */
typedef struct {
    cudnnBackendAttributeName_t name;
    cudnnBackendAttributeType_t type;
    int64_t n;
    const void *value;
} graph_attr;

#define N_ATTRS(attrs) ((int)(sizeof attrs / sizeof *attrs))

/* Descriptor d given the n attributes, then finalized: the first failure's status. */
static cudnnStatus_t set_and_finalize(cudnnBackendDescriptor_t d, const graph_attr *attrs, int n)
{
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    for (int i = 0; i < n && !st; i++)
        st = cudnnBackendSetAttribute(d, attrs[i].name, attrs[i].type, attrs[i].n, attrs[i].value);
    return st ? st : cudnnBackendFinalize(d);
}

/* A descriptor of the type with the attributes (an array: BUILD_NODE counts them), finalized. */
static cudnnBackendDescriptor_t build_node(graph_build *b, cudnnBackendDescriptorType_t type, const graph_attr *attrs,
                                           int n)
{
    cudnnBackendDescriptor_t d = build_new(b, type);
    if (!b->st) b->st = set_and_finalize(d, attrs, n);
    return d;
}
#define BUILD_NODE(b, type, attrs) build_node(b, type, attrs, N_ATTRS(attrs))

/* A tensor of the graph laid out channels-last; a virtual one (an intermediate no pointer backs). */
static cudnnBackendDescriptor_t build_tensor(graph_build *b, int64_t uid, cudnnDataType_t type, int nd, const int *dims,
                                             bool is_virtual)
{
    int strides[5];
    int64_t dims64[5], strides64[5], alignment = GRAPH_ALIGNMENT;
    channels_last_strides(nd, dims, strides);
    for (int i = 0; i < nd; i++) dims64[i] = dims[i], strides64[i] = strides[i];
    graph_attr attrs[] = {{CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type},
                          {CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, nd, dims64},
                          {CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, nd, strides64},
                          {CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid},
                          {CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment},
                          {CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual}};
    return BUILD_NODE(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR, attrs);
}

/* The convolution node: x, w -> y (alpha 1; beta 1 adds to y), accumulating in fp32. */
static cudnnBackendDescriptor_t build_conv_op(graph_build *b, const conv_dims *d, cudnnBackendDescriptor_t x,
                                              cudnnBackendDescriptor_t w, cudnnBackendDescriptor_t y, float beta)
{
    int64_t spatial = d->nd - 2, pad[3], ones[3] = {1, 1, 1};
    cudnnDataType_t fp32 = CUDNN_DATA_FLOAT;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    float alpha = 1.0f;
    for (int i = 0; i < spatial; i++) pad[i] = d->pad[i];
    graph_attr conv_attrs[] = {{CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &fp32},
                               {CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode},
                               {CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial},
                               {CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, spatial, ones},
                               {CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, spatial, ones},
                               {CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, spatial, pad},
                               {CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, spatial, pad}};
    cudnnBackendDescriptor_t conv = BUILD_NODE(b, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, conv_attrs);
    graph_attr op_attrs[] = {{CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x},
                             {CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w},
                             {CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y},
                             {CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                              &conv},
                             {CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha},
                             {CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta}};
    return BUILD_NODE(b, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, op_attrs);
}

/* The bias node: y = sum + bias, the bias [cout] broadcast over the positions, added in fp32. */
static cudnnBackendDescriptor_t build_bias_op(graph_build *b, const conv_dims *d, cudnnDataType_t type,
                                              cudnnBackendDescriptor_t sum, cudnnBackendDescriptor_t y)
{
    cudnnPointwiseMode_t mode = CUDNN_POINTWISE_ADD;
    cudnnDataType_t fp32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t bias = build_tensor(b, GRAPH_UID_BIAS, type, d->nd, d->bias, false);
    graph_attr add_attrs[] = {{CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode},
                              {CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &fp32}};
    cudnnBackendDescriptor_t add = BUILD_NODE(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, add_attrs);
    graph_attr op_attrs[] = {{CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &add},
                             {CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &sum},
                             {CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bias},
                             {CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y}};
    return BUILD_NODE(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, op_attrs);
}

/* Shape s's operation graph for fusion f, and the heuristics' descriptor of it. */
static cudnnBackendDescriptor_t build_heuristics(cuda_ctx *c, graph_build *b, const conv_shape *s, fusion f)
{
    conv_dims d = dims_of(s);
    cudnnDataType_t type = cudnn_type(c->dt);
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    cudnnBackendDescriptor_t x = build_tensor(b, GRAPH_UID_X, type, d.nd, d.x, false);
    cudnnBackendDescriptor_t w = build_tensor(b, GRAPH_UID_W, type, d.nd, d.w, false);
    cudnnBackendDescriptor_t y = build_tensor(b, GRAPH_UID_Y, type, d.nd, d.y, false);
    cudnnBackendDescriptor_t sum = /* the conv's sum before the bias, in fp32 */
        f == FUSE_BIAS ? build_tensor(b, GRAPH_UID_SUM, CUDNN_DATA_FLOAT, d.nd, d.y, true) : y;
    cudnnBackendDescriptor_t ops[2], graph;
    int64_t n_ops = 1;
    ops[0] = build_conv_op(b, &d, x, w, sum, f == FUSE_SUM ? 1.0f : 0.0f);
    if (f == FUSE_BIAS) ops[n_ops++] = build_bias_op(b, &d, type, sum, y);
    graph_attr graph_attrs[] = {{CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_ops, ops},
                                {CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &c->cudnn}};
    graph = BUILD_NODE(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, graph_attrs);
    graph_attr heur_attrs[] = {{CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph},
                               {CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode}};
    return BUILD_NODE(b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, heur_attrs);
}

/* Whether configuration cfg's engine suits (see above), and its global index in *engine. The notes
 * are read into arrays of their own size (a later cuDNN may know more kinds than our headers' count),
 * and an engine may report more than it has room for: only those read are looked at. */
#define GRAPH_NOTES 32
static int config_suits(cuda_ctx *c, cudnnBackendDescriptor_t cfg, int64_t *engine)
{
    cudnnBackendDescriptor_t e = NULL;
    cudnnBackendBehaviorNote_t behavior[GRAPH_NOTES];
    cudnnBackendNumericalNote_t numerics[GRAPH_NOTES];
    int64_t n = 0, n_behavior = 0, n_numerics = 0;
    int suits = 0;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &e)) return 0;
    if (!cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &e) &&
        !cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, engine) &&
        !cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE, GRAPH_NOTES,
                                  &n_behavior, behavior) &&
        !cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE, GRAPH_NOTES,
                                  &n_numerics, numerics)) {
        suits = 1;
        for (int64_t i = 0; i < n_behavior && i < GRAPH_NOTES; i++)
            suits &= behavior[i] != CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
        for (int64_t i = 0; i < n_numerics && i < GRAPH_NOTES; i++)
            suits &= numerics[i] != CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION &&
                     numerics[i] != CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS &&
                     (c->dt != WV_F32 || numerics[i] != CUDNN_NUMERICAL_NOTE_TENSOR_CORE);
    }
    cudnnBackendDestroyDescriptor(e);
    return suits;
}

/* The plan of configuration *cfg in g, which then keeps the configuration (*cfg NULL), if cuDNN makes
 * one within this call's workspace; else g stays without, noting in passed_over what the plan needs
 * where it needs more. (A shape's calls as a rule plan the same tile and so the same workspace; a later
 * call with less runs the shape on the legacy path, one with more looks again: run_graph_plan.) */
static void try_plan(cuda_ctx *c, graph_plan *g, cudnnBackendDescriptor_t *cfg)
{
    graph_build b = {g, CUDNN_STATUS_SUCCESS};
    int kept = g->n_kept;
    int64_t n = 0;
    graph_attr attrs[] = {{CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &c->cudnn},
                          {CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, cfg}};
    cudnnBackendDescriptor_t plan = BUILD_NODE(&b, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, attrs);
    if (!b.st)
        b.st = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                        &g->workspace);
    if (!b.st && g->workspace > (int64_t)c->workspace_bytes && (!g->passed_over || g->workspace < g->passed_over))
        g->passed_over = g->workspace;
    if (b.st || g->workspace < 0 || g->workspace > (int64_t)c->workspace_bytes || g->n_kept == GRAPH_DESCRIPTORS) {
        while (g->n_kept > kept) cudnnBackendDestroyDescriptor(g->kept[--g->n_kept]);
        return;
    }
    g->kept[g->n_kept++] = *cfg;
    *cfg = NULL;
    g->plan = plan;
}

/* Looks for the plan of shape s and fusion f (see above); none found leaves the legacy path to it. */
static void make_graph_plan(cuda_ctx *c, conv_shape *s, fusion f)
{
    graph_plan *g = &s->graph[f];
    graph_build b = {g, CUDNN_STATUS_SUCCESS};
    cudnnBackendDescriptor_t heur = build_heuristics(c, &b, s, f), cfgs[GRAPH_CONFIGS] = {NULL};
    int64_t n = 0;
    g->tried = 1;
    g->passed_over = 0;
    for (int i = 0; i < GRAPH_CONFIGS && !b.st; i++) {
        cudnnBackendDescriptor_t cfg = NULL; /* what a failed create leaves in it is no descriptor */
        if (!(b.st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfg))) cfgs[i] = cfg;
    }
    if (!b.st)
        b.st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                        GRAPH_CONFIGS, &n, cfgs);
    for (int64_t i = 0; !b.st && i < n && i < GRAPH_CONFIGS && !g->plan; i++)
        if (config_suits(c, cfgs[i], &g->engine)) try_plan(c, g, &cfgs[i]);
    for (int i = 0; i < GRAPH_CONFIGS; i++)
        if (cfgs[i]) cudnnBackendDestroyDescriptor(cfgs[i]);
    if (!g->plan) drop_graph_plan(g);
    cudaGetLastError(); /* an engine that failed to set up declined: not a launch of ours */
    if (c->verbose && !g->plan) {
        print_shape(s);
        fprintf(stderr, ", fusion %d: no graph-API plan (%s)\n", (int)f,
                b.st ? cudnnGetErrorString(b.st) : "no configuration suits");
    }
}

static int graph_aligned(const void *p) { return (uintptr_t)p % GRAPH_ALIGNMENT == 0; }

/* cuDNN's status for the call through plan g: x, w (bias) -> y, the call's workspace. */
static cudnnStatus_t execute_graph_plan(cuda_ctx *c, const graph_plan *g, const void *input, const void *weight,
                                        const void *bias, void *y)
{
    int64_t uids[4] = {GRAPH_UID_X, GRAPH_UID_W, GRAPH_UID_Y, GRAPH_UID_BIAS}, n = bias ? 4 : 3;
    void *pointers[4] = {(void *)input, (void *)weight, y, (void *)bias}, *workspace = c->workspace;
    graph_attr attrs[] = {{CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids},
                          {CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, pointers},
                          {CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace}};
    cudnnBackendDescriptor_t pack = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (st) return st; /* pack holds no descriptor */
    if (!(st = set_and_finalize(pack, attrs, N_ATTRS(attrs)))) st = cudnnBackendExecute(c->cudnn, g->plan, pack);
    cudnnBackendDestroyDescriptor(pack);
    return st;
}

/* y = conv(input) (+ bias) through shape s's plan for fusion f, made at its first use, and made again
 * at the first use in a call whose workspace fits an engine passed over for want of it (a plan then
 * has no kernels in flight or in a CUDA graph: the last call's are done and dropped, and the call's
 * workspace is the same for all its uses): 1 when it ran or failed (the failure in c), 0 where the
 * legacy path is to run it (see above). */
static int run_graph_plan(cuda_ctx *c, conv_shape *s, fusion f, const void *input, const void *weight,
                          const void *bias, void *y)
{
    graph_plan *g = &s->graph[f];
    cudnnStatus_t st;
    if (g->tried && !g->declined && g->passed_over && g->passed_over <= (int64_t)c->workspace_bytes) {
        drop_graph_plan(g);
        g->tried = 0;
    }
    if (!g->tried) make_graph_plan(c, s, f);
    if (!g->plan || g->declined || g->workspace > (int64_t)c->workspace_bytes || !graph_aligned(input) ||
        !graph_aligned(weight) || !graph_aligned(bias) || !graph_aligned(y))
        return 0;
    st = execute_graph_plan(c, g, input, weight, bias, y);
    if (st == CUDNN_STATUS_SUCCESS) {
        if (c->verbose && !g->shown) {
            print_shape(s);
            fprintf(stderr, ", fusion %d: graph API, engine %lld, workspace %lld B\n", (int)f, (long long)g->engine,
                    (long long)g->workspace);
        }
        g->shown = 1;
        return 1;
    }
    if (!cudnn_declined(st) || c->capturing) return cudnn_ok(c, st, "convolution (graph API)"), 1;
    cudaGetLastError(); /* declined: the legacy path from now on, as for a legacy candidate (run_conv) */
    g->declined = 1;
    return 0;
}

/* y = conv(input) (+ bias) (+ y if accumulate) through shape s's graph-API plans: 1 when it ran or
 * failed (the failure in c), 0 where the legacy path is to run it. A bias the fused plan cannot take
 * (it has none, or y is summed into) is added by our kernel after the plain or summing plan, a pass
 * over y that the legacy path makes too unless its fused call runs, and no plan search on the host. */
static int run_graph_conv(cuda_ctx *c, conv_shape *s, const void *input, const void *weight, const void *bias, void *y,
                          int accumulate)
{
    if (bias && !accumulate && run_graph_plan(c, s, FUSE_BIAS, input, weight, bias, y)) return 1;
    if (!run_graph_plan(c, s, accumulate ? FUSE_SUM : FUSE_NONE, input, weight, NULL, y)) return 0;
    if (!failed(c)) add_bias(c, s, bias, y);
    return 1;
}

/* Runs the best candidate that fits this call's workspace (the workspace is per plan) and that cuDNN
 * has not declined; a candidate declined (a parameter or configuration it does not take for this
 * shape) stays marked and the next one runs; any other cuDNN failure is the call's error. While a
 * step graph is captured, a decline is a failure too: the capture is abandoned and the step runs
 * as recorded, where declining marks what it should (not a capture's restrictions). The math
 * type travels with the algorithm. When none runs, the direct kernel computes the shape. */
static int run_conv(cuda_ctx *c, conv_shape *s, const void *input, const void *weight, const void *bias, void *y,
                    int accumulate)
{
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (c->direct_only) return run_direct_conv(c, s, input, weight, bias, y, accumulate);
    if (c->graph_api && run_graph_conv(c, s, input, weight, bias, y, accumulate)) return !failed(c);
    for (int i = 0; i < s->n_candidates; i++) {
        if (s->refused[i] || s->memory[i] > c->workspace_bytes) continue;
        st = run_candidate(c, s, i, input, weight, bias, y, accumulate);
        if (failed(c)) return 0; /* the bias pass's launch */
        if (st == CUDNN_STATUS_SUCCESS) {
            announce(c, s, i);
            return 1;
        }
        if (!cudnn_declined(st) || c->capturing) return cudnn_ok(c, st, "convolution");
        cudaGetLastError(); /* an engine whose launch failed declined: the next candidate's checks are its own */
        /* short of workspace: it needs more than cuDNN said, so only a larger workspace tries it again;
         * a misaligned pointer is these buffers' (a ring slot's offset), not the shape's */
        if (st == CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT) s->memory[i] = c->workspace_bytes + 1;
        else if (st != CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER) s->refused[i] = 1;
    }
    report_direct(c, s, st);
    return run_direct_conv(c, s, input, weight, bias, y, accumulate);
}

/* What cuDNN is handed for cv per input position (describe_conv's measure): the three frames of a
 * ring, or one frame; nothing where a kernel of ours runs it. */
static int64_t cuda_conv_operand(void *ctx, const wv_conv *cv)
{
    const cuda_ctx *c = (const cuda_ctx *)ctx;
    if (c->direct_only) return 0;
    if (runs_paired(cv)) return cudnn_operand(1, 1, 2 * cv->cin, cv->cout);
    return cudnn_operand(cv->kt > 1 && !runs_by_taps(cv) ? cv->kt : 1, 1, cv->cin, cv->cout);
}

/* Causal conv cv's weights for a ring whose oldest frame is in slot r: as packed for r == 0, else
 * turned in the weight scratch (NULL after a failure). */
static const void *weights_for_ring(cuda_ctx *c, const wv_conv *cv, int r)
{
    size_t block = (size_t)cv->kh * cv->kw * cv->cin * wv_dtype_size(c->dt), bytes = (size_t)cv->cout * cv->kt * block;
    size_t unit;
    const char *src = (const char *)cv->weight;
    char *dst = (char *)c->weight_scratch;
    if (!r) return cv->weight;
    if (bytes > c->weight_scratch_bytes) {
        wv_fail(&c->err, WV_ERR_BACKEND,
                WV_INTERNAL "a causal convolution's weights take %zu bytes, the weight scratch %zu bytes", bytes,
                c->weight_scratch_bytes);
        return NULL;
    }
    unit = block % 16 == 0 && ((uintptr_t)src | (uintptr_t)dst) % 16 == 0 ? 16 : 2;
    LAUNCH_BY_UNIT(c, rotate_taps_kernel, unit, (int64_t)(bytes / unit), src, dst, cv->cout, cv->kt,
                   (int64_t)(block / unit), r);
    return failed(c) ? NULL : dst;
}

/* y[P][cout] (+)= (bias if first == 0) + temporal taps [first, last] of cv. A 1-frame conv reads
 * frames[0]. A causal one that runs by taps: a 2-d convolution per tap, each reading its tap's
 * frame and adding to y; one whose taps are not apart takes all three from its ring: one 3-frame
 * convolution from the ring's first slot with the weights' taps turned to the ring's order (the
 * head too: cuDNN runs its 3 outputs 4x faster than a CUDA-core kernel of ours did, 0.62 against
 * 2.58 ms a 720p frame on an H200). A paired one: see exec_paired_conv. */
typedef struct {
    const wv_conv *cv;
    wv_grid g;
    const void *frames[WV_MAX_TAPS];
    int first, last;
    void *y;
    int accumulate;
    const void *ring; /* a conv whose taps are not apart: its ring's first slot (paired: its pair's) */
    int oldest;       /* and the slot of tap 0 (paired: the half of a position) */
} conv_args;

/* Whether these buffers hold whole, aligned 16-byte vectors of `elems` elements each. */
static int vectors_fit(const cuda_ctx *c, int elems, const void *a, const void *b, const void *d)
{
    return (elems * wv_dtype_size(c->dt)) % 16 == 0 && ((uintptr_t)a | (uintptr_t)b | (uintptr_t)d) % 16 == 0;
}

/* n positions of C elements: channels [soff, soff + C) of src's, sstride apart -> channels [doff,
 * doff + C) of dst's, dstride apart; by 16-byte vectors where every count is whole vectors. */
static void launch_copy_channels(cuda_ctx *c, const void *src, int sstride, int soff, void *dst, int dstride, int doff,
                                 int C, int64_t n)
{
    int es = (int)wv_dtype_size(c->dt), per = 16 / es;
    int vectors = vectors_fit(c, C, src, dst, NULL) && sstride % per == 0 && soff % per == 0 && dstride % per == 0 &&
                  doff % per == 0;
    int k = vectors ? per : 1; /* elements a unit */
    LAUNCH_BY_UNIT(c, copy_channels_kernel, k * es, n * (C / k), src, sstride / k, soff / k, dst, dstride / k, doff / k,
                   C / k, n);
}

/* y (+)= bias + taps 0 and 1 as one 2-d convolution over the pair [positions][2][cin] (the weights for
 * tap 0 in half `oldest`), + tap 2 over the new frame [positions][cin]; then the new frame goes into
 * half `oldest`, where the next frame's tap 1 reads it. */
static void exec_paired_conv(cuda_ctx *c, const conv_args *a, int H, int W)
{
    const wv_conv *cv = a->cv;
    const void *x = a->frames[cv->kt - 1];
    const char *weight = (const char *)cv->weight;
    size_t es = wv_dtype_size(c->dt);
    char *half = (char *)a->ring + (size_t)a->oldest * cv->cin * es;
    conv_shape *pair, *tap;
    if (!(pair = find_conv_shape(c, 2 * cv->cin, cv->cout, 1, cv->kh, cv->kw, H, W, 1)) ||
        !run_conv(c, pair, a->ring, weight + (size_t)(a->oldest * pair_stride(cv)) * es, cv->bias, a->y,
                  a->accumulate) ||
        !(tap = find_conv_shape(c, cv->cin, cv->cout, 1, cv->kh, cv->kw, H, W, 1)) ||
        !run_conv(c, tap, x, weight + (size_t)(2 * pair_stride(cv)) * es, NULL, a->y, 1))
        return;
    launch_copy_channels(c, x, cv->cin, 0, half, 2 * cv->cin, 0, cv->cin, (int64_t)H * W);
}

static void exec_conv(cuda_ctx *c, const void *args)
{
    const conv_args *a = (const conv_args *)args;
    const wv_conv *cv = a->cv;
    int H = a->g.h + 2 * a->g.pad, W = a->g.w + 2 * a->g.pad;
    size_t es = wv_dtype_size(c->dt);
    conv_shape *s;
    if (cv->kt == 1) {
        if ((s = find_conv_shape(c, cv->cin, cv->cout, 1, cv->kh, cv->kw, H, W, 1)))
            run_conv(c, s, a->frames[0], cv->weight, cv->bias, a->y, a->accumulate);
        return;
    }
    if (runs_paired(cv)) {
        exec_paired_conv(c, a, H, W);
        return;
    }
    if (runs_by_taps(cv)) {
        if (!(s = find_conv_shape(c, cv->cin, cv->cout, 1, cv->kh, cv->kw, H, W, 1))) return;
        for (int dt = a->first; dt <= a->last; dt++)
            if (!run_conv(c, s, a->frames[dt], (const char *)cv->weight + (size_t)(dt * tap_stride(cv)) * es,
                          dt ? NULL : cv->bias, a->y, dt > a->first ? 1 : a->accumulate))
                return;
    } else {
        const void *weight = weights_for_ring(c, cv, a->oldest);
        if (weight && (s = find_conv_shape(c, cv->cin, cv->cout, cv->kt, cv->kh, cv->kw, H, W, 1)))
            run_conv(c, s, a->ring, weight, cv->bias, a->y, a->accumulate);
    }
}

/* A causal conv that does not run by taps reads its three frames as one: they must be the slots of
 * one 3-frame ring in tap order (wv_ring), whose first slot and tap 0's slot this finds. */
static int find_ring(cuda_ctx *c, const wv_conv *cv, wv_grid g, conv_args *a)
{
    size_t frame = (size_t)wv_grid_positions(g) * cv->cin * wv_dtype_size(c->dt);
    const char *f0 = (const char *)a->frames[0], *base = f0;
    for (int dt = 1; dt < cv->kt; dt++)
        if ((const char *)a->frames[dt] < base) base = (const char *)a->frames[dt];
    a->ring = base;
    a->oldest = (int)((size_t)(f0 - base) / frame);
    for (int dt = 0; dt < cv->kt; dt++)
        if ((const char *)a->frames[dt] != base + (size_t)((a->oldest + dt) % cv->kt) * frame) return 0;
    return 1;
}

/* A paired conv's cache: the driver's two slots, oldest first, whose bytes hold the pair
 * [positions][2][cin]; this finds its start and the half of tap 0's frame. */
static int find_pair(cuda_ctx *c, const wv_conv *cv, wv_grid g, conv_args *a)
{
    size_t frame = (size_t)wv_grid_positions(g) * cv->cin * wv_dtype_size(c->dt);
    const char *f0 = (const char *)a->frames[0], *f1 = (const char *)a->frames[1];
    a->oldest = f0 > f1;
    a->ring = a->oldest ? f1 : f0;
    return (size_t)(a->oldest ? f0 - f1 : f1 - f0) == frame;
}

/* frames[dt] [positions(g)][cin] -> y [positions][cout] (+)= bias + temporal taps [first, last]; a causal
 * conv not run by taps takes all three at once, its frames a ring's slots; a paired one too, its
 * first two frames its cache's slots */
static void cuda_conv(void *ctx, const wv_conv *cv, wv_grid g, const void *const *frames, int first, int last,
                      void *y, int accumulate)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    conv_args a;
    if (failed(c)) return;
    memset(&a, 0, sizeof a);
    a.cv = cv, a.g = g, a.first = first, a.last = last, a.y = y, a.accumulate = accumulate;
    for (int dt = first; dt <= last; dt++) a.frames[dt] = frames[dt];
    if (runs_paired(cv) && (first != 0 || last != cv->kt - 1 || !find_pair(c, cv, g, &a))) {
        wv_fail(&c->err, WV_ERR_BACKEND,
                WV_INTERNAL "the CUDA causal convolution %d->%d runs its taps in pairs: it takes all 3 at once, the "
                            "first two from its cache's two slots (got taps %d..%d)",
                cv->cin, cv->cout, first, last);
        return;
    }
    if (cv->kt > 1 && !runs_by_taps(cv) &&
        (cv->kt != WV_MAX_TAPS || first != 0 || last != cv->kt - 1 || !find_ring(c, cv, g, &a))) {
        wv_fail(&c->err, WV_ERR_BACKEND,
                WV_INTERNAL "the CUDA causal convolution %d->%d takes its 3 taps at once from a ring of 3 frames (got "
                            "kt=%d, taps %d..%d)",
                cv->cin, cv->cout, cv->kt, first, last);
        return;
    }
    submit(c, exec_conv, &a, sizeof a);
}

/* ---- elementwise ops ---------------------------------------------------------------------- */

/* lat [z][T][h][w] on the device (any strides, fp32 / fp16 / bf16), frame t -> dst [positions(g)][z] =
 * lat * std + mean, its ring zero */
static void cuda_load_latent(void *ctx, const wv_view *lat, int t, const float *mean, const float *std, wv_grid g,
                             void *dst)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    int z = (int)lat->shape[0];
    float *stats = (float *)((char *)c->scalars + STATS_OFFSET);
    flush_pending(c); /* its frame changes every step: it runs at once, between recorded lists */
    if (failed(c)) return;
    if (!c->stats_loaded) { /* once a call: from pageable memory, the copies may wait for the stream */
        if (!cuda_ok(c, cudaMemcpyAsync(stats, mean, (size_t)z * sizeof(float), cudaMemcpyHostToDevice, c->stream),
                     "latent statistics") ||
            !cuda_ok(c, cudaMemcpyAsync(stats + z, std, (size_t)z * sizeof(float), cudaMemcpyHostToDevice, c->stream),
                     "latent statistics"))
            return;
        c->stats_loaded = 1;
    }
    LAUNCH(c, load_latent_kernel, (int64_t)(g.h + 2 * g.pad) * (g.w + 2 * g.pad) * z,
           (const char *)lat->data + (int64_t)t * lat->strides[1], lat->strides[0], lat->strides[2], lat->strides[3],
           (int)lat->dtype, stats, z, g, dst);
}

typedef struct {
    const void *x, *gamma;
    void *y;
    wv_grid gx, gy;
    int C, n, silu;
} rms_norm_args;

static void exec_rms_norm(cuda_ctx *c, const void *args)
{
    const rms_norm_args *a = (const rms_norm_args *)args;
    int lanes_log2;
    unsigned row_blocks;
    if (!vectors_fit(c, a->C, a->x, a->y, a->gamma) ||
        !rms_norm_vec_launch(a->gy, a->n, a->C, (int)wv_dtype_size(c->dt), THREADS, &lanes_log2, &row_blocks)) {
        int64_t positions = (int64_t)a->n * wv_grid_positions(a->gy);
        LAUNCH(c, rms_norm_kernel, positions * 32, a->x, a->gx, a->y, a->gy, a->C, a->n, a->gamma, a->silu);
        return;
    }
    LAUNCH_ON(c, rms_norm_vec_kernel, dim3(row_blocks, (unsigned)(a->gy.h + 2 * a->gy.pad), (unsigned)a->n), THREADS,
              a->x, a->gx, a->y, a->gy, a->C, a->gamma, a->silu, lanes_log2);
}

/* x [n][positions(gx)][C] -> y [n][positions(gy)][C]: RMS-normalized, times gamma, SiLU'd if silu; y's ring 0 */
static void cuda_rms_norm(void *ctx, const void *x, wv_grid gx, void *y, wv_grid gy, int C, int n, const void *gamma,
                          int silu)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    rms_norm_args a;
    memset(&a, 0, sizeof a);
    a.x = x, a.gamma = gamma, a.y = y, a.gx = gx, a.gy = gy, a.C = C, a.n = n, a.silu = silu;
    submit(c, exec_rms_norm, &a, sizeof a);
}

typedef struct {
    void *x;
    wv_grid g;
    int C, n;
} zero_ring_args;

static void exec_zero_ring(cuda_ctx *c, const void *args)
{
    const zero_ring_args *a = (const zero_ring_args *)args;
    int64_t ring = wv_grid_positions(a->g) - (int64_t)a->g.h * a->g.w;
    LAUNCH(c, zero_ring_kernel, (int64_t)a->n * ring * a->C, a->x, a->g, a->C, a->n);
}

/* x [n][positions(g)][C]: each frame's ring set to 0 */
static void cuda_zero_ring(void *ctx, void *x, wv_grid g, int C, int n)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    zero_ring_args a;
    if (!g.pad) return;
    memset(&a, 0, sizeof a);
    a.x = x, a.g = g, a.C = C, a.n = n;
    submit(c, exec_zero_ring, &a, sizeof a);
}

/* Rows of an interior block are contiguous runs of w * C elements: one 2-d copy per frame, either
 * side on the device or in alloc_host's pinned memory. */
typedef struct {
    const void *src;
    void *dst;
    wv_grid gs, gd;
    int oy, ox, C, n;
} copy_region_args;

static void exec_copy_region(cuda_ctx *c, const void *args)
{
    const copy_region_args *a = (const copy_region_args *)args;
    wv_grid gs = a->gs, gd = a->gd;
    size_t es = wv_dtype_size(c->dt) * (size_t)a->C;
    size_t pitch_s = (size_t)(gs.w + 2 * gs.pad) * es, pitch_d = (size_t)(gd.w + 2 * gd.pad) * es;
    size_t frame_s = (size_t)wv_grid_positions(gs) * es, frame_d = (size_t)wv_grid_positions(gd) * es;
    for (int f = 0; f < a->n; f++) {
        const char *s = (const char *)a->src + f * frame_s +
                        ((size_t)(a->oy + gs.pad) * (gs.w + 2 * gs.pad) + a->ox + gs.pad) * es;
        char *d = (char *)a->dst + f * frame_d + ((size_t)gd.pad * (gd.w + 2 * gd.pad) + gd.pad) * es;
        if (!cuda_ok(c, cudaMemcpy2DAsync(d, pitch_d, s, pitch_s, (size_t)gd.w * es, (size_t)gd.h,
                                          cudaMemcpyDefault, c->stream),
                     "copy_region"))
            return;
    }
}

static int in_pinned_block(const cuda_ctx *c, const void *p)
{
    const char *b = (const char *)c->pinned;
    return b && (const char *)p >= b && (const char *)p < b + c->pinned_bytes;
}

/* src [n][positions(gs)][C], its interior from (oy, ox) -> dst [n][positions(gd)][C], gd's interior.
 * A copy to or from the trunk output in host memory reads or writes the step's own frame, which
 * changes every step: it runs at once (see step graphs; a pageable block could not be captured
 * anyway); copies on the device are recorded. */
static void cuda_copy_region(void *ctx, const void *src, wv_grid gs, int oy, int ox, void *dst, wv_grid gd, int C,
                             int n)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    copy_region_args a;
    memset(&a, 0, sizeof a);
    a.src = src, a.dst = dst, a.gs = gs, a.gd = gd, a.oy = oy, a.ox = ox, a.C = C, a.n = n;
    if (in_pinned_block(c, src) || in_pinned_block(c, dst)) {
        flush_pending(c);
        if (!failed(c)) exec_copy_region(c, &a);
        return;
    }
    submit(c, exec_copy_region, &a, sizeof a);
}

/* A kernel rather than a 2-d copy: the rows are short (C elements), tens of thousands a frame. */
typedef struct {
    const void *src;
    void *dst;
    int cstride, coff, C;
    int64_t n;
} copy_channels_args;

static void exec_copy_channels(cuda_ctx *c, const void *args)
{
    const copy_channels_args *a = (const copy_channels_args *)args;
    launch_copy_channels(c, a->src, a->cstride, a->coff, a->dst, a->C, 0, a->C, a->n);
}

/* src [n][cstride], channels [coff, coff + C) -> dst [n][C] */
static void cuda_copy_channels(void *ctx, const void *src, int cstride, int coff, void *dst, int C, int64_t n)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    copy_channels_args a;
    memset(&a, 0, sizeof a);
    a.src = src, a.dst = dst, a.cstride = cstride, a.coff = coff, a.C = C, a.n = n;
    submit(c, exec_copy_channels, &a, sizeof a);
}

typedef struct {
    const void *src;
    void *dst;
    wv_grid gs, gd;
    int sy0, sx0, dy0, dx0, C;
} pixel_shuffle_args;

static void exec_pixel_shuffle(cuda_ctx *c, const void *args)
{
    const pixel_shuffle_args *a = (const pixel_shuffle_args *)args;
    int es = (int)wv_dtype_size(c->dt), k = vectors_fit(c, a->C, a->src, a->dst, NULL) ? 16 / es : 1;
    LAUNCH_BY_UNIT(c, pixel_shuffle_kernel, k * es, (int64_t)a->gd.h * a->gd.w * (a->C / k), a->src, a->gs, a->sy0,
                   a->sx0, a->dst, a->gd, a->dy0, a->dx0, a->C / k);
}

/* src [positions(gs)][4][C] (a sub-pixel conv's phases) -> dst [positions(gd)][C], the x2 frame from (dy0, dx0) */
static void cuda_pixel_shuffle(void *ctx, const void *src, wv_grid gs, int sy0, int sx0, void *dst, wv_grid gd, int dy0,
                               int dx0, int C)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    pixel_shuffle_args a;
    memset(&a, 0, sizeof a);
    a.src = src, a.dst = dst, a.gs = gs, a.gd = gd, a.sy0 = sy0, a.sx0 = sx0, a.dy0 = dy0, a.dx0 = dx0, a.C = C;
    submit(c, exec_pixel_shuffle, &a, sizeof a);
}

/* Per chunk of `rows` queries (row-major buffers seen column-major by cuBLAS):
 *   S[r][N] = scale * Q[r][C] K[N][C]^T   (fp32)     -> S^T = K Q^T as an (N x r) column-major GEMM
 *   P[r][N] = softmax(S)                   (act type)
 *   O[r][C] = P V                                    -> O^T = V^T P^T as a (C x r) column-major GEMM
 * scores: S (rows x N floats), then at the next arena alignment P (rows x N activations). */
typedef struct {
    const void *qkv;
    void *out, *scores;
    int N, C, rows;
} attention_args;

static void exec_attention(cuda_ctx *c, const void *args)
{
    const attention_args *a = (const attention_args *)args;
    const void *qkv = a->qkv;
    void *out = a->out, *scores = a->scores;
    int N = a->N, C = a->C, rows = a->rows;
    size_t es = wv_dtype_size(c->dt);
    float *S = (float *)scores, zero = 0.0f, one = 1.0f, scale = 1.0f / sqrtf((float)C);
    void *P = (char *)scores + wv_align_up((size_t)rows * N * sizeof(float));
    cudaDataType_t t = cuda_type(c->dt);
    const char *q = (const char *)qkv, *k = q + (size_t)C * es, *v = q + (size_t)2 * C * es;
    for (int q0 = 0; q0 < N; q0 += rows) {
        int r = N - q0 < rows ? N - q0 : rows;
        const char *qr = q + (size_t)q0 * 3 * C * es;
        if (!cublas_ok(c,
                       cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, r, C, &scale, k, t, 3 * C, qr, t, 3 * C,
                                    &zero, S, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       "attention scores"))
            return;
        LAUNCH_ON(c, softmax_rows_kernel, r, 512, S, P, N); /* a block per row */
        if (failed(c)) return;
        if (!cublas_ok(c,
                       cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, C, r, N, &one, v, t, 3 * C, P, t, N, &zero,
                                    (char *)out + (size_t)q0 * C * es, t, C, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       "attention output"))
            return;
    }
}

/* qkv [N][3][C] -> out [N][C] = softmax(q k^T / sqrt(C)) v, `rows` queries a chunk */
static void cuda_attention(void *ctx, const void *qkv, void *out, int N, int C, void *scores, int rows)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    attention_args a;
    memset(&a, 0, sizeof a);
    a.qkv = qkv, a.out = out, a.scores = scores, a.N = N, a.C = C, a.rows = rows;
    submit(c, exec_attention, &a, sizeof a);
}

typedef struct {
    const void *src;
    void *dst; /* in the staging's device side */
    wv_grid gs;
    int sy, sx, h, w;
    wv_output_mode mode;
} write_output_args;

static void exec_write_output(cuda_ctx *c, const void *args)
{
    const write_output_args *a = (const write_output_args *)args;
    LAUNCH(c, write_output_kernel, (int64_t)a->h * a->w * WV_RGB, a->src, a->gs, a->sy, a->sx, a->h, a->w, a->dst,
           (int)a->mode, output_flag(c));
}

/* src [positions(gs)][3], an h x w block from interior (sy, sx) -> the current step's staging memory;
 * the host copies it into out [..][out_w][3] at (oy, ox) once the step has finished (end_step / sync). */
static void cuda_write_output(void *ctx, const void *src, wv_grid gs, int sy, int sx, int h, int w, void *out,
                              int out_w, int oy, int ox, wv_output_mode mode)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    staging *s = &c->stage[c->cur];
    size_t item = wv_output_item_bytes(mode), bytes = (size_t)h * w * WV_RGB * item;
    write_output_args a;
    pending_copy *p;
    if (failed(c)) return;
    if (s->used + bytes > c->step_out_bytes) {
        wv_fail(&c->err, WV_ERR_BACKEND, WV_INTERNAL "output staging overflow (%zu + %zu > %zu bytes)", s->used, bytes,
                c->step_out_bytes);
        return;
    }
    if (s->n_copies == s->cap_copies) {
        int cap = s->cap_copies ? 2 * s->cap_copies : 8;
        pending_copy *grown = (pending_copy *)realloc(s->copies, (size_t)cap * sizeof *grown);
        if (!grown) {
            wv_fail(&c->err, WV_ERR_NOMEM, "out of host memory");
            return;
        }
        s->copies = grown;
        s->cap_copies = cap;
    }
    memset(&a, 0, sizeof a);
    a.src = src, a.dst = s->dev + s->used, a.gs = gs, a.sy = sy, a.sx = sx, a.h = h, a.w = w;
    a.mode = mode;
    submit(c, exec_write_output, &a, sizeof a);
    c->output_unchecked = 1;
    p = &s->copies[s->n_copies++];
    p->dst = (char *)out + ((size_t)oy * out_w + ox) * WV_RGB * item;
    p->offset = s->used;
    p->row = (size_t)w * WV_RGB * item;
    p->stride = (size_t)out_w * WV_RGB * item;
    p->h = h;
    s->used += bytes;
}

/* ---- the tables --------------------------------------------------------------------------- */

/* The table of one activation type, its fields set by name (C++17 has no designated initializers;
 * a constexpr function keeps the tables constant-initialized). */
static constexpr wv_backend cuda_table(wv_dtype dt, size_t bytes)
{
    wv_backend b = {};
    b.name = "cuda";
    b.device_memory = 1;
    b.act_dtype = dt;
    b.act_bytes = bytes;
    b.param_bytes = bytes;
    b.score_bytes = sizeof(float) + bytes; /* fp32 scores and their softmax in dt */
    b.causal_weight_scratch = 1;          /* taps turned to a ring's order per call */
    b.workspace_bytes = WV_CUDA_WORKSPACE_BYTES;
    b.min_workspace_bytes = CUBLAS_WORKSPACE_BYTES;
    b.output_staging_copies = STAGINGS;
    b.trunk_out_host = 1;
    b.max_conv_elems = INT32_MAX; /* cuDNN indexes a tensor in int */
    b.ctx_create = cuda_ctx_create;
    b.ctx_destroy = cuda_ctx_destroy;
    b.fail_nth_alloc = cuda_fail_nth_alloc;
    b.release_thread = cuda_release_thread;
#define WV_CUDA_OP_INIT(op, ret, args) b.op = cuda_##op;
    WV_BACKEND_OPS(WV_CUDA_OP_INIT)
#undef WV_CUDA_OP_INIT
    return b;
}

static constexpr wv_backend CUDA_F32 = cuda_table(WV_F32, 4);
static constexpr wv_backend CUDA_F16 = cuda_table(WV_F16, 2);
static constexpr wv_backend CUDA_BF16 = cuda_table(WV_BF16, 2);

static const wv_backend_set CUDA_SET = {WV_BACKEND_ABI, {&CUDA_F32, &CUDA_F16, &CUDA_BF16}};

extern "C" const wv_backend_set *wv_cuda_backends(void)
{
    static int settled = 0;
    if (!settled) read_taps_settings();
    settled = 1;
    return &CUDA_SET;
}

/* The device of the calling thread's current context; CUDA's default, 0, where none is current (our
 * runtime's own notion there is the device of the last model that worked in this thread). */
extern "C" int wv_cuda_current_device(void)
{
    const context_api *api = driver_context_api();
    void *ctx = NULL;
    int device = 0;
    if (api->get && api->get(&ctx) == 0 && !ctx) return 0;
    if (cudaGetDevice(&device) != cudaSuccess) device = 0;
    return device;
}

extern "C" int wv_cuda_mem_info(int device, size_t *free_b, size_t *total_b, char *why, size_t why_size)
{
    device_scope ds;
    cudaError_t e;
    if (device < 0) device = wv_cuda_current_device();
    if (!device_exists(device, why, why_size)) return -1;
    ds = enter_device(device);
    e = cudaMemGetInfo(free_b, total_b);
    leave_device(ds, device);
    if (e != cudaSuccess) {
        cudaGetLastError();
        snprintf(why, why_size, "%s%s", cudaGetErrorString(e), restart_hint(e));
        return -1;
    }
    return 0;
}

/* Before any cuDNN call: see wv_cudnn_probe.h (cuDNN 9 aborts where its graph library cannot load). */
extern "C" int wv_cuda_cudnn_loadable(char *why, size_t why_size)
{
    return wv_cudnn_graph_loadable((const void *)&cudnnGetVersion, CUDNN_MAJOR, why, why_size);
}

extern "C" void wv_cuda_versions(int *runtime, int *driver, size_t *cudnn, int *cublas)
{
    int major = 0, minor = 0, patch = 0;
    *runtime = runtime_version();
    *driver = 0;
    cudaDriverGetVersion(driver);
    *cudnn = cudnnGetVersion();
    cublasGetProperty(MAJOR_VERSION, &major);
    cublasGetProperty(MINOR_VERSION, &minor);
    cublasGetProperty(PATCH_LEVEL, &patch);
    *cublas = major * 10000 + minor * 100 + patch;
}
