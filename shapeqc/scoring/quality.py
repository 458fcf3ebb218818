"""How good a segmentation is: its Dice against a correct segmentation, predicted from what the analysis measured.

A flag says "look at this one"; a cohort study also needs "how wrong is it" to rank cases for review and to drop
organs from a volume analysis. The analysis knows the segmentation S and the prior's reconstruction R; if R were
the correct organ, Dice(S, R) would be the answer. It is not quite: the prior misses detail of clean organs (a
clean organ scores about 0.95-0.97, not 1) and partly follows a corruption. The estimator maps what the analysis
measured (:data:`QUALITY_FEATURES`) to the true Dice with a ridge regression fitted by the bundle's calibration on
its own clean held-out masks and seeded corruptions of them (true Dice known).

Its interval says only what was measured (issue 35). Real errors are not the calibration's corruptions, so the
residuals that size the interval are those of organs whose kind of error the fit never saw: each corrupted organ is
predicted by a fit without its corruption family and without its case (leave one family out, folds of cases), each
clean organ by a fit without its case. The half width is the target quantile (90%) of those residuals; the coverage
the interval *achieved* is then measured the same way one level up (each family judged by a half width sized
without it) and stored beside it: pages and reports print that measured figure ("covered 84% on unseen kinds of
error"), never the target. The same held-out predictions say whether the estimate ranks organs better than the raw
Dice(segmentation, reconstruction) does (Spearman); where it does not, the worklist sorts by the raw Dice
(``rank_by``).

The estimator is plain JSON inside the bundle's ``configs/thresholds.json`` (one per calibration profile,
versioned with the bundle): feature names, standardisation, coefficients, the interval's half width and its
measured coverage; and where a benchmark measured the interval on real model failures too
(``real_failures``, written by ``benchmarks/cross_source.py --record-coverage``), that coverage, of which the
weaker is shown. No pickle. Estimators of format 1 (before issue 35) still load; their interval's coverage is
reported as not measured.
"""

from __future__ import annotations

import math

import numpy as np

# (name, how it is computed): all bounded or tamed, so that a few extreme organs do not steer the fit
QUALITY_FEATURES = {
    "dice": "Dice(segmentation, reconstruction)",
    "over_fraction": "|segmentation outside the reconstruction| / |segmentation|",
    "under_fraction": "|reconstruction outside the segmentation| / |reconstruction|",
    "log_volume_ratio": "ln(|segmentation| / |reconstruction|), clipped to [-3, 3]",
    "log_asd": "ln(1 + ASD in mm), ASD capped at 100 mm",
}
ESTIMATOR_FORMAT = "shapeqc.dice_estimator/2"
FORMAT_1 = "shapeqc.dice_estimator/1"  # before issue 35: a nominal coverage from organs of unseen cases only
CLEAN = "clean"  # the family name of uncorrupted organs
UNSEEN_KINDS = "unseen kinds of error"  # what the measured coverage of a fit with corruption families is about
UNSEEN_CASES = "organs of unseen cases"  # ... of a fit without families
RANK_KEYS = {"predicted_dice": "the predicted Dice", "dice": "the raw Dice"}  # what a worklist may sort by


def quality_features(segmentation: np.ndarray, reconstruction: np.ndarray, scores: dict) -> dict[str, float]:
    """:data:`QUALITY_FEATURES` of one analysis: ``segmentation`` and ``reconstruction`` are (D, H, W) bool masks of
    one voxel grid (any box holding both organs), ``scores`` the analysis's scores (``dice``, ``asd_mm``)."""
    segmentation = np.asarray(segmentation, dtype=bool)
    reconstruction = np.asarray(reconstruction, dtype=bool)
    seg_voxels, rec_voxels = int(np.count_nonzero(segmentation)), int(np.count_nonzero(reconstruction))
    both = int(np.count_nonzero(segmentation & reconstruction))
    dice = scores.get("dice")
    asd = scores.get("asd_mm")
    return {
        "dice": float(dice) if dice is not None and math.isfinite(dice) else 0.0,
        "over_fraction": (seg_voxels - both) / seg_voxels if seg_voxels else 0.0,
        "under_fraction": (rec_voxels - both) / rec_voxels if rec_voxels else 1.0,
        "log_volume_ratio": float(np.clip(np.log(max(seg_voxels, 1) / max(rec_voxels, 1)), -3.0, 3.0)),
        "log_asd": math.log1p(min(float(asd), 100.0)) if asd is not None and math.isfinite(asd) else math.log1p(100.0),
    }


