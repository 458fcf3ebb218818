"""MONAI dictionary transforms between an input's voxel space and the canonical organ grid.

Why the way back is :class:`CanonicalGridToSourced` reading the plan under ``grid`` rather than MONAI's ``Invertd``:
``Invertd`` replays the ``applied_operations`` a MetaTensor collected on the way in, and the pipeline to the
grid does not carry MetaTensors (the cached grids are bit-packed numpy arrays, ``PackGridd``/``UnpackGridd``,
and the network input is made with ``track_meta=False``), so there would be nothing to replay. More to the point,
the inverse that matters is not "undo the resampling" but "map the network's *float occupancy* back onto the
input's voxel grid", which needs the plan (``grid_to_world``, source affine and shape) and nothing else; the
plan is a plain dict (``CanonicalGrid.to_dict``) that collates, pickles and is written into ``grid.json`` as it
is. The one plan is what ``shapeqc analyse``, the bundle's ``to_source`` and the tests all read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from shapeqc.transforms.canonical_grid import CanonicalGrid, grid_to_source, plan_canonical_grid, source_to_grid
from shapeqc.transforms.class_maps import organ_side
from shapeqc.transforms.errors import EmptyMaskError


class ToCanonicalGridd(MapTransform):
    """Resample the organ under ``keys`` (and any co-registered volumes) into its canonical grid.

    The grid is planned from the first key's mask (see :mod:`shapeqc.transforms.canonical_grid`); every key is then
    resampled into the same grid. Outputs are channel-first: (1, R, R, R) uint8 for binary keys, float32
    otherwise. The plan is stored as a plain dict under ``grid_key`` (:meth:`CanonicalGrid.to_dict`).

    Args:
        keys: volumes (D, H, W) in the input's voxel space, all sharing ``data[affine_key]``.
        spacing_mm: isotropic grid spacing when the organ fits.
        grid_size: R.
        margin: free voxels kept around the organ's box before zooming out.
        mirror_side: organs whose name (``data[organ_key]``) says this side ("left" or "right") are mirrored
            onto the other side; None never mirrors. Organs without a side are never mirrored.
        binary: per key, whether it is a mask (threshold 0.5) or a float volume.
    """

    def __init__(
        self,
        keys: KeysCollection = "mask",
        spacing_mm: float = 1.0,
        grid_size: int = 128,
        margin: int = 8,
        mirror_side: str | None = None,
        binary: bool | Sequence[bool] = True,
        affine_key: str = "affine",
        organ_key: str = "organ",
        grid_key: str = "grid",
        source_key: str = "source",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mirror_side not in (None, "left", "right"):
            raise ValueError(f"mirror_side must be None, 'left' or 'right', got {mirror_side!r}")
        self.spacing_mm = float(spacing_mm)
        self.grid_size = int(grid_size)
        self.margin = int(margin)
        self.mirror_side = mirror_side
        self.binary = ensure_tuple_rep(binary, len(self.keys))
        self.affine_key = affine_key
        self.organ_key = organ_key
        self.grid_key = grid_key
        self.source_key = source_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        plan: CanonicalGrid | None = None
        organ = d.get(self.organ_key)
        mirror = self.mirror_side is not None and organ is not None and organ_side(str(organ)) == self.mirror_side
        for key, binary in self.key_iterator(d, self.binary):
            volume = np.asarray(d[key])
            if volume.ndim == 4 and volume.shape[0] == 1:
                volume = volume[0]
            if plan is None:
                try:
                    plan = plan_canonical_grid(volume > 0, d[self.affine_key], self.spacing_mm, self.grid_size,
                                               self.margin, mirror)
                except EmptyMaskError as exc:
                    raise EmptyMaskError(d.get(self.source_key), exc.reason) from None
            resampled = source_to_grid(volume, plan, binary=binary)
            d[key] = (resampled.astype(np.uint8) if binary else resampled)[None]
        if plan is not None:
            d[self.grid_key] = plan.to_dict()
        return d


class CanonicalGridToSourced(MapTransform):
    """Map canonical-grid volumes back into the input's voxel space recorded under ``grid_key``.

    Inputs (R, R, R) or (1, R, R, R), binary masks or float occupancies; outputs (D, H, W) of the input's
    shape: uint8 for binary keys (threshold 0.5), float32 otherwise.
    """

    def __init__(
        self,
        keys: KeysCollection,
        binary: bool | Sequence[bool] = True,
        grid_key: str = "grid",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binary = ensure_tuple_rep(binary, len(self.keys))
        self.grid_key = grid_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        plan = CanonicalGrid.from_dict(d[self.grid_key])
        for key, binary in self.key_iterator(d, self.binary):
            volume = np.asarray(d[key], dtype=np.float32)
            if volume.ndim == 4 and volume.shape[0] == 1:
                volume = volume[0]
            mapped = grid_to_source(volume, plan, binary=binary)
            d[key] = mapped.astype(np.uint8) if binary else mapped
        return d
