/* Every op of the CUDA backend against the CPU backend, on random inputs: the same float inputs go
 * to both tables, each runs the op, the results are compared (the way ggml's test-backend-ops checks
 * its backends). One line per case; exit 0 when all pass, 77 when there is no GPU to run on.
 * WV_OPS_DTYPE=float32 (float16, bfloat16) tests that activation type alone: gpu_check's racecheck
 * runs a type per process, the 16-bit ones with every conv on the direct kernel (under racecheck,
 * cuDNN's 16-bit engines fault, and every later case fails with the lost context). Built and run by
 * tests/c/backend_ops.sh. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wv_backend.h"
#include "wv_cuda.h"
#ifdef WV_CUDA_STUB /* backend_ops_on_cpu.sh: what the stand-in saw wrong fails the run */
#include "cuda_stub.h"
#endif

static int g_cases, g_failures;
static const char *g_variant = ""; /* " direct": the CUDA side runs every conv on the direct kernel */
static uint32_t g_rng = 2024u;

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng = g_rng * 1664525u + 1013904223u;
    return (float)(g_rng >> 8) / (float)(1u << 23) - 1.0f;
}

static float *rand_floats(size_t n)
{
    float *p = (float *)malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

/* One backend under test with its context. */
typedef struct {
    const wv_backend *be;
    void *ctx;
} side;

static void *put(side *s, const float *h, size_t n)
{
    void *d = NULL;
    wv_error err;
    if (s->be->alloc(s->ctx, n * s->be->act_bytes, &d, &err) || s->be->upload(s->ctx, d, h, n, &err)) {
        fprintf(stderr, "setup failed: %s\n", err.msg);
        exit(1);
    }
    return d;
}

/* Backend memory -> host floats (the CPU backend's memory is host float32 already). */
static void get(side *s, const void *d, float *h, size_t n)
{
    wv_error err;
    if (s->be->sync(s->ctx, &err)) {
        fprintf(stderr, "op failed: %s\n", err.msg);
        memset(h, 0, n * sizeof(float));
        return;
    }
    if (!strcmp(s->be->name, "cpu")) {
        memcpy(h, d, n * sizeof(float));
        return;
    }
    if (s->be->act_dtype == WV_F32) {
        cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost);
        return;
    }
    uint16_t *tmp = (uint16_t *)malloc(n * 2);
    cudaMemcpy(tmp, d, n * 2, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++) h[i] = wv_elem_to_f32(&tmp[i], s->be->act_dtype);
    free(tmp);
}

/* Compares the elements where mask (NULL: all) is set; tolerance relative to the largest |ref|. */
static void check(const char *name, const wv_backend *be, const float *ref, const float *got, size_t n,
                  const char *mask)
{
    double scale = 1e-6, diff = 0.0, tol = be->act_dtype == WV_F32 ? 1e-4 : 3e-2;
    for (size_t i = 0; i < n; i++)
        if (!mask || mask[i]) {
            double d = fabs((double)ref[i] - got[i]);
            scale = fmax(scale, fabs(ref[i]));
            diff = fmax(diff, d == d ? d : INFINITY); /* a NaN fails (fmax would drop it) */
        }
    g_cases++;
    if (!(diff / scale <= tol)) g_failures++;
    printf("%-4s %-48s %-5s%s max|diff| %.3g (of max|ref| %.3g)\n", diff / scale <= tol ? "ok" : "FAIL", name,
           wv_dtype_name(be->act_dtype), g_variant, diff, scale);
}

/* Interior mask of n frames of grid g with C channels. */
static char *interior(wv_grid g, int C, int n)
{
    int64_t P = wv_grid_positions(g), wp = g.w + 2 * g.pad;
    char *m = (char *)calloc((size_t)(n * P * C), 1);
    for (int f = 0; f < n; f++)
        for (int64_t p = 0; p < P; p++) {
            int y = (int)(p / wp) - g.pad, x = (int)(p % wp) - g.pad;
            if (y >= 0 && y < g.h && x >= 0 && x < g.w) memset(m + (f * P + p) * C, 1, (size_t)C);
        }
    return m;
}

/* A padded frame sequence with random interior and zero ring. */
static float *rand_frames(wv_grid g, int C, int n)
{
    int64_t N = n * wv_grid_positions(g) * C;
    float *x = rand_floats((size_t)N);
    char *m = interior(g, C, n);
    for (int64_t i = 0; i < N; i++)
        if (!m[i]) x[i] = 0.0f;
    free(m);
    return x;
}

/* A decode call around ops that take their arena buffers from one (the workspace; the causal convs'
 * weight scratch, where the backend asks for it): a one-element host latent, no output. */
typedef struct {
    wv_call call;
    wv_view lat;
    float lat_data[1];
} test_call;

