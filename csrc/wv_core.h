/* wanvideo_vae core: an exact, tiled, streamed Wan 2.1 VAE decoder.
 *
 * The core knows nothing of Python or CUDA. It is built from four pieces:
 *   - a model (wv_model.c): named weights checked against one table of key, shape and role;
 *   - a plan (wv_plan.c): halos derived from the layer list, the tile grid, every buffer's bytes;
 *   - a driver (wv_decode.c): trunk (full frame) -> tiles -> time chunks;
 *   - a backend (wv_backend.h): a table of ops; the plain-C CPU backend is the reference.
 * Every function that can fail returns a wv_status and writes a message into a wv_error.
 */
#ifndef WV_CORE_H
#define WV_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    WV_OK = 0,
    WV_ERR_INVALID,      /* bad input: shapes, dtypes, keys, options */
    WV_ERR_NOMEM,        /* a host allocation failed */
    WV_ERR_NOMEM_DEVICE, /* a device allocation failed, or a budget of device memory is too small */
    WV_ERR_INTERRUPTED,  /* the progress callback asked to stop */
    WV_ERR_BACKEND       /* the backend failed (library error) */
} wv_status;

typedef struct {
    wv_status code;
    char msg[512];
} wv_error;

/* Records code and a printf-style message; returns code so callers can `return wv_fail(...)`. */
wv_status wv_fail(wv_error *err, wv_status code, const char *fmt, ...);

/* Opens the message of a failed check of the code's own invariants (not of its input): a bug to report. */
#define WV_INTERNAL "internal error (a bug: please report it with what `python -m wanvideo_vae info` prints): "

/* Puts `what` and ": " before the message of a failure st (what failed it: "the model's weights");
 * returns st. */
wv_status wv_fail_in(wv_error *err, wv_status st, const char *what);

/* Sizes in messages a person reads. wv_size_text: in the largest binary unit they fill ("1.79 GiB",
 * "749.3 MiB", "12 bytes"); wv_bytes_text: the exact count, that beside it ("1917423616 bytes
 * (1.79 GiB)"), so a figure can be passed back as a budget. Both write buf and return it. */
#define WV_BYTES_TEXT 64
const char *wv_size_text(char *buf, size_t size, size_t bytes);
const char *wv_bytes_text(char *buf, size_t size, size_t bytes);

/* Environment variable `name` into buf (cut to size - 1 characters): 1 where it is set. On Windows
 * the process's environment, which Python's os.environ updates, rather than the copy of a C runtime
 * other than Python's (a MinGW-w64 build's msvcrt.dll), which getenv would read; as UTF-8, as
 * elsewhere (read in UTF-16, not the ANSI code page). */
int wv_getenv(const char *name, char *buf, size_t size);

/* What wv_getenv reads under. glibc's getenv may walk an environment that another thread's putenv
 * has just moved and freed, and Python's os.environ calls putenv holding its GIL: the Python modules
 * set a guard that holds the GIL around each read, as the core reads settings with it released.
 * Set once, before any read; without one (the C programs) reads are unguarded. */
typedef struct {
    int (*enter)(void); /* a token for leave */
    void (*leave)(int token);
} wv_env_guard;
void wv_set_env_guard(const wv_env_guard *guard);

/* 1 where s is a whole number from lo to hi (decimal, nothing after it), stored in *n; else 0. */
int wv_parse_count(const char *s, long lo, long hi, long *n);

/* Element types: X(id, name, precision, bytes, typestr, native typestr), the typestrs the array
 * interface's. bfloat16 has no code of its own: torch and ml_dtypes export it as 2 bytes of void. */
#define WV_DTYPES(X)                                \
    X(WV_F32, "float32", "fp32", 4, "<f4", "=f4")   \
    X(WV_F16, "float16", "fp16", 2, "<f2", "=f2")   \
    X(WV_BF16, "bfloat16", "bf16", 2, "<V2", "|V2")

