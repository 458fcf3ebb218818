"""The canonical grid on real adrenal masks: placement, zoom, mirroring and the round trip back."""

from __future__ import annotations

import numpy as np
import pytest

from shapeqc.scoring.metrics import dice
from shapeqc.transforms.canonical_grid import (
    CanonicalGrid,
    grid_to_source,
    organ_world_bounds,
    plan_canonical_grid,
    resample_trilinear,
    source_to_grid,
)
from shapeqc.transforms.grid_transforms import CanonicalGridToSourced, ToCanonicalGridd
from shapeqc.transforms.reslice import reslice_mask

N_MASKS = 60

# (input spacing mm, direction rotation deg, per-case Dice bound, median Dice bound).
# Axis-aligned inputs whose spacing is a multiple of the 1 mm grid step land exactly on grid voxel centres:
# the round trip is the identity. Otherwise every boundary may move by up to half a grid voxel through the
# two thresholded interpolations; adrenal glands are only 3-6 mm thick, so that shell is a few % of the
# volume, and more when the input is finer than the grid (0.7-0.8 mm in-plane: detail below 1 mm is lost).
# Bounds sit about 0.02 under the worst case measured on these masks (closing note of issue 2).
ROUND_TRIP_CASES = [
    ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 1.0, 1.0),
    ((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), 1.0, 1.0),
    ((1.5, 1.5, 1.5), (30.0, 0.0, 0.0), 0.97, 0.99),
    ((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), 0.97, 0.98),
    ((0.8, 0.8, 2.5), (10.0, -15.0, 30.0), 0.92, 0.96),
    ((0.7, 0.7, 3.0), (0.0, 0.0, 90.0), 0.88, 0.93),
]


@pytest.mark.parametrize("spacing, rotation, case_bound, median_bound", ROUND_TRIP_CASES)
def test_round_trip_on_real_masks(adrenal_val_masks, spacing, rotation, case_bound, median_bound):
    scores = []
    for mask in adrenal_val_masks[:N_MASKS]:
        source, affine = reslice_mask(mask, np.eye(4), spacing, rotation)
        plan = plan_canonical_grid(source.astype(bool), affine, spacing_mm=1.0, grid_size=128, margin=8)
        assert plan.zoom == 1.0
        restored = grid_to_source(source_to_grid(source, plan), plan)
        assert restored.shape == source.shape
        scores.append(dice(source.astype(bool), restored))
    scores = np.asarray(scores)
    worst = int(np.argmin(scores))
    assert scores.min() >= case_bound, f"case {worst}: Dice {scores.min():.4f} < {case_bound}"
    assert np.median(scores) >= median_bound


def test_grid_to_world_places_the_organ_where_it_is(adrenal_val_masks):
    """Independent check of grid_to_world: the organ's centroid in mm is the same in both spaces."""
    source, affine = reslice_mask(adrenal_val_masks[3], np.eye(4), (0.8, 0.8, 2.5), (10.0, -15.0, 30.0))
    plan = plan_canonical_grid(source.astype(bool), affine, 1.0, 128, 8, mirror=True)
    grid = source_to_grid(source, plan)

    def centroid_mm(mask, voxel_to_mm):
        indices = np.argwhere(mask).mean(axis=0)
        return voxel_to_mm[:3, :3] @ indices + voxel_to_mm[:3, 3]

    np.testing.assert_allclose(centroid_mm(grid, plan.grid_to_world), centroid_mm(source, affine), atol=0.3)
    # the grid's axes are world axes (x mirrored), spacing 1 mm
    np.testing.assert_allclose(plan.grid_to_world[:3, :3], np.diag([-1.0, 1.0, 1.0]))
    # and the organ's box is centred in the grid, within the half-voxel snap
    lower, upper = organ_world_bounds(grid, plan.grid_to_world)
    centre_index = np.linalg.inv(plan.grid_to_world) @ np.append((lower + upper) / 2, 1.0)
    np.testing.assert_allclose(centre_index[:3], np.full(3, 63.5), atol=0.51)


def test_mirroring_maps_a_left_organ_onto_its_flipped_self(adrenal_val_masks):
    mask = adrenal_val_masks[5]
    plain = plan_canonical_grid(mask, np.eye(4), 1.0, 128, 8, mirror=False)
    mirrored = plan_canonical_grid(mask, np.eye(4), 1.0, 128, 8, mirror=True)
    a = source_to_grid(mask, plain)
    b = source_to_grid(mask, mirrored)
    assert a.sum() == b.sum() == mask.sum()
    # the same voxels, reversed along axis 0 (up to the whole-voxel shift of snapping)
    shift = int(np.argwhere(b).min(axis=0)[0] - np.argwhere(a[::-1]).min(axis=0)[0])
    np.testing.assert_array_equal(np.roll(a[::-1], shift, axis=0), b)


