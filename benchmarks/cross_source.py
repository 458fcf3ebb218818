"""Cross-source figures of a bundle (issue 31): how its shipped profile does on real masks of sources it was not
trained or calibrated on, and on real model failures.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cross_source.py --bundle bundles/kidney \
        --out bundles/kidney/docs/cross_source [--good-sample 40]

Sources (read-only from ../shared/data; nothing is copied into the repository):

- **clean, second source**: ``evalseg_multiorgan/gt`` (9 expert abdominal label maps, another annotation team:
  spleen, left kidney, liver) and ``totalsegmentator_example`` (TotalSegmentator's ``--fast`` output of its
  example CT, 3 mm).
  Figure: false-positive rate with its 95% Wilson interval.
- **real predictions**: ``evalseg_multiorgan/pred`` (31 working models x 9 CTs; GDice and pGDice are left out:
  they collapsed, with empty organs in every subject). The true Dice of each prediction to the expert label is
  ``index.csv``'s ``dice_to_gt``. Figures: AUROC of shapeqc's score (1 - Dice of segmentation and
  reconstruction; an organ analysis refused, e.g. an empty prediction, counts as worst) for true Dice below the
  failure line (0.90); the share of those failures flagged (status outlier or error); the flag rate among
  predictions with true Dice >= 0.95; the predicted Dice's Pearson r, Spearman rho and MAE against the true Dice,
  beside the raw Dice's (segmentation vs reconstruction taken as the estimate).
- **cohort profile** (:mod:`shapeqc.runs.cohort_calibration`): the same predictions judged against a threshold fitted
  on their own scores at 5%, to compare with the shipped profile.

``--good-sample N`` analyses every prediction with true Dice < 0.95 and a seeded sample of N of the rest per
organ (each stratum's rates are unbiased; AUROC too, as it compares the strata), to keep a run short on a CPU.
The cohort profile is then fitted on every stratum weighted back to the full set (each sampled good prediction
stands for total / sampled of its stratum).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from shapeqc.scoring.quality import interval
from shapeqc.scoring.thresholds import load_thresholds

ROOT = Path(__file__).resolve().parents[1]
EVALSEG = "evalseg_multiorgan"
TOTALSEG = "totalsegmentator_example"
# evalseg label of each organ a shipped bundle covers (its README: 1 spleen, 3 left kidney, 6 liver)
EVALSEG_LABELS = {"spleen": 1, "kidney_left": 3, "liver": 6}
COLLAPSED_MODELS = ("GDice", "pGDice")
FAILURE_LINE = 0.90
GOOD_LINE = 0.95
PREDICTION = "evalseg prediction"  # the source of rows of trained models' predictions
CLEAN_LABELS = {"evalseg gt": "evalseg gt (expert, 0.7-1 mm)"}  # table labels of clean sources


def evalseg_rows(dataset_dir: Path, organs: list[str]) -> list[dict]:
    """index.csv's rows of the bundle's organs: (subject, source, organ, true Dice or None for gt)."""
    names = {label: organ for organ, label in EVALSEG_LABELS.items() if organ in organs}
    rows = []
    with open(dataset_dir / EVALSEG / "index.csv") as handle:
        for row in csv.DictReader(handle):
            organ = names.get(int(row["label"]))
            if organ is None or row["source"] in COLLAPSED_MODELS:
                continue
            rows.append({"subject": row["subject"], "source": row["source"], "organ": organ,
                         "label": int(row["label"]), "voxels": int(row["voxels"]),
                         "true_dice": float(row["dice_to_gt"]) if row["dice_to_gt"] else None})
    return rows


def sampled(rows: list[dict], good_sample: int | None, seed: int = 0) -> tuple[list[dict], dict[str, float]]:
    """(predictions to analyse, weight of a sampled good prediction per organ): all below :data:`GOOD_LINE`, and
    ``good_sample`` of the rest per organ (all without a sample size)."""
    predictions = [r for r in rows if r["source"] != "gt"]
    if good_sample is None:
        return predictions, {}
    rng = np.random.default_rng(seed)
    chosen, weights = [], {}
    for organ in sorted({r["organ"] for r in predictions}):
        bad = [r for r in predictions if r["organ"] == organ and r["true_dice"] < GOOD_LINE]
        good = [r for r in predictions if r["organ"] == organ and r["true_dice"] >= GOOD_LINE]
        keep = sorted(rng.choice(len(good), size=min(good_sample, len(good)), replace=False).tolist())
        chosen += bad + [good[i] for i in keep]
        weights[organ] = len(good) / max(len(keep), 1)
    return chosen, weights


def analyse_mask(bundle, mask: np.ndarray, affine: np.ndarray, organ: str, case: str, scratch: Path) -> dict:
    """shapeqc's record of one binary mask (written to a scratch NIfTI, analysed as a user's file would be)."""
    from shapeqc.judging.analysis import analyse_organ
    from shapeqc.transforms.volume_io import write_volume

    path = write_volume(scratch / "mask.nii.gz", mask.astype(np.uint8), affine)
    return analyse_organ(str(path), organ, bundle, None, case)


def summary_row(record: dict) -> dict:
    scores = record.get("scores") or {}
    quality = record.get("quality") or {}
    return {"status": record["status"], "reason": record.get("reason"), "shapeqc_dice": scores.get("dice"),
            "predicted_dice": quality.get("predicted_dice"), "interval": quality.get("interval"),
            "profile": (record.get("thresholds") or {}).get("data"),
            # which of the bundle's profiles judged it: --rescore re-sizes the interval with that profile's estimator
            "profile_spacing": (record.get("thresholds") or {}).get("spacing_mm"), "seconds": record.get("seconds")}


def resize_intervals(rows: list[dict], bundle_dir: Path) -> dict[str, float]:
    """Give every row with a predicted Dice the interval of the bundle's current estimator of its profile
    (``predicted ± half width``, clipped to [0, 1]): after :func:`shapeqc.calibration.profiles.refit_quality` re-sized
    the intervals of an unchanged fit, the stored point estimates stand and only the intervals move. Returns each
    profile's half width used (by spacing)."""
    estimators = {str(p["spacing_mm"]): p.get("quality_estimator")
                  for p in (load_thresholds(bundle_dir) or {}).get("profiles", [])}
    used = {}
    for row in rows:
        estimator = estimators.get(str(row.get("profile_spacing")))
        if row["predicted_dice"] is None or not estimator:
            continue
        used[str(row["profile_spacing"])] = estimator["half_width"]
        row["interval"] = interval(row["predicted_dice"], estimator["half_width"])
        row["rank_by"] = estimator.get("rank_by", "predicted_dice")
    return used


