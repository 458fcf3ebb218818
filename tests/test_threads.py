"""Threads chosen on purpose (issue 33): the installed command computes with the cores its process may use (its CPU
affinity, as a SLURM allocation or `taskset` sets it) or --threads, and OpenMP waits passively."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shapeqc.runs.threads import available_cores, threads_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "bundles" / "adrenal_gland" / "docs" / "example_organ.nii.gz"
SHAPEQC = shutil.which("shapeqc") or str(Path(sys.executable).with_name("shapeqc"))


def analyse(tmp_path: Path, *extra: str, cores: set[int] | None = None, environment: dict | None = None) -> str:
    """stderr of `shapeqc analyse` on the example gland, in a process limited to ``cores``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(environment or {})
    result = subprocess.run([SHAPEQC, "analyse", str(EXAMPLE), "--organ", "adrenal_gland_right", "--bundle",
                             str(ROOT / "bundles" / "adrenal_gland"), "--output", str(tmp_path / "out"), *extra],
                            capture_output=True, text=True, env=env, timeout=600,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def header(stderr: str) -> tuple[int, str]:
    match = re.search(r"this process, (\d+) thread\(s\), OpenMP waiting (\w+)", stderr)
    assert match, stderr[-2000:]
    return int(match.group(1)), match.group(2)


def test_the_default_is_the_cores_the_process_may_use_and_openmp_waits_passively(tmp_path):
    first_core = min(os.sched_getaffinity(0))
    assert header(analyse(tmp_path / "one", cores={first_core})) == (1, "passive")
    assert header(analyse(tmp_path / "all")) == (len(os.sched_getaffinity(0)), "passive")


def test_threads_and_a_users_wait_policy_are_kept(tmp_path):
    threads, policy = header(analyse(tmp_path, "--threads", "1", environment={"OMP_WAIT_POLICY": "ACTIVE"}))
    assert (threads, policy) == (1, "active")


@pytest.mark.parametrize("workers, threads, expected", [(1, None, None), (2, None, None), (1, 3, 3), (64, None, 1)])
def test_cores_are_shared_out_among_workers(workers, threads, expected):
    want = expected if expected is not None else max(1, available_cores() // workers)
    assert threads_for(workers, threads) == want
    with pytest.raises(ValueError, match="at least 1"):
        threads_for(1, 0)
