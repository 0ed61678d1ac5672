/* The CUDA kernels compiled for the host (cuda_on_cpu/) and run against the CPU backend's ops: their
 * index arithmetic checked on any machine, GPU or not, in CI. A kernel whose threads never cooperate
 * runs as one thread; one whose lanes shuffle runs its whole grid, as the backend launches it, with a
 * host thread per GPU thread. What the GPU itself adds (vector loads' alignment, the launch) is
 * checked by test_backend_ops.cu where there is one. Exit status 0 when every check passes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wv_internal.h"
#include "wv_kernels.cuh"

static int g_checks, g_failures;
static uint32_t g_rng = 777u;

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng = g_rng * 1664525u + 1013904223u;
    return (float)(g_rng >> 8) / (float)(1u << 23) - 1.0f;
}

/* n frames of grid g, C channels: random interior, zero ring. */
static float *rand_frames(wv_grid g, int C, int n)
{
    int64_t P = wv_grid_positions(g), wp = g.w + 2 * g.pad;
    float *x = (float *)calloc((size_t)(n * P * C), sizeof(float));
    for (int f = 0; f < n; f++)
        for (int64_t p = 0; p < P; p++) {
            int y = (int)(p / wp) - g.pad, xx = (int)(p % wp) - g.pad;
            if (y >= 0 && y < g.h && xx >= 0 && xx < g.w)
                for (int c = 0; c < C; c++) x[(f * P + p) * C + c] = frand();
        }
    return x;
}

template <typename T> static T to_t(float v);
template <> float to_t<float>(float v) { return v; }
template <> __nv_bfloat16 to_t<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> static float from_t(T v);
template <> float from_t<float>(float v) { return v; }
template <> float from_t<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

/* Rounds values to what T holds, so both sides start from the same numbers. */
template <typename T> static void round_to(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = from_t<T>(to_t<T>(x[i]));
}

template <typename T> static T *as_t(const float *x, size_t n)
{
    T *t = (T *)malloc(n * sizeof(T));
    for (size_t i = 0; i < n; i++) t[i] = to_t<T>(x[i]);
    return t;
}

/* Largest difference over the interior of one frame, relative to the largest |ref| there. */
static void check(const char *name, wv_grid g, int C, const float *ref, const float *got, double tol)
{
    double diff = 0.0, scale = 1e-6;
    int64_t wp = g.w + 2 * g.pad;
    for (int y = 0; y < g.h; y++)
        for (int x = 0; x < g.w; x++)
            for (int c = 0; c < C; c++) {
                int64_t i = ((int64_t)(y + g.pad) * wp + x + g.pad) * C + c;
                scale = fmax(scale, fabs(ref[i]));
                double d = fabs((double)ref[i] - got[i]);
                diff = fmax(diff, d == d ? d : INFINITY); /* a NaN fails (fmax would drop it) */
            }
    g_checks++;
    if (!(diff / scale <= tol)) g_failures++;
    printf("%-4s %-52s max|diff| %.3g (of max|ref| %.3g)\n", diff / scale <= tol ? "ok" : "FAIL", name, diff, scale);
}

/* The CPU backend's causal conv: y (+)= bias + conv of frames t-2, t-1, t (consecutive from `frames`),
 * the reference. */
static void cpu_causal_conv(const float *w_oidhw, const float *bias, int cin, int cout, int k, wv_grid g,
                            const float *frames, float *y, int accumulate)
{
    const wv_backend *be = wv_backend_cpu();
    wv_conv cv = {NULL, (void *)bias, cin, cout, 3, k, k, 0, 0, 0, 0};
    int64_t fe = wv_grid_positions(g) * cin;
    const void *taps[WV_MAX_TAPS] = {frames, frames + fe, frames + 2 * fe};
    float *packed = (float *)calloc((size_t)be->packed_weight_elems(&cv), sizeof(float));
    be->pack_conv_weight(w_oidhw, &cv, packed);
    cv.weight = packed;
    be->conv(NULL, &cv, g, taps, 0, 2, y, accumulate);
    free(packed);
}

