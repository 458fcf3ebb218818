"""Every kind of bad input raises its own error type, and the message names the file."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from shapeqc.transforms import errors
from shapeqc.transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd, load_organ_mask
from shapeqc.transforms.volume_io import check_same_grid, read_volume


def _organ(shape=(12, 12, 12)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[4:8, 3:9, 5:7] = 1
    return mask


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _save_raw_sform(path, array, sform):
    """Write a NIfTI whose only geometry is ``sform``, as broken converters do (nibabel refuses it otherwise)."""
    image = nib.Nifti1Image(array, None)
    image.header.set_qform(None, code=0)
    image.header.set_sform(sform, code=2)
    nib.save(image, str(path))
    return path


def _write_bad(tmp_path, case):
    path = tmp_path / f"{case}.nii.gz"
    if case == "missing":
        return path
    if case == "unreadable":
        path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    elif case == "truncated_gzip":
        _save(path, _organ())
        path.write_bytes(path.read_bytes()[:60])
    elif case == "four_d":
        _save(path, np.stack([_organ(), _organ()], axis=-1))
    elif case == "nan":
        volume = _organ().astype(np.float32)
        volume[0, 0, 0] = np.nan
        _save(path, volume)
    elif case == "zero_scale":
        _save_raw_sform(path, _organ(), np.diag([1.0, 0.0, 1.0, 1.0]))
    elif case == "non_binary":
        volume = _organ()
        volume[5, 5, 5] = 2
        _save(path, volume)
    elif case == "empty":
        _save(path, np.zeros((12, 12, 12), np.uint8))
    elif case == "truncated_organ":
        volume = _organ()
        volume[0, 5, 5] = 1
        _save(path, volume)
    return path


@pytest.mark.parametrize(
    "case, error",
    [
        ("missing", errors.MissingFileError),
        ("unreadable", errors.UnreadableImageError),
        ("truncated_gzip", errors.UnreadableImageError),
        ("four_d", errors.NotVolumeError),
        ("nan", errors.NaNValuesError),
        ("zero_scale", errors.InvalidAffineError),
        ("non_binary", errors.NonBinaryMaskError),
        ("empty", errors.EmptyMaskError),
        ("truncated_organ", errors.TruncatedOrganError),
    ],
)
def test_bad_file_raises_typed_error_naming_file(tmp_path, case, error):
    path = _write_bad(tmp_path, case)
    pipeline = [LoadOrganMaskd("mask"), CheckOrganMaskd("mask")]
    item = {"case_id": case, "mask": str(path)}
    with pytest.raises(error) as caught:
        for transform in pipeline:
            item = transform(item)
    assert str(path) in str(caught.value)
    assert caught.value.path.startswith(str(path))
    assert isinstance(caught.value, errors.SegmentationInputError)
    # every other error type must not match: one class per reason
    others = tuple(e for e in errors.ALL_ERRORS if not issubclass(error, e) and not issubclass(e, error))
    assert not isinstance(caught.value, others)


def test_nan_affine_is_rejected(tmp_path):
    path = _save_raw_sform(tmp_path / "nan_affine.nii.gz", _organ(), np.full((4, 4), np.nan))
    with pytest.raises(errors.InvalidAffineError) as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


def test_wrong_organ_in_multilabel_map(tmp_path):
    volume = _organ()
    volume[1:3, 1:3, 1:3] = 5
    path = _save(tmp_path / "labels.nii.gz", volume)
    with pytest.raises(errors.UnknownOrganError, match="not_an_organ") as caught:
        load_organ_mask(path, organ="not_an_organ", map_version="v2")
    assert str(path) in str(caught.value)
    with pytest.raises(errors.UnknownOrganError, match="absent") as caught:
        load_organ_mask(path, organ="stomach", map_version="v2")
    assert str(path) in str(caught.value)


def test_folder_without_the_organ_file(tmp_path):
    _save(tmp_path / "liver.nii.gz", _organ())
    with pytest.raises(errors.UnknownOrganError, match="spleen") as caught:
        load_organ_mask(tmp_path, organ="spleen")
    assert str(tmp_path) in str(caught.value)


def test_mismatched_affine_and_shape():
    with pytest.raises(errors.AffineMismatchError, match="ct.nii.gz"):
        check_same_grid((4, 4, 4), np.eye(4), (4, 4, 4), np.diag([1, 1, 2, 1.0]), "ct.nii.gz")
    with pytest.raises(errors.AffineMismatchError, match="shape"):
        check_same_grid((4, 4, 4), np.eye(4), (4, 4, 5), np.eye(4), "ct.nii.gz")
    check_same_grid((4, 4, 4), np.eye(4), (4, 4, 4), np.eye(4) + 1e-6, "ct.nii.gz")


def test_errors_survive_pickling_for_dataloader_workers():
    import pickle

    error = errors.TruncatedOrganError("/data/case1/liver.nii.gz", "touches the border")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is errors.TruncatedOrganError
    assert copy.path == error.path and str(copy) == str(error)
    assert copy.as_record() == {"path": "/data/case1/liver.nii.gz", "error": "truncated",
                                "reason": "touches the border"}
