"""Clean organs re-drawn in another annotator's style: applied to the clean grid before it is copied and corrupted,
so that the prior's target carries the style too and learns that the style is not damage (issue 31, item 3).

- :class:`RandSinusCarved`: carves a branched cavity from the organ's deepest concavity (a kidney's hilum) into
  its interior, as annotators who leave the renal sinus (fat, vessels, collecting system) out of the kidney draw
  it. The expert labels of evalseg carve a narrow branched sinus that a prior trained on
  KiTS23 alone fills (4-5 ml, max surface distance 9-10 mm: docs/training/kidney/candidate/) and so flags.
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