typedef enum {
#define WV_DTYPE_ID(id, name, precision, bytes, typestr, native) id,
    WV_DTYPES(WV_DTYPE_ID)
#undef WV_DTYPE_ID
} wv_dtype;

enum { /* not in wv_dtype: a switch over it names every type */
#define WV_DTYPE_ONE(id, name, precision, bytes, typestr, native) +1
    WV_DTYPE_COUNT = 0 WV_DTYPES(WV_DTYPE_ONE)
#undef WV_DTYPE_ONE
};

const char *wv_dtype_name(wv_dtype dt);      /* "bfloat16" */
const char *wv_dtype_precision(wv_dtype dt); /* "bf16" */
size_t wv_dtype_size(wv_dtype dt);
/* The dtype of an array-interface typestr, or of a name or precision ("float16", "fp16"); 0 when
 * there is none. */
int wv_dtype_from_typestr(const char *typestr, wv_dtype *dt);
int wv_dtype_from_name(const char *name, wv_dtype *dt);

/* What a backend's sync reports once its output has held a NaN or Inf: a decode of finite latents and
 * weights overflowed the activations' type `act` (causes and cure differ: float16 ends at 65504). */
wv_status wv_fail_nonfinite_output(wv_error *err, wv_dtype act);

#define WV_MAX_DIMS 8

/* A borrowed, possibly strided n-d array in host or device memory. Strides are in bytes. */
typedef struct {
    const void *data;
    int ndim;
    int64_t shape[WV_MAX_DIMS];
    int64_t strides[WV_MAX_DIMS];
    wv_dtype dtype;
    int on_device;
} wv_view;

int64_t wv_view_numel(const wv_view *v);

/* Finds a NaN or Inf in a host view; returns 1 and its coordinates in index[ndim], else 0. */
int wv_view_find_nonfinite(const wv_view *v, int64_t *index);

/* One element of any supported dtype as float32. */
float wv_elem_to_f32(const void *p, wv_dtype dt);

/* Copies a host view of any dtype and non-negative strides into contiguous float32 (row-major). */
void wv_view_to_f32(const wv_view *v, float *dst);

/* ---- model ------------------------------------------------------------------------------- */

typedef enum {
    WV_BLOCK_POINTWISE, /* conv2: 1x1x1 conv z -> z */
    WV_BLOCK_CONV,      /* decoder.conv1: causal 3x3x3 conv z -> 4 dim */
    WV_BLOCK_RES,       /* residual block */
    WV_BLOCK_ATTN,      /* per-frame global attention */
    WV_BLOCK_UP2D,      /* nearest x2 + 3x3 conv, C -> C/2 (run as a sub-pixel conv: see wv_conv) */
    WV_BLOCK_UP3D,      /* causal time_conv doubling frames, then as UP2D */
    WV_BLOCK_HEAD,      /* rms, silu, causal 3x3x3 conv -> RGB */
    WV_BLOCK_KIND_COUNT
} wv_block_kind;

/* One convolution, weights in the backend's layout. kt/kh/kw are the kernel extents;
 * kt > 1 means causal in time (Wan's: 3; its cache: wv_cache_frames).
 * The upsampling blocks' resample conv (nearest x2, then a 3x3 conv C -> C/2) runs sub-pixel: on
 * the low-resolution frame, as a 2x2 conv whose 4 x C/2 outputs are the four phases (y % 2, x % 2)
 * of the x2 frame, which the pixel_shuffle op then puts in place. Each phase's 2x2 taps are sums of
 * the 3x3 ones (wv_subpixel_weight): 16 multiply-adds per input channel and low-resolution pixel
 * instead of 36, exactly the same sums, and no x2 frame of C channels in memory. */
