/* Enough of CUDA's device dialect to compile cuda/wv_kernels.cuh with a host C++ compiler and run its
 * kernels: tests/c/test_kernels_on_cpu.cpp (built by tests/c/run.sh) checks them against the CPU
 * backend's ops on any machine, GPU or not. A kernel whose threads never cooperate (a grid-stride loop
 * over independent elements) is called directly, as one thread of a one-block grid. launch_on_cpu runs
 * a whole grid, a block at a time with each of its threads a host thread, for kernels whose lanes
 * exchange values in a warp (__shfl_xor_sync) or whose threads meet in shared memory (WV_SHARED,
 * __syncthreads). Included by the cuda_bf16.h and cuda_fp16.h beside it, which stand in for the
 * toolkit's. */
#ifndef CUDA_ON_CPU_H
#define CUDA_ON_CPU_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <barrier>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* Shared memory: one buffer for all the threads of the block running (one block at a time), where
 * a GPU's would start with what an earlier block left. Here every block starts with its static
 * arrays all 0xFF bytes (a NaN in every float type), so that a slot no thread of the block wrote
 * reads as NaN, not as zero or as the last block's value.
 * The static arrays are carved from one buffer in the order the kernel declares them (each thread
 * does it the same way). CUDA's own __shared__ is left undefined here: kernels use the macros. */
alignas(16) inline unsigned char g_static_shared_on_cpu[48 << 10]; /* CUDA's static limit */
inline thread_local size_t t_static_shared_taken;

template <typename T> T *take_static_shared_on_cpu(size_t n)
{
    size_t at = (t_static_shared_taken + 15) / 16 * 16;
    t_static_shared_taken = at + n * sizeof(T);
    if (t_static_shared_taken > sizeof g_static_shared_on_cpu) abort();
    return (T *)(g_static_shared_on_cpu + at);
}
#define WV_SHARED(T, name, n) T *name = take_static_shared_on_cpu<T>(n)

inline void poison_static_shared_on_cpu() { memset(g_static_shared_on_cpu, 0xFF, sizeof g_static_shared_on_cpu); }

struct dim3_on_cpu {
    unsigned x, y, z;
};
inline thread_local dim3_on_cpu threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
inline dim3_on_cpu blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

/* 16-byte aligned, as CUDA's: a misaligned vector access (a fault on a GPU) is then one that
 * -fsanitize=alignment reports here */
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 b)
{
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) /* round to nearest even; a NaN stays one, as on the GPU */
{
    uint32_t u;
    if (f != f) return __nv_bfloat16{0x7fff}; /* rounding its bits could carry into an Inf or a -0 */
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}

inline float __half2float(__half h)
{
    int sign = h.bits >> 15, exp = (h.bits >> 10) & 31, man = h.bits & 1023;
    float v = exp == 0    ? ldexpf((float)man, -24)
              : exp == 31 ? (man ? NAN : INFINITY)
                          : ldexpf((float)(man | 1024), exp - 25);
    return sign ? -v : v;
}

inline __half __float2half_rn(float f) /* NaN, Inf (and past half's range) as the GPU does */
{
    int e;
    float m = frexpf(fabsf(f), &e); /* |f| = m 2^e, m in [0.5, 1) */
    uint16_t sign = f < 0 ? 0x8000 : 0;
    if (f != f) return __half{0x7e00};
    if (f == 0.0f) return __half{sign};
    if (isinf(f) || fabsf(f) >= 65520.0f) return __half{(uint16_t)(sign | 0x7c00)};
    if (e - 1 < -14) return __half{(uint16_t)(sign | (uint16_t)lrintf(ldexpf(fabsf(f), 24)))};
    uint32_t man = (uint32_t)lrintf(ldexpf(m, 11)); /* 1024..2048 with the implicit bit */
    if (man == 2048) man = 1024, e++;
    return __half{(uint16_t)(sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)(man - 1024))};
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float a, float b) { return a / b; }

/* The block launch_on_cpu is running: a barrier for the whole block and one per warp, and a slot per
 * thread for the values a shuffle exchanges. */
struct block_on_cpu {
    std::barrier<> block;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<float> slots;
    explicit block_on_cpu(unsigned threads) : block((ptrdiff_t)threads), slots(threads)
    {
        for (unsigned w = 0; w * 32 < threads; w++)
            warps.push_back(std::make_unique<std::barrier<>>((ptrdiff_t)(threads - w * 32 < 32 ? threads - w * 32 : 32)));
    }
};
inline block_on_cpu *g_block_on_cpu;

inline unsigned thread_rank() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

inline void __syncthreads()
{
    if (g_block_on_cpu) g_block_on_cpu->block.arrive_and_wait();
}

/* Every lane of the warp takes part (the full mask: all the kernels here pass it). */
inline float __shfl_xor_sync(unsigned, float v, int lane_mask)
{
    if (!g_block_on_cpu) abort(); /* a shuffling kernel called directly: run it with launch_on_cpu */
    unsigned me = thread_rank(), partner = (me & ~31u) | ((me & 31u) ^ (unsigned)lane_mask);
    std::barrier<> &warp = *g_block_on_cpu->warps[me / 32];
    g_block_on_cpu->slots[me] = v;
    warp.arrive_and_wait();
    float got = g_block_on_cpu->slots[partner];
    warp.arrive_and_wait(); /* nobody writes its slot again before every lane has read */
    return got;
}

/* kernel<<<grid, block>>>: run() called by every thread of the grid, block after block. */
template <typename F> void launch_on_cpu(dim3_on_cpu grid, dim3_on_cpu block, F run)
{
    unsigned threads = block.x * block.y * block.z;
    gridDim = grid, blockDim = block;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                block_on_cpu state(threads);
                std::vector<std::thread> team;
                g_block_on_cpu = &state;
                poison_static_shared_on_cpu();
                for (unsigned t = 0; t < threads; t++)
                    team.emplace_back([&, t] {
                        threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                        blockIdx = {x, y, z};
                        t_static_shared_taken = 0;
                        run();
                    });
                for (std::thread &th : team) th.join();
                g_block_on_cpu = nullptr;
            }
    gridDim = {1, 1, 1}, blockDim = {1, 1, 1};
}
/* A kernel whose threads never cooperate, run as one thread of a one-block grid (the caller sets
 * the dims), its shared memory starting as launch_on_cpu's does. */
template <typename F> void run_alone_on_cpu(F run)
{
    poison_static_shared_on_cpu();
    t_static_shared_taken = 0;
    run();
}

inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v)
{
    unsigned long long old = *p;
    if (v < old) *p = v;
    return old;
}

#endif
