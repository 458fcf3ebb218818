"""The box a mask's foreground occupies: the one helper every step that crops to an organ uses."""

from __future__ import annotations

import numpy as np


def organ_box(grid: np.ndarray, grow: int | tuple[int, ...] = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``grid``'s foreground (nonzero) grown by ``grow`` voxels (an int, or one per
    axis) and clipped to the array, None if empty.

    Found by projections (``any`` over the other axes, one axis after another within the box found so far), not
    by listing the foreground: a few milliseconds on a 512 x 512 x 200 CT mask, in C or Fortran order, where
    ``argwhere`` takes a third of a second."""
    grid = np.asarray(grid)
    grow = np.broadcast_to(np.asarray(grow, dtype=np.int64), (grid.ndim,))
    view, box = grid, []
    for axis in range(grid.ndim):
        hits = np.flatnonzero(view.any(axis=tuple(a for a in range(grid.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append((int(hits[0]), int(hits[-1]) + 1))
        view = view[(slice(None),) * axis + (slice(*box[-1]),)]
    return tuple(slice(max(low - int(g), 0), min(high + int(g), size))
                 for (low, high), g, size in zip(box, grow, grid.shape, strict=True))


def box_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """(4, 4) float64 affine of the sub-volume ``volume[box]`` of a volume with ``affine``: the same voxel axes,
    its first voxel's centre as the origin (a crop written with it lies where it lay in the whole)."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = out[:3, :3] @ np.array([s.start for s in box], dtype=np.float64) + out[:3, 3]
    return out
