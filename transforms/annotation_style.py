"""Clean organs re-drawn in another annotator's style: applied to the clean grid before it is copied and corrupted,
so that the prior's target carries the style too and learns that the style is not damage (issue 31, item 3).

- :class:`RandSinusCarved`: carves a branched cavity from the organ's deepest concavity (a kidney's hilum) into
  its interior, as annotators who leave the renal sinus (fat, vessels, collecting system) out of the kidney draw
  it. The expert labels of evalseg carve a narrow branched sinus that a prior trained on
  KiTS23 alone fills (4-5 ml, max surface distance 9-10 mm: docs/training/kidney/candidate/) and so flags.
- :class:`RandOutlineRestyled`: moves the whole outline in or out by a fraction of a voxel and smooths it, as
  annotators draw the same surface up to a millimetre apart (evalseg's experts about 1 mm outside KiTS23's: a prior
  trained on KiTS alone reconstructs their kidneys a rim too small, docs/training.md).
"""

from __future__ import annotations

import numpy as np
from monai.config import KeysCollection
from monai.transforms.utils import get_largest_connected_component_mask
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from shapeqc.transforms.boxes import organ_box
from shapeqc.transforms.corruption import InPlaceGridTransform


def convex_hull_mask(organ: np.ndarray) -> np.ndarray:
    """(R, R, R) bool -> (R, R, R) bool voxels whose centres lie in the convex hull of the organ's voxel centres.

    Why not ``skimage.morphology.convex_hull_image``: it hulls every voxel's corners over the whole grid (0.6 s on a
    64^3 kidney grid, per training item); the centres' hull tested inside the organ's box takes a tenth of that."""
    hull = organ.copy()
    box = organ_box(organ)
    if box is None:
        return hull
    surface = np.argwhere(organ & ~ndimage.binary_erosion(organ))
    try:
        facets = ConvexHull(surface).equations  # (F, 4): outward normal n and offset b, inside where n.x + b <= 0
    except QhullError:  # a flat organ (all centres on one plane) has no 3D hull: the organ is its own hull
        return hull
    centres = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
    inside = (centres.reshape(-1, 3) @ facets[:, :3].T + facets[:, 3] <= 1e-6).all(axis=1)
    hull[box] |= inside.reshape(centres.shape[:3])
    return hull


