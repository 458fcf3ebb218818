"""Occupancy of a canonical grid from the network: :class:`CoarseToFineInferer`, the one reconstruction every path
runs, and :func:`grid_logits`, dense decoding of every voxel centre (the reference the tests hold it to)."""

from __future__ import annotations

import time
from typing import Any

import torch
from monai.inferers import Inferer

from shapeqc.transforms.boxes import organ_box

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


def _cells_touching(points: torch.Tensor) -> torch.Tensor:
    """(a - 1, b - 1, c - 1) bool: lattice cells with at least one corner flagged in ``points`` (a, b, c) bool."""
    flagged = points.to(torch.uint8)
    a, b, c = flagged.shape
    return torch.stack([flagged[dx:a - 1 + dx, dy:b - 1 + dy, dz:c - 1 + dz]
                        for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]).amax(0) > 0


def _mixed_cells(values: torch.Tensor) -> torch.Tensor:
    """(a - 1, b - 1, c - 1) bool: lattice cells whose 8 corner logits (a, b, c) are not all on one side of 0,
    i.e. the cells the occupancy's 0.5 level passes through, as far as the corners tell."""
    inside = values > 0
    return _cells_touching(inside) & _cells_touching(~inside)


def crossed_cell_corners(values: torch.Tensor) -> torch.Tensor:
    """(a, b, c) bool: the lattice points (a, b, c) that are a corner of a cell the 0.5 level crosses (corner
    logits of both signs): the values trilinear interpolation reads where the occupancy changes side."""
    return _cells_to_points(_mixed_cells(values))


def _edge_voxels(inside: torch.Tensor, extents: list[int]) -> torch.Tensor:
    """(1, 1, *extents) float32: 1 at voxels of ``inside`` (bool, the decoded region of the input grid) whose
    3 x 3 x 3 neighbourhood holds both values, zero-padded to the lattice's ``extents``."""
    volume = inside.float()[None, None]
    edges = (torch.nn.functional.max_pool3d(volume, 3, 1, 1) != -torch.nn.functional.max_pool3d(-volume, 3, 1, 1))
    pad = [0, extents[2] - inside.shape[2], 0, extents[1] - inside.shape[1], 0, extents[0] - inside.shape[0]]
    return torch.nn.functional.pad(edges.float(), pad)


def default_margin(grid_size: int) -> int:
    """Voxels around the input organ's box that reconstruction decodes: an eighth of the grid (8 at R = 64,
    16 at R = 128), room for the prior to complete a cut organ; beyond it a reconstruction is empty."""
    return max(4, grid_size // 8)


@torch.no_grad()
def coarse_to_fine_logits(network: torch.nn.Module, grid: torch.Tensor, start_stride: int = 8,
                          near_fraction: float = 0.25, chunk_points: int = 32_768, margin: int | None = None,
                          timings: dict | None = None) -> tuple[torch.Tensor, int]:
    """Occupancy logits at every voxel centre of one grid (1, 1, R, R, R), decoding points near the surface only.

    The work follows the organ's surface, not its volume (as Occupancy Networks' MISE): a lattice of every
    ``start_stride``-th voxel centre is decoded; at each level the cells whose corners disagree on the side of
    the 0.5 level, or have a corner whose |logit| is below ``near_fraction`` times the first lattice's median
    |logit|, or hold a border voxel of the input grid, are halved and their new points decoded; then, at that
    level, every cell that the decoded and interpolated values together show mixed, with a corner not yet
    decoded, has its corners decoded, until none is left (the surface is followed wherever it leads, also into
    cells whose coarse corners agreed). Everything else is filled by multilinear
    interpolation of decoded values that all lie on one side. The thresholds are relative, so the points decoded
    do not depend on how confident the prior is: scaling its logits changes nothing.

    At the voxel level every cell the 0.5 level crosses has all 8 corners decoded, so mapping the occupancy back
    to the input's voxels (trilinear interpolation, threshold 0.5) gives what dense decoding gives; the signs
    equal dense decoding's unless a structure smaller than a lattice cell lies wholly inside cells whose corners
    agree while the input has no border there (tested against dense decoding on every shipped bundle's held-out
    organs, clean and corrupted). With
    ``margin``, only the input organ's box grown by ``margin`` voxels is decoded and the rest is
    :data:`OUTSIDE_LOGIT`, exactly as :func:`grid_logits` with the same margin; lattice points beyond that box
    are clamped onto its last voxel.

    Returns (logits (R, R, R) float32, number of decoded points). With ``timings``, "encode" (with the decoding
    preparation) and "decode" seconds are stored in it.
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
    known = torch.ones_like(values, dtype=torch.bool)
    decoded = len(lattice_index)
    # "near the 0.5 level" relative to how sure the prior is here (the median |logit| of the first lattice), so
    # that the refinement reads the same on a prior whose logits are all ten times larger or smaller
    near = near_fraction * float(values.abs().median())
    input_edges = _edge_voxels(grid[0, 0][region] > 0.5, extents)
    while stride > 1:
        # cells the surface passes through, cells near the 0.5 level, and cells where the *input* has a border:
        # the prior follows its input, so a blob or hole of the input smaller than a cell shows up there first
        refine = (_mixed_cells(values) | _cells_touching(values.abs() < near)
                  | (torch.nn.functional.max_pool3d(input_edges, stride + 1, stride)[0, 0] > 0))
        stride //= 2
        values = _upsample_lattice(values)
        was_known = known
        known = torch.zeros(values.shape, dtype=torch.bool, device=device)
        known[::2, ::2, ::2] = was_known
        needed = _cells_to_points(refine.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2))
        while True:
            needed &= ~known
            where = needed.nonzero()
            if not len(where):
                break
            values[needed] = decode(where * stride)
            known |= needed
            decoded += len(where)
            # follow the surface: mixed cells of this level with a corner still interpolated
            needed = crossed_cell_corners(values)
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
        start_stride, near_fraction, chunk_points: as in :func:`coarse_to_fine_logits`.
    """

    def __init__(self, margin: int | None = None, start_stride: int = 8, near_fraction: float = 0.25,
                 chunk_points: int = 32_768) -> None:
        super().__init__()
        self.margin = margin
        self.start_stride = start_stride
        self.near_fraction = near_fraction
        self.chunk_points = chunk_points

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, timings: dict | None = None,
                 **kwargs: Any) -> torch.Tensor:
        margin = default_margin(inputs.shape[-1]) if self.margin is None else self.margin
        out = []
        for item in inputs:
            logits, decoded = coarse_to_fine_logits(network, item[None], self.start_stride, self.near_fraction,
                                                    self.chunk_points, margin, timings)
            if timings is not None:
                timings["decoded_points"] = timings.get("decoded_points", 0) + int(decoded)
            out.append(logits[None])
        return torch.stack(out)