typedef struct {
    void *weight;
    void *bias;
    int cin, cout, kt, kh, kw; /* a sub-pixel conv: kh = kw = 2, cout = 4 phases x the block's */
    int subpixel;
    int cache_slot; /* index of this conv's causal cache, -1 when kt == 1 */
    int id;         /* block * WV_BLOCK_MAX_CONVS + slot: its row in wv_stats' conv profile */
    int64_t operand_per_position; /* the backend's conv_operand, asked when the model is built, so
                                     that planning never needs the context (gone after close) */
} wv_conv;

#define WV_BLOCK_MAX_CONVS 3
#define WV_BLOCK_MAX_GAMMAS 2

/* A block's conv and gamma slots (wv_block.conv[], .gamma[]) by kind; the model's table fills them
 * from the checkpoint keys named beside each. POINTWISE, CONV and HEAD have one conv, WV_CONV. */
enum {
    WV_CONV = 0,
    WV_RES_CONV1 = 0,    /* residual.2 */
    WV_RES_CONV2 = 1,    /* residual.6 */
    WV_RES_SHORTCUT = 2, /* shortcut: where cin != cout */
    WV_RES_NORM1 = 0,    /* residual.0.gamma */
    WV_RES_NORM2 = 1,    /* residual.3.gamma */
    WV_ATTN_QKV = 0,     /* to_qkv */
    WV_ATTN_PROJ = 1,    /* proj */
    WV_ATTN_NORM = 0,    /* norm.gamma */
    WV_UP_RESAMPLE = 0,  /* resample.1: the sub-pixel conv */
    WV_UP_TIME_CONV = 1, /* time_conv: UP3D's */
    WV_HEAD_NORM = 0     /* head.0.gamma */
};

typedef struct {
    wv_block_kind kind;
    char prefix[48]; /* checkpoint key prefix, e.g. "decoder.upsamples.4." */
    int cin, cout;
    wv_conv conv[WV_BLOCK_MAX_CONVS]; /* by the slots above */
    int has_conv[WV_BLOCK_MAX_CONVS];
    void *gamma[WV_BLOCK_MAX_GAMMAS]; /* by the slots above too */
} wv_block;

#define WV_MAX_BLOCKS 32
/* The widest layer a model may have (4 dim, its trunk's width) and the most latent channels: far past
 * Wan 2.1's 384 and 16, and small enough that a channel count times a 3x3x3 kernel stays well inside
 * an int. */
#define WV_MAX_WIDTH 4096

typedef struct wv_backend wv_backend;

typedef struct {
    int dim, z_dim;
    int n_blocks;
    wv_block blocks[WV_MAX_BLOCKS];
    int trunk_end;       /* blocks [0, trunk_end) run on the full frame: at least through the attention */
    int trunk_end_long;  /* or up to the first upsample, where the tiles' halos are smallest (wv_plan) */
    int n_cache_slots;   /* causal convs, counted from the table */
    const wv_backend *backend;
    void *ctx;           /* the backend's context, alive as long as the model */
    void *weight_mem;    /* one backend allocation holding every parameter */
    size_t weight_bytes;
    int64_t n_params;    /* decoder parameters (weight_bytes also holds alignment padding) */
} wv_model;

/* A named tensor handed to wv_model_build. */
typedef struct {
    const char *key;
    wv_view view;
} wv_named_view;

/* Builds the decoder from named weights: infers dim and z_dim from decoder.conv1.weight, checks
 * every expected key and shape, rejects unknown keys, converts into the backend's layout on
 * `device` (backend-specific; < 0: the current one). */
wv_status wv_model_build(wv_model *m, const wv_backend *be, int device, const wv_named_view *weights,
                         int n_weights, wv_error *err);
void wv_model_free(wv_model *m);

/* Asks m's backend, with its context, for each conv's operand_per_position (done by wv_model_build). */
void wv_model_measure_operands(wv_model *m);

/* The checkpoint name of conv `id` (wv_conv.id) without ".weight", e.g. "decoder.upsamples.4.residual.2";
 * returns 0 when the model has no such conv. */
int wv_model_conv_name(const wv_model *m, int id, char *buf, size_t size);

