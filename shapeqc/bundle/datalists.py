"""Datalists for bundle training: readers plus the organ checks, with every rejected case counted and logged."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shapeqc.bundle.datasets import (
    adrenalmnist3d_items,
    headneck_tree_items,
    label_map_folder_items,
    paired_label_map_items,
    split_items,
)
from shapeqc.transforms.errors import SegmentationInputError
from shapeqc.transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd

logger = logging.getLogger("shapeqc.bundle.datalists")

ADRENALMNIST_FILE = "adrenalmnist3d/adrenalmnist3d_64_trainval.npz"
HEADNECK_TREE = "tcia_headneck_oar/test"
HIPPOCAMPUS_LABELS = "msd_hippocampus/labels"
KITS_CASES = "kits23_kidney/cases"
# KiTS labels 1 kidney, 2 tumour, 3 cyst: the organ's outline, as a segmenter such as TotalSegmentator labels a kidney
KITS_KIDNEY_LABELS = [1, 2, 3]
LITS_MASKS = "lits_liver/masks"
# LiTS volumes 28-47 as stored carry a default identity header (1 mm, origin 0; their livers lie on the patient's
# left): millimetres and laterality are meaningless, so they are never used (lits_liver/README.md, Known problems)
LITS_IDENTITY_HEADER_CASES = tuple(f"liver_{number:03d}" for number in range(28, 48))
MSD_SPLEEN_LABELS = "msd_spleen/labels"


def judged_items(items: list[dict], check_border: bool = True,
                 limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Split items into (usable, rejected records): rejected are those a loader or organ check refuses
    (empty, truncated by the border, unreadable, ...). Nothing is dropped silently: rejects are logged.

    ``limit``: the first ``limit`` usable items only (smoke runs, a calibration on the first N held-out organs),
    the same as judging every item and keeping the first ``limit`` usable ones; items are judged in order, a
    batch at a time, until that many are found (judging loads every mask: all 200 LiTS livers take minutes)."""
    load, check = LoadOrganMaskd("mask"), CheckOrganMaskd("mask", check_border=check_border)

    def refusal(item: dict) -> dict | None:
        try:
            check(load(dict(item)))
            return None
        except SegmentationInputError as error:
            return {"case_id": item.get("case_id"), **error.as_record()}

    # ITK changes the process's working directory while it loads its modules lazily (the first NRRD read): a
    # thread reading by a relative path at that moment looks in the wrong folder (15 of 16 head-and-neck masks
    # were "missing"), so the threads get absolute paths, made before any of them starts
    prepared = [{key: str(Path(value).absolute()) if isinstance(value, str) and value and not Path(value).is_absolute()
                 and Path(value).exists() else value for key, value in item.items()} for item in items]
    workers = min(8, os.cpu_count() or 1)
    usable: list[dict] = []
    rejected: list[dict] = []
    judged = 0
    # decompression and labelling release the GIL: threads read a few hundred label maps several times faster
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while judged < len(items) and (limit is None or len(usable) < limit):
            batch = len(items) if limit is None else max(limit - len(usable), workers)
            refusals = list(pool.map(refusal, prepared[judged:judged + batch]))
            for item, refused in zip(items[judged:judged + batch], refusals, strict=True):
                if refused is None:
                    usable.append(item)
                else:
                    rejected.append(refused)
            judged += len(refusals)
    if limit is not None:
        usable = usable[:limit]
    counts: dict[str, int] = {}
    for record in rejected:
        counts[record["error"]] = counts.get(record["error"], 0) + 1
    logger.info("%d of %d cases usable (%d judged); not judged: %s", len(usable), len(items), judged,
                counts or "none")
    return usable, rejected


def adrenalmnist3d_split(dataset_dir: str, split: str, limit: int | None = None) -> list[dict]:
    """Usable items of the AdrenalMNIST3D ``split`` ("train" or "val") under ``dataset_dir``.

    ``dataset_dir`` is the folder holding ``adrenalmnist3d/adrenalmnist3d_64_trainval.npz`` (the shared data
    folder) or the npz's own folder. ``limit`` keeps the first ``limit`` usable cases (smoke runs).
    """
    root = Path(dataset_dir)
    npz = root / ADRENALMNIST_FILE if (root / ADRENALMNIST_FILE).exists() else root / Path(ADRENALMNIST_FILE).name
    items = list(adrenalmnist3d_items(npz, arrays=(f"{split}_images",)))
    usable, _ = judged_items(items, limit=limit or None)
    return usable


def datalist_split(datalist_file: str, split: str, limit: int | None = None, check_border: bool = True) -> list[dict]:
    """Usable items of one split ("training", "validation", "test") of a MONAI datalist JSON written by
    ``shapeqc datalist``; relative paths are taken relative to the JSON's folder."""
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(datalist_file, data_list_key=split, base_dir=str(Path(datalist_file).parent))
    for item in items:
        mask = Path(str(item["mask"]))
        if not mask.is_absolute():
            item["mask"] = str(Path(datalist_file).parent / mask)
    usable, _ = judged_items(items, check_border=check_border, limit=limit or None)
    return usable


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
    usable, _ = judged_items(wanted, check_border=check_border, limit=limit or None)
    return usable