def _design(rows: list[dict], names: list[str], mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    values = np.array([[row[name] for name in names] for row in rows], dtype=np.float64)
    return np.c_[(values - mean) / scale, np.ones(len(values))]


def _ridge(rows: list[dict], target: np.ndarray, names: list[str], ridge: float) -> dict:
    values = np.array([[row[name] for name in names] for row in rows], dtype=np.float64)
    mean, scale = values.mean(axis=0), values.std(axis=0)
    scale[scale < 1e-9] = 1.0
    design = _design(rows, names, mean, scale)
    penalty = ridge * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    weights = np.linalg.solve(design.T @ design + penalty * len(rows), design.T @ target)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coefficients": weights[:-1].tolist(),
            "intercept": float(weights[-1])}


def _point(model: dict, rows: list[dict], names: list[str]) -> np.ndarray:
    design = _design(rows, names, np.asarray(model["mean"]), np.asarray(model["scale"]))
    return np.clip(design @ np.r_[model["coefficients"], model["intercept"]], 0.0, 1.0)


def _case_folds(groups: list[str], folds: int, seed: int) -> np.ndarray:
    """(N,) fold index of each organ: whole cases are assigned to ``folds`` folds in a ``seed``-ed order."""
    cases = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(cases))
    fold_of_case = {cases[index]: rank % min(folds, len(cases)) for rank, index in enumerate(order)}
    return np.array([fold_of_case[g] for g in groups])


def held_out_predictions(features: list[dict], true_dice: list[float], groups: list[str],
                         families: list[str] | None = None, folds: int = 5, seed: int = 0, ridge: float = 0.01,
                         names: tuple[str, ...] = tuple(QUALITY_FEATURES)) -> np.ndarray:
    """(N,) predicted Dice of each organ by a fit that saw neither its case nor, for a corrupted organ (``families``
    other than :data:`CLEAN`), its corruption family; without ``families`` by a fit without its case only."""
    target = np.asarray(true_dice, dtype=np.float64)
    fold = _case_folds(groups, folds, seed)
    family = np.array(families if families is not None else [CLEAN] * len(target))
    predicted = np.empty(len(target))
    for left_out in np.unique(family):
        for k in np.unique(fold):
            held = np.flatnonzero((fold == k) & (family == left_out))
            if not len(held):
                continue
            train = np.flatnonzero((fold != k) & ((family != left_out) | (left_out == CLEAN)))
            model = _ridge([features[i] for i in train], target[train], list(names), ridge)
            predicted[held] = _point(model, [features[i] for i in held], list(names))
    return predicted


def conformal_half_width(residuals: np.ndarray, coverage: float) -> float:
    """The finite-sample-corrected ``coverage`` quantile of absolute residuals (split conformal)."""
    ordered = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)))
    rank = min(len(ordered), math.ceil((len(ordered) + 1) * coverage)) - 1
    return float(ordered[rank])


def measured_coverage(residuals: np.ndarray, kinds: np.ndarray, coverage: float) -> tuple[float, dict[str, float]]:
    """How often the interval held the truth on kinds it was not sized on: each kind in ``kinds`` (a corruption
    family, or a fold of cases; :data:`CLEAN` organs only help size) judged with the half width
    :func:`conformal_half_width` of every other organ's residual. (pooled share, share per kind)."""
    residuals, kinds = np.abs(np.asarray(residuals, dtype=np.float64)), np.asarray(kinds)
    covered = {}
    inside = []
    for kind in [k for k in dict.fromkeys(kinds.tolist()) if k != CLEAN]:
        half = conformal_half_width(residuals[kinds != kind], coverage)
        hits = residuals[kinds == kind] <= half
        covered[str(kind)] = float(hits.mean())
        inside.append(hits)
    return (float(np.concatenate(inside).mean()) if inside else float("nan")), covered


