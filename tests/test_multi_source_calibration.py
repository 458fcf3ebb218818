"""Calibration on clean organs of more than one source (issue 31, item 3): the kidney bundle's evaluate config reads a
second annotation team's label maps beside its held-out KiTS kidneys, and the threshold holds each source to its own
quantile."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shapeqc.bundle import datalists
from shapeqc.bundle.datalists import calibration_items
from shapeqc.bundle.loading import bundle_parser, load_bundle
from shapeqc.calibration.profiles import calibrate
from shapeqc.scoring.thresholds import leave_one_out_fpr, threshold_at
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
EVALSEG_KIDNEYS = {"name": "evalseg expert", "folder": "evalseg_multiorgan/gt", "organ": "kidney_left",
                   "labels": [3]}


BUNDLE = ROOT / "bundles" / "kidney"
CONFIGS = ("inference.yaml", "train.yaml", "evaluate.yaml")


@pytest.fixture(scope="module")
def kidney_calibration_items() -> list[dict]:
    """The kidney bundle's calibration items with evalseg's kidneys as a second source, as its evaluate config
    parses them (the first 2 held-out KiTS kidneys)."""
    parser = bundle_parser(BUNDLE, CONFIGS, dataset_dir=str(SHARED_DATA), val_limit=2,
                           calibration_second_sources=[EVALSEG_KIDNEYS])
    return parser.get_parsed_content("calibrate#items")


def test_second_source_items_are_tagged_and_a_missing_folder_is_named(kidney_calibration_items):
    # the shipped config calibrates on KiTS and evalseg's experts (the kidney 0.2.0 thresholds); [] is KiTS alone
    assert bundle_parser(BUNDLE, CONFIGS).get_parsed_content("calibration_second_sources") == [EVALSEG_KIDNEYS]
    kits, evalseg = kidney_calibration_items[:2], kidney_calibration_items[2:]
    assert [item["calibration_source"] for item in kits] == ["KiTS23 held-out"] * 2
    assert [item["case_id"] for item in evalseg] == ["11", "13", "15", "18", "21", "28", "37", "43", "7"]
    assert {(item["calibration_source"], item["organ"], tuple(item["labels"])) for item in evalseg} == {
        ("evalseg expert", "kidney_left", (3,))}
    with pytest.raises(FileNotFoundError, match="evalseg_multiorgan/nowhere"):
        calibration_items(str(SHARED_DATA), kits, "KiTS23 held-out",
                          [{**EVALSEG_KIDNEYS, "folder": "evalseg_multiorgan/nowhere"}])


# each abdominal bundle: its own held-out split, and evalseg's experts of its organ as the second source
SECOND_SOURCES = {"kidney": ("kits_kidney_split", "KiTS23 held-out", "kidney_left", 3),
                  "liver": ("lits_liver_split", "LiTS held-out", "liver", 6),
                  "spleen": ("msd_spleen_split", "MSD Task09 held-out", "spleen", 1)}


@pytest.mark.parametrize("name", sorted(SECOND_SOURCES))
def test_training_selects_and_calibration_sets_thresholds_on_a_second_source_when_asked(name):
    """Cross-source validation: the train config's validation organs are the held-out split, plus, when
    ``validation_second_sources`` names them, evalseg's expert organs; the evaluate config's calibration items are
    tagged by source (a second source's tags: the kidney test above)."""
    split, held_out, organ, label = SECOND_SOURCES[name]
    bundle = ROOT / "bundles" / name
    evalseg = {"name": "evalseg expert", "folder": "evalseg_multiorgan/gt", "organ": organ, "labels": [label]}
    own = [item["case_id"] for item in getattr(datalists, split)(str(SHARED_DATA), "val", limit=2)]
    shipped = bundle_parser(bundle, CONFIGS, dataset_dir=str(SHARED_DATA), val_limit=2)
    assert [item["case_id"] for item in shipped.get_parsed_content("validate#datalist")] == own
    assert shipped.get_parsed_content("validation_second_sources") == []
    # kidney 0.2.0 was calibrated on evalseg's experts as well; liver and spleen ship thresholds of their split alone
    calibrated_beside = [evalseg] if name == "kidney" else []
    assert shipped.get_parsed_content("calibration_second_sources") == calibrated_beside
    assert [item["calibration_source"] for item in shipped.get_parsed_content("calibrate#items")] == (
        [held_out] * 2 + ["evalseg expert"] * 9 * len(calibrated_beside))

    crossed = bundle_parser(bundle, CONFIGS[:2], dataset_dir=str(SHARED_DATA), val_limit=2,
                            validation_second_sources=[evalseg]).get_parsed_content("validate#datalist")
    assert [item["case_id"] for item in crossed[:2]] == own and "validation_source" not in crossed[0]
    assert {(item["validation_source"], item["organ"]) for item in crossed[2:]} == {("evalseg expert", organ)}
    # all 9 of evalseg's organs, read by their own labels (not TotalSegmentator's: "liver" would be its oesophagus)
    assert len(crossed) == 11 and all(item["labels"] == [label] for item in crossed[2:])


@pytest.mark.parametrize("organ,label,voxels", [("liver", 6, 2991518), ("spleen", 1, None), ("kidney_left", 3, None)])
def test_a_datalist_items_own_labels_win_over_totalsegmentators_table(organ, label, voxels):
    """evalseg's maps hold eight organs under their own numbers; read by TotalSegmentator's table, "liver" would be
    label 5 (evalseg's oesophagus). An item's ``labels`` are the organ, whatever else the map holds."""
    from shapeqc.transforms.organ_loading import load_item_mask

    path = SHARED_DATA / "evalseg_multiorgan" / "gt" / "7.nii.gz"
    mask, _ = load_item_mask({"mask": str(path), "organ": organ, "labels": [label]})
    expected = np.asarray(nib.load(path).dataobj) == label
    np.testing.assert_array_equal(mask, expected)
    if voxels is not None:  # index.csv's count of subject 7's expert liver
        assert int(mask.sum()) == voxels


def test_kidney_calibrated_on_kits_and_evalseg_holds_each_source_to_its_own_quantile(kidney_calibration_items):
    bundle_dir = BUNDLE
    items = kidney_calibration_items
    items = items[:2] + [item for item in items if item["case_id"] in ("7", "18")]
    assert [item["calibration_source"] for item in items] == ["KiTS23 held-out"] * 2 + ["evalseg expert"] * 2
    report = calibrate(str(bundle_dir), items, write=False, bundle=load_bundle(bundle_dir))
    profile = report["thresholds"]
    assert profile["clean_cases_by_source"] == {"KiTS23 held-out": 2, "evalseg expert": 2}
    dice = np.array([scores["dice"] for scores in report["clean_scores"]])
    sources = report["clean_sources"]
    rule = profile["metrics"]["dice"]
    assert rule["threshold"] == threshold_at(dice, 0.05, "below", sources)
    # each source's own 5% point (a twentieth of the way from its worse organ to its better one); the lower wins
    own = [np.quantile(dice[np.asarray(sources) == name], 0.05) for name in ("KiTS23 held-out", "evalseg expert")]
    assert rule["threshold"] == pytest.approx(min(own))
    assert rule["leave_one_out_fpr_by_source"] == leave_one_out_fpr(dice, 0.05, "below", sources)
    assert rule["leave_one_out_fpr"] == max(rule["leave_one_out_fpr_by_source"].values())
