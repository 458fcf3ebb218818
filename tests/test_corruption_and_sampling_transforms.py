"""Corruption and boundary-sampling transforms: seeded, local to the organ, and usable in a MONAI pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, CopyItemsd

from shapeqc.bundle.datasets import adrenalmnist3d_items
from shapeqc.transforms.boundary_samples import BoundarySampled
from shapeqc.transforms.coordinates import grid_coords_to_voxel
from shapeqc.transforms.corruption import (
    RandBoundaryShiftd,
    RandPatchCorruptiond,
    RandPerlinCorruptiond,
    RandPlaneCutd,
    RandSliceDropd,
    ellipsoid_element,
    organ_box,
)
from shapeqc.transforms.grid_transforms import ToCanonicalGridd
from shapeqc.transforms.organ_loading import LoadOrganMaskd
from shapeqc.transforms.packing import PackGridd, UnpackGridd
from shapeqc.transforms.reslice import RandAcquisitionResliced


@pytest.fixture(scope="module")
def clean_grid(adrenal_val_masks) -> np.ndarray:
    grid = np.zeros((1, 96, 96, 96), np.uint8)
    grid[0, 16:80, 16:80, 16:80] = adrenal_val_masks[4]
    return grid


def _outside(box, shape):
    mask = np.ones(shape, bool)
    mask[box] = False
    return mask


@pytest.mark.parametrize("add, remove", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_perlin_corruption_is_seeded_and_stays_near_the_organ(clean_grid, add, remove):
    transform = RandPerlinCorruptiond("clean", output_keys="input", add_prob=add, remove_prob=remove)
    transform.set_random_state(3)
    first = transform({"clean": clean_grid})
    transform.set_random_state(3)
    again = transform({"clean": clean_grid})
    np.testing.assert_array_equal(first["input"], again["input"])
    np.testing.assert_array_equal(first["clean"], clean_grid)  # the clean copy is untouched
    changed = first["input"][0] != clean_grid[0]
    assert changed.any()
    added = first["input"][0] > clean_grid[0]
    removed = first["input"][0] < clean_grid[0]
    assert not added[_outside(organ_box(clean_grid[0], 10), clean_grid[0].shape)].any()
    assert not removed[_outside(organ_box(clean_grid[0], 2), clean_grid[0].shape)].any()
    assert added.any() == bool(add) and removed.any() == bool(remove)


def test_perlin_corruption_differs_between_calls(clean_grid):
    transform = RandPerlinCorruptiond("clean", output_keys="input", add_prob=1.0, remove_prob=1.0)
    transform.set_random_state(0)
    a = transform({"clean": clean_grid})["input"]
    b = transform({"clean": clean_grid})["input"]
    assert not np.array_equal(a, b)


def test_patch_corruption_changes_one_cube_inside_the_box(clean_grid):
    transform = RandPatchCorruptiond("input", prob=1.0, size_range=(0.3, 0.3))
    transform.set_random_state(5)
    out = transform({"input": clean_grid.copy()})["input"][0]
    changed = np.argwhere(out != clean_grid[0])
    assert len(changed) > 0
    box = organ_box(clean_grid[0])
    lower, upper = changed.min(axis=0), changed.max(axis=0)
    assert all(b.start <= lo and hi < b.stop for b, lo, hi in zip(box, lower, upper, strict=True))
    side = round(0.3 * min(b.stop - b.start for b in box))
    assert np.all(upper - lower < side)
    assert (out[tuple(changed.T)] == out[tuple(changed[0])]).all()  # all filled or all emptied


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.35])
def test_plane_cut_removes_the_drawn_fraction_behind_one_plane(clean_grid, fraction):
    organ = clean_grid[0]
    cut = RandPlaneCutd("mask", prob=1.0, fraction_range=(fraction, fraction))
    cut.set_random_state(7)
    out = cut({"mask": organ[None].copy()})["mask"][0]
    removed = organ.astype(bool) & ~out.astype(bool)
    assert not (out.astype(bool) & ~organ.astype(bool)).any()  # nothing added
    assert removed.sum() / organ.sum() == pytest.approx(fraction, abs=0.03)
    # removed and kept voxels lie on either side of one plane: w.x + b >= 1 on one side, <= -1 on the other
    from scipy.optimize import linprog

    removed_points, kept_points = np.argwhere(removed), np.argwhere(out)
    constraints = np.r_[-np.c_[removed_points, np.ones(len(removed_points))],
                        np.c_[kept_points, np.ones(len(kept_points))]]
    plane = linprog(np.zeros(4), A_ub=constraints, b_ub=-np.ones(len(constraints)), bounds=[(None, None)] * 4)
    assert plane.status == 0  # feasible: a flat cut face
    again = RandPlaneCutd("mask", prob=1.0, fraction_range=(fraction, fraction))
    again.set_random_state(7)
    np.testing.assert_array_equal(again({"mask": organ[None].copy()})["mask"][0], out)


@pytest.mark.parametrize("count", [1, 3])
def test_slice_drop_empties_that_many_slices_in_the_organs_middle(clean_grid, count):
    organ = clean_grid[0]
    drop = RandSliceDropd("mask", prob=1.0, slices_range=(count, count), seed_key="case_id")
    out = drop({"mask": organ[None].copy(), "case_id": "c1"})["mask"][0]
    emptied = np.flatnonzero(organ.any(axis=(0, 1)) & ~out.any(axis=(0, 1)))
    assert len(emptied) == count and np.all(np.diff(emptied) == 1)
    occupied = np.flatnonzero(organ.any(axis=(0, 1)))
    assert occupied[0] < emptied[0] and emptied[-1] < occupied[-1]  # inside the organ, not at its ends
    np.testing.assert_array_equal(out[..., emptied[0] - 1], organ[..., emptied[0] - 1])
    again = drop({"mask": organ[None].copy(), "case_id": "c1"})["mask"][0]
    np.testing.assert_array_equal(again, out)  # seeded by the case id


@pytest.mark.parametrize("radii, shape, count", [((1.0, 1.0, 1.0), (3, 3, 3), 7), ((0.5, 0.5, 2.0), (1, 1, 5), 5),
                                                  ((1.5, 1.5, 1.5), (3, 3, 3), 19), ((2.0, 0.5, 0.5), (5, 1, 1), 5)])
def test_ellipsoid_element(radii, shape, count):
    element = ellipsoid_element(radii)
    assert element.shape == shape and int(element.sum()) == count
    assert element[tuple(n // 2 for n in shape)]


@pytest.mark.parametrize("erode_fraction, scipy_op", [(0.0, "binary_dilation"), (1.0, "binary_erosion")])
def test_boundary_shift_by_one_voxel_is_scipys_six_connected_dilation_or_erosion(clean_grid, erode_fraction,
                                                                                 scipy_op):
    from scipy import ndimage

    organ = clean_grid[0] > 0
    shift = RandBoundaryShiftd("mask", prob=1.0, radius_range=(1.0, 1.0), erode_fraction=erode_fraction)
    out = shift({"mask": clean_grid.copy()})["mask"]
    assert out.dtype == clean_grid.dtype and out.shape == clean_grid.shape
    np.testing.assert_array_equal(out[0] > 0, getattr(ndimage, scipy_op)(organ))


def test_boundary_shift_is_anisotropic_seeded_and_always_changes_the_grid(clean_grid):
    from scipy import ndimage

    organ = clean_grid[0] > 0
    shift = RandBoundaryShiftd("mask", prob=1.0, radius_range=(0.5, 2.5), erode_fraction=0.0, seed_key="case_id")
    radii_seen = []
    for case in ("a", "b", "c", "d", "e"):
        out = shift({"mask": clean_grid.copy(), "case_id": case})["mask"][0] > 0
        radii_seen.append(shift.radii)
        assert max(shift.radii) >= 1.0
        np.testing.assert_array_equal(out, ndimage.binary_dilation(organ, ellipsoid_element(shift.radii)))
        assert out.sum() > organ.sum() and not (organ & ~out).any()
        again = shift({"mask": clean_grid.copy(), "case_id": case})["mask"][0] > 0
        np.testing.assert_array_equal(again, out)  # seeded by the case id
    assert len(set(radii_seen)) == 5 and any(max(r) - min(r) > 0.5 for r in radii_seen)


def test_boundary_shift_keeps_a_thin_organ_that_erosion_would_wipe_out():
    slab = np.zeros((1, 32, 32, 32), np.uint8)
    slab[0, 8:24, 8:24, 15:17] = 1  # two voxels thick along axis 2
    shift = RandBoundaryShiftd("mask", prob=1.0, radius_range=(1.0, 1.0), erode_fraction=1.0)
    np.testing.assert_array_equal(shift({"mask": slab.copy()})["mask"], slab)
    with pytest.raises(ValueError, match="never reaches 1 voxel"):
        RandBoundaryShiftd("mask", radius_range=(0.2, 0.9))


def test_acquisition_reslice_at_the_grid_spacing_without_tilt_is_exact(clean_grid):
    identity = RandAcquisitionResliced("mask", prob=1.0, in_plane_spacing=(1.0, 1.0), slice_spacing=(1.0, 1.0),
                                       max_tilt_deg=0.0)
    np.testing.assert_array_equal(identity({"mask": clean_grid.copy()})["mask"], clean_grid)


def test_acquisition_reslice_gives_thick_slices_a_staircase(clean_grid):
    organ = clean_grid[0] > 0
    thick = RandAcquisitionResliced("mask", prob=1.0, in_plane_spacing=(1.0, 1.0), slice_spacing=(3.0, 3.0),
                                    max_tilt_deg=0.0)
    out = thick({"mask": clean_grid.copy()})["mask"][0] > 0
    extent = np.flatnonzero(organ.any(axis=(0, 1)))
    # cross-sections change only between acquisition slices, 3 grid slices apart: one step per slice at most
    steps = int(sum((out[..., k] != out[..., k + 1]).any() for k in range(out.shape[2] - 1)))
    assert steps <= (extent[-1] - extent[0] + 1) // 3 + 3
    assert int(sum((organ[..., k] != organ[..., k + 1]).any() for k in range(organ.shape[2] - 1))) > steps + 5
    # the same organ, seen coarser along z only
    dice = 2 * (out & organ).sum() / (out.sum() + organ.sum())
    assert 0.8 < dice < 1.0
    assert abs(int(out.sum()) - int(organ.sum())) < 0.1 * organ.sum()


def test_acquisition_reslice_is_seeded_and_keeps_the_input_type(clean_grid):
    reslice = RandAcquisitionResliced("mask", prob=1.0, seed_key="case_id")
    first = reslice({"mask": torch.as_tensor(clean_grid), "case_id": "c1"})["mask"]
    assert isinstance(first, torch.Tensor) and first.dtype == torch.uint8 and first.shape == clean_grid.shape
    again = reslice({"mask": torch.as_tensor(clean_grid), "case_id": "c1"})["mask"]
    other = reslice({"mask": torch.as_tensor(clean_grid), "case_id": "c2"})["mask"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    never = RandAcquisitionResliced("mask", prob=0.0)
    assert never({"mask": clean_grid})["mask"] is clean_grid


@pytest.mark.parametrize("min_kept_fraction, kept", [(0.0, False), (2.0, True)])
def test_acquisition_reslice_keeps_the_input_when_too_little_survives(clean_grid, min_kept_fraction, kept):
    """An organ broken by very thick slices (fewer voxels than ``min_kept_fraction`` of the input) stays as it was;
    2.0 makes every re-slice count as broken, 0.0 none."""
    thick = RandAcquisitionResliced("mask", prob=1.0, slice_spacing=(3.0, 3.0), min_kept_fraction=min_kept_fraction)
    thick.set_random_state(3)
    out = thick({"mask": clean_grid})["mask"]
    assert np.array_equal(out, clean_grid) == kept


def test_boundary_sampled_gives_network_coordinates_and_targets(clean_grid):
    transform = BoundarySampled("clean", num_points=5000)
    transform.set_random_state(1)
    out = transform({"clean": clean_grid})
    assert out["points"].shape == (5000, 3) and out["points"].dtype == np.float32
    assert out["occupancy"].dtype == np.float32 and set(np.unique(out["occupancy"])) == {0.0, 1.0}
    assert np.all(np.abs(out["points"]) <= 1.5)
    voxels = np.floor(grid_coords_to_voxel(out["points"], (96, 96, 96))).astype(int)
    inside = np.all((voxels >= 0) & (voxels < 96), axis=1)
    looked_up = clean_grid[0][tuple(voxels[inside].T)]
    near = np.any(np.abs(grid_coords_to_voxel(out["points"], (96,) * 3) % 1) < 1e-3, axis=1)[inside]
    np.testing.assert_array_equal(looked_up[~near], out["occupancy"][inside][~near])
    transform.set_random_state(1)
    np.testing.assert_array_equal(transform({"clean": clean_grid})["points"], out["points"])


def test_training_pipeline_in_cache_dataset_with_two_workers(adrenal_npz):
    items = list(adrenalmnist3d_items(adrenal_npz, arrays=("val_images",)))[:4]
    pipeline = Compose([
        LoadOrganMaskd("mask"),
        ToCanonicalGridd("mask", spacing_mm=1.0, grid_size=64, margin=4),
        PackGridd("mask"),
        UnpackGridd("mask"),
        RandAcquisitionResliced("mask", prob=0.5),  # a batch mixes re-sliced and untouched items
        CopyItemsd("mask", names="input"),
        RandPerlinCorruptiond("input", add_prob=1.0, remove_prob=1.0),
        RandPatchCorruptiond("input", prob=0.5),
        BoundarySampled("mask", num_points=2048),
    ]).set_random_state(0)
    dataset = CacheDataset(items, transform=pipeline, cache_rate=1.0, num_workers=2, progress=False)
    batch = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
    assert tuple(batch["input"].shape) == (4, 1, 64, 64, 64)
    assert tuple(batch["points"].shape) == (4, 2048, 3)
    assert tuple(batch["occupancy"].shape) == (4, 2048)
    assert isinstance(batch["points"], torch.Tensor)
    assert (batch["input"] != batch["mask"]).any()
