"""ReportWriterOperator: analysis records -> the report files of ``shapeqc analyse``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from shapeqc.outputs.reports import write_atomic, write_reports


class ReportWriterOperator(Operator):
    """Journals each case's records as they arrive (``records.jsonl``, flushed: nothing finished is lost) and
    writes ``report.json``, ``report.csv``, ``errors.csv`` and ``report.html`` after the last case.

    Named input:
        records: dict from :class:`ShapeQCOperator`.
    """

    def __init__(self, fragment: Fragment, *args, output_path: str | Path, **kwargs) -> None:
        self.output_path = Path(output_path)
        self.records: list[dict] = []
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        write_atomic(self.output_path / "records.jsonl", "")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("records")

    def compute(self, op_input, op_output, context) -> None:
        received = op_input.receive("records")
        with (self.output_path / "records.jsonl").open("a") as journal:
            for record in received["records"]:
                journal.write(json.dumps(record) + "\n")
        self.records += received["records"]
        case = received["case"]
        if case["index"] == case["total"] - 1:
            written = write_reports(self.records, self.output_path)
            self._logger.info(f"{len(self.records)} records; report: {written['html']}")
