"""IF-Net (Chibane et al., "Implicit Functions in Feature Space for 3D Shape Reconstruction and Completion",
CVPR 2020), the ``ShapeNetPoints`` variant used by the research pipeline: occupancy of query points given a
(corrupted) occupancy grid.

Encoder: a 3D conv stack over the grid (replicate padding, batch norm at the end of each scale, max-pool 2
between scales). Features for each query point are sampled (``grid_sample``, border padding) from the input
grid and from every scale at the point and its 6 axis neighbours, at ``displacement_voxels`` voxels of the
input grid. Decoder: 1x1 ``Conv1d`` layers (``2 * hidden``, ``hidden``, ``hidden``, 1) to one logit per point.

Points are (B, N, 3) grid coordinates in [-1, 1] in array axis order (see ``shapeqc.transforms.coordinates``);
``grid_sample`` wants (x, y, z) = (W, H, D), so they are flipped here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class PreparedFeatures:
    """``encode``'s features arranged for fast inference decoding (:meth:`IFNet.prepare_decoding`).

    Every feature map becomes a channels-last table with one row per voxel, sampled by a weighted sum of 8 rows
    (``embedding_bag``): on a CPU this is several times faster than ``grid_sample`` over channel-first maps. And
    since the first decoder layer is linear in the sampled features and trilinear sampling is linear too,
    W_d sample(F, x + d) = sample(W_d F, x + d): a coarse, wide map is projected through its block W_d of the
    first layer once per grid, so that a query point reads 2 * hidden projected values instead of multiplying
    C sampled values by a (2 * hidden, C) block. Results equal ``decode`` on the raw features to float rounding.

    Attributes:
        levels: per feature map, (its shape (D, H, W), tables, weight): 7 tables (B * D * H * W, width), one
            per displacement, rows in C order of (b, z, y, x); ``weight`` (width * 7, 2 * hidden) for a raw
            map (width = C, the block of the first layer for its 7 * C inputs), None for a projected map
            (width = 2 * hidden).
    """

    levels: list[tuple[tuple[int, int, int], list[torch.Tensor], torch.Tensor | None]]


def trilinear_corners(points: torch.Tensor, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and weights of trilinear sampling as ``grid_sample(align_corners=False, padding_mode="border")``.

    Args:
        points: (B, N, 3) grid coordinates in [-1, 1], array axis order.
        shape: (D, H, W) of the sampled map.
    Returns:
        (B * N, 8) int64 row indices into a (B * D * H * W, C) table and (B * N, 8) weights summing to 1.
    """
    batch, count, _ = points.shape
    size = torch.tensor(shape, device=points.device, dtype=points.dtype)
    pixel = (((points + 1.0) * size - 1.0) / 2.0).clamp(min=0.0)
    pixel = torch.minimum(pixel, size - 1.0)
    low = torch.minimum(pixel.floor(), (size - 2.0).clamp(min=0.0))
    fraction = pixel - low
    low = low.long()
    offsets = torch.tensor([[dx, dy, dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)], device=points.device)
    corner = (low[:, :, None, :] + offsets).clamp(max=torch.tensor(shape, device=points.device) - 1)  # (B, N, 8, 3)
    rows = (corner[..., 0] * shape[1] + corner[..., 1]) * shape[2] + corner[..., 2]
    rows = rows + (torch.arange(batch, device=points.device) * (shape[0] * shape[1] * shape[2]))[:, None, None]
    weights = torch.where(offsets.bool(), fraction[:, :, None, :], 1.0 - fraction[:, :, None, :]).prod(-1)
    return rows.reshape(batch * count, 8), weights.reshape(batch * count, 8)


