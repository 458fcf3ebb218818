"""Cohort analysis on a real Dask LocalCluster (no mocks): the same records as one process, lost workers retried,
a case that kills every worker given up, a killed client resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shapeqc.bundle.loading import load_bundle
from shapeqc.runs.batch import run_batch
from shapeqc.transforms.volume_io import write_volume

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "adrenal_gland"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, adrenal_val_masks) -> Path:
    """Real glands (clean and with a cube cut out), one unreadable file and one organ cut by the image border."""
    folder = tmp_path_factory.mktemp("cohort")
    inner = [m for m in adrenal_val_masks
             if not any(np.take(m, i, axis).any() for axis in range(3) for i in (0, -1))][:6]
    for index, mask in enumerate(inner):
        write_volume(folder / f"clean{index}" / "adrenal_gland_left.nii.gz", mask, np.eye(4))
        damaged = mask.copy()
        centre = np.argwhere(mask).mean(0).astype(int)
        damaged[centre[0] - 4:centre[0] + 4, centre[1] - 4:centre[1] + 4, :] = False
        write_volume(folder / f"cut{index}" / "adrenal_gland_left.nii.gz", damaged, np.eye(4))
    (folder / "unreadable.nii.gz").write_bytes(b"\x1f\x8b\x08 not a volume")
    rows = np.argwhere(inner[0])[:, 0]
    truncated = np.ascontiguousarray(inner[0][(rows.min() + rows.max()) // 2:])  # the organ cut by the array's edge
    write_volume(folder / "border" / "adrenal_gland_left.nii.gz", truncated, np.eye(4))
    return folder


def essence(records: list[dict]) -> list:
    """What a run decided, as its report.json says it (JSON: tuples and lists alike), timings aside."""
    return json.loads(json.dumps([(r["case"], r["organ"], r["bundle"], r["status"], r["reason"], r["scores"],
                                   r["defects"]) for r in records]))


def journal_cases(out: Path) -> list[str]:
    lines = (out / "records.jsonl").read_text().splitlines()
    return [json.loads(line)["case"] for line in lines]


def test_local_cluster_gives_the_single_process_records(bundle, cohort, tmp_path):
    single = run_batch([str(cohort)], [bundle], tmp_path / "single", progress=False)
    on_dask = run_batch([str(cohort)], [bundle], tmp_path / "dask", scheduler="local:2", progress=False)
    assert essence(on_dask) == essence(single)  # record for record, in case order
    statuses = {r["case"]: r["status"] for r in on_dask}
    assert statuses["unreadable"] == "error" and statuses["border"] == "not_judged"
    assert sorted(journal_cases(tmp_path / "dask")) == sorted(statuses)  # each case journaled once
    report = json.loads((tmp_path / "dask" / "report.json").read_text())
    assert essence(report) == essence(single)


def test_a_worker_killed_while_it_holds_a_case_loses_nothing(bundle, cohort, tmp_path):
    """SIGKILL of the worker process running a case: Dask re-runs the case elsewhere, each case is journaled
    exactly once and the report equals a run without the kill."""
    import dask
    from distributed import Client, LocalCluster

    from shapeqc.runs.cohort import cluster_config

    with dask.config.set(cluster_config(3)), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)
        killed = []

        def kill_a_busy_worker():
            deadline = time.time() + 120
            while time.time() < deadline and not killed:
                busy = [address for address, keys in client.processing().items() if keys]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                time.sleep(0.2)

        import threading

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        records = run_batch([str(cohort)], [bundle], tmp_path / "killed", client=client, progress=False)
        killer.join()
    assert killed, "no worker was ever busy"
    cases = journal_cases(tmp_path / "killed")
    assert len(cases) == len(set(cases)) == 14  # 6 clean + 6 cut + unreadable + border, each exactly once
    assert not any("worker_lost" in (r["reason"] or "") for r in records)


class _PoisonPlugin:
    """Test-only worker plugin: a case whose path says 'poison' makes its worker process exit at once."""

    name = "poison"

    def setup(self, worker):
        import shapeqc.runs.cohort

        original = shapeqc.runs.cohort.analyse_case

        def analyse_or_die(case, path, *args, **kwargs):
            if "poison" in str(path):
                os._exit(13)
            return original(case, path, *args, **kwargs)

        shapeqc.runs.cohort.analyse_case = analyse_or_die


def test_a_case_that_kills_every_worker_ends_as_an_error_and_the_rest_finish(bundle, cohort, tmp_path):
    import dask
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("clean0", "clean1"):
        (inputs / name).symlink_to(cohort / name)
    (inputs / "poison.nii.gz").write_bytes((cohort / "clean2" / "adrenal_gland_left.nii.gz").read_bytes())
    plugin = type("Poison", (_PoisonPlugin, WorkerPlugin), {})()
    from shapeqc.runs.cohort import cluster_config

    with dask.config.set(cluster_config(1)), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.register_plugin(plugin)
        records = run_batch([str(inputs)], [bundle], tmp_path / "out", client=client, retries=1, progress=False)
    by_case = {r["case"]: r for r in records}
    assert by_case["poison"]["status"] == "error" and by_case["poison"]["reason"].startswith("worker_lost")
    assert by_case["clean0"]["status"] in ("ok", "outlier") and by_case["clean1"]["status"] in ("ok", "outlier")


def test_resume_after_the_client_was_killed(bundle, cohort, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "shapeqc", "analyse", str(cohort), "--bundle", str(BUNDLE), "--output", str(out),
               "--scheduler", "local:2"]
    client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / "records.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and client.poll() is None and (
            not journal.exists() or len(journal.read_text().splitlines()) < 3):
        time.sleep(0.2)
    os.killpg(client.pid, signal.SIGKILL)  # the client and the cluster it started, mid-run
    client.wait()
    finished = {json.loads(line)["case"]: json.loads(line) for line in journal.read_text().splitlines()}
    assert 3 <= len(finished) < 14
    result = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    cases = journal_cases(out)
    assert len(cases) == len(set(cases)) == 14
    resumed = {r["case"]: r for r in json.loads((out / "report.json").read_text())}
    for case, record in finished.items():  # nothing finished was redone
        assert resumed[case]["seconds"] == record["seconds"]
