"""Issue 21's bundles: the kidney, liver and spleen priors load, reconstruct real held-out masks as their READMEs
say, flag a strongly corrupted copy, and a real TotalSegmentator map through `--bundles bundles/` gets a record
for every organ a trained bundle covers (the example's small field of view cuts the abdominal organs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shapeqc import cli
from shapeqc.bundle.loading import bundle_datalist, load_bundle
from shapeqc.bundle.metadata import check_bundle_metadata
from shapeqc.calibration.corruptions import perlin
from shapeqc.judging.analysis import score_organ
from shapeqc.scoring.thresholds import decide, select_profile
from shapeqc.training.quality_bars import bundle_quality
from shapeqc.transforms.organ_loading import load_item_mask
from shapeqc.transforms.volume_io import voxel_spacing

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
ABDOMINAL = ("kidney", "liver", "spleen")
# a clean held-out organ comes back at least this close to the README's mean clean Dice (5 organs, not all 93)
CLEAN_DICE_TOLERANCE = 0.02


@pytest.mark.parametrize("name", ABDOMINAL)
def test_bundle_reconstructs_held_out_organs_and_flags_a_strong_corruption(name, kits_cases):
    bundle_dir = BUNDLES / name
    documented = check_bundle_metadata(bundle_dir)["eval_metrics"]
    bundle = load_bundle(bundle_dir)
    items = bundle_datalist(bundle_dir, str(kits_cases.parents[1]), "validate#datalist")[:5]
    assert len(items) == 5
    summary = bundle_quality(str(bundle_dir), items)["summary"]  # the README's measure, in the canonical grid
    assert summary["clean_reconstruction_dice_mean"] >= (documented["clean_reconstruction_dice_mean"]
                                                         - CLEAN_DICE_TOLERANCE), summary
    # Perlin blobs leaking out of the organ at the benchmark's strong severity (about twice the volume added).
    # (A 30% plane cut of the first held-out kidney scored Dice 0.971 against a 0.963 threshold and passed: the
    # kidney prior 0.1.0 reproduces cut kidneys, see its README.)
    mask, affine = load_item_mask(items[0])
    cut = perlin(mask, seed=0, add=True, strength=0.6)
    organ = items[0].get("organ") or bundle.organs[0]
    scores = score_organ(bundle, cut, affine, organ, {})[1]
    profile = select_profile(bundle.thresholds, voxel_spacing(affine), False)
    assert decide(scores, profile)[0] is True, scores


def test_totalsegmentator_example_gets_a_record_for_every_covered_organ(totalseg, tmp_path):
    """The example's kidneys, liver and spleen touch its border: each is `not_judged: truncated`, the adrenal
    glands are judged; nothing a trained bundle covers is silently skipped."""
    assert cli.main(["analyse", str(totalseg / "v2_multilabel_seg.nii.gz"), "--bundles", str(BUNDLES),
                     "--output", str(tmp_path), "--device", "cpu"]) == 0
    records = {r["organ"]: r for r in json.loads((tmp_path / "report.json").read_text())}
    assert set(records) == {"adrenal_gland_left", "adrenal_gland_right", "kidney_left", "kidney_right", "liver",
                            "spleen"}
    for organ in ("kidney_left", "kidney_right", "liver", "spleen"):
        assert records[organ]["status"] == "not_judged", records[organ]
        assert records[organ]["reason"].startswith("truncated"), records[organ]["reason"]
    assert records["kidney_left"]["bundle"] == records["kidney_right"]["bundle"] == "kidney"
    assert {records[o]["status"] for o in ("adrenal_gland_left", "adrenal_gland_right")} <= {"ok", "outlier"}
