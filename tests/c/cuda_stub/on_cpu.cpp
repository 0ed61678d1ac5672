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

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

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
        if (how == ALONE_RUN) body();
        else launch_on_cpu(grid, block, body);
    }};
}

template <auto F, how_run How> bound_launch *binder(void **args, dim3_on_cpu grid, dim3_on_cpu block)
{
    return bind_values(F, args, grid, block, How, std::make_index_sequence<arity(F)>{});
}

struct kernel_entry {
    const char *name;
    bound_launch *(*bind)(void **, dim3_on_cpu, dim3_on_cpu);
};

#define ALONE(name, ...) {name, binder<&cpu::__VA_ARGS__, ALONE_RUN>}
#define WARP(name, ...) {name, binder<&cpu::__VA_ARGS__, WARP_RUN>}
#define ROW_WARPS(name, ...) {name, binder<&cpu::__VA_ARGS__, ROW_WARPS_RUN>}
#define AS_LAUNCHED(name, ...) {name, binder<&cpu::__VA_ARGS__, AS_LAUNCHED_RUN>}
#define EACH_TYPE(HOW, k) HOW(#k "<float>", k<float>), HOW(#k "<__half>", k<__half>), HOW(#k "<__nv_bfloat16>", k<__nv_bfloat16>)
#define EACH_UNIT(HOW, k) HOW(#k "<uint4>", k<uint4>), HOW(#k "<unsigned short>", k<uint16_t>), HOW(#k "<float>", k<float>)

/* Every kernel the backend launches, by the name the demangler gives its instance. */
const kernel_entry KERNELS[] = {
    EACH_TYPE(ALONE, load_latent_kernel),
    ALONE("find_nonfinite_kernel", find_nonfinite_kernel),
    EACH_TYPE(ALONE, bias_add_kernel),
    ALONE("rotate_taps_kernel<uint4>", rotate_taps_kernel<uint4>),
    ALONE("rotate_taps_kernel<unsigned short>", rotate_taps_kernel<uint16_t>),
    EACH_TYPE(WARP, rms_norm_kernel),
    EACH_TYPE(AS_LAUNCHED, rms_norm_vec_kernel),
    EACH_TYPE(ALONE, zero_ring_kernel),
    EACH_UNIT(ALONE, copy_channels_kernel),
    EACH_UNIT(ALONE, pixel_shuffle_kernel),
    EACH_TYPE(ALONE, direct_conv_kernel),
    EACH_TYPE(ALONE, narrow_conv_kernel),
    EACH_TYPE(ROW_WARPS, softmax_rows_kernel),
    EACH_TYPE(ALONE, write_output_kernel),
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

extern "C" void *kernel_on_cpu_bind(const char *name, void **args, const unsigned grid[3], const unsigned block[3])
{
    for (const kernel_entry &k : KERNELS)
        if (!strcmp(k.name, name)) return k.bind(args, {grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]});
    return NULL;
}

extern "C" void kernel_on_cpu_run(void *bound) { ((bound_launch *)bound)->run(); }

extern "C" void kernel_on_cpu_free(void *bound) { delete (bound_launch *)bound; }

extern "C" void conv_on_cpu(const tensor_on_cpu *x, const void *xp, const tensor_on_cpu *w, const void *wp,
                            const int *pad, float alpha1, const void *zp, float alpha2, const void *biasp,
                            int bias_type, float beta, const tensor_on_cpu *y, void *yp)
{
    int sp = x->nd - 2, C = x->dims[1], taps = 1;
    int out_idx[8] = {0}, tap[8], in_idx[8];
    for (int d = 0; d < sp; d++) taps *= w->dims[2 + d];
    do { /* y's index: n, k, output position */
        int n = out_idx[0], k = out_idx[1];
        float acc = 0.0f;
        for (int t = 0; t < taps; t++) {
            int rest = t, inside = 1;
            for (int d = sp - 1; d >= 0; d--) tap[d] = rest % w->dims[2 + d], rest /= w->dims[2 + d];
            in_idx[0] = n;
            for (int d = 0; d < sp; d++) {
                in_idx[2 + d] = out_idx[2 + d] + tap[d] - pad[d];
                inside &= in_idx[2 + d] >= 0 && in_idx[2 + d] < x->dims[2 + d];
            }
            if (!inside) continue;
            for (int c = 0; c < C; c++) {
                in_idx[1] = c;
                acc += load(xp, x->type, offset(x, in_idx)) * load(wp, w->type, ((int64_t)k * taps + t) * C + c);
            }
        }
        int64_t o = offset(y, out_idx);
        float v = alpha1 * acc;
        if (biasp) v += load(biasp, bias_type, k) + (alpha2 != 0.0f ? alpha2 * load(zp, y->type, o) : 0.0f);
        else if (beta != 0.0f) v += beta * load(yp, y->type, o);
        store(yp, y->type, o, v);
    } while (next_index(out_idx, y->dims, y->nd));
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
