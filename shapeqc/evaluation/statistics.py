"""Statistics of the QC benchmark and the calibration: AUROC, oriented scores, combined scores, intervals, tables.

Definitions follow the libraries where they are the same: AUROC is MONAI's ``compute_roc_auc`` (the Mann-Whitney
U statistic, ties counted half), the false-positive rate's interval is scipy's Wilson interval
(``binomtest(...).proportion_ci(method="wilson")``), correlations are scipy's. A method's threshold in the tables
is its 95th percentile of badness on the clean cases (5% false positives), as the calibration's quantile rule
(:func:`shapeqc.scoring.thresholds.threshold_at`) sets the shipped one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shapeqc.evaluation.protocol import SCORED
from shapeqc.scoring.roc import auroc, wilson_interval
from shapeqc.scoring.thresholds import badness, is_worse

# scores made of two scored ones, each put on the scale of its own clean cases (median -> 0, 95th percentile -> 1)
# and the larger taken: flagged when either part is past its 5% cut. Fixed before looking at corrupted cases.
COMBINED = {"shapeqc_dice_or_B": ("shapeqc_dice", "B_descriptors")}
METHODS = (*SCORED, *COMBINED)


def worse_when(method: str) -> str:
    """Which way a benchmark method's score is worse (:func:`shapeqc.scoring.thresholds.badness` orients it):
    shapeqc's Dice falls, every other score grows."""
    return "below" if method == "shapeqc_dice" else "above"


def method_badness(method: str, values) -> np.ndarray:
    """A benchmark method's scores (N,) with larger = worse (:func:`shapeqc.scoring.thresholds.badness`)."""
    return badness(method, values, worse_when(method))


def clean_scale(method: str, reference: list[dict]) -> tuple[float, float]:
    """(median, 95th percentile - median) of ``method``'s badness over the finite clean scores ``reference``."""
    values = method_badness(method, [s[method] for s in reference])
    values = values[np.isfinite(values)]
    median = float(np.median(values))
    return median, max(float(np.quantile(values, 0.95)) - median, 1e-9)


def add_combined_scores(clean_scores: list[dict], corrupted_scores: list[dict]) -> None:
    """Adds each :data:`COMBINED` score to every score dict, in place. Cross-fitted: a clean case is put on the
    scale of the other clean cases (leave one out), so that its own score does not set the scale it is judged by;
    a corrupted case on the scale of all clean cases. Larger means more likely wrong."""
    def combined(parts, scores, scales):
        return max((method_badness(m, [scores[m]])[0] - scales[m][0]) / scales[m][1] for m in parts)

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


def shipped_profile(bundle_dir: str | Path, spacing: list[float] | None, required: bool = True) -> dict | None:
    """The threshold profile of ``bundle_dir/configs/thresholds.json`` that applies to the benchmark's masks:
    ``spacing`` None, the masks as given (:func:`shapeqc.scoring.thresholds.select_profile` with ``as_given``);
    else masks re-sliced at ``spacing`` mm with a seeded tilt (oblique). Without one: ValueError naming the folder,
    or None if not ``required``."""
    from shapeqc.scoring.thresholds import load_thresholds, select_profile

    profile = select_profile(load_thresholds(bundle_dir), tuple(spacing) if spacing else (1.0, 1.0, 1.0),
                             oblique=bool(spacing), as_given=spacing is None)
    if profile is None and required:
        raise ValueError(f"{bundle_dir}: no configs/thresholds.json; calibrate the bundle first")
    return profile


