"""Reading and validating segmentation volumes from disk.

A volume is returned as ``(array, affine)``: ``array`` (D, H, W) in the file's voxel order, ``affine``
(4, 4) float64 mapping voxel indices (voxel centres at integer indices, the NIfTI convention) to
scanner millimetres in RAS+ (nibabel's convention for NIfTI).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shapeqc.transforms.errors import (
    AffineMismatchError,
    InvalidAffineError,
    MissingFileError,
    NaNValuesError,
    NonBinaryMaskError,
    NotVolumeError,
    UnreadableImageError,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
# NRRD (like DICOM) states positions in LPS; NIfTI and this project use RAS
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_nrrd_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NRRD_SUFFIXES)


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed like the NRRD's own axes (i, j, k), RAS affine) through ITK, which reads the NRRD
    ``space`` (LPS, RAS, ...) into its LPS physical space."""
    import itk

    image = itk.imread(str(path))
    array = np.transpose(itk.array_from_image(image), tuple(reversed(range(image.GetImageDimension()))))
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection(), dtype=np.float64)[:3, :3] * spacing[None, :3]
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    return np.ascontiguousarray(array), LPS_TO_RAS @ affine


def is_volume_path(path: str | os.PathLike) -> bool:
    """A file shapeqc reads as a volume: NIfTI or NRRD."""
    return is_nifti_path(path) or is_nrrd_path(path)


def strip_volume_suffix(name: str) -> str:
    """The file name without its volume suffix (.nii.gz, .nii, .nrrd, .nhdr): the case or organ name."""
    lowered = name.lower()
    for suffix in (".nii.gz", ".nii", *NRRD_SUFFIXES):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes (column norms of the affine's 3x3 part)."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))


def validate_affine(affine: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
    """Check that ``affine`` is a finite, invertible 4x4 voxel-to-world matrix; return it as float64."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InvalidAffineError(path, f"affine has shape {affine.shape}, expected (4, 4)")
    if not np.all(np.isfinite(affine)):
        raise InvalidAffineError(path, "affine holds NaN or infinite values")
    scales = np.asarray(voxel_spacing(affine))
    if np.any(scales < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InvalidAffineError(path, f"affine has a zero voxel scale (column norms {np.round(scales, 6).tolist()})")
    return affine


def validate_volume(array: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
    """Squeeze trailing singleton dimensions; reject anything that is not one finite 3D volume."""
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        what = "a 4D series" if array.ndim == 4 else f"{array.ndim}D"
        raise NotVolumeError(path, f"image is {what} with shape {array.shape}, expected one 3D volume")
    if min(array.shape) < 1:
        raise NotVolumeError(path, f"image has an empty dimension, shape {array.shape}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise NaNValuesError(path, f"image holds {int(np.count_nonzero(~np.isfinite(array)))} NaN/inf voxels")
    if array.dtype.kind not in "biuf":
        raise UnreadableImageError(path, f"unsupported voxel type {array.dtype}")
    return array


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one NIfTI or NRRD file into ``(array (D, H, W), affine (4, 4) float64, RAS)``, validated.

    Raises:
        MissingFileError, UnreadableImageError, NotVolumeError, NaNValuesError, InvalidAffineError.
    """
    import nibabel as nib  # lazy: keeps `import shapeqc.transforms` fast

    path = Path(path)
    if not path.exists():
        raise MissingFileError(path, "file does not exist")
    if path.is_dir():
        raise UnreadableImageError(path, "is a folder, expected a NIfTI or NRRD file")
    try:
        if is_nrrd_path(path):
            array, affine = _read_nrrd(path)
        else:
            image = nib.load(str(path))
            array = np.asanyarray(image.dataobj)
            affine = image.affine
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        kind = "NRRD" if is_nrrd_path(path) else "NIfTI"
        raise UnreadableImageError(path, f"cannot read as {kind} ({type(exc).__name__}: {exc})") from exc
    if affine is None:
        raise InvalidAffineError(path, "file has no voxel-to-world affine")
    array = validate_volume(array, path)
    affine = validate_affine(affine, path)
    return array, affine


def read_label_names(path: str | os.PathLike) -> dict[int, str] | None:
    """Label id -> name from a NIfTI header's Caret XML label table (TotalSegmentator v2 writes one), if any."""
    import xml.etree.ElementTree as ET

    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception:
        return None
    for extension in image.header.extensions:
        content = extension.get_content()
        if not isinstance(content, bytes) or b"<LabelTable>" not in content:
            continue
        try:
            root = ET.fromstring(content.decode("utf-8", errors="replace").strip())
        except ET.ParseError:
            return None
        names = {int(label.get("Key")): (label.text or "").strip() for label in root.iter("Label")}
        return {key: name for key, name in names.items() if key != 0 and name}
    return None


def binary_mask(array: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
    """Return ``array`` as a bool mask if it only holds 0 and 1; raise NonBinaryMaskError otherwise."""
    if array.dtype == bool:
        return array
    values = np.unique(array)
    if not np.all(np.isin(values, (0, 1))):
        shown = values[:8].tolist()
        more = "" if values.size <= 8 else f" ... ({values.size} distinct values)"
        raise NonBinaryMaskError(
            path, f"binary mask expected, found values {shown}{more}; for a multi-label map give the organ name"
        )
    return array == 1


def check_same_grid(
    shape_a: tuple[int, ...],
    affine_a: np.ndarray,
    shape_b: tuple[int, ...],
    affine_b: np.ndarray,
    path: str | os.PathLike | None,
    atol_mm: float = 1e-3,
) -> None:
    """Raise AffineMismatchError unless two volumes share one voxel grid (same shape, affine within atol_mm)."""
    if tuple(shape_a) != tuple(shape_b):
        raise AffineMismatchError(path, f"shape {tuple(shape_b)} differs from the reference shape {tuple(shape_a)}")
    difference = np.max(np.abs(np.asarray(affine_a, float) - np.asarray(affine_b, float)))
    if difference > atol_mm:
        raise AffineMismatchError(path, f"affine differs from the reference affine by up to {difference:.4g} mm")


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray,
                 label_names: dict[int, str] | None = None) -> Path:
    """Write a (D, H, W) volume as NIfTI with ``affine`` (bool masks as uint8); creates parent folders.

    ``label_names`` (label id -> name) go into the header as a Caret XML label table, the form TotalSegmentator
    2 writes and :func:`read_label_names` reads.
    """
    from xml.sax.saxutils import escape

    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    image.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    if label_names:
        labels = "".join(f'<Label Key="{int(key)}" Red="1" Green="1" Blue="1" Alpha="1">{escape(name)}</Label>'
                         for key, name in sorted(label_names.items()))
        table = f"<CaretExtension><VolumeInformation><LabelTable>{labels}</LabelTable></VolumeInformation>" \
                "</CaretExtension>"
        # code 0, as TotalSegmentator writes it (nibabel reads code 30 back as an opaque extension)
        image.header.extensions.append(nib.nifti1.Nifti1Extension(0, table.encode("utf-8")))
    nib.save(image, str(path))
    return path
