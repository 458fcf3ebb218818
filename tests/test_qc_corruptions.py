"""The QC benchmark's corruption generators on real masks: each changes what it says, and seeds are honoured."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from shapeqc.calibration import corruptions as qc


@pytest.fixture(scope="module")
def masks(adrenal_val_masks):
    return [m.astype(bool) for m in adrenal_val_masks[:4]]


RANDOM_FAMILIES = ["perlin_add", "perlin_remove", "cube_add", "cube_remove", "island", "plane_cut", "hole"]


@pytest.mark.parametrize("family", sorted(qc.FAMILIES))
def test_same_seed_same_corruption_and_every_family_changes_the_mask(family, masks):
    generate, severities = qc.FAMILIES[family]
    for kwargs in severities:
        first, again = generate(masks[0], 5, **kwargs), generate(masks[0], 5, **kwargs)
        assert first.dtype == bool and first.shape == masks[0].shape
        assert np.array_equal(first, again)
        assert qc.volume_change(masks[0], first) > 0.0
    if family in RANDOM_FAMILIES:
        assert any(not np.array_equal(generate(m, 5, **severities[0]), generate(m, 6, **severities[0]))
                   for m in masks)


@pytest.mark.parametrize("family, grows", [("perlin_add", True), ("cube_add", True), ("dilation", True),
                                           ("island", True), ("perlin_remove", False), ("cube_remove", False),
                                           ("erosion", False), ("plane_cut", False), ("hole", False),
                                           ("dropped_slices", False)])
def test_additions_only_add_and_removals_only_remove(family, grows, masks):
    generate, severities = qc.FAMILIES[family]
    for mask in masks:
        out = generate(mask, 1, **severities[-1])
        assert (out >= mask).all() if grows else (out <= mask).all()


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_plane_cut_removes_the_stated_fraction(fraction, masks):
    for mask in masks:
        assert qc.volume_change(mask, qc.plane_cut(mask, 2, fraction)) == pytest.approx(fraction, abs=0.01)


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_island_is_a_separate_ball_of_the_stated_volume(fraction, masks):
    for mask in masks:
        out = qc.island(mask, 3, fraction)
        assert qc.volume_change(mask, out) == pytest.approx(fraction, rel=0.15)
        _, components = ndimage.label(out)
        _, before = ndimage.label(mask)
        assert components == before + 1


@pytest.mark.parametrize("fraction", [0.05, 0.15])
def test_hole_is_inside_and_about_the_stated_volume(fraction, masks):
    for mask in masks:
        out = qc.hole(mask, 4, fraction)
        assert 0.5 * fraction <= qc.volume_change(mask, out) <= 1.05 * fraction


@pytest.mark.parametrize("slices", [1, 3])
def test_dropped_slices_empties_exactly_that_many_axial_slices(slices, masks):
    for mask in masks:
        out = qc.dropped_slices(mask, 7, slices)
        emptied = [k for k in range(mask.shape[2]) if mask[:, :, k].any() and not out[:, :, k].any()]
        assert len(emptied) == slices and emptied == list(range(emptied[0], emptied[0] + slices))
        changed = np.flatnonzero((mask != out).any(axis=(0, 1)))
        assert set(changed) == set(emptied)


def test_dilation_and_erosion_are_scipy_morphology(masks):
    mask = masks[0]
    assert np.array_equal(qc.dilated(mask, 0, 2), ndimage.binary_dilation(mask, iterations=2))
    assert np.array_equal(qc.eroded(mask, 0, 1), ndimage.binary_erosion(mask))


def test_swap_puts_the_donor_shape_on_the_organ(masks):
    out = qc.swapped(masks[0], 0, masks[1])
    assert out.sum() == masks[1].sum()  # nothing of the donor falls off the array here
    assert np.abs(np.argwhere(out).mean(0) - np.argwhere(masks[0]).mean(0)).max() <= 0.5 + 1e-6


def test_swap_through_world_space_takes_donors_of_another_grid(masks):
    same = qc.swapped(masks[0], 0, masks[1], np.eye(4), np.eye(4))
    np.testing.assert_array_equal(same, qc.swapped(masks[0], 0, masks[1]))
    # the donor stored at half the resolution (2 mm voxels, shifted origin) lands as the same shape
    coarse = masks[1][::2, ::2, ::2]
    donor_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    donor_affine[:3, 3] = (-30.0, 5.0, 12.0)
    out = qc.swapped(masks[0], 0, coarse, np.eye(4), donor_affine)
    expected = ndimage.zoom(coarse.astype(np.uint8), 2, order=0) > 0
    assert abs(int(out.sum()) - int(expected.sum())) <= 0.02 * expected.sum()
    assert np.abs(np.argwhere(out).mean(0) - np.argwhere(masks[0]).mean(0)).max() <= 1.0


@pytest.mark.parametrize("donor_voxel_mm", [1.0, 2.0, 0.5])
def test_swap_matching_volume_keeps_only_the_donor_shape(donor_voxel_mm, masks):
    """Another organ's shape in place: the donor, stored at any voxel size, lands at the organ's volume in mm^3."""
    mask, donor = masks[0], masks[2]
    donor_affine = np.diag([donor_voxel_mm] * 3 + [1.0])
    out = qc.swapped(mask, 0, donor, np.eye(4), donor_affine, match_volume=True)
    assert out.sum() == pytest.approx(mask.sum(), rel=0.05)
    assert np.abs(np.argwhere(out).mean(0) - np.argwhere(mask).mean(0)).max() <= 1.0
    # the shape is the donor's, scaled: at the donor's own scale it matches the plain swap of the donor scaled
    scale = (mask.sum() / (donor.sum() * donor_voxel_mm ** 3)) ** (1 / 3)
    scaled_affine = np.diag([donor_voxel_mm * scale] * 3 + [1.0])
    plain = qc.swapped(mask, 0, donor, np.eye(4), scaled_affine)
    assert (out != plain).sum() <= 0.02 * mask.sum()


def test_a_tiny_qc_benchmark_run_writes_its_table(tmp_path):
    """benchmarks/qc_quality.py end to end: 2 clean val masks, one family, baselines on 20 training masks."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # the shipped bundle before its calibration: the scores and AUROCs must still be written (a run is 25 min)
    uncalibrated = tmp_path / "uncalibrated" / "adrenal_gland"
    shutil.copytree(root / "bundles" / "adrenal_gland", uncalibrated)
    (uncalibrated / "configs" / "thresholds.json").unlink()
    # the first val item left out (as a bundle leaves out those that selected its weights)
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "qc_quality.py"), "--cases", "2",
                             "--skip-cases", "1", "--bundle", str(uncalibrated),
                             "--train-limit", "20", "--families", "plane_cut,swap_organ", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "qc_quality.md").read_text()
    assert "no calibrated thresholds when the run ended" in table and "| - |" in table
    # plane_cut is one of the shipped bundle's training families (metadata training_corruptions): starred
    assert '| plane_cut* {"fraction": 0.1} | 2 | 0.100 |' in table
    assert "E rules" in table and "Quality estimation" in table
    scores = json.loads((tmp_path / "qc_quality.json").read_text())
    assert scores["clean_cases"] == 2 and scores["corrupted_cases"] == 6
    from shapeqc.bundle.loading import bundle_datalist
    from shapeqc.evaluation.protocol import _case_name

    val_names = [_case_name(item) for item in bundle_datalist(uncalibrated, str(root.parent / "shared" / "data"))]
    assert [c["case"] for c in scores["clean_scores"]] == val_names[1:3]
    assert scores["skipped_cases"] == 1 and "--skip-cases 1" in scores["command"]
    assert "Clean cases: 2 real val masks (after the first 1, which selected the weights)" in table
    assert scores["shipped_dice_threshold"] is None and scores["clean_fpr_at_shipped_threshold"] is None
    assert set(scores["families"]) == {'plane_cut {"fraction": 0.1}', 'plane_cut {"fraction": 0.3}', "swap_organ {}"}
    assert len(scores["clean_scores"]) == 2 and len(scores["corrupted_scores"]) == 6
    assert [c["family"] for c in scores["corrupted_scores"]] == ["plane_cut", "plane_cut", "swap_organ"] * 2
    # the organ swap: a hippocampus (the default other organ) at the gland's volume: most voxels differ
    assert scores["swap_organ_from"] == "hippocampus" and "`hippocampus` bundle's val masks" in table
    organ_swaps = [c for c in scores["corrupted_scores"] if c["family"] == "swap_organ"]
    assert all(c["volume_change"] > 1.0 and c["true_dice"] < 0.5 for c in organ_swaps)
    # every row changes >= 10% of the organ, so the family mean is the plain mean of their AUROCs; without the
    # organ swap (the rows of earlier runs), the mean of the plane cut rows
    assert scores["family_mean_moderate"]["rows"] == sorted(scores["families"])
    assert scores["family_mean_moderate"]["shapeqc_dice"] == pytest.approx(
        np.mean([row["shapeqc_dice"]["auroc"] for row in scores["families"].values()]))
    assert scores["family_mean_moderate_without_organ_swap"]["shapeqc_dice"] == pytest.approx(
        np.mean([row["shapeqc_dice"]["auroc"] for row in scores["families"].values() if row["family"] == "plane_cut"]))
    assert "Mean AUROC over the 3 family rows" in table and "without the organ swap row (2 rows" in table
    assert (tmp_path / "qc_quality_roc.png").stat().st_size > 10_000
    assert all("shapeqc_dice_or_B" in c["scores"] for c in scores["clean_scores"] + scores["corrupted_scores"])
    assert "Dice or B" in table
    # --rescore rebuilds the same tables from the stored scores, without reconstructing anything
    rescored_dir = tmp_path / "rescored"
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "qc_quality.py"), "--rescore",
                             str(tmp_path / "qc_quality.json"), "--out", str(rescored_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rescored = json.loads((rescored_dir / "qc_quality.json").read_text())
    assert rescored["families"] == scores["families"] and rescored["command"] == scores["command"]
    assert "--rescore" in rescored["rescored"] and "--rescore" in (rescored_dir / "qc_quality.md").read_text()
    # --thresholds-from: a calibration finished after the run sets the shipped threshold; AUROCs do not move
    later = tmp_path / "later_bundle"
    (later / "configs").mkdir(parents=True)
    (later / "configs" / "thresholds.json").write_text(json.dumps({"profiles": [
        {"spacing_mm": None, "metrics": {"dice": {"threshold": 1.5, "worse_when": "below", "enabled": True}}}]}))
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "qc_quality.py"), "--rescore",
                             str(tmp_path / "qc_quality.json"), "--out", str(tmp_path / "later"),
                             "--thresholds-from", str(later)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    relabelled = json.loads((tmp_path / "later" / "qc_quality.json").read_text())
    assert relabelled["shipped_dice_threshold"] == 1.5 and relabelled["clean_fpr_at_shipped_threshold"] == 1.0
    assert {k: v["shapeqc_dice"]["auroc"] for k, v in relabelled["families"].items()} == {
        k: v["shapeqc_dice"]["auroc"] for k, v in scores["families"].items()}
    assert all(v["shapeqc_dice"]["detection_shipped"] == 1.0 for v in relabelled["families"].values())
    assert "--thresholds-from bundles/later_bundle" in relabelled["rescored"]
    # the shipped bundle's own thresholds: the profile the analysis applies at 1 mm
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "qc_quality.py"), "--rescore",
                             str(tmp_path / "qc_quality.json"), "--out", str(tmp_path / "shipped"),
                             "--thresholds-from", str(root / "bundles" / "adrenal_gland")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shipped = json.loads((tmp_path / "shipped" / "qc_quality.json").read_text())
    profiles = json.loads((root / "bundles" / "adrenal_gland" / "configs" / "thresholds.json").read_text())["profiles"]
    as_given = next(p for p in profiles if p["spacing_mm"] is None)
    assert shipped["shipped_dice_threshold"] == as_given["metrics"]["dice"]["threshold"]
    assert shipped["clean_fpr_at_shipped_threshold"] < 1.0
    low, high = shipped["clean_fpr_interval_95"]
    assert low <= shipped["clean_fpr_at_shipped_threshold"] <= high
    # the calibration's leave-one-out rate, the figure for new clean glands, quoted from the shipped profile
    assert shipped["calibration_leave_one_out_fpr"] == as_given["metrics"]["dice"]["leave_one_out_fpr"]
    assert shipped["calibration_clean_cases"] == as_given["clean_cases"]
    shipped_table = (tmp_path / "shipped" / "qc_quality.md").read_text()
    assert "False-positive rate on the clean cases at the shipped Dice threshold" in shipped_table
    loo = as_given["metrics"]["dice"]["leave_one_out_fpr"]
    assert f"(leave one out, the rate a new clean organ meets): {loo:.3f}" in shipped_table



