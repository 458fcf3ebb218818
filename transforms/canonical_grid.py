"""The canonical organ grid: where an organ is placed for the network, and the exact way back.

Convention (used everywhere in shapeqc):

- A canonical grid is an array (R, R, R) whose axes are the scanner's RAS+ axes, whatever the orientation
  of the input file: array axis 0 runs along world +x (towards the patient's right), axis 1 along +y
  (anterior), axis 2 along +z (superior). With mirroring, axis 0 runs along -x instead, so a left organ
  lands where its right twin would.
- ``grid_to_world`` (4, 4) float64 maps a grid voxel *index* (voxel centres at integer indices, the NIfTI
  convention) to scanner millimetres: ``world = grid_to_world @ [i, j, k, 1]``. Its 3x3 part is
  ``diag(+-s, s, s)`` with ``s = spacing_mm * zoom``.
- ``zoom`` >= 1: the organ's bounding box is centred in the grid; when it does not fit inside the grid less
  ``margin`` voxels on every side at the requested spacing, the grid spacing grows by ``zoom`` so it does.

Resampling interpolates the binary mask trilinearly and thresholds at 0.5 (nearest-neighbour resampling
breaks thin organs apart). The inverse (:func:`grid_to_source`) maps any grid-space volume, binary or float,
back to the input's voxel grid with the same trilinear interpolation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from shapeqc.transforms.boxes import organ_box
from shapeqc.transforms.errors import EmptyMaskError


@dataclass(frozen=True)
class CanonicalGrid:
    """Where one organ's canonical grid lies in the scanner, and the input grid it came from.

    Attributes:
        grid_to_world: (4, 4) float64, grid voxel index -> scanner mm (RAS+).
        source_affine: (4, 4) float64, input voxel index -> scanner mm (RAS+).
        source_shape: (3,) shape of the input volume.
        grid_size: R, the grid is (R, R, R).
        spacing_mm: requested isotropic spacing in mm.
        zoom: factor >= 1 by which the spacing was enlarged so the organ fits.
        mirrored: True when grid axis 0 runs along -x (left/right mirroring).
    """

    grid_to_world: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    grid_size: int
    spacing_mm: float
    zoom: float
    mirrored: bool

    @property
    def grid_spacing_mm(self) -> float:
        """Effective grid spacing in mm (``spacing_mm * zoom``)."""
        return self.spacing_mm * self.zoom

    def to_dict(self) -> dict:
        """Plain-Python form (lists, floats) for JSON and for MONAI collation."""
        out = asdict(self)
        out["grid_to_world"] = self.grid_to_world.tolist()
        out["source_affine"] = self.source_affine.tolist()
        out["source_shape"] = list(self.source_shape)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> CanonicalGrid:
        return cls(
            grid_to_world=np.asarray(values["grid_to_world"], dtype=np.float64).reshape(4, 4),
            source_affine=np.asarray(values["source_affine"], dtype=np.float64).reshape(4, 4),
            source_shape=tuple(int(v) for v in np.asarray(values["source_shape"]).reshape(-1)),
            grid_size=int(np.asarray(values["grid_size"]).reshape(-1)[0]),
            spacing_mm=float(np.asarray(values["spacing_mm"]).reshape(-1)[0]),
            zoom=float(np.asarray(values["zoom"]).reshape(-1)[0]),
            mirrored=bool(np.asarray(values["mirrored"]).reshape(-1)[0]),
        )


def _axis_aligned(linear: np.ndarray) -> bool:
    """Whether a (3, 3) linear map sends each axis onto one axis (a signed, scaled permutation: no obliquity)."""
    return bool(np.all(np.count_nonzero(linear, axis=0) == 1) and np.all(np.count_nonzero(linear, axis=1) == 1))


def organ_world_bounds(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) corners in scanner mm, each (3,), of the world-axis box around every foreground voxel's cube."""
    box = organ_box(mask)
    if box is None:
        raise EmptyMaskError(None, "mask has no foreground voxel")
    affine = np.asarray(affine, dtype=np.float64)
    if _axis_aligned(affine[:3, :3]):
        # voxel axes along world axes (most scans): each world coordinate follows one voxel index monotonically,
        # so the extremes are those of the box's 8 corner voxels, computed exactly as for every voxel
        voxels = np.array([[i, j, k] for i in (box[0].start, box[0].stop - 1) for j in (box[1].start, box[1].stop - 1)
                           for k in (box[2].start, box[2].stop - 1)])
    else:  # oblique: every foreground voxel of the organ's box (a CT mask is mostly empty)
        voxels = np.argwhere(np.asarray(mask)[box]) + np.array([s.start for s in box])
    centres = voxels @ affine[:3, :3].T + affine[:3, 3]
    # half of one voxel's extent along each world axis: the occupied voxel cubes, not just their centres
    half_voxel = np.abs(affine[:3, :3]) @ np.full(3, 0.5)
    return centres.min(axis=0) - half_voxel, centres.max(axis=0) + half_voxel


