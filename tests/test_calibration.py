"""The calibration's threshold rule and the false-positive rate it is quoted with, on exact small examples."""

from __future__ import annotations

import numpy as np
import pytest

from shapeqc.scoring.thresholds import is_worse, leave_one_out_fpr, threshold_at


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


# 20 clean cases of a first source and 5 of a second team (5..9), each held to its own 5% point:
# - first 1..20 (own point 1.95, flags one of them): the second's point is 5.2, so 1.95 holds; the sources' equal
#   mixture would have put the threshold at 2.5 and flagged two of the first's 20 (10%)
# - first 11..30: the second team draws the organ otherwise and scores worse throughout; the threshold follows its
#   own point (5.2, between its two worst), flagging its worst organ only and none of the first's
@pytest.mark.parametrize("first_start, threshold, first_share, second_share", [(1.0, 1.95, 0.05, 0.0),
                                                                               (11.0, 5.2, 0.0, 0.2)])
@pytest.mark.parametrize("worse_when, sign", [("below", 1.0), ("above", -1.0)])
def test_each_source_is_held_to_its_own_quantile(worse_when, sign, first_start, threshold, first_share,
                                                   second_share):
    first, second = sign * np.arange(first_start, first_start + 20.0), sign * np.arange(5.0, 10.0)
    values, sources = np.concatenate([first, second]), ["first"] * 20 + ["second"] * 5
    set_at = threshold_at(values, 0.05, worse_when, sources)
    assert set_at == pytest.approx(sign * threshold)
    assert np.mean(is_worse(first, set_at, worse_when)) == first_share
    assert np.mean(is_worse(second, set_at, worse_when)) == second_share


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
