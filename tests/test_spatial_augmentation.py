"""The abdominal bundles' spatial augmentation (issue 32): off by default (the training pipeline as before), and when
on, a clean organ rotated and scaled within the grid's margin, still a binary mask, the same organ for the target
and for the input that is corrupted from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]


def train_config(name: str, prob: float, tmp_path: Path) -> ConfigParser:
    bundle = ROOT / "bundles" / name
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.yaml"), str(bundle / "configs" / "train.yaml")])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(SHARED_DATA), "output_dir": str(tmp_path),
                   "spatial_augmentation_prob": prob, "num_points": 500})
    return parser


@pytest.mark.parametrize("name", ["kidney", "liver", "spleen"])
def test_spatial_augmentation_is_off_by_default_and_resampled_back_to_a_mask_when_on(name, tmp_path):
    off = train_config(name, 0.0, tmp_path).get_parsed_content("train#random_transforms")
    assert "RandAffined" not in [type(t).__name__ for t in off]
    on = train_config(name, 1.0, tmp_path).get_parsed_content("train#random_transforms")
    names = [type(t).__name__ for t in on]
    # on the clean organ, before it is copied into the input that is corrupted
    order = [names.index(n) for n in ("RandFlipd", "RandAffined", "AsDiscreted", "CopyItemsd")]
    assert order == sorted(order)
    assert [t for t in names if t not in ("RandAffined", "AsDiscreted")] == [type(t).__name__ for t in off]


def test_spatial_augmentation_moves_real_spleens_within_the_grid(tmp_path):
    from monai.transforms import Compose

    config = train_config("spleen", 1.0, tmp_path)
    items = config.get_parsed_content("train#datalist")[:2]
    to_grid = config.get_parsed_content("canonical_grid_transforms")
    on = config.get_parsed_content("train#random_transforms")
    names = [type(t).__name__ for t in on]
    augment = Compose(on[:names.index("CopyItemsd")])
    augment.set_random_state(7)
    for item in items:
        grid = Compose(to_grid)(dict(item))
        clean = np.asarray(grid["mask"][0]) > 0
        augmented = augment(dict(grid))["mask"]
        assert augmented.dtype == torch.uint8 and set(torch.unique(augmented).tolist()) <= {0, 1}
        moved = augmented[0].numpy() > 0
        overlap = 2 * (moved & clean).sum() / (moved.sum() + clean.sum())
        # a different organ of about the same size, not cut by the grid's border
        assert overlap < 0.97 and 0.7 < moved.sum() / clean.sum() < 1.4
        assert not (moved[[0, -1]].any() or moved[:, [0, -1]].any() or moved[:, :, [0, -1]].any())