def plan_canonical_grid(
    mask: np.ndarray,
    affine: np.ndarray,
    spacing_mm: float = 1.0,
    grid_size: int = 128,
    margin: int = 8,
    mirror: bool = False,
) -> CanonicalGrid:
    """Choose the canonical grid for one organ.

    Args:
        mask: (D, H, W) bool, the organ in the input's voxel grid.
        affine: (4, 4) input voxel index -> scanner mm (RAS+).
        spacing_mm: isotropic grid spacing in mm when the organ fits.
        grid_size: R.
        margin: free voxels kept on each side of the organ's box.
        mirror: flip the grid's x axis (maps a left organ onto the right side, or the reverse).
    """
    if margin < 1 or 2 * margin >= grid_size:
        raise ValueError(f"margin {margin} leaves no room in a grid of {grid_size}")
    lower, upper = organ_world_bounds(mask, affine)
    extent_mm = float(np.max(upper - lower))
    room_voxels = grid_size - 2 * margin
    zoom = max(1.0, extent_mm / (room_voxels * spacing_mm))
    step = spacing_mm * zoom
    centre = (lower + upper) / 2.0
    axes = np.diag([-step if mirror else step, step, step])
    grid_to_world = np.eye(4)
    grid_to_world[:3, :3] = axes
    origin = centre - axes @ np.full(3, (grid_size - 1) / 2.0)
    # Snap the grid origin onto the lattice of input voxel centres (offsets by whole grid steps along the
    # world axes). When the input is axis-aligned with a spacing the grid step divides, grid voxel centres
    # then coincide with input voxel centres and resampling is exact; otherwise this moves the organ by
    # less than half a grid voxel, well inside the margin.
    anchor = np.asarray(affine, dtype=np.float64)[:3, 3]
    origin = anchor + np.round((origin - anchor) / step) * step
    grid_to_world[:3, 3] = origin
    return CanonicalGrid(
        grid_to_world=grid_to_world,
        source_affine=np.asarray(affine, dtype=np.float64),
        source_shape=tuple(int(s) for s in mask.shape),
        grid_size=int(grid_size),
        spacing_mm=float(spacing_mm),
        zoom=float(zoom),
        mirrored=bool(mirror),
    )


