"""Overlap and surface-distance scores between a segmentation and its reconstruction, in millimetres.

Definitions (the research pipeline's): the surface of a mask is its border voxels (foreground voxels with a
background 6-neighbour, or on the array border), each weighted by the area of its exposed faces in mm^2 (with
the voxel spacing, so anisotropic CT voxels count correctly). The directed distances from A to B are the
Euclidean distances in mm from A's surface voxel centres to the nearest surface voxel centre of B.

- ``asd_mm``: mean of the two directed, area-weighted mean distances;
- ``hd95_mm``: the larger of the two directed, area-weighted 95th percentiles;
- ``max_sd_mm``: the largest distance either way (Hausdorff distance).

Both masks empty: Dice 1 and distances 0. Exactly one empty: Dice 0 and distances inf.
Distances are measured on the union's bounding box plus a margin, between border voxel centres only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial import cKDTree

from shapeqc.scoring.metrics import dice, occupied_box


@dataclass(frozen=True)
class ShapeScores:
    dice: float
    asd_mm: float
    hd95_mm: float
    max_sd_mm: float

    def to_dict(self) -> dict:
        return asdict(self)


def surface_voxels_and_areas(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(border voxel indices (N, 3) int64 in C order, exposed face area of each (N,) float64 in mm^2) of a
    (D, H, W) mask: its voxels with a face on an empty or outside neighbour, each face weighted by its area."""
    # C order throughout (a crop of a NIfTI array is Fortran-ordered; the voxel listing below runs in C order)
    padded = np.zeros(tuple(n + 2 for n in np.shape(mask)), dtype=bool)
    padded[1:-1, 1:-1, 1:-1] = mask
    core = padded[1:-1, 1:-1, 1:-1]
    # a voxel is inside when all six neighbours are: whole-array passes only for that, the faces of the (few)
    # border voxels are then read one by one
    inside = core.copy()
    for axis in range(3):
        for shift in (0, 2):
            neighbour = [slice(1, -1)] * 3
            neighbour[axis] = slice(shift, padded.shape[axis] - 2 + shift)
            inside &= padded[tuple(neighbour)]
    border = np.argwhere(core & ~inside)
    flat = padded.ravel()
    at = np.ravel_multi_index(tuple((border + 1).T), padded.shape)
    strides = (padded.shape[1] * padded.shape[2], padded.shape[2], 1)
    face_area = (spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1])
    exposed = [(~flat[at - stride]).view(np.uint8) + (~flat[at + stride]).view(np.uint8) for stride in strides]
    area = sum(counts * area for counts, area in zip(exposed, face_area, strict=True))
    return border, np.asarray(area, dtype=np.float64)


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    index = np.searchsorted(cumulative, q / 100.0 * cumulative[-1])
    return float(values[order][min(index, len(values) - 1)])


def directed_distances(a_border: np.ndarray, b_border: np.ndarray, spacing) -> np.ndarray:
    """Distances in mm from each border voxel of A to the nearest border voxel of B, both given as voxel indices
    (N, 3) (:func:`surface_voxels_and_areas`).

    A k-d tree of B's border voxel centres in mm gives exactly what a distance transform of the box would
    (tests/test_surface_metrics.py compares them) but costs about a tenth on an organ of millions of voxels: only
    the border voxels, a few percent of the box, are touched."""
    scale = np.asarray(spacing, dtype=np.float64)
    distances, _ = cKDTree(b_border * scale).query(a_border * scale)
    return distances


def shape_scores(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 margin: int = 2) -> ShapeScores:
    """Dice, ASD, HD95 and maximum surface distance (mm) of two binary masks of one shape and spacing."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    # everything within the box both occupy (the rest of a CT is empty for both)
    box = occupied_box(a, b, margin=margin)
    a, b = a[box], b[box]
    overlap = dice(a, b)
    if not a.any() and not b.any():
        return ShapeScores(overlap, 0.0, 0.0, 0.0)
    if not a.any() or not b.any():
        return ShapeScores(overlap, float("inf"), float("inf"), float("inf"))
    spacing = tuple(float(s) for s in spacing)
    # the box's margin keeps its edge empty but where it is the image's edge: there a voxel's face is exposed
    a_border, a_weights = surface_voxels_and_areas(a, spacing)
    b_border, b_weights = surface_voxels_and_areas(b, spacing)
    a_to_b = directed_distances(a_border, b_border, spacing)
    b_to_a = directed_distances(b_border, a_border, spacing)
    asd = 0.5 * (np.average(a_to_b, weights=a_weights) + np.average(b_to_a, weights=b_weights))
    hd95 = max(_weighted_percentile(a_to_b, a_weights, 95), _weighted_percentile(b_to_a, b_weights, 95))
    return ShapeScores(overlap, float(asd), float(hd95), float(max(a_to_b.max(), b_to_a.max())))
