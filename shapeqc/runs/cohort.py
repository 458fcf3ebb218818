"""Cohort analysis on Dask distributed: each case one task, bundles loaded once per worker, lost workers retried.

``shapeqc analyse ... --scheduler local:N`` starts a ``LocalCluster`` of N worker processes on this machine;
``--scheduler tcp://HOST:8786`` sends the cases to a running cluster (started by ``dask-jobqueue`` on SLURM/PBS,
``dask-kubernetes``, or ``dask scheduler`` / ``dask worker`` by hand). Every worker loads each bundle once, from its
path (a :class:`ShapeQCBundles` worker plugin: weights never travel through the scheduler) and checks that its
copy has the digest the client loaded. A worker that dies while it holds a case (killed, out of memory, node
preempted) has the case re-run elsewhere by Dask, up to ``retries`` times (the scheduler's ``allowed-failures``);
a case that keeps killing workers ends as an ``error`` record and the rest of the cohort finishes. A bad input is
an ``error`` record from the case itself, never a retry.

Results come back to the client, which journals each finished case (``records.jsonl``, one writer, fsync per
case) exactly as a single-process run does: nothing but the input paths and the output folder need to be shared
with the workers, and ``--resume`` needs only the journal.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shapeqc.bundle.loading import Bundle
from shapeqc.outputs.records import Record, error_record
from shapeqc.runs.cases import analyse_case
from shapeqc.runs.threads import WAIT_POLICY, threads_for

try:  # the plugin's base class: the cluster extra installs distributed; without it only --scheduler fails
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - exercised only without the extra
    WorkerPlugin = object


class BundleUnavailableError(RuntimeError):
    """A task reached a worker that could not load the bundles (its copy differs, or it failed to load): the
    case is recorded with this reason, never as an unexplained failure."""


class ShapeQCBundles(WorkerPlugin):
    """Loads the bundles once on every worker that joins (also on one started to replace a dead worker).

    Each worker first compares the digest of its copy of each bundle with the client's (``digests``), before it
    reads any file of it as config; then loads it under the same trust rule the client applied (``vouched``:
    the user passed --trust-bundle for it; otherwise a shipped, trust-store or checked bundle, checked again
    here). A worker that cannot load the bundles records why and leaves the cluster, so that it takes no cases.

    Args:
        paths: bundle folders, as the workers see them.
        digests: the sha256 each bundle must have (the client's copy).
        vouched: per bundle, whether the user vouched for it with --trust-bundle.
        device: torch device name on the worker.
        refine_steps: test-time refinement steps (as for the client's bundles).
        threads: torch threads per worker (None: torch's default).
    """

    name = "shapeqc-bundles"

    def __init__(self, paths: list[str], digests: list[str | None], vouched: list[bool] | None = None,
                 device: str = "cpu", refine_steps: int = 0, threads: int | None = None) -> None:
        self.paths, self.digests = list(paths), list(digests)
        self.vouched = list(vouched) if vouched is not None else [False] * len(self.paths)
        self.device, self.refine_steps, self.threads = device, refine_steps, threads

    def setup(self, worker) -> None:
        import torch

        from shapeqc.bundle.loading import load_bundle

        worker.shapeqc_bundles, worker.shapeqc_error = None, None
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            worker.shapeqc_bundles = [
                load_bundle(path, self.device, self.refine_steps, trusted=[path] if vouched else [],
                            expected_digest=digest)
                for path, digest, vouched in zip(self.paths, self.digests, self.vouched, strict=True)]
        except Exception as error:
            worker.shapeqc_error = f"worker {worker.address} cannot load the bundles: {type(error).__name__}: {error}"
            logging.getLogger("shapeqc.runs.cohort").error(worker.shapeqc_error)
            # out of the cluster, so that the scheduler gives its cases to workers that can run them
            worker.loop.add_callback(worker.close, nanny=True, reason="shapeqc: bundles not loadable")
            raise
        worker.shapeqc_threads = self.threads


def analyse_case_on_worker(case: str, path: str, out_dir: str, organ: str | None, map_version: str) -> list[Record]:
    """One task: :func:`shapeqc.runs.cases.analyse_case` with the bundles the worker holds."""
    import torch
    from distributed import get_worker

    worker = get_worker()
    if getattr(worker, "shapeqc_bundles", None) is None:
        raise BundleUnavailableError(getattr(worker, "shapeqc_error", None)
                                     or f"worker {worker.address} has not loaded the bundles")
    if worker.shapeqc_threads:  # OpenMP's thread count is per calling thread: set it in the task's own thread
        torch.set_num_threads(worker.shapeqc_threads)
    return analyse_case(case, path, worker.shapeqc_bundles, out_dir, organ, map_version)


def cluster_config(retries: int = 3, threads: int = 1) -> dict:
    """The settings a cohort run needs: ``retries`` lost workers per case before it is given up; no task queued
    on a worker ahead of the one it runs (worker saturation 1.0 with one thread), so that a worker dying takes
    only its own case's retry budget; and the worker processes' environment without Dask's default
    ``MALLOC_TRIM_THRESHOLD_``, which turns off glibc's adaptive mmap threshold so that every large torch buffer
    of the decoder is mapped and unmapped again (measured: decoding 2.5x slower, most of it system time), with
    ``threads`` OpenMP/MKL threads per worker."""
    return {"distributed.scheduler.allowed-failures": int(retries), "distributed.scheduler.worker-saturation": 1.0,
            "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                                    "OPENBLAS_NUM_THREADS": threads,
                                                    WAIT_POLICY: os.environ.get(WAIT_POLICY, "PASSIVE")}}


@contextmanager
def dask_client(scheduler: str, retries: int = 3, threads: int | None = None) -> Iterator:
    """A ``distributed.Client`` for ``scheduler``: ``local:N`` (a LocalCluster of N single-threaded worker
    processes, closed afterwards) or a scheduler address. ``retries``: how often a case may lose its worker and
    be re-run (``distributed.scheduler.allowed-failures``; for a running scheduler, set it in its own config)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(cluster_config(retries, threads or 1)):
        if scheduler.startswith("local:"):
            workers = int(scheduler.split(":", 1)[1])
            if workers < 1:
                raise ValueError(f"--scheduler {scheduler}: give at least one worker")
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
            client = Client(cluster)
        else:
            cluster, client = None, Client(scheduler)
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def local_threads(scheduler: str) -> int | None:
    """Torch threads per worker of ``local:N``: the cores this process may use shared out
    (:func:`shapeqc.runs.threads.threads_for`), so N workers do not oversubscribe them; None for a running
    cluster."""
    if not scheduler.startswith("local:"):
        return None
    return threads_for(workers=int(scheduler.split(":", 1)[1]))


def _lost_workers(dask_scheduler) -> int:
    """On the scheduler: how many times tasks have lost their worker so far (each a retry)."""
    return sum(task.suspicious for task in dask_scheduler.tasks.values())


def run_cases(client, todo: list[tuple[str, str]], bundles: list[Bundle], out_dir: str, organ: str | None,
              map_version: str, finish: Callable[[list[dict]], None], progress: bool = True,
              threads: int | None = None, retries: int = 3) -> dict:
    """Submit every ``(case, path)`` of ``todo`` as a task and hand each finished case's records to ``finish`` as
    it arrives; returns ``{"failed": cases that ended as worker errors, "retried": worker losses}``."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    # a worker that cannot load the bundles fails the registration here, before any case is sent
    client.register_plugin(ShapeQCBundles([str(b.path) for b in bundles], [b.digest for b in bundles],
                                          [b.trust == "--trust-bundle" for b in bundles], str(bundles[0].device),
                                          bundles[0].refine_steps, threads))
    if progress and client.dashboard_link:
        print(f"shapeqc analyse: Dask dashboard {client.dashboard_link}", flush=True)
    futures = {client.submit(analyse_case_on_worker, case, path, out_dir, organ, map_version, pure=False,
                             key=f"shapeqc-{index}-{case}"): (case, path) for index, (case, path) in enumerate(todo)}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="case", dynamic_ncols=True)
    failed, retried, checked = 0, 0, time.monotonic()
    for future in as_completed(futures):
        case, path = futures[future]
        try:
            records = future.result()
        except KilledWorker as error:
            failed += 1
            records = [error_record(case, path, organ, b.name, f"worker_lost: every worker analysing this case died "
                                    f"({retries + 1} tries: killed, out of memory or preempted; last on "
                                    f"{error.last_worker}); the cohort went on without it")
                       for b in bundles]
        except BundleUnavailableError as error:
            failed += 1
            records = [error_record(case, path, organ, b.name, f"bundle_unavailable: {error}") for b in bundles]
        except Exception as error:  # a lost connection, anything else: recorded with its type
            failed += 1
            records = [error_record(case, path, organ, b.name, f"{type(error).__name__}: {error}") for b in bundles]
        for record in records:
            record["case_records"] = len(records)
        finish(records)
        if bar is not None:
            if time.monotonic() - checked > 2.0:
                retried, checked = client.run_on_scheduler(_lost_workers), time.monotonic()
            bar.set_postfix(failed=failed, retried=retried, refresh=False)
            bar.update(1)
    retried = client.run_on_scheduler(_lost_workers)
    if bar is not None:
        bar.set_postfix(failed=failed, retried=retried)
        bar.close()
    return {"failed": failed, "retried": retried}
