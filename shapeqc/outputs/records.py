"""The analysis record, defined once: what ``records.jsonl``, ``report.json``, ``report.csv``, ``report.html`` and
the Deploy app read and write.

One record per case, organ and bundle. ``status`` is ``ok``, ``outlier``, ``not_judged`` (with a ``reason``:
truncated, empty, uncalibrated, organ absent or unknown) or ``error`` (the reason names the file and what is wrong).
Records serialise as strict JSON (:func:`record_json`): a non-finite score is written as ``null`` and named in
``reason``, so that JavaScript's ``JSON.parse`` and every other strict reader accept ``report.json``.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypedDict

STATUSES = ("ok", "outlier", "not_judged", "error")


class Record(TypedDict):
    """One organ of one case judged by one bundle (all fields always present)."""

    case: str  # case id: the input's path below its input root, unique in a run, safe as a folder name
    input: str  # the file or folder the user gave
    organ: str | None
    bundle: str  # bundle folder name; several names joined by ", " for a case no bundle could take
    bundle_digest: str | None  # sha256 over every file of the bundle folder (shapeqc.bundle.trust.bundle_digest)
    status: str  # one of STATUSES
    reason: str | None
    outlier: bool | None
    scores: dict[str, float | None] | None  # {dice, asd_mm, hd95_mm, max_sd_mm}, distances in mm
    thresholds: dict | None  # the calibration profile judged against
    defects: list[dict]  # connected components of the difference map, largest first
    # predicted Dice of the segmentation against a correct one: {predicted_dice, interval [low, high], coverage (the
    # share of held-out truths such intervals held, measured; None: never measured), coverage_basis, rank_by (what the
    # worklist sorts by), features} (shapeqc.scoring.quality); None when not judged or the bundle has no estimator
    # (then a warning says so)
    quality: dict | None
    warnings: list[str]  # what the user should know that does not change the status (e.g. no quality estimate)
    outputs: dict[str, str | None]  # paths of the written files
    timings: dict[str, float | int]  # seconds per step
    seconds: float | None
    case_records: int  # how many records the case produced: resume redoes a case whose journal lacks some
    # sha256 of the case's input file(s), the bundles' digests, --organ and map version
    # (shapeqc.runs.journal.resume_key):
    # resume keeps the case only while it is unchanged
    resume_key: str | None


def new_record(case: str, source: Any, organ: str | None, bundle: str, digest: str | None = None) -> Record:
    """An empty record (status None) to be filled by the analysis."""
    return Record(case=case, input=str(source), organ=organ, bundle=bundle, bundle_digest=digest, status=None,
                  reason=None, outlier=None, scores=None, thresholds=None, defects=[], quality=None, warnings=[],
                  outputs={}, timings={}, seconds=None, case_records=1, resume_key=None)


def error_record(case: str, source: Any, organ: str | None, bundle: str, reason: str,
                 status: str = "error", digest: str | None = None) -> Record:
    """A record for a case or organ that failed before it could be judged (or, with ``status="not_judged"``,
    that is not for these bundles)."""
    record = new_record(case, source, organ, bundle, digest)
    record.update(status=status, reason=reason, seconds=0.0)
    return record


def strict(record: dict) -> dict:
    """``record`` with non-finite scores replaced by None and named in ``reason`` (strict JSON has no Infinity)."""
    scores = record.get("scores")
    if not scores:
        return record
    bad = [name for name, value in scores.items() if isinstance(value, float) and not math.isfinite(value)]
    if not bad:
        return record
    note = "non-finite " + ", ".join(bad) + " written as null"
    return {**record, "scores": {k: (None if k in bad else v) for k, v in scores.items()},
            "reason": f"{record['reason']}; {note}" if record.get("reason") else note}


def record_json(record: dict, indent: int | None = None) -> str:
    """One record as strict JSON (``allow_nan=False``: a stray NaN anywhere fails loudly instead of writing NaN)."""
    return json.dumps(strict(record), indent=indent, allow_nan=False)


def records_json(records: list[dict]) -> str:
    """``report.json``: the list of records, strict JSON."""
    return json.dumps([strict(r) for r in records], indent=1, allow_nan=False)
