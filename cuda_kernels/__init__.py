"""CUDA kernels (CuPy RawModule) with CPU implementations, behind one Python API per kernel.

Arrays of the caller's kind go in and come out: numpy / CPU torch run the CPU implementation, CuPy / CUDA
torch run the kernel (zero-copy through DLPack). Importing this package needs neither CuPy nor a GPU.

- ``sample_boundary(grid, n, sigma, seed=0, weights=None, uniform_fraction=0.0) -> (points, occupancy)``
- ``perlin3d(x, y, z, octaves=1, persistence=0.5, lacunarity=2.0, repeatx=1024, repeaty=1024, repeatz=1024,
  base=0)``: elementwise equal to ``noise.pnoise3``.
- ``voxelize_mesh(vertices, faces, shape) -> (D, H, W) bool``: solid voxelization by ray parity.
"""

from shapeqc.cuda_kernels.backend import gpu_available
from shapeqc.cuda_kernels.boundary_sampling import sample_boundary, voxel_occupancy
from shapeqc.cuda_kernels.perlin import perlin3d
from shapeqc.cuda_kernels.voxelize import voxelize_mesh

__all__ = ["gpu_available", "perlin3d", "sample_boundary", "voxel_occupancy", "voxelize_mesh"]
