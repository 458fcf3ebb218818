"""The cross-source benchmark runs end to end on real masks (smoke-sized) and its summaries are right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cross_source  # noqa: E402


def test_smoke_run_on_real_expert_masks_and_predictions(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cross_source.py"), "--bundle",
                             str(ROOT / "bundles" / "spleen"), "--dataset-dir", str(SHARED_DATA), "--limit", "2",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = json.loads((tmp_path / "cross_source.json").read_text())
    expert = stored["clean"]["evalseg gt (expert, 0.7-1 mm)"]
    assert expert["organs"] == 2 and 0.9 < expert["median_shapeqc_dice"] <= 1.0
    predictions = [r for r in stored["rows"] if r["source"] == "evalseg prediction"]
    assert len(predictions) == 2 and all(r["true_dice"] is not None and r["status"] in ("ok", "outlier")
                                         for r in predictions)
    assert "| spleen | 2 |" in (tmp_path / "cross_source.md").read_text()


def rows(true_and_shapeqc, status="ok"):
    return [{"true_dice": t, "shapeqc_dice": s, "status": "outlier" if s < 0.9 else status, "reason": None,
             "predicted_dice": s, "interval": [s - 0.05, s + 0.05]} for t, s in true_and_shapeqc]


def test_prediction_summary_counts_failures_and_good_ones():
    failures = [(0.5, 0.6), (0.85, 0.7)]  # both far below the good ones: set aside by the cohort rule
    good = [(0.96 + 0.001 * i, 0.97 + 0.001 * i) for i in range(20)]
    summary = cross_source.prediction_summary(rows(failures + good), None)
    assert summary["failures"] == 2 and summary["good"] == 20
    assert summary["auroc"] == pytest.approx(1.0)
    assert summary["failures_flagged"] == 1.0 and summary["good_flagged"] == 0.0
    assert summary["cohort"]["failures_flagged"] == 1.0


def test_sampling_keeps_every_failure_and_a_seeded_share_of_good_ones():
    index = [{"source": f"m{i}", "organ": "spleen", "true_dice": 0.5 if i < 3 else 0.97} for i in range(23)]
    chosen, weights = cross_source.sampled(index, 5)
    again, _ = cross_source.sampled(index, 5)
    assert chosen == again
    assert sum(r["true_dice"] < 0.95 for r in chosen) == 3 and len(chosen) == 8
    assert weights["spleen"] == pytest.approx(20 / 5)


def test_real_failure_coverage_is_recorded_for_the_current_interval_and_shown_when_lower(tmp_path):
    """The kidney's stored real-failure rows: intervals re-sized with the bundle's estimator, their coverage stored
    in a copy of the bundle, and then what an analysis shows (the lower of the two measured coverages); an
    estimator refitted afterwards would carry a stale figure, which loading refuses."""
    import shutil

    from shapeqc.bundle.loading import BundleTrustError, load_bundle
    from shapeqc.scoring.quality import check_estimator, predict_quality

    bundle = shutil.copytree(ROOT / "bundles" / "kidney", tmp_path / "kidney")
    results = json.loads((bundle / "docs" / "cross_source.json").read_text())
    for row in results["rows"]:
        if row["predicted_dice"] is not None:
            row["interval"] = [0.0, 1.0]  # stale intervals, as after a refit
    with pytest.raises(SystemExit, match="resize-intervals"):
        cross_source.record_coverage(results, bundle)
    cross_source.resize_intervals(results["rows"], bundle)
    written = cross_source.record_coverage(results, bundle)
    [(spacing, real)] = written.items()
    judged = [r for r in results["rows"] if r["source"] == cross_source.PREDICTION and r["predicted_dice"] is not None]
    assert real["organs"] == len(judged) and spacing == "None"
    assert real["coverage"] == pytest.approx(
        sum(r["interval"][0] <= r["true_dice"] <= r["interval"][1] for r in judged) / len(judged), abs=1e-4)
    profile = next(p for p in json.loads((bundle / "configs" / "thresholds.json").read_text())["profiles"]
                   if p["spacing_mm"] is None)
    estimator = check_estimator(profile["quality_estimator"])
    shown = predict_quality(estimator, {"dice": 0.9, "over_fraction": 0.05, "under_fraction": 0.05,
                                        "log_volume_ratio": 0.0, "log_asd": 0.5})
    assert shown["coverage"] == min(real["coverage"], estimator["measured_coverage"])
    assert shown["coverage_basis"].startswith("real model failures") == (real["coverage"]
                                                                         < estimator["measured_coverage"])
    # a refit that moved the half width leaves the recorded figure stale: the bundle does not load with it
    path = bundle / "configs" / "thresholds.json"
    thresholds = json.loads(path.read_text())
    for p in thresholds["profiles"]:
        if p["quality_estimator"].get("real_failures"):
            p["quality_estimator"]["half_width"] += 0.01
    path.write_text(json.dumps(thresholds))
    with pytest.raises(BundleTrustError, match="another interval"):
        load_bundle(bundle)