def test_the_combined_score_puts_each_part_on_its_clean_scale_and_takes_the_larger():
    from shapeqc.evaluation import statistics as qc_quality
    dice = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.89]
    clean = [{"shapeqc_dice": d, "B_descriptors": float(b)} for d, b in zip(dice, range(11), strict=True)]
    dice_median, dice_span = qc_quality.clean_scale("shapeqc_dice", clean)
    b_median, b_span = qc_quality.clean_scale("B_descriptors", clean)
    assert (dice_median, b_median) == pytest.approx((-0.94, 5.0))
    assert (dice_span, b_span) == pytest.approx((0.045, 4.5))
    at_dice_cut = {"shapeqc_dice": 0.895, "B_descriptors": 5.0}  # Dice at its 95th percentile, B at its median
    at_b_cut = {"shapeqc_dice": 0.94, "B_descriptors": 9.5}
    both_bad = {"shapeqc_dice": 0.5, "B_descriptors": 50.0}
    qc_quality.add_combined_scores(clean, [at_dice_cut, at_b_cut, both_bad])
    assert at_dice_cut["shapeqc_dice_or_B"] == pytest.approx(1.0)
    assert at_b_cut["shapeqc_dice_or_B"] == pytest.approx(1.0)
    assert both_bad["shapeqc_dice_or_B"] == pytest.approx(max(0.44 / 0.045, 45.0 / 4.5))