def fit_dice_estimator(features: list[dict], true_dice: list[float], groups: list[str],
                       families: list[str] | None = None, coverage: float = 0.9, folds: int = 5, seed: int = 0,
                       ridge: float = 0.01, names: tuple[str, ...] = tuple(QUALITY_FEATURES)) -> dict:
    """Fit the estimator (JSON-ready dict) on ``features`` (one :func:`quality_features` dict per analysed organ),
    their ``true_dice``, ``groups`` (the clean case each organ was made from: one fold holds all of a case) and
    ``families`` (each organ's corruption family, :data:`CLEAN` for clean ones).

    ``coverage`` is the target: the half width is its conformal quantile over :func:`held_out_predictions`'
    residuals (with two or more corruption families: organs of unseen kinds of error; else of unseen cases), and
    ``measured_coverage`` what it achieved one level up (:func:`measured_coverage`; the module doc). ``rank_by``
    says whether the estimate (``predicted_dice``) or the raw Dice (``dice``) ranked the held-out organs better
    (Spearman against the true Dice). The same inputs and seed give the same estimator, bit for bit."""
    if len(features) != len(true_dice) or len(features) != len(groups):
        raise ValueError("features, true_dice and groups differ in length")
    if families is not None and len(families) != len(features):
        raise ValueError("families and features differ in length")
    cases = sorted(set(groups))
    if len(cases) < 2:
        raise ValueError(f"the estimator needs organs from at least 2 cases, got {len(cases)}")
    names = list(names)
    target = np.asarray(true_dice, dtype=np.float64)
    by_family = families is not None and len(set(families) - {CLEAN}) >= 2
    predicted = held_out_predictions(features, true_dice, groups, families if by_family else None, folds, seed,
                                     ridge, tuple(names))
    residuals = predicted - target
    half = conformal_half_width(residuals, coverage)
    kinds = np.array(families) if by_family else _case_folds(groups, folds, seed).astype(str)
    achieved, per_kind = measured_coverage(residuals, kinds, coverage)
    judged = np.array([k != CLEAN for k in kinds])  # the organs the measured figures are about
    raw = np.array([row.get("dice", 0.0) for row in features], dtype=np.float64)
    estimate = estimate_quality_metrics(predicted[judged].tolist(), target[judged].tolist(),
                                        np.maximum(predicted[judged] - half, 0.0).tolist(),
                                        np.minimum(predicted[judged] + half, 1.0).tolist())
    raw_metrics = estimate_quality_metrics(raw[judged].tolist(), target[judged].tolist())
    better = (estimate["spearman"] or -1.0) > (raw_metrics["spearman"] or -1.0)
    model = _ridge(features, target, names, ridge)
    return {"format": ESTIMATOR_FORMAT, "features": names, **model, "target_coverage": float(coverage),
            "half_width": half, "measured_coverage": round(achieved, 4),
            "coverage_basis": UNSEEN_KINDS if by_family else UNSEEN_CASES,
            "coverage_by_kind": {k: round(v, 4) for k, v in per_kind.items()},
            "rank_by": "predicted_dice" if better else "dice",
            "held_out": {"estimate": estimate, "raw_dice": raw_metrics},
            "fitted_on": len(features), "cases": len(cases), "seed": int(seed),
            "folds": int(min(folds, len(cases))), "ridge": float(ridge)}


def check_estimator(estimator: dict) -> dict:
    """``estimator`` if it is one this version reads (format 2, or 1 from before issue 35), else ValueError saying
    what is wrong."""
    if estimator.get("format") not in (ESTIMATOR_FORMAT, FORMAT_1):
        raise ValueError(f"quality estimator format {estimator.get('format')!r}, expected {ESTIMATOR_FORMAT!r}")
    names = estimator.get("features", [])
    unknown = [n for n in names if n not in QUALITY_FEATURES]
    if unknown:
        raise ValueError(f"quality estimator uses unknown features {unknown}")
    for key in ("mean", "scale", "coefficients"):
        if len(estimator.get(key, [])) != len(names):
            raise ValueError(f"quality estimator {key!r} has {len(estimator.get(key, []))} values for "
                             f"{len(names)} features")
    rates = (["coverage"] if estimator["format"] == FORMAT_1 else ["target_coverage", "measured_coverage"])
    # NaN or infinity would pass every comparison and abort a batch at its end (a JSON file may hold them)
    numbers = [*estimator["mean"], *estimator["scale"], *estimator["coefficients"],
               estimator.get("intercept"), estimator.get("half_width"), *(estimator.get(key) for key in rates)]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in numbers):
        raise ValueError("quality estimator holds a value that is not a finite number (NaN, infinity or missing)")
    if any(v == 0 for v in estimator["scale"]) or estimator["half_width"] < 0 \
            or not all(0 <= estimator[key] <= 1 for key in rates):
        raise ValueError("quality estimator has a zero scale, a negative half width or a coverage outside [0, 1]")
    if estimator["format"] == ESTIMATOR_FORMAT and estimator.get("rank_by") not in RANK_KEYS:
        raise ValueError(f"quality estimator rank_by {estimator.get('rank_by')!r}, expected one of {list(RANK_KEYS)}")
    real = estimator.get("real_failures")
    if real is not None:
        coverage, organs = real.get("coverage"), real.get("organs")
        if not (isinstance(coverage, (int, float)) and np.isfinite(coverage) and 0 <= coverage <= 1
                and isinstance(organs, int) and organs > 0 and isinstance(real.get("source"), str)):
            raise ValueError("quality estimator real_failures needs a coverage in [0, 1], organs > 0 and a source")
        if real.get("half_width") != estimator["half_width"]:
            raise ValueError("quality estimator real_failures was measured for another interval (half width "
                             f"{real.get('half_width')} against {estimator['half_width']}): measure it again")
    return estimator