/* The expected weight table for a config: calls fn once per key (in table order). */
typedef void (*wv_key_fn)(void *user, const char *key, int ndim, const int64_t *shape);
int wv_model_expected_keys(int dim, int z_dim, wv_key_fn fn, void *user);

/* ---- plan -------------------------------------------------------------------------------- */

typedef struct { int lo, hi; } wv_span; /* half-open interval of pixels on one axis */

/* A rectangle of a frame at one resolution. */
typedef struct { wv_span y, x; } wv_rect;

#define WV_MAX_SEGMENTS 8

/* The tile part of the decoder (after the attention) splits into segments at each upsample.
 * Every buffer of a segment covers the same region of the frame. */
typedef struct {
    int first_block, end_block; /* blocks [first, end) */
    int scale;                  /* resolution relative to the latent grid: 1, 2, 4, 8 */
    int halo;                   /* halo of the segment's region, derived from the layer list */
    int frames_per_chunk;       /* frames per time chunk after the first (1 latent frame a chunk) */
    int64_t xy_elems, t_elems;  /* elements of the segment's one-frame buffers: x and y, conv input t */
    size_t scratch_offset;      /* where those buffers start in the TILE_SCRATCH arena buffer */
} wv_segment;

typedef struct {
    wv_rect core;                       /* output pixels this tile writes (output resolution) */
    wv_rect region[WV_MAX_SEGMENTS];    /* region each segment computes (its own resolution) */
} wv_tile;

/* What the output holds: UNIT clamp(-1, 1) then (v + 1) / 2, float32; RAW the decode itself,
 * float32; U8 the UNIT value v as uint8, (v * 255 + 0.5) truncated: what NumPy's clip, * 255, + 0.5,
 * astype(uint8) make of the UNIT frames. A compiler may fuse v * 255 + 0.5 into one multiply-add:
 * the bytes are the same (checked for every float32 v in [0, 1]). */
typedef enum { WV_OUT_UNIT = 0, WV_OUT_RAW = 1, WV_OUT_U8 = 2 } wv_output_mode;

static inline size_t wv_output_item_bytes(wv_output_mode mode)
{
    return mode == WV_OUT_U8 ? 1 : sizeof(float);
}

typedef struct {
    int tile_x, tile_y;   /* tile size in output pixels (core + 2 * output halo); <= 0: whole frame */
    int end_frame;        /* decode the last latent frame as a fresh one-frame sequence */
    wv_output_mode output;
    size_t max_bytes;     /* budget for the arena (0: none); tiles shrink until the plan fits */
    int profile;          /* wait for every backend op and add its time to wv_stats.op_seconds */
} wv_options;

/* One named arena buffer: its bytes and a human name, for the plan report. */
typedef struct {
    const char *name;
    size_t offset, bytes;
} wv_buffer_plan;

#define WV_MAX_BUFFERS 64

typedef struct {
    int T, h, w;             /* latent frames and grid */
    int frames_out, H, W;    /* output video */
    int n_seq;               /* 1, or 2 in end-frame mode */
    int seq_start[2], seq_len[2], seq_out[2];
    int n_segments;
    wv_segment seg[WV_MAX_SEGMENTS];
    int out_scale;           /* output pixels per latent pixel (8 for Wan 2.1) */
    int out_halo;            /* halo at the output resolution (last segment) */
    int core_x, core_y;      /* core size in output pixels */
    int tiles_x, tiles_y, n_tiles;
    wv_tile *tiles;          /* n_tiles entries, owned by the plan */
    int trunk_end;           /* blocks [0, trunk_end) run on the full frame: the model's trunk_end, or
                                its trunk_end_long when that costs no memory (see plan_for_tiles) */
    int stream_trunk;        /* one tile: trunk and tile pass interleave frame by frame */
    int shrunk_to_fit;       /* the tiles were made smaller than asked to fit max_bytes */
    int attn_rows;           /* query rows per attention chunk */
    int n_buffers;
    wv_buffer_plan buffers[WV_MAX_BUFFERS];
    size_t trunk_out_bytes;  /* the part of the arena that grows with T x frame */
    size_t trunk_host_bytes; /* the trunk output of all frames in the backend's host memory instead
                                (its trunk_out_host; the arena then holds none of it), else 0 */
    wv_output_mode output;   /* the output the plan was made for (its item size sizes the staging) */
    size_t step_out_bytes;   /* the most output one step writes: frames x core x 3 items */
    size_t arena_bytes;      /* everything the decode allocates besides weights and the output */
    double conv_flops;       /* multiply-adds x 2 of every convolution the plan runs (a long 4K decode passes 2^63) */
    int64_t trunk_operand, tile_operand; /* elements of the largest conv operand (see the backend's
                                            max_conv_elems) in the trunk and in a tile */
} wv_plan;

