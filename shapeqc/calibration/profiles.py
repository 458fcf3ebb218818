"""Calibration of a bundle's outlier thresholds on clean validation masks and synthetic corruptions of them.

Thresholds are kept per acquisition profile (the voxel spacing the clean cases were scored at, or "as given"):
re-slicing to a coarser or anisotropic grid costs a clean organ some Dice in the round trip through the
canonical grid, so a threshold set on 1 mm masks would flag clean 2.5 mm CT segmentations. Analysis uses the
profile whose spacing is nearest to the input's.

Each threshold sits at a target false-positive rate on the clean cases (default 5%, the research pipeline's
choice): the ``fpr`` quantile of clean Dice (an organ is an outlier below it) and the ``1 - fpr`` quantile of
each surface distance (outlier above it); each threshold also records the rate that a clean case it was not set
on meets (leave one out), the figure to quote for new data. Dice alone is enabled by default, as the research found
it separated best. The report gives, per corruption family, the detection rate at the thresholds and the AUROC per
metric.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import date
from pathlib import Path

import numpy as np

from shapeqc.bundle.loading import Bundle, load_bundle
from shapeqc.calibration import corruptions
from shapeqc.judging.analysis import score_organ, substantial_parts
from shapeqc.outputs.reports import write_atomic
from shapeqc.scoring.metrics import dice, occupied_box
from shapeqc.scoring.quality import fit_dice_estimator, held_out_predictions, quality_features
from shapeqc.scoring.roc import auroc, roc_points
from shapeqc.scoring.thresholds import METRICS, badness, is_worse, metric_rule
from shapeqc.transforms.corruption import stable_seed
from shapeqc.transforms.organ_loading import load_item_mask
from shapeqc.transforms.reslice import reslice_mask
from shapeqc.transforms.volume_io import voxel_spacing

logger = logging.getLogger("shapeqc.calibration.profiles")

# the calibration's corruptions, by name from the one family registry (shapeqc.calibration.corruptions) at one
# severity each: what the family report of docs/calibration_*.json shows beside the thresholds
CALIBRATION_FAMILIES = {"perlin_add": {"strength": 0.6}, "perlin_remove": {"strength": 0.6},
                        "cube_add": {"fraction": 0.3}, "cube_remove": {"fraction": 0.3}}


def corrupted_for_calibration(mask: np.ndarray, case_id: str, family: str) -> np.ndarray:
    """``mask`` (D, H, W) bool corrupted by the registry's ``family`` at its calibration severity, seeded by the
    case id and the family (the same case always gets the same corruption)."""
    generate, _ = corruptions.FAMILIES[family]
    return generate(mask, stable_seed(f"{case_id}/{family}/calibration", 2024), **CALIBRATION_FAMILIES[family])


# graded corruptions made for the quality estimator alone (not for the thresholds), one per family and case at a
# severity drawn uniformly from the range (seeded by the case id): with the clean organs and the calibration
# families they span true Dice from about 0.3 to 1, under- and over-segmentation alike
QUALITY_FAMILIES = {"plane_cut": ("fraction", 0.05, 0.8), "cube_add": ("fraction", 0.05, 0.8)}


def quality_corruptions(mask: np.ndarray, case_id: str) -> list[tuple[str, np.ndarray]]:
    """(family, corrupted mask) of :data:`QUALITY_FAMILIES` for one case; a family that cannot corrupt this mask
    (no room) is left out."""
    out = []
    for family, (parameter, low, high) in QUALITY_FAMILIES.items():
        seed = stable_seed(f"{case_id}/{family}/quality", 2024)
        severity = float(np.random.default_rng(seed).uniform(low, high))
        generate, _ = corruptions.FAMILIES[family]
        try:
            out.append((family, generate(mask, seed, **{parameter: severity})))
        except ValueError:
            continue
    return out


def score_case(bundle: Bundle, mask: np.ndarray, affine: np.ndarray, organ: str) -> tuple[dict, dict]:
    """(scores, :func:`shapeqc.scoring.quality.quality_features`) of one organ analysed as ``shapeqc analyse`` would."""
    reconstruction, scores = score_organ(bundle, mask, affine, organ, {})
    box = occupied_box(mask, reconstruction)
    return scores, quality_features(mask[box], reconstruction[box], scores)


def acquisition(mask: np.ndarray, affine: np.ndarray, spacing_mm, case_id: str, pad_voxels: int = 3):
    """The mask as acquired at ``spacing_mm`` with a tilt seeded by the case id (None: as given), with
    ``pad_voxels`` empty voxels around the organ."""
    if spacing_mm is None:
        return mask, affine
    rng = np.random.default_rng(stable_seed(case_id, 7))
    return reslice_mask(mask, affine, tuple(spacing_mm), tuple(rng.uniform(-20, 20, 3)), pad_voxels)


def item_sources(items: list[dict]) -> list[str] | None:
    """The source of each calibration item (``calibration_source``, set by
    :func:`shapeqc.bundle.datalists.calibration_items`), or None when they all come from one source."""
    sources = [str(item.get("calibration_source", "")) for item in items]
    return sources if len(set(sources)) > 1 else None


def calibrate(bundle_dir: str, items: list[dict], target_fpr: float = 0.05, organ: str | None = None,
              data_description: str = "", write: bool = True, device: str = "cpu",
              spacing_mm: tuple[float, float, float] | None = None, refine_steps: int = 0,
              bundle: Bundle | None = None) -> dict:
    """Score clean ``items`` and their corruptions, set thresholds; with ``write``, store them as the profile for
    this acquisition spacing in ``configs/thresholds.json`` and write ``docs/calibration*.json`` + ROC PNG.

    ``spacing_mm``: re-slice every case to this spacing (with a seeded tilt) before scoring, so the thresholds
    include the resampling loss of inputs acquired that way; None scores the masks as given.
    ``refine_steps``: test-time refinement per case (thresholds hold only for analyses run the same way).
    ``bundle``: an already loaded bundle (e.g. the network a ``monai.bundle`` evaluator just ran) instead of
    loading ``bundle_dir``'s weights.
    Items of several sources (``calibration_source``, :func:`shapeqc.bundle.datalists.calibration_items`): each
    source is held to its own quantile (the most lenient of the sources' quantiles is the threshold,
    :func:`shapeqc.scoring.thresholds.threshold_at`); the profile then records ``clean_cases_by_source`` and each
    metric's ``leave_one_out_fpr_by_source`` (``leave_one_out_fpr`` the highest of them).
    """
    bundle = bundle or load_bundle(bundle_dir, device, refine_steps=refine_steps)
    organ = organ or (bundle.organs[0] if bundle.organs else "")
    clean_scores, family_scores = [], {name: [] for name in CALIBRATION_FAMILIES}
    volume_change = {name: [] for name in CALIBRATION_FAMILIES}
    # one row per analysed organ for the quality estimator: (source family, case, features, true Dice, raw Dice)
    quality_rows = []
    start = time.perf_counter()
    spacings = []
    for index, item in enumerate(items):
        mask, affine = load_item_mask(item)
        mask, affine = acquisition(mask, affine, spacing_mm, item["case_id"])
        spacings.append(sorted(voxel_spacing(affine)))
        mask = mask.astype(bool)
        # the item's own organ decides mirroring (left and right glands of one bundle); ``organ`` otherwise
        item_organ = item.get("organ") or organ
        # one group per item (a case id may hold a left and a right organ)
        group = f"{index}:{item['case_id']}"
        scores, features = score_case(bundle, mask, affine, item_organ)
        clean_scores.append(scores)
        quality_rows.append(("clean", group, features, 1.0, scores["dice"]))
        for name in CALIBRATION_FAMILIES:
            corrupted = corrupted_for_calibration(mask, item["case_id"], name)
            volume_change[name].append(corruptions.volume_change(mask, corrupted))
            scores, features = score_case(bundle, corrupted, affine, item_organ)
            family_scores[name].append(scores)
            quality_rows.append((name, group, features, dice(corrupted, mask), scores["dice"]))
        for name, corrupted in quality_corruptions(mask, item["case_id"]):
            scores, features = score_case(bundle, corrupted, affine, item_organ)
            quality_rows.append((f"quality_{name}", group, features, dice(corrupted, mask), scores["dice"]))
        logger.info("calibration %s: case %d of %d done (%.0f s)", profile_tag(spacing_mm), index + 1, len(items),
                    time.perf_counter() - start)
    sources = item_sources(items)
    metrics = {}
    for metric in METRICS:
        clean = np.array([s[metric] for s in clean_scores], dtype=float)
        metrics[metric] = metric_rule(clean, target_fpr, metric, enabled=metric == "dice", sources=sources)
    families_report = {}
    for name, scores in family_scores.items():
        families_report[name] = {"cases": len(scores),
                                 "median_volume_change": float(np.median(volume_change[name])), "metrics": {}}
        for metric in METRICS:
            values = np.array([s[metric] for s in scores], dtype=float)
            clean = np.array([s[metric] for s in clean_scores], dtype=float)
            limit = metrics[metric]["threshold"]
            detected = is_worse(values, limit, metrics[metric]["worse_when"])
            families_report[name]["metrics"][metric] = {
                "detection_rate": float(detected.mean()),
                "auroc": auroc(badness(metric, values), badness(metric, clean)),
            }
    estimator, quality_report = fit_quality(quality_rows, clean_scores, family_scores)
    profile = {"spacing_mm": None if spacing_mm is None else [float(v) for v in spacing_mm], "metrics": metrics,
               "target_fpr": target_fpr, "clean_cases": len(clean_scores), "data": data_description,
               **({"clean_cases_by_source": {name: sources.count(name) for name in sorted(set(sources))}}
                  if sources else {}),
               "refine_steps": bundle.refine_steps,
               # the clean masks' median voxel size (sorted, mm): where the profile stands among input spacings
               "data_spacing_mm": [round(float(v), 3) for v in np.median(spacings, axis=0)] if spacings else None,
               "date": date.today().isoformat(), "bundle_version": bundle.metadata.get("version"),
               "quality_estimator": estimator}
    report = {"thresholds": profile, "families": families_report, "quality": quality_report,
              "seconds": round(time.perf_counter() - start, 1), "clean_scores": clean_scores,
              "clean_sources": sources,
              "family_scores": family_scores,
              "quality_rows": [{"family": f, "case": g, "features": x, "true_dice": t}
                               for f, g, x, t, _ in quality_rows]}
    if write:
        store_calibration(bundle_dir, [report])
    return report


def store_calibration(bundle_dir: str | Path, reports: list[dict], plausibility: dict | None = None) -> Path:
    """Write the profiles of complete calibration ``reports`` (and ``plausibility`` bounds) into the bundle's
    ``configs/thresholds.json`` in one atomic replace: each replaces the stored profile of its spacing, the others
    stay; then each report's ``docs/calibration_<tag>.json`` and ROC figure. Called only once every profile is
    computed, so an interrupted calibration leaves the previous file whole (never a file without profiles)."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "configs" / "thresholds.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    new_spacings = [report["thresholds"]["spacing_mm"] for report in reports]
    profiles = [p for p in stored.get("profiles", []) if p.get("spacing_mm") not in new_spacings]
    profiles += [report["thresholds"] for report in reports]
    content = {**stored, "profiles": profiles}
    if plausibility is not None:
        content["plausibility"] = plausibility
    write_atomic(path, json.dumps(content, indent=1) + "\n")
    (bundle_dir / "docs").mkdir(exist_ok=True)
    for report in reports:
        tag = profile_tag(report["thresholds"]["spacing_mm"])
        write_atomic(bundle_dir / "docs" / f"calibration_{tag}.json", json.dumps(report, indent=1) + "\n")
        plot_roc(report, bundle_dir / "docs" / f"calibration_roc_{tag}.png")
    return path


