"""Batch analysis: find the cases, analyse every organ each bundle covers, keep going, never lose results.

Inputs may be NIfTI or NRRD files, folders searched recursively for them, or trees of per-organ folders
(TotalSegmentator output, the head-and-neck set's ``<rater>/<scan>/segmentations/<Organ>.nrrd``; such a folder
counts as one case). For each case and each organ of each bundle:
- a binary mask named after an organ (``liver.nii.gz``, ``Mandible.nrrd``) goes only to the bundles covering it;
  any other binary mask is the bundle's organ (``organ`` picks one when a bundle covers several);
- a label map whose values all belong to one organ's label set (a bundle's ``organ_labels``, e.g. the MSD
  hippocampus labels 1 and 2) is that organ;
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

from shapeqc.analysis import analyse_organ
from shapeqc.bundles import Bundle
from shapeqc.datasets import SEGMENTATION_FOLDER
from shapeqc.reports import write_atomic, write_reports
from shapeqc.transforms.class_maps import class_map, organ_of_file_stem
from shapeqc.transforms.errors import SegmentationInputError
from shapeqc.transforms.organ_loading import is_label_set_map, organ_file_in
from shapeqc.transforms.volume_io import is_volume_path, read_label_names, read_volume, strip_volume_suffix


def _is_organ_folder(files: list[Path]) -> bool:
    """A folder of per-organ files: at least half of its volume files are named after an organ."""
    return bool(files) and sum(organ_of_file_stem(strip_volume_suffix(p.name)) is not None
                               for p in files) >= max(1, len(files) // 2)


def _case_id(folder: Path, root: Path) -> str:
    """A per-organ folder's case id: its path below the input ``root`` (``rater/scan`` in a multi-rater tree),
    without a trailing ``segmentations``; the folder's own name when it is the input itself."""
    parts = list(folder.relative_to(root).parts) if folder != root else [folder.name]
    if len(parts) > 1 and parts[-1] == SEGMENTATION_FOLDER:
        parts = parts[:-1]
    elif parts == [SEGMENTATION_FOLDER]:
        parts = [folder.parent.name]
    return "/".join(parts)


def discover_cases(inputs: list[str]) -> list[tuple[str, str]]:
    """(case id, path) for every input volume file (NIfTI, NRRD) or per-organ folder, in a stable order.

    A per-organ folder (TotalSegmentator output, ``<scan>/segmentations/Parotid-Lt.nrrd``, ...) is one case whose
    id is its path below the input folder, so ``oncologist/0522c0017`` and ``radiographer/0522c0017`` stay apart.
    Any other volume file is a case named after the file.
    """
    cases = []
    for entry in inputs:
        root = Path(entry)
        if not root.is_dir():
            cases.append((strip_volume_suffix(root.name), str(root)))
            continue
        pending = [root]
        while pending:
            folder = pending.pop(0)
            files = sorted(p for p in folder.iterdir() if p.is_file() and is_volume_path(p))
            if _is_organ_folder(files):
                cases.append((_case_id(folder, root), str(folder)))
                continue
            pending[:0] = sorted(p for p in folder.iterdir() if p.is_dir())
            cases += [(strip_volume_suffix(p.name), str(p)) for p in files]
    return cases


def organs_for(path: str, bundle: Bundle, organ: str | None) -> list[str | None]:
    """Which organs of ``bundle`` to analyse in ``path`` (see the module doc)."""
    wanted = [organ] if organ else bundle.organs
    fallback = [organ or (bundle.organs[0] if bundle.organs else None)]
    source = Path(path)
    if source.is_dir():
        return [o for o in wanted if organ_file_in(source, o) is not None]
    try:
        volume, affine = read_volume(source)
    except SegmentationInputError:
        return fallback  # the record will carry the error
    values = np.unique(volume)
    names = read_label_names(source)
    if names is None:
        in_label_set = [o for o in wanted if o in bundle.organ_labels
                        and is_label_set_map(values, bundle.organ_labels[o])]
        if in_label_set:
            return in_label_set
        if np.all(np.isin(values, (0, 1))):
            named = organ_of_file_stem(strip_volume_suffix(source.name))
            if named is not None and not organ:  # a file named after an organ goes to the bundles covering it
                return [named] if named in bundle.organs else []
            return fallback
    from shapeqc.transforms.class_maps import detect_map_version

    names = names or class_map(detect_map_version(volume.astype(int), affine))
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
