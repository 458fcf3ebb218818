"""The predicted Dice per organ (issue 22): features, the estimator's fit and interval, its place in the bundle, the
records and reports, and a real calibration on real held-out masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shapeqc.bundle.loading import BundleTrustError, bundle_datalist, load_bundle
from shapeqc.calibration.corruptions import FAMILIES
from shapeqc.calibration.profiles import calibrate
from shapeqc.evaluation.protocol import other_rater_true_dice
from shapeqc.evaluation.statistics import dice_estimation
from shapeqc.judging.analysis import analyse_organ
from shapeqc.outputs.reports import report_csv
from shapeqc.outputs.review_page import review_html, worklist_order
from shapeqc.scoring.metrics import dice as true_dice
from shapeqc.scoring.quality import (
    QUALITY_FEATURES,
    check_estimator,
    fit_dice_estimator,
    predict_quality,
    quality_features,
    rank_value,
)
from shapeqc.transforms.organ_loading import load_item_mask
from shapeqc.transforms.volume_io import write_volume

ROOT = Path(__file__).resolve().parents[1]
ADRENAL = ROOT / "bundles" / "adrenal_gland"


def cut_rows(masks, fractions):
    """Features of plane cuts of real glands judged against a perfect prior (the reconstruction is the clean
    gland): the feature 'dice' is then the true Dice exactly."""
    rows, truth, groups = [], [], []
    plane_cut, _ = FAMILIES["plane_cut"]
    for index, mask in enumerate(masks):
        for level, fraction in enumerate(fractions):
            cut = plane_cut(mask, 100 * index + level, fraction=fraction) if fraction else mask
            dice = true_dice(cut, mask)
            rows.append(quality_features(cut, mask, {"dice": dice, "asd_mm": 0.5}))
            truth.append(dice)
            groups.append(f"case{index}")
    return rows, truth, groups


def test_features_of_known_masks():
    segmentation = np.zeros((10, 10, 10), bool)
    segmentation[2:6, 2:6, 2:6] = True  # 64 voxels
    reconstruction = np.zeros_like(segmentation)
    reconstruction[2:6, 2:6, 2:8] = True  # 96 voxels, 64 of them shared
    features = quality_features(segmentation, reconstruction, {"dice": 0.8, "asd_mm": float("inf")})
    assert list(features) == list(QUALITY_FEATURES)
    assert features["over_fraction"] == 0.0
    assert features["under_fraction"] == pytest.approx(32 / 96)
    assert features["log_volume_ratio"] == pytest.approx(np.log(64 / 96))
    assert features["log_asd"] == pytest.approx(np.log1p(100.0))  # an infinite distance is capped


def test_refit_is_identical_and_the_seed_only_moves_the_interval(adrenal_val_masks):
    rows, truth, groups = cut_rows(adrenal_val_masks[:12], (0.0, 0.2, 0.5))
    first = fit_dice_estimator(rows, truth, groups, seed=3)
    assert json.dumps(first) == json.dumps(fit_dice_estimator(rows, truth, groups, seed=3))
    other = fit_dice_estimator(rows, truth, groups, seed=4)
    assert other["coefficients"] == first["coefficients"] and other["intercept"] == first["intercept"]
    assert check_estimator(json.loads(json.dumps(first))) == first  # plain JSON, read back as written


def test_a_perfect_prior_gives_the_true_dice_and_the_interval_covers_at_its_rate(adrenal_val_masks):
    """Fitted on 30 glands, judged on 30 others: with the reconstruction equal to the clean gland the estimate is
    near exact, and the interval holds the true Dice of unseen glands at about its stated coverage."""
    rows, truth, groups = cut_rows(adrenal_val_masks[:30], (0.0, 0.1, 0.3, 0.5, 0.7))
    estimator = fit_dice_estimator(rows, truth, groups, coverage=0.8)
    held_rows, held_truth, _ = cut_rows(adrenal_val_masks[30:60], (0.0, 0.15, 0.4, 0.6))
    predictions = [predict_quality(estimator, row) for row in held_rows]
    predicted = np.array([p["predicted_dice"] for p in predictions])
    assert np.corrcoef(predicted, held_truth)[0, 1] > 0.98
    assert np.abs(predicted - held_truth).mean() < 0.03
    inside = np.mean([low <= t <= high for t, (low, high) in zip(held_truth, [p["interval"] for p in predictions],
                                                                  strict=True)])
    assert 0.7 <= inside <= 1.0
    assert all(0.0 <= p["interval"][0] <= p["predicted_dice"] <= p["interval"][1] <= 1.0 for p in predictions)


@pytest.mark.parametrize("change, message", [
    ({"format": "other/1"}, "format"),
    ({"features": ["dice", "curvature"]}, "unknown features"),
    ({"coefficients": [0.1]}, "coefficients"),
])
def test_a_malformed_estimator_is_refused_when_the_bundle_loads(tmp_path, adrenal_val_masks, change, message):
    rows, truth, groups = cut_rows(adrenal_val_masks[:4], (0.0, 0.4))
    estimator = {**fit_dice_estimator(rows, truth, groups), **change}
    with pytest.raises(ValueError, match=message):
        check_estimator(estimator)
    bundle = shutil.copytree(ADRENAL, tmp_path / "adrenal_gland")
    path = bundle / "configs" / "thresholds.json"
    thresholds = json.loads(path.read_text())
    thresholds["profiles"][0]["quality_estimator"] = estimator
    path.write_text(json.dumps(thresholds))
    with pytest.raises(BundleTrustError, match=message):
        load_bundle(bundle)


@pytest.fixture(scope="module")
def calibrated_adrenal(tmp_path_factory):
    """The adrenal bundle calibrated (as given) with its estimator on 10 real held-out glands, in a copy."""
    bundle = shutil.copytree(ADRENAL, tmp_path_factory.mktemp("calibrated") / "adrenal_gland")
    items = bundle_datalist(bundle, str(ROOT.parent / "shared" / "data"), "validate#datalist")
    report = calibrate(str(bundle), items[:10], write=True)
    return bundle, report, items[10:]


def test_calibration_fits_and_reports_the_estimator(calibrated_adrenal):
    bundle, report, _ = calibrated_adrenal
    profile = next(p for p in json.loads((bundle / "configs" / "thresholds.json").read_text())["profiles"]
                   if p["spacing_mm"] is None)
    estimator = check_estimator(profile["quality_estimator"])
    assert estimator["cases"] == 10 and estimator["fitted_on"] == len(report["quality_rows"]) >= 60
    quality = report["quality"]
    assert {"clean", "perlin_add", "quality_plane_cut", "quality_cube_add"} <= set(quality["families"])
    true = [row["true_dice"] for row in report["quality_rows"]]
    assert min(true) < 0.6 and max(true) == 1.0  # the graded corruptions span the range
    corrupted = sum(row["family"] != "clean" for row in report["quality_rows"])
    for source in ("estimate", "raw_dice"):  # measured on the corrupted organs, each of an unseen family
        assert quality[source]["organs"] == corrupted and 0 <= quality[source]["mae"] < 0.5
    assert estimator["coverage_basis"] == "unseen kinds of error" and estimator["target_coverage"] == 0.9
    assert 0.5 < estimator["measured_coverage"] <= 1.0 and estimator["rank_by"] in ("predicted_dice", "dice")
    assert set(estimator["coverage_by_kind"]) == set(quality["families"]) - {"clean"}
    assert set(quality["outlier_auroc"]["perlin_add"]) == {"raw_dice", "predicted_dice"}


def test_analysis_on_real_held_out_glands_ranks_a_cut_below_the_clean_organ(calibrated_adrenal, tmp_path):
    bundle_dir, _, held_out = calibrated_adrenal
    bundle = load_bundle(bundle_dir)
    plane_cut, _ = FAMILIES["plane_cut"]
    clean_predicted, cut_predicted, inside, clean_rank, cut_rank = [], [], [], [], []
    for index, item in enumerate(held_out[:4]):
        mask, affine = load_item_mask(item)
        mask = mask.astype(bool)
        cut = plane_cut(mask, index, fraction=0.3)
        for name, volume in (("clean", mask), ("cut", cut)):
            path = write_volume(tmp_path / f"{index}_{name}.nii.gz", volume, affine)
            record = analyse_organ(str(path), None, bundle, None, f"{index}_{name}")
            assert record["status"] in ("ok", "outlier") and record["warnings"] == []
            quality = record["quality"]
            (clean_predicted if name == "clean" else cut_predicted).append(quality["predicted_dice"])
            (clean_rank if name == "clean" else cut_rank).append(rank_value(record))
            low, high = quality["interval"]
            inside.append(low <= true_dice(volume, mask) <= high)
    # the estimate and what the worklist sorts by (here the raw Dice: this bundle's estimate ranked unseen kinds of
    # error worse) both put the cut below its clean gland in 3 of the 4: the prior copies the fourth gland's cut
    # (raw Dice 0.9984 against the clean gland's 0.9971, predicted 0.9659 against 0.9644), which no ranking of
    # these two numbers can undo; only a prior that repairs it can (issue 32)
    assert np.sum(np.array(clean_rank) > np.array(cut_rank)) >= 3, (clean_rank, cut_rank)
    assert np.sum(np.array(clean_predicted) > np.array(cut_predicted)) >= 3, (clean_predicted, cut_predicted)
    assert np.mean(inside) >= 0.6


def test_a_bundle_calibrated_before_the_estimator_analyses_with_no_quality_and_a_warning(adrenal_val_masks,
                                                                                       tmp_path):
    bundle = shutil.copytree(ADRENAL, tmp_path / "adrenal_gland")
    path = bundle / "configs" / "thresholds.json"
    thresholds = json.loads(path.read_text())
    for profile in thresholds["profiles"]:
        profile.pop("quality_estimator", None)
    path.write_text(json.dumps(thresholds))
    mask_path = write_volume(tmp_path / "gland.nii.gz", adrenal_val_masks[5], np.eye(4))
    record = analyse_organ(str(mask_path), None, load_bundle(bundle), None, "gland")
    assert record["status"] in ("ok", "outlier") and record["quality"] is None
    assert any("no quality estimate" in w for w in record["warnings"])


def test_reports_carry_the_estimate(tmp_path):
    judged = {"case": "a", "input": "a.nii.gz", "organ": "spleen", "bundle": "spleen", "status": "ok",
              "outlier": False, "reason": None, "scores": {"dice": 0.95, "asd_mm": 0.4, "hd95_mm": 1.0,
                                                          "max_sd_mm": 3.0},
              "thresholds": None, "outputs": {}, "defects": [], "warnings": [],
              "quality": {"predicted_dice": 0.912, "interval": [0.85, 0.97], "coverage": 0.84,
                          "coverage_basis": "unseen kinds of error", "rank_by": "dice"}}
    unjudged = {**judged, "case": "b", "quality": None, "scores": None, "status": "not_judged"}
    rows = report_csv([judged, unjudged]).splitlines()
    assert rows[0].endswith("predicted_dice,predicted_dice_low,predicted_dice_high,interval_coverage,"
                            "interval_coverage_basis")
    assert rows[1].endswith(",0.912,0.85,0.97,0.84,unseen kinds of error") and rows[-1].endswith(",,,,,")
    page = review_html([judged, unjudged], tmp_path)
    assert "<td>0.912 <small>[0.850, 0.970]</small></td>" in page
    # the column says what was measured, never a nominal rate
    assert "<th>predicted Dice [interval: covered 84% on unseen kinds of error]</th>" in page and "90%" not in page
    assert "spleen: predicted Dice interval covered 84% on unseen kinds of error; sorted by the raw Dice" in page
    # an estimator from before issue 35 (format 1) shows its interval as not measured
    old = {**judged, "case": "c", "quality": {"predicted_dice": 0.9, "interval": [0.8, 1.0], "coverage": None,
                                               "coverage_basis": None, "rank_by": "predicted_dice"}}
    assert "<th>predicted Dice [interval: coverage not measured]</th>" in review_html([old], tmp_path)
    both = review_html([judged, {**old, "bundle": "kidney"}], tmp_path)
    assert "<th>predicted Dice [interval, coverage per bundle above]</th>" in both


def test_the_worklist_sorts_by_the_value_the_bundle_measured_to_rank_better():
    def record(case, predicted, raw, rank_by):
        return {"case": case, "organ": "spleen", "status": "ok", "scores": {"dice": raw},
                "quality": {"predicted_dice": predicted, "interval": [0.0, 1.0], "coverage": 0.85,
                            "coverage_basis": "unseen kinds of error", "rank_by": rank_by}}

    # a's estimate is the lower, b's raw Dice is the lower
    pair = [("a", 0.80, 0.97), ("b", 0.90, 0.93)]
    assert [r["case"] for r in worklist_order([record(c, p, d, "dice") for c, p, d in pair])] == ["b", "a"]
    assert [r["case"] for r in worklist_order([record(c, p, d, "predicted_dice") for c, p, d in pair])] == ["a", "b"]
    no_estimate = {**record("c", None, 0.5, "dice"), "quality": None}
    assert rank_value(no_estimate) == 0.5


def test_the_stored_coverage_holds_on_families_the_fit_never_saw():
    """On the adrenal bundle's real calibration organs (stored with the bundle): each corruption family left out of
    the whole fit in turn, the coverage each fit claims (measured within its own data) matches what its interval
    achieves on the left-out family within 3 points. The rule before issue 35 (residuals of unseen cases only,
    nominal 90%) claims 90% and holds about 78% there."""
    report = json.loads((ADRENAL / "docs" / "calibration_as_given.json").read_text())
    rows = report["quality_rows"]
    families = sorted({row["family"] for row in rows} - {"clean"})
    claimed, held, nominal_claimed, nominal_held = [], [], [], []
    for family in families:
        train = [row for row in rows if row["family"] != family]
        test = [row for row in rows if row["family"] == family]
        fit_args = ([row["features"] for row in train], [row["true_dice"] for row in train],
                    [row["case"] for row in train])
        for estimator, claims, hits in (
                (fit_dice_estimator(*fit_args, [row["family"] for row in train]), claimed, held),
                (fit_dice_estimator(*fit_args), nominal_claimed, nominal_held)):
            assert family not in estimator["coverage_by_kind"]
            claims += [estimator["measured_coverage"]] * len(test)
            for row in test:
                low, high = predict_quality(estimator, row["features"])["interval"]
                hits.append(low <= row["true_dice"] <= high)
    assert abs(np.mean(held) - np.mean(claimed)) <= 0.03, (np.mean(held), np.mean(claimed))
    assert np.mean(nominal_claimed) - np.mean(nominal_held) > 0.08  # what the old label overstated


def test_the_shipped_estimators_record_what_their_stored_organs_give():
    """Every shipped profile's estimator is the fit of its stored calibration organs (refit_quality), and says
    what it measured; where a benchmark measured real model failures too, the lower coverage is what is shown."""
    from shapeqc.calibration.profiles import profile_tag

    for thresholds_path in sorted((ROOT / "bundles").glob("*/configs/thresholds.json")):
        for profile in json.loads(thresholds_path.read_text())["profiles"]:
            estimator = check_estimator(profile["quality_estimator"])
            report = json.loads((thresholds_path.parents[1] / "docs" /
                                 f"calibration_{profile_tag(profile['spacing_mm'])}.json").read_text())
            rows = report["quality_rows"]
            refit = fit_dice_estimator([r["features"] for r in rows], [r["true_dice"] for r in rows],
                                       [r["case"] for r in rows], [r["family"] for r in rows])
            for key in ("half_width", "measured_coverage", "rank_by", "coefficients"):
                assert refit[key] == estimator[key], (thresholds_path, key)
            shown = predict_quality(estimator, rows[0]["features"])
            real = estimator.get("real_failures")
            assert shown["coverage"] == min(estimator["measured_coverage"], real["coverage"] if real else 1.0)
            assert shown["coverage"] < 0.95  # none claims more than its measurements gave


def test_the_benchmark_judges_the_estimate_on_families_it_was_not_fitted_on(adrenal_val_masks):
    """dice_estimation on a scored run whose reconstructions are the clean glands (a perfect prior): fitted
    without each family, the estimate still gives the true Dice of that family's cases; baseline B, a distance
    that knows nothing of the corruption's size, does not."""
    plane_cut, _ = FAMILIES["plane_cut"]
    hole, _ = FAMILIES["hole"]
    clean, corrupted = [], []
    for index, mask in enumerate(adrenal_val_masks[:12]):
        case = f"case{index}"
        full = {"dice": 1.0, "asd_mm": 0.0}
        clean.append({"case": case, "scores": {"shapeqc_dice": 1.0, "B_descriptors": float(index),
                                               "quality_features": quality_features(mask, mask, full)}})
        for family, generate, kwargs in (("plane_cut", plane_cut, {"fraction": 0.2 + 0.04 * index}),
                                         ("hole", hole, {"fraction": 0.05 + 0.01 * index}),
                                         ("plane_cut_small", plane_cut, {"fraction": 0.05 + 0.01 * index})):
            bad = generate(mask, index, **kwargs)
            dice = true_dice(bad, mask)
            corrupted.append({"case": case, "family": family, "true_dice": dice, "scores": {
                "shapeqc_dice": dice, "B_descriptors": float(index % 3),
                "quality_features": quality_features(bad, mask, {"dice": dice, "asd_mm": 0.5})}})
    result = dice_estimation({"clean_scores": clean, "corrupted_scores": corrupted})
    assert result["families"] == ["hole", "plane_cut", "plane_cut_small"]
    assert result["estimate"]["organs"] == 36 and result["estimate"]["pearson_r"] > 0.95
    assert result["raw_dice"]["mae"] == 0.0  # the raw Dice is the true Dice under a perfect prior
    assert result["baseline_B_regressed"]["pearson_r"] is None or result["baseline_B_regressed"]["pearson_r"] < 0.5
    assert set(result["outlier_auroc"]) == set(result["families"])
    # another rater's masks with their true Dice (here: cuts of six other glands, judged by the same perfect
    # prior) are predicted by an estimator fitted on every case of the run
    plausible, true_of = [], {}
    for index, mask in enumerate(adrenal_val_masks[12:18]):
        other = plane_cut(mask, 50 + index, fraction=0.1 + 0.03 * index)
        dice = true_dice(other, mask)
        true_of[f"rater2_{index}"] = dice
        plausible.append({"case": f"rater2_{index}", "scores": {
            "shapeqc_dice": dice, "quality_features": quality_features(other, mask, {"dice": dice, "asd_mm": 0.5})}})
    with_other = dice_estimation({"clean_scores": clean, "corrupted_scores": corrupted,
                                  "plausible_scores": plausible, "plausible_true_dice": true_of})
    other = with_other["other_rater"]
    assert other["cases"] == 6 and other["raw_dice"]["mae"] == 0.0
    assert other["estimate"]["mae"] < 0.05
    assert "other_rater" not in result  # no true Dice, no such table


