"""The MONAI Deploy app, run for real (Holoscan on the CPU) on real inputs; no mocks of the SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from shapeqc.analysis import load_bundle
from shapeqc.batch import run_batch

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"



def run_app(inputs: Path, output: Path, models: Path = BUNDLES, env: dict | None = None,
            use_flags: bool = True) -> subprocess.CompletedProcess:
    """`python app -i INPUT -o OUTPUT -m MODELS` (or the HOLOSCAN_* variables) in a 32 MB stack."""
    command = f"ulimit -s 32768 && exec {sys.executable} app"
    if use_flags:
        command += f" -i '{inputs}' -o '{output}' -m '{models}'"
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def essence(records: list[dict]) -> dict:
    return {(r["case"], r["organ"], r["bundle"]): (r["status"], r["scores"], r["defects"], r["reason"])
            for r in records}


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, totalseg, adrenal_val_masks):
    """A TotalSegmentator multi-label map, two adrenal NIfTI masks and a corrupt file, in one folder tree."""
    import numpy as np

    from transforms.volume_io import write_volume

    folder = tmp_path_factory.mktemp("app_inputs")
    (folder / "ts").mkdir()
    (folder / "ts" / "v2_multilabel_seg.nii.gz").write_bytes((totalseg / "v2_multilabel_seg.nii.gz").read_bytes())
    kept = [m for m in adrenal_val_masks if not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
                                                  or m[..., 0].any() or m[..., -1].any())][:2]
    for index, mask in enumerate(kept):
        write_volume(folder / f"adrenal{index}.nii.gz", mask, np.eye(4))
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    return folder


def test_app_matches_shapeqc_analyse_record_for_record(mixed_inputs, tmp_path):
    result = run_app(mixed_inputs, tmp_path / "app")
    log = result.stdout + result.stderr
    assert "shape QC runs on the CPU" in log  # no GPU here; the app says which it uses
    app_records = json.loads((tmp_path / "app" / "report.json").read_text())
    run_batch([str(mixed_inputs)], [load_bundle(BUNDLES / "adrenal_gland")], tmp_path / "cli", progress=False)
    cli_records = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert essence(app_records) == essence(cli_records)
    statuses = {r["case"]: r["status"] for r in app_records}
    assert statuses["corrupt"] == "error"  # the bad file is recorded ...
    assert statuses["adrenal0"] in ("ok", "outlier") and statuses["adrenal1"] in ("ok", "outlier")  # ... the rest done
    assert {r["organ"] for r in app_records if r["case"] == "v2_multilabel_seg"} == {"adrenal_gland_left",
                                                                                    "adrenal_gland_right"}
    for name in ("report.csv", "errors.csv", "report.html", "records.jsonl"):
        assert (tmp_path / "app" / name).exists(), name
    assert "corrupt.nii.gz" in (tmp_path / "app" / "errors.csv").read_text()
    organ_dir = tmp_path / "app" / "adrenal0" / "adrenal_gland_left"
    assert {"reconstruction.nii.gz", "difference.nii.gz", "reconstruction.stl", "overview.png"} <= {
        p.name for p in organ_dir.iterdir()}


def test_app_reads_the_holoscan_environment_variables(totalseg, tmp_path):
    result = run_app(None, None, env={"HOLOSCAN_INPUT_PATH": str(totalseg / "v2_multilabel_seg.nii.gz"),
                                      "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "out"),
                                      "HOLOSCAN_MODEL_PATH": str(BUNDLES / "adrenal_gland")}, use_flags=False)
    records = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(records) == 2 and result.returncode == 0


def test_app_configuration_matches_pyproject():
    """app/app.yaml as holoscan-cli's packager reads it, and app/requirements.txt, agree with pyproject.toml."""
    from holoscan_cli.packager.config_reader import ApplicationConfiguration

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    configuration = ApplicationConfiguration()
    configuration.read(ROOT / "app" / "app.yaml")
    assert configuration._application_object["version"] == project["version"]
    requirements = [line.strip() for line in (ROOT / "app" / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    expected = [f"{project['name']}=={project['version']}", *project["dependencies"],
                *project["optional-dependencies"]["deploy"]]
    assert requirements == expected
