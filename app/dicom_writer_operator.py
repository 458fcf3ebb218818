"""DicomWriterOperator: for a DICOM SEG input whose source series came along, DICOM outputs beside the files."""

from __future__ import annotations

import logging
from pathlib import Path

from dicom_outputs import difference_seg, encapsulated_pdf, read_series, summary_pdf
from monai.deploy.core import Fragment, Operator, OperatorSpec


class DicomWriterOperator(Operator):
    """Writes, per organ with a difference map, ``<case>/<organ>/difference_seg.dcm`` (a DICOM SEG on the source
    series: segment "suspected over-segmentation" / "suspected under-segmentation") and per case
    ``<case>/shapeqc_summary.dcm`` (encapsulated PDF in the input's study); adds their paths to the records'
    ``outputs`` and passes the records on. Cases that are not DICOM pass unchanged.

    Named input:
        records: dict from ShapeQCOperator.
    Named output:
        records: the same dict.
    """

    def __init__(self, fragment: Fragment, *args, output_path: str | Path, **kwargs) -> None:
        self.output_path = Path(output_path)
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("records")
        spec.output("records")

    def compute(self, op_input, op_output, context) -> None:
        received = op_input.receive("records")
        case = received["case"]
        if case.get("dicom"):
            try:
                self.write(case, received["records"])
            except Exception as error:  # DICOM outputs are extras: the analysis records stand without them
                self._logger.error(f"{case['dicom']}: DICOM outputs not written ({type(error).__name__}: {error})")
        op_output.emit(received, "records")

    def write(self, case: dict, records: list[dict]) -> None:
        import pydicom

        folder = self.output_path / case["case"]
        folder.mkdir(parents=True, exist_ok=True)
        source = read_series(case["source_series"]) if case.get("source_series") else []
        for record in records:
            difference = record.get("outputs", {}).get("difference")
            if not difference:
                continue
            if not source:
                self._logger.warning(f"{case['dicom']}: source series not in the input; no DICOM SEG output")
                break
            segmentation = difference_seg(difference, source, record["organ"])
            if segmentation is not None:
                path = folder / str(record["organ"]) / "difference_seg.dcm"
                segmentation.save_as(str(path))
                record["outputs"]["dicom_seg"] = str(path)
        reference = source[0] if source else pydicom.dcmread(case["dicom"], stop_before_pixels=True)
        path = folder / "shapeqc_summary.dcm"
        encapsulated_pdf(summary_pdf(records), reference, f"shapeqc summary {case['case']}").save_as(
            str(path), enforce_file_format=True)
        for record in records:
            record["outputs"]["dicom_summary_pdf"] = str(path)
