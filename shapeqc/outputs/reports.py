"""Report files of a batch analysis: report.json, report.csv, errors.csv and report.html (the review page,
:mod:`shapeqc.outputs.review_page`, with the vendored viewer beside it), written atomically."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from shapeqc.outputs.records import records_json
from shapeqc.outputs.review_page import review_html
from shapeqc.outputs.viewer import copy_niivue
from shapeqc.scoring.thresholds import METRICS

# a spreadsheet reads a cell starting with one of these as a formula
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str:
    """A CSV cell that a spreadsheet shows as text: a value starting with ``= + - @`` (or a tab or carriage
    return) is prefixed with a single quote, as OWASP advises against formula injection; numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = str(value)
    return "'" + text if text[:1] in FORMULA_STARTS else text


def csv_text(cell: str) -> str:
    """The text a :func:`csv_cell` (or the review page's export, which applies the same guard) was made from: a
    leading single quote before ``= + - @`` (or a tab or carriage return) is the guard, not part of the value."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in FORMULA_STARTS else cell


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def report_csv(records: list[dict]) -> str:
    """One row per record and metric, with the research pipeline's columns first."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file path", "organ", "metric", "score", "threshold", "case", "bundle", "status", "outlier",
                     "reason", "predicted_dice", "predicted_dice_low", "predicted_dice_high",
                     # the share of held-out truths such an interval held (measured; blank: never measured)
                     "interval_coverage", "interval_coverage_basis"])
    for record in records:
        thresholds = (record.get("thresholds") or {}).get("metrics", {})
        quality = record.get("quality") or {}
        low, high = quality.get("interval") or (None, None)
        for metric in METRICS:
            score = (record.get("scores") or {}).get(metric)
            writer.writerow([csv_cell(v) for v in (
                record["input"], record["organ"], metric, score, thresholds.get(metric, {}).get("threshold"),
                record["case"], record["bundle"], record["status"], record["outlier"], record.get("reason"),
                quality.get("predicted_dice"), low, high, quality.get("coverage"), quality.get("coverage_basis"))])
    return out.getvalue()


def quality_text(record: dict) -> str:
    """``0.912 [0.850, 0.970]``: the predicted Dice and its interval, or "" without an estimate."""
    quality = record.get("quality") or {}
    if quality.get("predicted_dice") is None:
        return ""
    low, high = quality["interval"]
    return f"{quality['predicted_dice']:.3f} [{low:.3f}, {high:.3f}]"


def errors_csv(records: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file", "step", "organ", "error"])
    for record in records:
        if record["status"] in ("error", "not_judged"):
            writer.writerow([csv_cell(v) for v in (record["input"], record["status"], record["organ"],
                                                    record.get("reason"))])
    return out.getvalue()


def write_reports(records: list[dict], out_dir: str | os.PathLike) -> dict:
    out_dir = Path(out_dir)
    return {
        "json": str(write_atomic(out_dir / "report.json", records_json(records))),
        "csv": str(write_atomic(out_dir / "report.csv", report_csv(records))),
        "errors": str(write_atomic(out_dir / "errors.csv", errors_csv(records))),
        "html": str(write_atomic(out_dir / "report.html", review_html(records, out_dir))),
        "viewer": str(copy_niivue(out_dir)),
    }
