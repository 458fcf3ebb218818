"""Overlap scores between binary masks, and the box they occupy (the one owner of that box)."""

from __future__ import annotations

import numpy as np

from shapeqc.transforms.boxes import organ_box


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks of one shape; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / int(total)


def occupied_box(*masks: np.ndarray, margin=1) -> tuple[slice, ...]:
    """The smallest box of the (D, H, W) volume holding every True voxel of ``masks``, grown by ``margin`` voxels
    (an int, or one per axis) and clipped to the volume; empty slices when every mask is empty. Scores, defects,
    parts and figures need only this box: an organ fills a small part of a CT (a liver about a seventh of its
    512 x 512 x 200 voxels), and a margin of one voxel keeps every surface voxel a surface voxel, so the results
    are those of the whole volume."""
    boxes = [box for box in (organ_box(mask) for mask in masks) if box is not None]
    shape = np.shape(masks[0])
    if not boxes:
        return tuple(slice(0, 0) for _ in shape)
    margins = np.broadcast_to(np.asarray(margin, dtype=np.int64), (len(shape),))
    return tuple(slice(max(min(b[axis].start for b in boxes) - int(margins[axis]), 0),
                       min(max(b[axis].stop for b in boxes) + int(margins[axis]), shape[axis]))
                 for axis in range(len(shape)))
