"""Where a segmentation and its reconstruction disagree: the difference map and its defect components."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

OVER = 1  # in the segmentation, not in the reconstruction: suspected over-segmentation
UNDER = 2  # in the reconstruction, not in the segmentation: suspected under-segmentation


@dataclass(frozen=True)
class Defect:
    """One connected region of disagreement, in the input's voxel space.

    ``centroid_mm`` is in scanner mm (RAS+); ``bbox`` is ((i0, j0, k0), (i1, j1, k1)) voxel indices, inclusive.
    """

    kind: str
    voxels: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]
    bbox: tuple[tuple[int, int, int], tuple[int, int, int]]

    def to_dict(self) -> dict:
        return asdict(self)


def difference_map(segmentation: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """uint8 map: 1 (OVER) where only the segmentation has the organ, 2 (UNDER) where only the reconstruction."""
    segmentation = np.asarray(segmentation, dtype=bool)
    reconstruction = np.asarray(reconstruction, dtype=bool)
    # arithmetic on the two masks' bytes, not masked assignments: a liver's box holds 20 million voxels
    return (segmentation & ~reconstruction).view(np.uint8) * np.uint8(OVER) + \
        (reconstruction & ~segmentation).view(np.uint8) * np.uint8(UNDER)


def defect_components(difference: np.ndarray, affine: np.ndarray, min_volume_ml: float = 0.01,
                      offset: tuple[int, int, int] = (0, 0, 0)) -> list[Defect]:
    """Connected components (26-connectivity) of each kind at least ``min_volume_ml`` large, largest first.

    ``difference`` may be a box cut from the volume ``affine`` belongs to: ``offset`` is the voxel index of its
    first voxel there, and centroids and bounding boxes are given in that volume."""
    affine = np.asarray(affine, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.int64)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    defects = []
    for code, kind in ((OVER, "over"), (UNDER, "under")):
        labels, count = ndimage.label(difference == code, structure=np.ones((3, 3, 3)))
        if count == 0:
            continue
        # sizes and centroids from the labelled voxels alone (center_of_mass would scan the box once per part)
        voxels = np.nonzero(labels)
        part_of = labels[voxels]
        sizes = np.bincount(part_of, minlength=count + 1)[1:]
        centroids = np.stack([np.bincount(part_of, weights=index, minlength=count + 1)[1:] for index in voxels],
                             axis=1) / sizes[:, None]
        slices = ndimage.find_objects(labels)
        for index in range(count):
            volume = float(sizes[index] * voxel_ml)
            if volume < min_volume_ml:
                continue
            centre = affine[:3, :3] @ (np.asarray(centroids[index]) + offset) + affine[:3, 3]
            box = [slice(s.start + o, s.stop + o) for s, o in zip(slices[index], offset, strict=True)]
            defects.append(Defect(kind=kind, voxels=int(sizes[index]), volume_ml=round(volume, 4),
                                  centroid_mm=tuple(round(float(c), 2) for c in centre),
                                  bbox=(tuple(int(s.start) for s in box), tuple(int(s.stop) - 1 for s in box))))
    return sorted(defects, key=lambda d: -d.voxels)
