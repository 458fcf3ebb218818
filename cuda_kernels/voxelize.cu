// Solid voxelization of a triangle mesh by ray parity along array axis 2.
//
// For every voxel column (i, j), a ray runs through the voxel centres (i + 0.5, j + 0.5, z) along +z. Each
// triangle the ray crosses adds one toggle at the first voxel whose centre lies beyond the crossing; the
// parity of the toggles up to voxel k says whether its centre is inside (a watertight mesh crosses an even
// number of times in total).
//
// Degenerate hits (the ray through a vertex or along an edge, as with marching-cubes meshes of voxel masks,
// whose vertices sit on the lines through voxel centres) are decided by simulation of simplicity: the ray is
// treated as shifted by an infinitesimal (eps, eps^2) in (axis 0, axis 1), so every hit belongs to exactly
// one triangle of a fan. Edge functions are evaluated in double with canonical vertex order, so a shared edge
// gives exactly opposite values in its two triangles.
//
// Pass 1: one thread per triangle, atomicAdd on toggles (D * H * (W + 1) ints). Pass 2: one thread per column.

__device__ inline double edge_function(double ax, double ay, double bx, double by, double px, double py) {
    // antisymmetric under swapping a and b, bit for bit
    if (ax < bx || (ax == bx && ay < by)) return (bx - ax) * (py - ay) - (by - ay) * (px - ax);
    return -((ax - bx) * (py - by) - (ay - by) * (px - bx));
}

// Inside the half-plane left of a -> b, with ties broken by the (eps, eps^2) shift of the point.
__device__ inline bool left_of_edge(double e, double ax, double ay, double bx, double by) {
    if (e != 0.0) return e > 0.0;
    const double dx = bx - ax, dy = by - ay;
    return dy < 0.0 || (dy == 0.0 && dx > 0.0);
}

extern "C" __global__ void voxelize_toggle_kernel(const float* vertices, const long long* faces,
                                                  long long n_faces, int D, int H, int W, int* toggles) {
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n_faces;
         t += (long long)blockDim.x * gridDim.x) {
        double v[3][3];
        for (int c = 0; c < 3; ++c)
            for (int a = 0; a < 3; ++a) v[c][a] = (double)vertices[3 * faces[3 * t + c] + a];
        double area = edge_function(v[0][0], v[0][1], v[1][0], v[1][1], v[2][0], v[2][1]);
        if (area == 0.0) continue;  // parallel to the ray
        if (area < 0.0) {           // orient counter-clockwise in the (axis 0, axis 1) plane
            for (int a = 0; a < 3; ++a) { const double s = v[1][a]; v[1][a] = v[2][a]; v[2][a] = s; }
            area = -area;
        }
        const double xmin = fmin(v[0][0], fmin(v[1][0], v[2][0])), xmax = fmax(v[0][0], fmax(v[1][0], v[2][0]));
        const double ymin = fmin(v[0][1], fmin(v[1][1], v[2][1])), ymax = fmax(v[0][1], fmax(v[1][1], v[2][1]));
        const int i0 = (int)fmax(0.0, ceil(xmin - 0.5)), i1 = (int)fmin((double)(D - 1), floor(xmax - 0.5));
        const int j0 = (int)fmax(0.0, ceil(ymin - 0.5)), j1 = (int)fmin((double)(H - 1), floor(ymax - 0.5));
        for (int i = i0; i <= i1; ++i) {
            for (int j = j0; j <= j1; ++j) {
                const double px = i + 0.5, py = j + 0.5;
                const double e0 = edge_function(v[1][0], v[1][1], v[2][0], v[2][1], px, py);
                const double e1 = edge_function(v[2][0], v[2][1], v[0][0], v[0][1], px, py);
                const double e2 = edge_function(v[0][0], v[0][1], v[1][0], v[1][1], px, py);
                if (!left_of_edge(e0, v[1][0], v[1][1], v[2][0], v[2][1])) continue;
                if (!left_of_edge(e1, v[2][0], v[2][1], v[0][0], v[0][1])) continue;
                if (!left_of_edge(e2, v[0][0], v[0][1], v[1][0], v[1][1])) continue;
                const double z = (e0 * v[0][2] + e1 * v[1][2] + e2 * v[2][2]) / area;
                // first voxel whose centre k + 0.5 lies beyond z
                double first = floor(z - 0.5) + 1.0;
                if (first < 0.0) first = 0.0;
                if (first > (double)W) first = (double)W;
                atomicAdd(&toggles[((long long)i * H + j) * (W + 1) + (long long)first], 1);
            }
        }
    }
}

extern "C" __global__ void voxelize_parity_kernel(const int* toggles, int D, int H, int W, unsigned char* inside) {
    for (long long column = (long long)blockIdx.x * blockDim.x + threadIdx.x; column < (long long)D * H;
         column += (long long)blockDim.x * gridDim.x) {
        int parity = 0;
        for (int k = 0; k < W; ++k) {
            parity ^= toggles[column * (W + 1) + k] & 1;
            inside[column * W + k] = (unsigned char)parity;
        }
    }
}
