"""Points near the surface of a voxel mask, with exact inside/outside labels (the training targets of IF-Net).

The surface is the union of the faces between an occupied and an empty voxel (or the grid's outside), the
surface the research pipeline meshed. Points are uniform by area on it (all faces have unit area), offset by
isotropic Gaussian noise whose sigma is a fraction of the grid width, or (``uniform_fraction``) uniform in
the volume. Occupancy is a voxel lookup: ``grid[floor(p)]``, False outside the grid.

Random numbers come from Philox4x32-10 keyed by the seed with the point index as counter, on the CPU
(vectorized numpy, below) and in the CUDA kernel (``boundary_sampling.cu``) alike: the same seed gives the
same points on both, up to float32 rounding of log/sin/cos in the Gaussian offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shapeqc.cuda_kernels import backend

PHILOX_M0, PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
PHILOX_W0, PHILOX_W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
TWO_PI = np.float32(6.2831853071795864)
INV_2_24 = np.float32(5.9604644775390625e-08)


def philox4x32_10(counters: np.ndarray, seed: int) -> np.ndarray:
    """Philox4x32-10 of ``counters`` (N, 4) uint32 under key (seed low 32 bits, seed high 32 bits)."""
    c = [counters[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint32(seed & 0xFFFFFFFF), np.uint32((seed >> 32) & 0xFFFFFFFF)
    mask = np.uint64(0xFFFFFFFF)
    for r in range(10):
        if r:
            k0 = np.uint32((int(k0) + int(PHILOX_W0)) & 0xFFFFFFFF)
            k1 = np.uint32((int(k1) + int(PHILOX_W1)) & 0xFFFFFFFF)
        p0, p1 = PHILOX_M0 * c[0], PHILOX_M1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
             p0 & mask]
    return np.stack(c, axis=1).astype(np.uint32)


def _unit(r: np.ndarray) -> np.ndarray:
    return (r >> np.uint32(8)).astype(np.float32) * INV_2_24


def _unit_open(r: np.ndarray) -> np.ndarray:
    return ((r >> np.uint32(8)) + np.uint32(1)).astype(np.float32) * INV_2_24


def boundary_face_flags(occupied, xp=np):
    """(D, H, W, 6) bool: face ``2 * axis + side`` of a voxel is on the boundary (occupied voxel, empty or
    outside neighbour). ``xp`` is numpy or cupy, so the CPU and CUDA paths share this code."""
    padded = xp.pad(occupied, 1)
    faces = xp.empty(occupied.shape + (6,), dtype=bool)
    core = (slice(1, -1),) * 3
    for axis in range(3):
        for side, shift in ((0, -1), (1, 1)):
            neighbour = list(core)
            neighbour[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            faces[..., 2 * axis + side] = occupied & ~padded[tuple(neighbour)]
    return faces


def boundary_face_keys(grid: np.ndarray) -> np.ndarray:
    """Sorted int64 keys ``flat_voxel_index * 6 + 2 * axis + side`` of every boundary face of ``grid``."""
    return np.flatnonzero(boundary_face_flags(np.asarray(grid) != 0)).astype(np.int64)


def mixture_thresholds(weights: Sequence[float], uniform_fraction: float) -> np.ndarray:
    """float32 thresholds on one uniform draw: below uniform_fraction -> uniform point, then each sigma."""
    weights = np.asarray(weights, dtype=np.float64)
    cumulative = np.cumsum(weights / weights.sum())
    return (uniform_fraction + (1.0 - uniform_fraction) * cumulative).astype(np.float32)


def _check_arguments(shape, n, sigma, weights, uniform_fraction):
    if len(shape) != 3:
        raise ValueError(f"grid must be 3D (D, H, W), got shape {tuple(shape)}")
    if n < 0:
        raise ValueError("n must be >= 0")
    sigmas = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    if np.any(sigmas < 0):
        raise ValueError("sigma must be >= 0")
    weights = np.ones(len(sigmas)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != sigmas.shape or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("weights must be non-negative, one per sigma, not all zero")
    if not 0.0 <= uniform_fraction <= 1.0:
        raise ValueError("uniform_fraction must lie in [0, 1]")
    sigmas_voxels = (sigmas * max(shape)).astype(np.float32)
    return sigmas_voxels, mixture_thresholds(weights, uniform_fraction)


def sample_boundary_cpu(grid: np.ndarray, n: int, sigma: float | Sequence[float], seed: int = 0,
                        weights: Sequence[float] | None = None, uniform_fraction: float = 0.0,
                        face_keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CPU implementation of :func:`sample_boundary` (vectorized numpy)."""
    grid = np.asarray(grid)
    sigmas_voxels, thresholds = _check_arguments(grid.shape, n, sigma, weights, uniform_fraction)
    keys = boundary_face_keys(grid) if face_keys is None else face_keys
    if keys.size == 0 and uniform_fraction < 1.0:
        raise ValueError("grid has no occupied voxel: no surface to sample")
    D, H, W = grid.shape
    index = np.arange(n, dtype=np.uint64)
    low = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    high = (index >> np.uint64(32)).astype(np.uint32)
    zero, one = np.zeros(n, np.uint32), np.ones(n, np.uint32)
    r = np.concatenate([philox4x32_10(np.stack([low, zero, high, zero], 1), seed),
                        philox4x32_10(np.stack([low, one, high, zero], 1), seed)], axis=1)
    u, v, choice = _unit(r[:, 1]), _unit(r[:, 2]), _unit(r[:, 3])
    points = np.empty((n, 3), dtype=np.float32)

    uniform = choice < np.float32(uniform_fraction)
    points[uniform, 0] = u[uniform] * np.float32(D)
    points[uniform, 1] = v[uniform] * np.float32(H)
    points[uniform, 2] = _unit(r[uniform, 4]) * np.float32(W)

    near = ~uniform
    if near.any():
        face = ((r[near, 0].astype(np.uint64) * np.uint64(keys.size)) >> np.uint64(32)).astype(np.int64)
        key = keys[face]
        direction, voxel = key % 6, key // 6
        voxel_index = np.stack([voxel // (H * W), (voxel // W) % H, voxel % W], axis=1)
        axis, side = direction // 2, direction % 2
        rows = np.arange(face.size)
        base = np.empty((face.size, 3), dtype=np.float32)
        base[rows, axis] = (voxel_index[rows, axis] + side).astype(np.float32)
        base[rows, (axis + 1) % 3] = voxel_index[rows, (axis + 1) % 3].astype(np.float32) + u[near]
        base[rows, (axis + 2) % 3] = voxel_index[rows, (axis + 2) % 3].astype(np.float32) + v[near]
        component = np.minimum(np.searchsorted(thresholds[:-1], choice[near], side="right"), len(thresholds) - 1)
        sig = sigmas_voxels[component]
        rn = r[near]
        radius_a = np.sqrt(np.float32(-2.0) * np.log(_unit_open(rn[:, 4])))
        angle_a = TWO_PI * _unit(rn[:, 5])
        radius_b = np.sqrt(np.float32(-2.0) * np.log(_unit_open(rn[:, 6])))
        angle_b = TWO_PI * _unit(rn[:, 7])
        base[:, 0] = base[:, 0] + sig * (radius_a * np.cos(angle_a))
        base[:, 1] = base[:, 1] + sig * (radius_a * np.sin(angle_a))
        base[:, 2] = base[:, 2] + sig * (radius_b * np.cos(angle_b))
        points[near] = base
    return points, voxel_occupancy(grid, points)


def voxel_occupancy(grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N,) bool: ``grid[floor(p)] != 0`` for each continuous voxel point, False outside the grid."""
    cells = np.floor(points).astype(np.int64)
    inside = np.all((cells >= 0) & (cells < np.asarray(grid.shape)), axis=1)
    occupancy = np.zeros(len(points), dtype=bool)
    c = cells[inside]
    occupancy[inside] = np.asarray(grid)[c[:, 0], c[:, 1], c[:, 2]] != 0
    return occupancy


def _sample_boundary_cuda(grid, n, sigma, seed, weights, uniform_fraction):
    cupy = backend.cupy_module()
    grid = cupy.ascontiguousarray(backend.to_cupy(grid)).astype(cupy.uint8, copy=False)
    sigmas_voxels, thresholds = _check_arguments(grid.shape, n, sigma, weights, uniform_fraction)
    keys = cupy.flatnonzero(boundary_face_flags(grid != 0, cupy)).astype(cupy.int64)
    if keys.size == 0 and uniform_fraction < 1.0:
        raise ValueError("grid has no occupied voxel: no surface to sample")
    points = cupy.empty((n, 3), dtype=cupy.float32)
    occupancy = cupy.empty((n,), dtype=cupy.uint8)
    kernel = backend.raw_module("boundary_sampling.cu").get_function("boundary_sampling_kernel")
    threads = 256
    blocks = min(max(1, (n + threads - 1) // threads), 65535)
    D, H, W = grid.shape
    kernel((blocks,), (threads,), (
        grid, keys, np.int64(keys.size), np.int32(D), np.int32(H), np.int32(W), np.int64(n),
        np.uint32(seed & 0xFFFFFFFF), np.uint32((seed >> 32) & 0xFFFFFFFF), cupy.asarray(sigmas_voxels),
        cupy.asarray(thresholds), np.int32(len(sigmas_voxels)), np.float32(uniform_fraction), points, occupancy))
    return points, occupancy.astype(bool)


def sample_boundary(grid: Any, n: int, sigma: float | Sequence[float], seed: int = 0,
                    weights: Sequence[float] | None = None, uniform_fraction: float = 0.0) -> tuple[Any, Any]:
    """Sample ``n`` points near the surface of a binary grid, with their exact occupancy.

    Args:
        grid: (D, H, W) bool or uint8 (numpy, torch, CuPy). CUDA inputs run the kernel.
        n: number of points.
        sigma: Gaussian offset std as a fraction of the grid width (its largest side), one value or a mixture
            (research pipeline: [0.1, 0.01]); 0 puts points exactly on voxel faces.
        seed: 64-bit seed; the same seed gives the same points.
        weights: mixture weights of the sigmas (default equal).
        uniform_fraction: fraction of points drawn uniformly in the whole grid instead.
    Returns:
        points (n, 3) float32 continuous voxel coordinates in array axis order (voxel (i, j, k) spans
        [i, i+1) x [j, j+1) x [k, k+1)), and occupancy (n,) bool = grid[floor(points)], False outside.
    """
    if backend.is_device_array(grid):
        points, occupancy = _sample_boundary_cuda(grid, n, sigma, seed, weights, uniform_fraction)
    else:
        points, occupancy = sample_boundary_cpu(backend.to_numpy(grid), n, sigma, seed, weights, uniform_fraction)
    return backend.like(points, grid), backend.like(occupancy, grid)