static void begin_call(side *s, test_call *t, size_t weight_scratch_bytes)
{
    wv_error err;
    wv_status st;
    memset(t, 0, sizeof *t);
    t->lat.data = t->lat_data;
    t->lat.ndim = 4, t->lat.shape[0] = t->lat.shape[1] = t->lat.shape[2] = t->lat.shape[3] = 1;
    t->lat.strides[0] = t->lat.strides[1] = t->lat.strides[2] = t->lat.strides[3] = 4;
    t->lat.dtype = WV_F32;
    t->call.latents = &t->lat;
    t->call.workspace_bytes = 1 << 20;
    st = s->be->alloc(s->ctx, t->call.workspace_bytes, &t->call.workspace, &err);
    if (!st && s->be->causal_weight_scratch) {
        t->call.weight_scratch_bytes = weight_scratch_bytes;
        st = s->be->alloc(s->ctx, weight_scratch_bytes, &t->call.weight_scratch, &err);
    }
    if (!st) st = s->be->begin(s->ctx, &t->call, &err);
    if (st) {
        fprintf(stderr, "setup failed: %s\n", err.msg);
        exit(1);
    }
}

static void end_call(side *s, test_call *t)
{
    s->be->finish(s->ctx);
    s->be->release(s->ctx, t->call.workspace);
    if (t->call.weight_scratch) s->be->release(s->ctx, t->call.weight_scratch);
}

/* A conv, and for causal ones three steps of the driver's protocol over a cache kept as wv_ring says
 * (each step's output compared): with the taps apart, tap 0 runs before the new frame goes into
 * its slot; a ring of three frames takes the new one in its free slot and turns through its three
 * orders; a cache the backend keeps (WV_CACHE_KEPT) gets the new frame from elsewhere, and its two
 * orders. The backends may keep their caches differently, so the cache is checked through what it
 * is for rather than its layout (a kept one's layout is the backend's: both sides' caches then start
 * as zeros, alike in any layout, and by the third step every tap reads frames the protocol put
 * there). Without accumulate, y starts as NaN: a conv that overwrites y must
 * not read it (arena memory may hold any bits, other phases' fp32 among them). y's buffer runs on
 * past its frame by a frame of random values, compared too: a kernel writing past the output grid
 * (the stand-in checks the ranges cuDNN is given, not a kernel's) fails. */
static void test_conv(side *cpu, side *gpu, int kt, int k, int cin, int cout, int pad, int accumulate)
{
    enum { STEPS = 3 };
    wv_grid g = {5, 7, pad};
    wv_conv cv = {NULL, NULL, cin, cout, kt, k, k, k % 2 == 0, kt > 1 ? 0 : -1, 0, 0};
    wv_grid go = wv_conv_out_grid(&cv, g); /* an even kernel's: every position where it fits */
    int64_t P = wv_grid_positions(g), taps = kt * k * k, fin = P * cin, fout = wv_grid_positions(go) * cout;
    int64_t fall = 2 * fout; /* the frame, then the guard */
    int64_t nw = (int64_t)cout * cin * taps;
    int steps = kt > 1 ? STEPS : 1;
    float *w = rand_floats((size_t)nw), *bias = rand_floats(cout);
    float *cache = rand_frames(g, cin, 3), *y0 = rand_floats((size_t)fall), *x[STEPS];
    float *outs[2][STEPS];
    side *sides[2] = {cpu, gpu};
    char name[112], *mask = (char *)malloc((size_t)fall), *inner = interior(go, cout, 1);
    wv_cache_layout layout[2] = {WV_CACHE_RING, WV_CACHE_RING};
    static const char *const layout_names[] = {" (ring)", " (taps apart)", " (kept by the backend)"};
    memcpy(mask, inner, (size_t)fout);
    memset(mask + fout, 1, (size_t)fout);
    free(inner);
    if (!accumulate)
        for (int64_t i = 0; i < fout; i++) y0[i] = NAN;
    for (int i = 0; i < 2 && kt > 1; i++) layout[i] = sides[i]->be->cache_layout(&cv);
    if (layout[0] == WV_CACHE_KEPT || layout[1] == WV_CACHE_KEPT) memset(cache, 0, (size_t)(3 * fin) * sizeof(float));
    for (int t = 0; t < STEPS; t++) {
        x[t] = rand_frames(g, cin, 1);
        outs[0][t] = (float *)malloc(fall * sizeof(float));
        outs[1][t] = (float *)malloc(fall * sizeof(float));
    }
    for (int i = 0; i < 2; i++) {
        side *s = sides[i];
        wv_conv c = cv;
        size_t n_packed = (size_t)s->be->packed_weight_elems(&cv);
        float *packed = (float *)calloc(n_packed, sizeof(float));
        test_call call;
        wv_ring q = {NULL, (size_t)fin * s->be->act_bytes, 1, 0};
        s->be->pack_conv_weight(w, &cv, packed);
        c.weight = put(s, packed, n_packed);
        c.bias = put(s, bias, (size_t)cout);
        free(packed);
        begin_call(s, &call, n_packed * s->be->param_bytes);
        if (kt > 1) {
            q.slots = layout[i] == WV_CACHE_RING ? kt : kt - 1;
            q.base = (char *)put(s, cache, (size_t)(q.slots * fin)); /* frames t-2, t-1 (and a free slot) */
        }
        for (int t = 0; t < steps; t++) {
            int apart = layout[i] == WV_CACHE_TAPS, kept = layout[i] == WV_CACHE_KEPT;
            void *dy = put(s, y0, (size_t)fall), *dx = kt > 1 && !kept ? NULL : put(s, x[t], (size_t)fin);
            const void *frames[WV_MAX_TAPS] = {dx};
            wv_error err;
            if (kept) {
                for (int dt = 0; dt < kt - 1; dt++) frames[dt] = wv_ring_slot(&q, dt);
                frames[kt - 1] = dx;
                s->be->conv(s->ctx, &c, g, frames, 0, kt - 1, dy, accumulate);
                q.oldest = (q.oldest + 1) % q.slots;
            } else if (kt > 1) {
                if (apart) {
                    frames[0] = wv_ring_slot(&q, 0);
                    s->be->conv(s->ctx, &c, g, frames, 0, 0, dy, accumulate);
                }
                s->be->upload(s->ctx, wv_ring_slot(&q, kt - 1), x[t], (size_t)fin, &err);
                for (int dt = 0; dt < kt; dt++) frames[dt] = wv_ring_slot(&q, dt);
                s->be->conv(s->ctx, &c, g, frames, apart, kt - 1, dy, apart || accumulate);
                q.oldest = (q.oldest + 1) % q.slots;
            } else {
                s->be->conv(s->ctx, &c, g, frames, 0, 0, dy, accumulate);
            }
            get(s, dy, outs[i][t], (size_t)fall);
            if (dx) s->be->release(s->ctx, dx);
            s->be->release(s->ctx, dy);
        }
        end_call(s, &call);
        s->be->release(s->ctx, c.weight), s->be->release(s->ctx, c.bias);
        if (q.base) s->be->release(s->ctx, q.base);
    }
    for (int t = 0; t < steps; t++) {
        snprintf(name, sizeof name, "conv %dx%dx%d %d->%d pad %d%s%s%s", kt, k, k, cin, cout, pad,
                 accumulate ? " +=" : "", kt > 1 ? (t == 0 ? ", step 1" : t == 1 ? ", step 2" : ", step 3") : "",
                 kt > 1 ? layout_names[layout[1]] : "");
        check(name, gpu->be, outs[0][t], outs[1][t], (size_t)fall, mask);
    }
    for (int t = 0; t < STEPS; t++) free(x[t]), free(outs[0][t]), free(outs[1][t]);
    free(w), free(bias), free(cache), free(y0), free(mask);
}

