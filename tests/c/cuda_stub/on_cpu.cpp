/* The CUDA stub's arithmetic (on_cpu.h): the backend's kernels compiled for the host with
 * tests/c/cuda_on_cpu/ standing in for CUDA's headers, found by name, and loops for cuDNN's
 * convolutions and cuBLAS's GEMMs. A kernel whose threads never cooperate runs as one thread (its
 * grid-stride loop covers every element); one whose threads shuffle or share memory runs with a host
 * thread per GPU thread (launch_on_cpu), on the smallest launch that computes the same: one warp
 * where a grid-stride loop spreads the work over warps, one warp a block where the block's threads
 * stride over a row, the launch as the backend made it where the grid is the work's shape. */
#include <cuda_bf16.h> /* the stand-ins: built with -Itests/c/cuda_on_cpu */
#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "wv_backend.h"

namespace cpu {
#include "wv_kernels.cuh"
}

#include "on_cpu.h"

namespace {

struct bound_launch {
    std::function<void()> run;
};

template <typename... A> constexpr size_t arity(void (*)(A...)) { return sizeof...(A); }

/* How a kernel runs here (see the top of the file). */
enum how_run { ALONE_RUN, WARP_RUN, ROW_WARPS_RUN, AS_LAUNCHED_RUN };

/* The kernel with copies of its arguments' values (args[i] points at parameter i). */
template <typename... A, size_t... I>
bound_launch *bind_values(void (*f)(A...), void **args, dim3_on_cpu grid, dim3_on_cpu block, how_run how,
                          std::index_sequence<I...>)
{
    std::tuple<std::decay_t<A>...> values(*(std::decay_t<A> *)args[I]...);
    if (how == WARP_RUN) grid = {1, 1, 1};
    if (how == WARP_RUN || how == ROW_WARPS_RUN) block = {32, 1, 1};
    return new bound_launch{[=]() {
        auto body = [&] { std::apply(f, values); };
        if (how == ALONE_RUN) run_alone_on_cpu(body);
        else launch_on_cpu(grid, block, body);
    }};
}

template <auto F, how_run How> bound_launch *binder(void **args, dim3_on_cpu grid, dim3_on_cpu block)
{
    return bind_values(F, args, grid, block, How, std::make_index_sequence<arity(F)>{});
}

typedef bound_launch *(*binder_fn)(void **, dim3_on_cpu, dim3_on_cpu);

/* The same sums as the kernels whose threads cooperate, without threads: what a whole decode runs on
 * instead (kernel_on_cpu_bind's serial), host threads being too slow for it. The RMS norm is the CPU
 * backend's op, on float copies of the kernel's inputs. */
template <typename T>
void rms_norm_reference(const void *x, wv_grid gx, void *y, wv_grid gy, int C, int n, const void *gamma, int silu)
{
    int64_t nx = n * wv_grid_positions(gx) * C, ny = n * wv_grid_positions(gy) * C;
    std::vector<float> xf((size_t)nx), yf((size_t)ny), gf((size_t)C);
    for (int64_t i = 0; i < nx; i++) xf[(size_t)i] = cpu::to_f32(((const T *)x)[i]);
    for (int c = 0; c < C; c++) gf[(size_t)c] = cpu::to_f32(((const T *)gamma)[c]);
    wv_backend_cpu()->rms_norm(NULL, xf.data(), gx, yf.data(), gy, C, n, gf.data(), silu);
    for (int64_t i = 0; i < ny; i++) ((T *)y)[i] = cpu::from_f32<T>(yf[(size_t)i]);
}

template <typename T> void softmax_reference(const float *scores, void *probs_, int N, int rows)
{
    T *probs = (T *)probs_;
    for (int r = 0; r < rows; r++) {
        const float *s = scores + (int64_t)r * N;
        float mx = -INFINITY, sum = 0.0f;
        for (int j = 0; j < N; j++) mx = fmaxf(mx, s[j]);
        for (int j = 0; j < N; j++) sum += expf(s[j] - mx);
        for (int j = 0; j < N; j++) probs[(int64_t)r * N + j] = cpu::from_f32<T>(expf(s[j] - mx) / sum);
    }
}

template <typename V> V arg(void **args, int i) { return *(V *)args[i]; }

template <typename T> bound_launch *rms_norm_serial(void **a, dim3_on_cpu, dim3_on_cpu)
{
    auto x = arg<const void *>(a, 0), gamma = arg<const void *>(a, 6);
    auto y = arg<void *>(a, 2);
    auto gx = arg<wv_grid>(a, 1), gy = arg<wv_grid>(a, 3);
    int C = arg<int>(a, 4), n = arg<int>(a, 5), silu = arg<int>(a, 7);
    return new bound_launch{[=] { rms_norm_reference<T>(x, gx, y, gy, C, n, gamma, silu); }};
}

template <typename T> bound_launch *rms_norm_vec_serial(void **a, dim3_on_cpu grid, dim3_on_cpu)
{
    auto x = arg<const void *>(a, 0), gamma = arg<const void *>(a, 5);
    auto y = arg<void *>(a, 2);
    auto gx = arg<wv_grid>(a, 1), gy = arg<wv_grid>(a, 3);
    int C = arg<int>(a, 4), silu = arg<int>(a, 6), n = (int)grid.z;
    return new bound_launch{[=] { rms_norm_reference<T>(x, gx, y, gy, C, n, gamma, silu); }};
}

template <typename T> bound_launch *softmax_serial(void **a, dim3_on_cpu grid, dim3_on_cpu)
{
    auto scores = arg<const float *>(a, 0);
    auto probs = arg<void *>(a, 1);
    int N = arg<int>(a, 2), rows = (int)grid.x;
    return new bound_launch{[=] { softmax_reference<T>(scores, probs, N, rows); }};
}

struct kernel_entry {
    const char *name;
    binder_fn bind, serial; /* serial: where the threads cooperate, the reference */
};

#define ALONE(name, ...) {name, binder<&cpu::__VA_ARGS__, ALONE_RUN>, NULL}
#define EACH_TYPE(HOW, k) HOW(#k "<float>", k<float>), HOW(#k "<__half>", k<__half>), HOW(#k "<__nv_bfloat16>", k<__nv_bfloat16>)
#define EACH_UNIT(HOW, k) HOW(#k "<uint4>", k<uint4>), HOW(#k "<unsigned short>", k<uint16_t>), HOW(#k "<float>", k<float>)
#define COOPERATIVE(HOW, k, serial)                                                   \
    {#k "<float>", binder<&cpu::k<float>, HOW>, serial<float>},                       \
    {#k "<__half>", binder<&cpu::k<__half>, HOW>, serial<__half>},                    \
    {#k "<__nv_bfloat16>", binder<&cpu::k<__nv_bfloat16>, HOW>, serial<__nv_bfloat16>}

/* Every kernel the backend launches, by the name the demangler gives its instance. */
const kernel_entry KERNELS[] = {
    EACH_TYPE(ALONE, load_latent_kernel),
    ALONE("find_nonfinite_kernel", find_nonfinite_kernel),
    EACH_TYPE(ALONE, bias_add_kernel),
    ALONE("rotate_taps_kernel<uint4>", rotate_taps_kernel<uint4>),
    ALONE("rotate_taps_kernel<unsigned short>", rotate_taps_kernel<uint16_t>),
    COOPERATIVE(WARP_RUN, rms_norm_kernel, rms_norm_serial),
    COOPERATIVE(AS_LAUNCHED_RUN, rms_norm_vec_kernel, rms_norm_vec_serial),
    EACH_TYPE(ALONE, zero_ring_kernel),
    EACH_UNIT(ALONE, copy_channels_kernel),
    EACH_UNIT(ALONE, pixel_shuffle_kernel),
    EACH_TYPE(ALONE, direct_conv_kernel),
    COOPERATIVE(ROW_WARPS_RUN, softmax_rows_kernel, softmax_serial),
    EACH_TYPE(ALONE, write_output_kernel),
};

/* write_output_kernel(src, gs, sy, sx, h, w, out, mode, nonfinite): out [h][w][WV_RGB] items of the
 * output type `mode`. */
size_t staged_output_bytes(void **a, const void **lo)
{
    *lo = arg<void *>(a, 6);
    size_t item = wv_output_item_bytes((wv_output_mode)arg<int>(a, 7));
    return (size_t)arg<int>(a, 4) * (size_t)arg<int>(a, 5) * WV_RGB * item;
}

/* The kernels whose output another stream reads, and where it is (kernel_on_cpu_writes). */
struct kernel_write {
    const char *name;
    size_t (*range)(void **args, const void **lo);
};

const kernel_write CROSS_STREAM_WRITES[] = {
    {"write_output_kernel<float>", staged_output_bytes},
    {"write_output_kernel<__half>", staged_output_bytes},
    {"write_output_kernel<__nv_bfloat16>", staged_output_bytes},
};

float load(const void *p, int type, int64_t i)
{
    if (type == ON_CPU_F32) return ((const float *)p)[i];
    if (type == ON_CPU_F16) return __half2float(((const __half *)p)[i]);
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

void store(void *p, int type, int64_t i, float v)
{
    if (type == ON_CPU_F32) ((float *)p)[i] = v;
    else if (type == ON_CPU_F16) ((__half *)p)[i] = __float2half_rn(v);
    else ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
}

/* acc[j] += x . w[j * stride ..] over n, for j < 4: four dot products side by side, each summed in order.
 * Not checked by the sanitizers: conv_on_cpu's hot loop, over buffers it sized itself. */
__attribute__((no_sanitize("address", "undefined"))) void dot4(const float *x, const float *w, size_t stride, int n,
                                                               float *acc)
{
    const float *w0 = w, *w1 = w + stride, *w2 = w + 2 * stride, *w3 = w + 3 * stride;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    for (int c = 0; c < n; c++) {
        float v = x[c];
        a0 += v * w0[c], a1 += v * w1[c], a2 += v * w2[c], a3 += v * w3[c];
    }
    acc[0] += a0, acc[1] += a1, acc[2] += a2, acc[3] += a3;
}

/* Element offset of index idx[0..nd) in t. */
int64_t offset(const tensor_on_cpu *t, const int *idx)
{
    int64_t o = 0;
    for (int d = 0; d < t->nd; d++) o += (int64_t)idx[d] * t->strides[d];
    return o;
}

/* Steps idx through dims[0..n) (last fastest); 0 when it wraps round. */
int next_index(int *idx, const int *dims, int n)
{
    for (int d = n - 1; d >= 0; d--) {
        if (++idx[d] < dims[d]) return 1;
        idx[d] = 0;
    }
    return 0;
}

} // namespace

extern "C" void *kernel_on_cpu_bind(const char *name, void **args, const unsigned grid[3], const unsigned block[3],
                                    int serial)
{
    for (const kernel_entry &k : KERNELS)
        if (!strcmp(k.name, name))
            return (serial && k.serial ? k.serial : k.bind)(args, {grid[0], grid[1], grid[2]},
                                                             {block[0], block[1], block[2]});
    return NULL;
}

extern "C" int kernel_on_cpu_writes(const char *name, void **args, const void **lo, size_t *bytes)
{
    for (const kernel_write &k : CROSS_STREAM_WRITES)
        if (!strcmp(k.name, name)) {
            *bytes = k.range(args, lo);
            return 1;
        }
    return 0;
}

extern "C" void kernel_on_cpu_run(void *bound) { ((bound_launch *)bound)->run(); }

extern "C" void kernel_on_cpu_free(void *bound) { delete (bound_launch *)bound; }

/* Not checked by the sanitizers, as dot4: its own loops run over buffers it sized itself, and every
 * read and write of the operands goes through load() and store(), which are checked. */
extern "C" __attribute__((no_sanitize("address", "undefined"))) void
conv_on_cpu(const tensor_on_cpu *x, const void *xp, const tensor_on_cpu *w, const void *wp, const int *pad,
            float alpha1, const void *zp, float alpha2, const void *biasp, int bias_type, float beta,
            const tensor_on_cpu *y, void *yp)
{
    int sp = x->nd - 2, N = x->dims[0], C = x->dims[1], K = w->dims[0], taps = 1, points = 1;
    int idx[8] = {0}, pos[8];
    for (int d = 0; d < sp; d++) taps *= w->dims[2 + d], points *= x->dims[2 + d];
    /* x and w as dense floats, [n][point][c] and [k][tap][c], so the sums run over c in a row */
    std::vector<float> xf((size_t)N * points * C), wf((size_t)K * taps * C), acc((size_t)K);
    std::vector<int> tap_at((size_t)taps * sp); /* [tap][d]: where each tap is along each spatial axis */
    for (int t = 0; t < taps; t++)
        for (int d = sp - 1, rest = t; d >= 0; d--)
            tap_at[(size_t)t * sp + d] = rest % w->dims[2 + d], rest /= w->dims[2 + d];
    do {
        int64_t q = 0;
        for (int d = 0; d < sp; d++) q = q * x->dims[2 + d] + idx[2 + d];
        xf[((size_t)idx[0] * points + (size_t)q) * C + (size_t)idx[1]] = load(xp, x->type, offset(x, idx));
    } while (next_index(idx, x->dims, x->nd));
    for (size_t i = 0; i < wf.size(); i++) wf[i] = load(wp, w->type, (int64_t)i);
    memset(idx, 0, sizeof idx);
    int ydims[8];
    for (int d = 0; d < y->nd; d++) ydims[d] = d == 1 ? 1 : y->dims[d]; /* every k at once */
    do { /* n, output position */
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int t = 0; t < taps; t++) {
            int inside = 1;
            int64_t q = 0;
            for (int d = 0; d < sp; d++) {
                pos[d] = idx[2 + d] + tap_at[(size_t)t * sp + d] - pad[d];
                inside &= pos[d] >= 0 && pos[d] < x->dims[2 + d];
                q = q * x->dims[2 + d] + pos[d];
            }
            if (!inside) continue;
            const float *xs = &xf[((size_t)idx[0] * points + (size_t)q) * C];
            int k = 0;
            for (; k + 4 <= K; k += 4) /* four sums at once, each in c's order: the same floats, faster */
                dot4(xs, &wf[((size_t)k * taps + t) * C], (size_t)taps * C, C, &acc[k]);
            for (; k < K; k++) {
                const float *ws = &wf[((size_t)k * taps + t) * C];
                float a = 0.0f;
                for (int c = 0; c < C; c++) a += xs[c] * ws[c];
                acc[k] += a;
            }
        }
        for (int k = 0; k < K; k++) {
            idx[1] = k;
            int64_t o = offset(y, idx);
            float v = alpha1 * acc[k];
            if (biasp) v += load(biasp, bias_type, k) + (alpha2 != 0.0f ? alpha2 * load(zp, y->type, o) : 0.0f);
            else if (beta != 0.0f) v += beta * load(yp, y->type, o);
            store(yp, y->type, o, v);
        }
        idx[1] = 0;
    } while (next_index(idx, ydims, y->nd));
}

extern "C" void gemm_on_cpu(int ta, int tb, int m, int n, int k, float alpha, const void *A, int at, int lda,
                            const void *B, int bt, int ldb, float beta, void *C, int ct, int ldc)
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int p = 0; p < k; p++)
                acc += load(A, at, ta ? (int64_t)p + (int64_t)i * lda : (int64_t)i + (int64_t)p * lda) *
                       load(B, bt, tb ? (int64_t)j + (int64_t)p * ldb : (int64_t)p + (int64_t)j * ldb);
            int64_t o = (int64_t)i + (int64_t)j * ldc;
            store(C, ct, o, alpha * acc + (beta != 0.0f ? beta * load(C, ct, o) : 0.0f));
        }
}