def shipped_fields(profile: dict | None) -> dict:
    """The run's ``threshold_profile``, ``shipped_dice_threshold`` and the calibration's own figures for it (its
    clean cases and the leave-one-out false-positive rate of its Dice threshold) from a :func:`shipped_profile`
    (None without one, or for a calibration written before it recorded them: those figures are then left out)."""
    dice = profile["metrics"]["dice"] if profile else {}
    return {"threshold_profile": profile.get("spacing_mm") if profile else None,
            "shipped_dice_threshold": dice.get("threshold"),
            "calibration_clean_cases": profile.get("clean_cases") if profile else None,
            "calibration_leave_one_out_fpr": dice.get("leave_one_out_fpr"),
            # a calibration on several sources: each source's clean cases and leave-one-out rate
            "calibration_clean_cases_by_source": profile.get("clean_cases_by_source") if profile else None,
            "calibration_leave_one_out_fpr_by_source": dice.get("leave_one_out_fpr_by_source"),
            "shipped_quality_estimator": profile.get("quality_estimator") if profile else None}


def _estimation_rows(scored: dict) -> list[dict]:
    """Every judged clean (true Dice 1) and corrupted case with its quality features, as rows for the estimator."""
    rows = [{"family": "clean", "case": c["case"], "true_dice": 1.0, "scores": c["scores"]}
            for c in scored["clean_scores"]]
    rows += [{"family": c["family"], "case": c["case"], "true_dice": c["true_dice"], "scores": c["scores"]}
             for c in scored["corrupted_scores"]]
    return [r for r in rows if r["scores"].get("quality_features") and np.isfinite(r["scores"]["shapeqc_dice"])]