def flagged(row: dict) -> bool:
    return row["status"] in ("outlier", "error")


def clean_summary(rows: list[dict]) -> dict:
    from shapeqc.scoring.roc import wilson_interval

    judged = [r for r in rows if r["status"] != "not_judged"]
    count = sum(flagged(r) for r in judged)
    low, high = wilson_interval(count, len(judged))
    dice = [r["shapeqc_dice"] for r in judged if r["shapeqc_dice"] is not None]
    return {"organs": len(judged), "not_judged": len(rows) - len(judged), "flagged": count,
            "fpr": count / len(judged) if judged else None, "fpr_interval": [low, high],
            "median_shapeqc_dice": float(np.median(dice)) if dice else None}


def prediction_summary(rows: list[dict], weight: float | None, target_rate: float = 0.05) -> dict:
    """AUROC, detection, good-flag rate, estimate vs raw Dice, and the cohort profile's rates (see module doc)."""
    from scipy.stats import pearsonr, spearmanr

    from shapeqc.judging.analysis import implausible_reason
    from shapeqc.runs.cohort_calibration import fit_cohort_threshold
    from shapeqc.scoring.roc import auroc

    def badness(row):
        return 1.0 - row["shapeqc_dice"] if row["shapeqc_dice"] is not None else 2.0

    failures = [r for r in rows if r["true_dice"] < FAILURE_LINE]
    good = [r for r in rows if r["true_dice"] >= GOOD_LINE]
    rest = [r for r in rows if r not in failures]
    out = {"predictions": len(rows), "failures": len(failures), "good": len(good),
           "auroc": auroc([badness(r) for r in failures], [badness(r) for r in rest]) if failures and rest else None,
           "failures_flagged": float(np.mean([flagged(r) for r in failures])) if failures else None,
           "good_flagged": float(np.mean([flagged(r) for r in good])) if good else None}
    estimated = [r for r in rows if r["predicted_dice"] is not None]
    if len(estimated) >= 3:
        truth = np.array([r["true_dice"] for r in estimated])
        for name, key in (("estimate", "predicted_dice"), ("raw_dice", "shapeqc_dice")):
            value = np.array([r[key] for r in estimated])
            out[name] = {"pearson_r": float(pearsonr(value, truth)[0]), "spearman": float(spearmanr(value, truth)[0]),
                         "mae": float(np.mean(np.abs(value - truth)))}
        inside = [r["interval"][0] <= r["true_dice"] <= r["interval"][1] for r in estimated if r["interval"]]
        out["interval_coverage"] = float(np.mean(inside)) if inside else None
        ranked = {r.get("rank_by") for r in estimated} - {None}
        if len(ranked) == 1:
            out["rank_by"] = ranked.pop()
    scored = [r for r in rows if r["shapeqc_dice"] is not None]
    if len(scored) >= 10:
        # weight the sampled good stratum back to its full size before fitting (module doc)
        repeat = [max(1, round(weight)) if weight and r["true_dice"] >= GOOD_LINE else 1 for r in scored]
        fit = fit_cohort_threshold(np.repeat([r["shapeqc_dice"] for r in scored], repeat), target_rate)

        def cohort_flag(row):
            # the rule shapeqc.runs.cohort_calibration re-judges a run by: below the cohort's threshold, or implausible
            return row["shapeqc_dice"] is None or row["shapeqc_dice"] < fit["threshold"] \
                or implausible_reason(row) is not None

        out["cohort"] = {"threshold": fit["threshold"], "set_aside": fit["set_aside"],
                         "failures_flagged": float(np.mean([cohort_flag(r) for r in failures])) if failures else None,
                         "good_flagged": float(np.mean([cohort_flag(r) for r in good])) if good else None}
    return out