/* n frames of width w (past 64 positions: several blocks along a row of the vector kernel), one
 * interior pixel all zero (the norm's floor, not a NaN); the output buffer runs on past its frames by
 * a frame, every element of it compared: a kernel writing past its frames fails. */
static void test_rms_norm(side *cpu, side *gpu, int C, int silu, int in_pad, int out_pad, int n, int w)
{
    wv_grid gx = {4, w, in_pad}, gy = {4, w, out_pad};
    int64_t nx = n * wv_grid_positions(gx) * C, ny = (n + 1) * wv_grid_positions(gy) * C;
    float *x = rand_frames(gx, C, n), *gamma = rand_floats(C), *y0 = rand_floats((size_t)ny);
    float *ref = (float *)malloc(ny * 4), *got = (float *)malloc(ny * 4);
    side *sides[2] = {cpu, gpu};
    float *outs[2] = {ref, got};
    char name[64];
    memset(x + ((in_pad + 1) * (w + 2 * in_pad) + in_pad + 1) * C, 0, (size_t)C * sizeof(float));
    for (int i = 0; i < 2; i++) {
        side *s = sides[i];
        void *dx = put(s, x, (size_t)nx), *dg = put(s, gamma, (size_t)C), *dy = put(s, y0, (size_t)ny);
        s->be->rms_norm(s->ctx, dx, gx, dy, gy, C, n, dg, silu);
        get(s, dy, outs[i], (size_t)ny);
        s->be->release(s->ctx, dx), s->be->release(s->ctx, dg), s->be->release(s->ctx, dy);
    }
    snprintf(name, sizeof name, "rms_norm C=%d%s pad %d -> %d, %d frames of %d", C, silu ? " silu" : "", in_pad,
             out_pad, n, w);
    check(name, gpu->be, ref, got, (size_t)ny, NULL);
    free(x), free(gamma), free(y0), free(ref), free(got);
}

/* zero_ring, copy_region, copy_channels and pixel_shuffle: data movement, compared everywhere they
 * write (C = 8: the CUDA pixel_shuffle moves 16-byte vectors). copy_region also by way of
 * alloc_host's memory, as the trunk output goes in a plan of several tiles. */
