"""Loading one organ's binary mask from any of the segmentation forms shapeqc accepts.

Accepted sources:

- a binary NIfTI mask (values 0/1); an organ name, if given, just says which organ it is;
- a multi-label NIfTI map (TotalSegmentator v1 or v2 class map) with an organ name, e.g. ``adrenal_gland_left``;
  the map version is detected (see :mod:`shapeqc.transforms.class_maps`) or given as ``map_version``;
- a TotalSegmentator output folder holding one binary ``<organ>.nii.gz`` per organ, with an organ name; the
  file may also be NRRD and carry another source's name for the organ (``Parotid-Lt.nrrd``, see
  :data:`shapeqc.transforms.class_maps.ORGAN_FILE_ALIASES`);
- a dataset label map whose labels, all of them, make up one organ (MSD hippocampus: 1 anterior, 2 posterior),
  with ``labels`` naming them; with ``side`` too, a map holding a paired organ on both sides under the same labels
  (KiTS: both kidneys are label 1), of which the organ on that side is kept (:func:`organ_on_side`);
- an AdrenalMNIST3D-style ``.npz`` file with an array name and index (MedMNIST stores masks as 0/255);
- an in-memory array with its affine.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from shapeqc.transforms.class_maps import MAP_VERSIONS, class_map, label_of, organ_file_stems
from shapeqc.transforms.errors import (
    EmptyMaskError,
    MissingFileError,
    NonBinaryMaskError,
    OrganAbsentError,
    TruncatedOrganError,
    UnknownOrganError,
    UnreadableImageError,
    UnsplitSidesError,
)
from shapeqc.transforms.volume_io import (
    VolumeFile,
    binary_mask,
    read_volume,
    read_volume_file,
    validate_affine,
    validate_volume,
)


@lru_cache(maxsize=2)
def _npz_array(path: str, array_name: str) -> np.ndarray:
    # decompressing a 300 MB npz member takes seconds: keep the last two per process
    with np.load(path) as archive:
        return archive[array_name]


def read_npz_mask(path: str | os.PathLike, array_name: str, index: int) -> np.ndarray:
    """One (D, H, W) bool mask from an npz stack (N, D, H, W) whose masks are 0/1 or 0/255 (MedMNIST)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(path, "file does not exist")
    try:
        stack = _npz_array(str(path), array_name)
    except KeyError as exc:
        raise UnreadableImageError(path, f"has no array {array_name!r}") from exc
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot read as npz ({type(exc).__name__}: {exc})") from exc
    if not 0 <= index < len(stack):
        raise UnreadableImageError(path, f"index {index} out of range for {array_name!r} of length {len(stack)}")
    volume = validate_volume(stack[index], f"{path}:{array_name}[{index}]")
    values = np.unique(volume)
    if not (np.all(np.isin(values, (0, 1))) or np.all(np.isin(values, (0, 255)))):
        raise NonBinaryMaskError(f"{path}:{array_name}[{index}]", f"values {values[:8].tolist()} are not 0/1 or 0/255")
    return volume > 0


