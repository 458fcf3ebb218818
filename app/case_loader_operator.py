"""CaseLoaderOperator: the input folder (or file) -> one case per compute call."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from shapeqc.batch import discover_cases


class CaseLoaderOperator(Operator):
    """Emits one case per ``compute``: ``{"case", "path", "index", "total"}``.

    Input forms are those of ``shapeqc analyse`` (a NIfTI file, a folder searched recursively, TotalSegmentator
    output trees); DICOM SEG files are converted first by :mod:`dicom_seg_input` (see ``app.py``). Schedule it
    with ``CountCondition(count=len(operator.cases))`` so that it runs once per case.

    Named output:
        case: dict, one case.
    """

    def __init__(self, fragment: Fragment, *args, cases: list[tuple[str, str]], **kwargs) -> None:
        self.cases = list(cases)
        self._next = 0
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    @staticmethod
    def discover(input_path: str | Path) -> list[tuple[str, str]]:
        """(case id, path) of every case under ``input_path``, as ``shapeqc analyse`` finds them."""
        return discover_cases([str(input_path)])

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("case")

    def compute(self, op_input, op_output, context) -> None:
        case, path = self.cases[self._next]
        self._logger.info(f"case {self._next + 1}/{len(self.cases)}: {case} ({path})")
        op_output.emit({"case": case, "path": path, "index": self._next, "total": len(self.cases)}, "case")
        self._next += 1
