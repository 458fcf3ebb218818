"""A cohort's own calibration (`shapeqc calibrate --cohort OUT`): the robust threshold rule on real clean Dice
values, and the installed command re-judging a real run of the shipped adrenal bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shapeqc.runs.cohort_calibration import (
    COHORT_FILE,
    SHIPPED_RECORDS,
    fit_cohort_threshold,
)
from shapeqc.transforms.volume_io import write_volume

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "adrenal_gland"


def clean_dice(bundle: str, profile: str = "as_given") -> np.ndarray:
    """The Dice of every clean calibration organ of a shipped bundle (real masks, stored by its calibration)."""
    stored = json.loads((ROOT / "bundles" / bundle / "docs" / f"calibration_{profile}.json").read_text())
    return np.array([scores["dice"] for scores in stored["clean_scores"]])


@pytest.mark.parametrize("bundle, profile", [("adrenal_gland", "as_given"), ("adrenal_gland", "0.8x0.8x2.5"),
                                             ("kidney", "as_given"), ("kidney", "0.8x0.8x2.5")])
@pytest.mark.parametrize("rate", [0.05, 0.1])
def test_a_clean_cohort_is_flagged_at_the_target_rate(bundle, profile, rate):
    dice = clean_dice(bundle, profile)
    fit = fit_cohort_threshold(dice, rate)
    # at most one clean organ lies as far below the median as a gross failure (kidney 0.2.0: KiTS case_00297, a
    # kidney with 70 ml of tumour and cyst at 5 mm slices, 6.0 / 7.2 robust SD down; set aside, i.e. flagged)
    expected_aside = 1 if bundle == "kidney" else 0
    assert fit["set_aside"] == expected_aside
    rank = max(1, int(np.floor((dice.size - expected_aside + 1) * rate)))
    # the k-th lowest of the rest: k - 1 of them below it, and every set-aside organ
    assert int(np.sum(dice < fit["threshold"])) == rank - 1 + expected_aside
    # a clean organ the fit did not see: flagged at the nominal rate (leave one out, within 2 points)
    left_out = np.mean([dice[i] < fit_cohort_threshold(np.delete(dice, i), rate)["threshold"]
                        for i in range(dice.size)])
    assert abs(left_out - rate) <= 0.02


@pytest.mark.parametrize("bundle, profile", [("kidney", "as_given"), ("kidney", "0.8x0.8x2.5"),
                                             ("liver", "as_given"), ("adrenal_gland", "0.8x0.8x2.5")])
def test_gross_failures_are_set_aside_and_do_not_lower_the_threshold(bundle, profile):
    dice = clean_dice(bundle, profile)
    clean_fit = fit_cohort_threshold(dice, 0.05)
    failures = np.random.default_rng(0).uniform(0.2, 0.6, size=dice.size // 8)  # 1 in 9 of the cohort broken
    mixed_fit = fit_cohort_threshold(np.concatenate([dice, failures]), 0.05)
    # every failure set aside; a clean organ only where it lies as far down (kidney 0.2.0's case_00297, 6.0 robust
    # SD below the clean median as given: the failures widen the spread, and it stays in)
    clean_aside = mixed_fit["set_aside"] - failures.size
    assert clean_aside == clean_fit["set_aside"] - (1 if (bundle, profile) == ("kidney", "as_given") else 0)
    # the threshold is the clean organs' own order statistic among those kept, as if the failures were not there
    kept = np.sort(dice)[clean_aside:]
    assert mixed_fit["threshold"] == pytest.approx(kept[max(1, int(np.floor((kept.size + 1) * 0.05))) - 1])
    if clean_aside == clean_fit["set_aside"]:
        assert mixed_fit["threshold"] == pytest.approx(clean_fit["threshold"])
    # the plain "worst 5%" of the research pipeline would have set it far below every clean organ
    assert np.quantile(np.concatenate([dice, failures]), 0.05) < dice.min()


@pytest.mark.parametrize("values, rate", [([], 0.05), ([0.9, float("nan")], 0.05), ([0.9, 0.95], 0.0),
                                          ([0.9, 0.95], 1.0)])
def test_bad_fits_are_refused(values, rate):
    with pytest.raises(ValueError):
        fit_cohort_threshold(values, rate)


def shapeqc(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shapeqc", *arguments], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory, adrenal_val_masks):
    """A real run of the shipped adrenal bundle on 14 real glands, two of them cut in half (1 mm, identity)."""
    folder = tmp_path_factory.mktemp("cohort")
    inputs = folder / "masks"
    inputs.mkdir()
    written = 0
    for index, mask in enumerate(adrenal_val_masks):
        border = (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() or mask[..., 0].any()
                  or mask[..., -1].any())
        if border:
            continue
        if written >= 12:
            cut = mask.copy()
            cut[:, :, : int(np.argwhere(mask)[:, 2].mean())] = False  # the lower half lost
            mask = cut
        write_volume(inputs / f"gland{index:03d}.nii.gz", mask, np.eye(4))
        written += 1
        if written == 14:
            break
    out = folder / "out"
    result = shapeqc("analyse", str(inputs), "--bundle", str(BUNDLE), "--output", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return out


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_calibrate_cohort_rejudges_the_run_and_keeps_its_shipped_records(analysed_run, tmp_path):
    before = read_records(analysed_run / "records.jsonl")
    result = shapeqc("calibrate", "--cohort", str(analysed_run), "--name", "site_a", "--min-organs", "10",
                     "--fpr", "0.2")  # k = floor(15 x 0.2) = 3: the two lowest of 14 flagged
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["profile"] == "cohort:site_a"
    summary = json.loads((analysed_run / COHORT_FILE).read_text())
    (key, entry), = summary["organs"].items()  # one organ: the bundle names these glands' side
    assert key.startswith("adrenal_gland/adrenal_gland_")
    threshold = entry["profile"]["metrics"]["dice"]["threshold"]
    assert entry["judged"] == 14
    after = read_records(analysed_run / "records.jsonl")
    assert read_records(analysed_run / SHIPPED_RECORDS) == before  # the bundle's verdicts are kept
    for old, new in zip(before, after, strict=True):
        assert new["scores"] == old["scores"]
        assert new["thresholds"]["name"] == "cohort:site_a"
        assert new["outlier"] == (new["scores"]["dice"] < threshold)
        assert new["status"] == ("outlier" if new["outlier"] else "ok")
        assert any(w.startswith("judged against the cohort profile cohort:site_a") for w in new["warnings"])
    # the two glands cut in half are the ones flagged, and the report names the cohort threshold
    flagged = sorted(r["case"] for r in after if r["outlier"])
    cut = sorted(r["case"] for r in after)[-2:]
    assert set(cut) <= set(flagged) and len(flagged) <= 3
    report = json.loads((analysed_run / "report.json").read_text())
    assert all(r["thresholds"]["name"] == "cohort:site_a" for r in report)
    csv_rows = (analysed_run / "report.csv").read_text().splitlines()
    assert any(f"{threshold}" in row for row in csv_rows if ",dice," in row)

    # too few organs for the rule: the file says why and the shipped verdicts come back
    result = shapeqc("calibrate", "--cohort", str(analysed_run), "--name", "site_b")
    assert result.returncode == 0, result.stderr
    summary = json.loads((analysed_run / COHORT_FILE).read_text())
    assert "fewer than 50" in summary["organs"][key]["refused"]
    assert read_records(analysed_run / "records.jsonl") == before

    # not a run: a clear refusal naming the folder
    result = shapeqc("calibrate", "--cohort", str(tmp_path), "--name", "x")
    assert result.returncode != 0 and str(tmp_path) in result.stderr and "no records.jsonl" in result.stderr
