"""Datalists for bundle training: readers plus the organ checks, with every rejected case counted and logged."""

from __future__ import annotations

import logging
from pathlib import Path

from shapeqc.datasets import adrenalmnist3d_items
from transforms.errors import SegmentationInputError
from transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd

logger = logging.getLogger("shapeqc.training_data")

ADRENALMNIST_FILE = "adrenalmnist3d/adrenalmnist3d_64_trainval.npz"


def judged_items(items: list[dict], check_border: bool = True) -> tuple[list[dict], list[dict]]:
    """Split items into (usable, rejected records): rejected are those a loader or organ check refuses
    (empty, truncated by the border, unreadable, ...). Nothing is dropped silently: rejects are logged."""
    load, check = LoadOrganMaskd("mask"), CheckOrganMaskd("mask", check_border=check_border)
    usable, rejected = [], []
    for item in items:
        try:
            check(load(dict(item)))
            usable.append(item)
        except SegmentationInputError as error:
            rejected.append({"case_id": item.get("case_id"), **error.as_record()})
    counts: dict[str, int] = {}
    for record in rejected:
        counts[record["error"]] = counts.get(record["error"], 0) + 1
    logger.info("%d of %d cases usable; not judged: %s", len(usable), len(items), counts or "none")
    return usable, rejected


def adrenalmnist3d_split(dataset_dir: str, split: str, limit: int | None = None) -> list[dict]:
    """Usable items of the AdrenalMNIST3D ``split`` ("train" or "val") under ``dataset_dir``.

    ``dataset_dir`` is the folder holding ``adrenalmnist3d/adrenalmnist3d_64_trainval.npz`` (the shared data
    folder) or the npz's own folder. ``limit`` keeps the first ``limit`` usable cases (smoke runs).
    """
    root = Path(dataset_dir)
    npz = root / ADRENALMNIST_FILE if (root / ADRENALMNIST_FILE).exists() else root / Path(ADRENALMNIST_FILE).name
    items = list(adrenalmnist3d_items(npz, arrays=(f"{split}_images",)))
    usable, _ = judged_items(items)
    return usable[:limit] if limit else usable


def datalist_split(datalist_file: str, split: str, limit: int | None = None, check_border: bool = True) -> list[dict]:
    """Usable items of one split ("training", "validation", "test") of a MONAI datalist JSON written by
    ``shapeqc datalist``; relative paths are taken relative to the JSON's folder."""
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(datalist_file, data_list_key=split, base_dir=str(Path(datalist_file).parent))
    for item in items:
        mask = Path(str(item["mask"]))
        if not mask.is_absolute():
            item["mask"] = str(Path(datalist_file).parent / mask)
    usable, _ = judged_items(items, check_border=check_border)
    return usable[:limit] if limit else usable


def file_items(paths: list[str], organ: str | None = None) -> list[dict]:
    """Datalist items for segmentation files or TotalSegmentator folders; case id = name without suffix."""
    from transforms.volume_io import strip_nifti_suffix

    return [{"case_id": strip_nifti_suffix(Path(path).name), "mask": str(path), "organ": organ} for path in paths]
