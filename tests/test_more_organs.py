"""Issue 7's data side: head-and-neck NRRD trees and MSD label maps found, named, loaded and split as a user of
those datasets expects, with nothing dropped silently."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from shapeqc.bundle.datalists import headneck_split, label_map_split
from shapeqc.runs.cases import discover_cases
from shapeqc.transforms.errors import EmptyMaskError, UnknownOrganError
from shapeqc.transforms.organ_loading import LoadOrganMaskd, check_organ_mask, load_organ_mask, organ_file_in
from shapeqc.transforms.volume_io import read_volume, write_volume


def test_discover_cases_names_each_rater_and_scan_of_a_headneck_tree(headneck_tree):
    cases = discover_cases([str(headneck_tree)])
    scans = sorted(p.name for p in (headneck_tree / "oncologist").iterdir())
    assert len(scans) == 28
    assert [case for case, _ in cases] == ([f"oncologist/{s}" for s in scans]
                                           + [f"radiographer/{s}" for s in scans])
    assert all(path.endswith("segmentations") for _, path in cases)
    # the per-organ folder given directly is one case named after its scan, not "segmentations"
    folder = headneck_tree / "radiographer" / scans[3] / "segmentations"
    assert discover_cases([str(folder)]) == [(scans[3], str(folder))]


@pytest.mark.parametrize("organ, stems", [("parotid_gland_left", ("Parotid-Lt", "Parotid_Lt")),
                                           ("mandible", ("Mandible",)),
                                           ("submandibular_gland_right", ("Submandibular-Rt", "Submandibular_Rt"))])
def test_organ_files_are_found_under_the_datasets_names(headneck_tree, organ, stems):
    folders = sorted(headneck_tree.glob("oncologist/*/segmentations"))
    found = [organ_file_in(folder, organ) for folder in folders]
    assert all(path is not None and path.name in {f"{s}.nrrd" for s in stems} for path in found)
    if len(stems) > 1:  # both spellings occur in the set (4 scans use underscores)
        assert {path.name for path in found} == {f"{s}.nrrd" for s in stems}
    mask, affine, info = load_organ_mask(folders[0], organ)
    expected, expected_affine = read_volume(found[0])
    np.testing.assert_array_equal(mask, expected > 0)
    np.testing.assert_allclose(affine, expected_affine)
    assert info["form"] == "organ_folder"
    with pytest.raises(UnknownOrganError, match="adrenal_gland_left"):
        load_organ_mask(folders[0], "adrenal_gland_left")


def test_empty_submandibular_masks_are_reported_not_judged(headneck_tree):
    def masks():
        for folder in sorted(headneck_tree.glob("*/*/segmentations")):
            for organ in ("submandibular_gland_left", "submandibular_gland_right"):
                yield folder, organ, load_organ_mask(folder, organ)[0]

    found = next(((folder, organ, mask) for folder, organ, mask in masks() if not mask.any()), None)
    assert found is not None, "the README says some Submandibular masks are empty"
    folder, organ, mask = found
    with pytest.raises(EmptyMaskError, match="Submandibular"):
        check_organ_mask(mask, organ_file_in(folder, organ))


def test_headneck_split_holds_out_whole_scans_and_gives_the_other_rater_of_them(headneck_tree, caplog):
    root = str(headneck_tree)
    with caplog.at_level(logging.INFO, logger="shapeqc.bundle.datalists"):
        train = headneck_split(root, ["mandible"], "train")
        val = headneck_split(root, ["mandible"], "val")
        other = headneck_split(root, ["mandible"], "other_rater")
    assert (len(train), len(val), len(other)) == (20, 8, 8)  # 30% of 28 scans held out
    assert {i["rater"] for i in train + val} == {"oncologist"} and {i["rater"] for i in other} == {"radiographer"}
    assert not {i["scan"] for i in train} & {i["scan"] for i in val}
    assert [i["scan"] for i in other] == [i["scan"] for i in val]
    assert headneck_split(root, ["mandible"], "val", seed=1) != val
    assert "8 of 8 cases usable" in caplog.text
    # empty submandibular masks are counted as not judged, never silently missing
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shapeqc.bundle.datalists"):
        glands = headneck_split(root, ["submandibular_gland_left", "submandibular_gland_right"], "train")
    listed = 2 * 20
    assert len(glands) < listed and f"of {listed} cases usable" in caplog.text and "empty_mask" in caplog.text


def test_hippocampus_labels_make_one_organ(hippocampus_labels, tmp_path):
    path = sorted(hippocampus_labels.iterdir())[0]
    volume, affine = read_volume(path)
    assert set(np.unique(volume)) == {0, 1, 2}
    item = LoadOrganMaskd("mask")({"mask": str(path), "organ": "hippocampus", "labels": [1, 2]})
    np.testing.assert_array_equal(item["mask"], (volume > 0).astype(np.uint8))
    assert item["mask_load"]["form"] == "label_set"
    # the label set does not apply to a map holding other labels (a TotalSegmentator map stays one)
    other = tmp_path / "three_labels.nii.gz"
    write_volume(other, np.where(volume == 2, 3, volume).astype(np.uint8), affine)
    with pytest.raises(Exception, match="three_labels"):
        load_organ_mask(other, "hippocampus", labels=[1, 2])
    train, val = (label_map_split(str(hippocampus_labels.parent.parent), "hippocampus", [1, 2], split)
                  for split in ("train", "val"))
    assert (len(train), len(val)) == (178, 32)
    assert not {i["case_id"] for i in train} & {i["case_id"] for i in val}


def test_spinal_cords_cut_by_the_border_are_counted_not_judged(headneck_tree, caplog):
    with caplog.at_level(logging.INFO, logger="shapeqc.bundle.datalists"):
        usable = headneck_split(str(headneck_tree), ["spinal_cord"], "val")
    assert len(usable) < 8 and "of 8 cases usable" in caplog.text and "'truncated'" in caplog.text


def test_a_relative_data_folder_finds_every_headneck_mask_in_a_fresh_process(headneck_tree):
    """ITK changes the working directory while it first loads, which once made the threaded usability check of a
    relative --dataset_dir find 1 of 16 held-out parotid masks (the calibration then used one case). A fresh
    interpreter, so that ITK's first load happens inside the threads, as in `monai.bundle run evaluating`."""
    import os
    import subprocess
    import sys

    data = os.path.relpath(headneck_tree.parents[1])
    code = ("from shapeqc.bundle.datalists import headneck_split; "
            f"print(len(headneck_split({data!r}, ['parotid_gland_left', 'parotid_gland_right'], 'val')))")
    absolute = headneck_split(str(headneck_tree.parents[1]), ["parotid_gland_left", "parotid_gland_right"], "val")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(printed.split()[-1]) == len(absolute) == 16
