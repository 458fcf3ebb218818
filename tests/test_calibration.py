"""The calibration's threshold rule and the false-positive rate it is quoted with, on exact small examples."""

from __future__ import annotations

import numpy as np
import pytest

from shapeqc.scoring.thresholds import leave_one_out_fpr, threshold_at


@pytest.mark.parametrize("worse_when, values, expected", [
    ("below", np.arange(1.0, 21.0), 1.95),  # 5% quantile of 1..20: between the two lowest
    ("above", np.arange(1.0, 21.0), 19.05),
    ("below", [0.9, 0.8], 0.805),
])
def test_threshold_is_the_target_quantile_on_the_bad_side(worse_when, values, expected):
    assert threshold_at(values, 0.05, worse_when) == pytest.approx(expected)


@pytest.mark.parametrize("worse_when, sign", [("below", 1.0), ("above", -1.0)])
def test_leave_one_out_rate_is_what_a_case_outside_the_calibration_meets(worse_when, sign):
    values = sign * np.arange(1.0, 21.0)  # 20 clean cases, the worst first (lowest Dice or largest distance)
    bad = (lambda v, t: v < t) if worse_when == "below" else (lambda v, t: v > t)
    # on the cases the threshold was set on: exactly one of 20 is flagged, the target by construction
    assert np.mean(bad(values, threshold_at(values, 0.05, worse_when))) == 0.05
    # left out, the worst (vs 2.9) and the second worst (vs 2.8, between the worst and the third) are flagged;
    # the third (vs 1.9) is not: twice the target, the optimism of judging cases the threshold was set on
    assert leave_one_out_fpr(values, 0.05, worse_when) == 0.10


def test_leave_one_out_rate_of_identical_scores_is_zero():
    assert leave_one_out_fpr([0.95] * 10, 0.05, "below") == 0.0


def _flagged_share(values, threshold, worse_when):
    values = np.asarray(values, float)
    return float(np.mean(values < threshold if worse_when == "below" else values > threshold))


@pytest.mark.parametrize("worse_when, sign", [("below", 1.0), ("above", -1.0)])
def test_a_small_second_source_does_not_push_the_large_one_past_its_target(worse_when, sign):
    # 20 clean cases of a first source (1..20: its own 5% point 1.95 flags one of them) and 5 of a second team
    # (5..9): the sources' equal mixture would put the threshold at 2.5 and flag two of the first's 20 (10%)
    first, second = sign * np.arange(1.0, 21.0), sign * np.arange(5.0, 10.0)
    values, sources = np.concatenate([first, second]), ["first"] * 20 + ["second"] * 5
    threshold = threshold_at(values, 0.05, worse_when, sources)
    assert threshold == pytest.approx(sign * 1.95)
    assert _flagged_share(first, threshold, worse_when) == 0.05
    assert _flagged_share(second, threshold, worse_when) == 0.0


@pytest.mark.parametrize("worse_when, sign", [("below", 1.0), ("above", -1.0)])
def test_a_second_source_that_draws_the_organ_otherwise_sets_the_threshold_for_itself(worse_when, sign):
    # the second team's organs (5..9) all score worse than the first's (11..30): the threshold follows the second
    # team's own 5% point (5.2, between its two worst), so it flags its worst organ only and none of the first's
    first, second = sign * np.arange(11.0, 31.0), sign * np.arange(5.0, 10.0)
    values, sources = np.concatenate([first, second]), ["first"] * 20 + ["second"] * 5
    threshold = threshold_at(values, 0.05, worse_when, sources)
    assert threshold == pytest.approx(sign * 5.2)
    assert _flagged_share(first, threshold, worse_when) == 0.0
    assert _flagged_share(second, threshold, worse_when) == 0.2


def test_one_source_named_is_numpys_quantile():
    values = np.linspace(0.9, 0.99, 20)
    assert threshold_at(values, 0.05, "below", ["first"] * 20) == threshold_at(values, 0.05, "below")
    assert leave_one_out_fpr(values, 0.05, "below", ["first"] * 20) == leave_one_out_fpr(values, 0.05, "below")


def test_leave_one_out_rate_by_source_and_the_rule_quotes_the_worst_served_source():
    from shapeqc.scoring.thresholds import metric_rule

    values = np.concatenate([np.arange(1.0, 21.0), np.arange(5.0, 10.0)])
    sources = ["first"] * 20 + ["second"] * 5
    # the first source alone gives 0.10 (1 and 2 left out fall below 2.9 and 2.8); the second's organs, each left
    # out, meet min(1.95, their others' own 5% point) = 1.95: none flagged
    assert leave_one_out_fpr(values, 0.05, "below", sources) == {"first": 0.10, "second": 0.0}
    rule = metric_rule(values, 0.05, "dice", True, sources)
    assert rule["leave_one_out_fpr_by_source"] == {"first": 0.10, "second": 0.0}
    assert rule["leave_one_out_fpr"] == 0.10


def test_the_benchmark_judges_masks_as_given_against_the_profile_calibrated_on_them(tmp_path):
    """A CT bundle's masks as given (5 mm slices) are nearer the tilted 0.8 x 0.8 x 2.5 mm profile than 1 mm is to
    either; the as-given benchmark must still use the as-given profile, and a --spacing run the nearest one."""
    import json

    from shapeqc.evaluation.statistics import shipped_profile

    def profile(spacing, data_spacing, threshold):
        return {"spacing_mm": spacing, "data_spacing_mm": data_spacing,
                "metrics": {"dice": {"threshold": threshold, "worse_when": "below", "enabled": True}}}

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "thresholds.json").write_text(json.dumps({"profiles": [
        profile([0.8, 0.8, 2.5], [0.8, 0.8, 2.5], 0.96), profile(None, [0.836, 0.836, 5.0], 0.97)]}))
    assert shipped_profile(tmp_path, None)["metrics"]["dice"]["threshold"] == 0.97
    assert shipped_profile(tmp_path, [0.8, 0.8, 2.5])["metrics"]["dice"]["threshold"] == 0.96


def test_the_benchmark_quotes_each_sources_leave_one_out_rate_of_a_several_source_calibration():
    from shapeqc.evaluation.report import fpr_context
    from shapeqc.scoring.roc import wilson_interval

    one = {"clean_cases": 79, "clean_fpr_interval_95": [0.035, 0.156], "calibration_clean_cases": 40,
           "calibration_leave_one_out_fpr": 0.075}
    low, high = wilson_interval(3, 40)
    assert fpr_context(one).endswith(f"the other 39 (leave one out, the rate a new clean organ meets): 0.075, "
                                     f"95% interval {low:.3f}-{high:.3f}")
    several = {**one, "calibration_clean_cases": 112, "calibration_leave_one_out_fpr": 6 / 103,
               "calibration_clean_cases_by_source": {"KiTS23 held-out": 103, "evalseg expert": 9},
               "calibration_leave_one_out_fpr_by_source": {"KiTS23 held-out": 6 / 103, "evalseg expert": 0.0}}
    text = fpr_context(several)
    kits, evalseg = wilson_interval(6, 103), wilson_interval(0, 9)
    assert text.endswith(f"KiTS23 held-out 0.058 (6 of 103, 95% interval {kits[0]:.3f}-{kits[1]:.3f}); "
                         f"evalseg expert 0.000 (0 of 9, 95% interval {evalseg[0]:.3f}-{evalseg[1]:.3f})")
