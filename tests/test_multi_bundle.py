"""Several bundles in one pass (issue 7): every shipped bundle is complete and does what its README says, and
`shapeqc analyse --bundles` / the Deploy app send each organ to the bundle covering it, loading each once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from shapeqc import cli
from shapeqc.bundle.loading import bundle_datalist, load_trained_bundles, new_bundle, training_corruption_families
from shapeqc.bundle.metadata import check_bundle_metadata
from shapeqc.training.quality_bars import bundle_quality

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SHIPPED = ("adrenal_gland", "hippocampus", "kidney", "liver", "mandible", "parotid_gland", "spleen")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_is_trained_calibrated_and_consistent(name):
    bundle = BUNDLES / name
    metadata = check_bundle_metadata(bundle)
    assert metadata["trained"] is True and (bundle / "models" / "model.pt").exists()
    config = ConfigParser.load_config_file(str(bundle / "configs" / "inference.yaml"))
    for key in ("spacing_mm", "grid_size", "margin"):
        assert metadata["canonical_grid"][key] == config[key], key
    thresholds = json.loads((bundle / "configs" / "thresholds.json").read_text())
    assert thresholds["profiles"][0]["metrics"]["dice"]["enabled"] is True
    # thresholds hold for the weights they were calibrated on: a new version ships with its own calibration
    assert {profile["bundle_version"] for profile in thresholds["profiles"]} == {metadata["version"]}
    assert (bundle / "docs" / "README.md").read_text().count("qc_quality.py --bundle bundles/" + name) >= 1
    assert (bundle / "LICENSE").exists()
    # the benchmark reports trained and unseen families apart from this list: it must match the training config
    assert metadata["training_corruptions"] == training_corruption_families(bundle)


@pytest.mark.parametrize("name", ["hippocampus", "mandible", "parotid_gland"])
def test_new_bundles_reconstruct_real_val_masks_as_documented(name):
    """Three real held-out masks: clean ones are reproduced about as documented; strong corruptions repaired."""
    bundle = BUNDLES / name
    documented = check_bundle_metadata(bundle)["eval_metrics"]
    items = bundle_datalist(bundle, str(ROOT.parent / "shared" / "data"), "validate#datalist")[:3]
    summary = bundle_quality(str(bundle), items)["summary"]
    assert summary["clean_reconstruction_dice_mean"] >= documented["clean_reconstruction_dice_mean"] - 0.01
    if summary["corrupted_cases"]:
        assert summary["corrupted_reconstruction_dice_mean"] > summary["corrupted_input_dice_mean"]


def test_analyse_sends_every_organ_to_the_bundle_covering_it(mixed_organs, tmp_path, capsys):
    folder, scan = mixed_organs
    assert cli.main(["analyse", str(folder), "--bundles", str(BUNDLES), "--output", str(tmp_path),
                     "--device", "cpu"]) == 0
    assert "7 bundle(s)" in capsys.readouterr().err  # each loaded once for the whole batch
    records = json.loads((tmp_path / "report.json").read_text())
    # the TotalSegmentator map's field of view cuts its kidneys, liver and spleen: recorded, not judged
    truncated = [r for r in records if r["case"] == "ts_map" and r["organ"] in ("kidney_left", "kidney_right",
                                                                                "liver", "spleen")]
    assert len(truncated) == 4 and all(r["status"] == "not_judged" for r in truncated), truncated
    records = [r for r in records if r not in truncated]
    judged = {(r["case"], r["organ"], r["bundle"]) for r in records}
    case = f"hn/{scan}"
    assert judged == {(case, "mandible", "mandible"), (case, "parotid_gland_left", "parotid_gland"),
                      (case, "parotid_gland_right", "parotid_gland"), ("hippocampus_001", "hippocampus", "hippocampus"),
                      ("ts_map", "adrenal_gland_left", "adrenal_gland"),
                      ("ts_map", "adrenal_gland_right", "adrenal_gland")}
    assert all(r["status"] in ("ok", "outlier") for r in records), [r["reason"] for r in records]
    assert (tmp_path / "hn" / scan / "mandible" / "reconstruction.nii.gz").exists()
    page = (tmp_path / "report.html").read_text()
    assert page.count('<tr data-index=') == len(records)  # one worklist row per judged organ
    for organ in ("mandible (mandible)", "parotid_gland_left (parotid_gland)", "hippocampus (hippocampus)"):
        assert f"<td>{organ}</td>" in page  # the per-organ summary


def test_a_folder_of_bundles_skips_an_untrained_one_but_a_named_one_is_refused(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    (models / "mandible").symlink_to(BUNDLES / "mandible")
    new_bundle("kidney_left", models / "kidney_left", BUNDLES / "adrenal_gland")
    warnings = []
    assert [b.name for b in load_trained_bundles([models], warn=warnings.append)] == ["mandible"]
    assert "kidney_left" in warnings[0] and "not trained" in warnings[0]
    with pytest.raises(Exception, match="not trained"):
        cli.main(["analyse", str(tmp_path), "--bundle", str(models / "kidney_left"), "--output", str(tmp_path / "o")])


def test_calibration_scores_each_item_as_its_own_organ():
    """A left and a right parotid of one held-out scan: calibration scores each as `shapeqc analyse` would (the
    right gland unmirrored), and reads the hippocampus label set."""
    from shapeqc.bundle.loading import load_bundle
    from shapeqc.calibration.profiles import calibrate
    from shapeqc.judging.analysis import score_organ
    from shapeqc.transforms.organ_loading import load_organ_mask

    shared = str(ROOT.parent / "shared" / "data")
    bundle = load_bundle(BUNDLES / "parotid_gland")
    items = bundle_datalist(BUNDLES / "parotid_gland", shared, "validate#datalist")[:2]
    assert [item["organ"] for item in items] == ["parotid_gland_left", "parotid_gland_right"]
    report = calibrate(str(BUNDLES / "parotid_gland"), items, write=False, bundle=bundle)
    for item, scores in zip(items, report["clean_scores"], strict=True):
        mask, affine, _ = load_organ_mask(item["mask"], organ=item["organ"])
        assert scores["dice"] == score_organ(bundle, mask, affine, item["organ"], {})[1]["dice"]
    hippocampus = bundle_datalist(BUNDLES / "hippocampus", shared, "validate#datalist")[:1]
    report = calibrate(str(BUNDLES / "hippocampus"), hippocampus, write=False)
    assert report["clean_scores"][0]["dice"] > 0.9
