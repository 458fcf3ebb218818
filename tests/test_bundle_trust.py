"""Issue 30: a shared bundle runs no code of its own unless vouched for, and no run loses or misjudges data.

Each attack is run end to end through the installed command (a marker file the attack would write, a second
process); each data-safety hole is reproduced as it was found (each of these tests failed before the fix).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bundle_attacks import BUNDLE, ROOT, VECTORS, attack_bundle

from shapeqc import cli
from shapeqc.transforms.volume_io import write_volume

SHAPEQC = Path(sys.executable).parent / "shapeqc"  # the console script of the installed package
# the id each vector's refusal must name
NAMED = {"torch_hub_load": "network_def: _target_ 'torch.hub.load'", "macro_payload": "network_def#grid_size",
         "nested_key": "network_def#grid_size", "meta_reference": "_meta_#grid", "relative_id": "payload: expression",
         "merge_key": "network_def#grid_size", "import_anywhere": "helper: '$import shapeqc_payload'",
         "mode_debug": "inferer: _mode_"}


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SHAPEQC_TRUST_STORE": str(tmp_path / "trust_store.json")}


@pytest.fixture(autouse=True)
def _own_trust_store(tmp_path, monkeypatch):
    """Every test here has an empty trust store of its own (never the user's)."""
    monkeypatch.setenv("SHAPEQC_TRUST_STORE", str(tmp_path / "trust_store.json"))


@pytest.fixture(scope="module")
def glands(tmp_path_factory, adrenal_val_masks) -> list[Path]:
    """Three real val glands that do not touch their crop border, as 1 mm NIfTI files."""
    folder = tmp_path_factory.mktemp("glands")
    paths = []
    for mask in adrenal_val_masks:
        if not any(np.take(mask, index, axis).any() for axis in range(3) for index in (0, -1)):
            paths.append(write_volume(folder / f"gland{len(paths)}.nii.gz", mask.astype(np.uint8), np.eye(4)))
        if len(paths) == 3:
            return paths
    raise AssertionError("fewer than three whole glands")


def _analyse_command(vector: str, gland: Path, bundle: Path, out: Path) -> list[str]:
    # the imported module is found where the process starts only on `python -m` (its folder is first on the path)
    front = [sys.executable, "-m", "shapeqc"] if vector == "import_anywhere" else [str(SHAPEQC)]
    return [*front, "analyse", str(gland), "--bundle", str(bundle), "--output", str(out), "--device", "cpu"]


@pytest.mark.parametrize("vector", VECTORS)
def test_each_attack_is_refused_by_shapeqc_analyse_and_runs_nothing(vector, glands, tmp_path):
    marker = tmp_path / "MARKER"
    bundle = attack_bundle(tmp_path, vector, marker)
    result = subprocess.run(_analyse_command(vector, glands[0], bundle, tmp_path / "out"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert result.returncode != 0
    assert "untrusted bundle" in result.stderr and NAMED[vector] in result.stderr, result.stderr[-2000:]
    assert str(bundle / "configs" / "inference.yaml") in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out" / "report.json").exists()


def test_an_attack_is_refused_with_a_dask_scheduler(glands, tmp_path):
    marker = tmp_path / "MARKER"
    bundle = attack_bundle(tmp_path, "nested_key", marker)
    result = subprocess.run([*_analyse_command("nested_key", glands[0], bundle, tmp_path / "out"), "--scheduler",
                             "local:2"], capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert result.returncode != 0 and "untrusted bundle" in result.stderr
    assert not marker.exists()


def test_a_worker_refuses_a_copy_changed_after_the_client_loaded_it(glands, tmp_path):
    """The client checked a clean copy; the copy the workers read is changed before they start: each worker
    compares digests before it parses anything, and refuses."""
    from shapeqc.bundle.loading import load_bundle
    from shapeqc.runs.batch import run_batch

    folder = tmp_path / "shared"
    clean = attack_bundle(folder, "nested_key", tmp_path / "unused")
    (clean / "configs" / "inference.yaml").write_text((BUNDLE / "configs" / "inference.yaml").read_text())
    bundle = load_bundle(clean)
    assert bundle.trust == "checked"
    marker = tmp_path / "MARKER"
    changed = attack_bundle(tmp_path / "changed", "nested_key", marker)
    shutil.copy(changed / "configs" / "inference.yaml", clean / "configs" / "inference.yaml")
    with pytest.raises(Exception, match="differs from the one the run was started with"):
        run_batch([str(glands[0])], [bundle], tmp_path / "out", scheduler="local:2", progress=False)
    assert not marker.exists()


def test_a_federated_job_is_refused_for_a_bundle_nobody_vouched_for(tmp_path):
    marker = tmp_path / "MARKER"
    bundle = attack_bundle(tmp_path, "nested_key", marker)
    job = tmp_path / "job"
    result = subprocess.run([str(SHAPEQC), "federated-job", "--bundle", str(bundle), "--sites", "2", "--rounds", "1",
                             "--out", str(job)], capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert result.returncode != 0
    assert "neither shipped with shapeqc nor trusted" in result.stderr, result.stderr[-2000:]
    assert not marker.exists() and not (job / "initial_model.pt").exists()


def test_a_federated_site_refuses_a_copy_other_than_the_jobs(tmp_path):
    from shapeqc.bundle.trust import BundleTrustError, bundle_digest
    from shapeqc.federated.client import main

    marker = tmp_path / "MARKER"
    bundle = attack_bundle(tmp_path, "nested_key", marker)
    with pytest.raises(BundleTrustError, match="differs"):
        main(["--bundle", str(bundle), "--datalist", str(tmp_path / "none.json"), "--digest",
              bundle_digest(BUNDLE)])
    assert not marker.exists()


def test_shapeqc_trust_records_the_decision_and_any_change_voids_it(glands, tmp_path):
    marker = tmp_path / "MARKER"
    bundle = attack_bundle(tmp_path, "nested_key", marker)
    env = _env(tmp_path)
    shown = subprocess.run([str(SHAPEQC), "trust", str(bundle), "--show"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "network_def#grid_size: runs $__import__" in shown.stdout
    assert not (tmp_path / "trust_store.json").exists()  # --show decides nothing
    trusted = subprocess.run([str(SHAPEQC), "trust", str(bundle)], capture_output=True, text=True, env=env)
    assert trusted.returncode == 0 and "recorded in" in trusted.stdout
    store = json.loads((tmp_path / "trust_store.json").read_text())["bundles"]
    assert [entry["path"] for entry in store] == [str(bundle.resolve())]
    command = _analyse_command("nested_key", glands[0], bundle, tmp_path / "out")
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert marker.exists()  # the user vouched for it: it ran, and the run says on what basis
    assert "(trust store)" in ran.stderr
    marker.unlink()
    (bundle / "docs").mkdir()
    (bundle / "docs" / "NOTES.md").write_text("one more file")
    again = subprocess.run([*command, "--overwrite"], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode != 0 and "untrusted bundle" in again.stderr
    assert not marker.exists()


def test_trust_bundle_prints_what_the_bundle_runs(glands, tmp_path):
    marker = tmp_path / "MARKER"
    bundle = attack_bundle(tmp_path, "meta_reference", marker)
    result = subprocess.run([*_analyse_command("meta_reference", glands[0], bundle, tmp_path / "out"),
                             "--trust-bundle", str(bundle)], capture_output=True, text=True, timeout=300,
                            env=_env(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on your word (--trust-bundle)" in result.stderr and "metadata.json: grid: runs $__import__" in result.stderr
    assert marker.exists()


def test_the_shipped_digests_are_the_repositorys_bundles():
    from shapeqc.bundle.trust import bundle_digest, shipped_digests

    shipped = {entry["name"]: digest for digest, entry in shipped_digests().items()}
    found = {path.parent.parent.name: bundle_digest(path.parent.parent)
             for path in (ROOT / "bundles").glob("*/configs/metadata.json")}
    assert shipped == found, "a shipped bundle changed: run `python -m shapeqc.bundle.trust --write-shipped bundles`"


def test_a_clean_copy_passes_the_check_and_every_file_counts_in_the_digest(tmp_path):
    from shapeqc.bundle.loading import load_bundle
    from shapeqc.bundle.trust import bundle_digest

    copy = shutil.copytree(BUNDLE, tmp_path / "adrenal_gland")
    assert bundle_digest(copy) == bundle_digest(BUNDLE)
    assert load_bundle(BUNDLE).trust == "shipped"
    (copy / "hubconf.py").write_text("# a file no config names")
    assert bundle_digest(copy) != bundle_digest(BUNDLE)
    assert load_bundle(copy).trust == "checked"


# --- no threshold, no verdict -------------------------------------------------------------------------------------

def _half_cut(mask_path: Path, tmp_path: Path) -> Path:
    import nibabel as nib

    mask = np.asarray(nib.load(str(mask_path)).dataobj).astype(np.uint8)
    kept = np.argwhere(mask)
    mask[:, :, int(np.median(kept[:, 2])):] = 0
    return write_volume(tmp_path / "half_cut.nii.gz", mask, np.eye(4))


def test_a_bundle_whose_calibration_was_interrupted_judges_nothing(glands, tmp_path):
    copy = shutil.copytree(BUNDLE, tmp_path / "adrenal_gland", ignore=shutil.ignore_patterns("docs"))
    thresholds = json.loads((copy / "configs" / "thresholds.json").read_text())
    (copy / "configs" / "thresholds.json").write_text(json.dumps({"profiles": [],
                                                                  "plausibility": thresholds["plausibility"]}))
    cut = _half_cut(glands[0], tmp_path)
    assert cli.main(["analyse", str(cut), "--bundle", str(copy), "--output", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "report.json").read_text())[0]
    assert record["status"] == "not_judged" and record["reason"].startswith("uncalibrated")
    assert record["scores"]["dice"] < 0.9  # scored, but no threshold: no verdict


def test_an_interrupted_calibration_leaves_the_thresholds_whole(tmp_path, adrenal_npz):
    from shapeqc.bundle.datalists import adrenalmnist3d_split
    from shapeqc.calibration.profiles import calibrate_profiles

    copy = shutil.copytree(BUNDLE, tmp_path / "adrenal_gland", ignore=shutil.ignore_patterns("docs"))
    before = (copy / "configs" / "thresholds.json").read_bytes()
    items = adrenalmnist3d_split(str(adrenal_npz.parents[1]), "val", 2)
    with pytest.raises(Exception):  # noqa: B017 - the second profile's spacing is impossible: any error will do
        calibrate_profiles(str(copy), items, [None, [0.0, 0.0, 0.0]], training_items=items)
    assert (copy / "configs" / "thresholds.json").read_bytes() == before
    assert not (copy / "docs" / "calibration_as_given.json").exists()


@pytest.mark.parametrize("change, message", [
    (lambda t: t["profiles"][0]["metrics"].update(volume={"threshold": 1.0, "enabled": True}), "unknown metric"),
    (lambda t: t["profiles"][0]["metrics"]["dice"].update(threshold=float("nan")), "dice threshold nan"),
    (lambda t: t["profiles"][0]["quality_estimator"].update(intercept=float("nan")), "not a finite number"),
    (lambda t: t["profiles"][0].update(spacing_mm=[0.8, 0.8]), "three positive numbers"),
])
def test_a_malformed_profile_is_refused_when_the_bundle_loads(tmp_path, change, message):
    from shapeqc.bundle.loading import load_bundle
    from shapeqc.bundle.trust import BundleTrustError

    copy = shutil.copytree(BUNDLE, tmp_path / "adrenal_gland", ignore=shutil.ignore_patterns("docs"))
    path = copy / "configs" / "thresholds.json"
    thresholds = json.loads(path.read_text())
    change(thresholds)
    path.write_text(json.dumps(thresholds))  # json writes NaN, as a hand-edited or foreign file may hold it
    with pytest.raises(BundleTrustError, match=message):
        load_bundle(copy)


# --- one run owns a folder, and a folder keeps its records ----------------------------------------------------------

def _records(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())


def test_a_second_run_into_a_folder_with_records_needs_resume_or_overwrite(glands, tmp_path):
    out = tmp_path / "out"
    base = ["analyse", "--bundle", str(BUNDLE), "--output", str(out)]
    assert cli.main([*base, str(glands[0])]) == 0
    with pytest.raises(SystemExit, match="holds the records of an earlier run: pass --resume"):
        cli.main([*base, str(glands[1])])
    assert [r["case"] for r in _records(out)] == ["gland0"]  # the first run's records are still there
    assert cli.main([*base, str(glands[1]), "--overwrite"]) == 0
    assert [r["case"] for r in _records(out)] == ["gland1"]
    previous = list((out / "previous_runs").iterdir())
    assert len(previous) == 1 and [r["case"] for r in _records(previous[0])] == ["gland0"]  # moved, not deleted
    assert (previous[0] / "gland0" / "adrenal_gland_left" / "reconstruction.nii.gz").exists()


def test_resume_runs_again_what_changed(glands, tmp_path):
    out = tmp_path / "out"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for gland in glands[:2]:
        shutil.copy(gland, inputs / gland.name)
    base = ["analyse", str(inputs), "--bundle", str(BUNDLE), "--output", str(out)]
    assert cli.main(base) == 0
    first = {r["case"]: r for r in _records(out)}
    assert cli.main([*base, "--resume"]) == 0
    assert {r["case"]: r["seconds"] for r in _records(out)} == {c: r["seconds"] for c, r in first.items()}
    shutil.copy(glands[2], inputs / "gland1.nii.gz")  # another gland under the same name: a changed input
    assert cli.main([*base, "--resume"]) == 0
    resumed = {r["case"]: r for r in _records(out)}
    assert resumed["gland0"]["seconds"] == first["gland0"]["seconds"]
    assert resumed["gland1"]["scores"] != first["gland1"]["scores"]  # analysed again
    assert cli.main([*base, "--resume", "--organ", "adrenal_gland_right"]) == 0  # another --organ: all again
    assert {r["organ"] for r in _records(out)} == {"adrenal_gland_right"}
    copy = shutil.copytree(BUNDLE, tmp_path / "bundle_copy" / "adrenal_gland", ignore=shutil.ignore_patterns("docs"))
    assert cli.main(["analyse", str(inputs), "--bundle", str(copy), "--output", str(out), "--resume",
                     "--organ", "adrenal_gland_right"]) == 0  # another bundle: all again, each with its digest
    from shapeqc.bundle.trust import bundle_digest

    assert {r["bundle_digest"] for r in _records(out)} == {bundle_digest(copy)}


def test_a_folder_locked_by_a_live_run_is_refused_and_free_once_it_dies(glands, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom shapeqc.runs.journal import OutputLock\n"
                               f"with OutputLock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    base = ["analyse", str(glands[0]), "--bundle", str(BUNDLE), "--output", str(out)]
    with pytest.raises(SystemExit, match=f"in use by shapeqc pid {holder.pid}"):
        cli.main(base)
    # a crashed run leaves its lock file behind: the kernel released its lock, so the next run simply takes it
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / ".shapeqc.lock").exists()
    assert cli.main(base) == 0
    assert (out / ".shapeqc.lock").exists()  # never removed, so no second run can slip in between


def test_two_runs_started_together_never_share_a_folder(glands, tmp_path):
    out = tmp_path / "out"
    command = [str(SHAPEQC), "analyse", "--bundle", str(BUNDLE), "--output", str(out), "--device", "cpu"]
    runs = [subprocess.Popen([*command, str(gland)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env(tmp_path)) for gland in glands[:2]]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    succeeded = [code for code, _ in results if code == 0]
    assert len(succeeded) == 1, results  # the other was refused: in use, or a folder holding records
    assert len(_records(out)) == 1


# --- the smaller items ----------------------------------------------------------------------------------------------

def test_federated_simulate_never_removes_the_source_bundle(tmp_path):
    copy = shutil.copytree(BUNDLE, tmp_path / "adrenal_gland", ignore=shutil.ignore_patterns("docs"))
    job = tmp_path / "job"
    job.mkdir()
    (job / "shapeqc_job.json").write_text(json.dumps({"bundle": str(copy), "sites": {"site-1": "x"}, "rounds": 1,
                                                      "local_epochs": 1, "name": "shapeqc_adrenal_gland"}))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("a user's file")
    for target, message in ((copy, "source bundle"), (tmp_path, "source bundle"),
                            (tmp_path / "elsewhere", "not a federated bundle")):
        with pytest.raises(SystemExit, match=message):
            cli.main(["federated-simulate", str(job), "--bundle-out", str(target)])
    assert (copy / "models" / "model.pt").exists() and (tmp_path / "elsewhere" / "keep.txt").exists()


def test_reviews_match_case_ids_the_export_guarded(glands, tmp_path):
    from shapeqc.outputs.reports import csv_cell
    from shapeqc.outputs.reviews import compare_reviews, read_reviews

    records = [{"case": case, "organ": "adrenal_gland_left", "bundle": "adrenal_gland", "status": status}
               for case, status in (("-p1", "ok"), ("+p2", "outlier"), ("p3", "ok"))]
    rows = ["case,organ,bundle,verdict,note,shapeqc_status"]
    rows += [f"{csv_cell(r['case'])},{r['organ']},{r['bundle']},reject,,{r['status']}" for r in records]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    assert rows[1].startswith("'-p1")  # what the page exports
    result = compare_reviews(records, read_reviews(path))
    assert result["unmatched"] == [] and result["reviewed"] == 3
    assert result["missed_rejects"] == [f"{case}/adrenal_gland_left (adrenal_gland)" for case in ("-p1", "p3")]


def test_the_qc_benchmark_counts_only_refused_inputs_as_detections(adrenal_val_masks):
    from shapeqc.bundle.loading import load_bundle
    from shapeqc.evaluation.protocol import fit_baselines, score_all

    bundle = load_bundle(BUNDLE)
    masks = [m for m in adrenal_val_masks[:12] if m.any()][:8]
    baselines = fit_baselines(bundle, [("", m, np.eye(4), "adrenal_gland_left") for m in masks])
    empty = np.zeros((40, 40, 40), bool)  # a corruption ate the organ: shapeqc refuses to judge it, counted as flagged
    scores = score_all(bundle, baselines, empty, np.eye(4), "adrenal_gland_left")
    assert scores["shapeqc_status"] == "not judged: EmptyMaskError"
    singular = np.zeros((4, 4))  # a fault of the caller, not a property of the mask: it must not count as found
    with pytest.raises(Exception) as raised:  # noqa: PT011
        score_all(bundle, baselines, masks[0], singular, "adrenal_gland_left")
    from shapeqc.transforms.errors import SegmentationInputError

    assert not isinstance(raised.value, SegmentationInputError)


def test_a_cohort_worker_that_cannot_load_the_bundles_leaves(glands, tmp_path):
    """A worker whose copy differs refuses in setup; registering the plugin fails with its reason before any
    case is sent (before the fix, such a worker took cases that all ended as AttributeError)."""
    from distributed import Client, LocalCluster

    from shapeqc.runs.cohort import ShapeQCBundles

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        with pytest.raises(Exception, match="differs from the one the run was started with"):
            client.register_plugin(ShapeQCBundles([str(BUNDLE)], ["0" * 64]))
        deadline = time.time() + 30
        while client.scheduler_info()["workers"] and time.time() < deadline:
            time.sleep(0.2)
        assert not client.scheduler_info()["workers"]  # it left: no case can reach it
