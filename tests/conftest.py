"""Shared fixtures: the real data in ../shared/data (read-only, never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(os.environ.get("SHAPEQC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ADRENAL_NPZ = SHARED_DATA / "adrenalmnist3d" / "adrenalmnist3d_64_trainval.npz"
TOTALSEG = SHARED_DATA / "totalsegmentator_example"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"test data missing: {path} (tests need ../shared/data beside the checkout, "
                                "or SHAPEQC_SHARED_DATA pointing at it)")
    return path


@pytest.fixture(scope="session")
def adrenal_npz() -> Path:
    return _require(ADRENAL_NPZ)


@pytest.fixture(scope="session")
def adrenal_val_masks(adrenal_npz) -> np.ndarray:
    """(98, 64, 64, 64) bool, the real AdrenalMNIST3D validation masks at 1 mm."""
    with np.load(adrenal_npz) as archive:
        return archive["val_images"] > 0


@pytest.fixture(scope="session")
def totalseg() -> Path:
    return _require(TOTALSEG)


@pytest.fixture(scope="session")
def headneck_tree() -> Path:
    """The two-rater head-and-neck tree ``<rater>/<scan>/segmentations/<Organ>.nrrd`` (28 scans x 2 raters)."""
    return _require(SHARED_DATA / "tcia_headneck_oar" / "test")


@pytest.fixture(scope="session")
def hippocampus_labels() -> Path:
    """The MSD hippocampus label maps (0 background, 1 anterior, 2 posterior), 1 mm."""
    return _require(SHARED_DATA / "msd_hippocampus" / "labels")