def test_a_clean_case_is_put_on_the_other_clean_cases_scale():
    from shapeqc.evaluation import statistics as qc_quality

    rng = np.random.default_rng(0)
    clean = [{"shapeqc_dice": float(d), "B_descriptors": float(b)}
             for d, b in zip(rng.uniform(0.9, 1.0, 12), rng.uniform(0, 10, 12), strict=True)]
    for index in range(len(clean)):
        others = [dict(c) for c in clean[:index] + clean[index + 1:]]
        as_new = dict(clean[index])
        qc_quality.add_combined_scores(others, [as_new])
        expected = as_new["shapeqc_dice_or_B"]
        qc_quality.add_combined_scores(clean, [])
        assert clean[index]["shapeqc_dice_or_B"] == pytest.approx(expected)
    # and not on the scale of all of them, its own score included: the largest clean Dice-badness would get 1.0+
    assert max(c["shapeqc_dice_or_B"] for c in clean) > 1.0


def test_a_tiny_score_variants_run_writes_its_table(tmp_path):
    """benchmarks/score_variants.py end to end: 2 clean val masks and their plane cuts, every variant scored."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "score_variants.py"), "--cases", "2",
                             "--families", "plane_cut", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "score_variants.json").read_text())
    assert scores["clean_cases"] == 2 and scores["corrupted_cases"] == 4
    for case in scores["clean_scores"] + [c["scores"] for c in scores["corrupted_scores"]]:
        assert set(case) == {"dice", "soft_dice", "dice_p0.35", "largest_added_p0.35", "dice_iterated",
                             "dice_flip_mean"}
        assert all(0.0 <= case[k] <= 1.0 for k in ("dice", "soft_dice", "dice_p0.35", "dice_iterated",
                                                    "dice_flip_mean"))
    # a clean mask is reproduced closely by every Dice-like score; a 30% plane cut is not, by Dice itself
    assert min(case["dice"] for case in scores["clean_scores"]) > 0.95
    # the mirrored reconstruction is of the same gland (the prior trained on that flip): it agrees as closely
    assert min(case["dice_flip_mean"] for case in scores["clean_scores"]) > 0.95
    cut = [c["scores"]["dice"] for c in scores["corrupted_scores"] if c["params"] == {"fraction": 0.3}]
    assert len(cut) == 2 and max(cut) < 1.0
    assert '| plane_cut {"fraction": 0.3} | 2 | 0.300 |' in (tmp_path / "score_variants.md").read_text()


def test_the_ct_profile_benchmark_corrupts_re_sliced_masks_and_uses_that_profile(tmp_path):
    """``--spacing``: masks re-sliced as a 0.8 x 0.8 x 2.5 mm acquisition before corruption, judged at that profile."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "qc_quality.py"), "--cases", "2",
                             "--train-limit", "10", "--families", "dilation,swap", "--spacing", "0.8", "0.8", "2.5",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "qc_quality.json").read_text())
    assert scores["spacing_mm"] == [0.8, 0.8, 2.5] and scores["threshold_profile"] == [0.8, 0.8, 2.5]
    assert {c["family"] for c in scores["corrupted_scores"]} == {"dilation", "swap"}
    thresholds = json.loads((root / "bundles" / "adrenal_gland" / "configs" / "thresholds.json").read_text())
    ct = next(p for p in thresholds["profiles"] if p["spacing_mm"] == [0.8, 0.8, 2.5])
    assert scores["shipped_dice_threshold"] == ct["metrics"]["dice"]["threshold"]
    assert "--spacing 0.8 0.8 2.5" in (tmp_path / "qc_quality.md").read_text()