def label_map_split(dataset_dir: str, organ: str, labels: list[int], split: str, val_fraction: float = 0.15,
                    seed: int = 0, limit: int | None = None, folder: str = HIPPOCAMPUS_LABELS,
                    exclude: tuple[str, ...] = (), paired: bool = False) -> list[dict]:
    """Usable items ("train" or "val", seeded split by case) of a folder of label maps whose ``labels`` make up
    ``organ`` (default: the MSD hippocampus labels under the shared data folder). ``exclude``: case ids never
    used (logged). ``paired``: each map holds ``organ`` on both sides under ``labels`` (KiTS kidneys): two items
    per map, ``{organ}_left`` and ``{organ}_right`` (:func:`shapeqc.bundle.datasets.paired_label_map_items`)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = _dataset_folder(dataset_dir, folder)
    reader = paired_label_map_items if paired else label_map_folder_items
    items = [item for item in reader(root, organ, labels) if item["case_id"] not in exclude]
    if exclude:
        logger.info("%s: %d excluded case ids never used", folder, len(exclude))
    splits = split_items(items, seed=seed, val_fraction=val_fraction)
    usable, _ = judged_items(splits["training" if split == "train" else "validation"], limit=limit or None)
    return usable


def kits_kidney_split(dataset_dir: str, split: str, val_fraction: float = 0.15, seed: int = 0,
                      limit: int | None = None) -> list[dict]:
    """Usable kidney items (``kidney_left`` / ``kidney_right``; kidney + tumour + cyst) of the KiTS23 label maps,
    split by case (both kidneys of a case in one split). Maps without exactly two kidney-sized parts (solitary and
    fused kidneys) are rejected for both sides and counted in the log."""
    return label_map_split(dataset_dir, "kidney", KITS_KIDNEY_LABELS, split, val_fraction=val_fraction, seed=seed,
                           limit=limit, folder=KITS_CASES, paired=True)


def lits_liver_split(dataset_dir: str, split: str, val_fraction: float = 0.2, seed: int = 0,
                     limit: int | None = None) -> list[dict]:
    """Usable LiTS liver masks (liver including its tumours), split by case; the 20 identity-header cases are
    never used (:data:`LITS_IDENTITY_HEADER_CASES`)."""
    return label_map_split(dataset_dir, "liver", [1], split, val_fraction=val_fraction, seed=seed, limit=limit,
                           folder=LITS_MASKS, exclude=LITS_IDENTITY_HEADER_CASES)


def msd_spleen_split(dataset_dir: str, split: str, val_fraction: float = 0.25, seed: int = 0,
                     limit: int | None = None) -> list[dict]:
    """Usable MSD Task09 spleen masks, split by case (``spleen_26``, cut by its scan's border, is rejected)."""
    return label_map_split(dataset_dir, "spleen", [1], split, val_fraction=val_fraction, seed=seed, limit=limit,
                           folder=MSD_SPLEEN_LABELS)


def second_source_items(dataset_dir: str, sources: list[dict] | None, tag: str = "source") -> list[dict]:
    """The usable organs of every ``sources`` entry, ``{"name", "folder" (label maps, under ``dataset_dir``), "organ",
    "labels"}`` (other annotation teams' clean organs), each tagged ``{tag: name}``. A folder that is not there is an
    error that names it: a calibration or validation never silently falls back to one source."""
    items = []
    for source in sources or []:
        folder = Path(dataset_dir) / source["folder"]
        if not folder.is_dir():
            raise FileNotFoundError(f"source {source['name']!r}: folder {folder} not found")
        usable, _ = judged_items([{**item, tag: source["name"]} for item in
                                  label_map_folder_items(folder, source["organ"], list(source["labels"]))])
        logger.info("source %s: %d usable organs in %s", source["name"], len(usable), folder)
        items += usable
    return items


def calibration_items(dataset_dir: str, held_out: list[dict], held_out_name: str,
                      second_sources: list[dict] | None = None) -> list[dict]:
    """The clean organs a bundle is calibrated on, each tagged with its ``calibration_source``: the bundle's
    ``held_out`` split (named ``held_out_name``), then the usable organs of every ``second_sources`` entry
    (:func:`second_source_items`), so that thresholds hold across sources
    (:func:`shapeqc.scoring.thresholds.threshold_at`)."""
    return ([{**item, "calibration_source": held_out_name} for item in held_out]
            + second_source_items(dataset_dir, second_sources, tag="calibration_source"))


def validation_items(dataset_dir: str, held_out: list[dict], second_sources: list[dict] | None = None) -> list[dict]:
    """The organs a training run validates on and selects its weights by: the bundle's ``held_out`` split, then the
    usable organs of every ``second_sources`` entry (:func:`second_source_items`, tagged ``validation_source``).
    Why a second source: validation on the training source's held-out organs alone selects for that team's outline
    (kidney campaigns: KiTS validation flat while evalseg's expert kidneys lost 0.01-0.025, docs/training.md)."""
    return held_out + second_source_items(dataset_dir, second_sources, tag="validation_source")
