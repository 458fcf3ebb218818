"""Batch analysis: find the cases, analyse every organ each bundle covers, keep going, never lose results.

Inputs may be NIfTI files, folders searched recursively for NIfTI files, or TotalSegmentator output trees (a
folder of per-organ ``<organ>.nii.gz`` files counts as one case). For each case and each organ of each bundle:
- a binary mask is the bundle's organ (``organ`` picks one when a bundle covers several);
- a multi-label map or a TotalSegmentator folder is searched for every organ the bundle covers; organs absent
  from a multi-label map are skipped (a TotalSegmentator map lists far more organs than any case holds).
Every record is appended to ``records.jsonl`` as soon as it is finished (one line each, flushed), so an
interrupted run loses nothing finished and ``resume`` skips what is there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from shapeqc.analysis import Bundle, analyse_organ
from shapeqc.reports import write_atomic, write_reports
from transforms.class_maps import class_map
from transforms.errors import SegmentationInputError
from transforms.volume_io import is_nifti_path, read_label_names, read_volume, strip_nifti_suffix


def discover_cases(inputs: list[str]) -> list[tuple[str, str]]:
    """(case id, path) for every input file or TotalSegmentator folder, in a stable order."""
    cases = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            direct = [p for p in path.iterdir() if p.is_file() and is_nifti_path(p)]
            known = set(class_map("v1").values()) | set(class_map("v2").values())
            if direct and sum(strip_nifti_suffix(p.name) in known for p in direct) >= max(1, len(direct) // 2):
                cases.append((path.name, str(path)))  # a TotalSegmentator per-organ folder
                continue
            for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                cases += discover_cases([str(sub)])
            cases += [(strip_nifti_suffix(p.name), str(p)) for p in sorted(direct)]
        else:
            cases.append((strip_nifti_suffix(path.name), str(path)))
    return cases


def organs_for(path: str, bundle: Bundle, organ: str | None) -> list[str | None]:
    """Which organs of ``bundle`` to analyse in ``path`` (see the module doc)."""
    wanted = [organ] if organ else bundle.organs
    source = Path(path)
    if source.is_dir():
        return [o for o in wanted if (source / f"{o}.nii.gz").exists() or (source / f"{o}.nii").exists()]
    try:
        volume, affine = read_volume(source)
    except SegmentationInputError:
        return [organ or (bundle.organs[0] if bundle.organs else None)]  # the record will carry the error
    values = np.unique(volume)
    if np.all(np.isin(values, (0, 1))) and read_label_names(source) is None:
        return [organ or (bundle.organs[0] if bundle.organs else None)]
    from transforms.class_maps import detect_map_version

    names = read_label_names(source) or class_map(detect_map_version(volume.astype(int), affine))
    present = {names[int(v)] for v in values if int(v) in names}
    return [o for o in wanted if o in present]


def _load_done(journal: Path) -> dict:
    done = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that record is redone
            done[(record["case"], record["organ"], record["bundle"])] = record
    return done


def case_jobs(case: str, path: str, bundles: list[Bundle], out_dir: str | os.PathLike,
              organ: str | None = None) -> list[tuple[str, str | None, int, str, str]]:
    """(path, organ, bundle index, organ output folder ``out_dir/<case>/<organ>``, case) for every organ any of
    ``bundles`` covers in one case."""
    return [(path, target, index, str(Path(out_dir) / case / str(target or bundle.name)), case)
            for index, bundle in enumerate(bundles) for target in organs_for(path, bundle, organ)]


def analyse_case(case: str, path: str, bundles: list[Bundle], out_dir: str | os.PathLike, organ: str | None = None,
                 map_version: str = "auto") -> list[dict]:
    """Every organ any of ``bundles`` covers in one case, as :func:`run_batch` analyses it (the Deploy app's
    unit of work): one record per organ, outputs under ``out_dir/<case>/<organ>``."""
    return [analyse_organ(path, target, bundles[index], organ_dir, case, map_version=map_version)
            for path, target, index, organ_dir, case in case_jobs(case, path, bundles, out_dir, organ)]


def find_bundles(paths: list[str | os.PathLike]) -> list[Path]:
    """Bundle folders: each path is a bundle (has configs/metadata.json) or a folder of bundles."""
    found = []
    for path in map(Path, paths):
        if (path / "configs" / "metadata.json").exists():
            found.append(path)
        else:
            found += sorted(p.parent.parent for p in path.glob("*/configs/metadata.json"))
    return found


_WORKER_BUNDLES: list[Bundle] = []


def _start_worker(bundles: list[Bundle], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER_BUNDLES[:] = bundles


def _analyse_in_worker(path: str, target: str | None, bundle_index: int, out_dir: str, case: str,
                       map_version: str) -> dict:
    return analyse_organ(path, target, _WORKER_BUNDLES[bundle_index], out_dir, case, map_version=map_version)


def run_batch(inputs: list[str], bundles: list[Bundle], out_dir: str | os.PathLike, organ: str | None = None,
              resume: bool = False, map_version: str = "auto", progress: bool = True,
              shard: tuple[int, int] = (0, 1), workers: int = 0) -> list[dict]:
    """Analyse everything; write per-organ outputs, ``records.jsonl`` and the report files; return records.

    ``workers`` > 0 analyses that many organs at a time in worker processes (each holds the bundles, loaded
    once, and an equal share of the CPU threads); records are journalled by this process as they finish.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = shard
    journal = out_dir / ("records.jsonl" if world == 1 else f"records.rank{rank}.jsonl")
    done = _load_done(journal) if resume else {}
    # start the journal afresh with the complete records only: a line cut by a kill must not swallow the next
    write_atomic(journal, "".join(json.dumps(record) + "\n" for record in done.values()))
    cases = discover_cases(inputs)[rank::world]  # round-robin shards: every rank gets a similar mix
    records = list(done.values())
    jobs = [job for case, path in cases for job in case_jobs(case, path, bundles, out_dir, organ)
            if (case, job[1], bundles[job[2]].name) not in done]
    started = time.perf_counter()
    remaining = {case: sum(job[4] == case for job in jobs) for case, _ in cases}
    finished_cases = {case for case, count in remaining.items() if count == 0}  # nothing (left) to analyse

    def finish(record: dict, log) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()
        records.append(record)
        remaining[record["case"]] -= 1
        if remaining[record["case"]] == 0:
            finished_cases.add(record["case"])
        if progress:
            rate = len(finished_cases) / max(time.perf_counter() - started, 1e-9)
            print(f"\r[{len(finished_cases)}/{len(cases)} cases, {len(records)} records] {rate:.2f} cases/s",
                  end="", flush=True)

    with journal.open("a") as log:
        if workers > 0 and jobs:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_start_worker, initargs=(bundles, threads)) as pool:
                futures = [pool.submit(_analyse_in_worker, *job, map_version) for job in jobs]
                for future in as_completed(futures):
                    finish(future.result(), log)
        else:
            for path, target, index, organ_dir, case in jobs:
                finish(analyse_organ(path, target, bundles[index], organ_dir, case, map_version=map_version), log)
    if progress:
        print()
    if world == 1:
        write_reports(records, out_dir)
    return records


def merge_rank_journals(out_dir: str | os.PathLike, world: int) -> list[dict]:
    """Rank 0's step under torchrun: merge every rank's records into one journal and the report files."""
    out_dir = Path(out_dir)
    records: dict = {}
    for rank in range(world):
        records.update(_load_done(out_dir / f"records.rank{rank}.jsonl"))
    merged = sorted(records.values(), key=lambda r: (r["case"], str(r["organ"]), r["bundle"]))
    write_atomic(out_dir / "records.jsonl", "".join(json.dumps(r) + "\n" for r in merged))
    write_reports(merged, out_dir)
    return merged
