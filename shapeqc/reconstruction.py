"""Occupancy of a whole canonical grid from the network: encode once, decode voxel centres in chunks."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from transforms.corruption import organ_box

# logit written where the region of interest leaves voxels undecoded: firmly "empty"
OUTSIDE_LOGIT = -20.0


def voxel_centre_coords(shape: tuple[int, int, int], region: tuple[slice, slice, slice] | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 3) float32 grid coordinates in [-1, 1] (array axis order) of the voxel centres in ``region``."""
    region = region or tuple(slice(0, n) for n in shape)
    axes = [(2.0 * torch.arange(s.start, s.stop, device=device, dtype=torch.float32) + 1.0) / n - 1.0
            for s, n in zip(region, shape, strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def grid_logits(network: torch.nn.Module, grid: torch.Tensor, margin: int | None = None,
                chunk_points: int = 65_536) -> torch.Tensor:
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
        item_features = [f[b:b + 1] for f in features]
        logits = torch.cat([network.decode(item_features, coords[start:start + chunk_points][None])[0]
                            for start in range(0, len(coords), chunk_points)])
        region = region or tuple(slice(0, n) for n in shape)
        out[b, 0][region] = logits.reshape([s.stop - s.start for s in region]).float()
    return out


class OccupancyGridInferer(Inferer):
    """MONAI inferer: ``inferer(grid, network)`` -> occupancy logits on the grid (see :func:`grid_logits`)."""

    def __init__(self, margin: int | None = 6, chunk_points: int = 65_536) -> None:
        super().__init__()
        self.margin = margin
        self.chunk_points = chunk_points

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return grid_logits(network, inputs, self.margin, self.chunk_points)
