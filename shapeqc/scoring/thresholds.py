"""Thresholds and decisions: the one owner of "which way is worse", the quantile rule and threshold profiles.

A bundle's ``configs/thresholds.json`` holds ``{"profiles": [profile, ...]}``; a profile is
``{"spacing_mm": [x, y, z] | null, "metrics": {metric: {"threshold", "worse_when", "enabled",
"leave_one_out_fpr"}}, "target_fpr", ...}``, written by :mod:`shapeqc.calibration.profiles`. Every rule that reads or
writes those numbers lives here: the calibration sets thresholds with :func:`threshold_at`, analysis picks a
profile with :func:`select_profile` and judges with :func:`decide`, and the benchmarks orient scores with
:func:`badness`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

METRICS = ("dice", "asd_mm", "hd95_mm", "max_sd_mm")
# the direction in which a score is worse: Dice falls, distances grow (the default when a profile says nothing)
WORSE_WHEN = {"dice": "below", "asd_mm": "above", "hd95_mm": "above", "max_sd_mm": "above"}


def is_worse(value, limit, worse_when: str):
    """Whether ``value`` (scalar or array) lies past ``limit`` in the ``worse_when`` direction ("below" /
    "above"); ties are not worse."""
    if worse_when not in ("below", "above"):
        raise ValueError(f"worse_when must be 'below' or 'above', got {worse_when!r}")
    return np.less(value, limit) if worse_when == "below" else np.greater(value, limit)


def badness(metric: str, values, worse_when: str | None = None) -> np.ndarray:
    """Scores (N,) oriented so that larger is worse (a metric worse below, such as Dice, is negated); for ROC
    curves and AUROCs. ``worse_when`` defaults to :data:`WORSE_WHEN`, "above" for a metric it does not know."""
    values = np.asarray(values, dtype=float)
    direction = worse_when or WORSE_WHEN.get(metric, "above")
    return -values if direction == "below" else values


def source_names(sources) -> np.ndarray | None:
    """The ``sources`` (N,) of clean cases as strings, or None when they name fewer than two sources (every case
    then counts as one population)."""
    if sources is None:
        return None
    labels = np.asarray(sources, dtype=str)
    return labels if len(np.unique(labels)) > 1 else None


def threshold_at(values, target_fpr: float, worse_when: str, sources=None) -> float:
    """The threshold flagging ``target_fpr`` of the clean ``values`` (N,): their ``target_fpr`` quantile for a
    metric worse below it (Dice), their ``1 - target_fpr`` quantile otherwise (surface distances, mm); numpy's
    linear quantile.

    ``sources`` (N,): the source (annotation team, hospital) of each clean case. With more than one, each source's
    own quantile is taken and the most lenient of them is the threshold (the lowest for Dice, the highest for a
    distance), so no source's clean organs are flagged more often than its own quantile flags them: about
    ``target_fpr`` for a large source, and for a source of fewer than ``1 / target_fpr`` cases at most its single
    worst one (the linear quantile lies between its two worst). Pooling, or weighing the sources as an equal mixture,
    would instead push a large source past the target to make room for a small one's tail."""
    quantile = target_fpr if worse_when == "below" else 1.0 - target_fpr
    values = np.asarray(values, float)
    labels = source_names(sources)
    if labels is None:
        return float(np.quantile(values, quantile))
    per_source = [float(np.quantile(values[labels == name], quantile)) for name in np.unique(labels)]
    return min(per_source) if worse_when == "below" else max(per_source)


def leave_one_out_fpr(values, target_fpr: float, worse_when: str, sources=None) -> float | dict:
    """The false-positive rate to expect of :func:`threshold_at` on a clean case it was not set on: every clean
    case of ``values`` (N,), N >= 2, judged against the threshold set on the other N - 1. The rate on the cases
    the threshold was set on is the target by construction; this one is what a new clean organ from the same
    population sees. With ``sources`` (N,), the thresholds are set as :func:`threshold_at` sets them on several
    sources, and the result is ``{source: rate among that source's cases}``."""
    values = np.asarray(values, float)
    labels = source_names(sources)
    flagged = np.array([bool(is_worse(value, threshold_at(
        np.delete(values, index), target_fpr, worse_when, None if labels is None else np.delete(labels, index)),
        worse_when)) for index, value in enumerate(values)])
    if labels is None:
        return float(flagged.mean())
    return {str(name): float(flagged[labels == name].mean()) for name in np.unique(labels)}


