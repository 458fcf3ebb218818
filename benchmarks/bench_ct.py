"""CT organs in seconds (issue 33): seconds per organ, split by step, for every shipped CT bundle on its own
held-out masks at their stored CT resolution and on the TotalSegmentator example, today's code against a
baseline commit in one run, outputs on, one thread; then today's code with the default threads beside a busy core.

Inputs: the first ``--organs`` masks of each CT bundle's held-out split (``validate#datalist``: KiTS kidneys,
LiTS livers, MSD spleens, head-and-neck mandibles and parotid glands), read by the bundle's own loading
transforms and written as binary NIfTI files in their scan's voxels and affine; and the two adrenal glands of the
TotalSegmentator example's multi-label map (3 mm) for the adrenal bundle. Each setting runs ``analyse_organ``
(outputs written) in its own process over every organ; the baseline runs the package built from ``--baseline``
(``git archive`` + ``pip install --target``, so both codes are timed on the same machine in the same run).

Checked in the same run: each organ's record (status, scores to 1e-6, predicted Dice, defects) and its written
reconstruction (voxels in the scan's world space) equal the baseline's; where they do not, the organ is
reconstructed once more with dense decoding (every voxel of the decoded region), and the run fails unless today's
reconstruction is dense decoding's (the baseline's own coarse-to-fine pass could differ from it).

    python benchmarks/bench_ct.py [--baseline c378e68] [--organs 4] [--no-busy] [--device cuda]

Prints a table per step (median seconds over all organs and per bundle), the median seconds per organ of each
setting and its ratio to the baseline, and the record comparison; exits 1 when today's reconstruction of an organ
is not dense decoding's.
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
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CT_BUNDLES = ["kidney", "liver", "spleen", "mandible", "parotid_gland"]
TOTALSEG = DATA / "totalsegmentator_example" / "v2_multilabel_seg.nii.gz"
STEPS = ["load", "normalize", "encode", "decode", "map_back", "scores", "metrics", "outputs"]
# the child: analyse every organ of a job list with the package on its sys.path, print one record per line
CHILD = """
import json, sys
threads, device = int(sys.argv[2]), sys.argv[3]
if threads:
    import torch
    torch.set_num_threads(threads)
else:  # what `shapeqc analyse` does by default: the affinity's cores, passive OpenMP waiting
    from shapeqc.runs.threads import use_threads
    use_threads()
from shapeqc.bundle.loading import load_bundle
from shapeqc.judging.analysis import analyse_organ
jobs = json.load(open(sys.argv[1]))
bundles = {}
for job in jobs:
    bundle = bundles.setdefault(job["bundle"], load_bundle(job["bundle"], device=device))
    analyse_organ(job["path"], job["organ"], bundle, job["out"] + "_warmup", job["case"])  # imports, caches
    break
for job in jobs:
    bundle = bundles.setdefault(job["bundle"], load_bundle(job["bundle"], device=device))
    record = analyse_organ(job["path"], job["organ"], bundle, job["out"], job["case"])
    print("RECORD " + json.dumps({**record, "bundle_name": job["bundle"]}, default=str), flush=True)
"""


def spin(stop) -> None:
    """A busy neighbour: one core's worth of work until ``stop`` is set."""
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def write_inputs(scratch: Path, organs: int) -> list[dict]:
    """Binary masks of each CT bundle's first held-out organs in their scan's voxels, and the TotalSegmentator
    example's adrenal glands: one job per organ."""
    from monai.transforms import Compose

    from shapeqc.bundle.loading import TRAINING_CONFIGS, bundle_parser

    jobs = []
    for name in CT_BUNDLES:
        folder = ROOT / "bundles" / name
        parser = bundle_parser(folder, TRAINING_CONFIGS, dataset_dir=str(DATA), val_limit=None, train_limit=None)
        loading = Compose(parser.get_parsed_content("loading"))
        for item in list(parser.get_parsed_content("validate#datalist"))[:organs]:
            loaded = loading(dict(item))
            case = f"{item['case_id']}_{item['organ']}"
            path = scratch / "inputs" / name / f"{case}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.asarray(loaded["mask"]).astype(np.uint8), np.asarray(loaded["affine"])), path)
            jobs.append({"bundle": str(folder), "path": str(path), "organ": None, "case": case})
    for organ in ("adrenal_gland_left", "adrenal_gland_right"):
        jobs.append({"bundle": str(ROOT / "bundles" / "adrenal_gland"), "path": str(TOTALSEG), "organ": organ,
                     "case": f"totalsegmentator_example_{organ}"})
    return jobs


