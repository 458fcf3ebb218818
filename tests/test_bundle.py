"""The adrenal gland bundle run for real through `python -m monai.bundle` (tiny preset, a few real masks)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from shapeqc.bundle.loading import bundle_parser, moved_targets
from shapeqc.bundle.metadata import check_bundle_metadata, metadata_problems
from shapeqc.scoring.thresholds import leave_one_out_fpr

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "adrenal_gland"
TINY = ["--grid_size", "32", "--channels", "[4,8,8]", "--hidden", "16", "--num_points", "256", "--num_workers", "0"]


def bundle_command(bundle_root: Path, *args: str) -> list[str]:
    configs = bundle_root / "configs"
    return [sys.executable, "-m", "monai.bundle", *args, "--bundle_root", str(bundle_root),
            "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]


def config_list(configs: Path, *names: str) -> str:
    """A ``--config_file`` value merging ``names`` of the folder ``configs`` in order."""
    return "[" + ",".join(f"'{configs / name}'" for name in names) + "]"


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def trained_copy(tmp_path_factory, adrenal_npz) -> tuple[Path, str]:
    """A copy of the bundle (configs only) trained for 2 iterations on 8 real masks."""
    root = tmp_path_factory.mktemp("bundle") / "adrenal_gland"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    shared_data = adrenal_npz.parents[1]
    output = run(bundle_command(root, "run", "training") + [
        "--config_file", config_list(root / "configs", "inference.yaml", "train.yaml"),
        "--dataset_dir", str(shared_data),
        "--epochs", "1", "--train_limit", "8", "--val_limit", "1", *TINY])
    return root, output


def test_two_iteration_training_run_writes_a_checkpoint(trained_copy):
    root, output = trained_copy
    losses = [float(v) for v in re.findall(r"train_loss: ([0-9.eE+-]+|nan|inf)", output)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert "val_mean_dice" in output
    assert (root / "models" / "model.pt").exists()
    assert list((root / "models").glob("checkpoint_epoch=1.pt"))


def test_training_resumes_from_a_trainer_checkpoint(trained_copy, adrenal_npz):
    root, _ = trained_copy
    checkpoint = next((root / "models").glob("checkpoint_epoch=1.pt"))
    output = run(bundle_command(root, "run", "training") + [
        "--config_file", config_list(root / "configs", "inference.yaml", "train.yaml"),
        "--dataset_dir", str(adrenal_npz.parents[1]),
        "--epochs", "2", "--train_limit", "8", "--val_limit", "1", "--resume_from", str(checkpoint), *TINY])
    assert "Epoch: 2/2" in output and "Epoch: 1/2" not in output


def test_ckpt_export_gives_the_eager_logits(trained_copy):
    root, _ = trained_copy
    exported = root / "models" / "model.ts"
    run(bundle_command(root, "ckpt_export", "network_def") + [
        "--config_file", str(root / "configs" / "inference.yaml"), "--filepath", str(exported),
        "--ckpt_file", str(root / "models" / "model.pt"), *TINY[:6]])
    scripted = torch.jit.load(str(exported))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.yaml"))
    parser.update({"grid_size": 32, "channels": [4, 8, 8], "hidden": 16})
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    scripted.eval()
    generator = torch.Generator().manual_seed(0)
    grid = (torch.rand(2, 1, 32, 32, 32, generator=generator) > 0.6).float()
    points = torch.rand(2, 500, 3, generator=generator) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(grid, points), eager(grid, points))


def test_shipped_metadata_is_complete():
    metadata = check_bundle_metadata(BUNDLE)
    assert set(metadata["organs"]) == {"adrenal_gland_left", "adrenal_gland_right"}
    assert metadata["canonical_grid"]["grid_size"] == ConfigParser.load_config_file(
        str(BUNDLE / "configs" / "inference.yaml"))["grid_size"]


def test_metadata_check_catches_missing_fields():
    problems = metadata_problems({"version": "1.0", "network_data_format": {"inputs": {"image": {"type": "image"}}}})
    assert "missing key 'task'" in problems
    assert any("inputs.image lacks 'dtype'" in p for p in problems)
    assert "network_data_format has no outputs" in problems
    assert "changelog has no entry for version 1.0" in problems


def test_two_process_distributed_training_on_cpu(tmp_path, adrenal_npz):
    root = tmp_path / "adrenal_gland"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    configs = root / "configs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                "--tee", "3"]
    command = torchrun + ["-m", "monai.bundle", "run", "training", "--bundle_root", str(root),
                          "--meta_file", str(configs / "metadata.json"),
                          "--logging_file", str(configs / "logging.conf"),
                          "--config_file",
                          config_list(configs, "inference.yaml", "train.yaml", "multi_gpu_train.yaml"),
                          "--dataset_dir", str(adrenal_npz.parents[1]), "--epochs", "1", "--train_limit", "8",
                          "--val_limit", "2", *TINY]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "terminate called without an active exception" in result.stdout + result.stderr:
        # a rank aborted by std::terminate in torch's native shutdown, seen once in 2026-12 CI and not reproduced
        # (the same run passed alone): one more run; any other failure, or the same twice, fails the test
        shutil.rmtree(root / "models", ignore_errors=True)
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for rank in (0, 1):  # both ranks trained and validated
        assert re.search(rf"\[default{rank}\]:.*SupervisedTrainer - INFO - Engine run finished", output)
        assert re.search(rf"\[default{rank}\]:.*SupervisedEvaluator - INFO - Engine run finished", output)
    assert "[default0]:" in output and "train_loss" in output
    assert not re.search(r"\[default1\]:.*train_loss", output)  # only rank 0 logs
    assert sorted(p.name for p in (root / "models").iterdir()) == ["checkpoint_epoch=1.pt", "model.pt"]
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(key.startswith("module.") for key in state)  # saved unwrapped: loads into the plain IF-Net


def test_new_bundle_is_complete_trainable_and_refused_until_trained(tmp_path, adrenal_npz):
    from shapeqc import cli
    from shapeqc.bundle.loading import UntrainedBundleError, trained_bundle

    out = tmp_path / "kidney_left"
    assert cli.main(["new-bundle", "--organ", "kidney_left", "--from", str(BUNDLE), "--out", str(out),
                     "--size", "32", "--preset", "tiny"]) == 0
    metadata = check_bundle_metadata(out)
    assert metadata["organs"] == ["kidney_left", "kidney_right"] and metadata["trained"] is False
    assert metadata["canonical_grid"]["grid_size"] == 32
    with pytest.raises(UntrainedBundleError, match="not trained"):
        trained_bundle(out)
    with pytest.raises(ValueError, match="not a TotalSegmentator organ"):
        cli.main(["new-bundle", "--organ", "kidney_middle", "--from", str(BUNDLE), "--out", str(tmp_path / "x")])

    # trainable as generated: a datalist from `shapeqc datalist` (real masks stand in for kidneys here)
    data = tmp_path / "data"
    assert cli.main(["datalist", str(adrenal_npz), "--out", str(data / "datalist.json"), "--val", "0.01"]) == 0
    output = run(bundle_command(out, "run", "training") + [
        "--config_file", config_list(out / "configs", "inference.yaml", "train.yaml"),
        "--dataset_dir", str(data), "--epochs", "1",
        "--train_limit", "8", "--val_limit", "1", "--num_points", "256", "--num_workers", "0"])
    assert len(re.findall(r"train_loss: [0-9.]+", output)) == 2
    assert (out / "models" / "model.pt").exists()


def test_evaluating_and_inference_configs_run_on_the_trained_copy(trained_copy, adrenal_npz, tmp_path):
    import nibabel as nib

    root, _ = trained_copy
    configs = root / "configs"
    output = run(bundle_command(root, "run", "evaluating") + [
        "--config_file", config_list(configs, "inference.yaml", "train.yaml", "evaluate.yaml"),
        "--dataset_dir", str(adrenal_npz.parents[1]), "--val_limit", "2", "--train_limit", "8", *TINY])
    assert "val_mean_dice" in output
    raw = (root / "runs" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert raw[1].startswith("adrenalmnist3d_val_0000,") and len(raw) == 3
    # ... and calibrated the network it evaluated: one threshold profile per acquisition spacing
    thresholds = json.loads((root / "configs" / "thresholds.json").read_text())
    profiles = thresholds["profiles"]
    assert [p["spacing_mm"] for p in profiles] == [None, [0.8, 0.8, 2.5], [1.0, 1.0, 1.0]]
    # and the plausibility bounds from the training masks it was given (8 here)
    assert "8 training organs" in thresholds["plausibility"]["rule"]
    assert all(p["clean_cases"] == 2 and 0.0 <= p["metrics"]["dice"]["threshold"] <= 1.0 for p in profiles)
    report = json.loads((root / "docs" / "calibration_as_given.json").read_text())
    assert set(report["families"]) == {"perlin_add", "perlin_remove", "cube_add", "cube_remove"}
    # the rate a clean case outside the calibration meets is recorded with the threshold, from the same scores
    assert profiles[0]["metrics"]["dice"]["leave_one_out_fpr"] == leave_one_out_fpr(
        [s["dice"] for s in report["clean_scores"]], 0.05, "below")
    assert (root / "docs" / "calibration_roc_0.8x0.8x2.5.png").stat().st_size > 10_000

    segmentation = adrenal_npz.parents[1] / "totalsegmentator_example" / "v2_multilabel_seg.nii.gz"
    run(bundle_command(root, "run") + [
        "--config_file", str(configs / "inference.yaml"),
        "--input_files", f"['{segmentation}']", "--organ", "adrenal_gland_left", "--output_dir", str(tmp_path),
        *TINY])
    written = nib.load(str(tmp_path / "v2_multilabel_seg_reconstruction.nii.gz"))
    source = nib.load(str(segmentation))
    assert written.shape == source.shape
    assert (written.affine == source.affine).all()


def test_shipped_weights_reconstruct_real_val_masks_as_documented(adrenal_npz):
    """Five real val masks: figures at least those in the bundle's metadata (docs/README.md) minus a tolerance."""
    from shapeqc.bundle.datalists import adrenalmnist3d_split
    from shapeqc.bundle.loading import trained_bundle
    from shapeqc.training.quality_bars import bundle_quality

    documented = trained_bundle(BUNDLE)["eval_metrics"]
    report = bundle_quality(str(BUNDLE), adrenalmnist3d_split(str(adrenal_npz.parents[1]), "val", 5))
    summary = report["summary"]
    # clean reconstructions: documented mean over 93 cases 0.9994; five cases may sit a little lower
    assert summary["clean_reconstruction_dice_mean"] >= documented["clean_reconstruction_dice_mean"] - 0.003
    # the prior repairs strong corruptions and leaves slight ones about as they are
    strong = [case for case in report["cases"] if case["corrupted_input_dice"] < 0.9]
    assert len(strong) >= 2
    for case in report["cases"]:
        if case in strong:
            assert case["corrupted_reconstruction_dice"] > case["corrupted_input_dice"] + 0.1, case
        else:
            assert case["corrupted_reconstruction_dice"] > case["corrupted_input_dice"] - 0.01, case


