"""Overlap scores between binary masks, and the box they occupy (the one owner of that box)."""

from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks of one shape; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def occupied_box(*masks: np.ndarray, margin=1) -> tuple[slice, ...]:
    """The smallest box of the (D, H, W) volume holding every True voxel of ``masks``, grown by ``margin`` voxels
    (an int, or one per axis) and clipped to the volume; empty slices when every mask is empty. Scores, defects,
    parts and figures need only this box: an organ fills a small part of a CT (a liver about a seventh of its
    512 x 512 x 200 voxels), and a margin of one voxel keeps every surface voxel a surface voxel, so the results
    are those of the whole volume."""
    from monai.transforms.utils import generate_spatial_bounding_box

    occupied = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])
    margins = [int(m) for m in np.broadcast_to(np.asarray(margin), (occupied.ndim,))]
    start, end = generate_spatial_bounding_box(occupied[None], margin=margins, allow_smaller=True)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, end, strict=True))
