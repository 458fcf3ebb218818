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


def test_two_sources_weigh_alike_so_a_small_sources_tail_sets_the_threshold():
    # 18 clean cases of a first source at 0.97-0.99, 2 of a second team that draws the organ otherwise (0.93, 0.95)
    first, second = list(np.linspace(0.97, 0.99, 18)), [0.93, 0.95]
    values, sources = first + second, ["first"] * 18 + ["second"] * 2
    # pooled, the second team's organs are 2 of 20: the 5% quantile sits between them and flags one (50% of theirs)
    assert threshold_at(values, 0.05, "below") == pytest.approx(0.949)
    # as an equal mixture each of their organs weighs 1/4: 0.93 sits at 1/8 of the cumulative weight, above 5%, so
    # the threshold stays below it (the lowest value: np.interp holds it there) and no organ of either is flagged
    assert threshold_at(values, 0.05, "below", sources) == pytest.approx(0.93)
    # surface distances: the same rule mirrored
    assert threshold_at([-v for v in values], 0.05, "above", sources) == pytest.approx(-0.93)
    # one source named: numpy's quantile, exactly as without sources
    assert threshold_at(values, 0.05, "below", ["first"] * 20) == threshold_at(values, 0.05, "below")


def test_leave_one_out_rate_by_source():
    first, second = list(np.linspace(0.97, 0.99, 18)), [0.93, 0.95, 0.96, 0.96]
    by_source = leave_one_out_fpr(first + second, 0.05, "below", ["first"] * 18 + ["second"] * 4)
    # left out, the second team's 0.93 is judged against a threshold set on 0.95, 0.96, 0.96 (each weighing 1/6:
    # 0.95 at 1/12 > 5%, so the threshold is 0.95): flagged; its others are not; no first-source organ is
    assert by_source == {"first": 0.0, "second": 0.25}


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
