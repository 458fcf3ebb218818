"""A run's output folder: one run owns it at a time (:class:`OutputLock`), its journal ``records.jsonl`` keeps every
finished case, and ``--resume`` keeps a case only while what its records depend on is unchanged (:func:`resume_key`).

The records of a case are appended to the journal together as soon as the case is finished (each carries
``case_records``, the case's record count), so an interrupted run loses nothing finished and a resumed run redoes
only cases whose records are not all there (:func:`load_done`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from shapeqc.bundle.loading import Bundle

# the lock file of an output folder, and where --overwrite moves an earlier run
LOCK_FILE = ".shapeqc.lock"

PREVIOUS_RUNS = "previous_runs"

class OutputLockedError(RuntimeError):
    """Another run owns the output folder."""

class OutputInUseError(RuntimeError):
    """The output folder holds records of an earlier run, and neither --resume nor --overwrite was given."""

class OutputLock:
    """Ownership of an output folder by one run: an exclusive ``flock`` on ``OUT/.shapeqc.lock``.

    The kernel holds the lock for the process and drops it when the process ends, however it ends, so a lock is
    never stale and never taken over; the file itself is never removed (removing and re-creating a lock file is
    how two runs come to own one folder). The file names the owner (pid, host, start) for the message a second
    run gets.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str = LOCK_FILE) -> None:
        self.path = Path(out_dir) / name
        self._handle = None

    def __enter__(self) -> OutputLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except ValueError:
                holder = {}
            handle.close()
            raise OutputLockedError(
                f"{self.path.parent} is in use by shapeqc pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                f"since {holder.get('started', '?')}: wait for that run or use another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None

def input_signature(path: str | os.PathLike) -> list:
    """What identifies an input's content cheaply: [name, size, mtime in ns] of the file, or of every file of a
    per-organ folder (sorted). A case whose signature changed is analysed again by ``--resume``."""
    path = Path(path)
    try:
        if path.is_dir():
            return [[p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
                    for p in sorted(path.rglob("*")) if p.is_file()]
        return [[str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]]
    except OSError:
        return [[str(path), None, None]]

def resume_key(path: str, bundles: list[Bundle], organ: str | None, map_version: str) -> str:
    """sha256 of what a case's records depend on: its input file(s) (:func:`input_signature`), every bundle's
    name and digest, ``--organ`` and the map version. Every record carries it; ``--resume`` keeps a finished case
    only while its key is unchanged."""
    import hashlib

    content = {"input": input_signature(path), "bundles": sorted((b.name, b.digest or "") for b in bundles),
               "organ": organ, "map_version": map_version}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

def holds_records(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds the records of a run (a non-empty journal or a report)."""
    journal = out_dir / "records.jsonl"
    return (journal.exists() and journal.stat().st_size > 0) or (out_dir / "report.json").exists()

def move_aside(out_dir: Path) -> Path:
    """Move everything an earlier run left in ``out_dir`` (journal, reports, case folders) into
    ``out_dir/previous_runs/<time>/``, deleting nothing; the lock file stays. Returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out_dir / PREVIOUS_RUNS / stamp
    number = 2
    while target.exists():
        target, number = out_dir / PREVIOUS_RUNS / f"{stamp}-{number}", number + 1
    target.mkdir(parents=True)
    for entry in sorted(out_dir.iterdir()):
        if entry.name not in (PREVIOUS_RUNS, LOCK_FILE):
            os.replace(entry, target / entry.name)
    return target

def load_done(journal: Path) -> dict[str, list[dict]]:
    """Records of the cases finished in a journal, by case: a case counts only when all its ``case_records``
    lines are there (a kill can cut the last write)."""
    by_case: dict[str, list[dict]] = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that case is redone
            by_case.setdefault(record["case"], []).append(record)
    return {case: records for case, records in by_case.items()
            if len(records) == records[0].get("case_records", len(records))}
