"""TotalSegmentator class maps (label id <-> organ name) and detection of the map version of a label map.

Two maps ship with the package (``data/totalsegmentator_class_maps.json``): ``"v1"`` (TotalSegmentator 1.x,
104 classes) and ``"v2"`` (TotalSegmentator 2.x task ``total``, 117 classes). They assign different ids to
the same organ (label 7 is ``aorta`` in v1 and ``pancreas`` in v2), so picking
the wrong map silently selects the wrong organ. The version is read, in order of trust, from:

1. the file's own label table (TotalSegmentator 2 writes a Caret XML label table into the NIfTI header);
2. the labels present: any label above 104 exists only in v2;
3. laterality: for every left/right organ pair that a map says is present, the ``*_left`` organ must lie at
   smaller RAS+ x than the ``*_right`` one (RAS+ x grows towards the patient's right). The map that is right
   about more pairs wins.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources

import numpy as np

from shapeqc.transforms.errors import UnknownOrganError

MAP_VERSIONS = ("v1", "v2")


@cache
def class_map(version: str) -> dict[int, str]:
    """Label id -> organ name for TotalSegmentator ``version`` ("v1" or "v2")."""
    if version not in MAP_VERSIONS:
        raise ValueError(f"unknown TotalSegmentator class map {version!r}, expected one of {MAP_VERSIONS}")
    text = resources.files("shapeqc.transforms").joinpath("data/totalsegmentator_class_maps.json").read_text()
    return {int(label): name for label, name in json.loads(text)[version].items()}


def label_of(organ: str, labels: dict[int, str], path: str | os.PathLike | None = None) -> int:
    """The label id of ``organ`` in ``labels`` (id -> name); UnknownOrganError names close matches."""
    by_name = {name: label for label, name in labels.items()}
    if organ in by_name:
        return by_name[organ]
    hints = sorted(name for name in by_name if organ.split("_")[0] in name)[:6]
    hint = f"; similar names: {hints}" if hints else ""
    raise UnknownOrganError(path, f"organ {organ!r} is not in the class map{hint}")


def _centroid_x(label_map: np.ndarray, affine: np.ndarray, label: int) -> float:
    voxels = np.argwhere(label_map == label).mean(axis=0)
    return float(affine[0, :3] @ voxels + affine[0, 3])


def laterality_agreement(label_map: np.ndarray, affine: np.ndarray, labels: dict[int, str]) -> tuple[int, int]:
    """(pairs where *_left lies at smaller RAS+ x than *_right, pairs checked) for the map ``labels``."""
    present = set(np.unique(label_map).astype(int).tolist()) - {0}
    by_name = {name: label for label, name in labels.items()}
    agree = checked = 0
    for name, left in by_name.items():
        if not name.endswith("_left"):
            continue
        right = by_name.get(name[: -len("_left")] + "_right")
        if right is None or left not in present or right not in present:
            continue
        checked += 1
        agree += _centroid_x(label_map, affine, left) < _centroid_x(label_map, affine, right)
    return agree, checked


def detect_map_version(
    label_map: np.ndarray, affine: np.ndarray, header_labels: dict[int, str] | None = None
) -> str:
    """Guess the TotalSegmentator map version ("v1" or "v2") of a multi-label map (see the module doc)."""
    if header_labels:
        overlap = {version: sum(class_map(version).get(k) == v for k, v in header_labels.items())
                   for version in MAP_VERSIONS}
        return max(MAP_VERSIONS, key=lambda version: overlap[version])
    max_label = int(label_map.max())
    if max_label > max(class_map("v1")):
        return "v2"
    scores = {}
    for version in MAP_VERSIONS:
        agree, checked = laterality_agreement(label_map, affine, class_map(version))
        scores[version] = agree - (checked - agree)
    # ties go to v2, the current TotalSegmentator release
    return "v1" if scores["v1"] > scores["v2"] else "v2"


def organ_side(organ: str) -> str | None:
    """"left", "right" or None from an organ name (TotalSegmentator ``_left``/``_right``, RT ``-Lt``/``_Rt``)."""
    lowered = organ.lower()
    if lowered.endswith(("_left", "-lt", "_lt")):
        return "left"
    if lowered.endswith(("_right", "-rt", "_rt")):
        return "right"
    return None


# File names other segmentation sources give an organ, by shapeqc (TotalSegmentator-style) organ name. The
# DeepMind/UCLH head-and-neck set names its NRRD files like ``Parotid-Lt`` (some scans ``Parotid_Lt``).
ORGAN_FILE_ALIASES: dict[str, tuple[str, ...]] = {
    "hippocampus": (),
    "mandible": ("Mandible",),
    "parotid_gland_left": ("Parotid-Lt", "Parotid_Lt"),
    "parotid_gland_right": ("Parotid-Rt", "Parotid_Rt"),
    "submandibular_gland_left": ("Submandibular-Lt", "Submandibular_Lt"),
    "submandibular_gland_right": ("Submandibular-Rt", "Submandibular_Rt"),
    "brainstem": ("Brainstem",),
    "brain": ("Brain",),
    "orbit_left": ("Orbit-Lt", "Orbit_Lt"),
    "orbit_right": ("Orbit-Rt", "Orbit_Rt"),
    "spinal_cord": ("Spinal-Cord", "Spinal_Cord"),
    "spinal_canal": ("Spinal-Canal", "Spinal_Canal"),
}


def organ_file_stems(organ: str) -> tuple[str, ...]:
    """File names (without suffix) under which a per-organ folder may hold ``organ``: its own name first."""
    return (organ, *ORGAN_FILE_ALIASES.get(organ, ()))


def organ_of_file_stem(stem: str) -> str | None:
    """The shapeqc organ name a per-organ file name stands for (TotalSegmentator name or alias), else None."""
    if stem in class_map("v1").values() or stem in class_map("v2").values() or stem in ORGAN_FILE_ALIASES:
        return stem
    return next((organ for organ, aliases in ORGAN_FILE_ALIASES.items() if stem in aliases), None)
