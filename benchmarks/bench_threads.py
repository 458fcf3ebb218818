"""Threads beside a busy core (issue 33): seconds per abdominal organ with one thread, with the default threads and
passive OpenMP waiting (today), and with the default threads and OpenMP's own wait policy (before), in one run.

The cases are real CT label maps of another hospital (``evalseg_multiorgan/gt``, 0.9-1 x 0.9-1 x 1 mm), written as
per-organ folders (``spleen.nii.gz``, ``kidney_left.nii.gz``, ``liver.nii.gz``, as TotalSegmentator's ``-o`` folders
hold them), analysed by the installed ``shapeqc analyse --bundles bundles/`` with outputs on. A busy neighbour (one
process spinning on one core, as another job on a shared workstation) runs throughout, unless ``--no-busy`` says
that something else already keeps a core busy.

    python benchmarks/bench_threads.py [--cases 2] [--no-busy]

Prints, per setting, the median and the largest seconds per organ and the median decode seconds, and each
setting's median as a ratio of the one-thread median (target: default threads within 2x).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GT = ROOT.parent / "shared" / "data" / "evalseg_multiorgan" / "gt"
LABELS = {"spleen": 1, "kidney_left": 3, "liver": 6}
# (name, extra command-line arguments, environment): the environment overrides the caller's
SETTINGS = [("one thread", ["--threads", "1"], {}),
            ("default threads, passive waiting (today)", [], {}),
            ("default threads, OpenMP's own waiting (before)", [], {"OMP_WAIT_POLICY": ""})]


def spin(stop) -> None:
    """A busy neighbour: one core's worth of work until ``stop`` is set."""
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def organ_folders(out: Path, cases: int) -> list[Path]:
    folders = []
    for path in sorted(GT.glob("*.nii.gz"))[:cases]:
        image = nib.load(path)
        labels = np.asarray(image.dataobj)
        folder = out / path.name.split(".")[0]
        folder.mkdir(parents=True)
        for organ, label in LABELS.items():
            nib.save(nib.Nifti1Image((labels == label).astype(np.uint8), image.affine), folder / f"{organ}.nii.gz")
        folders.append(folder)
    return folders


def analyse(folders: list[Path], out: Path, extra: list[str], environment: dict) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(environment)
    command = [str(Path(sys.executable).with_name("shapeqc")), "analyse", *map(str, folders), "--bundles",
               str(ROOT / "bundles"), "--output", str(out), *extra]
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return json.loads((out / "report.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--no-busy", action="store_true", help="another process already keeps a core busy")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    busy = None if args.no_busy else multiprocessing.Process(target=spin, args=(stop,), daemon=True)
    if busy:
        busy.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            folders = organ_folders(Path(scratch) / "cases", args.cases)
            for index, (name, extra, environment) in enumerate(SETTINGS):
                started = time.perf_counter()
                records = analyse(folders, Path(scratch) / f"out{index}", extra, environment)
                seconds = [r["seconds"] for r in records if r["status"] in ("ok", "outlier")]
                rows.append({"setting": name, "organs": len(seconds), "median_s": statistics.median(seconds),
                             "max_s": max(seconds), "wall_s": time.perf_counter() - started,
                             "median_decode_s": statistics.median(r["timings"]["decode"] for r in records
                                                                  if r["status"] in ("ok", "outlier"))})
    finally:
        stop.set()
        if busy:
            busy.join()
    base = rows[0]["median_s"]
    print(f"{'setting':<48}{'organs':>7}{'median s':>10}{'max s':>8}{'decode s':>10}{'x one thread':>14}")
    for row in rows:
        print(f"{row['setting']:<48}{row['organs']:>7}{row['median_s']:>10.1f}{row['max_s']:>8.1f}"
              f"{row['median_decode_s']:>10.1f}{row['median_s'] / base:>14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
