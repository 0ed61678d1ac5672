/* The CPU backend: plain C, float32, convolutions as BLAS GEMMs over shifted windows.
 *
 * A 3x3 conv on a padded channels-last frame needs no im2col: for tap (dy, dx) the inputs of a
 * run of consecutive positions are themselves consecutive rows of the frame, shifted by
 * (dy - 1) * (w + 2) + (dx - 1) positions. One GEMM per tap covers a block of consecutive
 * positions (plus the ring columns between rows, whose output is undefined).
 *
 * Threads: a decode call's convolutions, norms and attention split their rows over a team of
 * threads (wv_threads.h), each block on one thread, every GEMM single-threaded: OpenBLAS splitting
 * each block's GEMMs over its own threads waits on them at every GEMM (14% of a 2-core decode's
 * time). So OpenBLAS runs one thread from the first CPU context on (again at each call, should
 * anything have set it back), and the team takes the count it had, or WANVIDEO_CPU_THREADS. */
#include "wv_backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "wv_blas.h"
#include "wv_threads.h"

typedef struct {
    int nonfinite; /* write_output saw a NaN or Inf this call */
    int threads;   /* the team's size */
    wv_team *team; /* the call's threads, from begin to finish (none outlives a call) */
} cpu_ctx;

#define CPU_MAX_THREADS 1024

static wv_once g_blas_once = WV_ONCE_INIT;
static int g_blas_threads = 1; /* OpenBLAS's thread count before it was set to one */

static void take_threads_from_blas(void)
{
    g_blas_threads = wv_blas_threads();
    wv_blas_one_thread();
}

wv_status wv_cpu_threads(int *threads, wv_error *err)
{
    char env[64];
    long n;
    wv_call_once(&g_blas_once, take_threads_from_blas);
    *threads = g_blas_threads;
    if (!wv_getenv("WANVIDEO_CPU_THREADS", env, sizeof env) || !*env) return WV_OK;
    if (!wv_parse_count(env, 1, CPU_MAX_THREADS, &n))
        return wv_fail(err, WV_ERR_INVALID, "WANVIDEO_CPU_THREADS must be a whole number from 1 to %d, got '%.40s'",
                       CPU_MAX_THREADS, env);
    *threads = (int)n;
    return WV_OK;
}

static wv_status cpu_ctx_create(const wv_backend *be, int device, void **ctx, wv_error *err)
{
    int threads;
    wv_status st;
    (void)be;
    *ctx = NULL;
    if (device > 0) return wv_fail(err, WV_ERR_INVALID, "the CPU backend has no device %d", device);
    if ((st = wv_cpu_threads(&threads, err)) != WV_OK) return st;
    if (!(*ctx = calloc(1, sizeof(cpu_ctx)))) return wv_fail(err, WV_ERR_NOMEM, "out of host memory");
    ((cpu_ctx *)*ctx)->threads = threads;
    return WV_OK;
}

static void cpu_ctx_destroy(void *ctx) { free(ctx); } /* its team went with the last call (finish) */

static wv_team *team_of(void *ctx) { return ctx ? ((cpu_ctx *)ctx)->team : NULL; }

/* Test hook: fail the n-th allocation from now (0 = never). Not thread-safe by design. */
static int g_fail_alloc_countdown = 0;

static void cpu_fail_nth_alloc(int n) { g_fail_alloc_countdown = n; }

/* The CPU reads latents in host memory only; device latents are refused here rather than read. */
static wv_status cpu_begin(void *ctx, wv_call *call, wv_error *err)
{
    cpu_ctx *c = (cpu_ctx *)ctx;
    c->nonfinite = 0;
    if (call->latents->on_device)
        return wv_fail(err, WV_ERR_INVALID, "latents are in CUDA device memory but the model uses the CPU backend");
    wv_blas_one_thread();
    c->team = wv_team_start(c->threads); /* NULL (the caller alone) where no thread starts */
    return WV_OK;
}

static wv_status cpu_sync(void *ctx, wv_error *err);