def fit_quality(quality_rows: list[tuple], clean_scores: list[dict], family_scores: dict) -> tuple[dict | None, dict]:
    """The quality estimator fitted on the calibration's organs (:mod:`shapeqc.scoring.quality`: its interval sized
    and its coverage measured on kinds of error it was not fitted on) and its report: on those held-out organs, Pearson
    r,
    Spearman, MAE and interval coverage of the estimate and of the raw Dice(segmentation, reconstruction), and per
    calibration family the AUROC of the held-out estimate as the outlier score beside the raw Dice's.
    (None, reason) with fewer than 2 cases. ``quality_rows``: (family, case, features, true Dice, raw Dice)."""
    groups = [group for _, group, _, _, _ in quality_rows]
    if len(set(groups)) < 2:
        return None, {"skipped": f"{len(set(groups))} case(s): the estimator needs at least 2"}
    features = [x for _, _, x, _, _ in quality_rows]
    truth = [t for _, _, _, t, _ in quality_rows]
    families = [family for family, _, _, _, _ in quality_rows]
    estimator = fit_dice_estimator(features, truth, groups, families)
    predicted = held_out_predictions(features, truth, groups, families, estimator["folds"], estimator["seed"],
                                     estimator["ridge"], tuple(estimator["features"]))
    clean_predicted = predicted[[f == "clean" for f in families]]
    report = {**estimator["held_out"], "target_coverage": estimator["target_coverage"],
              "measured_coverage": estimator["measured_coverage"], "coverage_basis": estimator["coverage_basis"],
              "coverage_by_kind": estimator["coverage_by_kind"], "rank_by": estimator["rank_by"],
              "half_width": estimator["half_width"], "organs": len(truth), "families": sorted(set(families)),
              "outlier_auroc": {name: {"raw_dice": auroc(badness("dice", [s["dice"] for s in scores]),
                                                         badness("dice", [s["dice"] for s in clean_scores])),
                                       "predicted_dice": auroc(-predicted[[f == name for f in families]],
                                                               -clean_predicted)}
                                for name, scores in family_scores.items()}}
    return estimator, report


