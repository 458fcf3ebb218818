"""Writing input-space volumes as NIfTI files that overlay the user's scan."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from shapeqc.transforms.canonical_grid import CanonicalGrid
from shapeqc.transforms.volume_io import write_volume


class SaveSourceSpaced(MapTransform):
    """Write each volume under ``keys`` (in the input's voxel space, e.g. after CanonicalGridToSourced) as
    ``<output_dir>/<data[name_key]>_<postfix>.nii.gz`` with the input's affine (from the plan under
    ``grid_key``); the written path goes to ``f"{key}_path"``."""

    def __init__(self, keys: KeysCollection, output_dir: str, postfix: str = "reconstruction",
                 name_key: str = "case_id", grid_key: str = "grid", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.postfix = postfix
        self.name_key = name_key
        self.grid_key = grid_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        plan = CanonicalGrid.from_dict(d[self.grid_key])
        for key in self.key_iterator(d):
            volume = np.asarray(d[key])
            if volume.ndim == 4 and volume.shape[0] == 1:
                volume = volume[0]
            path = self.output_dir / f"{d[self.name_key]}_{self.postfix}.nii.gz"
            d[f"{key}_path"] = str(write_volume(path, volume, plan.source_affine))
        return d
