"""cuda_kernels: the CPU implementations against oracles, and the .cu sources run on the host against them."""

from __future__ import annotations

import ctypes

import noise
import numpy as np
import pytest
import torch
from scipy import stats

from shapeqc.cuda_kernels import gpu_available, perlin3d, sample_boundary
from shapeqc.cuda_kernels.boundary_sampling import (
    boundary_face_keys,
    mixture_thresholds,
    philox4x32_10,
    sample_boundary_cpu,
    voxel_occupancy,
)
from shapeqc.cuda_kernels.host_build import CUDA_SOURCES, check_nvcc, load_host_kernel
from shapeqc.cuda_kernels.perlin import perlin3d_cpu
from shapeqc.transforms.coordinates import voxel_to_grid_coords

gpu = pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU with CuPy")

PERLIN_SETTINGS = [
    {},
    {"octaves": 3},
    {"octaves": 4, "persistence": 0.7, "lacunarity": 2.3},
    {"repeatx": 8, "repeaty": 16, "repeatz": 4},
    {"base": 1},
    {"octaves": 2, "repeatx": 5, "repeaty": 7, "repeatz": 9, "base": 1},
]


@pytest.fixture(scope="module")
def random_points() -> np.ndarray:
    return (np.random.default_rng(0).random((10_000, 3)) * 40 - 20).astype(np.float32)


@pytest.fixture(scope="module")
def organ_grid(adrenal_val_masks) -> np.ndarray:
    grid = np.zeros((96, 96, 96), np.uint8)
    grid[16:80, 16:80, 16:80] = adrenal_val_masks[0]
    return grid


@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_every_kernel_compiles_with_nvcc(source):
    ptx = check_nvcc(source)
    assert ".entry" in ptx


@pytest.mark.parametrize("settings", PERLIN_SETTINGS)
def test_perlin_cpu_equals_noise_pnoise3(random_points, settings):
    expected = np.array([noise.pnoise3(float(x), float(y), float(z), **settings) for x, y, z in random_points])
    actual = perlin3d(random_points[:, 0], random_points[:, 1], random_points[:, 2], **settings)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_perlin_on_a_lattice_equals_pointwise_and_takes_torch():
    axes = [np.linspace(o, o + 3, n, dtype=np.float32) for o, n in ((0.3, 7), (5.1, 9), (11.7, 5))]
    lattice = perlin3d_cpu(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :], octaves=2)
    mesh = np.meshgrid(*axes, indexing="ij")
    np.testing.assert_array_equal(lattice, perlin3d_cpu(*mesh, octaves=2))
    as_torch = perlin3d(*(torch.from_numpy(m) for m in mesh), octaves=2)
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_array_equal(as_torch.numpy(), lattice)


def _host_perlin(x, y, z, octaves=1, persistence=0.5, lacunarity=2.0, repeatx=1024, repeaty=1024, repeatz=1024,
                 base=0):
    kernel = load_host_kernel("perlin.cu").perlin3d_kernel
    floats = ctypes.POINTER(ctypes.c_float)
    kernel.argtypes = [floats] * 4 + [ctypes.c_longlong, ctypes.c_int, ctypes.c_float, ctypes.c_float] + \
        [ctypes.c_int] * 4
    x, y, z = (np.ascontiguousarray(v, dtype=np.float32) for v in (x, y, z))
    out = np.empty_like(x)
    kernel(*(a.ctypes.data_as(floats) for a in (x, y, z, out)), x.size, octaves, persistence, lacunarity,
           repeatx, repeaty, repeatz, base)
    return out


@pytest.mark.parametrize("settings", PERLIN_SETTINGS)
def test_perlin_kernel_source_on_host_equals_cpu(random_points, settings):
    x, y, z = random_points.T
    np.testing.assert_array_equal(_host_perlin(x, y, z, **settings), perlin3d_cpu(x, y, z, **settings))


def test_philox_known_answers():
    # Random123 known-answer vectors for philox4x32-10
    zero = philox4x32_10(np.zeros((1, 4), np.uint32), 0)[0]
    ones = philox4x32_10(np.full((1, 4), 0xFFFFFFFF, np.uint32), 0xFFFFFFFFFFFFFFFF)[0]
    assert [hex(v) for v in zero] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]
    assert [hex(v) for v in ones] == ["0x408f276d", "0x41c83b0e", "0xa20bc7c6", "0x6d5451fd"]