class IFNet(nn.Module):
    """IF-Net occupancy network.

    Args:
        grid_size: R of the (B, 1, R, R, R) input grid (32..256); sets the displacement in [-1, 1] units.
        channels: output channels of the first conv and then of each further scale (two convs each). The
            number of scales is ``len(channels)``.
        hidden: decoder width (the first decoder layer has ``2 * hidden`` channels, as in IF-Net).
        displacement_voxels: neighbour offset in voxels of the input grid.
        input_resolution_features: whether the decoder reads the two maps at the input's resolution (the grid
            itself and the first conv). True is IF-Net as published (completion: keep what the input shows);
            False decodes from the pooled scales only (half resolution and coarser), so that the easiest answer
            is no longer to copy the input's voxels: the shape-prior variant of issue 32 (docs/training.md).
    """

    def __init__(self, grid_size: int = 128, channels: Sequence[int] = (16, 32, 64, 128, 128), hidden: int = 256,
                 displacement_voxels: float = 1.0, input_resolution_features: bool = True) -> None:
        super().__init__()
        if not 8 <= grid_size <= 512:
            raise ValueError("grid_size must lie in [8, 512]")
        if len(channels) < 1:
            raise ValueError("channels needs at least one entry")
        if not input_resolution_features and len(channels) < 2:
            raise ValueError("without input-resolution features the encoder needs at least one pooled scale")
        self.input_resolution_features = bool(input_resolution_features)
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
        decoded_channels = self.channels[1:] if not self.input_resolution_features else (1, *self.channels)
        feature_size = sum(decoded_channels) * len(offsets)
        self.fc_0 = nn.Conv1d(feature_size, 2 * self.hidden, 1)
        self.fc_1 = nn.Conv1d(2 * self.hidden, self.hidden, 1)
        self.fc_2 = nn.Conv1d(self.hidden, self.hidden, 1)
        self.fc_out = nn.Conv1d(self.hidden, 1, 1)

    def encode(self, grid: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps the decoder reads, for a (B, 1, R, R, R) grid: [the grid, the first conv, each
        scale], or each pooled scale only without ``input_resolution_features``."""
        features = [grid]
        net = self.bn_in(F.relu(self.conv_in(grid)))
        features.append(net)
        for scale in self.scales:
            net = F.max_pool3d(net, 2)
            net = F.relu(scale["conv_a"](net))
            net = scale["bn"](F.relu(scale["conv_b"](net)))
            features.append(net)
        return features if self.input_resolution_features else features[2:]

    @torch.jit.unused
    @torch.no_grad()
    def prepare_decoding(self, features: list[torch.Tensor], min_channels: int = 64,
                         max_bytes: int = 640 * 2**20) -> PreparedFeatures:
        """Arrange ``encode``'s features for fast decoding (see :class:`PreparedFeatures`).

        Maps are projected coarsest first while they have at least ``min_channels`` channels (for narrower
        maps reading 2 * hidden values costs more than the product it replaces) and the projected tables fit in
        ``max_bytes``; the rest stay raw.
        """
        displacements = len(self.displacements)
        width = self.fc_0.out_channels
        weight = self.fc_0.weight[:, :, 0].reshape(width, -1, displacements)  # (2h, C_all, 7)
        starts = [0]
        for feature in features:
            starts.append(starts[-1] + feature.shape[1])
        project, budget = set(), max_bytes
        for level in reversed(range(len(features))):
            feature = features[level]
            size = displacements * width * feature[:, 0].numel() * feature.element_size()
            if feature.shape[1] < min_channels or size > budget:
                break
            project.add(level)
            budget -= size
        levels = []
        for level, feature in enumerate(features):
            block = weight[:, starts[level]:starts[level + 1]]  # (2h, C, 7)
            channels_last = feature.movedim(1, -1)  # (B, D, H, W, C)
            if level in project:
                tables = [(channels_last @ block[:, :, d].T).reshape(-1, width).contiguous()
                          for d in range(displacements)]
                levels.append((tuple(feature.shape[2:]), tables, None))
            else:
                table = channels_last.reshape(-1, feature.shape[1]).contiguous()
                # rows of the sampled (N, C, 7) block flattened C-major, as the first layer reads them
                levels.append((tuple(feature.shape[2:]), [table] * displacements,
                               block.reshape(width, -1).T.contiguous()))
        return PreparedFeatures(levels)

    def decode(self, features: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        """Occupancy logits (B, N) of points (B, N, 3) in [-1, 1] (array axis order) given ``encode``'s output."""
        batch, count, _ = points.shape
        neighbours = points[:, None, :, :] + self.displacements.to(points.dtype)[None, :, None, :]  # (B, 7, N, 3)
        # grid_sample takes (x, y, z) = (W, H, D): the one place array-order points are flipped
        sample_at = neighbours.flip(-1)[:, None]  # (B, 1, 7, N, 3)
        sampled = [F.grid_sample(f.to(points.dtype), sample_at, mode="bilinear", padding_mode="border",
                                 align_corners=False) for f in features]  # each (B, C, 1, 7, N)
        return self._decoder_tail(self.fc_0(torch.cat(sampled, dim=1).reshape(batch, -1, count)))

    @torch.jit.unused
    def decode_prepared(self, features: PreparedFeatures, points: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` from :meth:`prepare_decoding`'s output: the same logits to float rounding, faster
        (inference only; TorchScript export keeps the plain path)."""
        batch, count, _ = points.shape
        neighbours = points[:, None, :, :] + self.displacements.to(points.dtype)[None, :, None, :]  # (B, 7, N, 3)
        first = self._first_layer_prepared(features, neighbours)
        return self._decoder_tail(first.reshape(batch, count, -1).transpose(1, 2))

    def _decoder_tail(self, first_layer: torch.Tensor) -> torch.Tensor:
        """(B, 2 * hidden, N) first-layer pre-activations -> (B, N) logits."""
        net = F.relu(first_layer)
        net = F.relu(self.fc_1(net))
        net = F.relu(self.fc_2(net))
        return self.fc_out(net).squeeze(1)

    @torch.jit.unused
    def _first_layer_prepared(self, features: PreparedFeatures, neighbours: torch.Tensor) -> torch.Tensor:
        """First decoder layer before its ReLU, (B * N, 2 * hidden), from prepared features."""
        out = None
        corners: dict = {}
        for shape, tables, weight in features.levels:
            reads = []
            for d, table in enumerate(tables):
                if (shape, d) not in corners:
                    corners[(shape, d)] = trilinear_corners(neighbours[:, d], shape)
                rows, weights = corners[(shape, d)]
                read = F.embedding_bag(rows, table, per_sample_weights=weights.to(table.dtype), mode="sum")
                if weight is None:  # projected: already in the first layer's space
                    out = read if out is None else out.add_(read)
                else:
                    reads.append(read)
            if weight is not None:
                part = torch.stack(reads, dim=-1).flatten(1) @ weight  # (B * N, C, 7) -> (B * N, 2h)
                out = part if out is None else out.add_(part)
        return out.add_(self.fc_0.bias)

    def forward(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Occupancy logits (B, N) of ``points`` (B, N, 3) for the grids (B, 1, R, R, R)."""
        return self.decode(self.encode(grid), points)


def mirrored_state(state: dict[str, torch.Tensor], axes: Sequence[int]) -> dict[str, torch.Tensor]:
    """The weights of an :class:`IFNet` that sees its world mirrored along the grid's array ``axes``:
    ``new(grid, points) == old(grid.flip(axes), mirrored points)`` for every input, exactly up to float rounding.

    Why it is exact: a 3x3x3 convolution with replicate padding commutes with a flip once its kernel is flipped
    along the same axes; batch norm, ReLU and 2x max pooling of even-sized maps (every scale of a grid of size
    2^k) commute with it; ``grid_sample`` (``align_corners=False``, border padding) samples a flipped map at the
    mirrored point (-p along the axis) where the unflipped one is sampled at p; and the decoder's neighbour
    displacements -d and +d along a mirrored axis trade places, so the first decoder layer's input weights of
    those two displacements are swapped. Used to re-express a prior trained on data read in a mirrored frame in
    the true one (the AdrenalMNIST3D arrays are L, P, S; docs/anatomy_audit.md).
    """
    axes = sorted({int(a) for a in axes})
    if not set(axes) <= {0, 1, 2}:
        raise ValueError(f"axes must be array axes 0, 1, 2, got {axes}")
    new = {name: value.clone() for name, value in state.items()}
    for name, value in state.items():
        if name.endswith("weight") and value.ndim == 5:  # Conv3d (out, in, kD, kH, kW)
            new[name] = value.flip([2 + a for a in axes]).contiguous()
    order = list(range(7))  # displacement k of the first layer's input: 0 centre, 1 + 2a minus, 2 + 2a plus
    for a in axes:
        order[1 + 2 * a], order[2 + 2 * a] = order[2 + 2 * a], order[1 + 2 * a]
    weight = state["fc_0.weight"]  # (2h, C_all * 7, 1), input index c * 7 + k
    out_channels, inputs, _ = weight.shape
    new["fc_0.weight"] = weight.reshape(out_channels, inputs // 7, 7, 1)[:, :, order].reshape(weight.shape).contiguous()
    return new


def ifnet_from_preset(name: str, **overrides) -> IFNet:
    """An IFNet built from a named preset in :data:`PRESETS`, with keyword overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return IFNet(**{**PRESETS[name], **overrides})
