// Improved Perlin noise in 3D (Perlin 2002), reproducing the `noise` package's pnoise3 bit for bit in
// float32: same permutation, gradients, fade curve, octave loop and repeat handling.
// One thread per point, grid-stride loop. Compile without FMA contraction (--fmad=false) so the float
// operations round exactly as the CPU implementation's do.
#include "perlin_table.h"

__device__ __constant__ unsigned char PERLIN_PERM[512] = {SHAPEQC_PERLIN_PERMUTATION, SHAPEQC_PERLIN_PERMUTATION};
__device__ __constant__ float PERLIN_GRAD[48] = {SHAPEQC_PERLIN_GRADIENTS};

__device__ inline float perlin_lerp(float t, float a, float b) { return a + t * (b - a); }

__device__ inline float perlin_grad(int hash, float x, float y, float z) {
    const int h = (hash & 15) * 3;
    return x * PERLIN_GRAD[h] + y * PERLIN_GRAD[h + 1] + z * PERLIN_GRAD[h + 2];
}

__device__ inline float perlin_fade(float t) { return t * t * t * (t * (t * 6.0f - 15.0f) + 10.0f); }

// Indices wrap at 512: `noise` reads past its table for base >= 2 (undefined there); here they wrap.
__device__ inline int perlin_perm(int index) { return PERLIN_PERM[index & 511]; }

__device__ float perlin_noise3(float x, float y, float z, int repeatx, int repeaty, int repeatz, int base) {
    int i = (int)floorf(fmodf(x, (float)repeatx));
    int j = (int)floorf(fmodf(y, (float)repeaty));
    int k = (int)floorf(fmodf(z, (float)repeatz));
    int ii = (int)fmodf((float)(i + 1), (float)repeatx);
    int jj = (int)fmodf((float)(j + 1), (float)repeaty);
    int kk = (int)fmodf((float)(k + 1), (float)repeatz);
    i = (i & 255) + base;
    j = (j & 255) + base;
    k = (k & 255) + base;
    ii = (ii & 255) + base;
    jj = (jj & 255) + base;
    kk = (kk & 255) + base;

    x -= floorf(x);
    y -= floorf(y);
    z -= floorf(z);
    const float fx = perlin_fade(x), fy = perlin_fade(y), fz = perlin_fade(z);

    const int A = perlin_perm(i), AA = perlin_perm(A + j), AB = perlin_perm(A + jj);
    const int B = perlin_perm(ii), BA = perlin_perm(B + j), BB = perlin_perm(B + jj);

    return perlin_lerp(fz,
        perlin_lerp(fy,
            perlin_lerp(fx, perlin_grad(perlin_perm(AA + k), x, y, z),
                            perlin_grad(perlin_perm(BA + k), x - 1, y, z)),
            perlin_lerp(fx, perlin_grad(perlin_perm(AB + k), x, y - 1, z),
                            perlin_grad(perlin_perm(BB + k), x - 1, y - 1, z))),
        perlin_lerp(fy,
            perlin_lerp(fx, perlin_grad(perlin_perm(AA + kk), x, y, z - 1),
                            perlin_grad(perlin_perm(BA + kk), x - 1, y, z - 1)),
            perlin_lerp(fx, perlin_grad(perlin_perm(AB + kk), x, y - 1, z - 1),
                            perlin_grad(perlin_perm(BB + kk), x - 1, y - 1, z - 1))));
}

extern "C" __global__ void perlin3d_kernel(const float* x, const float* y, const float* z, float* out,
                                           long long n, int octaves, float persistence, float lacunarity,
                                           int repeatx, int repeaty, int repeatz, int base) {
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < n;
         p += (long long)blockDim.x * gridDim.x) {
        if (octaves == 1) {
            out[p] = perlin_noise3(x[p], y[p], z[p], repeatx, repeaty, repeatz, base);
            continue;
        }
        float freq = 1.0f, amp = 1.0f, max = 0.0f, total = 0.0f;
        for (int o = 0; o < octaves; ++o) {
            total += perlin_noise3(x[p] * freq, y[p] * freq, z[p] * freq, (int)(repeatx * freq),
                                   (int)(repeaty * freq), (int)(repeatz * freq), base) * amp;
            max += amp;
            freq *= lacunarity;
            amp *= persistence;
        }
        out[p] = total / max;
    }
}
