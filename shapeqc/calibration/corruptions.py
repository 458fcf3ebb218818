"""Seeded corruptions of real organ masks for the QC benchmark: the failure modes a segmenter actually shows.

Every generator takes a binary mask (D, H, W) and returns a new bool mask; the strength parameter sets how
much of the organ changes and :func:`volume_change` measures it (voxels that differ / organ voxels), which the
benchmark reports as the severity. Random choices come from ``numpy.random.default_rng(seed)`` only: the same
seed gives the same corruption. The "axial" axis is array axis 2 (the slice axis of a NIfTI in RAS-like order).

Families a prior was trained on are reported apart from unseen ones: a bundle lists them in its metadata
(``training_corruptions``); :data:`TRAINED_FAMILIES` is the default, the Perlin and cube families every shipped
bundle was trained with. The generators are written apart from the training transforms of the same failure
modes (``shapeqc.transforms.RandPlaneCutd``, ``RandSliceDropd``) and seeded differently, so that results stay comparable
across priors trained with and without them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

TRAINED_FAMILIES = ("perlin_add", "perlin_remove", "cube_add", "cube_remove")


def volume_change(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """Voxels that differ between the two masks, relative to the clean organ's volume."""
    clean, corrupted = np.asarray(clean, bool), np.asarray(corrupted, bool)
    return float((clean != corrupted).sum() / max(int(clean.sum()), 1))