def metric_rule(values, target_fpr: float, metric: str, enabled: bool, sources=None) -> dict:
    """One metric's entry of a profile, set on the clean ``values`` (N,) (from ``sources`` (N,), see
    :func:`threshold_at`); with several sources also ``leave_one_out_fpr_by_source``, and ``leave_one_out_fpr`` is
    then the highest of them (the rule promises every source its target, so the worst-served source is the
    figure to quote)."""
    worse_when = WORSE_WHEN[metric]
    rule = {"threshold": threshold_at(values, target_fpr, worse_when, sources), "worse_when": worse_when,
            "enabled": bool(enabled)}
    if len(values) < 2:
        return rule
    if source_names(sources) is None:
        rule["leave_one_out_fpr"] = leave_one_out_fpr(values, target_fpr, worse_when)
    else:
        by_source = leave_one_out_fpr(values, target_fpr, worse_when, sources)
        rule["leave_one_out_fpr"] = float(max(by_source.values()))
        rule["leave_one_out_fpr_by_source"] = by_source
    return rule


def load_thresholds(bundle_dir: str | os.PathLike) -> dict | None:
    """A bundle's ``configs/thresholds.json`` (None when the bundle is uncalibrated)."""
    path = Path(bundle_dir) / "configs" / "thresholds.json"
    return json.loads(path.read_text()) if path.exists() else None


# an input whose voxel axes turn more than this from the scanner axes is oblique (degrees)
OBLIQUE_DEG = 1.0
# added to a profile's distance when it was calibrated with the other orientation (tilted vs axis-aligned): the
# resampling into the axis-aligned canonical grid costs an oblique organ surface that an aligned one keeps; less
# than a spacing step (log 1.5 = 0.41), so that spacing decides first
ORIENTATION_MISMATCH = 0.3


def obliquity_deg(affine) -> float:
    """The largest angle in degrees between a voxel axis of ``affine`` (4, 4) and its nearest scanner axis."""
    axes = np.asarray(affine, dtype=float)[:3, :3]
    cosines = np.abs(axes) / np.linalg.norm(axes, axis=0, keepdims=True)
    return float(np.degrees(np.arccos(np.clip(cosines.max(axis=0), -1.0, 1.0))).max())


def stored_profiles(thresholds: dict | None) -> list[dict]:
    """The threshold profiles of a bundle's thresholds (a pre-profile file, one flat profile, counts as one). A
    file written by an interrupted calibration (``{"profiles": []}``) or a bundle without one has none: then no
    organ is judged (``not_judged: uncalibrated``), and :func:`decide` says the same of a chosen profile without an
    enabled metric."""
    if not thresholds:
        return []
    profiles = thresholds["profiles"] if "profiles" in thresholds else [thresholds] if "metrics" in thresholds else []
    return [p for p in profiles if isinstance(p, dict)]


