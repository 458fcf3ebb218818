"""CaseLoaderOperator: the input folder (or file) -> one case per compute call."""

from __future__ import annotations

import logging
from pathlib import Path

from dicom_seg_input import (
    NotADicomSegError,
    dicom_seg_to_nifti,
    find_dicom_files,
    read_dicom_header,
    referenced_series_uids,
)
from monai.deploy.core import Fragment, Operator, OperatorSpec

from shapeqc.runs.cases import discover_cases


class CaseLoaderOperator(Operator):
    """Emits one case per ``compute``: ``{"case", "path", "index", "total"}``.

    Input forms are those of ``shapeqc analyse`` (a NIfTI file, a folder searched recursively, TotalSegmentator
    output trees) and DICOM SEG files (converted first by :mod:`dicom_seg_input`). Schedule it
    with ``CountCondition(count=len(operator.cases))`` so that it runs once per case.

    Named output:
        case: dict, one case.
    """

    def __init__(self, fragment: Fragment, *args, cases: list[dict], **kwargs) -> None:
        self.cases = list(cases)
        self._next = 0
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    @staticmethod
    def discover(input_path: str | Path, converted_dir: str | Path) -> list[dict]:
        """Every case under ``input_path``: ``{"case", "path"}`` as ``shapeqc analyse`` finds NIfTI inputs, plus
        each DICOM SEG converted to a labelled NIfTI in ``converted_dir`` (``"dicom": <SEG path>``,
        ``"source_series"``: the input's images of the series the SEG references, for DICOM outputs); a DICOM
        file that is neither a SEG nor an image of a segmented series becomes ``{"case", "path", "error"}``."""
        cases = [{"case": case, "path": path} for case, path in discover_cases([str(input_path)])]
        segmentations, others = [], {}
        for dicom in find_dicom_files(input_path):
            header = read_dicom_header(dicom)
            if header is not None and getattr(header, "Modality", None) == "SEG":
                segmentations.append((dicom, referenced_series_uids(header)))
            else:
                others[dicom] = header
        referenced = set().union(*(uids for _, uids in segmentations)) if segmentations else set()
        for dicom, uids in segmentations:
            case = dicom.name.removesuffix(".dcm")
            source = sorted(str(p) for p, h in others.items() if h is not None and h.SeriesInstanceUID in uids)
            try:
                converted, _ = dicom_seg_to_nifti(dicom, Path(converted_dir) / f"{case}.nii.gz", source)
            except NotADicomSegError as error:
                cases.append({"case": case, "path": str(dicom), "error": f"dicom: {error}"})
                continue
            cases.append({"case": case, "path": str(converted), "dicom": str(dicom), "source_series": source})
        for dicom, header in others.items():  # images of a segmented series are sources, anything else an error
            if header is not None and getattr(header, "SeriesInstanceUID", None) in referenced:
                continue
            modality = None if header is None else getattr(header, "Modality", None)
            reason = ("unreadable DICOM" if header is None
                      else f"not a DICOM SEG (Modality {modality}): only segmentations can be judged")
            cases.append({"case": dicom.name.removesuffix(".dcm"), "path": str(dicom),
                          "error": f"dicom: {NotADicomSegError(dicom, reason)}"})
        return cases

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("case")

    def compute(self, op_input, op_output, context) -> None:
        case = self.cases[self._next]
        self._logger.info(f"case {self._next + 1}/{len(self.cases)}: {case['case']} ({case['path']})")
        op_output.emit({**case, "index": self._next, "total": len(self.cases)}, "case")
        self._next += 1