def test_occupancy_equals_an_independent_lookup(organ_grid):
    points, occupancy = sample_boundary(organ_grid, 50_000, [0.1, 0.01], seed=7, uniform_fraction=0.1)
    assert points.dtype == np.float32 and occupancy.dtype == bool
    # independent: torch grid_sample, nearest, in the network's [-1, 1] coordinates (x, y, z = W, H, D)
    coords = torch.from_numpy(voxel_to_grid_coords(points, organ_grid.shape)).flip(-1)
    looked_up = torch.nn.functional.grid_sample(
        torch.from_numpy(organ_grid).float()[None, None], coords[None, None, None], mode="nearest",
        padding_mode="zeros", align_corners=False)[0, 0, 0, 0].numpy() > 0.5
    on_face = np.any(np.abs(points - np.round(points)) < 1e-4, axis=1)  # nearest is ambiguous exactly on faces
    assert on_face.mean() < 0.001
    np.testing.assert_array_equal(occupancy[~on_face], looked_up[~on_face])
    assert 0.2 < occupancy.mean() < 0.8


def test_sigma_zero_points_lie_on_boundary_faces(organ_grid):
    points, _ = sample_boundary(organ_grid, 20_000, 0.0, seed=1)
    integral = np.abs(points - np.round(points)) == 0
    assert np.all(integral.sum(axis=1) >= 1)
    # index + u can round up to the next integer in float32 (u < 1 has 24 bits): a point on a face's edge
    single = integral.sum(axis=1) == 1
    assert single.mean() > 0.999
    points, integral = points[single], integral[single]
    axis = np.argmax(integral, axis=1)
    rows = np.arange(len(points))
    before, after = points.copy(), points.copy()
    before[rows, axis] -= 0.5
    after[rows, axis] += 0.5
    inside_before = voxel_occupancy(organ_grid, before)
    inside_after = voxel_occupancy(organ_grid, after)
    assert np.all(inside_before != inside_after)  # one side occupied, the other empty


def test_offsets_are_gaussian_with_the_requested_sigma(organ_grid):
    sigma = 0.05  # of the grid width: 4.8 voxels on a 96 grid
    on_surface, _ = sample_boundary(organ_grid, 40_000, 0.0, seed=11)
    offset_points, _ = sample_boundary(organ_grid, 40_000, sigma, seed=11)
    offsets = (offset_points - on_surface).astype(np.float64).reshape(-1) / (sigma * 96)
    assert abs(offsets.mean()) < 0.02
    assert abs(offsets.std() - 1.0) < 0.02
    assert stats.kstest(offsets, "norm").pvalue > 0.01


