"""The demo and the command line run for real on real data and write what they say."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from shapeqc import cli, demo


def test_demo_analyses_the_embedded_example(tmp_path, capsys):
    """`make demo` runs the real analysis with no data download and flags the example correctly: the clean
    CT-like gland ok, the leak and the cut outliers, each with its largest defect where the corruption was."""
    assert demo.main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    records = {r["case"]: r for r in json.loads((tmp_path / "report.json").read_text())}
    assert set(records) == {"clean", "blob_added", "slab_removed"}
    assert all(len(r["scores"]) == 4 for r in records.values())
    assert records["clean"]["status"] == "ok"
    for case, kind in (("blob_added", "over"), ("slab_removed", "under")):
        assert records[case]["status"] == "outlier"
        assert records[case]["defects"][0]["kind"] == kind
        assert records[case]["scores"]["dice"] < records["clean"]["scores"]["dice"]
        line = next(line for line in printed.splitlines() if line.startswith(case))
        assert float(line.rsplit(",", 1)[1]) < 4.0  # largest defect within 4 mm of the corruption's centre
    source = nib.load(str(tmp_path / "inputs" / "clean.nii.gz"))
    np.testing.assert_allclose(source.header.get_zooms(), (0.8, 0.8, 2.5), atol=1e-5)
    assert "report:" in printed and (tmp_path / "report.html").exists()


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
