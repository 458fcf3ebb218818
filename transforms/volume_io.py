"""Reading and validating segmentation volumes from disk.

One read of a file gives a :class:`VolumeFile` (as nnU-Net's readers do: the array with its properties):
``array`` (D, H, W) in the file's voxel order, ``affine`` (4, 4) float64 mapping voxel indices (voxel centres at
integer indices, the NIfTI convention) to scanner millimetres in RAS+ (nibabel's convention for NIfTI), and the
label table of its header, if any. The header is checked before any voxel is allocated: a volume claiming more
voxels than :data:`MAX_VOXELS`, or more bytes than its file could hold or decompress to, is unreadable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
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
# the largest volume shapeqc reads: 1024^3 voxels (a whole-body CT at 0.5 mm is about 1000 x 1000 x 2000 / 2)
MAX_VOXELS = 1024**3
# gzip's deflate cannot expand data by more than about 1032:1; a header claiming more is lying
MAX_GZIP_RATIO = 1032
NRRD_SUFFIXES = (".nrrd", ".nhdr")
# NRRD (like DICOM) states positions in LPS; NIfTI and this project use RAS
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_nrrd_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NRRD_SUFFIXES)


def check_claimed_size(path: Path, shape, itemsize: int, compressed: bool) -> None:
    """UnreadableImageError when a header's ``shape`` and voxel size cannot be what the file holds: over
    :data:`MAX_VOXELS`, or more bytes than the file (``compressed``: the file times :data:`MAX_GZIP_RATIO`)."""
    voxels = int(np.prod([int(s) for s in shape], dtype=np.float64))
    claimed = voxels * int(itemsize)
    if voxels > MAX_VOXELS:
        raise UnreadableImageError(path, f"header claims {voxels:,} voxels ({'x'.join(map(str, shape))}), over "
                                         f"shapeqc's limit of {MAX_VOXELS:,}")
    available = path.stat().st_size * (MAX_GZIP_RATIO if compressed else 1)
    if claimed > available:
        raise UnreadableImageError(path, f"header claims {claimed:,} bytes of voxels ({'x'.join(map(str, shape))}) "
                                         f"but the file has {path.stat().st_size:,} bytes: truncated or corrupt")


def _first_line(error: Exception) -> str:
    """One line saying what went wrong: the first line of an exception's message, or for ITK's multi-line C++
    dumps (which open with a source location) their ``Description:`` line, else their last, most specific line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    described = [line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("description:")]
    if described:
        return described[0][:300]
    if len(lines) > 1 and re.search(r"\.(cxx|cpp|hxx|h):\d+:?$", lines[0]):
        return re.sub(r"^\[\w+\]\s*", "", lines[-1])[:300]
    return lines[0][:300]


