/* The CUDA backend's own kernels. Each is a template over the activation type T (float, __half,
 * __nv_bfloat16), takes untyped pointers so one dispatch fits all, and computes in fp32.
 * Grids are channels-last with a ring of `pad` zero pixels, as wv_backend.h describes. */
#ifndef WV_KERNELS_CUH
#define WV_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "wv_backend.h"

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/* One element of any input dtype, as the latents may come in any. */
__device__ __forceinline__ float load_any(const char *p, int dtype)
{
    if (dtype == WV_F32) return *(const float *)p;
    if (dtype == WV_F16) return __half2float(*(const __half *)p);
    return __bfloat162float(*(const __nv_bfloat16 *)p);
}

/* Packed channels-last strides (in elements) for dims {n, c, spatial...}: the layout of every grid,
 * as cuDNN's tensor descriptors take it. */
static inline void channels_last_strides(int nd, const int *dims, int *strides)
{
    int s = dims[1];
    strides[1] = 1;
    for (int d = nd - 1; d >= 2; d--) {
        strides[d] = s;
        s *= dims[d];
    }
    strides[0] = s;
}

__device__ __forceinline__ int64_t grid_row(wv_grid g) { return g.w + 2 * g.pad; }

/* Position index of interior pixel (y, x). */
__device__ __forceinline__ int64_t grid_pos(wv_grid g, int y, int x)
{
    return (int64_t)(y + g.pad) * grid_row(g) + x + g.pad;
}

/* Whether padded position p of g is on the ring. */
__device__ __forceinline__ bool on_ring(wv_grid g, int64_t p)
{
    int64_t wp = grid_row(g);
    int py = (int)(p / wp), px = (int)(p % wp);
    return py < g.pad || py >= g.pad + g.h || px < g.pad || px >= g.pad + g.w;
}

#define WV_GRID_STRIDE_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

#define THREADS 256 /* a block of the backend's own kernels */

/* Shared memory is declared through this (tests/c/cuda_on_cpu defines its own, which starts each
 * block poisoned): a static array T name[n]. */
#ifndef WV_SHARED
#define WV_SHARED(T, name, n) __shared__ T name[n]
#endif

/* Blocks for a grid-stride loop over n elements, `threads` a block: a thread an element, up to
 * 524280 blocks (the loop covers the rest). */
static inline unsigned blocks_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

/* lat [z][T][h][w] (strides in bytes, frame t at `frame`) -> dst [P(g)][z]: z * std + mean, ring 0.
 * stats = mean[z] then std[z]. */
template <typename T>
__global__ void load_latent_kernel(const char *frame, int64_t s_c, int64_t s_y, int64_t s_x, int dtype,
                                   const float *stats, int z, wv_grid g, void *dst_)
{
    T *dst = (T *)dst_;
    int64_t P = (int64_t)(g.h + 2 * g.pad) * grid_row(g);
    WV_GRID_STRIDE_LOOP(i, P * z)
    {
        int64_t p = i / z;
        int c = (int)(i % z);
        float v = 0.0f;
        if (!on_ring(g, p)) {
            int y = (int)(p / grid_row(g)) - g.pad, x = (int)(p % grid_row(g)) - g.pad;
            v = load_any(frame + c * s_c + y * s_y + x * s_x, dtype) * stats[z + c] + stats[c];
        }
        dst[i] = from_f32<T>(v);
    }
}

/* view [z][T][h][w] -> *first = the smallest row-major index of a NaN or Inf (unchanged if none). */
__global__ void find_nonfinite_kernel(const char *base, int64_t n0, int64_t n1, int64_t n2, int64_t n3, int64_t s0,
                                      int64_t s1, int64_t s2, int64_t s3, int dtype, unsigned long long *first)
{
    WV_GRID_STRIDE_LOOP(i, n0 * n1 * n2 * n3)
    {
        int64_t r = i, i3 = r % n3, i2 = (r /= n3) % n2, i1 = (r /= n2) % n1, i0 = r / n1;
        float v = load_any(base + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3, dtype);
        if (!isfinite(v)) atomicMin(first, (unsigned long long)i);
    }
}

