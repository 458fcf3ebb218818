"""Difference maps and defect components."""

from __future__ import annotations

import numpy as np
import pytest

from shapeqc.scoring.defects import OVER, UNDER, defect_components, difference_map


def test_difference_codes():
    seg = np.array([1, 1, 0, 0], bool).reshape(1, 1, 4)
    rec = np.array([1, 0, 1, 0], bool).reshape(1, 1, 4)
    assert difference_map(seg, rec).ravel().tolist() == [0, OVER, UNDER, 0]


def test_components_sizes_centroids_and_order():
    seg = np.zeros((20, 20, 20), bool)
    seg[5:15, 5:15, 5:15] = True
    rec = seg.copy()
    rec[5:8, 5:8, 5:8] = False  # 27 voxels missing from the reconstruction: over-segmentation
    rec[15:17, 10:12, 10:12] = True  # 8 voxels added: under-segmentation
    rec[1, 1, 1] = True  # a single voxel, below the size floor
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 0.0, 5.0]
    defects = defect_components(difference_map(seg, rec), affine, min_volume_ml=0.02)
    assert [(d.kind, d.voxels) for d in defects] == [("over", 27), ("under", 8)]
    assert defects[0].volume_ml == pytest.approx(27 * 8 / 1000)
    assert defects[0].centroid_mm == pytest.approx((-10 + 2 * 6, 2 * 6, 5 + 2 * 6))
    assert defects[0].bbox == ((5, 5, 5), (7, 7, 7))
    assert defects[1].bbox == ((15, 10, 10), (16, 11, 11))


def test_no_defects():
    seg = np.ones((4, 4, 4), bool)
    assert defect_components(difference_map(seg, seg), np.eye(4)) == []


def test_components_of_a_box_are_those_of_the_whole_volume():
    """analysis finds defects in the box holding segmentation and reconstruction: the offset puts centroids and
    bounding boxes back where they lie in the whole volume."""
    seg = np.zeros((40, 30, 50), bool)
    seg[12:25, 8:20, 20:40] = True
    rec = seg.copy()
    rec[12:16, 8:12, 20:30] = False
    rec[25:27, 10:15, 25:35] = True
    affine = np.array([[0.0, 0.8, 0.0, -30.0], [2.5, 0.0, 0.0, 12.0], [0.0, 0.0, -0.7, 40.0], [0, 0, 0, 1.0]])
    whole = defect_components(difference_map(seg, rec), affine)
    box = (slice(11, 28), slice(7, 21), slice(19, 41))
    in_box = defect_components(difference_map(seg[box], rec[box]), affine, offset=(11, 7, 19))
    assert len(whole) == 2 and in_box == whole