class RandSinusCarved(InPlaceGridTransform):
    """Carve a branched cavity, open to the organ's deepest concavity, into the organ.

    The seed is the concavity voxel (inside the convex hull, outside the organ) farthest from the hull's outside:
    the floor of a kidney's hilum. Each of ``branches_range`` branches is a tube from the seed to a random organ
    voxel ``length_range`` voxels away, bent through a jittered midpoint, of a radius drawn from
    ``radius_range``. Voxels within ``cortex_voxels`` of the hull's outside are never carved (the cavity opens
    only into the hilum, never through the outer surface); only the organ's largest connected part is kept. An
    organ whose deepest concavity is shallower than ``cortex_voxels`` (a convex organ) is left as it is.

    On the kidney grid (2.5 mm) the defaults carve 1-2.5 % of a KiTS23 kidney (3-7 ml), 0.2 s per item.

    Args:
        keys: binary grids (R, R, R) or (1, R, R, R), changed in place (the clean mask, before it is copied to the
            network's input).
        prob: probability of applying.
        branches_range: (low, high) number of branches, inclusive.
        length_range: (low, high) distance from the seed to a branch's end, grid voxels.
        radius_range: (low, high) tube radius, grid voxels (1.0: a 3-voxel-wide cross-section).
        cortex_voxels: carving stays at least this deep inside the convex hull, grid voxels.
        max_carved_fraction: a carving that would remove more than this fraction of the organ is not applied
            (the grid is returned unchanged), nor is one on an organ without a concavity.
        seed_key, base_seed: as :class:`shapeqc.transforms.RandPatchCorruptiond`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.3,
        branches_range: tuple[int, int] = (3, 6),
        length_range: tuple[float, float] = (4.0, 12.0),
        radius_range: tuple[float, float] = (1.0, 2.0),
        cortex_voxels: float = 2.0,
        max_carved_fraction: float = 0.08,
        seed_key: str | None = None,
        base_seed: int = 7,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, seed_key, base_seed, allow_missing_keys)
        if branches_range[0] < 1 or branches_range[1] < branches_range[0]:
            raise ValueError(f"branches_range {branches_range}: need 1 <= low <= high")
        self.branches_range = branches_range
        self.length_range = length_range
        self.radius_range = radius_range
        self.cortex_voxels = float(cortex_voxels)
        self.max_carved_fraction = float(max_carved_fraction)

    def cavity(self, organ: np.ndarray) -> np.ndarray:
        """(R, R, R) bool organ -> (R, R, R) bool voxels to carve (empty when the organ has no concavity or no
        interior voxel within reach)."""
        hull = convex_hull_mask(organ)
        concavity = hull & ~organ
        carve = np.zeros_like(organ)
        if not concavity.any():
            return carve
        # distance from the hull's outside; padding keeps a hull touching the grid's border measured as open there
        depth = ndimage.distance_transform_edt(np.pad(hull, 1))[1:-1, 1:-1, 1:-1]
        seed = np.unravel_index(np.argmax(np.where(concavity, depth, -1.0)), organ.shape)
        if depth[seed] < self.cortex_voxels:
            # only the staircase of a convex organ's voxels: no hilum to open a cavity into
            return carve
        seed = np.asarray(seed, dtype=float)
        interior = np.argwhere(organ & (depth >= self.cortex_voxels))
        reach = np.linalg.norm(interior - seed, axis=1)
        ends = interior[(reach >= self.length_range[0]) & (reach <= self.length_range[1])]
        if len(ends) == 0:
            return carve
        centreline = np.zeros(organ.shape, dtype=bool)
        radii = np.zeros(organ.shape, dtype=float)
        for _ in range(self.R.randint(self.branches_range[0], self.branches_range[1] + 1)):
            end = ends[self.R.randint(len(ends))].astype(float)
            length = np.linalg.norm(end - seed)
            middle = (seed + end) / 2 + self.R.normal(scale=0.2 * length, size=3)
            steps = np.linspace(0.0, 1.0, max(2, int(4 * length)))[:, None]
            # quadratic Bezier curve seed -> end bent towards the jittered middle
            path = (1 - steps) ** 2 * seed + 2 * (1 - steps) * steps * middle + steps**2 * end
            voxels = tuple(np.clip(np.rint(path).astype(int), 0, np.array(organ.shape) - 1).T)
            centreline[voxels] = True
            radii[voxels] = np.maximum(radii[voxels], self.R.uniform(*self.radius_range))
        # each voxel carved within the radius of its nearest centreline voxel
        distance, nearest = ndimage.distance_transform_edt(~centreline, return_indices=True)
        carve = distance <= radii[tuple(nearest)]
        return carve & (depth >= self.cortex_voxels) & organ

    def change(self, grid: np.ndarray) -> np.ndarray:
        """(R, R, R) binary -> (R, R, R) uint8 organ with the carved cavity removed (largest part kept)."""
        organ = np.asarray(grid) != 0
        if organ.sum() < 27:
            return organ.astype(np.uint8)
        carve = self.cavity(organ)
        if not carve.any() or carve.sum() > self.max_carved_fraction * organ.sum():
            return organ.astype(np.uint8)
        # face-connected parts, as scipy's default labelling counts them
        return get_largest_connected_component_mask(organ & ~carve, connectivity=1).astype(np.uint8)


def signed_distance(organ: np.ndarray) -> np.ndarray:
    """(R, R, R) bool -> (R, R, R) float32 signed distance of each voxel centre to the organ's outline, grid voxels:
    negative inside, positive outside, the outline half-way between an organ voxel and its outside neighbour (a face
    voxel inside is -0.5, its neighbour outside +0.5). The grid outside the array counts as outside the organ."""
    padded = np.pad(organ, 1)
    inside = ndimage.distance_transform_edt(padded)[1:-1, 1:-1, 1:-1]
    outside = ndimage.distance_transform_edt(~padded)[1:-1, 1:-1, 1:-1]
    return np.where(organ, 0.5 - inside, outside - 0.5).astype(np.float32)


class RandOutlineRestyled(InPlaceGridTransform):
    """Re-draw the organ's outline a sub-voxel distance further in or out, and smoother or not: the organ becomes
    the voxels whose signed distance to the outline (:func:`signed_distance`), smoothed by a Gaussian of a sigma
    drawn from ``sigma_range``, is at most a shift drawn from ``shift_range`` (positive: the outline moves out).

    Why: two teams draw the same kidney up to a millimetre apart (evalseg's experts about 1 mm, 0.4 grid voxels,
    outside KiTS23's outline). A prior trained on one team's outline reconstructs the other's a rim off, and the
    threshold calibrated on the first team flags the second team's clean organs. Applied to the clean organ before
    it is copied into the network's input, the style reaches the target too: the prior learns to keep an outline
    within the shift range where it is drawn. A whole-voxel dilation or erosion stays damage
    (:class:`shapeqc.transforms.RandBoundaryShiftd`, applied to the input only, moves the outline 1-2.5 voxels).

    The smoothing is what makes the shift sub-voxel: unsmoothed, the signed distance of a voxel grid takes the
    values +-0.5, 1.5, ... at face neighbours, so a shift below half a voxel changes nothing and one of 0.5 is a
    whole-voxel dilation (+20% of a KiTS kidney on the 2.5 mm grid). Smoothed with sigma >= 0.75 the volume follows
    the shift smoothly: on two KiTS kidneys, shifts -0.45 / -0.15 / 0 / +0.15 / +0.45 voxels give 0.87-0.88 /
    0.95-0.97 / 0.99-1.00 / 1.02 / 1.10 of the volume; a ball's radius moves by -0.57 to -0.62 / +0.33 to +0.45
    voxels at +-0.45 (the voxel distance transform makes the steps inwards a little longer): about -1.5 to +1.1 mm;
    the wider smoothings also round the outline in by about sigma^2 / curvature radius (0.16 voxel at sigma 1.25 on a
    ball of radius 10 voxels), as a smoothing annotation tool does. Only the largest part is kept (a smoothing
    can cut off a thin limb); a re-drawing that would keep less than ``min_kept_fraction`` of the organ's voxels or
    grow it by more than ``1 / min_kept_fraction`` is not applied. 40 ms per 64^3 grid.

    Args:
        keys: binary grids (R, R, R) or (1, R, R, R), changed in place (the clean mask, before it is copied to the
            network's input).
        prob: probability of applying.
        shift_range: (low, high) outline shift, grid voxels, drawn uniformly (negative: inward).
        sigma_range: (low, high) Gaussian sigma of the smoothing of the signed distance, grid voxels, drawn
            uniformly (0: no smoothing: the shift acts in whole voxels only, see above).
        min_kept_fraction: see above.
        seed_key, base_seed: as :class:`shapeqc.transforms.RandPatchCorruptiond`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        shift_range: tuple[float, float] = (-0.45, 0.45),
        sigma_range: tuple[float, float] = (0.75, 1.25),
        min_kept_fraction: float = 0.5,
        seed_key: str | None = None,
        base_seed: int = 11,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, seed_key, base_seed, allow_missing_keys)
        if shift_range[1] < shift_range[0] or sigma_range[1] < sigma_range[0] or sigma_range[0] < 0:
            raise ValueError(f"shift_range {shift_range} and sigma_range {sigma_range}: need low <= high, sigma >= 0")
        self.shift_range = shift_range
        self.sigma_range = sigma_range
        self.min_kept_fraction = float(min_kept_fraction)

    def change(self, grid: np.ndarray) -> np.ndarray:
        """(R, R, R) binary -> (R, R, R) uint8 organ with its outline re-drawn (largest part kept)."""
        organ = np.asarray(grid) != 0
        # drawn before any early return: the stream of draws does not depend on the organ
        shift = self.R.uniform(*self.shift_range)
        sigma = self.R.uniform(*self.sigma_range)
        if organ.sum() < 27:
            return organ.astype(np.uint8)
        distance = signed_distance(organ)
        if sigma > 0:
            distance = ndimage.gaussian_filter(distance, sigma, mode="nearest")
        restyled = distance <= shift
        if not restyled.any():
            return organ.astype(np.uint8)
        restyled = get_largest_connected_component_mask(restyled, connectivity=1)
        ratio = restyled.sum() / organ.sum()
        if ratio < self.min_kept_fraction or ratio > 1 / self.min_kept_fraction:
            return organ.astype(np.uint8)
        return restyled.astype(np.uint8)