def _ball(shape: tuple[int, ...], centre: np.ndarray, radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return ((grid - np.asarray(centre, np.float32).reshape(3, 1, 1, 1)) ** 2).sum(0) <= radius**2


def _surface_voxels(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask & ~ndimage.binary_erosion(mask))


def perlin(mask: np.ndarray, seed: int, add: bool, strength: float = 0.5) -> np.ndarray:
    """Perlin blobs added near the organ (a leak into the neighbourhood) or removed from it (the training
    corruption). ``strength`` in (0, 1]: the noise threshold, 1 - 0.5 * strength (higher: more blobs)."""
    from shapeqc.transforms.corruption import RandPerlinCorruptiond

    level = 1.0 - 0.5 * float(strength)
    corrupt = RandPerlinCorruptiond("mask", add_prob=1.0 if add else 0.0, remove_prob=0.0 if add else 1.0,
                                    threshold_range=(level, level))
    corrupt.set_random_state(seed)
    return corrupt({"mask": np.asarray(mask, np.uint8)})["mask"] > 0


def cube(mask: np.ndarray, seed: int, add: bool, fraction: float = 0.2) -> np.ndarray:
    """A cube centred on a random surface voxel, filled (add) or emptied (remove); its side is set so that its
    volume is ``fraction`` of the organ's, about half of which changes the mask."""
    mask = np.asarray(mask, bool)
    rng = np.random.default_rng(seed)
    surface = _surface_voxels(mask)
    centre = surface[rng.integers(len(surface))]
    half = max(1, int(round((2.0 * fraction * mask.sum()) ** (1.0 / 3.0) / 2.0)))
    box = tuple(slice(max(int(c) - half, 0), int(c) + half + 1) for c in centre)
    out = mask.copy()
    out[box] = add
    return out


def dropped_slices(mask: np.ndarray, seed: int, slices: int = 2) -> np.ndarray:
    """``slices`` consecutive axial slices (array axis 2) emptied, starting at a random slice in the organ's
    middle half: the classic missed-slices failure of slice-wise segmenters."""
    mask = np.asarray(mask, bool)
    rng = np.random.default_rng(seed)
    occupied = np.flatnonzero(mask.any(axis=(0, 1)))
    low, high = occupied[0], occupied[-1]
    start = int(rng.integers(low + (high - low) // 4, max(low + 3 * (high - low) // 4 - slices + 2,
                                                           low + (high - low) // 4 + 1)))
    out = mask.copy()
    out[:, :, start:start + slices] = False
    return out


def dilated(mask: np.ndarray, seed: int, voxels: int = 1) -> np.ndarray:
    """The whole organ grown by ``voxels`` (6-connected steps): a systematic over-segmentation."""
    del seed  # deterministic
    return ndimage.binary_dilation(np.asarray(mask, bool), iterations=int(voxels))


def eroded(mask: np.ndarray, seed: int, voxels: int = 1) -> np.ndarray:
    """The whole organ shrunk by ``voxels``: a systematic under-segmentation."""
    del seed
    return ndimage.binary_erosion(np.asarray(mask, bool), iterations=int(voxels))


def island(mask: np.ndarray, seed: int, fraction: float = 0.1, gap_voxels: int = 4) -> np.ndarray:
    """A spurious ball of ``fraction`` of the organ's volume, ``gap_voxels`` away from it in a random direction
    (a false positive elsewhere in the image); it stays inside the array."""
    mask = np.asarray(mask, bool)
    rng = np.random.default_rng(seed)
    radius = (3.0 * fraction * mask.sum() / (4.0 * np.pi)) ** (1.0 / 3.0)
    points = np.argwhere(mask)
    centroid = points.mean(axis=0)
    shape = np.array(mask.shape)
    for _ in range(200):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        reach = (points - centroid) @ direction
        centre = centroid + direction * (reach.max() + gap_voxels + radius)
        if np.all(centre - radius >= 0) and np.all(centre + radius <= shape - 1):
            ball = _ball(mask.shape, centre, radius)
            if not (ndimage.binary_dilation(mask, iterations=gap_voxels) & ball).any():
                return mask | ball
    raise ValueError("no room for an island beside the organ in this array")


def plane_cut(mask: np.ndarray, seed: int, fraction: float = 0.2) -> np.ndarray:
    """The organ cut by a plane with a random normal, ``fraction`` of its voxels removed (a truncation inside
    the image: the segmenter stopped early)."""
    mask = np.asarray(mask, bool)
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    points = np.argwhere(mask)
    reach = points @ direction
    limit = np.quantile(reach, 1.0 - fraction)
    out = mask.copy()
    cut = points[reach > limit]
    out[tuple(cut.T)] = False
    return out


def hole(mask: np.ndarray, seed: int, fraction: float = 0.1) -> np.ndarray:
    """A ball of ``fraction`` of the organ's volume emptied inside it, centred on a random voxel deep in the
    organ (a lesion or vessel left out)."""
    mask = np.asarray(mask, bool)
    rng = np.random.default_rng(seed)
    depth = ndimage.distance_transform_edt(mask)
    radius = (3.0 * fraction * mask.sum() / (4.0 * np.pi)) ** (1.0 / 3.0)
    deep = np.argwhere(depth >= max(depth.max() * 0.7, 1.0))
    centre = deep[rng.integers(len(deep))]
    return mask & ~_ball(mask.shape, centre, radius)


def swapped(mask: np.ndarray, seed: int, donor: np.ndarray, affine: np.ndarray | None = None,
            donor_affine: np.ndarray | None = None, match_volume: bool = False) -> np.ndarray:
    """Another subject's organ in its place, centroid on the organ's centroid, in ``mask``'s voxel grid.

    Without affines ``donor`` shares the grid of ``mask``; with them (``(4, 4)`` voxel -> mm each) the donor is
    carried through world space (nearest neighbour), so donors from scans of other spacing fit.
    ``match_volume``: the donor is first scaled about its centroid (the same factor on every axis) to the organ's
    volume in mm^3, so that only its shape differs: another organ's shape in place, which a volume check cannot
    catch. Nearest neighbour keeps the volume within a few percent of the organ's.
    """
    del seed
    mask, donor = np.asarray(mask, bool), np.asarray(donor, bool)
    if match_volume:
        affine = np.eye(4) if affine is None else np.asarray(affine, float)
        donor_affine = np.eye(4) if donor_affine is None else np.asarray(donor_affine, float)
        scale = (mask.sum() * abs(np.linalg.det(affine[:3, :3]))
                 / (donor.sum() * abs(np.linalg.det(donor_affine[:3, :3])))) ** (1.0 / 3.0)
        centre_mm = donor_affine[:3, :3] @ np.argwhere(donor).mean(axis=0) + donor_affine[:3, 3]
        about_centre = np.eye(4)
        about_centre[:3, :3] *= scale
        about_centre[:3, 3] = centre_mm * (1.0 - scale)
        donor_affine = about_centre @ donor_affine
    if affine is not None and donor_affine is not None:
        # recipient index -> mm -> donor mm (centroids made to coincide) -> donor index
        shift_mm = (donor_affine[:3, :3] @ np.argwhere(donor).mean(axis=0) + donor_affine[:3, 3]) - (
            affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3])
        to_donor = np.linalg.inv(donor_affine) @ np.block([[np.eye(3), shift_mm[:, None]], [np.zeros((1, 3)), 1]]) \
            @ affine
        return ndimage.affine_transform(donor.astype(np.uint8), to_donor[:3, :3], to_donor[:3, 3],
                                        output_shape=mask.shape, order=0) > 0
    shift = np.round(np.argwhere(mask).mean(axis=0) - np.argwhere(donor).mean(axis=0)).astype(int)
    return ndimage.shift(donor.astype(np.uint8), shift, order=0, mode="constant") > 0


# family -> (generator, severities: keyword arguments per severity, from mild to strong)
FAMILIES: dict[str, tuple[Callable, list[dict]]] = {
    "perlin_add": (lambda m, s, **k: perlin(m, s, True, **k), [{"strength": 0.3}, {"strength": 0.6}]),
    "perlin_remove": (lambda m, s, **k: perlin(m, s, False, **k), [{"strength": 0.3}, {"strength": 0.6}]),
    "cube_add": (lambda m, s, **k: cube(m, s, True, **k), [{"fraction": 0.1}, {"fraction": 0.3}]),
    "cube_remove": (lambda m, s, **k: cube(m, s, False, **k), [{"fraction": 0.1}, {"fraction": 0.3}]),
    "dropped_slices": (dropped_slices, [{"slices": 1}, {"slices": 3}]),
    "dilation": (dilated, [{"voxels": 1}, {"voxels": 2}]),
    "erosion": (eroded, [{"voxels": 1}]),
    "island": (island, [{"fraction": 0.05}, {"fraction": 0.2}]),
    "plane_cut": (plane_cut, [{"fraction": 0.1}, {"fraction": 0.3}]),
    "hole": (hole, [{"fraction": 0.05}, {"fraction": 0.15}]),
}