def test_benchmark_masks_re_sliced_for_a_ct_profile_keep_room_for_corruptions(adrenal_npz):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    from shapeqc.bundle.loading import bundle_datalist
    from shapeqc.evaluation.protocol import load_masks

    items = bundle_datalist(root / "bundles" / "adrenal_gland", str(adrenal_npz.parents[1]), "validate#datalist")[:2]
    as_given = load_masks(items, None)
    ct = load_masks(items, None, (0.8, 0.8, 2.5))
    for (case, mask, affine, _), (ct_case, ct_mask, ct_affine, _) in zip(as_given, ct, strict=True):
        assert ct_case == case
        assert np.allclose(np.linalg.norm(ct_affine[:3, :3], axis=0), (0.8, 0.8, 2.5))
        # the same organ volume in mm^3 (within the re-slicing's staircase), and 12 empty voxels on every side
        volume, ct_volume = mask.sum() * abs(np.linalg.det(affine[:3, :3])), ct_mask.sum() * 0.8 * 0.8 * 2.5
        assert abs(ct_volume - volume) < 0.15 * volume
        found = np.argwhere(ct_mask)
        assert found.min() >= 11 and np.all(found.max(0) <= np.array(ct_mask.shape) - 12)


def test_a_ct_profile_swap_is_re_sliced_like_the_clean_mask(adrenal_npz):
    """With one case the donor is the case itself: its swap on the acquisition grid is exactly its clean mask there,
    and with two cases each swap is the other gland, re-sliced onto this case's grid."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    from shapeqc.bundle.loading import bundle_datalist
    from shapeqc.evaluation.protocol import load_masks, on_acquisition_grids, organ_swaps_in_place, swaps_in_place

    items = bundle_datalist(root / "bundles" / "adrenal_gland", str(adrenal_npz.parents[1]), "validate#datalist")[:2]
    as_given, acquired = load_masks(items, None), load_masks(items, None, (0.8, 0.8, 2.5))
    alone = on_acquisition_grids(swaps_in_place(as_given[:1]), as_given[:1], acquired[:1])[0]
    np.testing.assert_array_equal(alone, acquired[0][1])
    pair = on_acquisition_grids(swaps_in_place(as_given), as_given, acquired)
    for index, swap in enumerate(pair):
        donor_volume_mm3 = as_given[1 - index][1].sum() * abs(np.linalg.det(as_given[1 - index][2][:3, :3]))
        assert swap.shape == acquired[index][1].shape
        assert abs(swap.sum() * 0.8 * 0.8 * 2.5 - donor_volume_mm3) < 0.15 * donor_volume_mm3
    # the organ swap the same way: a hippocampus at each gland's volume, acquired on the gland's grid
    donors = load_masks(bundle_datalist(root / "bundles" / "hippocampus", str(adrenal_npz.parents[1]),
                                        "validate#datalist")[:1], None)
    organ_swaps = on_acquisition_grids(organ_swaps_in_place(as_given, donors), as_given, acquired)
    for (_, clean, affine, _), swap in zip(as_given, organ_swaps, strict=True):
        gland_volume_mm3 = clean.sum() * abs(np.linalg.det(affine[:3, :3]))
        assert abs(swap.sum() * 0.8 * 0.8 * 2.5 - gland_volume_mm3) < 0.15 * gland_volume_mm3


def test_a_swap_family_without_its_masks_in_place_is_refused_by_name(masks):
    from shapeqc.evaluation import protocol as qc_quality

    clean = [("case_0", masks[0], np.eye(4), "")]
    with pytest.raises(ValueError, match="'swap_organ' needs its masks put in place"):
        qc_quality.corrupted_cases(clean, ["hole", "swap_organ"], {"swap": [masks[1]]})
    cases = qc_quality.corrupted_cases(clean, ["swap"], {"swap": [masks[1]]})
    assert len(cases) == 1 and np.array_equal(cases[0]["mask"], masks[1]) and cases[0]["family"] == "swap"


def test_training_transforms_name_families_of_the_one_registry():
    """The corruption transforms say which benchmark families they train (``families``); every name is a family of
    the one registry, and the calibration's families come from it too."""
    from shapeqc import transforms
    from shapeqc.calibration.profiles import CALIBRATION_FAMILIES

    named = [f for name in transforms.__all__ for f in getattr(getattr(transforms, name), "families", ())]
    assert len(named) >= 8
    assert set(named) <= set(qc.FAMILIES)
    assert set(CALIBRATION_FAMILIES) <= set(qc.FAMILIES)