def _nrrd_encoding(path: Path) -> str:
    """The ``encoding`` field of an attached NRRD header (raw, gzip, bzip2, ascii, ...); "unknown" if absent."""
    with path.open("rb") as handle:
        header = handle.read(65536).split(b"\n\n", 1)[0]
    for line in header.splitlines():
        if line.lower().startswith(b"encoding:"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace").lower()
    return "unknown"


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed like the NRRD's own axes (i, j, k), RAS affine) through ITK, which reads the NRRD
    ``space`` (LPS, RAS, ...) into its LPS physical space."""
    import itk

    reader = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if reader is None:
        raise ValueError("ITK has no reader for this file")
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    shape = [reader.GetDimensions(axis) for axis in range(reader.GetNumberOfDimensions())]
    if path.suffix.lower() != ".nhdr":  # a detached header's voxels are in another file
        check_claimed_size(path, shape, reader.GetComponentSize() * reader.GetNumberOfComponents(),
                           _nrrd_encoding(path) != "raw")
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


@dataclass(frozen=True)
class VolumeFile:
    """One read of a NIfTI or NRRD file: everything shapeqc needs of it, so no input is read twice.

    Attributes:
        path: the file.
        array: (D, H, W) voxel values, validated (3D, finite, numeric).
        affine: (4, 4) float64, voxel index -> scanner mm (RAS+), validated.
        label_names: {label id: name} from the header's label table (TotalSegmentator v2 writes one), else None.
    """

    path: Path
    array: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str] | None

    @cached_property
    def values(self) -> np.ndarray:
        """The distinct voxel values, sorted (computed once: every bundle's organ planning asks for them)."""
        array = self.array
        if array.dtype.kind in "biu" and array.size:
            # a binary mask (most inputs) is told by its extremes, without a pass that sorts or hashes every voxel
            low, high = array.min(), array.max()
            if int(high) - int(low) <= 1:
                return np.unique(np.array([low, high], dtype=array.dtype))
        # in memory order: NIfTI arrays are Fortran-ordered, and a C-order copy of a CT costs more than the count
        return np.unique(array.ravel(order="K"))

    @cached_property
    def map_version(self) -> str:
        """The TotalSegmentator class map ("v1" or "v2") this file would be read with as a multi-label map, detected
        once per read (:func:`shapeqc.transforms.class_maps.detect_map_version`: every bundle and organ asks)."""
        from shapeqc.transforms.class_maps import detect_map_version

        return detect_map_version(self.array.astype(np.int32, copy=False), self.affine, self.label_names)

    def __str__(self) -> str:
        return str(self.path)


def _label_table(image, path: Path) -> dict[int, str] | None:
    """Label id -> name from a NIfTI header's Caret XML label table, if any; a table that cannot be read (bad XML,
    a key that is not a whole number) is UnreadableImageError, since its labels would decide the organs."""
    import xml.etree.ElementTree as ET

    for extension in image.header.extensions:
        # the raw bytes: get_content() would hand a CIFTI-coded extension to nibabel's own CIFTI parser
        content = extension.content if hasattr(extension, "content") else extension.get_content()
        if not isinstance(content, bytes) or b"<LabelTable>" not in content:
            continue
        try:
            root = ET.fromstring(content.decode("utf-8", errors="replace").strip())
            names = {int(label.get("Key")): (label.text or "").strip() for label in root.iter("Label")}
        except (ET.ParseError, TypeError, ValueError) as exc:
            raise UnreadableImageError(path, f"the header's label table cannot be read ({type(exc).__name__}: "
                                             f"{_first_line(exc)})") from None
        return {key: name for key, name in names.items() if key != 0 and name}
    return None


def read_volume_file(path: str | os.PathLike) -> VolumeFile:
    """Read one NIfTI or NRRD file once: array, affine and label table, validated (see :class:`VolumeFile`).

    Raises:
        MissingFileError, UnreadableImageError, NotVolumeError, NaNValuesError, InvalidAffineError.
    """
    import nibabel as nib  # lazy: keeps `import shapeqc.transforms` fast

    path = Path(path)
    if not path.exists():
        raise MissingFileError(path, "file does not exist")
    if path.is_dir():
        raise UnreadableImageError(path, "is a folder, expected a NIfTI or NRRD file")
    label_names = None
    kind = "NRRD" if is_nrrd_path(path) else "NIfTI"
    try:
        if is_nrrd_path(path):
            array, affine = _read_nrrd(path)
        else:
            image = nib.load(str(path))
            check_claimed_size(path, image.shape, image.get_data_dtype().itemsize,
                               str(path).lower().endswith(".gz"))
            label_names = _label_table(image, path)
            array = np.asanyarray(image.dataobj)
            affine = image.affine
    except UnreadableImageError:
        raise
    except MemoryError:
        raise UnreadableImageError(path, f"not enough memory to read it as {kind}") from None
    except Exception as exc:  # nibabel and ITK raise many types (ImageFileError, EOFError, zlib.error, ...)
        raise UnreadableImageError(path, f"cannot read as {kind} ({type(exc).__name__}: {_first_line(exc)})") from None
    if affine is None:
        raise InvalidAffineError(path, "file has no voxel-to-world affine")
    return VolumeFile(path, validate_volume(array, path), validate_affine(affine, path), label_names)


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one NIfTI or NRRD file into ``(array (D, H, W), affine (4, 4) float64, RAS)``, validated
    (:func:`read_volume_file` without the label table)."""
    volume = read_volume_file(path)
    return volume.array, volume.affine


def read_label_names(path: str | os.PathLike) -> dict[int, str] | None:
    """Label id -> name from a NIfTI header's Caret XML label table (TotalSegmentator v2 writes one), if any
    (UnreadableImageError for a table that cannot be read)."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception:
        return None
    return _label_table(image, Path(path))


def binary_mask(array: np.ndarray, path: str | os.PathLike | None, values: np.ndarray | None = None) -> np.ndarray:
    """Return ``array`` as a bool mask if it only holds 0 and 1; raise NonBinaryMaskError otherwise. ``values``:
    its distinct values when already known (:attr:`VolumeFile.values`)."""
    if array.dtype == bool:
        return array
    values = np.unique(array) if values is None else values
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
