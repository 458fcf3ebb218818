"""Every training and calibration source's frame, pinned by anatomy (issue 31's audit; docs/anatomy_audit.md).

Each source is read the way the bundles read it (the readers behind their datalists, then the one item loader,
``load_item_mask``), in world millimetres (RAS+), and compared with a reference known to be in true RAS: the
TotalSegmentator example's organs and the evalseg ground truth (whose axis signs its README set from the
neighbouring organs; the first test checks those relations). A source read in a mirrored frame fails here, as
the adrenal glands did when read as R, A, S.
"""

from __future__ import annotations

import csv
from itertools import islice

import numpy as np
import pytest
from conftest import SHARED_DATA

from shapeqc.bundle.datalists import (
    HEADNECK_TREE,
    HIPPOCAMPUS_LABELS,
    KITS_CASES,
    KITS_KIDNEY_LABELS,
    LITS_IDENTITY_HEADER_CASES,
    LITS_MASKS,
    MSD_SPLEEN_LABELS,
    adrenalmnist3d_split,
)
from shapeqc.bundle.datasets import headneck_tree_items, label_map_folder_items, paired_label_map_items
from shapeqc.evaluation.anatomy import pole_correlations, third_moments, world_points
from shapeqc.transforms.errors import SegmentationInputError
from shapeqc.transforms.organ_loading import load_item_mask, load_organ_mask
from shapeqc.transforms.volume_io import read_volume

TOTALSEG = SHARED_DATA / "totalsegmentator_example"


@pytest.fixture(scope="module")
def evalseg() -> dict[str, list[np.ndarray]]:
    """World points of the spleen (1), left kidney (3) and liver (6) of every evalseg ground-truth map."""
    found: dict[str, list[np.ndarray]] = {"spleen": [], "kidney_left": [], "liver": []}
    for path in sorted((SHARED_DATA / "evalseg_multiorgan" / "gt").glob("*.nii.gz")):
        volume, affine = read_volume(path)[:2]
        volume = np.asarray(volume)
        for organ, label in (("spleen", 1), ("kidney_left", 3), ("liver", 6)):
            found[organ].append(world_points(volume == label, affine))
    return found


def _points(items) -> list[tuple[dict, np.ndarray]]:
    """(item, world points) of every item the bundles could use (those their datalists reject, a solitary kidney,
    an organ a rater did not draw, are left out as there)."""
    found = []
    for item in items:
        try:
            found.append((item, world_points(*load_item_mask(item))))
        except SegmentationInputError:
            continue
    return found


def test_the_references_are_in_true_ras(evalseg):
    """evalseg: the liver right of the spleen, the spleen above the left kidney, in every subject; the
    TotalSegmentator example: the liver right of the spleen, the right adrenal gland right of the left."""
    for spleen, kidney, liver in zip(evalseg["spleen"], evalseg["kidney_left"], evalseg["liver"], strict=True):
        assert liver[:, 0].mean() > spleen[:, 0].mean()  # +x is the patient's right
        assert spleen[:, 2].mean() > kidney[:, 2].mean()  # +z is superior
    seg = TOTALSEG / "v2_multilabel_seg.nii.gz"
    centre = {organ: world_points(*load_organ_mask(seg, organ)[:2]).mean(axis=0)
              for organ in ("liver", "spleen", "adrenal_gland_left", "adrenal_gland_right")}
    assert centre["liver"][0] > centre["spleen"][0]
    assert centre["adrenal_gland_right"][0] > centre["adrenal_gland_left"][0]


def test_adrenalmnist3d_is_read_in_its_true_frame():
    """Real glands' bodies lie in front of their limbs: negative A (and S) skew in all six TotalSegmentator glands.
    Read with its pinned affine (L, P, S), >= 95% of AdrenalMNIST3D glands agree; read as R, A, S (before 0.6.0),
    >= 95% were anterior-posterior mirror images."""
    reference = np.array([third_moments(world_points(*load_organ_mask(TOTALSEG / name, organ)[:2]))
                          for name in ("v2_multilabel_seg.nii.gz", "v1_multilabel_seg.nii.gz",
                                       "reference/example_seg_fast.nii.gz")
                          for organ in ("adrenal_gland_left", "adrenal_gland_right")])
    assert (reference[:, 1] < 0).all() and (reference[:, 2] < 0).all()
    glands = _points(adrenalmnist3d_split(str(SHARED_DATA), "train", 300))
    assert all(np.allclose(item["affine"], np.diag([-1.0, -1.0, 1.0, 1.0])) for item, _ in glands)
    moments = np.array([third_moments(points) for _, points in glands])
    assert (moments[:, 1] < 0).mean() >= 0.95  # A, as the reference
    assert np.median(moments[:, 2]) < 0  # S, as the reference
    as_identity = np.array([third_moments(points * [-1.0, -1.0, 1.0]) for _, points in glands])
    assert (as_identity[:, 1] > 0).mean() >= 0.95