/* y[rows][C] += bias[C] (a thread per element measured faster than a warp per row in the conv lab) */
template <typename T> __global__ void bias_add_kernel(void *y_, const void *bias_, int64_t rows, int C)
{
    T *y = (T *)y_;
    const T *bias = (const T *)bias_;
    WV_GRID_STRIDE_LOOP(i, rows * C) { y[i] = from_f32<T>(to_f32(y[i]) + to_f32(bias[i % C])); }
}

/* A causal conv's packed weights src [cout][kt][block] -> dst with the taps turned by r: dst's
 * tap slot s holds src's tap (s - r) mod kt, so that a 3-d conv over a ring whose oldest frame is in
 * slot r meets every frame with its tap. U is the unit moved (a 16-byte vector where block allows). */
template <typename U>
__global__ void rotate_taps_kernel(const void *src_, void *dst_, int64_t cout, int kt, int64_t block, int r)
{
    const U *src = (const U *)src_;
    U *dst = (U *)dst_;
    WV_GRID_STRIDE_LOOP(i, cout * kt * block)
    {
        int64_t k = i % block, os = i / block, o = os / kt;
        int slot = (int)(os % kt);
        dst[i] = src[(o * kt + (slot - r + kt) % kt) * block + k];
    }
}

/* What rms_norm multiplies a pixel's C values by, given their sum of squares ss: sqrt(C) / |x|. */
__device__ __forceinline__ float rms_scale(float ss, int C)
{
    return sqrtf((float)C) / fmaxf(sqrtf(ss), (float)WV_RMS_EPS);
}

/* x [n][P(gx)][C] -> y [n][P(gy)][C]: x / max(|x|, WV_RMS_EPS) * sqrt(C) * gamma (then SiLU), ring 0.
 * One warp per output position; gx and gy share the interior size. */
template <typename T>
__global__ void rms_norm_kernel(const void *x_, wv_grid gx, void *y_, wv_grid gy, int C, int n, const void *gamma_,
                                int silu)
{
    const T *x = (const T *)x_, *gamma = (const T *)gamma_;
    T *y = (T *)y_;
    int lane = threadIdx.x % 32;
    int64_t Py = (int64_t)(gy.h + 2 * gy.pad) * grid_row(gy), Px = (int64_t)(gx.h + 2 * gx.pad) * grid_row(gx);
    int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int64_t warps = (int64_t)gridDim.x * blockDim.x / 32;
    for (int64_t w = warp; w < n * Py; w += warps) {
        int64_t f = w / Py, p = w % Py;
        T *d = y + w * C;
        if (on_ring(gy, p)) {
            for (int c = lane; c < C; c += 32) d[c] = from_f32<T>(0.0f);
            continue;
        }
        int yy = (int)(p / grid_row(gy)) - gy.pad, xx = (int)(p % grid_row(gy)) - gy.pad;
        const T *s = x + (f * Px + grid_pos(gx, yy, xx)) * C;
        float ss = 0.0f;
        for (int c = lane; c < C; c += 32) {
            float v = to_f32(s[c]);
            ss += v * v;
        }
        for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        float scale = rms_scale(ss, C);
        for (int c = lane; c < C; c += 32) {
            float v = to_f32(s[c]) * scale * to_f32(gamma[c]);
            d[c] = from_f32<T>(silu ? __fdividef(v, 1.0f + __expf(-v)) : v);
        }
    }
}

/* The same with 16-byte loads and stores, where C is a whole number of 16-byte vectors and the
 * buffers are aligned to 16 bytes: a group of L = 2^lanes_log2 lanes per position, each lane holding
 * up to RMS_MAX_VECTORS of its vectors in registers between the sum of squares and the scaling (x is
 * read once), so each lane has up to that many loads in flight. The grid is (blocks along a padded
 * row of gy, the padded rows, the frames), as rms_norm_vec_launch sizes it, so no index is divided
 * (a 64-bit division is a subroutine on the GPU). The lanes of a group shuffle together, so every
 * thread takes part in the shuffles. */
#define RMS_MAX_VECTORS 4

