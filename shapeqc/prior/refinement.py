"""Test-time refinement (the research pipeline's option): fine-tune the encoder on one input, decoder frozen.

The decoder is the learned shape space; the encoder maps an input into it. Fitting the encoder's weights to
the input itself for a few steps lets the reconstruction follow the input more closely where the prior allows
it, while the frozen decoder keeps it a plausible shape. Off by default (``refine_steps=0``); its measured
effect on the validation split is in the bundle's README.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from shapeqc.transforms.boundary_samples import BoundarySampled


def refined_network(network: nn.Module, grid: torch.Tensor, steps: int, learning_rate: float = 1e-4,
                    num_points: int = 5_000, seed: int = 0) -> nn.Module:
    """A copy of ``network`` whose encoder was fitted to reproduce ``grid`` for ``steps`` Adam steps.

    Args:
        network: an IF-Net with ``encode``/``decode``; left untouched.
        grid: (1, 1, R, R, R) float32 input occupancy (the possibly defective segmentation, canonical grid).
        steps: optimizer steps; 0 returns ``network`` itself.
        learning_rate: Adam step size (the research pipeline's training rate).
        num_points: boundary samples of the input per step (sigmas 0.1 and 0.01 of the grid width, as in
            training), labelled with the input's own occupancy.
        seed: the samples of step k come from seed + k: the same seed gives the same refinement on a CPU.
    Returns:
        The refined copy in eval mode (batch-norm statistics frozen: one grid is no batch).
    """
    if steps <= 0:
        return network
    refined = copy.deepcopy(network).eval()
    encoder_parameters = []
    for name, parameter in refined.named_parameters():
        is_decoder = name.startswith("fc_")
        parameter.requires_grad_(not is_decoder)
        if not is_decoder:
            encoder_parameters.append(parameter)
    optimizer = torch.optim.Adam(encoder_parameters, lr=learning_rate)
    sampler = BoundarySampled("grid", num_points=num_points)
    occupancy_grid = grid[0, 0].detach().cpu().numpy() > 0.5
    for step in range(steps):
        sampler.set_random_state(seed + step)
        sample = sampler({"grid": occupancy_grid.astype(np.uint8)})
        points = torch.from_numpy(sample["points"])[None].to(grid.device)
        target = torch.from_numpy(sample["occupancy"])[None].to(grid.device)
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = nn.functional.binary_cross_entropy_with_logits(refined(grid, points), target)
            loss.backward()
        optimizer.step()
    for parameter in refined.parameters():
        parameter.requires_grad_(False)
    return refined
