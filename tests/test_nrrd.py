"""NRRD input (issue 7's first step): real head-and-neck CT organ masks in LPS read with the right orientation."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from shapeqc.transforms.errors import UnreadableImageError
from shapeqc.transforms.volume_io import read_volume, write_volume

HEADNECK = "tcia_headneck_oar/test/oncologist"


def nrrd_header_affine(path) -> tuple[np.ndarray, tuple[int, ...]]:
    """RAS affine and sizes parsed straight from the NRRD header text (an independent reading)."""
    text = path.read_bytes().split(b"\n\n", 1)[0].decode()
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    assert fields["space"] == "left-posterior-superior"
    directions = [[float(v) for v in group.split(",")] for group in re.findall(r"\(([^)]*)\)",
                                                                                fields["space directions"])]
    origin = [float(v) for v in re.findall(r"\(([^)]*)\)", fields["space origin"])[0].split(",")]
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions).T
    affine[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, tuple(int(v) for v in fields["sizes"].split())


@pytest.mark.parametrize("organ", ["Mandible", "Parotid-Lt"])
def test_nrrd_reads_with_its_header_geometry_and_voxels(totalseg, organ):
    path = sorted((totalseg.parent / HEADNECK).glob(f"*/segmentations/{organ}.nrrd"))[0]
    array, affine = read_volume(path)
    expected_affine, sizes = nrrd_header_affine(path)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-6)
    assert array.shape == sizes
    raw = np.frombuffer(gzip.decompress(path.read_bytes().split(b"\n\n", 1)[1]), dtype=np.uint8)
    np.testing.assert_array_equal(array, raw.reshape(sizes[::-1]).transpose(2, 1, 0))  # NRRD: first axis fastest
    # a left parotid lies at negative RAS x (RAS: +x towards the patient's right)
    if organ == "Parotid-Lt":
        centre = affine[:3, :3] @ np.argwhere(array).mean(axis=0) + affine[:3, 3]
        assert centre[0] < -20


def test_same_organ_from_nrrd_and_nifti_gives_the_same_canonical_grid(totalseg, tmp_path):
    from shapeqc.transforms.grid_transforms import ToCanonicalGridd
    from shapeqc.transforms.organ_loading import load_organ_mask

    path = sorted((totalseg.parent / HEADNECK).glob("*/segmentations/Mandible.nrrd"))[0]
    array, affine = read_volume(path)
    nifti = write_volume(tmp_path / "mandible.nii.gz", array, affine)
    to_grid = ToCanonicalGridd("mask", spacing_mm=2.0, grid_size=64, margin=4)
    grids = []
    for source in (path, nifti):
        mask, mask_affine, _ = load_organ_mask(str(source))
        grids.append(to_grid({"mask": mask.astype(np.uint8), "affine": mask_affine, "organ": "mandible"})["mask"])
    np.testing.assert_array_equal(grids[0], grids[1])
    assert np.asarray(grids[0]).sum() > 1000


def test_unreadable_nrrd_names_the_file(tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: uint8\n")
    with pytest.raises(UnreadableImageError, match="broken.nrrd.*cannot read as NRRD"):
        read_volume(broken)
