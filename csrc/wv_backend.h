/* The backend table: every op the driver needs, once per backend, with the same signature.
 *
 * Activations are frames stored channels-last: a frame is a grid of positions, each holding C
 * contiguous values. A grid of h x w interior pixels may carry a ring of `pad` zero pixels on
 * every side, so a 3x3 convolution reads a shifted window without bounds checks:
 *     positions(g) = (h + 2 pad) * (w + 2 pad),  frame elems = positions(g) * C.
 * n frames of one grid follow each other: x[n][positions][C].
 * Ops that write a padded grid write its ring as zeros, except convolutions, whose ring output
 * is undefined (readers of a conv output read only the interior), and copy_region, which leaves
 * the destination's ring as it was.
 */
#ifndef WV_BACKEND_H
#define WV_BACKEND_H

#include "wv_core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct { int h, w, pad; } wv_grid;

/* What one decode call hands its backend in `begin`. */
typedef struct {
    const wv_view *latents; /* the caller's latents; a backend may point this at its own copy */
    uintptr_t stream;       /* CUDA stream the latents are ready on (0: none given) */
    void *workspace;        /* the arena's WORKSPACE buffer (backend->workspace_bytes) */
    size_t workspace_bytes;
    size_t step_out_bytes;  /* the most output bytes one step writes (write_output staging) */
    void *output_staging;   /* the arena's OUTPUT_STAGING buffer: output_staging_copies x step_out_bytes */
    void *weight_scratch;   /* the arena's WEIGHT_SCRATCH buffer (causal_weight_scratch), else NULL */
    size_t weight_scratch_bytes;
} wv_call;

/* Parameters start on 64-element boundaries (128 bytes in 16-bit types), and so may parts of a
 * packed weight (the CUDA backend's temporal taps): vectorized loads and tensor-core convolutions
 * want alignment. */
static inline int64_t wv_param_align(int64_t n) { return (n + 63) / 64 * 64; }

/* The phases of a sub-pixel conv's output: one per pixel (y % 2, x % 2) of the x2 frame, in that
 * order (2 * (y % 2) + x % 2), each a block of the upsample's channels. */
#define WV_SUBPIXEL_PHASES 4

/* The head's output channels: a frame of the output video is [H][W][WV_RGB]. */
#define WV_RGB 3

/* rms_norm's floor on a pixel's norm: F.normalize's eps, as the public RMS_norm divides by it. */
#define WV_RMS_EPS 1e-12

/* The most temporal taps a convolution has (Wan's causal convs: 3). */
#define WV_MAX_TAPS 3

/* How a backend keeps causal conv cv's cache (cache_layout, asked on the host side) and takes its
 * temporal taps. */
typedef enum {
    WV_CACHE_RING, /* a ring of kt frame slots: the conv takes all kt taps at once, from the slots */
    WV_CACHE_TAPS, /* kt - 1 slots, the taps run apart: any range of them, each from a frame of its own */
    WV_CACHE_KEPT, /* kt - 1 slots' bytes in a layout of the backend's own: the conv takes all kt taps at
                      once, the new frame from anywhere, and keeps that frame in the oldest one's place */
} wv_cache_layout;

/* A causal conv's cache as the driver keeps it: `slots` frames from base, frame_bytes apart.
 * Temporal tap dt reads slot (oldest + dt) % slots, the new frame (tap kt - 1) included, which goes
 * into slot (oldest + kt - 1) % slots: with kt slots (WV_CACHE_RING), the one left free; with kt - 1
 * (WV_CACHE_TAPS), tap 0's, so tap 0 runs before the new frame is written there. Each frame then
 * advances oldest by one, and nothing moves. A WV_CACHE_KEPT cache is the backend's: the driver
 * hands the conv its slots (oldest first) and the new frame, and only advances oldest. */
typedef struct {
    char *base;
    size_t frame_bytes;
    int slots, oldest;
} wv_ring;

static inline void *wv_ring_slot(const wv_ring *r, int dt)
{
    return r->base + (size_t)((r->oldest + dt) % r->slots) * r->frame_bytes;
}

static inline int64_t wv_grid_positions(wv_grid g)
{
    return (int64_t)(g.h + 2 * g.pad) * (g.w + 2 * g.pad);
}

/* The grid a conv over g writes: g for odd kernels; for an even one, every position of g's padded
 * grid where its window fits (no ring). */
static inline wv_grid wv_conv_out_grid(const wv_conv *cv, wv_grid g)
{
    wv_grid out = g;
    if (cv->kh % 2 == 0) {
        out.h = g.h + 2 * g.pad - cv->kh + 1;
        out.w = g.w + 2 * g.pad - cv->kw + 1;
        out.pad = 0;
    }
    return out;
}

/* The op list. X(name, return type, argument list). The backend struct, the op-name table and
 * the "supports" query are all generated from it. */