/* rms_norm_vec_kernel's launch for C channels of elem_bytes each over n frames of gy, `threads` a
 * block: the fewest lanes per position (a power of two, at most 32) that hold its vectors, and the
 * blocks along a padded row. Returns 0 where the kernel cannot run it (C not whole vectors, too many
 * vectors, no rows or frames, or more than a grid's y and z take). */
static inline int rms_norm_vec_launch(wv_grid gy, int n, int C, int elem_bytes, int threads, int *lanes_log2,
                                      unsigned *row_blocks)
{
    int vectors = C * elem_bytes / 16, lanes = 1;
    int rows = gy.h + 2 * gy.pad, cols = gy.w + 2 * gy.pad;
    if ((C * elem_bytes) % 16 || vectors > 32 * RMS_MAX_VECTORS || rows < 1 || rows > 65535 || cols < 1 || n < 1 ||
        n > 65535)
        return 0;
    for (*lanes_log2 = 0; lanes * RMS_MAX_VECTORS < vectors; lanes *= 2) ++*lanes_log2;
    *row_blocks = (unsigned)((cols + (threads >> *lanes_log2) - 1) / (threads >> *lanes_log2));
    return 1;
}

template <typename T>
__global__ void rms_norm_vec_kernel(const void *x_, wv_grid gx, void *y_, wv_grid gy, int C, const void *gamma_,
                                    int silu, int lanes_log2)
{
    const int E = 16 / (int)sizeof(T), V = C / E, L = 1 << lanes_log2;
    const uint4 *x = (const uint4 *)x_, *gamma = (const uint4 *)gamma_;
    uint4 *y = (uint4 *)y_;
    int sub = threadIdx.x & (L - 1), px = (int)(blockIdx.x * (blockDim.x >> lanes_log2) + (threadIdx.x >> lanes_log2));
    int py = (int)blockIdx.y, f = (int)blockIdx.z, iy = py - gy.pad, ix = px - gy.pad;
    bool live = px < grid_row(gy), inside = live && iy >= 0 && iy < gy.h && ix >= 0 && ix < gy.w;
    const uint4 *src = NULL;
    uint4 v[RMS_MAX_VECTORS];
    float ss = 0.0f;
    if (inside) src = x + ((int64_t)f * (gx.h + 2 * gx.pad) * grid_row(gx) + grid_pos(gx, iy, ix)) * V;
#pragma unroll
    for (int k = 0; k < RMS_MAX_VECTORS; k++) {
        int j = sub + k * L;
        if (!src || j >= V) continue;
        v[k] = src[j];
        const T *e = (const T *)&v[k];
        for (int q = 0; q < E; q++) ss += to_f32(e[q]) * to_f32(e[q]);
    }
    for (int o = L / 2; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (!live) return;
    float scale = rms_scale(ss, C);
    uint4 *dst = y + (((int64_t)f * (gy.h + 2 * gy.pad) + py) * grid_row(gy) + px) * V;
#pragma unroll
    for (int k = 0; k < RMS_MAX_VECTORS; k++) {
        int j = sub + k * L;
        uint4 out = make_uint4(0, 0, 0, 0);
        if (j >= V) continue;
        if (src) {
            uint4 g = gamma[j];
            const T *e = (const T *)&v[k], *ge = (const T *)&g;
            T *o = (T *)&out;
            for (int q = 0; q < E; q++) {
                float u = to_f32(e[q]) * scale * to_f32(ge[q]);
                o[q] = from_f32<T>(silu ? __fdividef(u, 1.0f + __expf(-u)) : u);
            }
        }
        dst[j] = out;
    }
}

/* Padded position of the q-th ring pixel: the top rows, the bottom rows, then the left and right
 * strips of each interior row. */
__device__ __forceinline__ int64_t ring_pos(wv_grid g, int64_t q)
{
    int64_t wp = grid_row(g), band = (int64_t)g.pad * wp;
    if (q < band) return q;
    if (q < 2 * band) return (int64_t)(g.pad + g.h) * wp + (q - band);
    q -= 2 * band;
    int64_t row = g.pad + q / (2 * g.pad), col = q % (2 * g.pad);
    return row * wp + (col < g.pad ? col : g.w + col);
}

/* zero the ring of x [n][P(g)][C], touching the ring alone */
template <typename T> __global__ void zero_ring_kernel(void *x_, wv_grid g, int C, int n)
{
    T *x = (T *)x_;
    int64_t P = (int64_t)(g.h + 2 * g.pad) * grid_row(g), ring = P - (int64_t)g.h * g.w;
    WV_GRID_STRIDE_LOOP(i, n * ring * C)
    {
        int64_t q = (i / C) % ring, f = i / (C * ring);
        x[(f * P + ring_pos(g, q)) * C + i % C] = from_f32<T>(0.0f);
    }
}

/* n positions of C units: channels [soff, soff + C) of src's positions, sstride apart -> channels
 * [doff, doff + C) of dst's, dstride apart; units of U (an element, or a 16-byte vector: every count
 * in units). copy_channels (wv_backend.h) packs them (dstride C, doff 0); a paired causal conv stores
 * its new frame into its cache's half (sstride C, soff 0). */
template <typename U>
__global__ void copy_channels_kernel(const void *src_, int sstride, int soff, void *dst_, int dstride, int doff, int C,
                                     int64_t n)
{
    const U *src = (const U *)src_;
    U *dst = (U *)dst_;
    WV_GRID_STRIDE_LOOP(i, n * C)
    {
        int64_t p = i / C, ch = i - p * C;
        dst[p * dstride + doff + ch] = src[p * sstride + soff + ch];
    }
}

/* pixel_shuffle (wv_backend.h): the x2 frame's interior from a sub-pixel conv's phases, moving units
 * of U (an element, or a 16-byte vector: C counted in units). */
template <typename U>
__global__ void pixel_shuffle_kernel(const void *src_, wv_grid gs, int sy0, int sx0, void *dst_, wv_grid gd, int dy0,
                                     int dx0, int C)
{
    const U *src = (const U *)src_;
    U *dst = (U *)dst_;
    WV_GRID_STRIDE_LOOP(i, (int64_t)gd.h * gd.w * C)
    {
        int64_t p = i / C;
        int c = (int)(i - p * C), py = (int)(p / gd.w), px = (int)(p % gd.w);
        int Y = dy0 + py, X = dx0 + px, a = Y & 1, b = X & 1;
        dst[grid_pos(gd, py, px) * C + c] =
            src[(grid_pos(gs, (Y >> 1) - sy0 + a, (X >> 1) - sx0 + b) * WV_SUBPIXEL_PHASES + 2 * a + b) * C + c];
    }
}

/* Direct convolution, the fallback where cuDNN runs no algorithm for a shape:
 * y[f][p][o] (+)= sum over (dt, dy, dx, i) of w[o][dt][dy][dx][i] * in[f + dt][p shifted by (dy, dx)][i]
 * from a padded Hp x Wp grid: odd kernels centred, y on the same grid, for the positions whose window
 * stays inside it (the ring's outputs are undefined and left alone); even ones (the sub-pixel conv)
 * from the position down and right, y on the (Hp - kh + 1) x (Wp - kw + 1) grid where they fit.
 * in holds n + kt - 1 frames. One thread per position and group of DIRECT_OUTS output channels, so
 * each input value read serves that many outputs. */
#define DIRECT_OUTS 4

template <typename T>
__global__ void direct_conv_kernel(const void *in_, const void *w_, void *y_, int n, int kt, int kh, int kw, int cin,
                                   int cout, int Hp, int Wp, int accumulate)
{
    const T *in = (const T *)in_, *w = (const T *)w_;
    T *y = (T *)y_;
    int64_t P = (int64_t)Hp * Wp, taps = (int64_t)kt * kh * kw;
    int rh = kh % 2 ? kh / 2 : 0, rw = kw % 2 ? kw / 2 : 0, groups = (cout + DIRECT_OUTS - 1) / DIRECT_OUTS;
    int Ho = Hp + 2 * rh - kh + 1, Wo = Wp + 2 * rw - kw + 1;
    int64_t Po = (int64_t)Ho * Wo;
    WV_GRID_STRIDE_LOOP(i, n * Po * groups)
    {
        int o0 = (int)(i % groups) * DIRECT_OUTS, outs = min(DIRECT_OUTS, cout - o0);
        int64_t p = (i / groups) % Po, out = (i / groups) * cout + o0;
        int f = (int)(i / (groups * Po)), py = (int)(p / Wo), px = (int)(p % Wo);
        float acc[DIRECT_OUTS];
        if (py < rh || py - rh + kh > Hp || px < rw || px - rw + kw > Wp) continue;
        for (int j = 0; j < DIRECT_OUTS; j++) acc[j] = accumulate && j < outs ? to_f32(y[out + j]) : 0.0f;
        for (int dt = 0; dt < kt; dt++)
            for (int dy = 0; dy < kh; dy++)
                for (int dx = 0; dx < kw; dx++) {
                    const T *src = in + (((int64_t)(f + dt) * P + (int64_t)(py + dy - rh) * Wp + px + dx - rw) * cin);
                    const T *wt = w + ((int64_t)o0 * taps + (dt * kh + dy) * kw + dx) * cin;
                    for (int c = 0; c < cin; c++) {
                        float v = to_f32(src[c]);
                        for (int j = 0; j < DIRECT_OUTS; j++)
                            if (j < outs) acc[j] += v * to_f32(wt[j * taps * cin + c]);
                    }
                }
        for (int j = 0; j < outs; j++) y[out + j] = from_f32<T>(acc[j]);
    }
}

__device__ __forceinline__ float block_reduce(float v, bool is_max, float *shared)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    for (int o = 16; o > 0; o /= 2) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    __syncthreads(); /* shared may still be read by the previous reduction */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : (is_max ? -INFINITY : 0.0f);
    for (int o = 16; o > 0; o /= 2) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    return v;
}

