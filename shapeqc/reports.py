"""Report files of a batch analysis: report.json, report.csv, errors.csv and report.html, written atomically."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from pathlib import Path

from shapeqc.analysis import METRICS


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
                     "reason"])
    for record in records:
        thresholds = (record.get("thresholds") or {}).get("metrics", {})
        for metric in METRICS:
            score = (record.get("scores") or {}).get(metric)
            writer.writerow([record["input"], record["organ"], metric, "" if score is None else score,
                             thresholds.get(metric, {}).get("threshold", ""), record["case"], record["bundle"],
                             record["status"], record["outlier"], record.get("reason") or ""])
    return out.getvalue()


def errors_csv(records: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file", "step", "organ", "error"])
    for record in records:
        if record["status"] in ("error", "not_judged"):
            writer.writerow([record["input"], record["status"], record["organ"], record.get("reason") or ""])
    return out.getvalue()


def report_html(records: list[dict], out_dir: Path) -> str:
    counts = {status: sum(r["status"] == status for r in records) for status in ("ok", "outlier", "not_judged",
                                                                                   "error")}
    rows = []
    for record in sorted(records, key=lambda r: (r["case"], r["organ"] or "")):
        scores = record.get("scores") or {}
        image = record.get("outputs", {}).get("overview")
        thumbnail = (f'<img src="{html.escape(os.path.relpath(image, out_dir))}" height="90">' if image else "")
        cells = [record["case"], record["organ"] or "", record["status"], record.get("reason") or ""]
        cells += [f"{scores[m]:.3f}" if m in scores else "" for m in METRICS]
        row = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + f"<td>{thumbnail}</td>"
        rows.append(f'<tr class="{html.escape(record["status"])}">{row}</tr>')
    header = "".join(f"<th onclick='sortBy({i})'>{h}</th>" for i, h in enumerate(
        ["case", "organ", "status", "reason", *METRICS, "overview"]))
    summary = (f"{len({r['case'] for r in records})} cases, {len(records)} organs: {counts['ok']} ok, "
               f"{counts['outlier']} outliers, {counts['not_judged']} not judged, {counts['error']} errors")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>shapeqc report</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px}}
th{{cursor:pointer;background:#eee}}tr.outlier{{background:#fde2e2}}tr.error{{background:#eee;color:#666}}
tr.not_judged{{background:#fff6d5}}</style>
<script>function sortBy(c){{const t=document.querySelector('tbody');const r=[...t.rows];
const d=t.dataset.d==c?-1:1;t.dataset.d=d==1?c:'';
r.sort((a,b)=>{{const x=a.cells[c].innerText,y=b.cells[c].innerText;const n=parseFloat(x)-parseFloat(y);
return d*(isNaN(n)?x.localeCompare(y):n)}});r.forEach(e=>t.appendChild(e))}}</script></head><body>
<h1>shapeqc report</h1><p>{html.escape(summary)}</p>
<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>
"""


def write_reports(records: list[dict], out_dir: str | os.PathLike) -> dict:
    out_dir = Path(out_dir)
    return {
        "json": str(write_atomic(out_dir / "report.json", json.dumps(records, indent=1))),
        "csv": str(write_atomic(out_dir / "report.csv", report_csv(records))),
        "errors": str(write_atomic(out_dir / "errors.csv", errors_csv(records))),
        "html": str(write_atomic(out_dir / "report.html", report_html(records, out_dir))),
    }
