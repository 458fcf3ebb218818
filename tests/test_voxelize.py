"""Mesh voxelization: exact on marching-cubes meshes of real masks, the .cu source on the host equals the CPU
implementation, and trimesh agrees."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
import trimesh
from skimage.measure import marching_cubes

from shapeqc.cuda_kernels import gpu_available, voxelize_mesh
from shapeqc.cuda_kernels.host_build import load_host_kernel
from shapeqc.cuda_kernels.voxelize import voxelize_mesh_cpu, voxelize_toggles_cpu


def mc_mesh(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes at 0.5 of a mask (padded, so organs at the border stay closed), in continuous voxel
    coordinates: vertices then sit on the lines through voxel centres, the degenerate case for ray parity."""
    vertices, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5)
    return (vertices - 1 + 0.5).astype(np.float32), faces.astype(np.int64)


def _placed(mask: np.ndarray, size: int = 96) -> np.ndarray:
    grid = np.zeros((size,) * 3, bool)
    offset = (size - 64) // 2
    grid[offset:offset + 64, offset:offset + 64, offset:offset + 64] = mask
    return grid


def _border_grid():
    grid = np.zeros((20, 24, 16), bool)
    grid[0:6, 10:24, 3:9] = True
    grid[4:12, 12:16, 0:16] = True
    return grid


def _single_voxel_grid():
    grid = np.zeros((5, 5, 5), bool)
    grid[2, 2, 2] = True
    return grid


@pytest.mark.parametrize("index", range(12))
def test_marching_cubes_mesh_voxelizes_back_to_the_real_mask(adrenal_val_masks, index):
    grid = _placed(adrenal_val_masks[index])
    vertices, faces = mc_mesh(grid)
    np.testing.assert_array_equal(voxelize_mesh(vertices, faces, grid.shape), grid)


@pytest.mark.parametrize("make", [_border_grid, _single_voxel_grid])
def test_organ_at_the_border_and_single_voxel(make):
    grid = make()
    vertices, faces = mc_mesh(grid)
    np.testing.assert_array_equal(voxelize_mesh_cpu(vertices, faces, grid.shape), grid)


def _host_toggles(vertices, faces, shape):
    library = load_host_kernel("voxelize.cu")
    p = ctypes.c_void_p
    library.voxelize_toggle_kernel.argtypes = [p, p, ctypes.c_longlong, ctypes.c_int, ctypes.c_int, ctypes.c_int, p]
    library.voxelize_parity_kernel.argtypes = [p, ctypes.c_int, ctypes.c_int, ctypes.c_int, p]
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    toggles = np.zeros((shape[0], shape[1], shape[2] + 1), np.int32)
    inside = np.zeros(shape, np.uint8)
    library.voxelize_toggle_kernel(vertices.ctypes.data, faces.ctypes.data, len(faces), *shape, toggles.ctypes.data)
    library.voxelize_parity_kernel(toggles.ctypes.data, *shape, inside.ctypes.data)
    return toggles, inside.astype(bool)


@pytest.mark.parametrize("case", ["real_0", "real_5", "border", "single_voxel", "sphere"])
def test_kernel_source_on_host_equals_cpu(adrenal_val_masks, case):
    if case.startswith("real"):
        grid = _placed(adrenal_val_masks[int(case.split("_")[1])])
        vertices, faces = mc_mesh(grid)
    elif case == "sphere":
        grid = np.zeros((40, 40, 40), bool)
        sphere = trimesh.creation.icosphere(subdivisions=3, radius=13.3)
        vertices, faces = (sphere.vertices + 20.1).astype(np.float32), sphere.faces.astype(np.int64)
    else:
        grid = _border_grid() if case == "border" else _single_voxel_grid()
        vertices, faces = mc_mesh(grid)
    host_toggles, host_inside = _host_toggles(vertices, faces, grid.shape)
    np.testing.assert_array_equal(host_toggles, voxelize_toggles_cpu(vertices, faces, grid.shape))
    np.testing.assert_array_equal(host_inside, voxelize_mesh_cpu(vertices, faces, grid.shape))


def test_agrees_with_trimesh_contains(adrenal_val_masks):
    """trimesh (ray tests with rtree) as the independent reference, on voxel centres near real organ surfaces."""
    disagreements = 0
    for index in (0, 3):
        grid = _placed(adrenal_val_masks[index])
        vertices, faces = mc_mesh(grid)
        ours = voxelize_mesh(vertices, faces, grid.shape)
        lower, upper = np.argwhere(grid).min(axis=0) - 3, np.argwhere(grid).max(axis=0) + 4
        box = np.argwhere(np.ones(upper - lower, bool)) + lower
        chosen = box[np.random.default_rng(index).choice(len(box), 3000, replace=False)]
        reference = trimesh.Trimesh(vertices, faces).contains(chosen + 0.5 + 1e-4)
        disagreements += int((reference != ours[tuple(chosen.T)]).sum())
    assert disagreements == 0


def test_sphere_matches_the_analytic_inside_away_from_the_surface():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=15.0)
    vertices = (sphere.vertices + 20.0).astype(np.float32)
    grid = voxelize_mesh(vertices, sphere.faces, (40, 40, 40))
    centres = np.argwhere(np.ones((40, 40, 40), bool)) + 0.5
    radius = np.linalg.norm(centres - 20.0, axis=1).reshape(40, 40, 40)
    assert grid[radius < 14.8].all() and not grid[radius > 15.0].any()


def test_open_mesh_gives_streaks_only_in_columns_through_the_hole(adrenal_val_masks):
    grid = _placed(adrenal_val_masks[1])
    vertices, faces = mc_mesh(grid)
    holed = voxelize_mesh(vertices, faces[1:], grid.shape)
    wrong_columns = {tuple(c) for c in np.argwhere(holed != grid)[:, :2]}
    removed = vertices[faces[0]]
    assert len(wrong_columns) <= 2
    for i, j in wrong_columns:  # the missing triangle covers the column's ray
        assert removed[:, 0].min() <= i + 0.5 <= removed[:, 0].max()
        assert removed[:, 1].min() <= j + 0.5 <= removed[:, 1].max()


def test_torch_inputs_come_back_as_torch(adrenal_val_masks):
    grid = _placed(adrenal_val_masks[2])
    vertices, faces = mc_mesh(grid)
    out = voxelize_mesh(torch.from_numpy(vertices), torch.from_numpy(faces), grid.shape)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), grid)


@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU with CuPy")
@pytest.mark.gpu
def test_voxelize_cuda_equals_cpu(adrenal_val_masks):
    grid = _placed(adrenal_val_masks[0])
    vertices, faces = mc_mesh(grid)
    out = voxelize_mesh(torch.from_numpy(vertices).cuda(), torch.from_numpy(faces).cuda(), grid.shape)
    np.testing.assert_array_equal(out.cpu().numpy(), grid)
