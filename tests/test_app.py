"""The MONAI Deploy app, run for real (Holoscan on the CPU) on real inputs; no mocks of the SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from shapeqc.bundle.loading import load_bundle, load_trained_bundles
from shapeqc.runs.batch import run_batch

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
sys.path.insert(0, str(ROOT / "app"))  # the app's modules import as `python app` runs them



def run_app(inputs: Path, output: Path, models: Path = BUNDLES, env: dict | None = None,
            use_flags: bool = True, extra: str = "") -> subprocess.CompletedProcess:
    """`python app -i INPUT -o OUTPUT -m MODELS [extra]` (or the HOLOSCAN_* variables) in a 32 MB stack."""
    command = f"ulimit -s 32768 2>/dev/null; exec {sys.executable} app"
    if use_flags:
        command += f" -i '{inputs}' -o '{output}' -m '{models}'"
    command += f" {extra}"
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

    from shapeqc.transforms.volume_io import write_volume

    folder = tmp_path_factory.mktemp("app_inputs")
    (folder / "ts").mkdir()
    (folder / "ts" / "v2_multilabel_seg.nii.gz").write_bytes((totalseg / "v2_multilabel_seg.nii.gz").read_bytes())
    kept = [m for m in adrenal_val_masks if not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
                                                  or m[..., 0].any() or m[..., -1].any())][:2]
    for index, mask in enumerate(kept):  # named after the organ: only the bundle covering it judges them
        write_volume(folder / f"adrenal{index}" / "adrenal_gland_left.nii.gz", mask, np.eye(4))
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    # the bad-input battery's inputs (issue 20): a label table with a key that is no number, a mask named after an
    # organ that holds 0/1/2; the app records them and goes on, as shapeqc analyse does
    import nibabel as nib

    image = nib.Nifti1Image(kept[0].astype(np.uint8), np.eye(4))
    table = b'<CaretExtension><LabelTable><Label Key="one">adrenal_gland_left</Label></LabelTable></CaretExtension>'
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, table))
    nib.save(image, str(folder / "bad_table.nii.gz"))
    three_values = kept[1].astype(np.uint8)
    three_values[three_values.shape[0] // 2] *= 2
    write_volume(folder / "named" / "adrenal_gland_right.nii.gz", three_values, np.eye(4))
    return folder


def test_app_matches_shapeqc_analyse_record_for_record(mixed_inputs, tmp_path):
    result = run_app(mixed_inputs, tmp_path / "app")
    log = result.stdout + result.stderr
    assert "shape QC runs on the CPU" in log  # no GPU here; the app says which it uses
    app_records = json.loads((tmp_path / "app" / "report.json").read_text())
    run_batch([str(mixed_inputs)], load_trained_bundles([BUNDLES]), tmp_path / "cli", progress=False)
    cli_records = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert essence(app_records) == essence(cli_records)
    statuses = {r["case"]: r["status"] for r in app_records}
    assert statuses["corrupt"] == "error"  # the bad files are recorded ...
    assert statuses["bad_table"] == "error" and statuses["named"] == "error"
    assert statuses["adrenal0"] in ("ok", "outlier") and statuses["adrenal1"] in ("ok", "outlier")  # ... the rest done
    ts_records = {r["organ"]: r["status"] for r in app_records if r["case"] == "ts/v2_multilabel_seg"}
    # the example's small field of view cuts its kidneys, liver and spleen: recorded, not judged
    assert ts_records == {"adrenal_gland_left": ts_records["adrenal_gland_left"],
                          "adrenal_gland_right": ts_records["adrenal_gland_right"], "kidney_left": "not_judged",
                          "kidney_right": "not_judged", "liver": "not_judged", "spleen": "not_judged"}
    for name in ("report.csv", "errors.csv", "report.html", "records.jsonl"):
        assert (tmp_path / "app" / name).exists(), name
    assert "corrupt.nii.gz" in (tmp_path / "app" / "errors.csv").read_text()
    organ_dir = tmp_path / "app" / "adrenal0" / "adrenal_gland_left"
    assert {"reconstruction.nii.gz", "difference.nii.gz", "reconstruction.stl", "overview.png"} <= {
        p.name for p in organ_dir.iterdir()}


def app_threads(result: subprocess.CompletedProcess) -> tuple[int, str]:
    """(threads, OpenMP wait policy) the app says it computes with."""
    import re

    match = re.search(r"(\d+) thread\(s\), OpenMP waiting (\w+)", result.stdout + result.stderr)
    assert match, (result.stdout + result.stderr)[-3000:]
    return int(match.group(1)), match.group(2)


def test_app_reads_the_holoscan_environment_variables(totalseg, tmp_path):
    result = run_app(None, None, env={"HOLOSCAN_INPUT_PATH": str(totalseg / "v2_multilabel_seg.nii.gz"),
                                      "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "out"),
                                      "HOLOSCAN_MODEL_PATH": str(BUNDLES / "adrenal_gland"),
                                      "SHAPEQC_THREADS": "1"}, use_flags=False)
    records = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(records) == 2 and result.returncode == 0
    assert app_threads(result) == (1, "passive")  # SHAPEQC_THREADS, and OpenMP told to wait passively


def test_app_takes_threads_on_its_command_line_and_defaults_to_its_cores(totalseg, tmp_path):
    """Issue 33: ``--threads N`` for the app too (taken off the command line before the Deploy SDK's parser, which
    refuses what it does not know); without it, the cores the process may use."""
    organ = totalseg / "v2_multilabel_seg.nii.gz"
    one = run_app(organ, tmp_path / "one", BUNDLES / "adrenal_gland", extra="--threads 1")
    assert app_threads(one)[0] == 1
    default = run_app(organ, tmp_path / "default", BUNDLES / "adrenal_gland")
    assert app_threads(default)[0] == len(os.sched_getaffinity(0))
    assert len(json.loads((tmp_path / "one" / "report.json").read_text())) == 2


def test_app_refuses_a_bundle_that_would_run_code(totalseg, tmp_path):
    """Issue 30's attack through the Deploy app: a shared bundle whose config writes a marker file is refused
    before anything of it runs."""
    from bundle_attacks import attack_bundle

    marker = tmp_path / "MARKER"
    bundle = attack_bundle(tmp_path / "models", "nested_key", marker)
    command = (f"ulimit -s 32768 2>/dev/null; exec {sys.executable} app -i '{totalseg / 'v2_multilabel_seg.nii.gz'}' "
               f"-o '{tmp_path / 'out'}' -m '{bundle}'")
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "SHAPEQC_TRUST_STORE": str(tmp_path / "store.json")})
    assert result.returncode != 0
    assert "untrusted bundle" in result.stdout + result.stderr
    assert not marker.exists() and not (tmp_path / "out" / "report.json").exists()


def test_app_moves_an_earlier_run_aside(totalseg, tmp_path):
    out = tmp_path / "out"
    inputs = {"HOLOSCAN_INPUT_PATH": str(totalseg / "v2_multilabel_seg.nii.gz"), "HOLOSCAN_OUTPUT_PATH": str(out),
              "HOLOSCAN_MODEL_PATH": str(BUNDLES / "adrenal_gland")}
    run_app(None, None, env=inputs, use_flags=False)
    first = json.loads((out / "report.json").read_text())
    run_app(None, None, env=inputs, use_flags=False)
    (previous,) = (out / "previous_runs").iterdir()
    assert json.loads((previous / "report.json").read_text()) == first


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


def ct_series_with_uids(folder: Path) -> list:
    """The real example CT series (its identifiers are blank in the shared copy: fill them, deterministically)."""
    import pydicom
    from pydicom.uid import generate_uid

    series = sorted((pydicom.dcmread(str(p)) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    for index, dataset in enumerate(series):
        dataset.SOPClassUID = dataset.SOPClassUID or "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not getattr(dataset, key, ""):
                setattr(dataset, key, generate_uid(entropy_srcs=["shapeqc test", key]))
        if not getattr(dataset, "SOPInstanceUID", ""):
            dataset.SOPInstanceUID = generate_uid(entropy_srcs=["shapeqc test", "sop", str(index)])
    return series


def pixel_positions_lps(dataset):
    """(rows * columns, 3) LPS mm of every pixel centre of one DICOM frame, row-major."""
    import numpy as np

    rows, columns = np.mgrid[0:dataset.Rows, 0:dataset.Columns]
    orientation = np.asarray(dataset.ImageOrientationPatient, float)
    row_spacing, column_spacing = map(float, dataset.PixelSpacing)
    return (np.asarray(dataset.ImagePositionPatient, float) + np.outer(columns.ravel() * column_spacing,
            orientation[:3]) + np.outer(rows.ravel() * row_spacing, orientation[3:]))


def labels_on_dicom_frames(series: list, segmentation: Path):
    """The NIfTI label map sampled at every pixel centre of every CT frame (frames, rows, columns)."""
    import nibabel as nib
    import numpy as np

    image = nib.load(str(segmentation))
    labels, to_voxel = np.asarray(image.dataobj), np.linalg.inv(image.affine)
    frames = []
    for dataset in series:
        lps = pixel_positions_lps(dataset)
        voxel = np.rint(np.c_[lps * [-1, -1, 1], np.ones(len(lps))] @ to_voxel.T)[:, :3].astype(int)
        inside = np.all((voxel >= 0) & (voxel < labels.shape), axis=1)
        frame = np.zeros(len(lps), labels.dtype)
        frame[inside] = labels[tuple(voxel[inside].T)]
        frames.append(frame.reshape(dataset.Rows, dataset.Columns))
    return np.stack(frames)


@pytest.fixture(scope="module")
def dicom_inputs(tmp_path_factory, totalseg):
    """A DICOM SEG built from the real example CT series and TotalSegmentator's segmentation of it, plus one CT
    slice of another series (a DICOM that is not a SEG)."""
    import copy

    import highdicom as hd
    import numpy as np
    import pydicom
    from pydicom.sr.codedict import codes

    from shapeqc.transforms.class_maps import class_map

    reference = totalseg / "reference"
    series = ct_series_with_uids(reference / "example_ct_dicom")
    labels = labels_on_dicom_frames(series, reference / "example_seg_dicom.nii.gz")
    names = class_map("v2")
    present = [int(v) for v in np.unique(labels) if v]
    algorithm = hd.AlgorithmIdentificationSequence(name="TotalSegmentator", version="2",
                                                   family=codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=index + 1, segment_label=names[value].replace("_", " "),
        segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=codes.SCT.Organ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for index, value in enumerate(present)]
    segmentation = hd.seg.Segmentation(
        source_images=series, pixel_array=np.stack([labels == v for v in present], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="shapeqc tests", manufacturer_model_name="tests", software_versions="0",
        device_serial_number="0")
    folder = tmp_path_factory.mktemp("dicom_inputs")
    segmentation.save_as(str(folder / "totalseg.dcm"))
    stray = copy.deepcopy(series[0])  # a CT image of another series: not a SEG, not a source of one
    stray.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["another series"])
    stray.save_as(str(folder / "ct_slice.dcm"))
    return folder, {index + 1: (value, names[value]) for index, value in enumerate(present)}


def test_dicom_seg_is_read_back_voxel_for_voxel_with_organ_names(dicom_inputs, totalseg, tmp_path):
    import nibabel as nib
    import numpy as np
    from dicom_seg_input import dicom_seg_to_nifti

    folder, segments = dicom_inputs
    path, read_names = dicom_seg_to_nifti(folder / "totalseg.dcm", tmp_path / "seg.nii.gz")
    # labels written "vertebrae T11", "adrenal gland right": read back as TotalSegmentator's names
    assert read_names == {number: name for number, (_, name) in segments.items()}
    converted = nib.load(str(path))
    original = nib.load(str(totalseg / "reference" / "example_seg_dicom.nii.gz"))

    def positions_mm(image, value):
        voxels = np.argwhere(np.asarray(image.dataobj) == value)
        return np.c_[voxels, np.ones(len(voxels))] @ image.affine.T

    for number, (value, _) in segments.items():  # the same voxels at the same scanner positions (RAS mm)
        ours, theirs = positions_mm(converted, number), positions_mm(original, value)
        assert len(ours) == len(theirs)
        np.testing.assert_allclose(ours.mean(axis=0), theirs.mean(axis=0), atol=1e-3)


def test_app_on_dicom_seg_and_a_ct_slice(dicom_inputs, totalseg, tmp_path):
    folder, _ = dicom_inputs
    run_app(folder, tmp_path / "app", models=BUNDLES / "adrenal_gland")
    records = json.loads((tmp_path / "app" / "report.json").read_text())
    by_case = {}
    for record in records:
        by_case.setdefault(record["case"], []).append(record)
    assert [r["status"] for r in by_case["ct_slice"]] == ["error"]
    assert "not a DICOM SEG (Modality CT)" in by_case["ct_slice"][0]["reason"]
    assert "ct_slice.dcm" in (tmp_path / "app" / "errors.csv").read_text()
    seg_records = {r["organ"]: r for r in by_case["totalseg"]}
    assert set(seg_records) == {"adrenal_gland_right"}  # the only adrenal gland in these 20 slices
    assert seg_records["adrenal_gland_right"]["input"].endswith("totalseg.dcm")
    # the same organ analysed from TotalSegmentator's own NIfTI gives the same record
    reference = totalseg / "reference" / "example_seg_dicom.nii.gz"
    cli = run_batch([str(reference)], [load_bundle(BUNDLES / "adrenal_gland")], tmp_path / "cli", progress=False)
    expected = next(r for r in cli if r["organ"] == "adrenal_gland_right")
    got = seg_records["adrenal_gland_right"]
    assert (got["status"], got["reason"]) == (expected["status"], expected["reason"])
    if expected["scores"]:
        assert got["scores"] == pytest.approx(expected["scores"], abs=1e-6)


def gland_on_dicom_frames(series: list, mask) -> object:
    """A real adrenal gland (1 mm mask) placed at the centre of the CT series' grid, its shortest extent along
    the slice axis (the series is only 40 mm thick): (frames, rows, columns) bool, nearest neighbour."""
    import numpy as np

    occupied = np.argwhere(mask)
    order = np.argsort(occupied.max(0) - occupied.min(0))[::-1]  # longest, middle, shortest -> x, y, z
    gland = np.transpose(mask, order)
    centre_voxel = (np.argwhere(gland).min(0) + np.argwhere(gland).max(0)) / 2.0
    corners = [np.asarray(d.ImagePositionPatient, float) for d in (series[0], series[-1])]
    orientation = np.asarray(series[0].ImageOrientationPatient, float)
    spacing = np.asarray(series[0].PixelSpacing, float)
    centre_mm = (corners[0] + corners[1]) / 2 + orientation[:3] * spacing[1] * series[0].Columns / 2 \
        + orientation[3:] * spacing[0] * series[0].Rows / 2
    frames = []
    for dataset in series:
        lps = pixel_positions_lps(dataset)
        voxel = np.rint(lps - centre_mm + centre_voxel).astype(int)
        inside = np.all((voxel >= 0) & (voxel < gland.shape), axis=1)
        frame = np.zeros(len(lps), bool)
        frame[inside] = gland[tuple(voxel[inside].T)]
        frames.append(frame.reshape(dataset.Rows, dataset.Columns))
    return np.stack(frames)


def test_app_writes_a_dicom_seg_of_the_difference_and_a_pdf_summary(totalseg, adrenal_val_masks, tmp_path):
    """A SEG of a real gland on the real CT series, with the series beside it: the app's DICOM SEG output,
    read back with highdicom, holds exactly the difference map; the CT slices are sources, not errors."""
    import highdicom as hd
    import nibabel as nib
    import numpy as np
    import pydicom
    from pydicom.sr.codedict import codes

    series = ct_series_with_uids(totalseg / "reference" / "example_ct_dicom")
    gland = gland_on_dicom_frames(series, adrenal_val_masks[1])
    assert gland.sum() > 1000 and not gland[0].any() and not gland[-1].any()
    algorithm = hd.AlgorithmIdentificationSequence(name="test", version="1", family=codes.DCM.ArtificialIntelligence)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Left adrenal gland", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    segmentation = hd.seg.Segmentation(
        source_images=series, pixel_array=gland.astype(np.uint8), segmentation_type="BINARY",
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="shapeqc tests", manufacturer_model_name="t",
        software_versions="0", device_serial_number="0")
    inputs = tmp_path / "in"
    (inputs / "ct").mkdir(parents=True)
    segmentation.save_as(str(inputs / "gland_seg.dcm"))
    for index, dataset in enumerate(series):
        dataset.save_as(str(inputs / "ct" / f"{index:03d}.dcm"))
    stray = pydicom.dcmread(str(inputs / "ct" / "000.dcm"))
    stray.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["another series"])
    stray.save_as(str(inputs / "stray_ct.dcm"))

    run_app(inputs, tmp_path / "out", models=BUNDLES / "adrenal_gland")
    records = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {(r["case"], r["status"]) for r in records if r["status"] == "error"} == {("stray_ct", "error")}
    record = next(r for r in records if r["case"] == "gland_seg")
    assert record["organ"] == "adrenal_gland_left" and record["status"] in ("ok", "outlier")
    difference_image = nib.load(record["outputs"]["difference"])
    difference = np.asarray(difference_image.dataobj)
    assert (difference > 0).any()
    written = hd.seg.segread(record["outputs"]["dicom_seg"])
    assert written.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    labels = {n: written.get_segment_description(n).segment_label for n in written.segment_numbers}
    volume = written.get_volume(combine_segments=False)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine  # LPS -> RAS
    for number, label in labels.items():
        kind = 1 if "over" in label else 2
        ours = np.argwhere(np.asarray(volume.array)[..., number - 1] > 0)
        theirs = np.argwhere(difference == kind)
        assert len(ours) == len(theirs)
        np.testing.assert_allclose((np.c_[ours, np.ones(len(ours))] @ affine.T).mean(0),
                                   (np.c_[theirs, np.ones(len(theirs))] @ difference_image.affine.T).mean(0),
                                   atol=1e-3)
    summary = pydicom.dcmread(record["outputs"]["dicom_summary_pdf"])
    assert summary.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert summary.EncapsulatedDocument[:4] == b"%PDF"
    assert summary.StudyInstanceUID == series[0].StudyInstanceUID


def test_the_app_analyses_the_same_organs_with_its_models_folder(mixed_organs, tmp_path):
    folder, _ = mixed_organs
    command = (f"ulimit -s 32768; '{sys.executable}' '{ROOT / 'app'}' -i '{folder}' -o '{tmp_path / 'app'}' "
               f"-m '{BUNDLES}'")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    app_records = json.loads((tmp_path / "app" / "report.json").read_text())
    cli_records = run_batch([str(folder)], load_trained_bundles([BUNDLES]), tmp_path / "cli", progress=False)

    def essence(records):
        return sorted((r["case"], r["organ"], r["bundle"], r["status"], json.dumps(r["scores"])) for r in records)

    assert essence(app_records) == essence(cli_records)