def profile_problems(thresholds) -> list[str]:
    """Why a bundle's thresholds cannot be trusted to decide, one line each (empty: none): not a mapping, a
    profile naming an unknown metric, a threshold that is not a finite number in range (Dice in [0, 1], distances
    >= 0 mm), an unknown direction, a target rate outside (0, 1), a spacing that is not three positive numbers."""
    import math

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if thresholds is None:
        return []
    if not isinstance(thresholds, dict):
        return [f"not a JSON object but {type(thresholds).__name__}"]
    profiles = thresholds.get("profiles", [thresholds] if "metrics" in thresholds else [])
    if not isinstance(profiles, list):
        return ["'profiles' is not a list"]
    problems = []
    for number, profile in enumerate(profiles):
        where = f"profile {number}"
        if not isinstance(profile, dict) or not isinstance(profile.get("metrics", {}), dict):
            problems.append(f"{where}: not a profile object")
            continue
        for metric, rule in profile.get("metrics", {}).items():
            if metric not in WORSE_WHEN:
                problems.append(f"{where}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
                continue
            value = rule.get("threshold") if isinstance(rule, dict) else None
            direction = rule.get("worse_when", WORSE_WHEN[metric]) if isinstance(rule, dict) else None
            if not finite(value) or not (0.0 <= value <= 1.0 if metric == "dice" else value >= 0.0) \
                    or direction not in ("below", "above"):
                problems.append(f"{where}: {metric} threshold {value!r} ({direction}) is out of range")
        target = profile.get("target_fpr")
        if target is not None and not (finite(target) and 0.0 < target < 1.0):
            problems.append(f"{where}: target_fpr {target!r} is not a rate in (0, 1)")
        for key in ("spacing_mm", "data_spacing_mm"):
            spacing = profile.get(key)
            if spacing is not None and not (isinstance(spacing, list) and len(spacing) == 3
                                            and all(finite(v) and v > 0 for v in spacing)):
                problems.append(f"{where}: {key} {spacing!r} is not three positive numbers (mm)")
    return problems


def select_profile(thresholds: dict | None, spacing_mm, oblique: bool = False,
                   as_given: bool = False) -> dict | None:
    """The calibration profile nearest to an input: its voxel spacing ``spacing_mm`` (3,) in mm and whether its
    voxel axes are ``oblique`` to the scanner's (:func:`obliquity_deg` above :data:`OBLIQUE_DEG`).

    Distance: the sum of |log ratio| over the sorted spacings, plus :data:`ORIENTATION_MISMATCH` when the
    profile's orientation differs from the input's. A profile "as given" (spacing None) stands for the
    calibration data's own masks, axis-aligned at their median voxel size (``data_spacing_mm``; 1 mm for a
    profile calibrated before it was recorded); a profile with a spacing was calibrated on masks
    re-sliced at that spacing with a seeded tilt (``shapeqc.calibration.profiles.acquisition``), so it stands for
    oblique inputs. ``as_given``: the masks are of the calibration data's own kind, so the profile "as given" where
    there is one. A clean oblique 1 mm mask thus meets the tilted 1 mm profile where the bundle has one, not the
    axis-aligned threshold that its resampling loss would fall below.
    """
    profiles = stored_profiles(thresholds)
    if not profiles:
        return None
    given = [p for p in profiles if p.get("spacing_mm") is None]
    if as_given and given:
        # masks known to be the calibration data's own kind (a benchmark's masks as given): their own profile, whatever
        # their voxel size (a CT bundle's 0.8 x 0.8 x 5 mm spleens are not 1 mm, and the CT profile may be nearer)
        return given[0]
    target = np.sort(np.asarray(spacing_mm, dtype=float))

    def distance(profile):
        reference = np.sort(np.asarray(profile.get("spacing_mm") or profile.get("data_spacing_mm") or (1.0, 1.0, 1.0),
                                       dtype=float))
        tilted = profile.get("spacing_mm") is not None
        return float(np.sum(np.abs(np.log(target / reference)))) + (ORIENTATION_MISMATCH if tilted != oblique else 0)

    return min(profiles, key=distance)


# an input whose voxels are this many times coarser (edge of a voxel of equal volume) than those of every calibration
# profile is judged outside what any threshold was set on: its record says so
COARSER_THAN_CALIBRATED = 1.5


def _voxel_edge_mm(spacing_mm) -> float:
    """The edge (mm) of the cube with the volume of one voxel of ``spacing_mm`` (3,)."""
    return float(np.prod(np.asarray(spacing_mm, dtype=float)) ** (1.0 / 3.0))


def coarse_input_warning(thresholds: dict | None, spacing_mm) -> str | None:
    """A warning when the input's voxels (``spacing_mm`` (3,), mm) are more than :data:`COARSER_THAN_CALIBRATED`
    times coarser than those of the bundle's coarsest calibration profile: the prior then sees a staircase it
    never met in calibration, and clean organs fall below a threshold set on finer masks (the TotalSegmentator
    example's 3 mm adrenal glands against profiles at 1 and 0.8 x 0.8 x 2.5 mm). None otherwise or uncalibrated."""
    profiles = stored_profiles(thresholds)
    if not profiles:
        return None
    calibrated = [p.get("spacing_mm") or p.get("data_spacing_mm") or (1.0, 1.0, 1.0) for p in profiles]
    coarsest = max(calibrated, key=_voxel_edge_mm)
    if _voxel_edge_mm(spacing_mm) <= COARSER_THAN_CALIBRATED * _voxel_edge_mm(coarsest):
        return None
    given = " x ".join(f"{s:g}" for s in np.round(np.asarray(spacing_mm, float), 2))
    nearest = " x ".join(f"{s:g}" for s in np.round(np.asarray(coarsest, float), 2))
    return (f"coarse input: voxels of {given} mm, coarser than every calibration profile of the bundle (coarsest "
            f"{nearest} mm); the threshold was not set on such masks, so clean organs may be flagged. Calibrate a "
            f"profile at this spacing (shapeqc calibrate --spacing {given.replace(' x ', ',')}) to judge them")


def decide(scores: dict, profile: dict | None) -> tuple[bool | None, list[str]]:
    """(outlier?, metrics past their threshold) of ``scores`` {metric: value} under a profile; None without one.

    Each enabled metric is judged in the direction its profile entry stores (``worse_when``), so a calibration
    may orient a new metric either way; an entry without it takes :data:`WORSE_WHEN`.
    """
    if not profile or not any(rule.get("enabled", False) for rule in profile.get("metrics", {}).values()):
        return None, []
    past = [metric for metric, rule in profile.get("metrics", {}).items()
            if rule.get("enabled", False)
            and is_worse(scores[metric], rule["threshold"], rule.get("worse_when") or WORSE_WHEN[metric])]
    return bool(past), past
