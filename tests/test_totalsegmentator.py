"""Real TotalSegmentator outputs: organ selection by name from the three forms, and map-version detection."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from shapeqc.transforms import errors
from shapeqc.transforms.class_maps import class_map, detect_map_version, laterality_agreement
from shapeqc.transforms.organ_loading import LoadOrganMaskd, load_organ_mask
from shapeqc.transforms.volume_io import read_label_names, read_volume


def test_embedded_class_maps_match_totalsegmentator(totalseg):
    reference = json.loads((totalseg / "class_map_total.json").read_text())
    assert class_map("v1") == {int(k): v for k, v in reference["total_v1"].items()}
    assert class_map("v2") == {int(k): v for k, v in reference["total"].items()}
    assert len(class_map("v1")) == 104 and len(class_map("v2")) == 117


def test_v1_multilabel_equals_v1_folder_for_every_organ(totalseg):
    label_map, affine = read_volume(totalseg / "v1_multilabel_seg.nii.gz")
    present = set(np.unique(label_map).astype(int)) - {0}
    folder = totalseg / "v1_per_organ"
    checked = 0
    for label, organ in class_map("v1").items():
        from_folder, folder_affine, info = load_organ_mask(folder, organ=organ)
        assert info["form"] == "organ_folder"
        np.testing.assert_allclose(folder_affine, affine)
        if label not in present:
            assert not from_folder.any(), organ
            continue
        from_map, _, map_info = load_organ_mask(totalseg / "v1_multilabel_seg.nii.gz", organ=organ)
        assert map_info == {"form": "multilabel", "map_version": "v1", "label": label}
        np.testing.assert_array_equal(from_map, from_folder, err_msg=organ)
        checked += 1
    assert checked == len(present) == 59


@pytest.mark.parametrize(
    "organ, label, voxels",
    # label ids of the v2 "total" map and voxel counts stated in the data README
    [("adrenal_gland_right", 8, 152), ("adrenal_gland_left", 9, 184), ("liver", 5, 38634), ("spleen", 1, 9452)],
)
def test_v2_selection_by_name(totalseg, organ, label, voxels):
    mask, _, info = load_organ_mask(totalseg / "v2_multilabel_seg.nii.gz", organ=organ)
    assert info == {"form": "multilabel", "map_version": "v2", "label": label}
    assert int(mask.sum()) == voxels


def _without_header_table(src, dst):
    image = nib.load(str(src))
    clean = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
    nib.save(clean, str(dst))
    return dst


@pytest.mark.parametrize(
    "name, version",
    [
        ("v1_multilabel_seg.nii.gz", "v1"),
        ("v2_multilabel_seg.nii.gz", "v2"),
        ("reference/example_seg_fast_force_split.nii.gz", "v2"),
        ("reference/example_seg_dicom.nii.gz", "v2"),  # LAS orientation
    ],
)
def test_map_version_detected_with_and_without_header_table(totalseg, tmp_path, name, version):
    path = totalseg / name
    label_map, affine = read_volume(path)
    assert detect_map_version(label_map.astype(int), affine, read_label_names(path)) == version
    stripped = _without_header_table(path, tmp_path / "stripped.nii.gz")
    assert read_label_names(stripped) is None
    label_map, affine = read_volume(stripped)
    assert detect_map_version(label_map.astype(int), affine) == version


def test_laterality_tells_the_maps_apart(totalseg):
    label_map, affine = read_volume(totalseg / "v1_multilabel_seg.nii.gz")
    agree_v1, checked_v1 = laterality_agreement(label_map.astype(int), affine, class_map("v1"))
    agree_v2, checked_v2 = laterality_agreement(label_map.astype(int), affine, class_map("v2"))
    assert agree_v1 == checked_v1 >= 10
    assert agree_v2 < checked_v2


def test_explicit_wrong_version_selects_a_different_structure(totalseg):
    # label 9 is adrenal_gland_left in v2 but portal_vein_and_splenic_vein in v1: the version matters
    path = totalseg / "v2_multilabel_seg.nii.gz"
    v2_mask, _, _ = load_organ_mask(path, organ="adrenal_gland_left", map_version="v2")
    with pytest.raises(errors.UnknownOrganError):
        load_organ_mask(path, organ="not_an_organ", map_version="v1")
    assert int(v2_mask.sum()) == 184


def test_header_label_table_is_read(totalseg):
    names = read_label_names(totalseg / "v2_multilabel_seg.nii.gz")
    assert names is not None and names[9] == "adrenal_gland_left" and names[5] == "liver"


def test_unknown_organ_name_gives_typed_error(totalseg):
    for source in ("v2_multilabel_seg.nii.gz", "v1_multilabel_seg.nii.gz", "v1_per_organ"):
        with pytest.raises(errors.UnknownOrganError) as caught:
            LoadOrganMaskd("mask", organ="adrenal_gland_middle")({"mask": str(totalseg / source)})
        assert str(totalseg / source) in str(caught.value)


def test_a_headerless_map_version_is_detected_once_per_case(totalseg, tmp_path, monkeypatch):
    """A v1 map without a label table through every trained bundle: the version is detected once for the case (it
    took 0.65 s on this small map, once per bundle and organ before), and every organ is read as v1."""
    from pathlib import Path

    from shapeqc.bundle.loading import load_trained_bundles
    from shapeqc.runs.cases import analyse_case
    from shapeqc.transforms import class_maps

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return detect_map_version(*args, **kwargs)

    from shapeqc.runs import cases
    from shapeqc.transforms import organ_loading

    for module in (class_maps, cases, organ_loading):  # wherever a caller may hold the name
        monkeypatch.setattr(module, "detect_map_version", counted, raising=False)
    bundles = load_trained_bundles([Path(__file__).resolve().parents[1] / "bundles"])
    records = analyse_case("v1", str(totalseg / "v1_multilabel_seg.nii.gz"), bundles, tmp_path)
    assert len(calls) == 1
    judged = [r for r in records if r["status"] in ("ok", "outlier")]
    assert judged and {r["organ"] for r in judged} >= {"adrenal_gland_left", "adrenal_gland_right"}
