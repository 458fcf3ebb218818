"""shapeqc as a MONAI Deploy application: segmentations in, shape-QC reports out.

    python app -i INPUT -o OUTPUT -m MODELS        # or HOLOSCAN_INPUT_PATH / _OUTPUT_PATH / _MODEL_PATH

INPUT: a NIfTI segmentation, a folder of them (recursive), TotalSegmentator output trees, or DICOM SEG files.
MODELS: a shapeqc
bundle folder or a folder of bundles (the repository's ``bundles/``). OUTPUT: what ``shapeqc analyse`` writes
(per-organ NIfTI/STL/PNG, report.json/.csv/.html, errors.csv, records.jsonl).

Operators: CaseLoaderOperator (one case per call) -> ShapeQCOperator (bundles loaded once; shapeqc's analysis)
-> DicomWriterOperator (DICOM SEG of the difference map + PDF summary, for DICOM SEG inputs) ->
ReportWriterOperator (journal per case, reports after the last).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from case_loader_operator import CaseLoaderOperator
from dicom_writer_operator import DicomWriterOperator
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from report_writer_operator import ReportWriterOperator
from shape_qc_operator import ShapeQCOperator

from shapeqc.outputs.reports import write_reports
from shapeqc.runs.journal import OutputLock, holds_records, move_aside
from shapeqc.runs.threads import WAIT_POLICY


class ShapeQCApp(Application):
    """Compose: loader -> shape QC -> report writer."""

    def compose(self) -> None:
        logger = logging.getLogger(type(self).__name__)
        context = Application.init_app_context(self.argv)
        input_path, output_path = Path(context.input_path), Path(context.output_path)
        output_path.mkdir(parents=True, exist_ok=True)
        # one run owns the output folder for the app's life (the kernel drops the lock when the process ends), and
        # an earlier run's records are moved aside, never overwritten (shapeqc analyse --overwrite does the same)
        self._output_lock = OutputLock(output_path).__enter__()
        if holds_records(output_path):
            logger.warning(f"{output_path} held an earlier run: moved to {move_aside(output_path)}")
        cases = CaseLoaderOperator.discover(input_path, output_path / "dicom_inputs")
        import torch

        logger.info(f"{len(cases)} case(s) under {input_path}; models {context.model_path}; output {output_path}; "
                    f"{torch.get_num_threads()} thread(s), OpenMP waiting "
                    f"{os.environ.get(WAIT_POLICY, '?').lower()}")
        if not cases:
            write_reports([], output_path)  # an empty but complete report, not a silent nothing
        loader = CaseLoaderOperator(self, CountCondition(self, len(cases)), cases=cases,
                                    name="case_loader")
        shape_qc = ShapeQCOperator(self, models_path=context.model_path, output_path=output_path,
                                   device=os.environ.get("SHAPEQC_DEVICE", "auto"),
                                   organ=os.environ.get("SHAPEQC_ORGAN") or None, name="shape_qc")
        dicom_writer = DicomWriterOperator(self, output_path=output_path, name="dicom_writer")
        writer = ReportWriterOperator(self, output_path=output_path, name="report_writer")
        self.add_flow(loader, shape_qc, {("case", "case")})
        self.add_flow(shape_qc, dicom_writer, {("records", "records")})
        self.add_flow(dicom_writer, writer, {("records", "records")})