@pytest.mark.parametrize("organ", ["adrenal_gland_left", "adrenal_gland_right"])
def test_bundle_inference_config_writes_what_shapeqc_analyse_reconstructs(tmp_path, organ):
    """One pipeline: `python -m monai.bundle run --config_file configs/inference.yaml` with the shipped weights and
    `shapeqc analyse` write the same reconstruction of a real gland, voxel for voxel: the bundle's example organ
    (a right gland, 1 mm) and its mirror image as a left gland, in a TotalSegmentator-style folder (the left gland
    is mirrored onto the right side and back on both paths). (The TotalSegmentator example's own glands are 3 mm:
    0.6.0 reconstructs a handful of their voxels, too few to show anything.)"""
    import nibabel as nib
    import numpy as np

    example = nib.load(str(BUNDLE / "docs" / "example_organ.nii.gz"))
    gland = np.asarray(example.dataobj).astype(np.uint8)
    affine = example.affine.copy()
    if organ == "adrenal_gland_left":  # the mirror image across the sagittal plane through the volume's centre
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        affine = flip @ affine
    folder = tmp_path / "case" / "segmentations"
    folder.mkdir(parents=True)
    segmentation = folder / f"{organ}.nii.gz"
    nib.save(nib.Nifti1Image(gland, affine), str(segmentation))
    configs = BUNDLE / "configs"
    run(bundle_command(BUNDLE, "run") + [
        "--config_file", str(configs / "inference.yaml"), "--input_files", f"['{segmentation}']",
        "--organ", organ, "--output_dir", str(tmp_path / "bundle_run")])
    run([sys.executable, "-m", "shapeqc", "analyse", str(segmentation), "--organ", organ, "--bundle", str(BUNDLE),
         "--output", str(tmp_path / "analyse")])
    from_bundle = nib.load(str(tmp_path / "bundle_run" / f"{organ}_reconstruction.nii.gz"))
    from_analyse = nib.load(str(tmp_path / "analyse" / organ / organ / "reconstruction.nii.gz"))
    assert np.array_equal(from_bundle.affine, from_analyse.affine)
    bundle_voxels = np.asarray(from_bundle.dataobj) > 0
    assert 2 * (bundle_voxels & (gland > 0)).sum() / (bundle_voxels.sum() + (gland > 0).sum()) > 0.9  # a gland
    assert np.array_equal(bundle_voxels, np.asarray(from_analyse.dataobj) > 0)


