"""Report files of a batch analysis: report.json, report.csv, errors.csv and report.html, written atomically."""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path

from shapeqc.records import records_json
from shapeqc.thresholds import METRICS


def csv_cell(value) -> str:
    """A CSV cell that a spreadsheet shows as text: a value starting with ``= + - @`` (or a tab or carriage
    return) is prefixed with a single quote, as OWASP advises against formula injection; numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


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
                     "reason", "predicted_dice", "predicted_dice_low", "predicted_dice_high"])
    for record in records:
        thresholds = (record.get("thresholds") or {}).get("metrics", {})
        quality = record.get("quality") or {}
        low, high = quality.get("interval") or (None, None)
        for metric in METRICS:
            score = (record.get("scores") or {}).get(metric)
            writer.writerow([csv_cell(v) for v in (
                record["input"], record["organ"], metric, score, thresholds.get(metric, {}).get("threshold"),
                record["case"], record["bundle"], record["status"], record["outlier"], record.get("reason"),
                quality.get("predicted_dice"), low, high)])
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


def _organ_row(record: dict, out_dir: Path) -> str:
    scores = record.get("scores") or {}
    image = record.get("outputs", {}).get("overview")
    thumbnail = (f'<img src="{html.escape(os.path.relpath(image, out_dir))}" height="90">' if image else "")
    cells = [record["organ"] or "", record["bundle"], record["status"], record.get("reason") or ""]
    cells += [f"{scores[m]:.3f}" if scores.get(m) is not None else "" for m in METRICS]
    cells += [quality_text(record)]
    row = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + f"<td>{thumbnail}</td>"
    return f'<tr class="{html.escape(record["status"])}">{row}</tr>'


def _status_counts(records: list[dict]) -> dict[str, int]:
    return {status: sum(r["status"] == status for r in records) for status in ("ok", "outlier", "not_judged", "error")}


def report_html(records: list[dict], out_dir: Path) -> str:
    """The batch as HTML: a summary per organ over all cases, then one table per case (cases with outliers
    first), one row per organ and bundle with its scores, predicted Dice and overview image (a click on a column
    head sorts by it: the predicted Dice puts the worst organ first)."""
    counts = _status_counts(records)
    by_case: dict[str, list[dict]] = {}
    for record in records:
        by_case.setdefault(record["case"], []).append(record)
    by_organ: dict[str, list[dict]] = {}
    for record in records:
        by_organ.setdefault(f"{record['organ'] or ''} ({record['bundle']})", []).append(record)
    organ_rows = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{n}</td>" for n in _status_counts(group).values())
        + "</tr>" for name, group in sorted(by_organ.items()))
    header = "".join(f"<th onclick='sortBy(this,{i})'>{h}</th>" for i, h in enumerate(
        ["organ", "bundle", "status", "reason", *METRICS, "predicted Dice [interval]", "overview"]))
    sections = []
    for case, group in sorted(by_case.items(), key=lambda kv: (-_status_counts(kv[1])["outlier"], kv[0])):
        case_counts = _status_counts(group)
        line = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in case_counts.items() if n)
        rows = "".join(_organ_row(r, out_dir) for r in sorted(group, key=lambda r: (r["organ"] or "", r["bundle"])))
        sections.append(f'<h2 id="{html.escape(case)}">{html.escape(case)}</h2><p>{html.escape(line)}</p>'
                        f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>")
    summary = (f"{len(by_case)} cases, {len(records)} organs: {counts['ok']} ok, "
               f"{counts['outlier']} outliers, {counts['not_judged']} not judged, {counts['error']} errors")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>shapeqc report</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px}}
th{{cursor:pointer;background:#eee}}tr.outlier{{background:#fde2e2}}tr.error{{background:#eee;color:#666}}
tr.not_judged{{background:#fff6d5}}</style>
<script>function sortBy(h,c){{const t=h.closest('table').tBodies[0];const r=[...t.rows];
const d=t.dataset.d==c?-1:1;t.dataset.d=d==1?c:'';
r.sort((a,b)=>{{const x=a.cells[c].innerText,y=b.cells[c].innerText;const n=parseFloat(x)-parseFloat(y);
return d*(isNaN(n)?x.localeCompare(y):n)}});r.forEach(e=>t.appendChild(e))}}</script></head><body>
<h1>shapeqc report</h1><p>{html.escape(summary)}</p>
<h2>By organ</h2><table class="organs"><thead><tr><th>organ (bundle)</th><th>ok</th><th>outlier</th>
<th>not judged</th><th>error</th></tr></thead><tbody>{organ_rows}</tbody></table>
<h2>By case</h2>{''.join(sections)}</body></html>
"""


def write_reports(records: list[dict], out_dir: str | os.PathLike) -> dict:
    out_dir = Path(out_dir)
    return {
        "json": str(write_atomic(out_dir / "report.json", records_json(records))),
        "csv": str(write_atomic(out_dir / "report.csv", report_csv(records))),
        "errors": str(write_atomic(out_dir / "errors.csv", errors_csv(records))),
        "html": str(write_atomic(out_dir / "report.html", report_html(records, out_dir))),
    }
