"""Re-slicing a mask onto another acquisition grid (other spacing, tilted direction cosines).

Used to turn isotropic 1 mm masks into CT-like inputs (e.g. 0.8 x 0.8 x 2.5 mm, oblique) for the demo,
tests and benchmarks, so that the canonical-grid round trip is exercised on realistic geometries.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from transforms.canonical_grid import organ_world_bounds, resample_trilinear


def acquisition_affine(
    lower_mm: np.ndarray,
    upper_mm: np.ndarray,
    spacing_mm: tuple[float, float, float],
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    pad_voxels: int = 3,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An affine and shape whose voxel grid covers the world box [lower_mm, upper_mm] plus padding.

    Args:
        lower_mm, upper_mm: (3,) corners of the world box to cover (scanner mm).
        spacing_mm: voxel size along the three array axes.
        rotation_deg: extrinsic x, y, z rotation of the direction cosines, in degrees.
        pad_voxels: empty voxels kept around the box on each side.
    Returns:
        affine (4, 4) float64 and shape (3,) of the new grid.
    """
    rotation = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    axes = rotation @ np.diag(spacing_mm)
    centre = (np.asarray(lower_mm) + np.asarray(upper_mm)) / 2.0
    half = (np.asarray(upper_mm) - np.asarray(lower_mm)) / 2.0
    # extent of the world box along each rotated axis
    box_corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    along_axes = np.abs(box_corners @ rotation).max(axis=0)
    shape = tuple(int(np.ceil(2 * extent / step)) + 2 * pad_voxels
                  for extent, step in zip(along_axes, spacing_mm, strict=True))
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = centre - axes @ ((np.asarray(shape) - 1) / 2.0)
    return affine, shape


def reslice_mask(
    mask: np.ndarray,
    affine: np.ndarray,
    spacing_mm: tuple[float, float, float],
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    pad_voxels: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-slice a binary mask (D, H, W) onto a new grid around the organ; returns (uint8 mask, affine)."""
    lower, upper = organ_world_bounds(mask, affine)
    new_affine, shape = acquisition_affine(lower, upper, spacing_mm, rotation_deg, pad_voxels)
    new_to_old = np.linalg.inv(affine) @ new_affine
    values = resample_trilinear(mask, new_to_old, shape)
    return (values >= 0.5).astype(np.uint8), new_affine