def dice_estimation(scored: dict, estimator: dict | None = None, coverage: float = 0.9, seed: int = 0) -> dict:
    """The predicted Dice judged on corruption families it was not fitted on (issue 22): for each family F, the
    estimator (:func:`shapeqc.scoring.quality.fit_dice_estimator`) is fitted on the clean cases and every other family
    and predicts F's cases. Reported over all families' held-out predictions: Pearson r, Spearman, MAE and the
    interval's coverage, against the raw Dice(input, reconstruction) and against baseline B (shape descriptors'
    Mahalanobis distance) regressed the same way; and per family the outlier AUROC with the estimate as the score
    (clean cases predicted out of fold, by whole cases) beside the raw Dice's. With ``estimator`` (the bundle's
    shipped one, fitted by its calibration), its predictions of every corrupted case too. {} without features
    (a run from before they were stored). Every prediction comes from a model that saw neither the family nor the
    case (folds of cases inside each left-out family)."""
    from shapeqc.scoring.quality import estimate_quality_metrics, fit_dice_estimator, predict_quality

    rows = _estimation_rows(scored)
    families = sorted({r["family"] for r in rows} - {"clean"})
    if len({r["case"] for r in rows}) < 3 or not families:
        return {}
    b_rows = [{"log_b": float(np.log1p(min(max(r["scores"]["B_descriptors"], 0.0), 1e6)))} for r in rows]
    features = [r["scores"]["quality_features"] for r in rows]
    truth = np.array([r["true_dice"] for r in rows])
    groups = [r["case"] for r in rows]
    is_family = {f: np.array([r["family"] == f for r in rows]) for f in families}
    clean = np.array([r["family"] == "clean" for r in rows])
    held = {"estimate": np.empty(len(rows)), "low": np.empty(len(rows)), "high": np.empty(len(rows)),
            "baseline_B": np.empty(len(rows))}
    auroc_rows = {}
    raw = np.array([r["scores"]["shapeqc_dice"] for r in rows])
    cases = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(cases))
    fold_of_case = {cases[i]: rank % min(5, len(cases)) for rank, i in enumerate(order)}
    fold = np.array([fold_of_case[g] for g in groups])
    for family in families:
        # each fold's model is fitted without the family and without the fold's cases, and predicts both the
        # family's cases and the clean organs of the fold's cases: positives and negatives from the same models
        clean_predicted = np.empty(len(rows))
        for k in np.unique(fold):
            train = ~is_family[family] & (fold != k)
            train_groups = [g for g, keep in zip(groups, train, strict=True) if keep]
            # the estimator as the product fits it: its interval sized on the training families left out in turn
            train_families = [r["family"] for r, keep in zip(rows, train, strict=True) if keep]
            fitted = fit_dice_estimator([x for x, keep in zip(features, train, strict=True) if keep],
                                        truth[train].tolist(), train_groups, train_families, coverage=coverage,
                                        seed=seed)
            b_fitted = fit_dice_estimator([x for x, keep in zip(b_rows, train, strict=True) if keep],
                                          truth[train].tolist(), train_groups, train_families, coverage=coverage,
                                          seed=seed, names=("log_b",))
            for index in np.flatnonzero((fold == k) & (is_family[family] | clean)):
                quality = predict_quality(fitted, features[index])
                if clean[index]:
                    clean_predicted[index] = quality["predicted_dice"]
                    continue
                held["estimate"][index] = quality["predicted_dice"]
                held["low"][index], held["high"][index] = quality["interval"]
                held["baseline_B"][index] = predict_quality(b_fitted, b_rows[index])["predicted_dice"]
        auroc_rows[family] = {"cases": int(is_family[family].sum()),
                              "raw_dice": auroc(-raw[is_family[family]], -raw[clean]),
                              "predicted_dice": auroc(-held["estimate"][is_family[family]],
                                                      -clean_predicted[clean])}
    corrupted = ~clean
    raw = np.array([r["scores"]["shapeqc_dice"] for r in rows])
    result = {
        "protocol": "leave one family out: fitted on the clean cases and the other families of the other cases "
                    f"(5 folds of cases), judged on the left-out family; {coverage:.0%} interval; "
                    f"{len(families)} families",
        "families": families, "true_dice_range": [float(truth[corrupted].min()), float(truth[corrupted].max())],
        "estimate": estimate_quality_metrics(held["estimate"][corrupted], truth[corrupted],
                                             held["low"][corrupted], held["high"][corrupted]),
        "raw_dice": estimate_quality_metrics(raw[corrupted], truth[corrupted]),
        "baseline_B_regressed": estimate_quality_metrics(held["baseline_B"][corrupted], truth[corrupted]),
        "outlier_auroc": auroc_rows,
        "outlier_auroc_family_mean": {key: float(np.mean([a[key] for a in auroc_rows.values()]))
                                      for key in ("raw_dice", "predicted_dice")},
    }
    if estimator:
        shipped = [predict_quality(estimator, features[i]) for i in np.flatnonzero(corrupted)]
        result["shipped_estimator"] = estimate_quality_metrics(
            [q["predicted_dice"] for q in shipped], truth[corrupted], [q["interval"][0] for q in shipped],
            [q["interval"][1] for q in shipped])
    other = other_rater_estimation(scored, rows, features, truth, groups, estimator, coverage, seed)
    if other:
        result["other_rater"] = other
    return result


def other_rater_estimation(scored: dict, rows: list[dict], features: list[dict], truth: np.ndarray,
                           groups: list[str], estimator: dict | None, coverage: float, seed: int) -> dict:
    """The predicted Dice of another rater's real masks (``scored["plausible_true_dice"]``, see
    :func:`shapeqc.evaluation.protocol.other_rater_true_dice`): an estimator fitted on every clean and corrupted
    case of the run, and the bundle's shipped one, against the raw Dice. {} without such masks."""
    from shapeqc.scoring.quality import estimate_quality_metrics, fit_dice_estimator, predict_quality

    true_dice = scored.get("plausible_true_dice") or {}
    judged = [p for p in scored.get("plausible_scores", []) if p["case"] in true_dice
              and p["scores"].get("quality_features") and np.isfinite(p["scores"]["shapeqc_dice"])]
    if len(judged) < 3:
        return {}
    fitted = fit_dice_estimator(features, truth.tolist(), groups, [r["family"] for r in rows], coverage=coverage,
                                seed=seed)
    target = [true_dice[p["case"]] for p in judged]
    predicted = [predict_quality(fitted, p["scores"]["quality_features"]) for p in judged]
    other = {"cases": len(judged), "true_dice_range": [float(min(target)), float(max(target))],
             "estimate": estimate_quality_metrics([q["predicted_dice"] for q in predicted], target,
                                                  [q["interval"][0] for q in predicted],
                                                  [q["interval"][1] for q in predicted]),
             "raw_dice": estimate_quality_metrics([p["scores"]["shapeqc_dice"] for p in judged], target)}
    if estimator:
        shipped = [predict_quality(estimator, p["scores"]["quality_features"]) for p in judged]
        other["shipped_estimator"] = estimate_quality_metrics(
            [q["predicted_dice"] for q in shipped], target, [q["interval"][0] for q in shipped],
            [q["interval"][1] for q in shipped])
    return other


