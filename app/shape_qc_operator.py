"""ShapeQCOperator: every organ any trained bundle covers in one case -> analysis records."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from shapeqc.bundle.loading import load_trained_bundles
from shapeqc.outputs.records import error_record
from shapeqc.runs.cases import analyse_case


class ShapeQCOperator(Operator):
    """Loads every trained bundle under ``models_path`` once, at start-up, then analyses each case it receives
    with ``shapeqc``'s own analysis (the code ``shapeqc analyse`` runs: same records, same output files).

    Named input:
        case: dict from :class:`CaseLoaderOperator`.
    Named output:
        records: dict ``{"case": <the case>, "records": [record, ...]}``.
    """

    def __init__(self, fragment: Fragment, *args, models_path: str | Path, output_path: str | Path,
                 device: str = "auto", organ: str | None = None, **kwargs) -> None:
        import torch

        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self._logger.info(f"shape QC runs on {'the GPU' if device.startswith('cuda') else 'the CPU'} ({device})")
        self.bundles = load_trained_bundles([models_path], device, warn=self._logger.warning)
        if not self.bundles:
            raise ValueError(f"{models_path}: no trained shapeqc bundle (a bundle folder or a folder of bundles)")
        self._logger.info(f"bundles: {', '.join(b.name for b in self.bundles)}")
        self.output_path = Path(output_path)
        self.organ = organ
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("case")
        spec.output("records")

    def compute(self, op_input, op_output, context) -> None:
        case = op_input.receive("case")
        if "error" in case:  # an input that is no segmentation: one error record per bundle, the batch goes on
            records = [error_record(case["case"], case["path"], None, bundle.name, case["error"])
                       for bundle in self.bundles]
        else:
            records = analyse_case(case["case"], case["path"], self.bundles, self.output_path, organ=self.organ)
            for record in records:
                record["input"] = case.get("dicom", record["input"])  # name the file the user gave
        op_output.emit({"case": case, "records": records}, "records")