static void test_moves(side *cpu, side *gpu, int C)
{
    side *sides[2] = {cpu, gpu};
    char name[64];
    wv_grid g = {4, 6, 2}, gs = {9, 11, 0}, gd = {4, 5, 1}, gu = {5, 6, 0}, gud = {6, 8, 1};
    int64_t n = wv_grid_positions(g) * C * 2, ns = wv_grid_positions(gs) * C, nd = wv_grid_positions(gd) * C;
    int64_t nu = wv_grid_positions(gu) * 4 * C, nud = wv_grid_positions(gud) * C;
    float *a = rand_floats((size_t)n), *src = rand_floats((size_t)ns), *dst = rand_floats((size_t)nd);
    float *usrc = rand_floats((size_t)nu), *udst = rand_floats((size_t)nud), *r[5], *o[5];
    char *mask = interior(gd, C, 1), *umask = interior(gud, C, 1);
    size_t most = (size_t)(n > nu ? n : nu) + (size_t)nud + (size_t)nd; /* floats, more than any output */
    for (int k = 0; k < 5; k++) r[k] = (float *)malloc(most * 4), o[k] = (float *)malloc(most * 4);
    for (int i = 0; i < 2; i++) {
        side *s = sides[i];
        float **out = i ? o : r;
        void *da = put(s, a, (size_t)n), *ds = put(s, src, (size_t)ns), *dd = put(s, dst, (size_t)nd);
        void *du = put(s, usrc, (size_t)nu), *dud = put(s, udst, (size_t)nud), *dd2 = put(s, dst, (size_t)nd), *host;
        void *dc = put(s, udst, (size_t)nud);
        wv_error err;
        if (s->be->alloc_host(s->ctx, (size_t)ns * s->be->act_bytes, &host, &err)) {
            fprintf(stderr, "setup failed: %s\n", err.msg);
            exit(1);
        }
        s->be->zero_ring(s->ctx, da, g, C, 2);
        s->be->copy_region(s->ctx, ds, gs, 2, 3, dd, gd, C, 1);
        s->be->copy_region(s->ctx, ds, gs, 0, 0, host, gs, C, 1);
        s->be->copy_region(s->ctx, host, gs, 2, 3, dd2, gd, C, 1);
        /* the phases of low pixels from (1, 2) on; dst interior from x2 pixel (3, 4): odd rows first */
        s->be->pixel_shuffle(s->ctx, du, gu, 1, 2, dud, gud, 3, 4, C);
        /* channels [C, 2 C) of 2 C-wide positions (an upsample3d's odd frame) */
        s->be->copy_channels(s->ctx, du, 4 * C, C, dc, C, wv_grid_positions(gu));
        get(s, da, out[0], (size_t)n), get(s, dd, out[1], (size_t)nd), get(s, dud, out[2], (size_t)nud);
        get(s, dd2, out[3], (size_t)nd), get(s, dc, out[4], (size_t)nud);
        s->be->release(s->ctx, da), s->be->release(s->ctx, ds), s->be->release(s->ctx, dd);
        s->be->release(s->ctx, du), s->be->release(s->ctx, dud), s->be->release(s->ctx, dd2);
        s->be->release(s->ctx, dc);
        s->be->release_host(s->ctx, host);
    }
    snprintf(name, sizeof name, "zero_ring pad 2, 2 frames, C=%d", C);
    check(name, gpu->be, r[0], o[0], (size_t)n, NULL);
    snprintf(name, sizeof name, "copy_region (2, 3) 9x11 -> 4x5 pad 1, C=%d", C);
    check(name, gpu->be, r[1], o[1], (size_t)nd, mask);
    snprintf(name, sizeof name, "pixel_shuffle from (1, 2) to (3, 4), C=%d", C);
    check(name, gpu->be, r[2], o[2], (size_t)nud, umask);
    snprintf(name, sizeof name, "copy_channels [%d, %d) of %d", C, 2 * C, 4 * C);
    check(name, gpu->be, r[4], o[4], (size_t)nud, NULL);
    snprintf(name, sizeof name, "copy_region by way of pinned host memory, C=%d", C);
    check(name, gpu->be, r[1], o[3], (size_t)nd, mask);
    for (int k = 0; k < 5; k++) free(r[k]), free(o[k]);
    free(a), free(src), free(dst), free(usrc), free(udst), free(mask), free(umask);
}

/* copy_region over two frames, from a grid of another padding; copy_channels from an offset that is
 * no whole 16-byte vector in any type (2 channels). */
static void test_moves_of_frames(side *cpu, side *gpu, int C)
{
    side *sides[2] = {cpu, gpu};
    char name[64];
    wv_grid gs = {7, 9, 2}, gd = {4, 5, 1};
    int64_t ns = 2 * wv_grid_positions(gs) * C, nd = 2 * wv_grid_positions(gd) * C, positions = 6;
    float *src = rand_floats((size_t)ns), *dst = rand_floats((size_t)nd), *wide = rand_floats((size_t)(positions * 2 * C));
    float *r[2], *o[2];
    char *mask = interior(gd, C, 2);
    for (int k = 0; k < 2; k++) r[k] = (float *)malloc((size_t)nd * 4), o[k] = (float *)malloc((size_t)nd * 4);
    for (int i = 0; i < 2; i++) {
        side *s = sides[i];
        float **out = i ? o : r;
        void *ds = put(s, src, (size_t)ns), *dd = put(s, dst, (size_t)nd), *dw = put(s, wide, (size_t)(positions * 2 * C));
        void *dc = put(s, dst, (size_t)(positions * C));
        s->be->copy_region(s->ctx, ds, gs, 1, 3, dd, gd, C, 2);
        s->be->copy_channels(s->ctx, dw, 2 * C, 2, dc, C, positions);
        get(s, dd, out[0], (size_t)nd), get(s, dc, out[1], (size_t)(positions * C));
        s->be->release(s->ctx, ds), s->be->release(s->ctx, dd), s->be->release(s->ctx, dw), s->be->release(s->ctx, dc);
    }
    snprintf(name, sizeof name, "copy_region (1, 3) 2 frames 7x9 pad 2 -> pad 1, C=%d", C);
    check(name, gpu->be, r[0], o[0], (size_t)nd, mask);
    snprintf(name, sizeof name, "copy_channels [2, %d) of %d", 2 + C, 2 * C);
    check(name, gpu->be, r[1], o[1], (size_t)(positions * C), NULL);
    for (int k = 0; k < 2; k++) free(r[k]), free(o[k]);
    free(src), free(dst), free(wide), free(mask);
}