def tabulate(scored: dict) -> dict:
    """Per family and severity, overall and quality-estimation summaries of :func:`score_run`'s scores (also of a
    stored run's, ``--rescore``), with the :data:`COMBINED` scores added to every case."""
    from scipy import stats


    cases, shipped = scored["corrupted_scores"], scored["shipped_dice_threshold"]
    clean_scores = [c["scores"] for c in scored["clean_scores"]]
    plausible_scores = [c["scores"] for c in scored["plausible_scores"]]
    add_combined_scores(clean_scores, [c["scores"] for c in cases] + plausible_scores)
    cut = {m: np.quantile(method_badness(m, [s[m] for s in clean_scores]), 0.95) for m in METHODS}

    def below_shipped(scores: list[dict]) -> float | None:
        """Fraction of ``scores`` whose Dice falls below the shipped threshold (None: no threshold known)."""
        return None if shipped is None else float(np.mean(is_worse(np.array([s["shapeqc_dice"] for s in scores]),
                                                                   shipped, "below")))

    clean_fpr_shipped = below_shipped(clean_scores)

    def summary(selected: list[dict]) -> dict:
        row = {"cases": len(selected), "volume_change": float(np.median([c["volume_change"] for c in selected]))}
        for method in METHODS:
            positives = method_badness(method, [c["scores"][method] for c in selected])
            negatives = method_badness(method, [s[method] for s in clean_scores])
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
            values = method_badness(method, [s[method] for s in plausible_scores])
            other[method] = {"fpr": float(np.mean(values > cut[method])),
                             "auroc_vs_clean": auroc(values, method_badness(method, [s[method] for s in clean_scores]))}
    return {key: scored[key] for key in ("bundle", "command", "spacing_mm", "threshold_profile")} | {
        "clean_cases": len(clean_scores), "corrupted_cases": len(cases), "plausible_set": other,
        "trained_families": scored["trained_families"], "train_masks": scored["train_masks"],
        "skipped_cases": scored.get("skipped_cases", 0),
        "shipped_dice_threshold": shipped, "clean_fpr_at_shipped_threshold": clean_fpr_shipped,
        "clean_fpr_interval_95": (None if clean_fpr_shipped is None else wilson_interval(
            round(clean_fpr_shipped * len(clean_scores)), len(clean_scores))),
        **{key: scored[key] for key in ("calibration_clean_cases", "calibration_leave_one_out_fpr",
                                        "swap_organ_from")},
        **{key: scored.get(key) for key in ("calibration_clean_cases_by_source",
                                            "calibration_leave_one_out_fpr_by_source")},
        "families": table, "overall": overall, "family_mean_moderate": family_mean,
        "family_mean_moderate_without_organ_swap": family_mean_earlier,
        "quality_estimation": estimation,
        "dice_estimation": dice_estimation(scored, scored.get("shipped_quality_estimator")),
        "plausible_true_dice": scored.get("plausible_true_dice") or {},
        "seconds": scored["seconds"],
        **{key: scored[key] for key in ("clean_scores", "corrupted_scores", "plausible_scores", "rescored")
           if key in scored}}