def interval(predicted: float, half_width: float) -> list[float]:
    """[low, high] of a predicted Dice: ``predicted`` -/+ ``half_width`` clipped to [0, 1], rounded to 4 places."""
    return [round(max(0.0, predicted - half_width), 4), round(min(1.0, predicted + half_width), 4)]


def predict_quality(estimator: dict, features: dict) -> dict:
    """``{"predicted_dice", "interval": [low, high], "coverage", "coverage_basis", "rank_by"}`` for one organ's
    :func:`quality_features` (or any feature dict holding the estimator's features; a bundle's estimator is checked
    when the bundle loads). ``coverage`` is the share of held-out truths the interval held on ``coverage_basis``
    (measured, not the target); None for a format-1 estimator, whose coverage was never measured that way."""
    predicted = float(_point(estimator, [features], estimator["features"])[0])
    measured = estimator["format"] == ESTIMATOR_FORMAT
    coverage = estimator["measured_coverage"] if measured else None
    basis = estimator["coverage_basis"] if measured else None
    real = estimator.get("real_failures")
    if measured and real and real["coverage"] < coverage:  # the weaker of the two measurements is what holds
        coverage, basis = real["coverage"], f"real model failures ({real['organs']} organs)"
    return {"predicted_dice": round(predicted, 4),
            "interval": interval(predicted, estimator["half_width"]),
            "coverage": coverage, "coverage_basis": basis,
            "rank_by": estimator["rank_by"] if measured else "predicted_dice"}


def coverage_text(quality: dict | None) -> str:
    """What a record's interval is known to hold, for people: "covered 84% on unseen kinds of error", or "coverage
    not measured" (a format-1 estimator)."""
    quality = quality or {}
    if quality.get("coverage") is None:
        return "coverage not measured"
    return f"covered {quality['coverage']:.0%} on {quality.get('coverage_basis') or UNSEEN_CASES}"


def rank_value(record: dict) -> float:
    """The number a worklist sorts a judged record by, lowest first: its predicted Dice where its bundle's estimate
    ranked held-out organs better than the raw Dice (``rank_by``), else the raw Dice(segmentation,
    reconstruction); 0 when neither is known."""
    quality = record.get("quality") or {}
    value = quality.get("predicted_dice") if quality.get("rank_by", "predicted_dice") == "predicted_dice" else None
    if value is None:
        value = (record.get("scores") or {}).get("dice")
    return float(value) if value is not None and math.isfinite(value) else 0.0


def estimate_quality_metrics(predicted: list[float], true: list[float], low: list[float] | None = None,
                             high: list[float] | None = None) -> dict:
    """How well predicted Dice values match the true ones: Pearson r, Spearman rho, mean absolute error, and with
    intervals the fraction of true values inside them."""
    from scipy import stats

    predicted, true = np.asarray(predicted, dtype=float), np.asarray(true, dtype=float)
    varied = len(true) > 2 and np.ptp(predicted) > 0 and np.ptp(true) > 0
    out = {"organs": int(len(true)),
           "pearson_r": float(stats.pearsonr(predicted, true)[0]) if varied else None,
           "spearman": float(stats.spearmanr(predicted, true)[0]) if varied else None,
           "mae": float(np.abs(predicted - true).mean()) if len(true) else None}
    if low is not None and high is not None:
        out["interval_coverage"] = float(np.mean((np.asarray(low) <= true) & (true <= np.asarray(high))))
    return out