@pytest.fixture(scope="module")
def kidneys() -> list[tuple[dict, np.ndarray]]:
    """The kidneys of the first 14 KiTS23 cases as the kidney bundle reads them (sides from RAS x)."""
    return _points(islice(paired_label_map_items(SHARED_DATA / KITS_CASES, "kidney", KITS_KIDNEY_LABELS), 28))


def test_kits23_kidneys_lean_like_the_reference_kidneys(evalseg, kidneys):
    """A kidney's upper pole lies medial and posterior to its lower pole: as a left kidney, corr(S, R) > 0 and
    corr(S, A) < 0 in every evalseg left kidney, and in most KiTS kidneys (right ones mirrored in x)."""
    for points in evalseg["kidney_left"]:
        towards_right, towards_front = pole_correlations(points)
        assert towards_right > 0 and towards_front < 0
    leans = np.array([pole_correlations(points * ([-1.0, 1.0, 1.0] if item["side"] == "right" else 1.0))
                      for item, points in kidneys])
    assert (leans[:, 0] > 0).mean() >= 0.75
    assert (leans[:, 1] < 0).mean() >= 0.9


def test_kits23_right_kidneys_lie_right_of_left_kidneys(kidneys):
    by_case: dict[str, dict[str, float]] = {}
    for item, points in kidneys:
        by_case.setdefault(item["case_id"], {})[item["side"]] = points[:, 0].mean()
    pairs = [sides for sides in by_case.values() if len(sides) == 2]
    assert len(pairs) >= 10 and all(sides["right"] > sides["left"] for sides in pairs)


def test_lits_livers_have_the_reference_livers_shape_and_side(evalseg):
    """The liver's bulk lies right of and above its left-lobe tip: negative R and S skew in every evalseg liver
    and in the LiTS livers the bundle reads; every used liver lies right of its image centre, and the cases the
    bundle never reads (identity headers) are exactly those whose liver lies left of it."""
    for points in evalseg["liver"]:
        moments = third_moments(points)
        assert moments[0] < 0 and moments[2] < 0
    items = [item for item in label_map_folder_items(SHARED_DATA / LITS_MASKS, "liver", [1])
             if item["case_id"] not in LITS_IDENTITY_HEADER_CASES]
    moments = np.array([third_moments(points) for _, points in _points(items[::8])])
    assert (moments[:, 0] < 0).all() and (moments[:, 2] < 0).mean() >= 0.9
    rows = list(csv.DictReader((SHARED_DATA / "lits_liver" / "index.csv").open()))
    left_of_centre = {row["case_id"] for row in rows if float(row["liver_x_minus_center_x_mm"]) < 0}
    assert left_of_centre == set(LITS_IDENTITY_HEADER_CASES)


def test_msd_spleens_have_the_reference_spleens_shape(evalseg):
    """A spleen's tails run lateral and anterior: positive R and A skew in 9 of 9 and 8 of 9 evalseg spleens."""
    reference = np.array([third_moments(points) for points in evalseg["spleen"]])
    assert (reference[:, 0] > 0).all() and (reference[:, 1] > 0).mean() >= 0.85
    items = list(label_map_folder_items(SHARED_DATA / MSD_SPLEEN_LABELS, "spleen", [1]))[::3]
    moments = np.array([third_moments(points) for _, points in _points(items)])
    assert (moments[:, 0] > 0).mean() >= 0.9 and (moments[:, 1] > 0).mean() >= 0.8


def test_msd_hippocampus_head_lies_in_front_of_its_tail():
    """Label 1 is the anterior hippocampus (head), label 2 the posterior (body and tail)."""
    ahead = []
    for item in islice(label_map_folder_items(SHARED_DATA / HIPPOCAMPUS_LABELS, "hippocampus", [1, 2]), 30):
        volume, affine = read_volume(item["mask"])[:2]
        volume = np.asarray(volume)
        ahead.append(world_points(volume == 1, affine)[:, 1].mean() > world_points(volume == 2, affine)[:, 1].mean())
    assert np.mean(ahead) >= 0.95


def test_head_and_neck_left_parotid_left_of_the_right_and_behind_the_mandible():
    """Both raters' masks (NRRD, read through their LPS headers): the left parotid at smaller RAS x than the right,
    the mandible in front of (larger A than) the parotids."""
    organs = ["parotid_gland_left", "parotid_gland_right", "mandible"]
    scans: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for rater in ("oncologist", "radiographer"):
        for item, points in _points(islice(headneck_tree_items(SHARED_DATA / HEADNECK_TREE, organs,
                                                               raters=(rater,)), 12)):
            scans.setdefault((rater, item["scan"]), {})[item["organ"]] = points.mean(axis=0)
    complete = [found for found in scans.values() if len(found) == 3]
    assert len({rater for rater, _ in scans}) == 2 and len(complete) >= 6
    for found in complete:
        left, right = found["parotid_gland_left"], found["parotid_gland_right"]
        assert left[0] < right[0]
        assert found["mandible"][1] > (left[1] + right[1]) / 2
