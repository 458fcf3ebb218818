"""The image a segmentation was drawn on (the CT), shown under the pictures and in the review page's viewer.

The image never changes a score: it is read once per case, checked against the segmentation's voxel grid, and
only cut and windowed for pictures. A missing, unreadable or mismatched image is a warning in the records, not an
error: the organ is judged all the same.

Where the image is found (:func:`image_beside`), for a segmentation file ``DIR/NAME.nii.gz`` or a per-organ
folder ``DIR/NAME/`` (TotalSegmentator's ``-o`` folder), the first that exists of:

1. ``DIR/NAME_ct.nii.gz`` and, when NAME ends with ``_seg``, ``_multilabel_seg``, ``_segmentation`` or
   ``_segmentations``, ``DIR/<NAME without it>_ct.nii.gz`` (``v2_multilabel_seg.nii.gz`` -> ``v2_ct.nii.gz``);
2. ``DIR/NAME_0000.nii.gz`` (nnU-Net's image naming);
3. ``DIR/ct.nii.gz``, ``DIR/image.nii.gz`` (TotalSegmentator's own example: ``-i ct.nii.gz -o segmentations``);
4. for the head-and-neck tree (``<rater>/<scan>/segmentations/``): ``<scan>/CT_IMAGE.nii.gz`` or ``<scan>/ct.nii.gz``
   beside the ``segmentations`` folder.

each also as ``.nii`` and ``.nrrd``. ``shapeqc analyse --image CT`` names it for a single case instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapeqc.transforms.errors import SegmentationInputError
from shapeqc.transforms.volume_io import VolumeFile, read_volume_file, strip_volume_suffix

SEGMENTATION_SUFFIXES = ("_multilabel_seg", "_segmentations", "_segmentation", "_seg")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
# soft-tissue window (level 40 HU, width 400 HU): what a radiologist reads abdominal organs with
CT_WINDOW_HU = (-160.0, 240.0)


def _stems(name: str) -> list[str]:
    stem = strip_volume_suffix(name)
    stems = [f"{stem}_ct"]
    for suffix in SEGMENTATION_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stems.append(f"{stem[: -len(suffix)]}_ct")
            break
    return [*stems, f"{stem}_0000", "ct", "image"]


def image_beside(segmentation: str | Path) -> Path | None:
    """The image file for ``segmentation`` (a file or a per-organ folder) by the module's rule, None if none."""
    segmentation = Path(segmentation)
    folder = segmentation.parent
    candidates = [folder / f"{stem}{suffix}" for stem in _stems(segmentation.name) for suffix in IMAGE_SUFFIXES]
    if segmentation.name == "segmentations" or folder.name == "segmentations":
        scan = folder if segmentation.name == "segmentations" else folder.parent
        candidates += [scan / f"{stem}{suffix}" for stem in ("CT_IMAGE", "ct") for suffix in IMAGE_SUFFIXES]
    return next((path for path in candidates if path.is_file() and path != segmentation), None)


@dataclass(frozen=True)
class CaseImage:
    """The image of one case on the segmentation's voxel grid: ``array`` (D, H, W) float32, ``path``, ``window``
    (low, high) display values."""

    path: Path
    array: np.ndarray
    window: tuple[float, float]


def display_window(array: np.ndarray) -> tuple[float, float]:
    """(low, high) for pictures: the soft-tissue window for a CT in Hounsfield units (air at about -1000), else the
    1st-99th percentile (MR, or a CT rescaled to other units)."""
    sample = np.asarray(array)[::4, ::4, ::2]
    if sample.min() < -500 and sample.max() > 300:
        return CT_WINDOW_HU
    low, high = np.percentile(sample, (1, 99))
    return float(low), float(high if high > low else low + 1)


def read_image_file(path: str | Path) -> tuple[VolumeFile | None, str | None]:
    """(the image file read once for a case, None), or (None, a warning) when it cannot be read."""
    try:
        return read_volume_file(path), None
    except SegmentationInputError as error:
        return None, f"image not shown: {error}"


def image_on_grid(volume: VolumeFile, shape: tuple[int, ...], affine: np.ndarray) -> tuple[CaseImage | None,
                                                                                            str | None]:
    """(the image, None) when ``volume`` lies on the segmentation's grid (``shape`` and ``affine``, mm to 1e-3),
    else (None, a warning saying why it is not shown)."""
    path = volume.path
    if tuple(volume.array.shape) != tuple(shape):
        return None, (f"image not shown: {path} has {tuple(volume.array.shape)} voxels, the segmentation "
                      f"{tuple(shape)} (a different grid)")
    if not np.allclose(volume.affine, affine, atol=1e-3):
        return None, f"image not shown: {path} lies elsewhere than the segmentation (its affine differs)"
    array = np.asarray(volume.array, dtype=np.float32)
    return CaseImage(path, array, display_window(array)), None
