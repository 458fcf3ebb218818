"""Solid voxelization of a triangle mesh: a voxel is inside when its centre is inside the mesh.

Ray parity along array axis 2 through every column of voxel centres, with exact tie-breaking (simulation of
simplicity) for rays through vertices and edges; see ``voxelize.cu`` for the method. The CPU implementation
below evaluates the same double-precision edge functions with the same rules, so both give identical grids.

Meshes must be watertight (closed, every edge shared by two faces) for the result to mean "inside". On a mesh
with holes, a column whose ray passes through a hole sees an odd number of crossings: from the missed
crossing onwards its voxels are inverted (a streak along axis 2). Nothing is repaired.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shapeqc.cuda_kernels import backend


def _edge_function(ax, ay, bx, by, px, py):
    """Antisymmetric (bit for bit) 2D edge function, vectorized."""
    ordered = (ax < bx) | ((ax == bx) & (ay < by))
    forward = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    backward = -((ax - bx) * (py - by) - (ay - by) * (px - bx))
    return np.where(ordered, forward, backward)


def _left_of_edge(e, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    return np.where(e != 0.0, e > 0.0, (dy < 0.0) | ((dy == 0.0) & (dx > 0.0)))


def voxelize_toggles_cpu(vertices: np.ndarray, faces: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(D, H, W + 1) int32 crossing counts: the first pass of the method, vectorized over (triangle, column)."""
    D, H, W = shape
    v = np.asarray(vertices, dtype=np.float32).astype(np.float64)[np.asarray(faces, dtype=np.int64)]  # (F, 3, 3)
    area = _edge_function(v[:, 0, 0], v[:, 0, 1], v[:, 1, 0], v[:, 1, 1], v[:, 2, 0], v[:, 2, 1])
    keep = area != 0.0
    v, area = v[keep], area[keep]
    flip = area < 0.0
    v[flip] = v[flip][:, [0, 2, 1]]
    area = np.abs(area)

    i0 = np.maximum(0, np.ceil(v[:, :, 0].min(axis=1) - 0.5)).astype(np.int64)
    i1 = np.minimum(D - 1, np.floor(v[:, :, 0].max(axis=1) - 0.5)).astype(np.int64)
    j0 = np.maximum(0, np.ceil(v[:, :, 1].min(axis=1) - 0.5)).astype(np.int64)
    j1 = np.minimum(H - 1, np.floor(v[:, :, 1].max(axis=1) - 0.5)).astype(np.int64)
    ni, nj = np.maximum(i1 - i0 + 1, 0), np.maximum(j1 - j0 + 1, 0)
    counts = ni * nj
    toggles = np.zeros((D, H, W + 1), dtype=np.int32)
    if counts.sum() == 0:
        return toggles
    tri = np.repeat(np.arange(len(v)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    i = i0[tri] + offset // nj[tri]
    j = j0[tri] + offset % nj[tri]
    px, py = i + 0.5, j + 0.5
    t = v[tri]
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    e0 = _edge_function(b[:, 0], b[:, 1], c[:, 0], c[:, 1], px, py)
    e1 = _edge_function(c[:, 0], c[:, 1], a[:, 0], a[:, 1], px, py)
    e2 = _edge_function(a[:, 0], a[:, 1], b[:, 0], b[:, 1], px, py)
    hit = (_left_of_edge(e0, b[:, 0], b[:, 1], c[:, 0], c[:, 1])
           & _left_of_edge(e1, c[:, 0], c[:, 1], a[:, 0], a[:, 1])
           & _left_of_edge(e2, a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
    z = (e0 * a[:, 2] + e1 * b[:, 2] + e2 * c[:, 2])[hit] / area[tri[hit]]
    first = np.clip(np.floor(z - 0.5) + 1.0, 0, W).astype(np.int64)
    np.add.at(toggles, (i[hit], j[hit], first), 1)
    return toggles


def voxelize_mesh_cpu(vertices: np.ndarray, faces: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """CPU implementation of :func:`voxelize_mesh`."""
    toggles = voxelize_toggles_cpu(vertices, faces, shape)
    return (np.cumsum(toggles[:, :, :-1] & 1, axis=2) & 1).astype(bool)


def _voxelize_mesh_cuda(vertices, faces, shape):
    cupy = backend.cupy_module()
    vertices = cupy.ascontiguousarray(backend.to_cupy(vertices), dtype=cupy.float32)
    faces = cupy.ascontiguousarray(backend.to_cupy(faces), dtype=cupy.int64)
    D, H, W = (int(s) for s in shape)
    toggles = cupy.zeros((D, H, W + 1), dtype=cupy.int32)
    inside = cupy.empty((D, H, W), dtype=cupy.uint8)
    module = backend.raw_module("voxelize.cu")
    threads = 256
    n_faces = faces.shape[0]
    module.get_function("voxelize_toggle_kernel")(
        (min(max(1, (n_faces + threads - 1) // threads), 65535),), (threads,),
        (vertices, faces, np.int64(n_faces), np.int32(D), np.int32(H), np.int32(W), toggles))
    module.get_function("voxelize_parity_kernel")(
        (min(max(1, (D * H + threads - 1) // threads), 65535),), (threads,),
        (toggles, np.int32(D), np.int32(H), np.int32(W), inside))
    return inside.astype(bool)


def voxelize_mesh(vertices: Any, faces: Any, shape: tuple[int, int, int]) -> Any:
    """Solid voxelization of a watertight triangle mesh into a (D, H, W) bool grid.

    Args:
        vertices: (V, 3) float, continuous voxel coordinates in array axis order (voxel (i, j, k) spans
            [i, i+1) x [j, j+1) x [k, k+1); its centre is at (i + 0.5, j + 0.5, k + 0.5)).
        faces: (F, 3) int vertex indices.
        shape: (D, H, W) of the output grid.
    Returns:
        (D, H, W) bool: True where the voxel centre is inside the mesh, of the inputs' kind.
    """
    if backend.is_device_array(vertices):
        result = _voxelize_mesh_cuda(vertices, faces, shape)
    else:
        result = voxelize_mesh_cpu(backend.to_numpy(vertices), backend.to_numpy(faces), shape)
    return backend.like(result, vertices)