/* qkv uniform in [-scale, scale): at 40, scores reach past exp's range in float32 (88), so a
 * softmax must subtract each row's largest. */
static void test_attention(side *cpu, side *gpu, int N, int C, int rows, float scale)
{
    side *sides[2] = {cpu, gpu};
    float *qkv = rand_floats((size_t)N * 3 * C), *ref = (float *)malloc((size_t)N * C * 4), *got = (float *)malloc((size_t)N * C * 4);
    float *outs[2] = {ref, got};
    char name[64];
    for (int64_t i = 0; i < (int64_t)N * 3 * C; i++) qkv[i] *= scale;
    for (int i = 0; i < 2; i++) {
        side *s = sides[i];
        void *dq = put(s, qkv, (size_t)N * 3 * C), *dout = put(s, qkv, (size_t)N * C), *scores = NULL;
        wv_error err;
        size_t bytes = ((size_t)rows * N * 4 + 255) / 256 * 256 + (size_t)rows * N * (s->be->score_bytes - 4);
        s->be->alloc(s->ctx, bytes, &scores, &err);
        s->be->attention(s->ctx, dq, dout, N, C, scores, rows);
        get(s, dout, outs[i], (size_t)N * C);
        s->be->release(s->ctx, dq), s->be->release(s->ctx, dout), s->be->release(s->ctx, scores);
    }
    snprintf(name, sizeof name, "attention N=%d C=%d rows=%d, qkv in +-%g", N, C, rows, scale);
    check(name, gpu->be, ref, got, (size_t)N * C, NULL);
    free(qkv), free(ref), free(got);
}

/* n floats as elements of type dt (rounded to nearest), into a new buffer. */
static void *as_dtype(const float *x, int64_t n, wv_dtype dt)
{
    char *out = (char *)malloc((size_t)n * wv_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        if (dt == WV_F32) {
            memcpy(out + 4 * i, &x[i], 4);
        } else if (dt == WV_F16) {
            __half_raw r = __half_raw(__float2half_rn(x[i]));
            memcpy(out + 2 * i, &r.x, 2);
        } else {
            __nv_bfloat16_raw r = __nv_bfloat16_raw(__float2bfloat16_rn(x[i]));
            memcpy(out + 2 * i, &r.x, 2);
        }
    }
    return out;
}

/* upload rounds to nearest, ties to even, as the CPU's conversion of the weights does: what comes
 * back is each value in the context's type, bit for bit (1 + 3/512 is 1 + 1/128 in bfloat16, not 1). */
static void test_upload_rounds_to_nearest(side *gpu)
{
    int n = 1000, wrong = 0;
    wv_dtype dt = gpu->be->act_dtype;
    float *x = rand_floats((size_t)n), *got = (float *)malloc((size_t)n * 4), *want = (float *)malloc((size_t)n * 4);
    void *d, *rounded;
    x[0] = 1.0f + 3.0f / 512.0f;
    x[1] = -(1.0f + 3.0f / 4096.0f);
    d = put(gpu, x, (size_t)n);
    get(gpu, d, got, (size_t)n);
    rounded = as_dtype(x, n, dt);
    for (int i = 0; i < n; i++) {
        want[i] = wv_elem_to_f32((char *)rounded + i * wv_dtype_size(dt), dt);
        wrong += memcmp(&want[i], &got[i], 4) != 0;
    }
    g_cases++;
    g_failures += wrong != 0;
    printf("%-4s %-48s %-5s%s %d of %d values not the nearest\n", wrong ? "FAIL" : "ok", "upload rounds to nearest",
           wv_dtype_name(dt), g_variant, wrong, n);
    gpu->be->release(gpu->ctx, d);
    free(x), free(got), free(want), free(rounded);
}

/* What write_output's uint8 output makes of a value x: clamp(-1, 1), (v + 1) / 2, (v * 255 + 0.5)
 * truncated. */
static unsigned char unit_u8(float x)
{
    float v = ((x < -1.0f ? -1.0f : x > 1.0f ? 1.0f : x) + 1.0f) * 0.5f;
    return (unsigned char)(v * 255.0f + 0.5f);
}

/* uint8 output (got: out_h x out_w x 3 bytes) against unit_u8 of the frame's block as the backend
 * holds it (rounded to its type), a block of h x w from interior (sy, sx) at (oy, ox); zeros elsewhere. */
static void check_u8(const char *name, const wv_backend *be, const float *frame, wv_grid g, int sy, int sx, int h,
                     int w, const unsigned char *got, int out_h, int out_w, int oy, int ox)
{
    int64_t n = wv_grid_positions(g) * WV_RGB, wrong = 0;
    void *held = as_dtype(frame, n, be->act_dtype);
    size_t es = wv_dtype_size(be->act_dtype);
    for (int y = 0; y < out_h; y++)
        for (int x = 0; x < out_w; x++)
            for (int ch = 0; ch < WV_RGB; ch++) {
                int by = y - oy, bx = x - ox, in = by >= 0 && by < h && bx >= 0 && bx < w;
                int64_t at = (((int64_t)by + sy + g.pad) * (g.w + 2 * g.pad) + bx + sx + g.pad) * WV_RGB + ch;
                unsigned char want = in ? unit_u8(wv_elem_to_f32((char *)held + at * es, be->act_dtype)) : 0;
                wrong += got[((int64_t)y * out_w + x) * WV_RGB + ch] != want;
            }
    g_cases++;
    g_failures += wrong != 0;
    printf("%-4s %-48s %-5s%s %lld of %d bytes differ\n", wrong ? "FAIL" : "ok", name, wv_dtype_name(be->act_dtype),
           g_variant, (long long)wrong, out_h * out_w * WV_RGB);
    free(held);
}

