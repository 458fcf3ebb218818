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
    """(98, 64, 64, 64) bool, the real AdrenalMNIST3D validation masks at 1 mm, in R, A, S array order: with an
    identity affine they lie in their true frame (the npz stores them L, P, S:
    shapeqc.bundle.datasets.ADRENALMNIST_AFFINE)."""
    with np.load(adrenal_npz) as archive:
        return np.ascontiguousarray(np.flip(archive["val_images"] > 0, axis=(1, 2)))


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


@pytest.fixture(scope="session")
def mixed_organs(tmp_path_factory, headneck_tree, hippocampus_labels, totalseg):
    """One head-and-neck scan (NRRD per-organ folder), one MSD hippocampus label map, one TotalSegmentator map."""
    folder = tmp_path_factory.mktemp("organs")
    scan = sorted((headneck_tree / "oncologist").iterdir())[0]
    (folder / "hn" / scan.name).mkdir(parents=True)
    (folder / "hn" / scan.name / "segmentations").symlink_to(scan / "segmentations")
    (folder / "hippocampus_001.nii.gz").symlink_to(hippocampus_labels / "hippocampus_001.nii.gz")
    (folder / "ts_map.nii.gz").symlink_to(totalseg / "v2_multilabel_seg.nii.gz")
    return folder, scan.name


@pytest.fixture(scope="session")
def kits_cases() -> Path:
    """KiTS23 label maps cropped around the kidneys (1 kidney, 2 tumour, 3 cyst; both kidneys share label 1)."""
    return _require(SHARED_DATA / "kits23_kidney" / "cases")
