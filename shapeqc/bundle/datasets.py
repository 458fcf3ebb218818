"""Readers that list organ cases as MONAI-style items, and deterministic train/val/test datalists.

An item is a dict ``{"case_id": str, "mask": path | array, ...}``; :class:`shapeqc.transforms.LoadOrganMaskd` turns it
into ``{"mask": (D, H, W) uint8, "affine": (4, 4), ...}``. In-memory readers (``load=True``) return the
mask and affine directly. Case ids are stable: derived from file names or npz positions, never from order
of discovery.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shapeqc.transforms.organ_loading import read_npz_mask
from shapeqc.transforms.volume_io import is_volume_path, read_volume, strip_volume_suffix

ADRENALMNIST_ARRAYS = ("train_images", "val_images")
# The AdrenalMNIST3D arrays carry no affine; their axes run towards the patient's left, posterior and superior
# (L, P, S: the DICOM-like index order), 1 mm. Evidence (docs/anatomy_audit.md, tests/test_anatomy_frames.py):
# read so, the glands' third moments along A and S have the signs of real glands in true RAS
# (TotalSegmentator's), in 98.6% (A) of 1286 masks; read as R, A, S they were anterior-posterior mirror images.
ADRENALMNIST_AFFINE = ((-1.0, 0.0, 0.0, 0.0), (0.0, -1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))


SEGMENTATION_FOLDER = "segmentations"  # TotalSegmentator's and the head-and-neck set's per-organ folder name


def per_organ_folder(case_dir: Path) -> Path:
    """Where a case folder keeps its per-organ files: its ``segmentations/`` subfolder if it has one, else itself."""
    return case_dir / SEGMENTATION_FOLDER if (case_dir / SEGMENTATION_FOLDER).is_dir() else case_dir


def nifti_folder_items(folder: str | os.PathLike, load: bool = False) -> Iterator[dict]:
    """One item per volume file (``*.nii``, ``*.nii.gz``, ``*.nrrd``, ``*.nhdr``) in ``folder`` (sorted), case id =
    file name without suffix."""
    folder = Path(folder)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_volume_path(p)):
        item = {"case_id": strip_volume_suffix(path.name), "mask": str(path)}
        if load:
            mask, affine = read_volume(path)
            item.update(mask=mask, affine=affine, source=str(path))
        yield item


def totalsegmentator_tree_items(root: str | os.PathLike, organs: list[str], load: bool = False) -> Iterator[dict]:
    """One item per (case, organ) in a tree ``root/<case>/<organ>.nii.gz`` (TotalSegmentator folder output).

    A case folder may also hold the per-organ files under a ``segmentations/`` subfolder (TotalSegmentator's
    default output name). Case id = ``<case>``; organs missing from a case are still listed, so the loader
    reports them instead of the list silently shrinking.
    """
    root = Path(root)
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        organ_dir = per_organ_folder(case_dir)
        for organ in organs:
            item = {"case_id": case_dir.name, "organ": organ, "mask": str(organ_dir)}
            if load:
                mask, affine = read_volume(organ_dir / f"{organ}.nii.gz")
                item.update(mask=mask, affine=affine, source=str(organ_dir / f"{organ}.nii.gz"))
            yield item


def headneck_tree_items(root: str | os.PathLike, organs: list[str],
                        raters: tuple[str, ...] = ("oncologist", "radiographer")) -> Iterator[dict]:
    """One item per (rater, scan, organ) of a multi-rater tree ``root/<rater>/<scan>/segmentations/<Organ>.nrrd``
    (the DeepMind/UCLH head-and-neck set; organs by shapeqc name, files found under their aliases).

    Case id = ``<scan>_<rater>``; ``scan`` and ``rater`` are kept for splitting by scan. Organs missing from a
    scan are still listed (the loader reports them), so nothing drops out of the list silently.
    """
    root = Path(root)
    for rater in raters:
        for scan_dir in sorted(p for p in (root / rater).iterdir() if p.is_dir()):
            organ_dir = per_organ_folder(scan_dir)
            for organ in organs:
                yield {"case_id": f"{scan_dir.name}_{rater}", "scan": scan_dir.name, "rater": rater, "organ": organ,
                       "mask": str(organ_dir)}


def label_map_folder_items(folder: str | os.PathLike, organ: str, labels: list[int]) -> Iterator[dict]:
    """One item per label-map file (NIfTI or NRRD) in ``folder`` whose ``labels`` together make up ``organ``
    (MSD hippocampus: labels 1 and 2 are its anterior and posterior parts). Case id = file name without suffix."""
    for item in nifti_folder_items(folder):
        yield {**item, "organ": organ, "labels": list(labels)}


def paired_label_map_items(folder: str | os.PathLike, organ: str, labels: list[int]) -> Iterator[dict]:
    """Two items per label-map file in ``folder`` holding a paired organ on both sides under the same ``labels``
    (KiTS: kidney 1, tumour 2, cyst 3, both kidneys alike): ``{organ}_left`` and ``{organ}_right``, each with its
    ``side`` for the loader (:func:`shapeqc.transforms.organ_loading.organ_on_side`). Case id = file name without
    suffix, shared by the two sides (so a split by case keeps them together)."""
    for item in nifti_folder_items(folder):
        for side in ("left", "right"):
            yield {**item, "organ": f"{organ}_{side}", "labels": list(labels), "side": side}


def adrenalmnist3d_items(npz_path: str | os.PathLike, arrays: tuple[str, ...] = ADRENALMNIST_ARRAYS,
                         load: bool = False) -> Iterator[dict]:
    """One item per mask of the AdrenalMNIST3D npz (64^3, 1 mm isotropic), with the arrays' true frame as its
    ``affine`` (:data:`ADRENALMNIST_AFFINE`: axes L, P, S).

    Case id = ``adrenalmnist3d_<split>_<index:04d>`` (``split`` = train or val), stable across runs.
    """
    npz_path = Path(npz_path)
    with np.load(npz_path) as archive:
        lengths = {name: archive[name].shape[0] for name in arrays}
    for name in arrays:
        split = name.split("_")[0]
        for index in range(lengths[name]):
            item = {"case_id": f"adrenalmnist3d_{split}_{index:04d}", "mask": str(npz_path), "npz_array": name,
                    "npz_index": index, "affine": [list(row) for row in ADRENALMNIST_AFFINE]}
            if load:
                item.update(mask=read_npz_mask(npz_path, name, index), affine=np.array(ADRENALMNIST_AFFINE),
                            source=str(npz_path))
            yield item


def split_items(items: list[dict], seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.0,
                group_key: str = "case_id") -> dict[str, list[dict]]:
    """Deterministic split into ``{"training", "validation", "test"}`` lists.

    Items sharing ``item[group_key]`` stay in one split (two organs of one scan never straddle splits). The
    split depends only on the seed and the sorted set of group names, not on the input order.
    """
    if not 0 <= val_fraction + test_fraction < 1:
        raise ValueError("val_fraction + test_fraction must lie in [0, 1)")
    groups = sorted({str(item[group_key]) for item in items})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = round(val_fraction * len(groups))
    n_test = round(test_fraction * len(groups))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[groups[index]] = "validation" if rank < n_val else "test" if rank < n_val + n_test else "training"
    out: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for item in sorted(items, key=lambda it: (str(it[group_key]), str(it.get("organ", "")))):
        out[split_of[str(item[group_key])]].append(item)
    return out


def write_datalist(splits: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """Write splits as a MONAI datalist JSON (``monai.data.load_decathlon_datalist`` reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    serialisable = {name: [{k: v for k, v in item.items() if not isinstance(v, np.ndarray)} for item in entries]
                    for name, entries in splits.items() if entries or name != "test"}
    path.write_text(json.dumps(serialisable, indent=1))
    return path