/* load_latent from a strided latent view of type ldt (host for the CPU; for CUDA device memory, or
 * host memory where host_latents), then write_output of
 * a block of a 3-channel frame through a whole begin / end_step / sync / finish call. A `poison` value
 * (0: none) goes into the block: a NaN must be reported by both sides (end_step or sync), an Inf in
 * raw output too; the unit image clamps an Inf to 1 (-Inf to 0), which is right, and is compared. In
 * uint8 output, each side's bytes are compared with the frame's own rounding to them (check_u8). */
static void test_latent_and_output(side *cpu, side *gpu, wv_output_mode mode, float poison, wv_dtype ldt,
                                   int host_latents)
{
    int z = 4, T = 2, h = 3, w = 5, oh = 6, ow = 7;
    wv_grid g = {h, w, 1}, go = {oh, ow, 1};
    int64_t nl = (int64_t)z * T * h * w, nz = wv_grid_positions(g) * z, no = wv_grid_positions(go) * 3;
    int64_t es = (int64_t)wv_dtype_size(ldt);
    float *lat = rand_floats((size_t)nl), *mean = rand_floats(z), *stdv = rand_floats(z), *frame = rand_frames(go, 3, 1);
    float *lref = (float *)malloc(nz * 4), *lgot = (float *)malloc(nz * 4);
    float *oref = (float *)calloc(4 * 9 * 3, 4), *ogot = (float *)calloc(4 * 9 * 3, 4);
    void *dlat;
    side *sides[2] = {cpu, gpu};
    wv_status reported[2];
    int flagged = poison != poison || (poison != 0.0f && mode == WV_OUT_RAW), compare = !flagged;
    char name[80];
    void *hlat = as_dtype(lat, nl, ldt);
    if (poison != 0.0f) frame[((2 + 1) * (ow + 2) + 3 + 1) * 3] = poison; /* interior (2, 3), in the block */
    cudaMalloc(&dlat, nl * es);
    cudaMemcpy(dlat, hlat, nl * es, cudaMemcpyHostToDevice);
    for (int i = 0; i < 2; i++) {
        side *s = sides[i];
        wv_view v;
        wv_call call;
        wv_error err;
        void *dz = put(s, lat, (size_t)nz), *dframe = put(s, frame, (size_t)no), *ws = NULL, *staging = NULL;
        memset(&v, 0, sizeof v);
        v.on_device = i && !host_latents;
        v.data = v.on_device ? dlat : hlat;
        v.ndim = 4, v.shape[0] = z, v.shape[1] = T, v.shape[2] = h, v.shape[3] = w;
        v.strides[3] = es, v.strides[2] = es * w, v.strides[1] = es * w * h, v.strides[0] = es * w * h * T;
        v.dtype = ldt;
        memset(&call, 0, sizeof call);
        call.latents = &v;
        call.step_out_bytes = (size_t)4 * 5 * 3 * wv_output_item_bytes(mode); /* exactly the block */
        if (s->be->output_staging_copies)
            s->be->alloc(s->ctx, s->be->output_staging_copies * call.step_out_bytes, &staging, &err);
        call.output_staging = staging;
        s->be->alloc(s->ctx, 1 << 20, &ws, &err);
        call.workspace = ws, call.workspace_bytes = 1 << 20;
        if (s->be->begin(s->ctx, &call, &err)) {
            fprintf(stderr, "begin failed: %s\n", err.msg);
            g_failures++;
        }
        s->be->load_latent(s->ctx, call.latents, 1, mean, stdv, g, dz);
        get(s, dz, i ? lgot : lref, (size_t)nz);
        /* a 4 x 5 block from interior (1, 2) into a 4 x 9 output at (0, 3), in three writes of one step
         * (y, x, h, w within it): odd sizes, so that a write's staging offset is no multiple of 4 bytes
         * in uint8, and the step's staging is filled to the byte */
        for (int k = 0; k < 3; k++) {
            static const int piece[3][4] = {{0, 0, 1, 5}, {1, 0, 3, 3}, {1, 3, 3, 2}};
            const int *q = piece[k];
            s->be->write_output(s->ctx, dframe, go, 1 + q[0], 2 + q[1], q[2], q[3], i ? ogot : oref, 9, q[0], 3 + q[1],
                                mode);
        }
        reported[i] = s->be->end_step(s->ctx, &err);
        if (!reported[i]) reported[i] = s->be->sync(s->ctx, &err);
        if (reported[i] && !flagged) fprintf(stderr, "step: %s\n", err.msg);
        s->be->finish(s->ctx);
        s->be->release(s->ctx, dz), s->be->release(s->ctx, dframe), s->be->release(s->ctx, ws);
        if (staging) s->be->release(s->ctx, staging);
    }
    snprintf(name, sizeof name, "load_latent frame 1 of %s %s latents", wv_dtype_name(ldt),
             host_latents ? "host" : "device");
    check(name, gpu->be, lref, lgot, (size_t)nz, NULL);
    if (poison != 0.0f) {
        wv_status want = flagged ? WV_ERR_BACKEND : WV_OK;
        int ok = reported[0] == want && reported[1] == want;
        g_cases++;
        g_failures += !ok;
        snprintf(name, sizeof name, "write_output %s of %s",
                 mode == WV_OUT_UNIT ? "unit" : mode == WV_OUT_U8 ? "uint8" : "raw",
                 poison != poison ? "a NaN" : poison < 0 ? "a -Inf" : "an Inf");
        printf("%-4s %-48s %-5s%s reported: CPU %d, CUDA %d (want %d)\n", ok ? "ok" : "FAIL", name,
               wv_dtype_name(gpu->be->act_dtype), g_variant, (int)reported[0], (int)reported[1], (int)want);
    } else if (reported[0] || reported[1]) {
        g_failures++;
    }
    if (compare && mode == WV_OUT_U8) {
        check_u8("write_output uint8 of the CPU backend", cpu->be, frame, go, 1, 2, 4, 5, (unsigned char *)oref, 4,
                 9, 0, 3);
        check_u8("write_output uint8 (staging, end_step, sync)", gpu->be, frame, go, 1, 2, 4, 5, (unsigned char *)ogot,
                 4, 9, 0, 3);
    } else if (compare) {
        check(mode == WV_OUT_UNIT ? "write_output unit (staging, end_step, sync)" : "write_output raw", gpu->be,
              oref, ogot, 4 * 9 * 3, NULL);
    }
    cudaFree(dlat);
    free(hlat), free(lat), free(mean), free(stdv), free(frame), free(lref), free(lgot), free(oref), free(ogot);
}

