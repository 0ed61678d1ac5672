/* Enough of CUDA's device dialect to compile cuda/wv_kernels.cuh with a host C++ compiler and run,
 * as one thread of a one-block grid, the kernels whose threads never cooperate (grid-stride loops
 * over independent elements): tests/c/test_kernels_on_cpu.cpp (built by tests/c/run.sh) checks
 * their index arithmetic on any machine, GPU or not. Kernels that shuffle across a warp or reduce
 * in a block compile here but are not run. Included by the cuda_bf16.h and cuda_fp16.h beside it,
 * which stand in for the toolkit's. */
#ifndef CUDA_ON_CPU_H
#define CUDA_ON_CPU_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__

struct dim3_on_cpu {
    unsigned x, y, z;
};
inline dim3_on_cpu threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

struct uint4 {
    unsigned x, y, z, w;
};
struct float4 {
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

inline __nv_bfloat16 __float2bfloat16_rn(float f) /* round to nearest even (no NaN inputs here) */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}

inline float __half2float(__half h)
{
    int sign = h.bits >> 15, exp = (h.bits >> 10) & 31, man = h.bits & 1023;
    float v = exp == 0 ? ldexpf((float)man, -24) : exp == 31 ? INFINITY : ldexpf((float)(man | 1024), exp - 25);
    return sign ? -v : v;
}

inline __half __float2half_rn(float f) /* finite values in half's normal range, as the tests use */
{
    int e;
    float m = frexpf(fabsf(f), &e); /* |f| = m 2^e, m in [0.5, 1) */
    uint16_t sign = f < 0 ? 0x8000 : 0;
    if (f == 0.0f) return __half{sign};
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
inline void __syncthreads() {}
inline float __shfl_xor_sync(unsigned, float v, int) { return v; } /* not run: one thread has no warp */
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v)
{
    unsigned long long old = *p;
    if (v < old) *p = v;
    return old;
}

#endif
