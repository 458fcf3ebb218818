"""Occupancy of a canonical grid from the network: :class:`CoarseToFineInferer`, the one reconstruction every path
runs, and :func:`grid_logits`, dense decoding of every voxel centre (the reference the tests hold it to)."""

from __future__ import annotations

import time
from typing import Any

import torch
from monai.inferers import Inferer

from shapeqc.transforms.corruption import organ_box

# logit written where the region of interest leaves voxels undecoded: firmly "empty"
OUTSIDE_LOGIT = -20.0


def voxel_centre_coords(shape: tuple[int, int, int], region: tuple[slice, slice, slice] | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 3) float32 grid coordinates in [-1, 1] (array axis order) of the voxel centres in ``region``."""
    region = region or tuple(slice(0, n) for n in shape)
    axes = [(2.0 * torch.arange(s.start, s.stop, device=device, dtype=torch.float32) + 1.0) / n - 1.0
            for s, n in zip(region, shape, strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def prepared_decoder(network: torch.nn.Module, features: list[torch.Tensor]):
    """(features, decode function) for inference: the network's fast prepared path when it has one
    (``IFNet.prepare_decoding`` / ``decode_prepared``), else its plain ``decode``."""
    if hasattr(network, "prepare_decoding"):
        return network.prepare_decoding(features), network.decode_prepared
    return features, network.decode


@torch.no_grad()
def grid_logits(network: torch.nn.Module, grid: torch.Tensor, margin: int | None = None,
                chunk_points: int = 32_768) -> torch.Tensor:
    """Occupancy logits (B, 1, R, R, R) at every voxel centre of the grids (B, 1, R, R, R).

    With ``margin``, only voxels within the input organ's box grown by ``margin`` voxels are decoded (the rest
    get :data:`OUTSIDE_LOGIT`); decoding runs in chunks of ``chunk_points`` so memory stays bounded.
    """
    features = network.encode(grid)
    batch, _, *shape = grid.shape
    out = torch.full((batch, 1, *shape), OUTSIDE_LOGIT, dtype=torch.float32, device=grid.device)
    for b in range(batch):
        region = None
        if margin is not None:
            region = organ_box((grid[b, 0] > 0.5).cpu().numpy(), margin)
            if region is None:
                continue
        coords = voxel_centre_coords(tuple(shape), region, grid.device)
        item_features, decode_points = prepared_decoder(network, [f[b:b + 1] for f in features])
        logits = torch.cat([decode_points(item_features, coords[start:start + chunk_points][None])[0]
                            for start in range(0, len(coords), chunk_points)])
        region = region or tuple(slice(0, n) for n in shape)
        out[b, 0][region] = logits.reshape([s.stop - s.start for s in region]).float()
    return out


def _upsample_lattice(coarse: torch.Tensor) -> torch.Tensor:
    """Multilinear 2x upsampling of a lattice (a, b, c) -> (2a - 1, 2b - 1, 2c - 1); old points stay put."""
    out = coarse
    for axis in range(3):
        n = out.shape[axis]
        shape = list(out.shape)
        shape[axis] = 2 * n - 1
        fine = out.new_empty(shape)
        even = [slice(None)] * 3
        even[axis] = slice(0, None, 2)
        odd = [slice(None)] * 3
        odd[axis] = slice(1, None, 2)
        fine[tuple(even)] = out
        fine[tuple(odd)] = 0.5 * (out.narrow(axis, 0, n - 1) + out.narrow(axis, 1, n - 1))
        out = fine
    return out


def _cells_to_points(cells: torch.Tensor) -> torch.Tensor:
    """(m, m, m) bool cells -> (m + 1, m + 1, m + 1) bool lattice points touching any flagged cell."""
    points = torch.zeros(tuple(s + 1 for s in cells.shape), dtype=torch.bool, device=cells.device)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                points[dx:dx + cells.shape[0], dy:dy + cells.shape[1], dz:dz + cells.shape[2]] |= cells
    return points


def default_margin(grid_size: int) -> int:
    """Voxels around the input organ's box that reconstruction decodes: an eighth of the grid (8 at R = 64,
    16 at R = 128), room for the prior to complete a cut organ; beyond it a reconstruction is empty."""
    return max(4, grid_size // 8)


@torch.no_grad()
def coarse_to_fine_logits(network: torch.nn.Module, grid: torch.Tensor, start_stride: int = 8,
                          certain_logit: float = 5.0, chunk_points: int = 32_768,
                          margin: int | None = None, timings: dict | None = None) -> tuple[torch.Tensor, int]:
    """Occupancy logits at every voxel centre of one grid (1, 1, R, R, R), decoding far fewer points.

    A lattice of every ``start_stride``-th voxel centre is decoded; each lattice cell whose 8 corners agree on
    the side of the 0.5 level with |logit| >= ``certain_logit`` (and whose neighbours agree too: cells are
    refined with a one-cell safety ring) is filled by interpolation; the others are halved and decoded again,
    down to single voxels. With ``margin``, only the input organ's box grown by ``margin`` voxels is decoded
    and the rest is :data:`OUTSIDE_LOGIT`, exactly as :func:`grid_logits` with the same margin.

    Returns (logits (R, R, R) float32, number of decoded points); the sign of the logits equals dense decoding
    wherever the network has no structure smaller than a lattice cell hidden inside confident cells (checked
    on real cases in the tests). Lattice points beyond the region are clamped onto its last voxel. With
    ``timings``, "encode" (with the decoding preparation) and "decode" seconds are stored in it.
    """
    started = time.perf_counter()
    if start_stride < 1 or start_stride & (start_stride - 1):
        raise ValueError("start_stride must be a power of two")
    size = grid.shape[-1]
    device = grid.device
    out = torch.full((size,) * 3, OUTSIDE_LOGIT, dtype=torch.float32, device=device)
    region = tuple(slice(0, size) for _ in range(3))
    if margin is not None:
        region = organ_box((grid[0, 0] > 0.5).cpu().numpy(), margin)
        if region is None:
            return out, 0
    features, decode_points = prepared_decoder(network, network.encode(grid))
    encoded = time.perf_counter()
    low = torch.tensor([s.start for s in region], device=device)
    high = torch.tensor([s.stop - 1 for s in region], device=device)
    extents = [-(-(s.stop - s.start - 1) // start_stride) * start_stride + 1 for s in region]

    def decode(indices: torch.Tensor) -> torch.Tensor:
        voxels = torch.minimum(indices + low, high)
        coords = (2.0 * voxels.float() + 1.0) / size - 1.0
        return torch.cat([decode_points(features, coords[start:start + chunk_points][None])[0].float()
                          for start in range(0, len(coords), chunk_points)])

    stride = start_stride
    axes = [torch.arange(0, extent, stride, device=device) for extent in extents]
    lattice_index = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    values = decode(lattice_index).reshape(*(len(a) for a in axes))
    decoded = len(lattice_index)
    while stride > 1:
        corners = torch.stack([values[dx:values.shape[0] - 1 + dx, dy:values.shape[1] - 1 + dy,
                                      dz:values.shape[2] - 1 + dz]
                               for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)])
        uncertain = (corners.min(0).values < certain_logit) & (corners.max(0).values > -certain_logit)
        uncertain = torch.nn.functional.max_pool3d(uncertain[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        stride //= 2
        fine = _upsample_lattice(values)
        fine_cells = uncertain.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
        needed = _cells_to_points(fine_cells)
        needed[::2, ::2, ::2] = False  # already decoded at the coarser level
        where = needed.nonzero()
        if len(where):
            fine[needed] = decode(where * stride)
            decoded += len(where)
        values = fine
    out[region] = values[:region[0].stop - region[0].start, :region[1].stop - region[1].start,
                         :region[2].stop - region[2].start]
    if timings is not None:
        timings.update(encode=encoded - started, decode=time.perf_counter() - encoded)
    return out, decoded


class CoarseToFineInferer(Inferer):
    """The one reconstruction of shapeqc as a MONAI inferer: ``inferer(grids, network)`` with grids
    (B, 1, R, R, R) float32 returns occupancy logits (B, 1, R, R, R) from :func:`coarse_to_fine_logits`.

    Every path runs it: the bundle's ``inference.yaml`` (``inferer``), training validation and evaluation
    (``@inferer``), ``shapeqc analyse``, calibration and ``bundle_quality``.

    Args:
        margin: voxels around the input organ's box that are decoded; None: :func:`default_margin` of R.
        start_stride, certain_logit, chunk_points: as in :func:`coarse_to_fine_logits`.
    """

    def __init__(self, margin: int | None = None, start_stride: int = 8, certain_logit: float = 5.0,
                 chunk_points: int = 32_768) -> None:
        super().__init__()
        self.margin = margin
        self.start_stride = start_stride
        self.certain_logit = certain_logit
        self.chunk_points = chunk_points

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, timings: dict | None = None,
                 **kwargs: Any) -> torch.Tensor:
        margin = default_margin(inputs.shape[-1]) if self.margin is None else self.margin
        out = []
        for item in inputs:
            logits, decoded = coarse_to_fine_logits(network, item[None], self.start_stride, self.certain_logit,
                                                    self.chunk_points, margin, timings)
            if timings is not None:
                timings["decoded_points"] = timings.get("decoded_points", 0) + int(decoded)
            out.append(logits[None])
        return torch.stack(out)
