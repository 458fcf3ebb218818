"""Simpler QC scores that a shape prior has to beat (the QC benchmark's baselines), each fitted on training
masks and scoring a mask so that larger means "more likely wrong".

Masks for B-D are compared in the bundle's canonical grid (centred, left glands mirrored), so that position in
the scan plays no part; A and E use the mask as given with its voxel volume in ml.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def volume_ml(mask: np.ndarray, voxel_ml: float) -> float:
    return float(np.count_nonzero(mask) * voxel_ml)


class VolumeZScore:
    """Baseline A: |z| of the organ volume against the training volumes."""

    def fit(self, volumes_ml: list[float]) -> VolumeZScore:
        self.mean, self.std = float(np.mean(volumes_ml)), float(np.std(volumes_ml) + 1e-9)
        return self

    def score(self, volume: float) -> float:
        return abs(volume - self.mean) / self.std


def shape_descriptors(mask: np.ndarray, voxel_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """(7,) float: volume (ml), surface area (cm^2, exposed voxel faces), sphericity, connected components
    (26-connected), and the three principal-axis extents (mm, 4 standard deviations)."""
    mask = np.asarray(mask, bool)
    spacing = np.asarray(voxel_mm, float)
    volume_mm3 = mask.sum() * spacing.prod()
    face_areas = (spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1])
    padded = np.pad(mask, 1)
    area = sum(np.count_nonzero(np.diff(padded.astype(np.int8), axis=axis)) * face_areas[axis] for axis in range(3))
    sphericity = (np.pi ** (1 / 3) * (6 * volume_mm3) ** (2 / 3)) / max(area, 1e-9)
    components = ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
    points = np.argwhere(mask) * spacing
    extents = 4.0 * np.sqrt(np.clip(np.linalg.eigvalsh(np.cov(points.T)), 0, None))[::-1] if len(points) > 3 \
        else np.zeros(3)
    return np.array([volume_mm3 / 1000.0, area / 100.0, sphericity, components, *extents], dtype=float)


class DescriptorMahalanobis:
    """Baseline B: Mahalanobis distance of the shape descriptors from the training distribution."""

    def fit(self, descriptors: np.ndarray) -> DescriptorMahalanobis:
        descriptors = np.asarray(descriptors, float)
        self.mean = descriptors.mean(axis=0)
        covariance = np.cov(descriptors.T) + 1e-6 * np.eye(descriptors.shape[1])
        self.precision = np.linalg.pinv(covariance)
        return self

    def score(self, descriptor: np.ndarray) -> float:
        delta = np.asarray(descriptor, float) - self.mean
        return float(np.sqrt(max(delta @ self.precision @ delta, 0.0)))


class LinearShapeModel:
    """Baseline C: PCA of the training canonical grids (a linear statistical shape model); the score is the norm
    of a grid's residual after projection onto the first ``components`` modes."""

    def __init__(self, components: int = 20) -> None:
        self.components = components

    def fit(self, grids: np.ndarray) -> LinearShapeModel:
        data = np.asarray(grids, np.float32).reshape(len(grids), -1)
        self.mean = data.mean(axis=0)
        _, _, vt = np.linalg.svd(data - self.mean, full_matrices=False)
        self.modes = vt[: self.components]
        return self

    def score(self, grid: np.ndarray) -> float:
        centred = np.asarray(grid, np.float32).ravel() - self.mean
        residual = centred - self.modes.T @ (self.modes @ centred)
        return float(np.linalg.norm(residual))


class NearestNeighbourDice:
    """Baseline D: 1 - the best Dice of a canonical grid against every training grid."""

    def fit(self, grids: np.ndarray) -> NearestNeighbourDice:
        self.grids = np.asarray(grids, bool).reshape(len(grids), -1)
        self.sizes = self.grids.sum(axis=1)
        return self

    def score(self, grid: np.ndarray) -> float:
        flat = np.asarray(grid, bool).ravel()
        overlap = self.grids[:, flat].sum(axis=1)
        dice = 2.0 * overlap / np.maximum(self.sizes + flat.sum(), 1)
        return float(1.0 - dice.max())


class ScreeningRules:
    """Baseline E: the rules used to screen TotalSegmentator output at cohort scale, as a 0/1 flag: the organ
    touches the image border (incomplete), has more than one connected component, or is smaller than the
    ``floor_quantile`` of the training volumes."""

    def __init__(self, floor_quantile: float = 0.01) -> None:
        self.floor_quantile = floor_quantile

    def fit(self, volumes_ml: list[float]) -> ScreeningRules:
        self.floor_ml = float(np.quantile(volumes_ml, self.floor_quantile))
        return self

    def score(self, mask: np.ndarray, voxel_ml: float) -> float:
        mask = np.asarray(mask, bool)
        border = any(np.take(mask, index, axis=axis).any() for axis in range(3) for index in (0, -1))
        components = ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
        return float(border or components != 1 or volume_ml(mask, voxel_ml) < self.floor_ml)