/* scores [rows][N] float -> probs [rows][N] T, softmax along each row; one block per row. */
template <typename T> __global__ void softmax_rows_kernel(const float *scores, void *probs_, int N)
{
    WV_SHARED(float, shared, 32);
    const float *s = scores + (int64_t)blockIdx.x * N;
    T *p = (T *)probs_ + (int64_t)blockIdx.x * N;
    float mx = -INFINITY, sum = 0.0f;
    for (int j = threadIdx.x; j < N; j += blockDim.x) mx = fmaxf(mx, s[j]);
    mx = block_reduce(mx, true, shared);
    for (int j = threadIdx.x; j < N; j += blockDim.x) sum += __expf(s[j] - mx);
    sum = block_reduce(sum, false, shared);
    for (int j = threadIdx.x; j < N; j += blockDim.x) p[j] = from_f32<T>(__expf(s[j] - mx) / sum);
}

/* out[y][x][0..WV_RGB) = f(src interior[y + sy][x + sx]) for an h x w block, packed rows (pitch
 * w * WV_RGB); f and out's items are the output type's (wv_output_mode): clamp(-1, 1) then
 * (v + 1) / 2 as float32 for WV_OUT_UNIT, identity for WV_OUT_RAW, the UNIT value as a byte for
 * WV_OUT_U8. */
template <typename T>
__global__ void write_output_kernel(const void *src_, wv_grid gs, int sy, int sx, int h, int w, void *out, int mode,
                                    unsigned *nonfinite)
{
    const T *src = (const T *)src_;
    WV_GRID_STRIDE_LOOP(i, (int64_t)h * w * WV_RGB)
    {
        int ch = (int)(i % WV_RGB);
        int64_t px = i / WV_RGB;
        int y = (int)(px / w), x = (int)(px % w);
        float v = to_f32(src[grid_pos(gs, y + sy, x + sx) * WV_RGB + ch]);
        if (v != v || (mode == WV_OUT_RAW && isinf(v))) *nonfinite = 1u; /* any thread's store will do */
        if (mode == WV_OUT_RAW) {
            ((float *)out)[i] = v;
            continue;
        }
        v = ((v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v) + 1.0f) * 0.5f; /* NaN stays NaN */
        if (mode == WV_OUT_UNIT)
            ((float *)out)[i] = v;
        else /* truncated, as NumPy's astype(uint8); fused or not, the same bytes (see wv_output_mode) */
            ((unsigned char *)out)[i] = v == v ? (unsigned char)(v * 255.0f + 0.5f) : 0;
    }
}

#endif
