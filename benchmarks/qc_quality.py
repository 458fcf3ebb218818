"""How good is the detection? shapeqc against simpler QC scores on real masks and seeded corruptions of them.

Clean cases: real masks the bundle never trained on (the AdrenalMNIST3D val split by default). Corrupted cases:
every family of ``shapeqc.qc_corruptions`` at each severity, plus two swaps: ``swap``, another val subject's organ in
place, and ``swap_organ``, another organ's real shape (the val masks of ``--swap-organ-from``, by default the
hippocampus bundle's) scaled to the organ's volume and put in its place; seeded per case, family and severity
(re-running gives the same cases). Scores, all on the same cases:
shapeqc's four metrics (input vs reconstruction) and baselines A-E (``shapeqc.qc_baselines``, fitted on the
training split). Per family and severity: AUROC against the clean cases and the detection rate at each
method's threshold set at 5% false positives on the clean cases (for shapeqc Dice also at the bundle's shipped
threshold). Quality estimation (the nnQC protocol): how well Dice(input, reconstruction) predicts the true
Dice(input, clean mask) over all corrupted cases.

    python benchmarks/qc_quality.py [--cases 30] [--families plane_cut,hole] [--out benchmarks/results]
                                    [--spacing 0.8 0.8 2.5] [--swap-organ-from bundles/hippocampus]

With ``--spacing``, every mask (clean, donor, baselines' training set) is first re-sliced as a CT acquisition at
that voxel size with a tilt seeded by its case id (``shapeqc.calibration.acquisition``, the calibration's CT
profile), and the corruptions act on that grid (a dilation by one voxel is then 0.8 mm in-plane, 2.5 mm across
slices, as on a real CT); shapeqc is judged at the bundle's threshold for that profile.

``--rescore RUN.json`` rebuilds the tables from a stored run's per-case scores in seconds; with
``--thresholds-from BUNDLE`` it also takes the shipped threshold from that bundle (a calibration that finished
after the run: the AUROCs do not depend on it, the detection at the shipped threshold and the clean FPR do).

Writes OUT/qc_quality.md (tables), OUT/qc_quality.json (summaries and every case's scores) and
OUT/qc_quality_roc.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCORED = ("shapeqc_dice", "shapeqc_asd", "shapeqc_hd95", "shapeqc_max_sd", "A_volume_z", "B_descriptors",
          "C_linear_ssm", "D_nearest_dice", "E_rules")
SHAPEQC = {"shapeqc_dice": "dice", "shapeqc_asd": "asd_mm", "shapeqc_hd95": "hd95_mm", "shapeqc_max_sd": "max_sd_mm"}
# scores made of two scored ones, each put on the scale of its own clean cases (median -> 0, 95th percentile -> 1)
# and the larger taken: flagged when either part is past its 5% cut. Fixed before looking at corrupted cases.
COMBINED = {"shapeqc_dice_or_B": ("shapeqc_dice", "B_descriptors")}
METHODS = (*SCORED, *COMBINED)
SWAPS = ("swap", "swap_organ")  # families made from other masks, not by a generator of shapeqc.qc_corruptions


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
    from shapeqc.calibration import acquisition
    from shapeqc.transforms.organ_loading import LoadOrganMaskd

    load = LoadOrganMaskd("mask")
    masks = []
    for item in items[:limit] if limit else items:
        loaded = load(dict(item))
        mask, affine = crop_with_margin(loaded["mask"] > 0, loaded["affine"])
        case = item["case_id"] if not item.get("organ") or "/" in str(item["case_id"]) else (
            f"{item['case_id']}/{item['organ']}")
        if spacing_mm is not None:
            resliced, affine = acquisition(mask, affine, spacing_mm, str(item["case_id"]), pad_voxels=12)
            mask = resliced > 0
        masks.append((case, mask, affine, str(item.get("organ") or "")))
    return masks


def canonical(bundle, mask: np.ndarray, affine: np.ndarray, organ: str) -> np.ndarray:
    return np.asarray(bundle.to_grid({"mask": mask.astype(np.uint8), "affine": affine,
                                      "organ": organ})["mask"])[0] > 0.5


def corrupted_cases(clean, families: list[str], swaps: dict[str, list[np.ndarray]]) -> list[dict]:
    """Every family's seeded corruptions of every clean case; ``swaps[family][i]``: that swap family's mask for case
    i, in its grid (:func:`swaps_in_place`, :func:`organ_swaps_in_place`, :func:`on_acquisition_grids`)."""
    from shapeqc import qc_corruptions as qc
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
                              "true_dice": float(2 * (corrupted & mask).sum() / max(corrupted.sum() + mask.sum(), 1))})
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
    from shapeqc import qc_corruptions as qc

    swaps = []
    for (_, mask, affine, _), (donor, donor_affine) in zip(clean, swap_donors(clean), strict=True):
        same_grid = donor.shape == mask.shape and np.allclose(donor_affine, affine)
        swaps.append(qc.swapped(mask, 0, donor) if same_grid else qc.swapped(mask, 0, donor, affine, donor_affine))
    return swaps


def organ_swaps_in_place(clean, donors) -> list[np.ndarray]:
    """Each clean case's organ replaced by another organ's real shape: ``donors[i % len(donors)]`` (as
    :func:`load_masks` returns them), scaled about its centroid to the case's volume in mm^3 and centred on it, so
    that only the shape differs."""
    from shapeqc import qc_corruptions as qc

    return [qc.swapped(mask, 0, donors[index % len(donors)][1], affine, donors[index % len(donors)][2],
                       match_volume=True) for index, (_, mask, affine, _) in enumerate(clean)]


def organ_swap_source(bundle_dir: Path) -> Path:
    """The bundle whose val masks are the other organ of ``swap_organ``: the hippocampus bundle (real 1 mm masks
    of about an adrenal gland's volume), the adrenal bundle for the hippocampus bundle itself."""
    other = "adrenal_gland" if Path(bundle_dir).name == "hippocampus" else "hippocampus"
    return ROOT / "bundles" / other


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
    from shapeqc.analysis import score_organ
    from shapeqc.qc_baselines import shape_descriptors, volume_ml

    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    scores: dict = {}
    try:
        _, shape_scores = score_organ(bundle, mask, affine, organ, {})
        scores.update({method: shape_scores[metric] for method, metric in SHAPEQC.items()})
        scores["shapeqc_status"] = "judged"
    except Exception as error:  # truncated or empty: shapeqc reports it (not_judged), counted as flagged
        scores.update({method: (-np.inf if metric == "dice" else np.inf) for method, metric in SHAPEQC.items()})
        scores["shapeqc_status"] = f"not judged: {type(error).__name__}"
    volume = volume_ml(mask, voxel_ml)
    scores["A_volume_z"] = baselines["A"].score(volume)
    scores["B_descriptors"] = baselines["B"].score(shape_descriptors(mask))
    try:
        grid = canonical(bundle, mask, affine, organ)
        scores["C_linear_ssm"] = baselines["C"].score(grid)
        scores["D_nearest_dice"] = baselines["D"].score(grid)
    except Exception:
        scores["C_linear_ssm"] = scores["D_nearest_dice"] = np.inf
    scores["E_rules"] = baselines["E"].score(mask, voxel_ml)
    return scores


def badness(method: str, values) -> np.ndarray:
    """A benchmark method's scores (N,) with larger = worse: shapeqc's Dice falls, every other score grows."""
    from shapeqc.thresholds import badness as oriented

    return oriented(method, values, "below" if method == "shapeqc_dice" else "above")


def clean_scale(method: str, reference: list[dict]) -> tuple[float, float]:
    """(median, 95th percentile - median) of ``method``'s badness over the finite clean scores ``reference``."""
    values = badness(method, [s[method] for s in reference])
    values = values[np.isfinite(values)]
    median = float(np.median(values))
    return median, max(float(np.quantile(values, 0.95)) - median, 1e-9)


def add_combined_scores(clean_scores: list[dict], corrupted_scores: list[dict]) -> None:
    """Adds each :data:`COMBINED` score to every score dict, in place. Cross-fitted: a clean case is put on the
    scale of the other clean cases (leave one out), so that its own score does not set the scale it is judged by;
    a corrupted case on the scale of all clean cases. Larger means more likely wrong."""
    def combined(parts, scores, scales):
        return max((badness(m, [scores[m]])[0] - scales[m][0]) / scales[m][1] for m in parts)

    for name, parts in COMBINED.items():
        # each reference set's scales computed once: the other clean cases per clean case, all of them otherwise
        values = []
        for i, scores in enumerate(clean_scores):
            others = clean_scores[:i] + clean_scores[i + 1:]
            values.append(combined(parts, scores, {m: clean_scale(m, others) for m in parts}))
        for scores, value in zip(clean_scores, values, strict=True):
            scores[name] = float(value)
        all_clean = {m: clean_scale(m, clean_scores) for m in parts}
        for scores in corrupted_scores:
            scores[name] = float(combined(parts, scores, all_clean))


def score_run(args) -> dict:
    """Builds the cases and scores every one of them with every method of :data:`SCORED` (the slow part)."""
    from shapeqc.bundles import bundle_datalist, load_bundle
    from shapeqc.qc_baselines import (
        DescriptorMahalanobis,
        LinearShapeModel,
        NearestNeighbourDice,
        ScreeningRules,
        VolumeZScore,
        shape_descriptors,
        volume_ml,
    )
    from shapeqc.qc_corruptions import FAMILIES, TRAINED_FAMILIES

    spacing = tuple(args.spacing) if args.spacing else None
    started = time.perf_counter()
    families = [*FAMILIES, *SWAPS] if args.families == "all" else args.families.split(",")

    bundle = load_bundle(args.bundle)
    trained_families = list(bundle.metadata.get("training_corruptions", TRAINED_FAMILIES))
    train = load_masks(bundle_datalist(args.bundle, args.data, "train#datalist"), args.train_limit, spacing)
    voxel_ml = [float(abs(np.linalg.det(a[:3, :3]))) / 1000.0 for _, _, a, _ in train]
    volumes = [volume_ml(m, v) for (_, m, _, _), v in zip(train, voxel_ml, strict=True)]
    grids = np.stack([canonical(bundle, m, a, o) for _, m, a, o in train])
    baselines = {"A": VolumeZScore().fit(volumes),
                 "B": DescriptorMahalanobis().fit(np.stack([shape_descriptors(m) for _, m, _, _ in train])),
                 "C": LinearShapeModel().fit(grids), "D": NearestNeighbourDice().fit(grids),
                 "E": ScreeningRules().fit(volumes)}
    val_items = bundle_datalist(args.bundle, args.data, "validate#datalist")
    clean = load_masks(val_items, args.cases, spacing)
    # swaps are put in place on the masks as given (1 mm), then acquired like the clean mask
    as_given = load_masks(val_items, args.cases) if spacing else clean
    swap_organ_from = Path(args.swap_organ_from or organ_swap_source(args.bundle))
    placed = {}
    if "swap" in families:
        placed["swap"] = swaps_in_place(as_given)
    if "swap_organ" in families:
        donors = load_masks(bundle_datalist(swap_organ_from, args.data, "validate#datalist"), None)
        placed["swap_organ"] = organ_swaps_in_place(as_given, donors)
    swaps = {family: on_acquisition_grids(masks, as_given, clean) if spacing else masks
             for family, masks in placed.items()}
    cases = corrupted_cases(clean, families, swaps)
    clean_scores = [score_all(bundle, baselines, m, a, o) for _, m, a, o in clean]
    for case in cases:
        case["scores"] = score_all(bundle, baselines, case["mask"], case["affine"], case["organ"])
    # a real "plausible but different" set where the bundle has one (another rater's masks of the val scans)
    plausible = load_masks(bundle_datalist(args.bundle, args.data, "plausible#datalist"), args.cases, spacing)
    plausible_scores = [score_all(bundle, baselines, m, a, o) for _, m, a, o in plausible]

    # read now rather than at start: a calibration finishing while the scores were computed is the shipped one
    # the profile the analysis itself would pick for these masks (1 mm: the "as given" profile); a bundle not
    # calibrated yet still gets its scores and AUROCs written (the shipped columns: --rescore --thresholds-from)
    shipped = shipped_fields(shipped_profile(args.bundle, spacing, required=False))
    command = (f"python benchmarks/qc_quality.py --bundle bundles/{args.bundle.name} --cases {args.cases} "
               f"--train-limit {args.train_limit} --out {display_path(args.out)} --families {args.families}"
               + (" --spacing " + " ".join(f"{v:g}" for v in spacing) if spacing else "")
               + (f" --swap-organ-from {display_path(args.swap_organ_from)}" if args.swap_organ_from else ""))
    return {"bundle": str(args.bundle.name), "command": command, "spacing_mm": list(spacing) if spacing else None,
            "swap_organ_from": swap_organ_from.name if "swap_organ" in families else None, **shipped,
            "trained_families": trained_families, "train_masks": len(train),
            "seconds": round(time.perf_counter() - started, 1),
            # every score of every case, so other scores can be studied without re-running the reconstructions
            "clean_scores": [{"case": case_id, "scores": s} for (case_id, *_), s in zip(clean, clean_scores,
                                                                                        strict=True)],
            "corrupted_scores": [{k: c[k] for k in ("case", "family", "params", "volume_change", "true_dice",
                                                    "scores")} for c in cases],
            "plausible_scores": [{"case": case_id, "scores": s} for (case_id, *_), s in zip(plausible,
                                                                                            plausible_scores,
                                                                                            strict=True)]}


def shipped_profile(bundle_dir: Path, spacing: list[float] | None, required: bool = True) -> dict | None:
    """The threshold profile of ``bundle_dir/configs/thresholds.json`` that ``shapeqc analyse`` would apply to masks
    of ``spacing`` (mm; None: 1 mm as given). Without one: SystemExit naming the folder, or None if not
    ``required``."""
    from shapeqc.thresholds import load_thresholds, select_profile

    profile = select_profile(load_thresholds(bundle_dir), tuple(spacing) if spacing else (1.0, 1.0, 1.0))
    if profile is None and required:
        raise SystemExit(f"{bundle_dir}: no configs/thresholds.json; calibrate the bundle first")
    return profile


def shipped_fields(profile: dict | None) -> dict:
    """The run's ``threshold_profile``, ``shipped_dice_threshold`` and the calibration's own figures for it (its
    clean cases and the leave-one-out false-positive rate of its Dice threshold) from a :func:`shipped_profile`
    (None without one, or for a calibration written before it recorded them: those figures are then left out)."""
    dice = profile["metrics"]["dice"] if profile else {}
    return {"threshold_profile": profile.get("spacing_mm") if profile else None,
            "shipped_dice_threshold": dice.get("threshold"),
            "calibration_clean_cases": profile.get("clean_cases") if profile else None,
            "calibration_leave_one_out_fpr": dice.get("leave_one_out_fpr")}


def wilson_interval(flagged: int, cases: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate ``flagged / cases``: how far a false-positive rate measured on this many
    clean cases can sit from the true one."""
    if cases == 0:
        return 0.0, 1.0
    rate = flagged / cases
    centre = (rate + z * z / (2 * cases)) / (1 + z * z / cases)
    half = z * np.sqrt(rate * (1 - rate) / cases + z * z / (4 * cases * cases)) / (1 + z * z / cases)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def stored_scores(path: Path) -> dict:
    """A stored qc_quality.json as :func:`score_run` returns it; files written before the command and the
    plausible set's per-case scores were stored get a command rebuilt from their fields and no plausible set."""
    stored = json.loads(Path(path).read_text())
    if "corrupted_scores" not in stored:
        raise SystemExit(f"{path}: written without every case's scores; run the benchmark again instead")
    stored.setdefault("spacing_mm", None)
    stored.setdefault("threshold_profile", None)
    stored.setdefault("swap_organ_from", None)
    stored.setdefault("calibration_clean_cases", None)
    stored.setdefault("calibration_leave_one_out_fpr", None)
    if "command" not in stored:
        from shapeqc.qc_corruptions import FAMILIES

        families = sorted({c["family"] for c in stored["corrupted_scores"]})
        every = families == sorted([*FAMILIES, "swap"])  # files without a command predate swap_organ
        spacing = stored.get("spacing_mm")
        stored["command"] = (f"python benchmarks/qc_quality.py --bundle bundles/{stored['bundle']} "
                             f"--cases {stored['clean_cases']} --train-limit {stored['train_masks']} "
                             f"--families {'all' if every else ','.join(families)}"
                             + (" --spacing " + " ".join(f"{v:g}" for v in spacing) if spacing else ""))
    stored.setdefault("plausible_scores", [])
    return stored


def tabulate(scored: dict) -> dict:
    """Per family and severity, overall and quality-estimation summaries of :func:`score_run`'s scores (also of a
    stored run's, ``--rescore``), with the :data:`COMBINED` scores added to every case."""
    from scipy import stats

    from shapeqc.calibration import auroc

    cases, shipped = scored["corrupted_scores"], scored["shipped_dice_threshold"]
    clean_scores = [c["scores"] for c in scored["clean_scores"]]
    plausible_scores = [c["scores"] for c in scored["plausible_scores"]]
    add_combined_scores(clean_scores, [c["scores"] for c in cases] + plausible_scores)
    cut = {m: np.quantile(badness(m, [s[m] for s in clean_scores]), 0.95) for m in METHODS}

    def below_shipped(scores: list[dict]) -> float | None:
        """Fraction of ``scores`` whose Dice falls below the shipped threshold (None: no threshold known)."""
        return None if shipped is None else float(np.mean([s["shapeqc_dice"] < shipped for s in scores]))

    clean_fpr_shipped = below_shipped(clean_scores)

    def summary(selected: list[dict]) -> dict:
        row = {"cases": len(selected), "volume_change": float(np.median([c["volume_change"] for c in selected]))}
        for method in METHODS:
            positives = badness(method, [c["scores"][method] for c in selected])
            negatives = badness(method, [s[method] for s in clean_scores])
            row[method] = {"auroc": auroc(positives, negatives), "detection": float(np.mean(positives > cut[method]))}
        row["shapeqc_dice"]["detection_shipped"] = below_shipped([c["scores"] for c in selected])
        return row

    families = list(dict.fromkeys(c["family"] for c in cases))
    table = {}
    for family in families:
        for params in sorted({json.dumps(c["params"], sort_keys=True) for c in cases if c["family"] == family}):
            selected = [c for c in cases if c["family"] == family and json.dumps(c["params"], sort_keys=True) == params]
            if selected:
                table[f"{family} {params}"] = {"family": family, **summary(selected)}
    moderate = [c for c in cases if c["volume_change"] >= 0.10]
    overall = {"all corrupted": summary(cases)} if cases else {}
    if moderate:
        overall[">= 10% volume changed"] = summary(moderate)
        unseen = [c for c in moderate if c["family"] not in scored["trained_families"]]
        if unseen:
            overall[">= 10% changed, families unseen in training"] = summary(unseen)
    # the headline: per family and severity with a median change of at least 10%, AUROC averaged with
    # equal weight per row (the pooled row above weights families by their case counts)
    moderate_rows = [name for name, entry in table.items() if entry["volume_change"] >= 0.10]
    def mean_over(rows: list[str]) -> dict:
        return {"rows": rows, **{m: float(np.mean([table[r][m]["auroc"] for r in rows])) for m in METHODS}}

    family_mean = mean_over(moderate_rows) if moderate_rows else {}
    # the same mean over the rows of runs before the organ swap was added, so that figures stay comparable
    earlier_rows = [r for r in moderate_rows if table[r]["family"] != "swap_organ"]
    family_mean_earlier = mean_over(earlier_rows) if earlier_rows and earlier_rows != moderate_rows else {}
    predicted = np.array([c["scores"]["shapeqc_dice"] for c in cases], float)
    true = np.array([c["true_dice"] for c in cases], float)
    judged = np.isfinite(predicted)
    estimation = {}
    if judged.sum() > 2:
        estimation = {
            "cases": int(judged.sum()), "true_dice_range": [float(true[judged].min()), float(true[judged].max())],
            "mae": float(np.mean(np.abs(predicted[judged] - true[judged]))),
            "pearson": float(stats.pearsonr(predicted[judged], true[judged])[0]),
            "spearman": float(stats.spearmanr(predicted[judged], true[judged])[0]),
        }
        below = true[judged] < 0.8
        if below.any() and (~below).any():
            estimation["auroc_true_dice_below_0.8"] = auroc(-predicted[judged][below], -predicted[judged][~below])
    other = {}
    if plausible_scores:
        other = {"cases": len(plausible_scores),
                 "fpr_at_shipped_threshold": below_shipped(plausible_scores)}
        for method in METHODS:
            values = badness(method, [s[method] for s in plausible_scores])
            other[method] = {"fpr": float(np.mean(values > cut[method])),
                             "auroc_vs_clean": auroc(values, badness(method, [s[method] for s in clean_scores]))}
    return {key: scored[key] for key in ("bundle", "command", "spacing_mm", "threshold_profile")} | {
        "clean_cases": len(clean_scores), "corrupted_cases": len(cases), "plausible_set": other,
        "trained_families": scored["trained_families"], "train_masks": scored["train_masks"],
        "shipped_dice_threshold": shipped, "clean_fpr_at_shipped_threshold": clean_fpr_shipped,
        "clean_fpr_interval_95": (None if clean_fpr_shipped is None else wilson_interval(
            round(clean_fpr_shipped * len(clean_scores)), len(clean_scores))),
        **{key: scored[key] for key in ("calibration_clean_cases", "calibration_leave_one_out_fpr",
                                        "swap_organ_from")},
        "families": table, "overall": overall, "family_mean_moderate": family_mean,
        "family_mean_moderate_without_organ_swap": family_mean_earlier,
        "quality_estimation": estimation, "seconds": scored["seconds"],
        **{key: scored[key] for key in ("clean_scores", "corrupted_scores", "plausible_scores", "rescored")
           if key in scored}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "adrenal_gland")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cases", type=int, default=30, help="clean val cases")
    parser.add_argument("--train-limit", type=int, default=400, help="training masks fitting the baselines")
    parser.add_argument("--families", default="all", help="comma-separated families, or all (incl. the swaps)")
    parser.add_argument("--swap-organ-from", type=Path, default=None, metavar="BUNDLE",
                        help="bundle whose val masks are the other organ of swap_organ (default: hippocampus; "
                             "adrenal_gland for the hippocampus bundle)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="re-slice every mask as a CT acquisition at this voxel size (mm) first")
    parser.add_argument("--rescore", type=Path, default=None, metavar="QC_QUALITY_JSON",
                        help="rebuild the tables from a stored run's scores (no reconstruction); other options "
                             "but --out and --thresholds-from are ignored")
    parser.add_argument("--thresholds-from", type=Path, default=None, metavar="BUNDLE",
                        help="with --rescore: take the shipped Dice threshold from this bundle's thresholds.json "
                             "(a calibration that finished after the run)")
    args = parser.parse_args()
    if args.thresholds_from and not args.rescore:
        parser.error("--thresholds-from needs --rescore")
    if args.rescore:
        scored = stored_scores(args.rescore)
        scored["rescored"] = (f"python benchmarks/qc_quality.py --rescore {display_path(args.rescore)} "
                              f"--out {display_path(args.out)}")
        if args.thresholds_from:
            scored.update(shipped_fields(shipped_profile(args.thresholds_from, scored["spacing_mm"])))
            scored["rescored"] += f" --thresholds-from bundles/{args.thresholds_from.name}"
    else:
        scored = score_run(args)
    result = tabulate(scored)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qc_quality.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "qc_quality.md").write_text(markdown(result))
    plot_roc(result["corrupted_scores"], [s["scores"] for s in result["clean_scores"]], args.out / "qc_quality_roc.png")
    print((args.out / "qc_quality.md").read_text())


def markdown(result: dict) -> str:
    short = {"shapeqc_dice": "shapeqc Dice", "shapeqc_asd": "ASD", "shapeqc_hd95": "HD95", "shapeqc_max_sd": "max SD",
             "A_volume_z": "A vol z", "B_descriptors": "B descr", "C_linear_ssm": "C SSM", "D_nearest_dice": "D NN",
             "E_rules": "E rules", "shapeqc_dice_or_B": "Dice or B"}
    lines = [f"# QC benchmark: bundle `{result['bundle']}`", "",
             f"Command: `{result['command']}` ({result['seconds']:.0f} s)"
             + (f"; tables rebuilt from its stored scores by `{result['rescored']}`" if result.get("rescored") else "")
             + f". Clean cases: {result['clean_cases']} real val "
             f"masks; corrupted: {result['corrupted_cases']}; baselines fitted on {result['train_masks']} training "
             "masks."
             + (" Every mask re-sliced as a CT acquisition at " + " x ".join(f"{v:g}" for v in result["spacing_mm"])
                + " mm (tilt seeded per case) before corruption; shapeqc's threshold from the profile "
                + str(result["threshold_profile"]) + "." if result.get("spacing_mm") else ""), "",
             (f"False-positive rate on the clean cases at the shipped Dice threshold "
              f"({result['shipped_dice_threshold']:.4f}): {result['clean_fpr_at_shipped_threshold']:.3f} "
              "(nominal 0.05)" + fpr_context(result) + "." if result["shipped_dice_threshold"] is not None else
              "The bundle had no calibrated thresholds when the run ended: the shipped-threshold figures are left "
              "out; `--rescore` this run's qc_quality.json with `--thresholds-from BUNDLE` once it is calibrated."),
             "", "AUROC (detection rate at each method's own 5% false-positive threshold). Families marked * were "
             "used to train the prior. \"Dice or B\": shapeqc Dice and baseline B, each scaled on the clean cases "
             "(median 0, 95th percentile 1; a clean case on the other clean cases' scale), the larger taken.", "",
             "| family (severity) | cases | median volume change | " + " | ".join(short[m] for m in METHODS)
             + " | shapeqc Dice at shipped threshold |",
             "|---|---|---|" + "---|" * len(METHODS) + "---|"]

    def shipped_cell(rate: float | None, digits: int = 2) -> str:
        return "-" if rate is None else f"{rate:.{digits}f}"

    def row(name: str, entry: dict) -> str:
        cells = [f"{entry[m]['auroc']:.3f} ({entry[m]['detection']:.2f})" for m in METHODS]
        return (f"| {name} | {entry['cases']} | {entry['volume_change']:.3f} | " + " | ".join(cells)
                + f" | {shipped_cell(entry['shapeqc_dice']['detection_shipped'])} |")

    for name, entry in result["families"].items():
        mark = "*" if entry["family"] in result["trained_families"] else ""
        lines.append(row(f"{name.replace(entry['family'], entry['family'] + mark, 1)}", entry))
    for name, entry in result["overall"].items():
        lines.append(row(f"**{name}**", entry))
    family_mean = result.get("family_mean_moderate")
    if family_mean:
        lines += ["", f"**Mean AUROC over the {len(family_mean['rows'])} family rows with a median change >= 10%** "
                  "(equal weight per row): " + ", ".join(f"{short[m]} {family_mean[m]:.3f}" for m in METHODS) + "."]
    earlier = result.get("family_mean_moderate_without_organ_swap")
    if earlier:
        lines += ["", f"The same mean without the organ swap row ({len(earlier['rows'])} rows, as in runs before it "
                  "was added): " + ", ".join(f"{short[m]} {earlier[m]:.3f}" for m in METHODS) + "."]
    if result.get("swap_organ_from"):
        lines += ["", f"swap_organ: another organ's real shape (the `{result['swap_organ_from']}` bundle's val masks, "
                  "one per case in turn) scaled to the organ's volume and centred on it; swap: another val subject's "
                  "organ, centred on it."]
    other = result.get("plausible_set")
    if other:
        lines += ["", f"Another rater's masks of the same held-out scans ({other['cases']} real, plausible but "
                  "different segmentations): false-positive rate at the shipped Dice threshold "
                  f"{shipped_cell(other['fpr_at_shipped_threshold'], 3)}; per method, false-positive rate at its 5% "
                  "threshold (AUROC against the clean cases, 0.5 = indistinguishable):", "",
                  "| " + " | ".join(short[m] for m in METHODS) + " |", "|" + "---|" * len(METHODS),
                  "| " + " | ".join(f"{other[m]['fpr']:.2f} ({other[m]['auroc_vs_clean']:.2f})" for m in METHODS)
                  + " |"]
    estimation = result["quality_estimation"]
    if estimation:
        lines += ["", "Quality estimation (nnQC protocol): Dice(input, reconstruction) as an estimate of the true "
                  f"Dice(input, clean) over {estimation['cases']} corrupted cases (true Dice "
                  f"{estimation['true_dice_range'][0]:.2f}-{estimation['true_dice_range'][1]:.2f}): MAE "
                  f"{estimation['mae']:.3f}, Pearson {estimation['pearson']:.3f}, Spearman {estimation['spearman']:.3f}"
                  + (f", AUROC for true Dice < 0.8: {estimation['auroc_true_dice_below_0.8']:.3f}"
                     if "auroc_true_dice_below_0.8" in estimation else "") + "."]
    return "\n".join(lines) + "\n"


def fpr_context(result: dict) -> str:
    """The clean false-positive rate's 95% interval on this run's clean cases, and the calibration's leave-one-out
    rate (the figure for new clean organs) where the bundle's thresholds record it."""
    interval = result.get("clean_fpr_interval_95")
    text = (f"; 95% interval on {result['clean_cases']} cases {interval[0]:.3f}-{interval[1]:.3f}" if interval else "")
    loo = result.get("calibration_leave_one_out_fpr")
    if loo is not None:
        cases = result["calibration_clean_cases"]
        low, high = wilson_interval(round(loo * cases), cases)
        text += (f". These cases are among the {cases} the threshold was calibrated on; each of those {cases} judged "
                 f"against the threshold set on the other {cases - 1} (leave one out, the rate a new clean organ "
                 f"meets): {loo:.3f}, 95% interval {low:.3f}-{high:.3f}")
    return text


def display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (the command as a user types it)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def plot_roc(cases: list[dict], clean_scores: list[dict], out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 5), dpi=100)
    for method in METHODS:
        positives = badness(method, [c["scores"][method] for c in cases])
        negatives = badness(method, [s[method] for s in clean_scores])
        cuts = np.unique(np.concatenate([positives, negatives, [np.inf]]))[::-1]
        axis.plot([(negatives >= c).mean() for c in cuts], [(positives >= c).mean() for c in cuts], label=method)
    axis.set_xlabel("false-positive rate (clean)")
    axis.set_ylabel("detection rate (all corrupted cases)")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)


if __name__ == "__main__":
    main()