/* [cout][cin][kt][kh][kw] -> [cout][kt][kh][kw][cin], the layout the CUDA backend packs a 3-d conv in. */
static float *ktrsc(const float *w, int cin, int cout, int taps)
{
    float *d = (float *)malloc(sizeof(float) * (size_t)cout * cin * taps);
    for (int o = 0; o < cout; o++)
        for (int i = 0; i < cin; i++)
            for (int t = 0; t < taps; t++) d[((int64_t)o * taps + t) * cin + i] = w[((int64_t)o * cin + i) * taps + t];
    return d;
}

/* rotate_taps_kernel: weights turned by r, read against a ring whose oldest frame is in slot r
 * (frame t-2 in slot r, t-1 in r+1, t in r+2, mod 3) slot by slot, give the time-ordered conv. The
 * 3-d convolution over the slots is a naive loop here (cuDNN's on the GPU). */
static void test_rotation(int cin, int cout, int k, int r)
{
    wv_grid g = {4, 6, k / 2};
    int64_t P = wv_grid_positions(g), wp = g.w + 2 * g.pad, space = (int64_t)k * k, block = space * cin;
    int64_t nw = (int64_t)cout * cin * 3 * space;
    float *w = (float *)malloc(sizeof(float) * nw), *bias = (float *)malloc(sizeof(float) * cout);
    float *frames = rand_frames(g, cin, 3), *ring = (float *)malloc(sizeof(float) * 3 * P * cin);
    float *ref = (float *)calloc((size_t)(P * cout), sizeof(float)), *got = (float *)calloc((size_t)(P * cout), 4);
    float *packed, *turned = (float *)malloc(sizeof(float) * nw);
    char name[96];
    for (int64_t i = 0; i < nw; i++) w[i] = frand() * 0.2f;
    for (int o = 0; o < cout; o++) bias[o] = frand();
    cpu_causal_conv(w, bias, cin, cout, k, g, frames, ref, 0);
    for (int dt = 0; dt < 3; dt++) memcpy(ring + ((r + dt) % 3) * P * cin, frames + dt * P * cin, sizeof(float) * P * cin);
    packed = ktrsc(w, cin, cout, 3 * (int)space);
    rotate_taps_kernel<float>(packed, turned, cout, 3, block, r);
    for (int y = 0; y < g.h; y++)
        for (int x = 0; x < g.w; x++)
            for (int o = 0; o < cout; o++) {
                float acc = bias[o];
                for (int slot = 0; slot < 3; slot++)
                    for (int64_t t = 0; t < space; t++) {
                        int64_t p = (int64_t)(y + g.pad + t / k - k / 2) * wp + x + g.pad + t % k - k / 2;
                        for (int c = 0; c < cin; c++)
                            acc += turned[((int64_t)o * 3 + slot) * block + t * cin + c] * ring[(slot * P + p) * cin + c];
                    }
                got[((int64_t)(y + g.pad) * wp + x + g.pad) * cout + o] = acc;
            }
    snprintf(name, sizeof name, "rotate_taps %d->%d 3x%dx%d, oldest frame in slot %d", cin, cout, k, k, r);
    check(name, g, cout, ref, got, 1e-5);
    free(w), free(bias), free(frames), free(ring), free(ref), free(got), free(packed), free(turned);
}

/* direct_conv_kernel (cuDNN's fallback) on one frame, kt = 1, against the CPU conv (no bias: the
 * backend adds it in a second pass): a centred 3x3 and an even 2x2 (the sub-pixel conv's window). */
static void test_direct(int cin, int cout, int k, int accumulate)
{
    const wv_backend *be = wv_backend_cpu();
    wv_grid g = {5, 6, 1};
    wv_conv cv = {NULL, NULL, cin, cout, 1, k, k, k % 2 == 0, -1, 0, 0};
    wv_grid go = wv_conv_out_grid(&cv, g);
    int64_t Po = wv_grid_positions(go), nw = (int64_t)cout * cin * k * k;
    float *w = (float *)malloc(sizeof(float) * nw), *x = rand_frames(g, cin, 1), *y0 = rand_frames(go, cout, 1);
    float *ref = (float *)malloc(sizeof(float) * Po * cout), *got = (float *)malloc(sizeof(float) * Po * cout);
    float *packed = (float *)calloc((size_t)be->packed_weight_elems(&cv), sizeof(float)), *wk;
    const void *frames[1] = {x};
    char name[96];
    for (int64_t i = 0; i < nw; i++) w[i] = frand() * 0.2f;
    memcpy(ref, y0, sizeof(float) * Po * cout);
    memcpy(got, y0, sizeof(float) * Po * cout);
    be->pack_conv_weight(w, &cv, packed);
    cv.weight = packed;
    be->conv(NULL, &cv, g, frames, 0, 0, ref, accumulate);
    wk = ktrsc(w, cin, cout, k * k);
    direct_conv_kernel<float>(x, wk, got, 1, 1, k, k, cin, cout, g.h + 2, g.w + 2, accumulate);
    snprintf(name, sizeof name, "direct_conv %d->%d %dx%d%s", cin, cout, k, k, accumulate ? " +=" : "");
    check(name, go, cout, ref, got, 1e-5);
    free(w), free(x), free(y0), free(ref), free(got), free(packed), free(wk);
}