#define WV_BACKEND_OPS(X)                                                                         \
    /* a decode call: begin (checks where the latents live, orders work after call->stream),      \
     * then steps; end_step may return while the last output_staging_copies - 1 steps still run   \
     * and their output is still leaving OUTPUT_STAGING (sync waits for them); finish frees what  \
     * begin took and runs on every exit path */                                                  \
    X(begin, wv_status, (void *ctx, wv_call *call, wv_error *err))                                \
    X(end_step, wv_status, (void *ctx, wv_error *err))                                            \
    X(finish, void, (void *ctx))                                                                  \
    /* memory */                                                                                  \
    X(alloc, wv_status, (void *ctx, size_t bytes, void **out, wv_error *err))                     \
    X(release, void, (void *ctx, void *p))                                                        \
    /* host memory the backend's copy_region reads and writes (pinned for a GPU) */               \
    X(alloc_host, wv_status, (void *ctx, size_t bytes, void **out, wv_error *err))                \
    X(release_host, void, (void *ctx, void *p))                                                   \
    X(zero, void, (void *ctx, void *p, size_t bytes))                                             \
    /* params: n host floats into backend memory (converted to the backend's param type) */       \
    X(upload, wv_status, (void *ctx, void *dst, const float *src, size_t n, wv_error *err))       \
    /* host side: elements conv cv's weight takes in the backend layout (its alignment included) */ \
    X(packed_weight_elems, int64_t, (const wv_conv *cv))                                          \
    /* host side: conv weight [cout][cin][kt][kh][kw] -> the backend layout, in as many elements  \
     * as packed_weight_elems says (dst comes zeroed) */                                          \
    X(pack_conv_weight, void, (const float *oidhw, const wv_conv *cv, float *dst))                \
    /* latent frame t of lat [z][T][h][w] -> dst [positions(g)][z], unscaled: z * std + mean */   \
    X(load_latent, void, (void *ctx, const wv_view *lat, int t, const float *mean,                \
                          const float *std, wv_grid g, void *dst))                                \
    /* host side: how causal conv cv's cache is kept and its taps taken (wv_cache_layout) */       \
    X(cache_layout, wv_cache_layout, (const wv_conv *cv))                                         \
    /* host side, asked once when the model is built (wv_conv.operand_per_position): elements    \
     * per padded input position of the largest operand conv cv hands a library with a size      \
     * limit (max_conv_elems), as ctx runs it; 0 where none does (the backend's own kernels) */   \
    X(conv_operand, int64_t, (void *ctx, const wv_conv *cv))                                      \
    /* y[P][cout] (+)= (bias if first == 0) + sum over taps dt in [first, last] of               \
     * W[dt] * window(frames[dt]); frames[dt] [P][cin] is the frame temporal tap dt reads (frame  \
     * t - (kt - 1 - dt)), the others are not read. kt == 1: frames[0] is x. A causal conv whose  \
     * taps are not apart takes all kt at once, its frames the slots of one wv_ring in tap order  \
     * (WV_CACHE_KEPT: the new frame anywhere; the conv then puts it in frames[0]'s place).       \
     * Odd kernels are centred (y on g's grid, its ring undefined); an even one (square: the     \
     * sub-pixel conv's 2x2) reads the kh x kw window from its position down and right: y on     \
     * wv_conv_out_grid, every position defined */                                               \
    X(conv, void, (void *ctx, const wv_conv *cv, wv_grid g, const void *const *frames, int first,  \
                   int last, void *y, int accumulate))                                            \
    /* y = x / max(|x|, 1e-12) * sqrt(C) * gamma, then SiLU if silu; interior of gx -> gy */      \
    X(rms_norm, void, (void *ctx, const void *x, wv_grid gx, void *y, wv_grid gy, int C, int n,   \
                       const void *gamma, int silu))                                              \
    /* zero the ring of n frames */                                                               \
    X(zero_ring, void, (void *ctx, void *x, wv_grid g, int C, int n))                             \
    /* dst interior[y][x] = src interior[y + oy][x + ox], C channels, n frames; either side may  \
     * be memory from alloc_host */                                                               \
    X(copy_region, void, (void *ctx, const void *src, wv_grid gs, int oy, int ox, void *dst,      \
                          wv_grid gd, int C, int n))                                              \
    /* dst[p][0, C) = src[p][coff, coff + C) for positions p < n of a cstride-wide src */        \
    X(copy_channels, void, (void *ctx, const void *src, int cstride, int coff, void *dst, int C,  \
                            int64_t n))                                                           \
    /* The x2 frame from a sub-pixel conv's phases (see wv_conv). src [positions(gs)][4 C]: its   \
     * position (i, j) holds the phases of low-resolution pixels (i - a + sy0, j - b + sx0) for   \
     * phase (a, b), the channels of phase (a, b) at (2 a + b) C. dst interior pixel (py, px) is \
     * x2 frame pixel (Y, X) = (dy0 + py, dx0 + px), phase (Y % 2, X % 2) of src position        \
     * (Y / 2 - sy0 + Y % 2, X / 2 - sx0 + X % 2). dst's ring is left alone. */                   \
    X(pixel_shuffle, void, (void *ctx, const void *src, wv_grid gs, int sy0, int sx0, void *dst,  \
                            wv_grid gd, int dy0, int dx0, int C))                                 \
    /* out[N][C] = softmax(q k^T / sqrt(C)) v, q/k/v = columns [0,C) [C,2C) [2C,3C) of qkv[N][3C];\
     * scores: rows x N x score_bytes of scratch, the query chunk */                             \
    X(attention, void, (void *ctx, const void *qkv, void *out, int N, int C, void *scores,        \
                        int rows))                                                                \
    /* out[oy + y][ox + x][0..3) = f(src interior[y + sy][x + sx]) for y < h, x < w; out's items  \
     * are float32, or uint8 for WV_OUT_U8, and f is the output type's (wv_output_mode); a NaN in \
     * src (or an Inf, in raw output; clamped, an Inf is the right 0 or 1) is remembered, and sync\
     * reports it (wv_fail_nonfinite_output) */                                                   \
    X(write_output, void, (void *ctx, const void *src, wv_grid gs, int sy, int sx, int h, int w,  \
                           void *out, int out_w, int oy, int ox, wv_output_mode mode))            \
    /* wait for queued work; returns any error the backend recorded since the last check */      \
    X(sync, wv_status, (void *ctx, wv_error *err))