/* Plans a decode of latents [z, T, h, w] with the tile size of `o`; if the plan does not fit (in
 * o->max_bytes where set, and in the backend's max_conv_elems), picks the largest smaller square
 * tile that does, or fails naming the need. wv_plan_free it whether or not it succeeded. */
wv_status wv_plan_make(wv_plan *p, const wv_model *m, int T, int h, int w, const wv_options *o,
                       wv_error *err);
void wv_plan_free(wv_plan *p);

/* Buffer i of plan p as a report names it: its name, or, for a causal cache, the conv it serves and
 * what it holds ("causal cache of decoder.head.2: [3 frames][P][96]"); returns buf. */
const char *wv_plan_buffer_name(const wv_plan *p, const wv_model *m, int i, char *buf, size_t size);

/* Halo (in pixels of that resolution) at the input of every block of the tile part, derived by
 * walking the layer list backwards from the output: 3x3 conv +1, nearest x2 upsample ceil(h/2).
 * halo_out receives n_blocks entries; entries of trunk blocks are -1. */
void wv_model_halos(const wv_model *m, int *halo_out);

/* ---- decode ------------------------------------------------------------------------------ */

/* Called between chunks with (done, total) steps; return nonzero to stop the decode. */
typedef int (*wv_progress_fn)(void *user, int64_t done, int64_t total);

#define WV_MAX_OPS 32

typedef struct {
    double seconds_trunk, seconds_tiles, seconds_total;
    size_t arena_high_water;
    int64_t steps;
    double op_seconds[WV_MAX_OPS]; /* with wv_options.profile: seconds in each backend op (wv_backend.h) */
    int64_t op_calls[WV_MAX_OPS];
    double op_host_seconds[WV_MAX_OPS]; /* ... of which in the op's call itself: the host's cost of
                                           queueing it (cuDNN's checks and plan lookups, launches) */
    /* with wv_options.profile, per convolution (wv_conv.id): seconds, calls, and the multiply-adds
     * x 2 the backend ran (padded grids, ring included) */
    double conv_seconds[WV_MAX_BLOCKS * WV_BLOCK_MAX_CONVS];
    int64_t conv_calls[WV_MAX_BLOCKS * WV_BLOCK_MAX_CONVS];
    int64_t conv_flops[WV_MAX_BLOCKS * WV_BLOCK_MAX_CONVS];
} wv_stats;

/* Decodes `latents` ([z, T, h, w], any dtype, host or device as the backend accepts) into
 * out[frames_out][H][W][3] (host float32, or uint8 for WV_OUT_U8), following plan p, made for the
 * same output type. mean/std: z floats each. stream: the
 * caller's queue the latents are ready on, handed to the backend's begin as it is (a CUDA stream for
 * the CUDA backend; 0 when none). One decode per model at a time. */
wv_status wv_decode(const wv_model *m, const wv_plan *p, const wv_view *latents, uintptr_t stream,
                    const float *mean, const float *std, const wv_options *o, void *out,
                    wv_progress_fn progress, void *progress_user, wv_stats *stats, wv_error *err);

#ifdef __cplusplus
}
#endif

#endif