/* rms_norm_vec_kernel, launched as the backend launches it (rms_norm_vec_launch) but with `threads` a
 * block, against the CPU op: n frames from a grid with one ring to one with another, every position
 * of y (its ring zeroed over what was there) compared. `tiny` (0: none) scales one pixel's values
 * down to a norm far under 1e-6 yet over WV_RMS_EPS (1e-12): it is normalized like any other, the
 * floor applying to the norm, not to the sum of squares. */
template <typename T>
static void test_rms_norm(int C, int silu, int pad_x, int pad_y, int n, int threads, const char *type,
                          float tiny = 0.0f)
{
    const wv_backend *be = wv_backend_cpu();
    wv_grid gx = {5, 7, pad_x}, gy = {5, 7, pad_y}, all = {n * (gy.h + 2 * pad_y), gy.w + 2 * pad_y, 0};
    int64_t Px = wv_grid_positions(gx), Py = wv_grid_positions(gy);
    float *x = rand_frames(gx, C, n), *gamma = (float *)malloc(sizeof(float) * C);
    float *ref = (float *)malloc(sizeof(float) * n * Py * C), *got = (float *)malloc(sizeof(float) * n * Py * C);
    int lanes_log2 = -1;
    unsigned row_blocks = 0;
    char name[128];
    for (int c = 0; c < C; c++) gamma[c] = 1.0f + 0.5f * frand();
    for (int64_t i = 0; i < n * Py * C; i++) got[i] = frand(); /* what y held before: the ring must be zeroed */
    if (tiny != 0.0f) /* interior pixel (1, 2) of frame 0 */
        for (int c = 0; c < C; c++) x[((1 + gx.pad) * (gx.w + 2 * gx.pad) + 2 + gx.pad) * C + c] *= tiny;
    round_to<T>(x, n * Px * C), round_to<T>(gamma, C);
    be->rms_norm(NULL, x, gx, ref, gy, C, n, gamma, silu);
    if (rms_norm_vec_launch(gy, n, C, (int)sizeof(T), threads, &lanes_log2, &row_blocks)) {
        T *tx = as_t<T>(x, n * Px * C), *tg = as_t<T>(gamma, C), *ty = as_t<T>(got, n * Py * C);
        launch_on_cpu({row_blocks, (unsigned)(gy.h + 2 * gy.pad), (unsigned)n}, {(unsigned)threads, 1, 1},
                      [&] { rms_norm_vec_kernel<T>(tx, gx, ty, gy, C, tg, silu, lanes_log2); });
        for (int64_t i = 0; i < n * Py * C; i++) got[i] = from_t<T>(ty[i]);
        free(tx), free(tg), free(ty);
    }
    snprintf(name, sizeof name, "rms_norm_vec C = %d%s, %d frames, pad %d -> %d, %d lanes, %u blocks a row %s%s", C,
             silu ? " silu" : "", n, pad_x, pad_y, 1 << lanes_log2, row_blocks, type,
             tiny != 0.0f ? ", a tiny pixel" : "");
    check(name, all, C, ref, got, type[0] == 'f' ? 1e-5 : 1e-2);
    free(x), free(gamma), free(ref), free(got);
}

/* softmax_rows_kernel as the backend launches it (a block of 512 threads a row: block_reduce's
 * warps meet in shared memory) against the plain sums, rows of N scores wider and narrower than the
 * block; scores of 8 * [-1, 1) moved by `shift`: at 100, exp of a score overflows float, so only a
 * kernel subtracting each row's largest (the max reduction) passes. */