def resample_trilinear(volume: np.ndarray, out_to_in: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resampling of ``volume`` at ``out_to_in @ index`` for every output index; 0 outside."""
    return ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        out_to_in[:3, :3],
        offset=out_to_in[:3, 3],
        output_shape=tuple(out_shape),
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )


def source_to_grid(volume: np.ndarray, grid: CanonicalGrid, binary: bool = True) -> np.ndarray:
    """Resample an input-space volume (D, H, W) into the canonical grid (R, R, R).

    Returns bool (threshold 0.5 of the trilinear interpolation) when ``binary``, else float32.
    """
    grid_to_source = np.linalg.inv(grid.source_affine) @ grid.grid_to_world
    # only the box of the volume's nonzero voxels, grown by one (zero) voxel, is read: trilinear samples beyond it
    # are 0 either way, and a CT mask is mostly zeros (a 512 x 512 x 200 float copy costs more than the sampling)
    box = organ_box(volume, 1)
    if box is None:
        values = np.zeros((grid.grid_size,) * 3, dtype=np.float32)
    else:
        to_box = np.eye(4)
        to_box[:3, 3] = [-s.start for s in box]
        values = resample_trilinear(np.asarray(volume)[box], to_box @ grid_to_source, (grid.grid_size,) * 3)
    return values >= 0.5 if binary else values


def grid_to_source(volume: np.ndarray, grid: CanonicalGrid, binary: bool = True) -> np.ndarray:
    """Map a canonical-grid volume (R, R, R), binary mask or float occupancy, back to the input's voxel grid.

    Returns an array of ``grid.source_shape``: bool (threshold 0.5) when ``binary``, else float32 (trilinear).
    """
    source_to_grid_index = np.linalg.inv(grid.grid_to_world) @ grid.source_affine
    # in Fortran order, as NIfTI arrays are read: the input mask and its reconstruction are then combined and
    # written without transposing copies
    values = np.zeros(grid.source_shape, dtype=bool if binary else np.float32, order="F")
    # only source voxels within one grid voxel of the grid's cube can be nonzero (trilinear, 0 outside), and for a
    # binary result only those within one grid voxel of a grid value >= 0.5 (a trilinear value is a convex
    # combination of its 8 neighbours): resample that box alone (a liver's 288 mm cube covers about half of a
    # 512 x 512 CT's slices, the liver itself a fraction of the cube)
    low, high = np.full(3, -1), np.full(3, grid.grid_size)
    if binary:
        inside = np.argwhere(np.asarray(volume) >= 0.5)
        if len(inside) == 0:
            return np.zeros(grid.source_shape, dtype=bool)
        low, high = inside.min(axis=0) - 1, inside.max(axis=0) + 1
    corners = np.array([[i, j, k] for i in (low[0], high[0]) for j in (low[1], high[1]) for k in (low[2], high[2])],
                       dtype=np.float64)
    grid_index_to_source = np.linalg.inv(source_to_grid_index)
    in_source = corners @ grid_index_to_source[:3, :3].T + grid_index_to_source[:3, 3]
    lower = np.clip(np.floor(in_source.min(axis=0)).astype(int) - 1, 0, grid.source_shape)
    upper = np.clip(np.ceil(in_source.max(axis=0)).astype(int) + 2, 0, grid.source_shape)
    if np.all(upper > lower):
        box_to_source = np.eye(4)
        box_to_source[:3, 3] = lower
        box = tuple(slice(a, b) for a, b in zip(lower, upper, strict=True))
        box_to_grid = source_to_grid_index @ box_to_source
        occupied = _threshold_axis_aligned(volume, box_to_grid, tuple(upper - lower)) if binary else None
        if occupied is None:
            resampled = resample_trilinear(volume, box_to_grid, tuple(upper - lower))
            occupied = resampled >= 0.5 if binary else resampled
        values[box] = occupied
    return values


def _threshold_axis_aligned(volume: np.ndarray, out_to_in: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """``resample_trilinear(volume, out_to_in, out_shape) >= 0.5`` (bool ``out_shape``) when each output axis maps
    onto one input axis (grid and scan axes along the same world axes: most scans), else None.

    Only output voxels in an input cell whose 8 corners lie on both sides of 0.5 (or beyond the input's edge) are
    interpolated; the others take their cell's side, which every convex combination of its corners shares. On a
    CT the interpolated ones are the voxels along the organ's surface, a few percent of the organ's box.
    """
    matrix = np.asarray(out_to_in, dtype=np.float64)
    linear = matrix[:3, :3]
    if not _axis_aligned(linear):
        return None
    values = np.asarray(volume, dtype=np.float32)
    above = values >= 0.5
    corners = [above[dx:above.shape[0] - 1 + dx, dy:above.shape[1] - 1 + dy, dz:above.shape[2] - 1 + dz]
               for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
    all_above, any_above = np.logical_and.reduce(corners), np.logical_or.reduce(corners)
    # cell classes: 0 all below, 1 all above, 2 mixed; one more layer per axis (2) for output voxels off the input
    cells = np.full(tuple(n for n in above.shape), 2, dtype=np.uint8)
    cells[:-1, :-1, :-1] = np.where(all_above, 1, np.where(any_above, 2, 0))
    source_axis = np.argmax(np.abs(linear), axis=1)  # the output axis each input axis follows
    classes = cells
    for axis in range(3):
        positions = linear[axis, source_axis[axis]] * np.arange(out_shape[source_axis[axis]]) + matrix[axis, 3]
        inside = (positions >= 0) & (positions <= above.shape[axis] - 1)
        cell = np.where(inside, np.minimum(np.floor(np.where(inside, positions, 0)), above.shape[axis] - 2),
                        above.shape[axis] - 1).astype(np.int64)
        classes = np.take(classes, cell, axis=axis)
    classes = classes.transpose(np.argsort(source_axis))  # input axis order -> output axis order
    occupied = classes == 1
    mixed = np.nonzero(classes == 2)
    if len(mixed[0]):
        points = np.stack(mixed).astype(np.float64)
        coordinates = linear @ points + matrix[:3, 3:4]
        occupied[mixed] = ndimage.map_coordinates(values, coordinates, order=1, mode="constant", cval=0.0,
                                                  prefilter=False) >= 0.5
    return occupied


def world_to_grid_index(points_mm: np.ndarray, grid: CanonicalGrid) -> np.ndarray:
    """(N, 3) scanner mm -> (N, 3) grid voxel indices (voxel centres at integers)."""
    inverse = np.linalg.inv(grid.grid_to_world)
    return np.asarray(points_mm) @ inverse[:3, :3].T + inverse[:3, 3]