/* Device latents (strided: every other element of a wider buffer) holding an Inf and, later, a NaN:
 * begin refuses them, naming the first (the CPU backend reads host latents, which the module checks). */
static void test_nonfinite_device_latents(side *gpu)
{
    int z = 2, T = 2, h = 3, w = 4;
    int64_t nl = (int64_t)z * T * h * w;
    float *lat = rand_floats((size_t)(2 * nl));
    test_call t;
    wv_error err = {WV_OK, ""};
    wv_status st;
    void *dlat;
    int ok;
    lat[2 * (((1 * T + 0) * h + 2) * w + 1)] = -INFINITY; /* [1, 0, 2, 1] */
    lat[2 * (((1 * T + 1) * h + 0) * w + 0)] = NAN;       /* [1, 1, 0, 0] */
    cudaMalloc(&dlat, 2 * nl * 4);
    cudaMemcpy(dlat, lat, 2 * nl * 4, cudaMemcpyHostToDevice);
    memset(&t, 0, sizeof t);
    t.lat.data = dlat, t.lat.on_device = 1, t.lat.dtype = WV_F32, t.lat.ndim = 4;
    t.lat.shape[0] = z, t.lat.shape[1] = T, t.lat.shape[2] = h, t.lat.shape[3] = w;
    t.lat.strides[3] = 8, t.lat.strides[2] = 8 * w, t.lat.strides[1] = 8 * w * h, t.lat.strides[0] = 8 * w * h * T;
    t.call.latents = &t.lat;
    t.call.workspace_bytes = 1 << 20;
    gpu->be->alloc(gpu->ctx, t.call.workspace_bytes, &t.call.workspace, &err);
    st = gpu->be->begin(gpu->ctx, &t.call, &err);
    ok = st == WV_ERR_INVALID && strstr(err.msg, "latents contain NaN or Inf (first at [1, 0, 2, 1])") != NULL;
    g_cases++;
    g_failures += !ok;
    printf("%-4s %-48s %-5s%s %s\n", ok ? "ok" : "FAIL", "begin: device latents with -Inf, then NaN",
           wv_dtype_name(gpu->be->act_dtype), g_variant, err.msg);
    gpu->be->finish(gpu->ctx); /* on every exit path, as the driver calls it */
    gpu->be->release(gpu->ctx, t.call.workspace);
    cudaFree(dlat);
    free(lat);
}

static int make_side(side *s, const wv_backend *be)
{
    wv_error err;
    s->be = be;
    if (be->ctx_create(be, 0, &s->ctx, &err)) {
        fprintf(stderr, "%s context: %s\n", be->name, err.msg);
        return -1;
    }
    return 0;
}

/* Convolutions 1x1 / 3x3, causal or not, accumulating or not; output channel counts around the
 * direct kernel's group of DIRECT_OUTS included; equal widths (a causal 3x3x3 one runs by taps on
 * CUDA; in pairs, the new frame goes into its cache's half by 16-byte vectors, or element by element
 * where a position's channels are no whole vectors: 20 in 16 bits; 96: the full-size decoder's);
 * causal 3x3x3 ones with a handful of outputs (one 3-d convolution from the ring on CUDA, odd widths
 * and a wider ring included); the sub-pixel conv's 2x2. */
