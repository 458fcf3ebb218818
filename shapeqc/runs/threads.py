"""How many threads a run computes with: chosen on purpose, never left to torch's defaults (issue 33).

torch sizes its OpenMP pool by the machine's cores, and OpenMP threads spin while they wait for work. On a shared
workstation or an HPC node with one other busy process, an analysis measured 35-54 s per organ instead of 7-10 s:
the spinning threads fight the neighbour for the cores they do not have. Two rules:

- a run uses the cores this process may run on (``os.sched_getaffinity``: a SLURM or cgroup allocation, ``taskset``;
  not the machine's count), divided among its workers; ``--threads N`` says otherwise;
- OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy. OpenMP reads it once, when
  torch is first imported, so :func:`passive_waiting` must run before that: the command line calls it first thing.

Dask workers of a running cluster compute with one thread each unless told (``--threads``); those of a local
cluster share this process's cores (:mod:`shapeqc.runs.cohort`).
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"


def available_cores() -> int:
    """How many cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows: no affinity call
        return max(1, os.cpu_count() or 1)


def threads_for(workers: int = 1, threads: int | None = None) -> int:
    """Threads per worker: ``threads`` when given, else the available cores shared out among ``workers``."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads}: give at least 1")
        return int(threads)
    return max(1, available_cores() // max(1, int(workers)))


def passive_waiting() -> str:
    """Make OpenMP threads sleep instead of spin while they wait (unless a policy is already set); returns the
    policy in force. Only effective before torch (OpenMP) is first imported in this process."""
    return os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def use_threads(threads: int | None = None, workers: int = 1) -> int:
    """Set this process's torch thread count (:func:`threads_for`) after :func:`passive_waiting`; returns it."""
    passive_waiting()
    import torch

    count = threads_for(workers, threads)
    torch.set_num_threads(count)
    return count
