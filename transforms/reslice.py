"""Re-slicing a mask onto another acquisition grid (other spacing, tilted direction cosines).

Used to turn isotropic 1 mm masks into CT-like inputs (e.g. 0.8 x 0.8 x 2.5 mm, oblique) for the demo,
tests and benchmarks, so that the canonical-grid round trip is exercised on realistic geometries, and, as
:class:`RandAcquisitionResliced`, to train the prior on clean masks with an acquisition's staircase.
"""

from __future__ import annotations

import numpy as np
from monai.config import KeysCollection
from scipy.spatial.transform import Rotation

from shapeqc.transforms.canonical_grid import organ_world_bounds, resample_trilinear
from shapeqc.transforms.corruption import InPlaceGridTransform


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


class RandAcquisitionResliced(InPlaceGridTransform):
    """Give a clean canonical grid the look of a mask segmented on a CT acquisition grid: re-slice it onto a grid
    of random spacing (thick slices along ``slice_axis``) and tilted direction cosines, then back onto the
    canonical grid (both ways trilinear, threshold 0.5, the same as :func:`reslice_mask` and the analysis path).

    Why: a prior trained on 1 mm masks alone, above all one taught to fill cut-off parts (adrenal variant 0.2.0),
    treats the staircase of a clean 2.5 mm CT mask as damage and "repairs" it, which lowers the Dice of clean CT
    glands and the threshold calibrated on them. Applied to the clean key *before* it is copied to the corrupted
    input, both the input and the targets carry the acquisition's look, so the prior learns that it is a
    plausible organ. Not a corruption: no QC family. Measured effect (adrenal variant 0.3.0, not shipped): the
    CT threshold recovers, but the prior also accepts thicker glands; see
    ``docs/history.md``.

    Args:
        keys: binary grids (R, R, R) or (1, R, R, R), replaced in place.
        prob: probability of re-slicing.
        in_plane_spacing: (low, high) in-plane voxel size, in canonical grid voxels (mm at 1 mm grid spacing).
        slice_spacing: (low, high) slice thickness, in canonical grid voxels.
        max_tilt_deg: each of the three rotation angles of the acquisition axes is drawn in +-this.
        slice_axis: canonical axis of the slices (2: superior-inferior, an axial scan).
        min_kept_fraction: a re-sliced grid with fewer voxels than this fraction of the input (a thin organ
            broken by very thick slices) is dropped and the input kept.
        seed_key, base_seed: with ``seed_key``, reseed from ``data[seed_key]`` on every call (fixed per case).
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        in_plane_spacing: tuple[float, float] = (0.6, 1.0),
        slice_spacing: tuple[float, float] = (1.0, 3.0),
        max_tilt_deg: float = 20.0,
        slice_axis: int = 2,
        min_kept_fraction: float = 0.5,
        seed_key: str | None = None,
        base_seed: int = 4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, seed_key, base_seed, allow_missing_keys)
        self.in_plane_spacing = in_plane_spacing
        self.slice_spacing = slice_spacing
        self.max_tilt_deg = float(max_tilt_deg)
        self.slice_axis = int(slice_axis)
        self.min_kept_fraction = float(min_kept_fraction)
        self.spacing = (1.0, 1.0, 1.0)
        self.rotation_deg = (0.0, 0.0, 0.0)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        spacing = [self.R.uniform(*self.in_plane_spacing)] * 3
        spacing[self.slice_axis] = self.R.uniform(*self.slice_spacing)
        self.spacing = tuple(float(s) for s in spacing)
        self.rotation_deg = tuple(float(a) for a in self.R.uniform(-self.max_tilt_deg, self.max_tilt_deg, 3))

    def change(self, grid: np.ndarray) -> np.ndarray:
        """(R, R, R) binary -> (R, R, R) uint8 as acquired at ``self.spacing`` / ``self.rotation_deg`` and back."""
        clean = (np.asarray(grid) != 0).astype(np.uint8)
        if not clean.any():
            return clean
        identity = np.eye(4)
        acquired, acquired_to_grid = reslice_mask(clean, identity, self.spacing, self.rotation_deg)
        back = resample_trilinear(acquired, np.linalg.inv(acquired_to_grid), clean.shape) >= 0.5
        if back.sum() < self.min_kept_fraction * clean.sum():
            return clean
        return back.astype(np.uint8)