def summarise(results: dict, weights: dict) -> dict:
    """``results["clean"]`` (per clean source) and ``results["predictions"]`` (per organ) from ``results["rows"]``;
    ``weights``: per organ, how many good predictions each sampled one stands for (:func:`sampled`)."""
    rows = results["rows"]
    results["clean"] = {CLEAN_LABELS.get(source, source): clean_summary([r for r in rows if r["source"] == source])
                        for source in dict.fromkeys(r["source"] for r in rows if r["source"] != PREDICTION)}
    predictions = [r for r in rows if r["source"] == PREDICTION]
    results["predictions"] = {organ: prediction_summary([r for r in predictions if r["organ"] == organ],
                                                        weights.get(organ))
                              for organ in dict.fromkeys(r["organ"] for r in predictions)}
    return results


def run(bundle_dir: Path, dataset_dir: Path, good_sample: int | None, out_dir: Path | None,
        limit: int | None = None) -> dict:
    from shapeqc.bundle.loading import load_bundle

    bundle = load_bundle(bundle_dir)
    organs = list(bundle.organs)
    results: dict = {"bundle": bundle.name, "version": bundle.metadata.get("version"), "digest": bundle.digest,
                     "clean": {}, "predictions": {}, "rows": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        # clean second sources
        index = evalseg_rows(dataset_dir, organs)
        clean_rows: dict[str, list[dict]] = {}
        for item in [r for r in index if r["source"] == "gt"][:limit]:
            image = nib.load(dataset_dir / EVALSEG / "gt" / f"{item['subject']}.nii.gz")
            mask = np.asarray(image.dataobj) == item["label"]
            row = {"source": "evalseg gt", "case": item["subject"], "organ": item["organ"], "true_dice": 1.0,
                   **summary_row(analyse_mask(bundle, mask, image.affine, item["organ"], item["subject"], scratch))}
            clean_rows.setdefault("evalseg gt", []).append(row)
        totalseg = dataset_dir / TOTALSEG
        for organ in organs:
            # TotalSegmentator's own --fast output of its example CT (3 mm)
            for path in sorted((totalseg / "reference" / "example_seg_fast").glob(f"{organ}.nii.gz")):
                image = nib.load(path)
                mask = np.asarray(image.dataobj) > 0
                if not mask.any():
                    continue
                row = {"source": "TotalSegmentator example", "case": str(path.relative_to(totalseg)),
                       "organ": organ, "true_dice": 1.0,
                       **summary_row(analyse_mask(bundle, mask, image.affine, organ, path.stem, scratch))}
                clean_rows.setdefault("TotalSegmentator example", []).append(row)
        for rows in clean_rows.values():
            results["rows"] += rows
        # real predictions
        predictions, weights = sampled(index, good_sample)
        predictions = predictions[:limit] if limit else predictions
        label_maps: dict = {}
        for number, item in enumerate(predictions, 1):
            path = dataset_dir / EVALSEG / "pred" / item["source"] / f"{item['subject']}.nii.gz"
            if path not in label_maps:
                label_maps = {path: nib.load(path)}  # one model's map at a time: memory stays small
            image = label_maps[path]
            mask = np.asarray(image.dataobj) == item["label"]
            case = f"{item['source']}/{item['subject']}"
            row = {"source": PREDICTION, "case": case, "organ": item["organ"],
                   "true_dice": item["true_dice"],
                   **summary_row(analyse_mask(bundle, mask, image.affine, item["organ"], case, scratch))}
            results["rows"].append(row)
            if number % 20 == 0:
                print(f"  {number}/{len(predictions)} predictions, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
    summarise(results, weights)
    results["good_sample"] = good_sample
    results["seconds"] = time.perf_counter() - started
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "cross_source.json").write_text(json.dumps(results, indent=1))
        (out_dir / "cross_source.md").write_text(markdown(results))
    return results


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(results: dict) -> str:
    lines = [f"Cross-source figures of `{results['bundle']}` {results['version']} (shipped profile; "
             f"`benchmarks/cross_source.py`, {results['seconds'] / 60:.0f} min on one CPU thread"
             + (f", {results['good_sample']} good predictions sampled per organ" if results["good_sample"] else "")
             + ")", "", "| clean source | organs | flagged | FPR (95% interval) | median shapeqc Dice |",
             "|---|---|---|---|---|"]
    for source, row in results["clean"].items():
        low, high = row["fpr_interval"]
        median = "-" if row["median_shapeqc_dice"] is None else f"{row['median_shapeqc_dice']:.3f}"
        lines.append(f"| {source} | {row['organs']} (+{row['not_judged']} not judged) | {row['flagged']} "
                     f"| {percent(row['fpr'])} ({percent(low)}-{percent(high)}) | {median} |")
    lines += ["", "| evalseg predictions | n | true Dice < 0.90 | AUROC | failures flagged | flagged among >= 0.95 "
              "| cohort profile: failures / >= 0.95 flagged | estimate r / rho / MAE | raw Dice r / rho / MAE "
              "| interval coverage |", "|---|---|---|---|---|---|---|---|---|---|"]
    for organ, row in results["predictions"].items():
        cohort = row.get("cohort") or {}
        estimate, raw = row.get("estimate") or {}, row.get("raw_dice") or {}

        def trio(values):
            return " / ".join(f"{values[k]:.2f}" for k in ("pearson_r", "spearman", "mae")) if values else "-"

        auc = "-" if row["auroc"] is None else f"{row['auroc']:.3f}"
        lines.append(f"| {organ} | {row['predictions']} | {row['failures']} | {auc} "
                     f"| {percent(row['failures_flagged'])} | {percent(row['good_flagged'])} "
                     f"| {percent(cohort.get('failures_flagged'))} / {percent(cohort.get('good_flagged'))} "
                     f"| {trio(estimate)} | {trio(raw)} | {percent(row.get('interval_coverage'))} |")
    for organ, row in results["predictions"].items():
        if row.get("estimate") and row.get("rank_by"):
            estimate, raw = row["estimate"], row["raw_dice"]
            sorted_by = "the predicted" if row["rank_by"] == "predicted_dice" else "the raw"
            ranks = "estimate" if estimate["spearman"] > raw["spearman"] else "raw Dice"
            closer = "estimate" if estimate["mae"] < raw["mae"] else "raw Dice"
            lines.append(f"\n{organ}: the worklist sorts by {sorted_by} Dice (the bundle's rank_by, decided on unseen "
                         f"kinds of error); on these real failures the {ranks} ranks better (Spearman "
                         f"{estimate['spearman']:.2f} vs {raw['spearman']:.2f}) and the {closer} is the closer value "
                         f"(MAE {estimate['mae']:.3f} vs {raw['mae']:.3f}).")
    if results.get("interval_half_widths"):
        lines.append("\nIntervals: the bundle's current estimator per profile (half width "
                     + ", ".join(f"{'as given' if k == 'None' else k} mm: {v:.3f}"
                                 for k, v in results["interval_half_widths"].items()) + ").")
    return "\n".join(lines) + "\n"


def record_coverage(results: dict, bundle_dir: Path) -> dict[str, dict]:
    """Store, in the bundle's ``configs/thresholds.json``, the interval coverage its real-failure rows measured
    per profile (``quality_estimator.real_failures``: what :func:`shapeqc.scoring.quality.predict_quality` then shows
    where it is lower than the coverage on unseen kinds of error). Only for rows whose intervals are the current
    estimator's (a full run, or ``--rescore --resize-intervals``). Returns what was written, by profile."""
    path = bundle_dir / "configs" / "thresholds.json"
    thresholds = json.loads(path.read_text())
    written = {}
    for profile in thresholds["profiles"]:
        estimator = profile.get("quality_estimator")
        rows = [r for r in results["rows"] if r["source"] == PREDICTION and r["predicted_dice"] is not None
                and str(r.get("profile_spacing")) == str(profile["spacing_mm"])]
        if not estimator or not rows:
            continue
        half = estimator["half_width"]
        # the stored point estimates are rounded to 4 places: an interval recomputed from them may differ by 1e-4
        if any(np.abs(np.subtract(r["interval"], interval(r["predicted_dice"], half))).max() > 2e-4 for r in rows):
            raise SystemExit(f"the stored intervals are not those of {path}'s estimator: run with "
                             "--rescore --resize-intervals first")
        inside = [r["interval"][0] <= r["true_dice"] <= r["interval"][1] for r in rows]
        estimator["real_failures"] = {
            "source": f"{EVALSEG}: expert labels and {len({r['case'].split('/')[0] for r in rows})} trained models' "
                      "predictions (benchmarks/cross_source.py)",
            "organs": len(rows), "coverage": round(float(np.mean(inside)), 4), "half_width": half}
        written[str(profile["spacing_mm"])] = estimator["real_failures"]
    path.write_text(json.dumps(thresholds, indent=1) + "\n")
    return written


def rescore(out_dir: Path, dataset_dir: Path, bundle_dir: Path | None = None) -> dict:
    """The summaries of a stored run (``out_dir/cross_source.json``) recomputed from its rows, without analysing
    anything again (after a change of a summary or of the cohort rule); with ``bundle_dir``, the intervals first
    re-sized with its current estimators (:func:`resize_intervals`)."""
    results = json.loads((out_dir / "cross_source.json").read_text())
    if bundle_dir is not None:
        results["interval_half_widths"] = resize_intervals(results["rows"], bundle_dir)
    organs = sorted({r["organ"] for r in results["rows"]})
    _, weights = sampled(evalseg_rows(dataset_dir, organs), results["good_sample"])
    summarise(results, weights)
    (out_dir / "cross_source.json").write_text(json.dumps(results, indent=1))
    (out_dir / "cross_source.md").write_text(markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--dataset-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--good-sample", type=int, default=None,
                        help="analyse this many predictions with true Dice >= 0.95 per organ (default: all)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N expert masks and N predictions only (smoke runs)")
    parser.add_argument("--out", type=Path, default=None, help="folder for cross_source.json and .md")
    parser.add_argument("--rescore", action="store_true",
                        help="recompute the summaries of --out's stored rows; analyse nothing")
    parser.add_argument("--resize-intervals", action="store_true",
                        help="with --rescore: the intervals from --bundle's current estimators (after a refit of "
                             "its intervals; the point estimates are unchanged)")
    parser.add_argument("--record-coverage", action="store_true",
                        help="store the interval coverage on the real failures in --bundle's thresholds.json "
                             "(quality_estimator.real_failures)")
    args = parser.parse_args(argv)
    if args.rescore:
        results = rescore(args.out, args.dataset_dir, args.bundle if args.resize_intervals else None)
        print(markdown(results))
        if args.record_coverage:
            print(json.dumps(record_coverage(results, args.bundle)))
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = run(args.bundle, args.dataset_dir, args.good_sample, args.out, args.limit)
    print(markdown(results))
    if args.record_coverage:
        print(json.dumps(record_coverage(results, args.bundle)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