/* The output is checked as it is written: an overflow stops the decode at the step's end. */
static wv_status cpu_end_step(void *ctx, wv_error *err) { return cpu_sync(ctx, err); }

static void cpu_finish(void *ctx)
{
    cpu_ctx *c = (cpu_ctx *)ctx;
    c->nonfinite = 0;
    wv_team_stop(c->team);
    c->team = NULL;
}

static wv_status cpu_alloc(void *ctx, size_t bytes, void **out, wv_error *err)
{
    char size[WV_BYTES_TEXT];
    (void)ctx;
    *out = NULL;
    if (g_fail_alloc_countdown > 0 && --g_fail_alloc_countdown == 0)
        return wv_fail(err, WV_ERR_NOMEM, "out of host memory allocating %s (injected failure)",
                       wv_bytes_text(size, sizeof size, bytes));
    *out = malloc(bytes ? bytes : 1);
    if (!*out)
        return wv_fail(err, WV_ERR_NOMEM, "out of host memory allocating %s", wv_bytes_text(size, sizeof size, bytes));
    return WV_OK;
}

static void cpu_release(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static wv_status cpu_alloc_host(void *ctx, size_t bytes, void **out, wv_error *err)
{
    return cpu_alloc(ctx, bytes, out, err);
}

static void cpu_release_host(void *ctx, void *p) { cpu_release(ctx, p); }

static void cpu_zero(void *ctx, void *p, size_t bytes)
{
    (void)ctx;
    memset(p, 0, bytes);
}

static wv_status cpu_upload(void *ctx, void *dst, const float *src, size_t n, wv_error *err)
{
    (void)ctx;
    (void)err;
    memcpy(dst, src, n * sizeof(float));
    return WV_OK;
}

static int64_t cpu_packed_weight_elems(const wv_conv *cv)
{
    return (int64_t)cv->cout * cv->cin * cv->kt * cv->kh * cv->kw;
}

/* [cout][cin][kt][kh][kw] -> [kt][kh][kw][cin][cout]: each tap a row-major cin x cout matrix. */
static void cpu_pack_conv_weight(const float *src, const wv_conv *cv, float *dst)
{
    int taps = cv->kt * cv->kh * cv->kw;
    for (int o = 0; o < cv->cout; o++)
        for (int i = 0; i < cv->cin; i++)
            for (int k = 0; k < taps; k++)
                dst[((int64_t)k * cv->cin + i) * cv->cout + o] = src[((int64_t)o * cv->cin + i) * taps + k];
}

static int64_t row_width(wv_grid g) { return g.w + 2 * g.pad; }

/* Position index of interior pixel (y, x). */
static int64_t pos(wv_grid g, int y, int x) { return (int64_t)(y + g.pad) * row_width(g) + x + g.pad; }

static void zero_ring_frame(float *f, wv_grid g, int C)
{
    int64_t wp = row_width(g);
    if (!g.pad) return;
    memset(f, 0, (size_t)(wp * g.pad * C) * sizeof(float));
    memset(f + (g.h + g.pad) * wp * C, 0, (size_t)(wp * g.pad * C) * sizeof(float));
    for (int y = 0; y < g.h; y++) {
        float *row = f + (y + g.pad) * wp * C;
        memset(row, 0, (size_t)(g.pad * C) * sizeof(float));
        memset(row + (g.pad + g.w) * C, 0, (size_t)(g.pad * C) * sizeof(float));
    }
}

/* x [n][positions(g)][C]: the ring of each frame set to 0, the interior left alone */
static void cpu_zero_ring(void *ctx, void *x, wv_grid g, int C, int n)
{
    int64_t fe = wv_grid_positions(g) * C;
    (void)ctx;
    for (int f = 0; f < n; f++) zero_ring_frame((float *)x + f * fe, g, C);
}

/* lat [z][T][h][w] (any strides and dtype), frame t -> dst [positions(g)][z] = lat * std + mean,
 * its ring zero */
static void cpu_load_latent(void *ctx, const wv_view *lat, int t, const float *mean, const float *std,
                            wv_grid g, void *dst_)
{
    float *dst = (float *)dst_;
    int z = (int)lat->shape[0];
    const char *base = (const char *)lat->data + (int64_t)t * lat->strides[1];
    (void)ctx;
    zero_ring_frame(dst, g, z);
    for (int y = 0; y < g.h; y++)
        for (int x = 0; x < g.w; x++) {
            float *d = dst + pos(g, y, x) * z;
            const char *s = base + y * lat->strides[2] + x * lat->strides[3];
            for (int c = 0; c < z; c++) d[c] = wv_elem_to_f32(s + c * lat->strides[0], lat->dtype) * std[c] + mean[c];
        }
}

static void add_bias_rows(float *y, int64_t rows, int cout, const float *bias, int accumulate)
{
    for (int64_t r = 0; r < rows; r++) {
        float *row = y + r * cout;
        if (accumulate)
            for (int o = 0; o < cout; o++) row[o] += bias[o];
        else
            memcpy(row, bias, (size_t)cout * sizeof(float));
    }
}

/* Output rows a block of taps accumulates into while they stay in cache. */
#define CPU_ROW_BLOCK 1024
/* The fewest rows a block of a small frame is cut to, so that every thread has blocks. */
#define CPU_MIN_ROWS 64

/* Rows per item of M rows split over a team: blocks of CPU_ROW_BLOCK, or smaller where that would
 * leave the team fewer than two items a thread (a small frame), down to CPU_MIN_ROWS. */
static int64_t rows_per_item(int64_t M, const wv_team *team)
{
    int64_t share = (M + 2 * wv_team_size(team) - 1) / (2 * wv_team_size(team));
    return share > CPU_ROW_BLOCK ? CPU_ROW_BLOCK : share < CPU_MIN_ROWS ? CPU_MIN_ROWS : share;
}

/* `rows` rows of y [P][cout], from y on, before the taps add to them: the bias (first == 0), else zero,
 * or kept and the bias added (accumulate). */
static void start_rows(float *y, int64_t rows, int cout, const float *bias, int accumulate)
{
    if (bias)
        add_bias_rows(y, rows, cout, bias, accumulate);
    else if (!accumulate)
        memset(y, 0, (size_t)(rows * cout) * sizeof(float));
}

/* Accumulates every spatial tap of temporal tap dt (weights w_dt) over rows [p, p + rows) of frame
 * src into yrows (the same rows of the output). An even kernel's window starts at its position. */
static void conv_spatial_taps(const wv_conv *cv, const float *w_dt, wv_grid g, const float *src, int64_t p,
                              int64_t rows, float *yrows)
{
    int64_t wp = row_width(g);
    int rh = cv->kh % 2 ? cv->kh / 2 : 0, rw = cv->kw % 2 ? cv->kw / 2 : 0;
    for (int dy = 0; dy < cv->kh; dy++)
        for (int dx = 0; dx < cv->kw; dx++) {
            const float *a = src + (p + (int64_t)(dy - rh) * wp + (dx - rw)) * cv->cin;
            const float *b = w_dt + ((int64_t)dy * cv->kw + dx) * cv->cin * cv->cout;
            wv_sgemm_nn((int)rows, cv->cout, cv->cin, 1.0f, a, cv->cin, b, cv->cout, 1.0f, yrows, cv->cout);
        }
}

/* A conv over a team: the call's arguments, and the rows each item covers. */
typedef struct {
    const wv_conv *cv;
    wv_grid g;
    const void *const *frames;
    int first, last, accumulate;
    float *y;
    int64_t p0, M, rows; /* an odd kernel's items: positions [p0, p0 + M), `rows` each (an even one's: a row of y) */
} conv_job;

/* An even kernel's (the sub-pixel conv's) output row `item`: its rows are shorter than the input's. */
static void conv_valid_row(void *job_, int64_t item)
{
    const conv_job *j = (const conv_job *)job_;
    const wv_conv *cv = j->cv;
    wv_grid go = wv_conv_out_grid(cv, j->g);
    float *yrow = j->y + item * go.w * cv->cout;
    start_rows(yrow, go.w, cv->cout, (const float *)cv->bias, j->accumulate);
    conv_spatial_taps(cv, (const float *)cv->weight, j->g, (const float *)j->frames[0], item * row_width(j->g), go.w,
                      yrow);
}

/* An odd kernel's block `item` of rows: every tap while they are in cache. */
static void conv_row_block(void *job_, int64_t item)
{
    const conv_job *j = (const conv_job *)job_;
    const wv_conv *cv = j->cv;
    int64_t tap_elems = (int64_t)cv->kh * cv->kw * cv->cin * cv->cout;
    int64_t p = j->p0 + item * j->rows, rows = j->p0 + j->M - p < j->rows ? j->p0 + j->M - p : j->rows;
    float *yrows = j->y + p * cv->cout;
    start_rows(yrows, rows, cv->cout, j->first == 0 ? (const float *)cv->bias : NULL, j->accumulate);
    for (int dt = j->first; dt <= j->last; dt++)
        conv_spatial_taps(cv, (const float *)cv->weight + dt * tap_elems, j->g, (const float *)j->frames[dt], p, rows,
                          yrows);
}

/* Every causal conv runs its taps apart: each tap reads its own frame, wherever it is. */
static wv_cache_layout cpu_cache_layout(const wv_conv *cv)
{
    (void)cv;
    return WV_CACHE_TAPS;
}

/* Its loops index in 64 bits: no operand limit. */
static int64_t cpu_conv_operand(void *ctx, const wv_conv *cv)
{
    (void)ctx, (void)cv;
    return 0;
}

/* y[P][cout] (+)= (bias if first == 0) + temporal taps [first, last], tap dt reading frames[dt].
 * Spatial kernels need a padded grid. The output goes in blocks of rows, each taking every tap
 * while it is in cache. */
static void cpu_conv(void *ctx, const wv_conv *cv, wv_grid g, const void *const *frames, int first, int last,
                     void *y, int accumulate)
{
    conv_job j = {cv, g, frames, first, last, accumulate, (float *)y, 0, 0, 0};
    int spatial = cv->kh > 1 || cv->kw > 1;
    wv_team *team = team_of(ctx);
    if (cv->kh % 2 == 0) {
        wv_team_run(team, wv_conv_out_grid(cv, g).h, conv_valid_row, &j);
        return;
    }
    j.p0 = spatial ? pos(g, 0, 0) : 0;
    j.M = spatial ? pos(g, g.h - 1, g.w - 1) - j.p0 + 1 : wv_grid_positions(g);
    j.rows = rows_per_item(j.M, team);
    wv_team_run(team, (j.M + j.rows - 1) / j.rows, conv_row_block, &j);
}

static float silu(float v) { return v / (1.0f + expf(-v)); }

typedef struct {
    const float *x, *gamma;
    wv_grid gx, gy;
    float *y;
    int C, use_silu;
} rms_norm_job;

/* Pixel row `item` (frame item / gx.h, row item % gx.h) of an rms_norm. */
static void rms_norm_row(void *job_, int64_t item)
{
    const rms_norm_job *j = (const rms_norm_job *)job_;
    int C = j->C, f = (int)(item / j->gx.h), yy = (int)(item % j->gx.h);
    float root_c = sqrtf((float)C);
    const float *xf = j->x + f * wv_grid_positions(j->gx) * C;
    float *yf = j->y + f * wv_grid_positions(j->gy) * C;
    for (int xx = 0; xx < j->gx.w; xx++) {
        const float *s = xf + pos(j->gx, yy, xx) * C;
        float *d = yf + pos(j->gy, yy, xx) * C;
        double ss = 0.0;
        float scale;
        for (int c = 0; c < C; c++) ss += (double)s[c] * s[c];
        scale = root_c / (float)fmax(sqrt(ss), WV_RMS_EPS);
        for (int c = 0; c < C; c++) {
            float v = s[c] * scale * j->gamma[c];
            d[c] = j->use_silu ? silu(v) : v;
        }
    }
}

/* x [n][positions(gx)][C] -> y [n][positions(gy)][C]: each interior pixel's C values scaled to an RMS
 * of 1, times gamma [C], SiLU'd if use_silu; y's ring zero */
static void cpu_rms_norm(void *ctx, const void *x, wv_grid gx, void *y, wv_grid gy, int C, int n, const void *gamma,
                         int use_silu)
{
    rms_norm_job j = {(const float *)x, (const float *)gamma, gx, gy, (float *)y, C, use_silu};
    for (int f = 0; f < n; f++) zero_ring_frame(j.y + f * wv_grid_positions(gy) * C, gy, C);
    wv_team_run(team_of(ctx), (int64_t)n * gx.h, rms_norm_row, &j);
}

/* src [n][positions(gs)][C], its interior from (oy, ox) -> dst [n][positions(gd)][C], gd's interior */
static void cpu_copy_region(void *ctx, const void *src_, wv_grid gs, int oy, int ox, void *dst_, wv_grid gd,
                            int C, int n)
{
    const float *src = (const float *)src_;
    float *dst = (float *)dst_;
    int64_t fs = wv_grid_positions(gs) * C, fd = wv_grid_positions(gd) * C;
    (void)ctx;
    for (int f = 0; f < n; f++)
        for (int y = 0; y < gd.h; y++)
            memcpy(dst + f * fd + pos(gd, y, 0) * C, src + f * fs + pos(gs, y + oy, ox) * C,
                   (size_t)gd.w * (size_t)C * sizeof(float));
}

/* src [n][cstride], channels [coff, coff + C) -> dst [n][C] */
static void cpu_copy_channels(void *ctx, const void *src, int cstride, int coff, void *dst, int C, int64_t n)
{
    (void)ctx;
    for (int64_t p = 0; p < n; p++)
        memcpy((float *)dst + p * C, (const float *)src + p * cstride + coff, (size_t)C * sizeof(float));
}

/* src [positions(gs)][4][C] (a sub-pixel conv's phases) -> dst [positions(gd)][C], the x2 frame's pixels
 * from (dy0, dx0); see the op table for which phase each reads */
static void cpu_pixel_shuffle(void *ctx, const void *src_, wv_grid gs, int sy0, int sx0, void *dst_, wv_grid gd,
                              int dy0, int dx0, int C)
{
    const float *src = (const float *)src_;
    float *dst = (float *)dst_;
    (void)ctx;
    for (int py = 0; py < gd.h; py++) {
        int Y = dy0 + py, a = Y % 2;
        for (int px = 0; px < gd.w; px++) {
            int X = dx0 + px, b = X % 2;
            const float *s = src + pos(gs, Y / 2 - sy0 + a, X / 2 - sx0 + b) * WV_SUBPIXEL_PHASES * C + (2 * a + b) * C;
            memcpy(dst + pos(gd, py, px) * C, s, (size_t)C * sizeof(float));
        }
    }
}

static void softmax_rows(float *s, int rows, int N)
{
    for (int r = 0; r < rows; r++) {
        float *row = s + (int64_t)r * N, mx = row[0], sum = 0.0f;
        for (int j = 1; j < N; j++) mx = row[j] > mx ? row[j] : mx;
        for (int j = 0; j < N; j++) {
            row[j] = expf(row[j] - mx);
            sum += row[j];
        }
        for (int j = 0; j < N; j++) row[j] /= sum;
    }
}

typedef struct {
    const float *qkv;
    float *out, *scores;
    int N, C;
    int q0, r, rows; /* the chunk: queries [q0, q0 + r); items of `rows` of them, each its rows of scores */
} attention_job;

/* Queries [q0 + item rows, + rows) of the chunk, in their rows of the scores. */
static void attention_rows(void *job_, int64_t item)
{
    const attention_job *j = (const attention_job *)job_;
    int N = j->N, C = j->C, first = (int)item * j->rows;
    int r = j->r - first < j->rows ? j->r - first : j->rows, q = j->q0 + first;
    float *scores = j->scores + (int64_t)first * N;
    wv_sgemm_nt(r, N, C, 1.0f / sqrtf((float)C), j->qkv + (int64_t)q * 3 * C, 3 * C, j->qkv + C, 3 * C, 0.0f, scores,
                N);
    softmax_rows(scores, r, N);
    wv_sgemm_nn(r, C, N, 1.0f, scores, N, j->qkv + 2 * C, 3 * C, 0.0f, j->out + (int64_t)q * C, C);
}

/* qkv [N][3][C] -> out [N][C] = softmax(q k^T / sqrt(C)) v, `rows` queries at a time; scores [rows][N] */
static void cpu_attention(void *ctx, const void *qkv, void *out, int N, int C, void *scores, int rows)
{
    attention_job j = {(const float *)qkv, (float *)out, (float *)scores, N, C, 0, 0, 0};
    int threads = wv_team_size(team_of(ctx));
    for (j.q0 = 0; j.q0 < N; j.q0 += rows) {
        j.r = N - j.q0 < rows ? N - j.q0 : rows;
        j.rows = (j.r + threads - 1) / threads;
        wv_team_run(team_of(ctx), (j.r + j.rows - 1) / j.rows, attention_rows, &j);
    }
}

/* src [positions(gs)][3], an h x w block from interior (sy, sx) -> out [..][out_w][3] at (oy, ox):
 * clamped and mapped to [0, 1] (as float32 or uint8), or raw */
static void cpu_write_output(void *ctx, const void *src_, wv_grid gs, int sy, int sx, int h, int w, void *out,
                             int out_w, int oy, int ox, wv_output_mode mode)
{
    const float *src = (const float *)src_;
    int finite = 1;
    for (int y = 0; y < h; y++) {
        const float *s = src + pos(gs, y + sy, sx) * WV_RGB;
        int64_t o = ((int64_t)(oy + y) * out_w + ox) * WV_RGB;
        for (int i = 0; i < w * WV_RGB; i++) {
            float v = s[i] < -1.0f ? -1.0f : s[i] > 1.0f ? 1.0f : s[i]; /* NaN stays NaN */
            finite &= s[i] == s[i] && (mode != WV_OUT_RAW || !isinf(s[i]));
            v = (v + 1.0f) * 0.5f;
            if (mode == WV_OUT_U8) /* a NaN (reported by sync) converts to no integer */
                ((uint8_t *)out)[o + i] = v == v ? (uint8_t)(v * 255.0f + 0.5f) : 0;
            else
                ((float *)out)[o + i] = mode == WV_OUT_RAW ? s[i] : v;
        }
    }
    if (!finite) ((cpu_ctx *)ctx)->nonfinite = 1;
}

static wv_status cpu_sync(void *ctx, wv_error *err)
{
    if (((cpu_ctx *)ctx)->nonfinite) return wv_fail_nonfinite_output(err, WV_F32);
    return WV_OK;
}

/* Host memory, no weight scratch, workspace, output staging, trunk output on the host or operand
 * limit: those fields are 0. */
static const wv_backend CPU_BACKEND = {
    .name = "cpu",
    .act_dtype = WV_F32,
    .act_bytes = sizeof(float),
    .param_bytes = sizeof(float),
    .score_bytes = sizeof(float),
    .ctx_create = cpu_ctx_create,
    .ctx_destroy = cpu_ctx_destroy,
    .fail_nth_alloc = cpu_fail_nth_alloc,
#define WV_OP_INIT(op, ret, args) .op = cpu_##op,
    WV_BACKEND_OPS(WV_OP_INIT)
#undef WV_OP_INIT
};

const wv_backend *wv_backend_cpu(void) { return &CPU_BACKEND; }