def load_organ_mask(
    source: str | os.PathLike | np.ndarray | VolumeFile,
    organ: str | None = None,
    map_version: str = "auto",
    affine: np.ndarray | None = None,
    npz_array: str | None = None,
    npz_index: int | None = None,
    labels: Sequence[int] | None = None,
    side: str | None = None,
    map_labels: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load one organ as ``(mask (D, H, W) bool, affine (4, 4) float64, info)``.

    ``source``: a file or folder path, an in-memory mask (with ``affine``), or a :class:`VolumeFile` already read
    (so a caller that looked at the file first does not read it again).
    ``labels``: the label values that together make up the organ in a dataset's own label map (a bundle's
    ``organ_labels``). They are used for a file without a label table whose values all lie in ``{0} + labels``;
    any other file (a TotalSegmentator map, a binary mask) is read as usual.
    ``map_labels``: the label values that make up the organ in this dataset's own label map, whatever else the map
    holds (a datalist item's ``labels``: evalseg's liver is label 6 among eight organs, where TotalSegmentator's
    table would read label 5, evalseg's oesophagus). They win over ``labels`` and over any label table.
    ``side`` ("left" or "right"): the file holds the organ of both sides (KiTS); keep this side's one
    (:func:`organ_on_side`).

    ``info`` records how it was read: ``{"form": "binary" | "multilabel" | "label_set" | "organ_folder" | "npz"
    | "array", "map_version": "v1" | "v2" | "" (not a label map), "label": int (0: not a label map)}``; no None values,
    so batches of items collate.

    Raises one of the :mod:`shapeqc.transforms.errors` types, naming the file.
    """
    if isinstance(source, np.ndarray):
        if affine is None:
            raise ValueError("an in-memory mask needs its affine")
        volume = validate_volume(source, None)
        return binary_mask(volume, None), validate_affine(affine, None), {"form": "array", "map_version": "",
                                                                         "label": 0}
    if side is not None:
        mask, affine, info = load_organ_mask(source, organ, map_version, affine, npz_array, npz_index, labels,
                                             map_labels=map_labels)
        path = source.path if isinstance(source, VolumeFile) else None if isinstance(source, np.ndarray) else source
        return organ_on_side(mask, affine, side, path), affine, info
    if isinstance(source, VolumeFile):
        return _organ_in_volume(source, organ, map_version, labels, map_labels)
    path = Path(source)
    if str(path).lower().endswith(".npz"):
        if npz_array is None or npz_index is None:
            raise UnreadableImageError(path, "an npz source needs an array name and an index")
        mask = read_npz_mask(path, npz_array, int(npz_index))
        affine = np.eye(4) if affine is None else validate_affine(affine, path)
        return mask, affine, {"form": "npz", "map_version": "", "label": 0}
    if path.is_dir():
        if organ is None:
            raise UnknownOrganError(path, "a TotalSegmentator folder needs an organ name")
        organ_file = organ_file_in(path, organ)
        if organ_file is None:
            raise OrganAbsentError(path, f"no file {organ}.nii.gz (or .nii, .nrrd, or another name of the organ) "
                                         f"for organ {organ!r} in this folder")
        volume, file_affine = read_volume(organ_file)
        return binary_mask(volume, organ_file), file_affine, {"form": "organ_folder", "map_version": "",
                                                               "label": 0}
    return _organ_in_volume(read_volume_file(path), organ, map_version, labels, map_labels)


def _organ_in_volume(source: VolumeFile, organ: str | None, map_version: str, labels: Sequence[int] | None,
                     map_labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`load_organ_mask` on a file already read."""
    volume, file_affine, header_labels, path = source.array, source.affine, source.label_names, source.path
    if map_labels is not None:
        _require_whole_labels(volume, path)
        mask = np.isin(volume, list(map_labels))
        if not mask.any():
            raise OrganAbsentError(path, f"organ {organ!r} (labels {list(map_labels)} of the datalist) is absent "
                                         "from this map")
        return mask, file_affine, {"form": "label_set", "map_version": "", "label": 0}
    if labels is not None and header_labels is None:
        if is_label_set_map(source.values, labels):
            return np.isin(volume, labels), file_affine, {"form": "label_set", "map_version": "", "label": 0}
    # A file holding only 0 and 1 is a binary mask of the named organ, unless its own label table says
    # otherwise (a multi-label map with one structure present still carries TotalSegmentator's table).
    if organ is None or (header_labels is None and np.all(np.isin(source.values, (0, 1)))):
        return binary_mask(volume, path, source.values), file_affine, {"form": "binary", "map_version": "", "label": 0}

    _require_whole_labels(volume, path)
    label_map = volume.astype(np.int32, copy=False)
    if map_version == "auto":
        map_version = source.map_version
    elif map_version not in MAP_VERSIONS:
        raise ValueError(f"map_version must be 'auto' or one of {MAP_VERSIONS}, got {map_version!r}")
    labels = header_labels or class_map(map_version)
    label = label_of(organ, labels, path)
    mask = label_map == label
    if not mask.any():
        raise OrganAbsentError(path, f"organ {organ!r} (label {label}, map {map_version}) is absent from this map")
    return mask, file_affine, {"form": "multilabel", "map_version": map_version, "label": int(label)}


def _require_whole_labels(volume: np.ndarray, path) -> None:
    """A label map holds whole numbers: NonBinaryMaskError (naming ``path``) for fractional values."""
    if volume.dtype.kind == "f" and not np.all(volume == np.round(volume)):
        raise NonBinaryMaskError(path, "a label map must hold whole numbers, found fractional values")


# A kidney holds 100-250 ml; what is left beside the two kidneys of a KiTS map after the union of its labels is a
# few specks and small cysts of under 1 ml. 20 ml is the index's own "organ-sized" bar (its n_components_over_20ml).
SIDE_PART_MIN_ML = 20.0


def organ_on_side(mask: np.ndarray, affine: np.ndarray, side: str, path: str | os.PathLike | None) -> np.ndarray:
    """The organ on ``side`` of a (D, H, W) bool mask holding a paired organ on both sides (KiTS kidneys).

    The mask must hold exactly two 26-connected parts of at least :data:`SIDE_PART_MIN_ML`; the patient's right
    one is the part whose centroid has the larger RAS x (NIfTI world +x points to the patient's right), whatever
    the array order. Smaller parts are dropped. Raises :class:`UnsplitSidesError` (naming ``path``) for one such
    part (a solitary or a fused horseshoe kidney) or more than two.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    from scipy import ndimage

    parts, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    foreground = np.nonzero(parts)
    part_of = parts[foreground]
    sizes = np.bincount(part_of, minlength=count + 1)
    organ_sized = np.flatnonzero(sizes[1:] * voxel_ml >= SIDE_PART_MIN_ML) + 1
    if len(organ_sized) != 2:
        raise UnsplitSidesError(path, f"{len(organ_sized)} part(s) of at least {SIDE_PART_MIN_ML:g} ml where a left "
                                      "and a right organ need 2 (a solitary or fused organ): the sides cannot be "
                                      "told apart")
    # per-part voxel-index sums over the foreground only (ndimage.center_of_mass scans the whole array per part)
    centroids = np.stack([np.bincount(part_of, weights=axis_index, minlength=count + 1)[organ_sized]
                          for axis_index in foreground], axis=1) / sizes[organ_sized, None]
    world_x = centroids @ np.asarray(affine, float)[0, :3] + float(affine[0, 3])
    right, left = organ_sized[np.argsort(-world_x)]
    return parts == (right if side == "right" else left)


def is_label_set_map(values: np.ndarray, labels: Sequence[int]) -> bool:
    """True when a label map's ``values`` (its unique voxel values) are all 0 or one of ``labels``: the map holds
    that organ's parts and nothing else (the rule for a bundle's ``organ_labels``)."""
    return bool(np.all(np.isin(values, (0, *labels))))


def organ_file_in(folder: Path, organ: str) -> Path | None:
    """The file holding ``organ`` in a per-organ folder: ``<name>.nii.gz``, ``.nii`` or ``.nrrd`` for the organ's
    own name or one of its aliases, in that order; None when there is none."""
    for stem in organ_file_stems(organ):
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
            if (folder / f"{stem}{suffix}").exists():
                return folder / f"{stem}{suffix}"
    return None


def touches_border(mask: np.ndarray) -> bool:
    """True when any foreground voxel lies on a face of the array."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


