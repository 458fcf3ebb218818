"""Datalists for bundle training: readers plus the organ checks, with every rejected case counted and logged."""

from __future__ import annotations

import logging
from pathlib import Path

from shapeqc.datasets import adrenalmnist3d_items, headneck_tree_items, label_map_folder_items, split_items
from shapeqc.transforms.errors import SegmentationInputError
from shapeqc.transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd

logger = logging.getLogger("shapeqc.training_data")

ADRENALMNIST_FILE = "adrenalmnist3d/adrenalmnist3d_64_trainval.npz"
HEADNECK_TREE = "tcia_headneck_oar/test"
HIPPOCAMPUS_LABELS = "msd_hippocampus/labels"


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
    from shapeqc.transforms.volume_io import strip_volume_suffix

    return [{"case_id": strip_volume_suffix(Path(path).name), "mask": str(path), "organ": organ} for path in paths]


def _dataset_folder(dataset_dir: str, relative: str) -> Path:
    """``dataset_dir/relative`` (the shared data folder) or ``dataset_dir`` itself when it is that folder."""
    root = Path(dataset_dir)
    return root / relative if (root / relative).is_dir() else root


def headneck_split(dataset_dir: str, organs: list[str], split: str, train_rater: str = "oncologist",
                   other_rater: str = "radiographer", val_fraction: float = 0.3, seed: int = 0,
                   limit: int | None = None, check_border: bool = True) -> list[dict]:
    """Usable items of the two-rater head-and-neck tree, split by scan (seeded, so every bundle holds out the
    same scans for the same seed):

    - ``"train"``: ``train_rater``'s masks of the training scans;
    - ``"val"``: ``train_rater``'s masks of the held-out scans (clean validation, calibration);
    - ``"other_rater"``: ``other_rater``'s masks of the held-out scans, a real "plausible but different" set.

    ``dataset_dir`` holds ``tcia_headneck_oar/test`` (the shared data folder) or is that ``test`` folder.
    Empty masks and organs cut by the border are rejected and counted in the log (``judged_items``).
    """
    if split not in ("train", "val", "other_rater"):
        raise ValueError(f"split must be 'train', 'val' or 'other_rater', got {split!r}")
    items = list(headneck_tree_items(_dataset_folder(dataset_dir, HEADNECK_TREE), organs,
                                     raters=(train_rater, other_rater)))
    scans = split_items(items, seed=seed, val_fraction=val_fraction, group_key="scan")
    held_out = {item["scan"] for item in scans["validation"]}
    rater = other_rater if split == "other_rater" else train_rater
    wanted = [item for item in items if item["rater"] == rater and (item["scan"] in held_out) == (split != "train")]
    usable, _ = judged_items(wanted, check_border=check_border)
    return usable[:limit] if limit else usable


def label_map_split(dataset_dir: str, organ: str, labels: list[int], split: str, val_fraction: float = 0.15,
                    seed: int = 0, limit: int | None = None, folder: str = HIPPOCAMPUS_LABELS) -> list[dict]:
    """Usable items ("train" or "val", seeded split by case) of a folder of label maps whose ``labels`` make up
    ``organ`` (default: the MSD hippocampus labels under the shared data folder)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    items = list(label_map_folder_items(_dataset_folder(dataset_dir, folder), organ, labels))
    splits = split_items(items, seed=seed, val_fraction=val_fraction)
    usable, _ = judged_items(splits["training" if split == "train" else "validation"])
    return usable[:limit] if limit else usable
