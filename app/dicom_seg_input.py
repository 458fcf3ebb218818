"""DICOM SEG input: find DICOM files, check they are segmentations, turn each into a labelled NIfTI.

A DICOM SEG becomes a NIfTI label map (segment number -> voxel value) with a Caret XML label table naming each
segment, so that shapeqc's loaders take it like a TotalSegmentator v2 map. Segment labels are matched to
TotalSegmentator organ names ("Adrenal gland left", "adrenal_gland_left" -> ``adrenal_gland_left``).
Orientation: highdicom gives the volume in DICOM patient coordinates (LPS); NIfTI wants RAS, so x and y of the
affine change sign.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shapeqc.transforms.class_maps import class_map
from shapeqc.transforms.volume_io import LPS_TO_RAS, write_volume


class NotADicomSegError(ValueError):
    """A DICOM file that is not a segmentation (e.g. a CT image), or a SEG that cannot be read."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def is_dicom_file(path: str | Path) -> bool:
    """True for a DICOM Part 10 file (the "DICM" marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def find_dicom_files(input_path: str | Path) -> list[Path]:
    """DICOM files at ``input_path`` (a file, or a folder searched recursively), sorted."""
    input_path = Path(input_path)
    candidates = [input_path] if input_path.is_file() else sorted(p for p in input_path.rglob("*") if p.is_file())
    return [p for p in candidates if is_dicom_file(p)]


def read_dicom_header(path: str | Path):
    """The DICOM header without pixels, or None when pydicom cannot read it."""
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:
        return None


def referenced_series_uids(header) -> set[str]:
    """SeriesInstanceUIDs a SEG header references (its source images' series)."""
    return {str(item.SeriesInstanceUID) for item in getattr(header, "ReferencedSeriesSequence", [])}


def organ_name(segment_label: str) -> str:
    """A segment label as a TotalSegmentator organ name where one matches (case aside: "vertebrae T11" ->
    ``vertebrae_T11``, "Left adrenal gland" -> ``adrenal_gland_left``), else the label in snake case."""
    snake = re.sub(r"[^0-9a-z]+", "_", segment_label.strip().lower()).strip("_")
    known = {name.lower(): name for name in set(class_map("v1").values()) | set(class_map("v2").values())}
    if snake in known:
        return known[snake]
    for side in ("left", "right"):
        moved = f"{snake[len(side) + 1:]}_{side}"
        if snake.startswith(side + "_") and moved in known:
            return known[moved]
    return snake


def dicom_seg_to_nifti(path: str | Path, out_path: str | Path,
                       source_series: list[str | Path] | None = None) -> tuple[Path, dict[int, str]]:
    """Convert one DICOM SEG to a labelled NIfTI; returns (NIfTI path, segment number -> organ name).

    A SEG may omit frames where no segment is present (highdicom does by default), so its own volume can end
    at the organ's last slice, which the analysis would read as an organ cut by the scan border. With
    ``source_series`` (the files of the segmented image series), the label map is placed on that series' full
    grid; without it, on the SEG's own frames. Raises NotADicomSegError for any other DICOM (the reason names
    its modality) or an unreadable SEG.
    """
    import highdicom as hd
    import pydicom

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as error:
        raise NotADicomSegError(path, f"unreadable DICOM ({type(error).__name__}: {error})") from error
    modality = getattr(header, "Modality", None)
    if modality != "SEG":
        raise NotADicomSegError(path, f"not a DICOM SEG (Modality {modality}): only segmentations can be judged")
    try:
        segmentation = hd.seg.segread(str(path))
        names = {int(n): organ_name(segmentation.get_segment_description(n).segment_label)
                 for n in segmentation.segment_numbers}
        volume = segmentation.get_volume(combine_segments=True, relabel=False, skip_overlap_checks=False)
        if source_series:
            source = [pydicom.dcmread(str(p)) for p in source_series]
            volume = volume.match_geometry(hd.get_volume_from_series(source).get_geometry())
    except Exception as error:
        raise NotADicomSegError(path, f"unreadable DICOM SEG ({type(error).__name__}: {error})") from error
    labels = np.asarray(volume.array).astype(np.uint16 if max(names, default=0) > 255 else np.uint8)
    return write_volume(out_path, labels, LPS_TO_RAS @ np.asarray(volume.affine), names), names
