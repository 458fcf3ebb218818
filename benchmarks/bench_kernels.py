"""Kernel benchmarks on the CPU path, each against its baseline measured in the same run.

1. Boundary sampling, 100k points, real adrenal masks in 64^3 and 128^3 grids: shapeqc (face sampling +
   voxel lookup) vs the mesh route of the research pipeline (voxel faces -> trimesh mesh -> mesh.sample ->
   trimesh inside test). trimesh's inside test is slow and memory-hungry, so the baseline labels a 5k
   subsample and is scaled per point (stated in the output).
3. Mesh voxelization at 128^3 of marching-cubes meshes of real masks: shapeqc vs trimesh
   (``voxelized(pitch=1).fill()``), with the voxel mismatches of each against the mask the mesh came from
   (a marching-cubes mesh at 0.5 encloses exactly the mask's voxel centres).
2. Perlin corruption noise over a 128^3 organ grid's box grown by 10 voxels: shapeqc lattice evaluation vs a
   straightforward torch gradient-noise implementation (dense meshgrid, eight corner dot products).

Usage: python benchmarks/bench_kernels.py [--npz PATH] [--repeats 3]
Needs trimesh with rtree for baseline 1 (pip install rtree).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from shapeqc.cuda_kernels import perlin3d, sample_boundary, voxelize_mesh
from shapeqc.cuda_kernels.boundary_sampling import boundary_face_keys
from shapeqc.transforms.boxes import organ_box

DEFAULT_NPZ = Path(__file__).resolve().parents[2] / "shared/data/adrenalmnist3d/adrenalmnist3d_64_trainval.npz"


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def voxel_face_mesh(grid):
    """The research pipeline's mesh: two triangles per boundary voxel face (trimesh.Trimesh)."""
    import trimesh

    keys = boundary_face_keys(grid)
    direction, voxel = keys % 6, keys // 6
    index = np.stack(np.unravel_index(voxel, grid.shape), axis=1).astype(np.float64)
    axis, side = direction // 2, direction % 2
    corners = []
    for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
        corner = index.copy()
        rows = np.arange(len(keys))
        corner[rows, axis] += side
        corner[rows, (axis + 1) % 3] += du
        corner[rows, (axis + 2) % 3] += dv
        corners.append(corner)
    vertices = np.concatenate(corners)
    n = len(keys)
    quads = np.stack([np.arange(n) + k * n for k in range(4)], axis=1)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    mesh.fix_normals()
    return mesh


def bench_boundary(masks, repeats):
    print("## Boundary sampling, 100k points (sigmas 0.1/0.01 of the grid width)")
    print("| grid | shapeqc CPU s | points/s | mesh route s (100k, scaled from 5k inside tests) | ratio |")
    print("|---|---|---|---|---|")
    for size in (64, 128):
        grid = np.zeros((size,) * 3, np.uint8)
        offset = (size - 64) // 2
        grid[offset:offset + 64, offset:offset + 64, offset:offset + 64] = masks[0]
        ours = best_of(repeats, lambda g=grid: sample_boundary(g, 100_000, [0.1, 0.01], seed=0))

        def mesh_route(g=grid, size=size):
            mesh = voxel_face_mesh(g)
            surface = mesh.sample(100_000)
            rng = np.random.default_rng(0)
            sigma = np.where(rng.random(100_000) < 0.5, 0.1, 0.01)[:, None] * size
            points = surface + rng.normal(size=surface.shape) * sigma
            start = time.perf_counter()
            mesh.contains(points[:5000])
            inside_time = time.perf_counter() - start
            return inside_time

        start = time.perf_counter()
        inside_5k = mesh_route()
        total = time.perf_counter() - start
        baseline = total - inside_5k + inside_5k * 20
        print(f"| {size}^3 | {ours:.3f} | {100_000 / ours:,.0f} | {baseline:.2f} | {baseline / ours:.0f}x |")