def test_the_other_raters_true_dice_pairs_each_mask_with_the_same_scan_and_organ(headneck_tree):
    true_of = other_rater_true_dice(ROOT / "bundles" / "parotid_gland", str(headneck_tree.parents[1]))
    assert len(true_of) == 16 and all(case.split("/")[0].endswith("_radiographer") for case in true_of)
    assert 0.7 < min(true_of.values()) and max(true_of.values()) < 1.0  # two raters never agree exactly


def test_each_bundle_readme_states_what_its_estimate_was_measured_to_do(tmp_path):
    """The README section is what estimate_card writes from the bundle's stored measurements (regenerated, it is
    unchanged), and it names the coverage an analysis shows."""
    from shapeqc.evaluation.estimate_card import TITLE, estimate_section, write_section

    for bundle in sorted(p.parents[1] for p in (ROOT / "bundles").glob("*/configs/thresholds.json")):
        readme = (bundle / "docs" / "README.md").read_text()
        section = estimate_section(bundle)
        assert section in readme, bundle.name
        copy = tmp_path / f"{bundle.name}.md"
        copy.write_text(readme)
        write_section(copy, section)
        assert copy.read_text() == readme and readme.count(TITLE) == 1
        for profile in json.loads((bundle / "configs" / "thresholds.json").read_text())["profiles"]:
            estimator = profile["quality_estimator"]
            shown = predict_quality(estimator, dict.fromkeys(estimator["features"], 0.5))["coverage"]
            assert f"covered {100 * shown:.0f}% on" in section
