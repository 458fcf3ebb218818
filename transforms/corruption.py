"""Random corruptions of a canonical organ grid: the network's input is the corrupted copy, the clean copy
gives the targets. Both run per training step (no offline preprocessing).

- :class:`RandPerlinCorruptiond`: adds Perlin-noise blobs within the organ's box grown by ``add_margin``
  voxels and removes blobs within the box grown by ``remove_margin`` (research pipeline: ~10 and ~2). A blob
  is where the box's noise, normalized to [0, 1], exceeds a threshold drawn from ``threshold_range``; the
  noise lattice has about ``cells_per_side`` cells along each box side.
- :class:`RandPatchCorruptiond`: adds or deletes one random cube of random size inside the organ's box.
- :class:`RandPlaneCutd`: cuts the organ by a plane of random orientation (a segmentation that stops early).
- :class:`RandSliceDropd`: empties a few consecutive slices across the organ (missed slices of a slice-wise
  segmenter).
- :class:`RandBoundaryShiftd`: moves the whole surface out (dilation) or in (erosion) by an ellipsoid of random
  radii (a segmenter that is too generous or too strict everywhere, anisotropic as on thick-slice CT).

The last three are failure modes of real segmenters that the first two do not teach: a prior trained on blobs
alone learns to keep any flat cut face it is shown.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple
from scipy import ndimage

from shapeqc.cuda_kernels import perlin3d
from shapeqc.transforms.boxes import organ_box


def stable_seed(text: str, base_seed: int = 0) -> int:
    """A 32-bit seed from a string (case id) that is the same in every process and Python run."""
    import zlib

    return (zlib.crc32(str(text).encode()) ^ (base_seed * 2654435761)) & 0xFFFFFFFF


class ItemSeeded:
    """Mixin: with ``seed_key`` set, each call reseeds ``self.R`` from ``data[seed_key]`` (e.g. the case id), so a
    validation or calibration set gets the same corruption of each case in every epoch and every process."""

    seed_key: str | None = None
    base_seed: int = 0

    def _reseed_from(self, data: Mapping) -> None:
        if self.seed_key is not None:
            self.set_random_state(seed=stable_seed(data[self.seed_key], self.base_seed))


def _as_volume(value) -> tuple[np.ndarray, bool]:
    array = np.asarray(value)
    if array.ndim == 4 and array.shape[0] == 1:
        return array[0], True
    return array, False


class RandPerlinCorruptiond(ItemSeeded, RandomizableTransform, MapTransform):
    """Add and remove Perlin-noise blobs near the organ (see module doc); writes the result to ``output_keys``.

    Args:
        keys: clean grids (R, R, R) or (1, R, R, R), binary.
        output_keys: where the corrupted copies go (default: overwrite ``keys``).
        prob: probability of corrupting at all.
        add_prob, remove_prob: probability of each of the two steps, given corruption.
        add_margin, remove_margin: box growth in voxels for adding and removing.
        threshold_range: blob threshold on the normalized noise, drawn uniformly.
        cells_per_side: noise lattice cells along each box side.
        seed_key: if given, reseed from ``data[seed_key]`` (plus ``base_seed``) on every call: fixed corruptions.
    """

    # the QC benchmark's names (shapeqc.calibration.corruptions) for what this transform does to training inputs
    families = ("perlin_add", "perlin_remove")

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: KeysCollection | None = None,
        prob: float = 1.0,
        add_prob: float = 0.5,
        remove_prob: float = 0.5,
        add_margin: int = 10,
        remove_margin: int = 2,
        threshold_range: tuple[float, float] = (0.65, 1.0),
        cells_per_side: float = 3.0,
        seed_key: str | None = None,
        base_seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.seed_key, self.base_seed = seed_key, base_seed
        self.output_keys = self.keys if output_keys is None else ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError("output_keys must match keys one to one")
        self.add_prob, self.remove_prob = add_prob, remove_prob
        self.add_margin, self.remove_margin = add_margin, remove_margin
        self.threshold_range = threshold_range
        self.cells_per_side = cells_per_side

    def _blobs(self, shape: tuple[int, int, int]) -> np.ndarray:
        """A bool blob mask of ``shape`` from a random window of the noise field."""
        offset = self.R.uniform(0, 200, size=3)
        axes = [np.float32(offset[a]) + np.arange(n, dtype=np.float32) * np.float32(self.cells_per_side / max(n, 1))
                for a, n in enumerate(shape)]
        noise = perlin3d(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
        low, high = float(noise.min()), float(noise.max())
        normalized = (noise - low) / max(high - low, 1e-12)
        return normalized > self.R.uniform(*self.threshold_range)

    def corrupt(self, grid: np.ndarray) -> np.ndarray:
        """One corruption of a (R, R, R) binary grid (uses this transform's random state)."""
        out = (np.asarray(grid) != 0).astype(np.uint8)
        do_add = self.R.random() < self.add_prob
        do_remove = self.R.random() < self.remove_prob
        if do_add:
            box = organ_box(out, self.add_margin)
            if box is not None:
                region = out[box]
                region[self._blobs(region.shape)] = 1
        if do_remove:
            box = organ_box(out, self.remove_margin)
            if box is not None:
                region = out[box]
                region[self._blobs(region.shape)] = 0
        return out

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict:
        d = dict(data)
        self._reseed_from(d)
        self.randomize(None)
        for key, out_key in self.key_iterator(d, self.output_keys):
            volume, channel = _as_volume(d[key])
            corrupted = self.corrupt(volume) if self._do_transform else (volume != 0).astype(np.uint8)
            d[out_key] = corrupted[None] if channel else corrupted
        return d


class InPlaceGridTransform(ItemSeeded, RandomizableTransform, MapTransform):
    """Base of the random transforms that replace each key's grid through ``self.change(grid)`` (the in-place
    corruptions here, ``shapeqc.transforms.reslice.RandAcquisitionResliced``). The result keeps the input's array type
    (ndarray, tensor or MetaTensor) and dtype, so a batch of changed and untouched items collates."""

    def __init__(self, keys: KeysCollection, prob: float, seed_key: str | None, base_seed: int,
                 allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.seed_key, self.base_seed = seed_key, base_seed

    def change(self, grid: np.ndarray) -> np.ndarray:
        """(R, R, R) binary grid -> (R, R, R) uint8 grid."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict:
        d = dict(data)
        self._reseed_from(d)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            volume, channel = _as_volume(d[key])
            changed = self.change(volume)
            d[key], *_ = convert_to_dst_type(changed[None] if channel else changed, d[key], dtype=volume.dtype)
        return d


class RandPatchCorruptiond(InPlaceGridTransform):
    """Add (fill) or delete (empty) one random cube inside the organ's box.

    Args:
        keys: binary grids (R, R, R) or (1, R, R, R), corrupted in place (chain after RandPerlinCorruptiond on
            its output key).
        prob: probability of applying.
        size_range: cube side as a fraction of the box's smallest side, drawn uniformly.
        add_fraction: probability that the cube is added rather than deleted.
        seed_key: if given, reseed from ``data[seed_key]`` (plus ``base_seed``) on every call: fixed corruptions.
    """

    # the QC benchmark's names (shapeqc.calibration.corruptions) for what this transform does to training inputs
    families = ("cube_add", "cube_remove")

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        size_range: tuple[float, float] = (0.2, 0.5),
        add_fraction: float = 0.5,
        seed_key: str | None = None,
        base_seed: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, seed_key, base_seed, allow_missing_keys)
        self.size_range = size_range
        self.add_fraction = add_fraction

    def change(self, grid: np.ndarray) -> np.ndarray:
        out = (np.asarray(grid) != 0).astype(np.uint8)
        box = organ_box(out)
        if box is None:
            return out
        sides = np.array([s.stop - s.start for s in box])
        side = max(1, int(round(self.R.uniform(*self.size_range) * sides.min())))
        corner = [int(s.start + self.R.randint(0, max(1, n - side + 1))) for s, n in zip(box, sides, strict=True)]
        cube = tuple(slice(c, c + side) for c in corner)
        out[cube] = 1 if self.R.random() < self.add_fraction else 0
        return out


class RandPlaneCutd(InPlaceGridTransform):
    """Remove the part of the organ beyond a plane of random orientation.

    Args:
        keys: binary grids (R, R, R) or (1, R, R, R), corrupted in place.
        prob: probability of applying.
        fraction_range: fraction of the organ's voxels removed, drawn uniformly.
        seed_key, base_seed: as :class:`RandPatchCorruptiond`.
    """

    # the QC benchmark's names (shapeqc.calibration.corruptions) for what this transform does to training inputs
    families = ("plane_cut",)

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        fraction_range: tuple[float, float] = (0.05, 0.35),
        seed_key: str | None = None,
        base_seed: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, seed_key, base_seed, allow_missing_keys)
        self.fraction_range = fraction_range

    def change(self, grid: np.ndarray) -> np.ndarray:
        out = (np.asarray(grid) != 0).astype(np.uint8)
        points = np.argwhere(out)
        if len(points) == 0:
            return out
        normal = self.R.normal(size=3)
        normal /= max(np.linalg.norm(normal), 1e-12)
        reach = points @ normal
        limit = np.quantile(reach, 1.0 - self.R.uniform(*self.fraction_range))
        out[tuple(points[reach > limit].T)] = 0
        return out



class RandSliceDropd(InPlaceGridTransform):
    """Empty ``k`` consecutive slices (``k`` drawn from ``slices_range``) across the organ's middle half along
    ``axis`` (2: superior-inferior in the canonical grid, the slice axis of an axial scan).

    Args:
        keys: binary grids (R, R, R) or (1, R, R, R), corrupted in place.
        prob: probability of applying.
        slices_range: (min, max) number of slices, inclusive.
        axis: spatial axis of the slices.
        seed_key, base_seed: as :class:`RandPatchCorruptiond`.
    """

    # the QC benchmark's names (shapeqc.calibration.corruptions) for what this transform does to training inputs
    families = ("dropped_slices",)

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        slices_range: tuple[int, int] = (1, 4),
        axis: int = 2,
        seed_key: str | None = None,
        base_seed: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, seed_key, base_seed, allow_missing_keys)
        self.slices_range = slices_range
        self.axis = int(axis)

    def change(self, grid: np.ndarray) -> np.ndarray:
        out = (np.asarray(grid) != 0).astype(np.uint8)
        other = tuple(a for a in range(3) if a != self.axis)
        occupied = np.flatnonzero(out.any(axis=other))
        if len(occupied) == 0:
            return out
        count = int(self.R.randint(self.slices_range[0], self.slices_range[1] + 1))
        low, high = int(occupied[0]), int(occupied[-1])
        first = low + (high - low) // 4
        start = int(self.R.randint(first, max(low + 3 * (high - low) // 4 - count + 2, first + 1)))
        index = [slice(None)] * 3
        index[self.axis] = slice(start, start + count)
        out[tuple(index)] = 0
        return out


def ellipsoid_element(radii: tuple[float, float, float]) -> np.ndarray:
    """Structuring element: the voxels ``d`` with ``sum((d_i / r_i)^2) <= 1``, radii in voxels (> 0).

    Returns a boolean (2 floor(r_0) + 1, ...) array; a radius below 1 leaves that axis one voxel thick, so
    (0.5, 0.5, 2.0) grows along axis 2 only.
    """
    half = [int(np.floor(r)) for r in radii]
    offsets = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    return sum((o / r) ** 2 for o, r in zip(offsets, radii, strict=True)) <= 1.0 + 1e-9


class RandBoundaryShiftd(InPlaceGridTransform):
    """Dilate or erode the whole organ by an ellipsoid whose radii (grid voxels, one per axis) are drawn from
    ``radius_range``, at least one of them at least 1 voxel so that the grid changes.

    Why: a prior trained only to fill (blobs removed, cut-off parts, missing slices, a CT staircase as plausible)
    accepts a gland that is uniformly too thick (adrenal variants 0.2.0 and 0.3.0, one-voxel dilation detected
    below chance on CT grids); shown grown and shrunk inputs with the true gland as target it learns where the
    surface is, not only which parts are missing. Anisotropic radii stand for a one-voxel error on a
    0.8 x 0.8 x 2.5 mm grid (about 1 grid voxel in-plane, 2.5 across slices).

    Args:
        keys: binary grids (R, R, R) or (1, R, R, R), corrupted in place.
        prob: probability of applying.
        radius_range: (low, high) radius per axis, in grid voxels, drawn uniformly and independently.
        erode_fraction: probability that the shift is inward (erosion) rather than outward.
        min_kept_fraction: an erosion that would keep fewer voxels than this fraction of the organ (a thin
            limb wiped out) is not applied; the grid is returned unchanged.
        seed_key, base_seed: as :class:`RandPatchCorruptiond`.
    """

    # the QC benchmark's names (shapeqc.calibration.corruptions) for what this transform does to training inputs
    families = ("dilation", "erosion")

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.3,
        radius_range: tuple[float, float] = (0.5, 2.5),
        erode_fraction: float = 0.3,
        min_kept_fraction: float = 0.3,
        seed_key: str | None = None,
        base_seed: int = 5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, seed_key, base_seed, allow_missing_keys)
        if radius_range[1] < 1.0:
            raise ValueError(f"radius_range {radius_range} never reaches 1 voxel: the grid would never change")
        self.radius_range = radius_range
        self.erode_fraction = float(erode_fraction)
        self.min_kept_fraction = float(min_kept_fraction)
        self.radii = (1.0, 1.0, 1.0)
        self.erode = False

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        radii = self.R.uniform(*self.radius_range, 3)
        if radii.max() < 1.0:
            radii[self.R.randint(3)] = self.R.uniform(1.0, self.radius_range[1])
        self.radii = tuple(float(r) for r in radii)
        self.erode = bool(self.R.random() < self.erode_fraction)

    def change(self, grid: np.ndarray) -> np.ndarray:
        """(R, R, R) binary -> (R, R, R) uint8 dilated (or eroded) by ``ellipsoid_element(self.radii)``."""
        organ = np.asarray(grid) != 0
        if not organ.any():
            return organ.astype(np.uint8)
        element = ellipsoid_element(self.radii)
        if self.erode:
            shifted = ndimage.binary_erosion(organ, structure=element)
            if shifted.sum() < self.min_kept_fraction * organ.sum():
                return organ.astype(np.uint8)
        else:
            shifted = ndimage.binary_dilation(organ, structure=element)
        return shifted.astype(np.uint8)