/* Op indices, for per-op profiles (wv_stats.op_seconds). */
enum {
#define WV_OP_ENUM(name, ret, args) WV_OP_##name,
    WV_BACKEND_OPS(WV_OP_ENUM)
#undef WV_OP_ENUM
    WV_OP_COUNT
};

#ifdef __cplusplus
static_assert(WV_OP_COUNT <= WV_MAX_OPS, "wv_stats.op_seconds is too small");
#else
_Static_assert(WV_OP_COUNT <= WV_MAX_OPS, "wv_stats.op_seconds is too small");
#endif

struct wv_backend {
    const char *name;
    int device_memory;      /* 1: alloc takes a device's memory (its failures: WV_ERR_NOMEM_DEVICE) */
    wv_dtype act_dtype;     /* activations and parameters in backend memory */
    size_t act_bytes;       /* bytes per activation element */
    size_t param_bytes;     /* bytes per parameter element in backend memory */
    size_t score_bytes;     /* bytes of attention scratch per score */
    int causal_weight_scratch; /* 1: the arena holds room for the packed weights of any causal conv
                                  on a ring (WV_CACHE_RING; WEIGHT_SCRATCH), where the backend
                                  reorders their taps per call */
    size_t workspace_bytes; /* the arena's WORKSPACE buffer, at most (the planner bounds it by the
                               largest conv input matrix, and by min_workspace_bytes; 0: none) */
    size_t min_workspace_bytes; /* the WORKSPACE buffer, at least, where there is one (the GEMM
                                   libraries the backend calls ask that much) */
    int output_staging_copies; /* steps of output the arena holds for the backend's copies to the host
                                  (0: write_output writes the caller's array itself) */
    int trunk_out_host;     /* 1: a plan of several tiles keeps the trunk output of all frames in
                               alloc_host memory, the arena none of it (device memory then does not
                               grow with the number of frames) */
    int64_t max_conv_elems; /* the most elements an operand of conv_operand's measure may have (0: no
                               limit; cuDNN indexes a tensor in int); the planner tiles to stay within it */
    /* A context lives with a model: device handles, caches of per-shape choices. device < 0: the
     * calling thread's current device. */
    wv_status (*ctx_create)(const wv_backend *be, int device, void **ctx, wv_error *err);
    void (*ctx_destroy)(void *ctx);
    /* Test hook: the n-th device allocation from now fails (0: never). Not thread-safe. */
    void (*fail_nth_alloc)(int n);
    /* Between steps, before the caller's own code runs (the progress callback): the calling thread's
     * device and context as the caller had them, which that code may use; end_step takes the thread
     * back. NULL: the backend keeps nothing current in the thread. */
    void (*release_thread)(void *ctx);
#define WV_OP_FIELD(name, ret, args) ret(*name) args;
    WV_BACKEND_OPS(WV_OP_FIELD)
#undef WV_OP_FIELD
};

/* Number of ops in the table, their names, and whether a backend implements op i. */
int wv_backend_op_count(void);
const char *wv_backend_op_name(int i);
int wv_backend_supports(const wv_backend *be, int i);

/* What a backend library exports: its tables by activation dtype (NULL where unsupported), in a
 * capsule named WV_BACKEND_CAPSULE. abi changes whenever wv_backend or the structs it passes do. */
#define WV_BACKEND_ABI 13
#define WV_BACKEND_CAPSULE "wanvideo_vae._cuda._backends"

typedef struct {
    int abi;
    const wv_backend *by_dtype[WV_DTYPE_COUNT];
} wv_backend_set;

/* The built-in backend. Others (CUDA) live in their own shared library and reach the Python
 * boundary as a table: see cuda/. */
const wv_backend *wv_backend_cpu(void);

/* The threads a CPU decode splits its work over: WANVIDEO_CPU_THREADS where set (1 to 1024, else
 * WV_ERR_INVALID), else the threads OpenBLAS had before the first call of this (a CPU context's
 * creation) set it to one. */
wv_status wv_cpu_threads(int *threads, wv_error *err);

#ifdef __cplusplus
}
#endif

#endif