def test_a_bundle_naming_module_paths_from_before_the_stage_packages_gets_a_clear_error(tmp_path):
    """A bundle shared before issue 34 names shapeqc.networks / shapeqc.reconstruction: loading it says what to
    rename, instead of MONAI's 'cannot locate'."""
    import shutil

    bundle = shutil.copytree(Path(__file__).resolve().parents[1] / "bundles" / "spleen", tmp_path / "spleen")
    config = bundle / "configs" / "inference.yaml"
    config.write_text(config.read_text().replace("shapeqc.prior.ifnet.IFNet", "shapeqc.networks.IFNet")
                      .replace("shapeqc.prior.reconstruction.", "shapeqc.reconstruction."))
    with pytest.raises(ValueError, match=r"shapeqc\.networks\. -> shapeqc\.prior\.ifnet\.; "
                                         r"shapeqc\.reconstruction\. -> shapeqc\.prior\.reconstruction\."):
        bundle_parser(bundle)
    evaluate = bundle / "configs" / "evaluate.yaml"
    evaluate.write_text(evaluate.read_text().replace("shapeqc.calibration.profiles.calibrate_profiles",
                                                     "shapeqc.calibration.calibrate_profiles"))
    assert moved_targets(bundle, ["evaluate.yaml"]) == [
        "shapeqc.calibration.calibrate -> shapeqc.calibration.profiles.calibrate"]
