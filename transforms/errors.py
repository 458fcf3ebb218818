"""Typed errors for bad segmentation input.

Every error names the offending file and the reason, so a batch run can record it and go on with the
next case. All derive from :class:`SegmentationInputError` (a ``ValueError``): catch that one class to
record any bad-input failure; catch a subclass to react to one reason.
"""

from __future__ import annotations

import os


class SegmentationInputError(ValueError):
    """Base class: a segmentation that cannot be turned into an organ grid.

    Attributes:
        path: the file (or folder) the problem was found in, as a string; ``"<array>"`` for in-memory input.
        reason: one sentence saying what is wrong.
    """

    code = "bad_input"

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else "<array>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # keep (path, reason) across pickling, so errors raised in DataLoader workers arrive intact
        return (type(self), (self.path, self.reason))

    def as_record(self) -> dict:
        """A flat dict for error logs and CSV/JSON reports."""
        return {"path": self.path, "error": self.code, "reason": self.reason}


class MissingFileError(SegmentationInputError, FileNotFoundError):
    """The file or folder does not exist."""

    code = "missing_file"


class UnreadableImageError(SegmentationInputError):
    """The file exists but is not a readable NIfTI/NumPy volume (truncated gzip, wrong format, ...)."""

    code = "unreadable"


class NotVolumeError(SegmentationInputError):
    """The image is not a single 3D volume (4D time series, 2D slice, ...)."""

    code = "not_3d"


class NaNValuesError(SegmentationInputError):
    """The image holds NaN or infinite values."""

    code = "nan_values"


class InvalidAffineError(SegmentationInputError):
    """The voxel-to-world affine has a zero, NaN or infinite scale (a singular or undefined geometry)."""

    code = "invalid_affine"


class AffineMismatchError(SegmentationInputError):
    """Two images that must share one voxel grid (shape and affine) do not."""

    code = "affine_mismatch"


class NonBinaryMaskError(SegmentationInputError):
    """A file read as a binary mask holds values other than 0 and 1."""

    code = "non_binary"


class UnknownOrganError(SegmentationInputError):
    """The requested organ name is not in the class map, or its label is absent from the file."""

    code = "unknown_organ"


class OrganAbsentError(UnknownOrganError):
    """The organ is a valid name, but this label map or folder does not hold it (nothing to judge)."""

    code = "organ_absent"


class EmptyMaskError(SegmentationInputError):
    """The organ mask has no foreground voxel."""

    code = "empty_mask"


class TruncatedOrganError(SegmentationInputError):
    """The organ touches the image border: it is cut off, so its shape cannot be judged."""

    code = "truncated"


class UnsplitSidesError(SegmentationInputError):
    """A label map holding a paired organ on both sides under one label (KiTS: both kidneys are label 1) does not
    hold exactly two organ-sized parts, so its left and right organs cannot be told apart (a solitary or a fused
    horseshoe kidney)."""

    code = "sides_not_separable"


ALL_ERRORS = (
    MissingFileError,
    UnreadableImageError,
    NotVolumeError,
    NaNValuesError,
    InvalidAffineError,
    AffineMismatchError,
    NonBinaryMaskError,
    UnknownOrganError,
    OrganAbsentError,
    EmptyMaskError,
    TruncatedOrganError,
    UnsplitSidesError,
)
