"""The QC benchmark's protocol: real clean masks, seeded corruptions and swaps of them, and every method's score.

Clean cases are real masks the bundle never trained on (its ``validate#datalist``); corrupted cases are every
family of :mod:`shapeqc.calibration.corruptions` at each severity, seeded per case, family and severity, plus two
swaps: ``swap`` (another val subject's organ in place) and ``swap_organ`` (another organ's real shape scaled to the
organ's volume). Every case is scored by shapeqc's four metrics (through the bundle's own pipeline) and by the
baselines of :mod:`shapeqc.evaluation.baselines` fitted on the training split. ``benchmarks/qc_quality.py`` is
the command; :mod:`shapeqc.evaluation.statistics` turns the scores into tables.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shapeqc.calibration import corruptions as qc
from shapeqc.scoring.metrics import dice
from shapeqc.transforms.errors import SegmentationInputError

SHAPEQC = {"shapeqc_dice": "dice", "shapeqc_asd": "asd_mm", "shapeqc_hd95": "hd95_mm", "shapeqc_max_sd": "max_sd_mm"}
SCORED = (*SHAPEQC, "A_volume_z", "B_descriptors", "C_linear_ssm", "D_nearest_dice", "E_rules")
SWAPS = ("swap", "swap_organ")  # families made from other masks, not by a generator of the corruption registry


def crop_with_margin(mask: np.ndarray, affine: np.ndarray, margin: int = 12,
                     largest_side: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The organ's box grown by ``margin`` voxels (zero-padded past the array), with its affine, for arrays with a
    side above ``largest_side``: corruptions of a CT organ then work on a small array instead of the whole
    512 x 512 x N scan; small crops (AdrenalMNIST3D, MSD) stay as they are."""
    if max(mask.shape) <= largest_side:
        return mask, affine
    found = np.argwhere(mask)
    low, high = found.min(0) - margin, found.max(0) + margin + 1
    pad = [(max(0, -lo), max(0, hi - n)) for lo, hi, n in zip(low, high, mask.shape, strict=True)]
    padded = np.pad(mask, pad)
    start = low + np.array([p[0] for p in pad])
    crop = padded[tuple(slice(a, a + (hi - lo)) for a, lo, hi in zip(start, low, high, strict=True))]
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    return np.ascontiguousarray(crop), shifted


def load_masks(items: list[dict], limit: int | None,
               spacing_mm: tuple[float, float, float] | None = None) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(case id, mask (D, H, W) bool cropped around the organ, affine (4, 4) RAS, organ) per datalist item; with
    ``spacing_mm``, re-sliced as acquired at that voxel size (tilt seeded by the case id, 12 voxels of room)."""
    from shapeqc.calibration.profiles import acquisition
    from shapeqc.transforms.organ_loading import LoadOrganMaskd

    load = LoadOrganMaskd("mask")
    masks = []
    for item in items[:limit] if limit else items:
        loaded = load(dict(item))
        mask, affine = crop_with_margin(loaded["mask"] > 0, loaded["affine"])
        case = _case_name(item)
        if spacing_mm is not None:
            resliced, affine = acquisition(mask, affine, spacing_mm, str(item["case_id"]), pad_voxels=12)
            mask = resliced > 0
        masks.append((case, mask, affine, str(item.get("organ") or "")))
    return masks


def _case_name(item: dict) -> str:
    """The case name :func:`load_masks` gives an item."""
    return item["case_id"] if not item.get("organ") or "/" in str(item["case_id"]) else (
        f"{item['case_id']}/{item['organ']}")


def other_rater_true_dice(bundle_dir: Path, data: str) -> dict[str, float]:
    """{plausible case: Dice of that mask to the clean (validation) mask of the same scan and organ} for a bundle
    whose ``plausible#datalist`` is another rater's masks of its validation scans (head and neck): the true Dice
    of a real, plausible segmentation, a test set for the predicted Dice that no corruption generator made. Only
    pairs on one voxel grid (same shape and affine) count; {} for a bundle without such a set."""
    from shapeqc.bundle.loading import bundle_datalist
    from shapeqc.transforms.organ_loading import load_item_mask

    reference = {(item.get("scan"), item.get("organ")): item
                 for item in bundle_datalist(bundle_dir, data, "validate#datalist") if item.get("scan")}
    result = {}
    for item in bundle_datalist(bundle_dir, data, "plausible#datalist"):
        clean_item = reference.get((item.get("scan"), item.get("organ")))
        if clean_item is None:
            continue
        (mask, affine), (clean, clean_affine) = load_item_mask(item), load_item_mask(clean_item)
        if mask.shape == clean.shape and np.allclose(affine, clean_affine, atol=1e-3):
            result[_case_name(item)] = dice(mask, clean)
    return result


def canonical(bundle, mask: np.ndarray, affine: np.ndarray, organ: str) -> np.ndarray:
    """``mask`` on the bundle's canonical grid, (R, R, R) bool; the input errors of its transforms
    (SegmentationInputError: an empty mask) are raised as themselves, not wrapped by MONAI's Compose."""
    try:
        return np.asarray(bundle.to_grid({"mask": mask.astype(np.uint8), "affine": affine,
                                          "organ": organ})["mask"])[0] > 0.5
    except RuntimeError as error:
        if isinstance(error.__cause__, SegmentationInputError):
            raise error.__cause__ from None
        raise