def torch_gradient_noise(shape, cells, generator):
    """Straightforward gradient noise as the research pipeline wrote it: dense meshgrid, 8 corner dots."""
    lattice = [torch.linspace(0, cells, n) for n in shape]
    x, y, z = torch.meshgrid(*lattice, indexing="ij")
    gradients = torch.nn.functional.normalize(torch.randn(cells + 2, cells + 2, cells + 2, 3, generator=generator),
                                              dim=-1)
    x0, y0, z0 = x.floor().long(), y.floor().long(), z.floor().long()
    fx, fy, fz = x - x0, y - y0, z - z0

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    total = torch.zeros(shape)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                g = gradients[x0 + dx, y0 + dy, z0 + dz]
                dot = g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy) + g[..., 2] * (fz - dz)
                wx = fade(fx) if dx else 1 - fade(fx)
                wy = fade(fy) if dy else 1 - fade(fy)
                wz = fade(fz) if dz else 1 - fade(fz)
                total += wx * wy * wz * dot
    return total


def bench_perlin(masks, repeats):
    torch.set_num_threads(1)
    print("\n## Perlin corruption noise, box of the organ grown by 10 voxels in a 128^3 grid (one core)")
    print("| organ | box | shapeqc (box) | torch dense, same box | ratio | torch dense, whole 128^3 grid | ratio |")
    print("|---|---|---|---|---|---|---|")
    for index in (0, 1, 2):
        grid = np.zeros((128,) * 3, np.uint8)
        grid[32:96, 32:96, 32:96] = masks[index]
        box = organ_box(grid, 10)
        shape = tuple(s.stop - s.start for s in box)
        axes = [np.float32(17.3 * a) + np.arange(n, dtype=np.float32) * np.float32(3 / n) for a, n in enumerate(shape)]
        ours = best_of(repeats, lambda ax=axes: perlin3d(ax[0][:, None, None], ax[1][None, :, None],
                                                         ax[2][None, None, :]))
        generator = torch.Generator().manual_seed(0)
        baseline = best_of(repeats, lambda s=shape, gen=generator: torch_gradient_noise(s, 3, gen))
        # the offline research route: noise over the whole grid (3 cells per organ box -> ~7 per grid side)
        cells = int(np.ceil(3 * 128 / max(shape)))
        whole = best_of(1, lambda gen=generator, c=cells: torch_gradient_noise((128, 128, 128), c, gen))
        print(f"| val {index} | {shape} | {ours * 1000:.1f} ms | {baseline * 1000:.1f} ms | {baseline / ours:.1f}x "
              f"| {whole * 1000:.0f} ms | {whole / ours:.0f}x |")


def bench_voxelize(masks, repeats):
    import trimesh
    from skimage.measure import marching_cubes

    print("\n## Mesh voxelization, 128^3, marching-cubes meshes of real masks")
    print("| organ | triangles | shapeqc s | mismatches | trimesh voxelized().fill() s | mismatches | ratio |")
    print("|---|---|---|---|---|---|---|")
    for index in (0, 1, 2):
        grid = np.zeros((128,) * 3, bool)
        grid[32:96, 32:96, 32:96] = masks[index]
        vertices, faces, _, _ = marching_cubes(grid.astype(np.float32), 0.5)
        # shapeqc takes continuous voxel coordinates (centre of voxel i at i + 0.5)
        ours_time = best_of(repeats, lambda v=vertices, f=faces: voxelize_mesh(v + 0.5, f, (128, 128, 128)))
        ours = voxelize_mesh(vertices + 0.5, faces, grid.shape)
        mesh = trimesh.Trimesh(vertices, faces)  # trimesh voxel centres sit at integer index coordinates
        theirs_time = best_of(repeats, lambda m=mesh: m.voxelized(pitch=1.0).fill())
        filled = mesh.voxelized(pitch=1.0).fill()
        theirs = np.zeros_like(grid)
        theirs[tuple((np.argwhere(filled.matrix) + np.round(filled.transform[:3, 3]).astype(int)).T)] = True
        print(f"| val {index} | {len(faces)} | {ours_time:.4f} | {int((ours != grid).sum())} | {theirs_time:.4f} | "
              f"{int((theirs != grid).sum())} | {theirs_time / ours_time:.1f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with np.load(args.npz) as archive:
        masks = archive["val_images"][:3] > 0
    bench_boundary(masks, args.repeats)
    bench_perlin(masks, args.repeats)
    bench_voxelize(masks, args.repeats)


if __name__ == "__main__":
    main()