def baseline_site(commit: str, scratch: Path) -> Path:
    """The package as it was at ``commit``, installed into a folder of its own (put first on PYTHONPATH)."""
    source, site = scratch / "baseline_src", scratch / "baseline_site"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(source)], check=True, capture_output=True)
    return site


def run_setting(jobs: list[dict], scratch: Path, name: str, threads: int, site: Path | None,
                device: str = "cpu") -> list[dict]:
    """Records of every job analysed by one process (the baseline's package when ``site`` is given)."""
    out = scratch / name
    job_file = scratch / f"{name}.json"
    job_file.write_text(json.dumps([{**job, "out": str(out / Path(job["path"]).name.split(".")[0] /
                                                      (job["organ"] or "organ"))} for job in jobs]))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONPATH")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    # run from the scratch folder: the working tree must not shadow the baseline's package
    result = subprocess.run([sys.executable, "-c", CHILD, str(job_file), str(threads), device], env=env, cwd=scratch,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return [json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RECORD ")]


def world_voxels(path: str | None) -> set:
    """The reconstruction's occupied voxels as integer world positions (rounded mm * 100) of their centres."""
    if not path:
        return set()
    image = nib.load(path)
    voxels = np.argwhere(np.asarray(image.dataobj) > 0)
    world = voxels @ image.affine[:3, :3].T + image.affine[:3, 3]
    return set(map(tuple, np.round(world * 100).astype(np.int64)))


def differences(new: dict, old: dict) -> list[str]:
    """What differs between two records of one organ (empty when they agree)."""
    found = []
    if new["status"] != old["status"]:
        found.append(f"status {old['status']} -> {new['status']}")
    new_scores = new.get("scores") or {}
    for key, value in (old.get("scores") or {}).items():
        other = float(new_scores.get(key, np.nan))
        if not (abs(other - float(value)) <= 1e-6 or (np.isinf(value) and other == value)):
            found.append(f"{key} {value} -> {other}")
    old_q, new_q = (old.get("quality") or {}).get("predicted_dice"), (new.get("quality") or {}).get("predicted_dice")
    if old_q is not None and (new_q is None or abs(new_q - old_q) > 1e-6):
        found.append(f"predicted Dice {old_q} -> {new_q}")
    if [(d["kind"], d["voxels"], d["centroid_mm"]) for d in old.get("defects") or []] != \
            [(d["kind"], d["voxels"], d["centroid_mm"]) for d in new.get("defects") or []]:
        found.append("defects differ")
    old_out, new_out = old.get("outputs") or {}, new.get("outputs") or {}
    if world_voxels(old_out.get("reconstruction")) != world_voxels(new_out.get("reconstruction")):
        found.append("written reconstruction differs")
    return found


def dense_reconstruction(job: dict, out: Path) -> set:
    """World voxels of the job's reconstruction with dense decoding (every voxel of the decoded region, the
    reference both decoders are held to), through today's bundle transforms; written to ``out``."""
    import torch

    from shapeqc.bundle.loading import load_bundle
    from shapeqc.prior.reconstruction import default_margin, grid_logits
    from shapeqc.transforms.organ_loading import load_organ_mask
    from shapeqc.transforms.volume_io import write_volume

    bundle = load_bundle(job["bundle"])
    labels = bundle.organ_labels.get(job["organ"] or "")
    mask, affine, _ = load_organ_mask(job["path"], organ=job["organ"], labels=labels)
    item = bundle.to_grid({"mask": mask.astype(np.uint8), "affine": affine, "organ": job["organ"] or ""})
    grid = torch.as_tensor(np.asarray(item["mask"]), dtype=torch.float32)[None]
    margin = bundle.inferer.margin if bundle.inferer.margin is not None else default_margin(grid.shape[-1])
    with torch.no_grad():
        logits = grid_logits(bundle.network, grid, margin=margin)
    restored = bundle.to_source({"pred": logits[0], "grid": item["grid"]})["pred"]
    return world_voxels(str(write_volume(out, np.asarray(restored).astype(bool), affine)))


def median_steps(records: list[dict]) -> dict:
    return {step: statistics.median(r["timings"].get(step, 0.0) for r in records) for step in STEPS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="c378e68", help="commit timed as 'before' (default: issue 33's start)")
    parser.add_argument("--organs", type=int, default=4, help="held-out organs per CT bundle")
    parser.add_argument("--no-busy", action="store_true", help="another process already keeps a core busy")
    parser.add_argument("--device", default="cpu", help="cuda: one more setting, today's code on the GPU")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        jobs = write_inputs(scratch, args.organs)
        site = baseline_site(args.baseline, scratch)
        before = run_setting(jobs, scratch, "baseline", 1, site)
        after = run_setting(jobs, scratch, "today", 1, None)
        stop = multiprocessing.Event()
        busy = None if args.no_busy else multiprocessing.Process(target=spin, args=(stop,), daemon=True)
        if busy:
            busy.start()
        try:
            crowded = run_setting(jobs, scratch, "crowded", 0, None)
        finally:
            stop.set()
        on_device = run_setting(jobs, scratch, "device", 1, None, args.device) if args.device != "cpu" else None
        judged = [(b, a) for b, a in zip(before, after, strict=True) if b["status"] in ("ok", "outlier")]
        print(f"{len(jobs)} organs ({len(judged)} judged: the others are not judged, e.g. cut by the scan's border, "
              f"and timed as far as they go); baseline {args.baseline}; outputs on\n")
        print("| setting | organs | median s / organ | max s | x baseline | " + " | ".join(STEPS) + " |")
        print("|---|---|---|---|---|" + "---|" * len(STEPS))
        reference = statistics.median(r["seconds"] for r in before)
        settings = [("baseline, one thread", before), ("today, one thread", after),
                    ("today, default threads beside a busy core", crowded)]
        if on_device:
            import torch

            settings.append((f"today, {torch.cuda.get_device_name(0)} (CUDA)", on_device))
        for name, records in settings:
            seconds = [r["seconds"] for r in records]
            steps = median_steps(records)
            print(f"| {name} | {len(records)} | {statistics.median(seconds):.2f} | {max(seconds):.2f} | "
                  f"{statistics.median(seconds) / reference:.2f} | " + " | ".join(f"{steps[s]:.2f}" for s in STEPS)
                  + " |")
        print("\n| bundle | organs | voxels per scan (median) | baseline median s | today median s | x faster |")
        print("|---|---|---|---|---|---|")
        for bundle in dict.fromkeys(r["bundle_name"] for r in before):
            old = [r["seconds"] for r in before if r["bundle_name"] == bundle]
            new = [r["seconds"] for r in after if r["bundle_name"] == bundle]
            paths = [j["path"] for j in jobs if j["bundle"] == bundle]
            voxels = statistics.median(int(np.prod(nib.load(p).shape)) for p in paths)
            print(f"| {Path(bundle).name} | {len(old)} | {voxels / 1e6:.1f} M | {statistics.median(old):.2f} | "
                  f"{statistics.median(new):.2f} | {statistics.median(old) / statistics.median(new):.1f} |")
        failures = differing = 0
        for job, old, new in zip(jobs, before, after, strict=True):
            found = differences(new, old)
            if found:
                differing += 1
                # which decoding is right: both are held to dense decoding of the same region
                dense = dense_reconstruction(job, scratch / "dense" / f"{old['case']}.nii.gz")
                today_right = dense == world_voxels((new.get("outputs") or {}).get("reconstruction"))
                baseline_right = dense == world_voxels((old.get("outputs") or {}).get("reconstruction"))
                failures += not today_right
                print(f"DIFFERS {old['case']}: {'; '.join(found)}; equal to dense decoding: today "
                      f"{'yes' if today_right else 'NO'}, baseline {'yes' if baseline_right else 'no'}")
        print(f"\nrecords equal to the baseline's: {len(before) - differing} of {len(before)}; today's "
              f"reconstruction differs from dense decoding in {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