def corrupted_cases(clean, families: list[str], swaps: dict[str, list[np.ndarray]]) -> list[dict]:
    """Every family's seeded corruptions of every clean case; ``swaps[family][i]``: that swap family's mask for case
    i, in its grid (:func:`swaps_in_place`, :func:`organ_swaps_in_place`, :func:`on_acquisition_grids`)."""
    from shapeqc.transforms.corruption import stable_seed

    cases = []
    for index, (case_id, mask, affine, organ) in enumerate(clean):
        for family in families:
            if family in SWAPS:
                if family not in swaps:
                    raise ValueError(f"family {family!r} needs its masks put in place first ({SWAPS}: "
                                     "swaps_in_place, organ_swaps_in_place)")
                variants = [(family, {}, swaps[family][index])]
            else:
                generate, severities = qc.FAMILIES[family]
                variants = []
                for level, kwargs in enumerate(severities):
                    seed = stable_seed(f"{case_id}/{family}/{level}", 2024)
                    try:
                        variants.append((f"{family}", kwargs, generate(mask, seed, **kwargs)))
                    except ValueError:
                        continue  # e.g. no room for an island in this crop
            for name, kwargs, corrupted in variants:
                cases.append({"case": case_id, "family": name, "params": kwargs, "mask": corrupted,
                              "affine": affine, "clean": mask, "organ": organ,
                              "volume_change": qc.volume_change(mask, corrupted),
                              "true_dice": dice(corrupted, mask)})
    return cases