def test_large_organ_is_zoomed_out_and_recorded(adrenal_val_masks):
    mask = adrenal_val_masks[0]
    affine = np.diag([4.0, 4.0, 4.0, 1.0])  # the same voxels read as 4 mm: a 100+ mm organ
    plan = plan_canonical_grid(mask, affine, spacing_mm=1.0, grid_size=64, margin=4)
    lower, upper = organ_world_bounds(mask, affine)
    assert plan.zoom == pytest.approx(np.max(upper - lower) / (56 * 1.0))
    assert plan.grid_spacing_mm == pytest.approx(plan.zoom)
    grid = source_to_grid(mask, plan)
    occupied = np.argwhere(grid)
    assert occupied.min() >= 3 and occupied.max() <= 60  # the margin holds, within the half-voxel snap
    restored = grid_to_source(grid, plan)
    assert dice(mask, restored) > 0.8


def test_float_occupancy_maps_back_consistently(adrenal_val_masks):
    mask = adrenal_val_masks[7]
    source, affine = reslice_mask(mask, np.eye(4), (0.8, 0.8, 2.5), (0.0, 20.0, 0.0))
    plan = plan_canonical_grid(source.astype(bool), affine, 1.0, 96, 8)
    occupancy = source_to_grid(source, plan, binary=False)
    assert occupancy.dtype == np.float32 and 0.0 <= occupancy.min() and occupancy.max() <= 1.0
    back = grid_to_source(occupancy, plan, binary=False)
    assert back.shape == source.shape and back.dtype == np.float32
    np.testing.assert_array_equal(back >= 0.5, grid_to_source(occupancy, plan, binary=True))


def test_dictionary_transforms_round_trip_and_record_the_plan(adrenal_val_masks):
    source, affine = reslice_mask(adrenal_val_masks[2], np.eye(4), (0.8, 0.8, 2.5), (0.0, 0.0, 45.0))
    item = {"mask": source, "affine": affine, "organ": "adrenal_gland_left", "case_id": "c"}
    gridded = ToCanonicalGridd("mask", spacing_mm=1.0, grid_size=96, margin=8, mirror_side="left")(item)
    assert gridded["mask"].shape == (1, 96, 96, 96) and gridded["mask"].dtype == np.uint8
    plan = CanonicalGrid.from_dict(gridded["grid"])
    assert plan.mirrored and plan.grid_size == 96 and plan.source_shape == source.shape
    restored = CanonicalGridToSourced("mask")(gridded)["mask"]
    assert restored.shape == source.shape
    assert dice(source, restored) > 0.92
    right = ToCanonicalGridd("mask", grid_size=96, mirror_side="left")({**item, "organ": "adrenal_gland_right"})
    assert not CanonicalGrid.from_dict(right["grid"]).mirrored


def test_plan_survives_a_json_round_trip(adrenal_val_masks):
    import json

    plan = plan_canonical_grid(adrenal_val_masks[1], np.eye(4) * [1, 1, 2, 1], 1.0, 64, 4, mirror=True)
    again = CanonicalGrid.from_dict(json.loads(json.dumps(plan.to_dict())))
    np.testing.assert_array_equal(again.grid_to_world, plan.grid_to_world)
    assert (again.zoom, again.mirrored, again.source_shape) == (plan.zoom, plan.mirrored, plan.source_shape)


@pytest.mark.parametrize("rotation", [(0.0, 0.0, 0.0), (10.0, -15.0, 30.0)])
def test_map_back_of_the_grid_box_alone_equals_the_whole_volume(adrenal_val_masks, rotation):
    """grid_to_source resamples only the source voxels near the grid's cube: a source volume far larger than the
    cube must get what resampling all of it gives (zero outside the cube, the same values inside)."""
    mask = adrenal_val_masks[3]
    source, affine = reslice_mask(mask, np.eye(4), (0.8, 0.8, 2.5), rotation)
    large = np.zeros((source.shape[0] + 80, source.shape[1] + 60, source.shape[2] + 10), source.dtype)
    large[40:40 + source.shape[0], 30:30 + source.shape[1], 5:5 + source.shape[2]] = source
    plan = plan_canonical_grid(large.astype(bool), affine, 1.0, 64, 8)
    occupancy = source_to_grid(large, plan, binary=False)
    whole = resample_trilinear(occupancy, np.linalg.inv(plan.grid_to_world) @ plan.source_affine, plan.source_shape)
    in_box = grid_to_source(occupancy, plan, binary=False)
    np.testing.assert_allclose(in_box, whole, rtol=0, atol=1e-6)  # the box's own offset rounds differently
    np.testing.assert_array_equal(grid_to_source(occupancy, plan, binary=True), whole >= 0.5)
    # a network's sigmoid is above 0 everywhere: the binary map back still needs only the box near values >= 0.5
    everywhere = 0.01 + 0.98 * occupancy
    whole_sigmoid = resample_trilinear(everywhere, np.linalg.inv(plan.grid_to_world) @ plan.source_affine,
                                       plan.source_shape)
    np.testing.assert_array_equal(grid_to_source(everywhere, plan, binary=True), whole_sigmoid >= 0.5)
    assert whole[:20].max() == 0 and whole[40:-40].max() > 0.5  # the cube lies inside the larger volume
