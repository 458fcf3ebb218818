// Boundary sampling on a voxel grid: points uniform by area on the faces between occupied and empty voxels,
// offset by isotropic Gaussian noise (a mixture of sigmas) or drawn uniformly in the volume, with their exact
// occupancy by voxel lookup.
//
// Randomness is counter-based (Philox4x32-10, Salmon et al. 2011): point n draws from counters (n, 0, 0, 0)
// and (n, 1, 0, 0) under the key (seed_lo, seed_hi), so every point is independent of launch layout and the
// CPU implementation reproduces it exactly. One thread per point, grid-stride loop.
//
// Faces are given as sorted keys: key = ((i * H + j) * W + k) * 6 + direction, direction = 2 * axis + side
// (side 0: the face at coordinate i_axis, side 1: at i_axis + 1). Points are continuous voxel coordinates,
// voxel (i, j, k) spanning [i, i+1) x [j, j+1) x [k, k+1).

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ inline void philox_round(unsigned int* c, const unsigned int* k) {
    const unsigned int hi0 = __umulhi(PHILOX_M0, c[0]), lo0 = PHILOX_M0 * c[0];
    const unsigned int hi1 = __umulhi(PHILOX_M1, c[2]), lo1 = PHILOX_M1 * c[2];
    const unsigned int c1 = c[1], c3 = c[3];
    c[0] = hi1 ^ c1 ^ k[0];
    c[1] = lo1;
    c[2] = hi0 ^ c3 ^ k[1];
    c[3] = lo0;
}

__device__ inline void philox4x32_10(unsigned int* c, unsigned int key0, unsigned int key1) {
    unsigned int k[2] = {key0, key1};
    philox_round(c, k);
    for (int r = 1; r < 10; ++r) {
        k[0] += PHILOX_W0;
        k[1] += PHILOX_W1;
        philox_round(c, k);
    }
}

// [0, 1) with 24 random bits: exact in float32 on every platform
__device__ inline float unit_float(unsigned int r) { return (float)(r >> 8) * 5.9604644775390625e-08f; }
// (0, 1]: safe for log
__device__ inline float unit_float_open(unsigned int r) { return (float)((r >> 8) + 1u) * 5.9604644775390625e-08f; }

extern "C" __global__ void boundary_sampling_kernel(
    const unsigned char* grid, const long long* face_keys, long long n_faces, int D, int H, int W,
    long long n_points, unsigned int seed_lo, unsigned int seed_hi,
    const float* sigmas_voxels, const float* thresholds, int n_sigmas, float uniform_fraction,
    float* points, unsigned char* occupancy) {
    for (long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x; n < n_points;
         n += (long long)blockDim.x * gridDim.x) {
        unsigned int r[8] = {(unsigned int)n, 0u, (unsigned int)(n >> 32), 0u,
                             (unsigned int)n, 1u, (unsigned int)(n >> 32), 0u};
        philox4x32_10(r, seed_lo, seed_hi);
        philox4x32_10(r + 4, seed_lo, seed_hi);

        const float u = unit_float(r[1]), v = unit_float(r[2]), choice = unit_float(r[3]);
        float p[3];
        if (choice < uniform_fraction) {
            p[0] = u * (float)D;
            p[1] = v * (float)H;
            p[2] = unit_float(r[4]) * (float)W;
        } else {
            const long long face = (long long)(((unsigned long long)r[0] * (unsigned long long)n_faces) >> 32);
            const long long key = face_keys[face];
            const int direction = (int)(key % 6);
            const long long voxel = key / 6;
            const int index[3] = {(int)(voxel / ((long long)H * W)), (int)((voxel / W) % H), (int)(voxel % W)};
            const int axis = direction / 2, side = direction % 2;
            const int a1 = (axis + 1) % 3, a2 = (axis + 2) % 3;
            p[axis] = (float)(index[axis] + side);
            p[a1] = (float)index[a1] + u;
            p[a2] = (float)index[a2] + v;

            int component = n_sigmas - 1;
            for (int s = 0; s < n_sigmas - 1; ++s) {
                if (choice < thresholds[s]) { component = s; break; }
            }
            const float sigma = sigmas_voxels[component];
            const float radius_a = sqrtf(-2.0f * logf(unit_float_open(r[4])));
            const float angle_a = 6.2831853071795864f * unit_float(r[5]);
            const float radius_b = sqrtf(-2.0f * logf(unit_float_open(r[6])));
            const float angle_b = 6.2831853071795864f * unit_float(r[7]);
            p[0] = p[0] + sigma * (radius_a * cosf(angle_a));
            p[1] = p[1] + sigma * (radius_a * sinf(angle_a));
            p[2] = p[2] + sigma * (radius_b * cosf(angle_b));
        }
        points[3 * n] = p[0];
        points[3 * n + 1] = p[1];
        points[3 * n + 2] = p[2];
        const float fi = floorf(p[0]), fj = floorf(p[1]), fk = floorf(p[2]);
        unsigned char inside = 0;
        if (fi >= 0.0f && fj >= 0.0f && fk >= 0.0f && fi < (float)D && fj < (float)H && fk < (float)W) {
            inside = grid[((long long)fi * H + (long long)fj) * W + (long long)fk] != 0;
        }
        occupancy[n] = inside;
    }
}
