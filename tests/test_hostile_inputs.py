"""The bad-input and fault battery of issue 20, item by item, on real files and real processes.

Most runs are ``shapeqc analyse GOOD BAD GOOD --bundle bundles/adrenal_gland --output OUT`` with two real adrenal
glands around one bad input: the bad one must become a record that says what is wrong, the good ones must finish.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from shapeqc import cli
from shapeqc.transforms.volume_io import write_volume

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "adrenal_gland"


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def good(tmp_path_factory, adrenal_val_masks) -> list[Path]:
    """Two real val glands that do not touch their crop border, as 1 mm NIfTI files."""
    folder = tmp_path_factory.mktemp("good")
    paths = []
    for mask in adrenal_val_masks:
        if any(np.take(mask, index, axis).any() for axis in range(3) for index in (0, -1)):
            continue
        paths.append(write_volume(folder / f"good{len(paths):02d}.nii.gz", mask, np.eye(4)))
        if len(paths) == 6:
            break
    return paths


def analyse(out: Path, *inputs, extra: tuple = ()) -> tuple[int, list[dict]]:
    code = cli.main(["analyse", *map(str, inputs), "--bundle", str(BUNDLE), "--output", str(out), "--device", "cpu",
                     *extra])
    report = out / "report.json"
    return code, (_strict_json(report.read_text()) if report.exists() else [])


def by_case(records: list[dict]) -> dict[str, list[dict]]:
    cases: dict[str, list[dict]] = {}
    for record in records:
        cases.setdefault(record["case"], []).append(record)
    return cases


def _with_label_table(path: Path, mask: np.ndarray, key: str) -> Path:
    image = nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))
    table = (f'<CaretExtension><VolumeInformation Index="0"><LabelTable><Label Key="{key}" Red="1" Green="0" '
             'Blue="0" Alpha="1">adrenal_gland_left</Label></LabelTable></VolumeInformation></CaretExtension>')
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, table.encode()))  # TotalSegmentator's code
    nib.save(image, str(path))
    return path


def test_1_a_bad_label_table_is_one_error_record_and_the_batch_goes_on(good, tmp_path, adrenal_val_masks):
    bad = _with_label_table(tmp_path / "bad.nii.gz", adrenal_val_masks[3], "one")
    code, records = analyse(tmp_path / "out", good[0], bad, good[1])
    assert code == 0
    cases = by_case(records)
    assert [r["status"] for r in cases["bad"]] == ["error"]
    assert "label table" in cases["bad"][0]["reason"] and "bad.nii.gz" in cases["bad"][0]["reason"]
    assert {r["status"] for r in cases["good00"] + cases["good01"]} <= {"ok", "outlier"}
    code, resumed = analyse(tmp_path / "out", good[0], bad, good[1], extra=("--resume",))
    assert code == 0 and len(resumed) == len(records)


def test_2_a_second_run_into_the_same_output_is_refused_while_the_first_runs(good, tmp_path):
    out = tmp_path / "shared_out"
    cohort = tmp_path / "cohort"  # 24 cases: the first run is still busy when the second has started up
    for index in range(24):
        (cohort / f"p{index:02d}").mkdir(parents=True)
        shutil.copy(good[index % len(good)], cohort / f"p{index:02d}" / "seg.nii.gz")
    command = [sys.executable, "-m", "shapeqc", "analyse", "--bundle", str(BUNDLE), "--device", "cpu",
               "--output", str(out)]
    first = subprocess.Popen(command + [str(cohort)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".shapeqc.lock"
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert lock.exists(), "the first run never took the lock"
    second = subprocess.run(command + [str(good[0])], capture_output=True, text=True, timeout=300)
    assert second.returncode != 0
    assert f"in use by shapeqc pid {first.pid}" in second.stderr
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert len(_strict_json((out / "report.json").read_text())) == 24  # nothing of the first run lost
    from shapeqc.runs.journal import OutputLock

    with OutputLock(out):  # released with the first run (the file stays: removing it is how two runs could race)
        pass


def test_2_the_lock_file_of_a_dead_run_does_not_block(good, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (out / ".shapeqc.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    code, records = analyse(out, good[0])
    assert code == 0 and len(records) == 1


def test_3_the_same_file_name_in_two_folders_is_two_cases(good, tmp_path):
    inputs = tmp_path / "in"
    for patient, source in (("patientA", good[0]), ("patientB", good[1])):
        (inputs / patient).mkdir(parents=True)
        shutil.copy(source, inputs / patient / "seg.nii.gz")
    code, records = analyse(tmp_path / "out", inputs)
    assert code == 0
    assert sorted(r["case"] for r in records) == ["patientA/seg", "patientB/seg"]
    reconstructions = [nib.load(r["outputs"]["reconstruction"]).get_fdata() for r in records]
    assert not np.array_equal(*reconstructions)  # each case kept its own outputs
    code, resumed = analyse(tmp_path / "out", inputs, extra=("--resume",))
    assert sorted((r["case"], r["seconds"]) for r in resumed) == sorted((r["case"], r["seconds"]) for r in records)


def test_4_non_binary_masks_never_vanish(good, tmp_path, adrenal_val_masks):
    gland = adrenal_val_masks[3].astype(np.uint8)
    three_values = gland.copy()
    top = np.argwhere(gland)[:, 2].max()
    three_values[..., top][gland[..., top] > 0] = 2  # one slice of the gland labelled 2: values 0/1/2
    anonymous = write_volume(tmp_path / "scan7.nii.gz", three_values, np.eye(4))
    named = write_volume(tmp_path / "adrenal_gland_left.nii.gz", three_values, np.eye(4))
    fractional = write_volume(tmp_path / "soft.nii.gz", gland.astype(np.float32) * 0.7, np.eye(4))
    code, records = analyse(tmp_path / "out", good[0], anonymous, named, fractional, good[1])
    assert code == 0
    cases = by_case(records)
    assert set(cases) == {"good00", "scan7", "adrenal_gland_left", "soft", "good01"}  # every input has a record
    assert cases["scan7"][0]["status"] == "not_judged" and cases["scan7"][0]["reason"].startswith("organ_absent")
    assert cases["adrenal_gland_left"][0]["status"] == "error" and "non_binary" in cases["adrenal_gland_left"][0][
        "reason"]
    assert cases["soft"][0]["status"] == "error" and "non_binary" in cases["soft"][0]["reason"]


def test_5_nothing_is_written_outside_the_output_folder(good, tmp_path):
    sandbox = tmp_path / "sandbox"
    (sandbox / "in" / "sub").mkdir(parents=True)
    dots = sandbox / "in" / "...nii.gz"
    shutil.copy(good[0], dots)
    out = sandbox / "out"
    before = {p for p in sandbox.rglob("*")}
    code, records = analyse(out, dots, f"{sandbox / 'in' / 'sub'}/..")
    assert code == 0 and records
    written = {p for p in sandbox.rglob("*")} - before
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert all(".." not in Path(r["case"]).parts for r in records)
    assert cli.main(["analyse", str(good[0]), "--bundle", str(BUNDLE), "--output", str(out), "--organ",
                     "../../x"]) == 2
    assert not (tmp_path / "x").exists() and not (sandbox / "x").exists()


def test_6_a_symlink_loop_is_followed_once(good, tmp_path):
    folder = tmp_path / "looped"
    folder.mkdir()
    shutil.copy(good[0], folder / "good00.nii.gz")
    os.symlink(folder, folder / "again")
    result = subprocess.run([sys.executable, "-m", "shapeqc", "analyse", str(folder), "--bundle", str(BUNDLE),
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    records = _strict_json((tmp_path / "out" / "report.json").read_text())
    assert [r["case"] for r in records] == ["good00"]
    assert "followed once" in result.stderr


@pytest.mark.parametrize("shape", ["one_voxel", "two_cubes", "line"])
def test_7_implausible_organs_are_outliers_before_the_prior(tmp_path, shape):
    mask = np.zeros((64, 64, 64), np.uint8)
    if shape == "one_voxel":
        mask[30, 30, 30] = 1
    elif shape == "two_cubes":
        mask[10:13, 20:23, 20:23] = 1
        mask[50:53, 20:23, 20:23] = 1
    else:
        mask[2:62, 30, 30] = 1
    path = write_volume(tmp_path / f"{shape}.nii.gz", mask, np.eye(4))
    code, records = analyse(tmp_path / "out", path, extra=("--organ", "adrenal_gland_left"))
    assert code == 0
    assert records[0]["status"] == "outlier" and records[0]["reason"].startswith("implausible")
    assert records[0]["scores"] is None  # no Dice of 1.0 and no infinite distance for a shape that is no gland


def test_8_report_json_is_strict_even_with_infinite_scores(tmp_path):
    from shapeqc.outputs.records import new_record, record_json, records_json
    from shapeqc.outputs.reports import write_reports

    record = new_record("case", "in.nii.gz", "adrenal_gland_left", "adrenal_gland")
    record.update(status="outlier", scores={"dice": 0.0, "asd_mm": float("inf"), "hd95_mm": float("nan"),
                                            "max_sd_mm": 3.0})
    parsed = _strict_json(records_json([record]))[0]
    assert parsed["scores"] == {"dice": 0.0, "asd_mm": None, "hd95_mm": None, "max_sd_mm": 3.0}
    assert "asd_mm" in parsed["reason"] and "hd95_mm" in parsed["reason"]
    assert _strict_json(record_json(record))["scores"]["asd_mm"] is None
    write_reports([record], tmp_path)
    assert _strict_json((tmp_path / "report.json").read_text())[0]["scores"]["hd95_mm"] is None


def test_9_a_header_claiming_a_huge_volume_is_refused_before_allocating(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((1600, 1600, 1600))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    liar = tmp_path / "liar.nii.gz"
    liar.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    header.set_data_shape((900, 900, 900))  # under the voxel cap, but far more than 100 bytes can expand to
    small_liar = tmp_path / "small_liar.nii.gz"
    small_liar.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    probe = ("import resource, sys\n"
             "from shapeqc.transforms.volume_io import read_volume_file\n"
             "from shapeqc.transforms.errors import UnreadableImageError\n"
             "after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "for path in sys.argv[1:]:\n"
             "    try:\n"
             "        read_volume_file(path)\n"
             "    except UnreadableImageError as error:\n"
             "        print(error)\n"
             "print('peak_kb_above_imports', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - after_imports)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(liar), str(small_liar)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "liar.nii.gz: header claims 4,096,000,000 voxels" in lines[0]
    assert "small_liar.nii.gz: header claims 729,000,000 bytes" in lines[1]
    assert int(lines[-1].split()[1]) < 100_000  # KiB: reading the two never came near the claimed 4 GB


def _bundle_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "shared_bundle" / "adrenal_gland"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("docs"))
    return copy


def test_10_a_bundle_config_that_runs_code_is_refused_unless_trusted(good, tmp_path):
    from shapeqc.bundle.loading import bundle_digest

    copy = _bundle_copy(tmp_path)
    marker = tmp_path / "MARKER"
    config_path = copy / "configs" / "inference.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["margin"] = f"$__import__('pathlib').Path({str(marker)!r}).touch() or 4"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = ["analyse", str(good[0]), "--bundle", str(copy), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="untrusted bundle whose analysis config would run more.*margin"):
        cli.main(command)
    assert not marker.exists()
    assert cli.main([*command, "--trust-bundle", str(copy)]) == 0
    assert marker.exists()
    record = _strict_json((tmp_path / "out" / "report.json").read_text())[0]
    assert record["bundle_digest"] == bundle_digest(copy) != bundle_digest(BUNDLE)


def test_10_out_of_range_thresholds_are_refused(good, tmp_path):
    copy = _bundle_copy(tmp_path)
    thresholds_path = copy / "configs" / "thresholds.json"
    thresholds = json.loads(thresholds_path.read_text())
    thresholds["profiles"][0]["metrics"]["dice"]["threshold"] = 1.5
    thresholds_path.write_text(json.dumps(thresholds))
    with pytest.raises(SystemExit, match="dice threshold 1.5"):
        cli.main(["analyse", str(good[0]), "--bundle", str(copy), "--output", str(tmp_path / "out")])


def test_11_an_anonymous_mask_gets_no_verdict_from_every_bundle(good, tmp_path):
    anonymous = tmp_path / "mask.nii.gz"
    shutil.copy(good[0], anonymous)
    named = tmp_path / "adrenal_gland_left.nii.gz"
    shutil.copy(good[0], named)
    out = tmp_path / "out"
    assert cli.main(["analyse", str(anonymous), str(named), "--bundles", str(ROOT / "bundles"), "--output",
                     str(out)]) == 0
    cases = by_case(_strict_json((out / "report.json").read_text()))
    assert len(cases["mask"]) == 1 and cases["mask"][0]["status"] == "not_judged"
    assert cases["mask"][0]["reason"].startswith("organ_unknown") and "--organ" in cases["mask"][0]["reason"]
    assert [(r["bundle"], r["organ"]) for r in cases["adrenal_gland_left"]] == [("adrenal_gland",
                                                                                  "adrenal_gland_left")]


def test_13_smaller_items(good, tmp_path):
    from shapeqc.outputs.reports import csv_cell

    shutil.copy(good[0], tmp_path / "=1+2.nii.gz")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "broken.nrrd").write_text("NRRD0004\ntype: nonsense\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n")
    # relative paths, as a user types them in the folder: the input column then starts with "="
    result = subprocess.run([sys.executable, "-m", "shapeqc", "analyse", "=1+2.nii.gz", "empty_folder", "broken.nrrd",
                             "--bundle", str(BUNDLE), "--output", "out"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "empty_folder: no NIfTI or NRRD segmentation in this folder" in result.stdout
    report_csv = (tmp_path / "out" / "report.csv").read_text()
    assert "'=1+2" in report_csv and ",=1+2" not in report_csv
    records = {r["case"]: r for r in _strict_json((tmp_path / "out" / "report.json").read_text())}
    reason = records["broken"]["reason"]
    assert records["broken"]["status"] == "error" and "broken.nrrd" in reason and "\n" not in reason
    assert 'parse type "nonsense"' in reason  # ITK's most specific line, not its source location
    assert csv_cell(-1.5) == "-1.5" and csv_cell("-x") == "'-x" and csv_cell("@cmd") == "'@cmd"


def test_12_clean_oblique_glands_meet_the_tilted_profile(tmp_path, adrenal_val_masks):
    """Clean 1 mm glands stored with a 2-10 degree obliquity lose a fraction of a voxel at their surface in the
    canonical grid: judged against the axis-aligned threshold most are flagged; the analysis picks the bundle's
    tilted 1 mm profile for them (calibrated on re-sliced glands), where they pass as clean glands should."""
    from shapeqc.scoring.thresholds import decide, load_thresholds, select_profile
    from shapeqc.transforms.reslice import reslice_mask

    rng = np.random.default_rng(12)
    inner = [m for m in adrenal_val_masks[-20:]
             if not any(np.take(m, i, axis).any() for axis in range(3) for i in (0, -1))][:6]
    paths = []
    for index, mask in enumerate(inner):
        angles = rng.uniform(2.0, 10.0, 3) * rng.choice([-1.0, 1.0], 3)
        oblique, affine = reslice_mask(mask, np.eye(4), (1.0, 1.0, 1.0), tuple(angles), 3)
        paths.append(write_volume(tmp_path / f"oblique{index}" / "adrenal_gland_left.nii.gz", oblique, affine))
    code, records = analyse(tmp_path / "out", *[p.parent for p in paths])
    assert code == 0 and len(records) == len(inner)
    assert all(r["thresholds"]["spacing_mm"] == [1.0, 1.0, 1.0] for r in records)  # the tilted 1 mm profile
    axis_aligned = select_profile(load_thresholds(BUNDLE), (1.0, 1.0, 1.0), oblique=False)
    flagged_there = sum(decide(r["scores"], axis_aligned)[0] for r in records)
    flagged_here = sum(r["status"] == "outlier" for r in records)
    assert flagged_here <= 1 < flagged_there


def test_13_out_of_memory_is_an_error_record_with_a_reason(tmp_path):
    """A real MemoryError (the process's address space capped just above what it uses, then a 343 MB volume read):
    the case's record says what ran out, instead of an empty reason."""
    volume = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((700, 700, 700), np.uint8), np.eye(4)), str(volume))
    probe = ("import resource, sys\n"
             "from shapeqc.runs.cases import analyse_case\n"
             "from shapeqc.bundle.loading import load_bundle\n"
             "bundle = load_bundle(sys.argv[2])\n"
             "with open('/proc/self/status') as status:\n"
             "    used = next(int(line.split()[1]) for line in status if line.startswith('VmSize')) * 1024\n"
             "resource.setrlimit(resource.RLIMIT_AS, (used + 150 * 2**20, resource.RLIM_INFINITY))\n"
             "records = analyse_case('big', sys.argv[1], [bundle], sys.argv[3])\n"
             "print(records[0]['status'], '|', records[0]['reason'])\n")
    result = subprocess.run([sys.executable, "-c", probe, str(volume), str(BUNDLE), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    status, reason = result.stdout.strip().splitlines()[-1].split(" | ", 1)
    assert status == "error" and "memory" in reason and "big.nii.gz" in reason