def check_organ_mask(mask: np.ndarray, path: str | os.PathLike | None, check_border: bool = True) -> None:
    """Raise EmptyMaskError for an empty mask and TruncatedOrganError for one cut by the image border."""
    if not mask.any():
        raise EmptyMaskError(path, "the organ mask is empty")
    if check_border and touches_border(mask):
        raise TruncatedOrganError(path, "the organ touches the image border (cut off; its shape cannot be judged)")


def _describe_source(data: Mapping, key: Hashable) -> str:
    value = data[key]
    if isinstance(value, np.ndarray):
        return str(data.get("case_id", "<array>"))
    text = str(value)
    if "npz_array" in data:
        text += f":{data['npz_array']}[{data.get('npz_index')}]"
    if data.get("organ"):
        text += f" [{data['organ']}]"
    return text


class LoadOrganMaskd(MapTransform):
    """Load one organ's binary mask from a path (file, folder, npz) or array under each key.

    Writes, per key: the mask as (D, H, W) uint8; ``affine`` (4, 4) float64 into ``affine_key``; the source's
    description into ``source_key`` (for error logs) and how it was read into ``f"{key}_load"``.
    The organ name comes from ``organ`` or, per item, from ``data[organ_key]``; the label values making up the
    organ in a dataset label map from ``labels`` (a bundle's rule: only for a map holding nothing else) or, per
    item, ``data[labels_key]`` (the datalist's: whatever else the map holds); the side to keep of a map
    holding both sides' organ under one label from ``data[side_key]`` (see :func:`load_organ_mask`).
    """

    def __init__(
        self,
        keys: KeysCollection = "mask",
        organ: str | None = None,
        organ_key: str = "organ",
        map_version: str = "auto",
        affine_key: str = "affine",
        source_key: str = "source",
        labels: Sequence[int] | None = None,
        labels_key: str = "labels",
        side_key: str = "side",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.side_key = side_key
        self.labels = None if labels is None else tuple(int(v) for v in labels)
        self.labels_key = labels_key
        self.organ = organ
        self.organ_key = organ_key
        self.map_version = map_version
        self.affine_key = affine_key
        self.source_key = source_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            organ = self.organ if self.organ is not None else d.get(self.organ_key)
            description = _describe_source(d, key)
            mask, affine, info = load_organ_mask(
                d[key], organ=organ, map_version=d.get("map_version", self.map_version),
                affine=d.get(self.affine_key), npz_array=d.get("npz_array"), npz_index=d.get("npz_index"),
                labels=self.labels, map_labels=d.get(self.labels_key), side=d.get(self.side_key),
            )
            d[key] = mask.astype(np.uint8)
            d[self.affine_key] = affine
            d[self.source_key] = description
            d[f"{key}_load"] = info
        return d


def load_item_mask(item: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """``(mask (D, H, W) bool, affine (4, 4))`` of one datalist item (``mask`` plus any of ``organ``, ``affine``,
    ``labels``, ``side``, ``npz_array``/``npz_index``, ``map_version``): the one way items are read."""
    loaded = LoadOrganMaskd("mask")(dict(item))
    return loaded["mask"] > 0, loaded["affine"]


class CheckOrganMaskd(MapTransform):
    """Reject organs that cannot be judged: empty masks, and (``check_border``) organs cut by the image border.

    The error names ``data[source_key]`` (set by :class:`LoadOrganMaskd`).
    """

    def __init__(
        self,
        keys: KeysCollection = "mask",
        check_border: bool = True,
        source_key: str = "source",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.check_border = check_border
        self.source_key = source_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            check_organ_mask(np.asarray(d[key]), d.get(self.source_key), self.check_border)
        return d


__all__: Sequence[str] = ["LoadOrganMaskd", "CheckOrganMaskd", "load_organ_mask", "check_organ_mask",
                          "touches_border", "read_npz_mask", "organ_file_in",
                          "is_label_set_map", "organ_on_side", "load_item_mask"]