def test_faces_are_sampled_uniformly_by_area():
    grid = np.zeros((8, 8, 8), np.uint8)
    grid[2:6, 2:4, 2:3] = 1  # faces per direction: x 2*8, y 2*4... unequal areas per direction
    keys = boundary_face_keys(grid)
    points, _ = sample_boundary(grid, 60_000, 0.0, seed=5)
    integral = np.abs(points - np.round(points)) == 0
    axis_counts = np.bincount(np.argmax(integral, axis=1), minlength=3)
    faces_per_axis = np.bincount((keys % 6) // 2, minlength=3)
    expected = faces_per_axis / faces_per_axis.sum() * len(points)
    assert stats.chisquare(axis_counts, expected).pvalue > 0.01


def test_same_seed_same_points_other_seed_other_points(organ_grid):
    a = sample_boundary(organ_grid, 1000, [0.1, 0.01], seed=3)
    b = sample_boundary(organ_grid, 1000, [0.1, 0.01], seed=3)
    c = sample_boundary(organ_grid, 1000, [0.1, 0.01], seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    # counter-based: the first points do not depend on how many are drawn
    np.testing.assert_array_equal(sample_boundary(organ_grid, 10, [0.1, 0.01], seed=3)[0], a[0][:10])


def _host_boundary(grid, n, sigmas, seed, weights, uniform_fraction):
    kernel = load_host_kernel("boundary_sampling.cu").boundary_sampling_kernel
    p = ctypes.c_void_p
    kernel.argtypes = [p, p, ctypes.c_longlong, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_longlong,
                       ctypes.c_uint, ctypes.c_uint, p, p, ctypes.c_int, ctypes.c_float, p, p]
    grid = np.ascontiguousarray(grid, dtype=np.uint8)
    keys = boundary_face_keys(grid)
    sigmas_voxels = (np.asarray(sigmas, np.float64) * max(grid.shape)).astype(np.float32)
    thresholds = mixture_thresholds(weights, uniform_fraction)
    points = np.zeros((n, 3), np.float32)
    occupancy = np.zeros(n, np.uint8)
    kernel(grid.ctypes.data, keys.ctypes.data, keys.size, *grid.shape, n, seed & 0xFFFFFFFF, seed >> 32,
           sigmas_voxels.ctypes.data, thresholds.ctypes.data, len(sigmas_voxels), uniform_fraction,
           points.ctypes.data, occupancy.ctypes.data)
    return points, occupancy.astype(bool)


def _border_grid():
    grid = np.zeros((20, 24, 16), np.uint8)
    grid[0:6, 10:24, 3:9] = 1
    return grid


def _single_voxel_grid():
    grid = np.zeros((5, 5, 5), np.uint8)
    grid[2, 2, 2] = 1
    return grid


@pytest.mark.parametrize("case", ["organ", "border", "single_voxel"])
@pytest.mark.parametrize("sigmas, weights, uniform_fraction", [([0.1, 0.01], [0.5, 0.5], 0.0),
                                                               ([0.02], [1.0], 0.2), ([0.0], [1.0], 0.0)])
def test_boundary_kernel_source_on_host_equals_cpu(organ_grid, case, sigmas, weights, uniform_fraction):
    grid = {"organ": organ_grid, "border": _border_grid(), "single_voxel": _single_voxel_grid()}[case]
    seed = 0x1234_5678_9ABC
    host_points, host_occupancy = _host_boundary(grid, 20_000, sigmas, seed, weights, uniform_fraction)
    cpu_points, cpu_occupancy = sample_boundary_cpu(grid, 20_000, sigmas, seed=seed, weights=weights,
                                                    uniform_fraction=uniform_fraction)
    # identical draws; log/sin/cos may differ by an ulp between libm and numpy's float32 routines
    np.testing.assert_allclose(host_points, cpu_points, rtol=0, atol=2e-5)
    near_face = np.any(np.abs(cpu_points - np.round(cpu_points)) < 2e-5, axis=1)
    np.testing.assert_array_equal(host_occupancy[~near_face], cpu_occupancy[~near_face])
    np.testing.assert_array_equal(voxel_occupancy(grid, host_points), host_occupancy)


def test_empty_grid_is_rejected():
    with pytest.raises(ValueError, match="no occupied voxel"):
        sample_boundary(np.zeros((4, 4, 4), np.uint8), 10, 0.1)


@gpu
@pytest.mark.gpu
def test_perlin_cuda_equals_cpu(random_points):
    import cupy

    x, y, z = (cupy.asarray(c) for c in random_points.T)
    for settings in PERLIN_SETTINGS:
        np.testing.assert_array_equal(cupy.asnumpy(perlin3d(x, y, z, **settings)),
                                      perlin3d_cpu(*random_points.T, **settings))


@gpu
@pytest.mark.gpu
def test_boundary_sampling_cuda_equals_cpu(organ_grid):
    grid = torch.from_numpy(organ_grid).cuda()
    points, occupancy = sample_boundary(grid, 100_000, [0.1, 0.01], seed=9, uniform_fraction=0.1)
    assert points.is_cuda and occupancy.is_cuda
    cpu_points, cpu_occupancy = sample_boundary_cpu(organ_grid, 100_000, [0.1, 0.01], seed=9, uniform_fraction=0.1)
    np.testing.assert_allclose(points.cpu().numpy(), cpu_points, rtol=0, atol=2e-5)
    near_face = np.any(np.abs(cpu_points - np.round(cpu_points)) < 2e-5, axis=1)
    np.testing.assert_array_equal(occupancy.cpu().numpy()[~near_face], cpu_occupancy[~near_face])