static void test_conv_shapes(side *cpu, side *gpu)
{
    for (int kt = 1; kt <= 3; kt += 2)
        for (int k = 1; k <= 3; k += 2)
            for (int acc = 0; acc <= 1; acc++) {
                test_conv(cpu, gpu, kt, k, 16, 32, 1, acc);
                test_conv(cpu, gpu, kt, k, 32, 3, 1, acc);
                test_conv(cpu, gpu, kt, k, 24, 24, 1, acc);
            }
    test_conv(cpu, gpu, 3, 3, 20, 20, 1, 0);
    test_conv(cpu, gpu, 3, 3, 96, 96, 1, 1);
    test_conv(cpu, gpu, 3, 3, 8, 5, 1, 1);
    test_conv(cpu, gpu, 3, 3, 5, 7, 1, 0); /* taps of 45 elements: turned 2 bytes at a time */
    test_conv(cpu, gpu, 3, 3, 96, 3, 1, 0); /* the head */
    test_conv(cpu, gpu, 3, 3, 16, 4, 2, 1);
    test_conv(cpu, gpu, 1, 2, 16, 32, 1, 0); /* sub-pixel convs: a 2x2 window, no padding */
    test_conv(cpu, gpu, 1, 2, 24, 4 * 12, 1, 0);
    test_conv(cpu, gpu, 1, 2, 8, 4 * 3, 1, 1);
}

/* The convolutions again with the CUDA side on the direct kernel (WANVIDEO_CUDA_DIRECT_CONV is read
 * when a context is made; set for the whole run, it stays set: gpu_check's racecheck runs so). */
static void test_direct_convs(side *cpu, const wv_backend *be)
{
    side direct;
    const char *was = getenv("WANVIDEO_CUDA_DIRECT_CONV");
    int whole_run = was && !strcmp(was, "1");
    setenv("WANVIDEO_CUDA_DIRECT_CONV", "1", 1);
    if (make_side(&direct, be)) exit(1);
    if (!whole_run) unsetenv("WANVIDEO_CUDA_DIRECT_CONV");
    g_variant = " direct";
    test_conv_shapes(cpu, &direct);
    g_variant = "";
    direct.be->ctx_destroy(direct.ctx);
}

int main(void)
{
    char why[256];
    const char *only = getenv("WV_OPS_DTYPE");
    side cpu;
    if (!wv_cuda_device_count(why, sizeof why)) {
        printf("skipped: %s\n", why);
        return 77;
    }
    if (make_side(&cpu, wv_backend_cpu())) return 1;
    for (int dt = WV_F32; dt <= WV_BF16; dt++) {
        side gpu;
        if (only && *only && strcmp(only, wv_dtype_name((wv_dtype)dt)) != 0) continue;
        if (make_side(&gpu, wv_cuda_backends()->by_dtype[dt])) return 1;
        test_conv_shapes(&cpu, &gpu);
        test_conv(&cpu, &gpu, 1, 1, 24, 72, 0, 0); /* attention's 1x1 on an unpadded grid */
        test_direct_convs(&cpu, wv_cuda_backends()->by_dtype[dt]);
        test_rms_norm(&cpu, &gpu, 96, 1, 1, 1, 2, 70); /* 16-byte vectors, held by a group of lanes per position */
        test_rms_norm(&cpu, &gpu, 384, 1, 1, 0, 1, 6); /* the attention's norm: its rows are the frame's */
        test_rms_norm(&cpu, &gpu, 96, 1, 1, 0, 2, 70);
        test_rms_norm(&cpu, &gpu, 96, 0, 0, 1, 2, 9);
        test_rms_norm(&cpu, &gpu, 192, 1, 1, 1, 3, 21);
        test_rms_norm(&cpu, &gpu, 8, 0, 1, 1, 2, 6);
        test_rms_norm(&cpu, &gpu, 33, 0, 1, 0, 2, 6); /* not whole vectors: a warp per position */
        test_rms_norm(&cpu, &gpu, 33, 1, 0, 1, 2, 6);
        test_moves(&cpu, &gpu, 5);
        test_moves(&cpu, &gpu, 8);
        test_moves_of_frames(&cpu, &gpu, 8);
        test_attention(&cpu, &gpu, 37, 16, 8, 1.0f);
        test_attention(&cpu, &gpu, 50, 32, 50, 1.0f);
        if (dt == WV_F32) /* in 16 bits, qkv's rounding moves such scores by whole units */
            test_attention(&cpu, &gpu, 37, 16, 8, 40.0f);
        test_latent_and_output(&cpu, &gpu, WV_OUT_UNIT, 0.0f, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_RAW, 0.0f, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_UNIT, INFINITY, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_UNIT, -INFINITY, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_RAW, INFINITY, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_UNIT, NAN, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_U8, 0.0f, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_U8, INFINITY, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_U8, NAN, WV_F32, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_RAW, 0.0f, WV_F16, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_RAW, 0.0f, WV_BF16, 0);
        test_latent_and_output(&cpu, &gpu, WV_OUT_RAW, 0.0f, WV_BF16, 1);
        test_nonfinite_device_latents(&gpu);
        test_upload_rounds_to_nearest(&gpu);
        gpu.be->ctx_destroy(gpu.ctx);
    }
    cpu.be->ctx_destroy(cpu.ctx);
    printf("%d cases, %d failed\n", g_cases, g_failures);
#ifdef WV_CUDA_STUB
    if (stub_report()) return 1;
#endif
    return g_failures ? 1 : 0;
}
