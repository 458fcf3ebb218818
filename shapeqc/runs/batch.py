"""Batch analysis: every case of the inputs (:mod:`shapeqc.runs.cases`), one after the other or as Dask tasks
(:mod:`shapeqc.runs.cohort`), journalled as each finishes (:mod:`shapeqc.runs.journal`); a failing case is an
``error`` record and the batch goes on; the reports are written at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from shapeqc.bundle.loading import Bundle
from shapeqc.outputs.records import Record, record_json
from shapeqc.outputs.reports import write_atomic, write_reports
from shapeqc.runs.cases import analyse_case, discover_cases, known_organ
from shapeqc.runs.journal import (
    PREVIOUS_RUNS,
    OutputInUseError,
    OutputLock,
    holds_records,
    load_done,
    move_aside,
    resume_key,
)


class ImageArgumentError(ValueError):
    """``--image`` given for inputs holding other than one case."""


def run_batch(inputs: list[str], bundles: list[Bundle], out_dir: str | os.PathLike, organ: str | None = None,
              resume: bool = False, map_version: str = "auto", progress: bool = True,
              scheduler: str | None = None, retries: int = 3, notes: list[str] | None = None,
              client=None, image: str | None = None, overwrite: bool = False,
              threads: int | None = None) -> list[Record]:
    """Analyse every case; write per-organ outputs, ``records.jsonl`` and the report files; return the records.

    One run owns ``out_dir`` (:class:`OutputLock`), and a folder keeps its records: a folder holding an earlier
    run's records needs ``resume`` (keep each finished case whose :func:`resume_key` is unchanged: same input
    file, bundles, ``organ`` and map version; analyse the rest) or ``overwrite`` (start again; the earlier run is
    moved to ``out_dir/previous_runs/<time>/``, not deleted); else OutputInUseError.

    ``scheduler``: None analyses the cases one after the other in this process; ``local:N`` or a Dask scheduler
    address runs each case as a task on Dask (:mod:`shapeqc.runs.cohort`; ``client``: an existing
    ``distributed.Client`` instead), ``retries`` times re-run when its worker dies. Either way this process
    journals each finished case as it arrives. ``notes`` collects what discovery passed over (empty folders,
    links followed once, other files) and what resume re-ran. ``image``: the image of the single case given
    (ImageArgumentError for several cases); otherwise each case's image is found beside it. ``threads``: torch
    threads per Dask worker (default :func:`shapeqc.runs.cohort.local_threads`, 1 on a running cluster); this
    process's own are set by its caller (:mod:`shapeqc.runs.threads`)
    (:mod:`shapeqc.outputs.images`).
    """
    out_dir = Path(out_dir)
    notes = notes if notes is not None else []
    if organ is not None:
        known_organ(organ, bundles)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    with OutputLock(out_dir):
        journal = out_dir / "records.jsonl"
        if holds_records(out_dir) and not resume:
            if not overwrite:
                raise OutputInUseError(f"{out_dir} holds the records of an earlier run: pass --resume to continue "
                                       "it, or --overwrite to start again (the earlier run is moved to "
                                       f"{out_dir / PREVIOUS_RUNS}/, not deleted), or choose another --output")
            notes.append(f"the earlier run in {out_dir} was moved to {move_aside(out_dir)}")
        cases = discover_cases(inputs, notes)
        if image is not None and len(cases) != 1:
            raise ImageArgumentError(f"--image names the image of one case; the inputs hold {len(cases)} cases "
                                     "(images beside each segmentation are found without it, see the README)")
        keys = {case: resume_key(path, bundles, organ, map_version) for case, path in cases}
        done = {}
        for case, case_records in (load_done(journal) if resume else {}).items():
            # a case outside these inputs is kept as it was; one among them only while its key is unchanged
            if case not in keys or all(r.get("resume_key") == keys[case] for r in case_records):
                done[case] = case_records
            else:
                notes.append(f"{case}: analysed again: its input, the bundles, --organ or the map version changed "
                             "since its records were made")
        # the journal afresh with the finished cases only: a line cut by a kill must not swallow the next
        write_atomic(journal, "".join(record_json(r) + "\n" for records in done.values() for r in records))
        records = [r for case_records in done.values() for r in case_records]
        todo = [(case, path) for case, path in cases if case not in done]
        started = time.perf_counter()

        with journal.open("a") as log:
            def finish(case_records: list[dict]) -> None:
                for record in case_records:
                    record["resume_key"] = keys.get(record["case"])
                log.write("".join(record_json(r) + "\n" for r in case_records))  # one write per case
                log.flush()
                os.fsync(log.fileno())
                records.extend(case_records)

            if image is not None:
                for case, path in todo:
                    finish(analyse_case(case, path, bundles, out_dir, organ, map_version, image))
            elif scheduler is not None or client is not None:
                from shapeqc.runs.cohort import dask_client, local_threads, run_cases
                from shapeqc.runs.threads import threads_for

                # per worker: local:N shares this process's cores out, a running cluster's workers use one
                threads = (threads_for(threads=threads) if threads is not None
                           else (local_threads(scheduler) if scheduler else None) or 1)
                if client is not None:
                    run_cases(client, todo, bundles, str(out_dir), organ, map_version, finish, progress, threads,
                              retries)
                elif todo:
                    with dask_client(scheduler, retries, threads) as own_client:
                        run_cases(own_client, todo, bundles, str(out_dir), organ, map_version, finish, progress,
                                  threads, retries)
            else:
                for index, (case, path) in enumerate(todo, 1):
                    finish(analyse_case(case, path, bundles, out_dir, organ, map_version))
                    if progress:
                        rate = index / max(time.perf_counter() - started, 1e-9)
                        print(f"\r[{len(cases) - len(todo) + index}/{len(cases)} cases, {len(records)} records] "
                              f"{rate:.2f} cases/s", end="", flush=True)
                if progress and todo:
                    print()
        order = {case: index for index, (case, _) in enumerate(cases)}
        records.sort(key=lambda r: order.get(r["case"], len(order)))  # case order, however the cases finished
        write_reports(records, out_dir)
        return records
