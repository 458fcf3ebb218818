"""The demo and the command line run for real on real data and write what they say."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from shapeqc import cli, demo


def test_demo_writes_input_grids_and_round_trips(tmp_path, adrenal_npz, capsys):
    assert demo.main(["--npz", str(adrenal_npz), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("input_adrenal_gland_left", "canonical_grid_128", "round_trip_128", "canonical_grid_32"):
        assert (tmp_path / f"{name}.nii.gz").exists()
    source = nib.load(str(tmp_path / "input_adrenal_gland_left.nii.gz"))
    np.testing.assert_allclose(source.header.get_zooms(), (0.8, 0.8, 2.5), atol=1e-5)
    grid = nib.load(str(tmp_path / "canonical_grid_128.nii.gz"))
    assert grid.shape == (128, 128, 128)
    np.testing.assert_allclose(np.abs(np.diag(grid.affine)[:3]), 1.0)
    dices = [float(line.split("Dice")[1].split()[0]) for line in printed.splitlines() if "Dice" in line]
    assert len(dices) == 2 and dices[0] > 0.95 and dices[1] < dices[0]
    assert "zoom 1.000" in printed and "zoom 1.000" not in printed.split("grid  32^3")[1]


def test_cli_grid_on_a_totalsegmentator_map(tmp_path, totalseg):
    code = cli.main(["grid", str(totalseg / "v2_multilabel_seg.nii.gz"), "--organ", "adrenal_gland_left",
                     "--mirror", "left", "--size", "64", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "grid.json").read_text())
    assert summary["load"] == {"form": "multilabel", "map_version": "v2", "label": 9}
    assert summary["mirrored"] and summary["round_trip_dice"] == 1.0  # 3 mm input, 1 mm grid: exact
    assert nib.load(str(tmp_path / "round_trip.nii.gz")).shape == (122, 101, 30)


def test_cli_reports_bad_input_with_the_file_and_exit_code_2(tmp_path, totalseg, capsys):
    path = totalseg / "v2_multilabel_seg.nii.gz"
    assert cli.main(["grid", str(path), "--organ", "liver", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "border" in error


def test_cli_datalist(tmp_path, adrenal_npz):
    out = tmp_path / "datalist.json"
    assert cli.main(["datalist", str(adrenal_npz), "--out", str(out), "--val", "0.2", "--seed", "1"]) == 0
    datalist = json.loads(out.read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == 1286
    assert len(datalist["validation"]) == round(0.2 * 1286)
