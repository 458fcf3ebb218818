"""A reviewer's verdicts against shapeqc's flags: what a site needs to trust or retune its thresholds.

``reviews.csv`` is what the review page exports (:data:`shapeqc.outputs.review_page.REVIEW_COLUMNS`): one row per organ
a reviewer judged, verdict ``accept``, ``reject`` or ``unsure``. Compared with the run's records (``OUT/report.json``):

- flag precision: of the flagged organs (status ``outlier``) the reviewer decided on (accept or reject), the
  fraction rejected;
- missed rejects: organs the reviewer rejected that shapeqc passed (status ``ok``);
- the 2 x 3 table of flag (outlier / ok) against verdict; rows of reviews.csv that match no judged record are counted
  and named, never silently dropped.

    shapeqc reviews OUT/ reviews.csv
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from shapeqc.outputs.reports import csv_text

VERDICTS = ("accept", "reject", "unsure")


def read_reviews(path: str | Path) -> list[dict]:
    """The rows of a reviews.csv (ValueError naming the file for a missing column or an unknown verdict)."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"case", "organ", "bundle", "verdict"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected the review page's export")
        # the export guards cells against formula injection ('-case); the ids compared are the values themselves
        rows = [{key: csv_text(value) if isinstance(value, str) else value for key, value in row.items()}
                for row in reader]
    for number, row in enumerate(rows, 2):
        if row["verdict"] not in VERDICTS:
            raise ValueError(f"{path}: line {number}: verdict {row['verdict']!r} is not one of {VERDICTS}")
    return rows


def compare_reviews(records: list[dict], reviews: list[dict]) -> dict:
    """Flag precision, missed rejects and the flag x verdict table (see the module doc)."""
    by_key = {(r["case"], r["organ"] or "", r["bundle"]): r for r in records if r["status"] in ("ok", "outlier")}
    table = {flag: dict.fromkeys(VERDICTS, 0) for flag in ("outlier", "ok")}
    unmatched, missed = [], []
    for row in reviews:
        record = by_key.get((row["case"], row["organ"], row["bundle"]))
        if record is None:
            unmatched.append(f"{row['case']}/{row['organ']} ({row['bundle']})")
            continue
        table[record["status"]][row["verdict"]] += 1
        if record["status"] == "ok" and row["verdict"] == "reject":
            missed.append(f"{row['case']}/{row['organ']} ({row['bundle']})")
    decided_flags = table["outlier"]["accept"] + table["outlier"]["reject"]
    decided_rejects = table["outlier"]["reject"] + table["ok"]["reject"]
    return {"reviewed": len(reviews) - len(unmatched), "table": table,
            "flag_precision": table["outlier"]["reject"] / decided_flags if decided_flags else None,
            "reject_recall": table["outlier"]["reject"] / decided_rejects if decided_rejects else None,
            "missed_rejects": missed, "unmatched": unmatched}


def reviews_text(result: dict) -> str:
    """The comparison as the lines ``shapeqc reviews`` prints."""
    def rate(value):
        return "n/a (no decided case)" if value is None else f"{value:.2f}"

    table = result["table"]
    lines = [f"{result['reviewed']} reviewed organs matched the run's judged records",
             "            accept  reject  unsure",
             *(f"{flag:<10}  {table[flag]['accept']:>6}  {table[flag]['reject']:>6}  {table[flag]['unsure']:>6}"
               for flag in ("outlier", "ok")),
             f"flag precision (flagged and rejected / flagged and decided): {rate(result['flag_precision'])}",
             f"rejects flagged (flagged and rejected / rejected): {rate(result['reject_recall'])}",
             f"missed rejects (passed by shapeqc, rejected by the reviewer): {len(result['missed_rejects'])}"]
    lines += [f"  {name}" for name in result["missed_rejects"]]
    if result["unmatched"]:
        lines.append(f"rows matching no judged record of this run: {len(result['unmatched'])}")
        lines += [f"  {name}" for name in result["unmatched"]]
    return "\n".join(lines)


def reviews_of_run(out_dir: str | Path, reviews_csv: str | Path) -> dict:
    """:func:`compare_reviews` of ``out_dir/report.json`` and ``reviews_csv``."""
    report = Path(out_dir) / "report.json"
    if not report.exists():
        raise ValueError(f"{report}: no report.json; give the output folder of a shapeqc analyse run")
    return compare_reviews(json.loads(report.read_text()), read_reviews(reviews_csv))