template <typename T> static void test_softmax(int rows, int N, float shift, const char *type)
{
    wv_grid all = {rows, N, 0};
    float *scores = (float *)malloc(sizeof(float) * rows * N), *ref = (float *)malloc(sizeof(float) * rows * N);
    float *got = (float *)malloc(sizeof(float) * rows * N);
    T *probs = (T *)malloc(sizeof(T) * rows * N);
    char name[96];
    for (int i = 0; i < rows * N; i++) scores[i] = 8.0f * frand() + shift;
    for (int r = 0; r < rows; r++) {
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < N; j++) mx = fmax(mx, scores[r * N + j]);
        for (int j = 0; j < N; j++) sum += exp(scores[r * N + j] - mx);
        for (int j = 0; j < N; j++) ref[r * N + j] = (float)(exp(scores[r * N + j] - mx) / sum);
    }
    launch_on_cpu({(unsigned)rows, 1, 1}, {512, 1, 1}, [&] { softmax_rows_kernel<T>(scores, probs, N); });
    for (int i = 0; i < rows * N; i++) got[i] = from_t<T>(probs[i]);
    snprintf(name, sizeof name, "softmax_rows %d rows of %d, shifted by %g %s", rows, N, shift, type);
    check(name, all, 1, ref, got, type[0] == 'f' ? 1e-5 : 1e-2);
    free(scores), free(ref), free(got), free(probs);
}

/* A count of floats in units of U (whole units). */
template <typename U> static int units(int floats) { return (int)(floats * sizeof(float) / sizeof(U)); }

/* pixel_shuffle_kernel moving units of U against the CPU op, a region starting on odd pixels. The
 * data are float32 either way: the kernel only moves bytes. */
template <typename U> static void test_pixel_shuffle(int C, const char *unit)
{
    const wv_backend *be = wv_backend_cpu();
    wv_grid gs = {5, 6, 0}, gd = {6, 7, 1};
    int sy0 = 2, sx0 = 1, dy0 = 5, dx0 = 3;
    int64_t Pd = wv_grid_positions(gd);
    float *src = rand_frames(gs, 4 * C, 1), *ref = rand_frames(gd, C, 1), *got = (float *)malloc(sizeof(float) * Pd * C);
    char name[96];
    memcpy(got, ref, sizeof(float) * Pd * C);
    be->pixel_shuffle(NULL, src, gs, sy0, sx0, ref, gd, dy0, dx0, C);
    pixel_shuffle_kernel<U>((const U *)src, gs, sy0, sx0, (U *)got, gd, dy0, dx0, units<U>(C));
    snprintf(name, sizeof name, "pixel_shuffle C = %d in %s", C, unit);
    check(name, gd, C, ref, got, 0.0);
    free(src), free(ref), free(got);
}

/* copy_channels_kernel in units of U against the CPU op: channels [coff, coff + C) of 3 C-wide
 * positions (in floats: C = 8, coff = 8 are whole 16-byte vectors). The op knows no grid: it copies
 * every one of the P positions, so src and dst are random at every position (a ring of zeros on
 * both sides would hide a position skipped) and every position is compared. */
template <typename U> static void test_copy_channels(int C, int coff, const char *unit)
{
    const wv_backend *be = wv_backend_cpu();
    wv_grid g = {4, 5, 1};
    int64_t P = wv_grid_positions(g);
    wv_grid all = {1, (int)P, 0}; /* the P positions, each compared */
    float *src = rand_frames(all, 3 * C, 1), *ref = rand_frames(all, C, 1), *got = (float *)malloc(sizeof(float) * P * C);
    char name[96];
    memcpy(got, ref, sizeof(float) * P * C);
    be->copy_channels(NULL, src, 3 * C, coff, ref, C, P);
    copy_channels_kernel<U>((const U *)src, units<U>(3 * C), units<U>(coff), (U *)got, units<U>(C), 0, units<U>(C), P);
    snprintf(name, sizeof name, "copy_channels [%d, %d) of %d in %s", coff, coff + C, 3 * C, unit);
    check(name, all, C, ref, got, 0.0);
    free(ref), free(got);
    /* the other way (a paired causal conv's new frame into its cache's half): C packed channels into
     * [coff, coff + C) of 3 C-wide positions, the channels around them compared too */
    ref = rand_frames(all, 3 * C, 1), got = (float *)malloc(sizeof(float) * P * 3 * C);
    memcpy(got, ref, sizeof(float) * P * 3 * C);
    copy_channels_kernel<U>((const U *)src, units<U>(C), 0, (U *)got, units<U>(3 * C), units<U>(coff), units<U>(C), P);
    for (int64_t p = 0; p < P; p++) memcpy(ref + p * 3 * C + coff, src + p * C, sizeof(float) * C);
    snprintf(name, sizeof name, "copy_channels into [%d, %d) of %d in %s", coff, coff + C, 3 * C, unit);
    check(name, all, 3 * C, ref, got, 0.0);
    free(src), free(ref), free(got);
}

