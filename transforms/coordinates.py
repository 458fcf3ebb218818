"""Point coordinates: continuous voxel coordinates <-> the network's grid coordinates in [-1, 1].

- Continuous voxel coordinates (what ``cuda_kernels`` returns): (N, 3) float32 in array axis order
  (axis 0, 1, 2 of a (D, H, W) grid); voxel (i, j, k) spans [i, i+1) x [j, j+1) x [k, k+1), so its centre is
  at (i + 0.5, j + 0.5, k + 0.5).
- Grid coordinates (what the network takes): (N, 3) float32 in [-1, 1], *also in array axis order*, with the
  ``align_corners=False`` convention of ``torch.nn.functional.grid_sample``: -1 and +1 are the outer faces of
  the grid, voxel centre i is at (2 i + 1) / size - 1. ``grid_sample`` wants (x, y, z) = (W, H, D) order, so
  the network flips the last dimension (``points.flip(-1)``) right before calling it, in one place.
- Scanner mm: a continuous voxel point p is at ``grid_to_world @ (p - 0.5)`` (grid_to_world maps indices).
"""

from __future__ import annotations

import numpy as np


def voxel_to_grid_coords(points: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, 3) continuous voxel coordinates -> (N, 3) float32 grid coordinates in [-1, 1]."""
    size = np.asarray(shape, dtype=np.float64)
    return (2.0 * np.asarray(points, dtype=np.float64) / size - 1.0).astype(np.float32)


def grid_coords_to_voxel(coords: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, 3) grid coordinates in [-1, 1] -> (N, 3) float32 continuous voxel coordinates."""
    size = np.asarray(shape, dtype=np.float64)
    return ((np.asarray(coords, dtype=np.float64) + 1.0) * size / 2.0).astype(np.float32)


def voxel_to_world(points: np.ndarray, grid_to_world: np.ndarray) -> np.ndarray:
    """(N, 3) continuous voxel coordinates -> (N, 3) scanner mm."""
    indices = np.asarray(points, dtype=np.float64) - 0.5
    return indices @ np.asarray(grid_to_world)[:3, :3].T + np.asarray(grid_to_world)[:3, 3]
