"""Cohort throughput: one process against a Dask LocalCluster of two workers, and a run with a worker killed.

The cohort: real adrenal val masks re-sliced as CT segmentations (0.8 x 0.8 x 2.5 mm, seeded tilt, as the
calibration's CT profile does), written as NIfTI, plus copies of the TotalSegmentator example's multi-label map
(both adrenal glands each). Three runs of ``shapeqc.runs.batch.run_batch`` in this process, same cases, same bundle:

1. baseline: every case one after the other in this process, torch on both cores;
2. baseline: the same with torch on one thread (what one worker of the cluster is);
3. ``--scheduler local:2``: two single-threaded worker processes (the cluster's start-up counted);
4. the same on a cluster already running (start-up not counted: a cohort of thousands pays it once);
5. the same with one worker process SIGKILLed once while it holds a case.

Printed: cases/s of each and its ratio to both baselines (goal >= 1.7 on two cores), the scheduler's overhead per
case (wall time of run 4 against the sum of the cases' own analysis seconds spread over the workers, and the round
trip of an empty task), and for run 5 whether every case finished exactly once (journal lines = cases, no
duplicate, no worker_lost error).

    python benchmarks/bench_cohort.py [--cases 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def make_cohort(folder: Path, cases: int) -> Path:
    from shapeqc.calibration.profiles import acquisition
    from shapeqc.transforms.volume_io import write_volume

    with np.load(SHARED / "adrenalmnist3d" / "adrenalmnist3d_64_trainval.npz") as archive:
        masks = archive["val_images"] > 0
    written = 0
    for index, mask in enumerate(masks):
        if written == cases - 4:
            break
        if any(np.take(mask, i, axis).any() for axis in range(3) for i in (0, -1)):
            continue
        acquired, affine = acquisition(mask, np.eye(4), (0.8, 0.8, 2.5), f"val{index}")
        write_volume(folder / f"val{index:03d}" / "adrenal_gland_left.nii.gz", acquired, affine)
        written += 1
    for copy in range(4):
        shutil.copy(SHARED / "totalsegmentator_example" / "v2_multilabel_seg.nii.gz", folder / f"ts{copy}.nii.gz")
    return folder


def timed(label: str, run) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    records = run()
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.1f} s", flush=True)
    return seconds, records


def main() -> None:
    from shapeqc.bundle.loading import load_bundle
    from shapeqc.runs.batch import run_batch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    cohort = make_cohort(work / "cohort", args.cases)
    cases = len(list(cohort.iterdir()))
    bundle = load_bundle(ROOT / "bundles" / "adrenal_gland")

    import torch

    threads = torch.get_num_threads()
    single_s, single = timed("one process", lambda: run_batch([str(cohort)], [bundle], work / "single",
                                                                progress=False))
    torch.set_num_threads(1)
    one_thread_s, one_thread = timed("one process, one thread", lambda: run_batch(
        [str(cohort)], [bundle], work / "one_thread", progress=False))
    torch.set_num_threads(threads)
    dask_s, on_dask = timed("local:2", lambda: run_batch([str(cohort)], [bundle], work / "dask",
                                                          scheduler="local:2", progress=False))

    import dask
    from distributed import Client, LocalCluster

    from shapeqc.runs.cohort import cluster_config

    killed = []
    with dask.config.set(cluster_config(3, 1)), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)
        warm_s, warm = timed("local:2, cluster running", lambda: run_batch(
            [str(cohort)], [bundle], work / "warm", client=client, progress=False))
        analysis_s = sum(r["seconds"] for r in warm)
        overhead_ms = 1000.0 * (warm_s - analysis_s / 2.0) / cases
        started = time.perf_counter()
        client.gather([client.submit(int, i, pure=False) for i in range(200)])
        empty_task_ms = 1000.0 * (time.perf_counter() - started) / 200

        def kill_once():
            time.sleep(5.0)
            while not killed:
                busy = [address for address, keys in client.processing().items() if keys]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                time.sleep(0.1)

        killer = threading.Thread(target=kill_once, daemon=True)
        killer.start()
        fault_s, faulted = timed("local:2, one worker killed", lambda: run_batch(
            [str(cohort)], [bundle], work / "fault", client=client, progress=False))
    lines = (work / "fault" / "records.jsonl").read_text().splitlines()
    journal = [(record["case"], record["organ"]) for record in map(json.loads, lines)]
    lost = sum("worker_lost" in (r["reason"] or "") for r in faulted)

    def essence(records):
        return json.loads(json.dumps([(r["case"], r["organ"], r["status"], r["scores"]) for r in records]))

    print()
    print("| run | cases | records | wall s | cases/s | ratio to one process (2 threads) | ratio to one process "
          "(1 thread) |")
    print("|---|---|---|---|---|---|---|")
    for label, seconds, records in (("one process (torch on 2 cores)", single_s, single),
                                    ("one process (torch on 1 thread)", one_thread_s, one_thread),
                                    ("--scheduler local:2 (start-up included)", dask_s, on_dask),
                                    ("local:2 on a running cluster", warm_s, warm),
                                    ("local:2, one worker SIGKILLed mid-case", fault_s, faulted)):
        print(f"| {label} | {cases} | {len(records)} | {seconds:.1f} | {cases / seconds:.2f} | "
              f"{single_s / seconds:.2f}x | {one_thread_s / seconds:.2f}x |")
    print()
    print(f"Scheduler overhead per case: {overhead_ms:.0f} ms (wall of local:2 on the running cluster minus the "
          f"cases' own analysis seconds shared by 2 workers, over {cases} cases); an empty task's round trip: "
          f"{empty_task_ms:.1f} ms.")
    print(f"Records equal to one process: local:2 {essence(on_dask) == essence(single)}, running cluster "
          f"{essence(warm) == essence(single)}, killed run {essence(faulted) == essence(single)}.")
    print(f"Killed run: worker killed {len(killed)}x; journal {len(journal)} records ({len(single)} expected) of "
          f"{len({case for case, _ in journal})} cases ({cases} expected), duplicated records "
          f"{len(journal) - len(set(journal))}, worker_lost errors {lost}.")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