def swap_donors(clean) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask, affine) of each clean case's swap donor: the next val subject with the same organ (training shapes
    would hand baselines C and D a perfect match)."""
    donors = []
    for index, (_, _, _, organ) in enumerate(clean):
        same = [c for c in clean[index + 1:] + clean[:index] if c[3] == organ] or [clean[index]]
        donors.append((same[0][1], same[0][2]))
    return donors


def swaps_in_place(clean) -> list[np.ndarray]:
    """Each clean case's donor gland (:func:`swap_donors`) on the case's own grid, centroids matched."""
    swaps = []
    for (_, mask, affine, _), (donor, donor_affine) in zip(clean, swap_donors(clean), strict=True):
        same_grid = donor.shape == mask.shape and np.allclose(donor_affine, affine)
        swaps.append(qc.swapped(mask, 0, donor) if same_grid else qc.swapped(mask, 0, donor, affine, donor_affine))
    return swaps


def organ_swaps_in_place(clean, donors) -> list[np.ndarray]:
    """Each clean case's organ replaced by another organ's real shape: ``donors[i % len(donors)]`` (as
    :func:`load_masks` returns them), scaled about its centroid to the case's volume in mm^3 and centred on it, so
    that only the shape differs."""
    return [qc.swapped(mask, 0, donors[index % len(donors)][1], affine, donors[index % len(donors)][2],
                       match_volume=True) for index, (_, mask, affine, _) in enumerate(clean)]


def organ_swap_source(bundle_dir: Path, bundles_root: Path | None = None) -> Path:
    """The bundle whose val masks are the other organ of ``swap_organ``: the hippocampus bundle (real 1 mm masks
    of about an adrenal gland's volume), the adrenal bundle for the hippocampus bundle itself; looked up in
    ``bundles_root`` (default: the folder holding ``bundle_dir``)."""
    other = "adrenal_gland" if Path(bundle_dir).name == "hippocampus" else "hippocampus"
    return Path(bundles_root or Path(bundle_dir).resolve().parent) / other


def on_acquisition_grids(placed, clean_as_given, clean_acquired) -> list[np.ndarray]:
    """A swap for the ``--spacing`` benchmark: ``placed[i]``, the donor put in place on case i's 1 mm grid
    (:func:`swaps_in_place`, :func:`organ_swaps_in_place` of ``clean_as_given``), re-sliced onto the case's
    acquisition grid the way its clean mask was (trilinear, 0.5). Swapping two re-sliced masks with each other
    would resample one acquisition onto another, a staircase no real segmentation has."""
    from shapeqc.transforms.canonical_grid import resample_trilinear

    swaps = []
    for swapped, (_, _, affine, _), (_, mask, acquired_affine, _) in zip(
            placed, clean_as_given, clean_acquired, strict=True):
        to_as_given = np.linalg.inv(affine) @ acquired_affine
        swaps.append(resample_trilinear(swapped.astype(np.float32), to_as_given, mask.shape) >= 0.5)
    return swaps


def score_all(bundle, baselines: dict, mask: np.ndarray, affine: np.ndarray, organ: str) -> dict:
    from shapeqc.evaluation.baselines import shape_descriptors, volume_ml
    from shapeqc.judging.analysis import score_organ
    from shapeqc.scoring.metrics import occupied_box
    from shapeqc.scoring.quality import quality_features
    from shapeqc.transforms.organ_loading import check_organ_mask

    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    scores: dict = {}
    try:
        check_organ_mask(mask, "benchmark case", check_border=False)  # empty (a corruption ate it): not judged
        reconstruction, shape_scores = score_organ(bundle, mask, affine, organ, {})
        scores.update({method: shape_scores[metric] for method, metric in SHAPEQC.items()})
        scores["shapeqc_status"] = "judged"
        box = occupied_box(mask, reconstruction)
        # what the predicted Dice is made of (shapeqc.scoring.quality), kept so estimators can be judged on stored runs
        scores["quality_features"] = quality_features(mask[box], reconstruction[box], shape_scores)
    except SegmentationInputError as error:
        # an input shapeqc refuses to judge (truncated, empty, ...): what analysis records as not_judged, counted as
        # flagged; any other exception is a fault of the method, not a detection, and ends the run
        scores.update({method: (-np.inf if metric == "dice" else np.inf) for method, metric in SHAPEQC.items()})
        scores["shapeqc_status"] = f"not judged: {type(error).__name__}"
        scores["quality_features"] = None
    volume = volume_ml(mask, voxel_ml)
    scores["A_volume_z"] = baselines["A"].score(volume)
    scores["B_descriptors"] = baselines["B"].score(shape_descriptors(mask))
    try:
        grid = canonical(bundle, mask, affine, organ)
        scores["C_linear_ssm"] = baselines["C"].score(grid)
        scores["D_nearest_dice"] = baselines["D"].score(grid)
    except SegmentationInputError:  # the canonical grid refuses the input: flagged, as for shapeqc above
        scores["C_linear_ssm"] = scores["D_nearest_dice"] = np.inf
    scores["E_rules"] = baselines["E"].score(mask, voxel_ml)
    return scores


def fit_baselines(bundle, train: list[tuple]) -> dict:
    """The five baselines A-E (:mod:`shapeqc.evaluation.baselines`) fitted on training masks ``train``: (case,
    mask (D, H, W) bool, affine (4, 4), organ) tuples, as :func:`load_masks` gives them."""
    from shapeqc.evaluation.baselines import (
        DescriptorMahalanobis,
        LinearShapeModel,
        NearestNeighbourDice,
        ScreeningRules,
        VolumeZScore,
        shape_descriptors,
        volume_ml,
    )

    volumes = [volume_ml(m, float(abs(np.linalg.det(a[:3, :3]))) / 1000.0) for _, m, a, _ in train]
    grids = np.stack([canonical(bundle, m, a, o) for _, m, a, o in train])
    return {"A": VolumeZScore().fit(volumes),
            "B": DescriptorMahalanobis().fit(np.stack([shape_descriptors(m) for _, m, _, _ in train])),
            "C": LinearShapeModel().fit(grids), "D": NearestNeighbourDice().fit(grids),
            "E": ScreeningRules().fit(volumes)}


def score_run(bundle_dir: Path, data: str, cases: int | None = 30, train_limit: int | None = 400,
              families: str = "all", spacing: tuple[float, float, float] | None = None,
              swap_organ_from: Path | None = None, skip_cases: int = 0) -> dict:
    """Builds the cases and scores every one of them with every method of :data:`SCORED` (the slow part).

    ``families``: "all" (every registry family and both swaps) or comma-separated names; ``spacing``: re-slice
    every mask as a CT acquisition at this voxel size (mm) first; ``swap_organ_from``: the bundle whose val
    masks are the other organ (default :func:`organ_swap_source`); ``skip_cases``: leave out the first val items
    (those that selected the weights: a train config's ``val_limit``), so the clean cases are organs no training
    decision has seen."""
    from shapeqc.bundle.loading import bundle_datalist, load_bundle

    bundle_dir = Path(bundle_dir)
    spacing = tuple(spacing) if spacing else None
    started = time.perf_counter()
    family_names = [*qc.FAMILIES, *SWAPS] if families == "all" else families.split(",")

    bundle = load_bundle(bundle_dir)
    trained_families = list(bundle.metadata.get("training_corruptions", qc.TRAINED_FAMILIES))
    train = load_masks(bundle_datalist(bundle_dir, data, "train#datalist"), train_limit, spacing)
    baselines = fit_baselines(bundle, train)
    val_items = bundle_datalist(bundle_dir, data, "validate#datalist")[skip_cases:]
    clean = load_masks(val_items, cases, spacing)
    # swaps are put in place on the masks as given (1 mm), then acquired like the clean mask
    as_given = load_masks(val_items, cases) if spacing else clean
    swap_organ_from = Path(swap_organ_from or organ_swap_source(bundle_dir))
    placed = {}
    if "swap" in family_names:
        placed["swap"] = swaps_in_place(as_given)
    if "swap_organ" in family_names:
        donors = load_masks(bundle_datalist(swap_organ_from, data, "validate#datalist"), None)
        placed["swap_organ"] = organ_swaps_in_place(as_given, donors)
    swaps = {family: on_acquisition_grids(masks, as_given, clean) if spacing else masks
             for family, masks in placed.items()}
    corrupted = corrupted_cases(clean, family_names, swaps)
    clean_scores = [score_all(bundle, baselines, m, a, o) for _, m, a, o in clean]
    for case in corrupted:
        case["scores"] = score_all(bundle, baselines, case["mask"], case["affine"], case["organ"])
    # a real "plausible but different" set where the bundle has one (another rater's masks of the val scans)
    plausible = load_masks(bundle_datalist(bundle_dir, data, "plausible#datalist")[skip_cases:], cases, spacing)
    plausible_scores = [score_all(bundle, baselines, m, a, o) for _, m, a, o in plausible]

    return {"bundle": str(bundle_dir.name), "spacing_mm": list(spacing) if spacing else None,
            "swap_organ_from": swap_organ_from.name if "swap_organ" in family_names else None,
            "trained_families": trained_families, "train_masks": len(train), "skipped_cases": skip_cases,
            "seconds": round(time.perf_counter() - started, 1),
            # every score of every case, so other scores can be studied without re-running the reconstructions
            "clean_scores": [{"case": case_id, "scores": s} for (case_id, *_), s in zip(clean, clean_scores,
                                                                                        strict=True)],
            "corrupted_scores": [{k: c[k] for k in ("case", "family", "params", "volume_change", "true_dice",
                                                    "scores")} for c in corrupted],
            "plausible_scores": [{"case": case_id, "scores": s} for (case_id, *_), s in zip(plausible,
                                                                                            plausible_scores,
                                                                                            strict=True)]}