def refit_quality(bundle_dir: str | Path) -> list[dict]:
    """Refit every stored profile's quality estimator from its calibration's stored organs
    (``docs/calibration_<tag>.json``: features and true Dice of every clean and corrupted organ) without
    reconstructing anything, and write them back (``configs/thresholds.json``, the reports' ``quality``). For an
    estimator rule that changed while the prior did not (issue 35). A ``real_failures`` coverage measured for the
    old interval is dropped (``benchmarks/cross_source.py --record-coverage`` measures it again). Returns the new
    quality reports."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "configs" / "thresholds.json"
    stored = json.loads(path.read_text())
    reports = []
    for profile in stored.get("profiles", []):
        report_path = bundle_dir / "docs" / f"calibration_{profile_tag(profile['spacing_mm'])}.json"
        report = json.loads(report_path.read_text())
        rows = [(r["family"], r["case"], r["features"], r["true_dice"], r["features"]["dice"])
                for r in report["quality_rows"]]
        estimator, quality_report = fit_quality(rows, report["clean_scores"], report["family_scores"])
        profile["quality_estimator"] = estimator
        report["quality"] = quality_report
        report["thresholds"]["quality_estimator"] = estimator
        write_atomic(report_path, json.dumps(report, indent=1) + "\n")
        reports.append(quality_report)
    write_atomic(path, json.dumps(stored, indent=1) + "\n")
    return reports


def calibrate_profiles(bundle_dir: str, items: list[dict], spacings: list, target_fpr: float = 0.05,
                       bundle: Bundle | None = None, data_description: str = "",
                       training_items: list[dict] | None = None) -> list[dict]:
    """:func:`calibrate` once per acquisition spacing (None: as given), each written as its own profile; with
    ``training_items``, the plausibility bounds from those training masks too (:func:`plausibility_bounds`)."""
    sources = item_sources(items)
    counts = ", ".join(f"{name} {sources.count(name)}" for name in dict.fromkeys(sources)) if sources else ""
    description = f"{data_description} ({len(items)} clean cases{': ' + counts if counts else ''})"
    bounds = plausibility_bounds(training_items) if training_items else None
    reports = [calibrate(bundle_dir, items, target_fpr=target_fpr, bundle=bundle, data_description=description,
                         spacing_mm=None if spacing is None else tuple(spacing), write=False) for spacing in spacings]
    store_calibration(bundle_dir, reports, bounds)
    return reports


def profile_tag(spacing_mm) -> str:
    return "as_given" if spacing_mm is None else "x".join(f"{v:g}" for v in spacing_mm)


def plot_roc(report: dict, out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = report["clean_scores"]
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.8), dpi=100)
    for axis, metric in zip(axes, METRICS, strict=True):
        negatives = badness(metric, [s[metric] for s in clean])
        for name, scores in report["family_scores"].items():
            fpr, tpr = roc_points(badness(metric, [s[metric] for s in scores]), negatives)
            auc = report["families"][name]["metrics"][metric]["auroc"]
            axis.plot(fpr, tpr, label=f"{name} (AUROC {auc:.2f})")
        axis.axvline(report["thresholds"]["target_fpr"], color="0.6", ls="--", lw=0.8)
        axis.set_title(metric)
        axis.set_xlabel("false-positive rate (clean)")
        axis.set_ylabel("detection rate")
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)
    return out_path


def plausibility_bounds(items: list[dict], volume_factor: float = 0.5) -> dict:
    """The bounds an organ must meet before the prior judges it (``shapeqc.judging.analysis.implausible``), from real
    training masks ``items`` (datalist items): ``min_volume_mm3``, ``volume_factor`` times the smallest training
    organ's volume, and ``max_components``, the most substantial parts
    (:func:`shapeqc.judging.analysis.substantial_parts`) any training organ has."""
    volumes, components = [], []
    for item in items:
        mask, affine = load_item_mask(item)
        if not mask.any():
            continue
        volumes.append(float(mask.sum()) * float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))))
        components.append(substantial_parts(mask))
    if not volumes:
        raise ValueError("no non-empty training mask to set plausibility bounds on")
    return {"min_volume_mm3": volume_factor * min(volumes), "max_components": max(components),
            "rule": f"volume >= {volume_factor:g} x the smallest of {len(volumes)} training organs; no more parts "
                    "(26-connected, each >= 5% of the organ) than any of them",
            "training_volume_mm3_range": [min(volumes), max(volumes)]}
