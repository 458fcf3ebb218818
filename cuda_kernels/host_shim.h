// Host shim: lets g++ compile a CUDA kernel source into a plain shared library, so tests can run the very
// same kernel code on a CPU (sequentially: one "thread" whose grid-stride loop covers every element).
// Only what shapeqc kernels use is defined; kernels must not rely on __syncthreads or warp intrinsics.
#pragma once
#include <cmath>
#include <cstdint>

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline

struct shapeqc_dim3 { unsigned int x, y, z; };
static const shapeqc_dim3 blockIdx = {0, 0, 0};
static const shapeqc_dim3 threadIdx = {0, 0, 0};
static const shapeqc_dim3 blockDim = {1, 1, 1};
static const shapeqc_dim3 gridDim = {1, 1, 1};

using std::floor;
using std::ceil;
using std::fmin;
using std::fmax;
using std::fmod;
inline float floorf(float v) { return std::floor(v); }
inline float fmodf(float a, float b) { return std::fmod(a, b); }
inline float sqrtf(float v) { return std::sqrt(v); }
inline float logf(float v) { return std::log(v); }
inline float cosf(float v) { return std::cos(v); }
inline float sinf(float v) { return std::sin(v); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * (unsigned long long)b) >> 32);
}
template <typename T> inline T atomicAdd(T* address, T value) { T old = *address; *address += value; return old; }
template <typename T> inline T atomicXor(T* address, T value) { T old = *address; *address ^= value; return old; }
