"""IF-Net (Chibane et al., "Implicit Functions in Feature Space for 3D Shape Reconstruction and Completion",
CVPR 2020), the ``ShapeNetPoints`` variant used by the research pipeline: occupancy of query points given a
(corrupted) occupancy grid.

Encoder: a 3D conv stack over the grid (replicate padding, batch norm at the end of each scale, max-pool 2
between scales). Features for each query point are sampled (``grid_sample``, border padding) from the input
grid and from every scale at the point and its 6 axis neighbours, at ``displacement_voxels`` voxels of the
input grid. Decoder: 1x1 ``Conv1d`` layers (``2 * hidden``, ``hidden``, ``hidden``, 1) to one logit per point.

Points are (B, N, 3) grid coordinates in [-1, 1] in array axis order (see ``transforms.coordinates``);
``grid_sample`` wants (x, y, z) = (W, H, D), so they are flipped here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

PRESETS: dict[str, dict] = {
    # the research configuration
    "research": {"grid_size": 128, "channels": (16, 32, 64, 128, 128), "hidden": 256},
    # small enough to train on a 2-core CPU in about an hour at 64^3
    "cpu_small": {"grid_size": 64, "channels": (8, 16, 32, 32), "hidden": 128},
    # for tests and smoke runs
    "tiny": {"grid_size": 32, "channels": (4, 8, 8), "hidden": 16},
}


class IFNet(nn.Module):
    """IF-Net occupancy network.

    Args:
        grid_size: R of the (B, 1, R, R, R) input grid (32..256); sets the displacement in [-1, 1] units.
        channels: output channels of the first conv and then of each further scale (two convs each). The
            number of scales is ``len(channels)``.
        hidden: decoder width (the first decoder layer has ``2 * hidden`` channels, as in IF-Net).
        displacement_voxels: neighbour offset in voxels of the input grid.
    """

    def __init__(self, grid_size: int = 128, channels: Sequence[int] = (16, 32, 64, 128, 128), hidden: int = 256,
                 displacement_voxels: float = 1.0) -> None:
        super().__init__()
        if not 8 <= grid_size <= 512:
            raise ValueError("grid_size must lie in [8, 512]")
        if len(channels) < 1:
            raise ValueError("channels needs at least one entry")
        self.grid_size = int(grid_size)
        self.channels = tuple(int(c) for c in channels)
        self.hidden = int(hidden)
        self.conv_in = nn.Conv3d(1, self.channels[0], 3, padding=1, padding_mode="replicate")
        self.bn_in = nn.BatchNorm3d(self.channels[0])
        self.scales = nn.ModuleList()
        previous = self.channels[0]
        for width in self.channels[1:]:
            self.scales.append(nn.ModuleDict({
                "conv_a": nn.Conv3d(previous, width, 3, padding=1, padding_mode="replicate"),
                "conv_b": nn.Conv3d(width, width, 3, padding=1, padding_mode="replicate"),
                "bn": nn.BatchNorm3d(width),
            }))
            previous = width
        step = 2.0 * displacement_voxels / grid_size
        offsets = [[0.0, 0.0, 0.0]]
        for axis in range(3):
            for sign in (-1.0, 1.0):
                offset = [0.0, 0.0, 0.0]
                offset[axis] = sign * step
                offsets.append(offset)
        self.register_buffer("displacements", torch.tensor(offsets), persistent=False)  # (7, 3), array order
        feature_size = (1 + sum(self.channels)) * len(offsets)
        self.fc_0 = nn.Conv1d(feature_size, 2 * self.hidden, 1)
        self.fc_1 = nn.Conv1d(2 * self.hidden, self.hidden, 1)
        self.fc_2 = nn.Conv1d(self.hidden, self.hidden, 1)
        self.fc_out = nn.Conv1d(self.hidden, 1, 1)

    def encode(self, grid: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of a (B, 1, R, R, R) grid: [the grid, the first conv, each scale]."""
        features = [grid]
        net = self.bn_in(F.relu(self.conv_in(grid)))
        features.append(net)
        for scale in self.scales:
            net = F.max_pool3d(net, 2)
            net = F.relu(scale["conv_a"](net))
            net = scale["bn"](F.relu(scale["conv_b"](net)))
            features.append(net)
        return features

    def decode(self, features: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        """Occupancy logits (B, N) of points (B, N, 3) in [-1, 1] (array axis order) given ``encode``'s output."""
        batch, count, _ = points.shape
        neighbours = points[:, None, :, :] + self.displacements.to(points.dtype)[None, :, None, :]  # (B, 7, N, 3)
        # grid_sample takes (x, y, z) = (W, H, D): the one place array-order points are flipped
        sample_at = neighbours.flip(-1)[:, None]  # (B, 1, 7, N, 3)
        sampled = [F.grid_sample(f.to(points.dtype), sample_at, mode="bilinear", padding_mode="border",
                                 align_corners=False) for f in features]  # each (B, C, 1, 7, N)
        net = torch.cat(sampled, dim=1).reshape(batch, -1, count)
        net = F.relu(self.fc_0(net))
        net = F.relu(self.fc_1(net))
        net = F.relu(self.fc_2(net))
        return self.fc_out(net).squeeze(1)

    def forward(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Occupancy logits (B, N) of ``points`` (B, N, 3) for the grids (B, 1, R, R, R)."""
        return self.decode(self.encode(grid), points)


def ifnet_from_preset(name: str, **overrides) -> IFNet:
    """An IFNet built from a named preset in :data:`PRESETS`, with keyword overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return IFNet(**{**PRESETS[name], **overrides})
