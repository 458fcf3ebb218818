"""How good a segmentation is: its Dice against a correct segmentation, predicted from what the analysis measured.

A flag says "look at this one"; a cohort study also needs "how wrong is it" to rank cases for review and to drop
organs from a volume analysis. The analysis knows the segmentation S and the prior's reconstruction R; if R were
the correct organ, Dice(S, R) would be the answer. It is not quite: the prior misses detail of clean organs (a
clean organ scores about 0.95-0.97, not 1) and partly follows a corruption. The estimator maps what the analysis
measured (:data:`QUALITY_FEATURES`) to the true Dice with a ridge regression fitted by the bundle's calibration on
its own clean held-out masks and seeded corruptions of them (true Dice known), and gives an interval at a stated
coverage from out-of-fold residuals (cross-conformal: the folds group every corruption of one case, so the
residuals are those of organs the fit never saw).

The estimator is plain JSON inside the bundle's ``configs/thresholds.json`` (one per calibration profile,
versioned with the bundle): feature names, standardisation, coefficients, the interval's half width. No pickle.
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
ESTIMATOR_FORMAT = "shapeqc.dice_estimator/1"


def quality_features(segmentation: np.ndarray, reconstruction: np.ndarray, scores: dict) -> dict[str, float]:
    """:data:`QUALITY_FEATURES` of one analysis: ``segmentation`` and ``reconstruction`` are (D, H, W) bool masks of
    one voxel grid (any box holding both organs), ``scores`` the analysis's scores (``dice``, ``asd_mm``)."""
    segmentation = np.asarray(segmentation, dtype=bool)
    reconstruction = np.asarray(reconstruction, dtype=bool)
    seg_voxels, rec_voxels = int(segmentation.sum()), int(reconstruction.sum())
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


def out_of_fold_predictions(features: list[dict], true_dice: list[float], groups: list[str], folds: int = 5,
                            seed: int = 0, ridge: float = 0.01,
                            names: tuple[str, ...] = tuple(QUALITY_FEATURES)) -> np.ndarray:
    """(N,) predicted Dice of each organ by a fit on the folds that do not hold its case (:func:`fit_dice_estimator`
    explains the folds)."""
    cases = sorted(set(groups))
    target = np.asarray(true_dice, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(cases))
    fold_of_case = {cases[index]: rank % min(folds, len(cases)) for rank, index in enumerate(order)}
    fold = np.array([fold_of_case[g] for g in groups])
    predicted = np.empty(len(target))
    for k in np.unique(fold):
        train = np.flatnonzero(fold != k)
        model = _ridge([features[i] for i in train], target[train], list(names), ridge)
        held = np.flatnonzero(fold == k)
        predicted[held] = _point(model, [features[i] for i in held], list(names))
    return predicted


def fit_dice_estimator(features: list[dict], true_dice: list[float], groups: list[str], coverage: float = 0.9,
                       folds: int = 5, seed: int = 0, ridge: float = 0.01,
                       names: tuple[str, ...] = tuple(QUALITY_FEATURES)) -> dict:
    """Fit the estimator (JSON-ready dict) on ``features`` (one :func:`quality_features` dict per analysed organ),
    their ``true_dice`` and ``groups`` (the clean case each organ was made from: one fold holds all of a case).

    The interval's half width is the ``coverage`` quantile (finite-sample corrected) of the absolute out-of-fold
    residuals over ``folds`` folds of cases assigned with ``seed``: the same inputs and seed give the same
    estimator, bit for bit."""
    if len(features) != len(true_dice) or len(features) != len(groups):
        raise ValueError("features, true_dice and groups differ in length")
    cases = sorted(set(groups))
    if len(cases) < 2:
        raise ValueError(f"the estimator needs organs from at least 2 cases, got {len(cases)}")
    names = list(names)
    target = np.asarray(true_dice, dtype=np.float64)
    out_of_fold = out_of_fold_predictions(features, true_dice, groups, folds, seed, ridge, tuple(names))
    residuals = np.sort(np.abs(out_of_fold - target))
    rank = min(len(residuals), math.ceil((len(residuals) + 1) * coverage)) - 1
    model = _ridge(features, target, names, ridge)
    return {"format": ESTIMATOR_FORMAT, "features": names, **model, "coverage": float(coverage),
            "half_width": float(residuals[rank]), "fitted_on": len(features), "cases": len(cases),
            "seed": int(seed), "folds": int(min(folds, len(cases))), "ridge": float(ridge),
            "out_of_fold": estimate_quality_metrics(out_of_fold.tolist(), target.tolist())}


def check_estimator(estimator: dict) -> dict:
    """``estimator`` if it is one this version reads, else ValueError saying what is wrong."""
    if estimator.get("format") != ESTIMATOR_FORMAT:
        raise ValueError(f"quality estimator format {estimator.get('format')!r}, expected {ESTIMATOR_FORMAT!r}")
    names = estimator.get("features", [])
    unknown = [n for n in names if n not in QUALITY_FEATURES]
    if unknown:
        raise ValueError(f"quality estimator uses unknown features {unknown}")
    for key in ("mean", "scale", "coefficients"):
        if len(estimator.get(key, [])) != len(names):
            raise ValueError(f"quality estimator {key!r} has {len(estimator.get(key, []))} values for "
                             f"{len(names)} features")
    # NaN or infinity would pass every comparison and abort a batch at its end (a JSON file may hold them)
    numbers = [*estimator["mean"], *estimator["scale"], *estimator["coefficients"],
               estimator.get("intercept"), estimator.get("half_width"), estimator.get("coverage")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in numbers):
        raise ValueError("quality estimator holds a value that is not a finite number (NaN, infinity or missing)")
    if any(v == 0 for v in estimator["scale"]) or estimator["half_width"] < 0 or not 0 < estimator["coverage"] <= 1:
        raise ValueError("quality estimator has a zero scale, a negative half width or a coverage outside (0, 1]")
    return estimator


def predict_quality(estimator: dict, features: dict) -> dict:
    """``{"predicted_dice", "interval": [low, high], "coverage"}`` for one organ's :func:`quality_features` (or
    any feature dict holding the estimator's features; a bundle's estimator is checked when the bundle loads)."""
    predicted = float(_point(estimator, [features], estimator["features"])[0])
    half = estimator["half_width"]
    return {"predicted_dice": round(predicted, 4),
            "interval": [round(max(0.0, predicted - half), 4), round(min(1.0, predicted + half), 4)],
            "coverage": estimator["coverage"]}


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