/* The stand-in's float -> bf16 rounds as the GPU does, a NaN (whatever its payload) staying one: the
 * backend's output check must see the NaNs a real decode would make. */
static void test_bf16_rounding(void)
{
    static const uint32_t nans[] = {0x7fc00000u, 0x7fffffffu, 0xffffffffu, 0x7f800001u};
    int ok = __bfloat162float(__float2bfloat16_rn(1.0f + 1.0f / 256)) == 1.0f && /* ties to even */
             __bfloat162float(__float2bfloat16_rn(1.0f + 3.0f / 256)) == 1.0f + 1.0f / 64 &&
             isinf(__bfloat162float(__float2bfloat16_rn(INFINITY)));
    for (int i = 0; i < 4; i++) {
        float f;
        memcpy(&f, &nans[i], 4);
        ok = ok && isnan(__bfloat162float(__float2bfloat16_rn(f)));
    }
    g_checks++;
    if (!ok) g_failures++;
    printf("%-4s float -> bf16: ties to even, Inf, NaNs of any payload\n", ok ? "ok" : "FAIL");
}

int main(void)
{
    test_bf16_rounding();
    for (int r = 0; r < 3; r++) {
        test_rotation(16, 24, 3, r);
        test_rotation(24, 48, 1, r); /* a time conv */
    }
    test_direct(3, 5, 3, 0);
    test_direct(5, 6, 2, 0);
    test_direct(4, 8, 2, 1);
    test_pixel_shuffle<float>(3, "floats");
    test_pixel_shuffle<uint16_t>(5, "16-bit halves");
    test_pixel_shuffle<uint4>(8, "16-byte vectors");
    test_copy_channels<float>(3, 3, "floats");
    test_copy_channels<uint16_t>(5, 10, "16-bit halves");
    test_copy_channels<uint4>(8, 8, "16-byte vectors");
    test_rms_norm<__nv_bfloat16>(96, 1, 0, 1, 2, 64, "bf16");  /* the 720p frame's width: 4 lanes of 3 vectors */
    test_rms_norm<__nv_bfloat16>(96, 1, 1, 1, 1, 32, "bf16");  /* 8 positions a block: the row's last block part-filled */
    test_rms_norm<__nv_bfloat16>(384, 1, 1, 0, 1, 64, "bf16"); /* 16 lanes, 2 blocks a row */
    test_rms_norm<__nv_bfloat16>(8, 0, 1, 1, 2, 32, "bf16");   /* a vector a position, a lane each */
    test_rms_norm<__nv_bfloat16>(1024, 0, 0, 2, 1, 64, "bf16"); /* the most: 32 lanes of 4 vectors */
    test_rms_norm<float>(96, 1, 0, 1, 3, 256, "fp32");          /* the backend's block */
    test_rms_norm<float>(20, 0, 1, 1, 1, 64, "fp32");
    test_rms_norm<float>(20, 0, 1, 1, 1, 64, "fp32", 1e-8f);
    test_rms_norm<__nv_bfloat16>(96, 1, 1, 1, 1, 64, "bf16", 1e-8f);
    test_softmax<float>(3, 1000, 0.0f, "fp32");
    test_softmax<__nv_bfloat16>(2, 37, 0.0f, "bf16");
    test_softmax<float>(2, 700, 100.0f, "fp32");
    test_softmax<__nv_bfloat16>(2, 37, 100.0f, "bf16");
    printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
    return g_failures ? 1 : 0;
}
