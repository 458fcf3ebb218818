"""The training targets: points near the clean organ's surface and their occupancy, in network coordinates."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from shapeqc.cuda_kernels import sample_boundary
from shapeqc.transforms.coordinates import voxel_to_grid_coords


class BoundarySampled(Randomizable, MapTransform):
    """Sample points near the surface of the clean grid under ``keys`` (one key) with their exact occupancy.

    Writes ``points_key`` (n, 3) float32 grid coordinates in [-1, 1] (array axis order, align_corners=False;
    see :mod:`shapeqc.transforms.coordinates`) and ``occupancy_key`` (n,) float32 0/1 (BCE targets).

    Args:
        keys: the clean grid, (R, R, R) or (1, R, R, R).
        num_points: points per item (research pipeline: 100k at R = 128).
        sigmas: Gaussian offset std as fractions of the grid width (research pipeline: 0.1 and 0.01).
        weights: mixture weights of the sigmas.
        uniform_fraction: fraction of points uniform in the volume.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_points: int = 100_000,
        sigmas: Sequence[float] = (0.1, 0.01),
        weights: Sequence[float] | None = (0.5, 0.5),
        uniform_fraction: float = 0.0,
        points_key: str = "points",
        occupancy_key: str = "occupancy",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("BoundarySampled takes exactly one key: the clean grid")
        self.num_points = int(num_points)
        self.sigmas = tuple(sigmas)
        self.weights = None if weights is None else tuple(weights)
        self.uniform_fraction = float(uniform_fraction)
        self.points_key, self.occupancy_key = points_key, occupancy_key
        self._seed = 0

    def randomize(self, data=None) -> None:
        # the kernel's generator is counter-based: one 63-bit seed per call from this transform's state
        self._seed = int(self.R.randint(0, 2**31 - 1)) << 32 | int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            grid = np.asarray(d[key])
            if grid.ndim == 4 and grid.shape[0] == 1:
                grid = grid[0]
            points, occupancy = sample_boundary(grid, self.num_points, self.sigmas, seed=self._seed,
                                                weights=self.weights, uniform_fraction=self.uniform_fraction)
            d[self.points_key] = voxel_to_grid_coords(points, grid.shape)
            d[self.occupancy_key] = occupancy.astype(np.float32)
        return d
