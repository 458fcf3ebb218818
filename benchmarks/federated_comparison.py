"""Does federated training pay? One organ's real training masks cut into N disjoint sites, then, from the same
initial weights and with the same passes over every mask:

(a) each site training alone on its own masks (``--epochs`` epochs),
(b) the federation: NVFlare FedAvg, for each of ``--schedules`` (``RxE``: R rounds of E epochs at every site,
    R x E = ``--epochs``), simulated on this machine,
(c) centralised training on all the masks (``--epochs`` epochs; with ``--central-steps-control``, also for as many
    optimizer steps as the federation took: FedAvg averages one step per site, so with Adam, whose step size does
    not grow with the batch, it moves about as far per pass as a single site does),

each trained by the bundle's own ``configs/train.yaml`` and judged by the QC benchmark
(``benchmarks/qc_quality.py``) on the same held-out masks: family-mean Dice AUROC, and false-positive rates at a
threshold set as calibration sets it (5% quantile of the clean Dice): leave-one-out on the clean cases, and on
the other rater's masks of the same held-out scans (real, plausible segmentations the threshold never saw).

    python benchmarks/federated_comparison.py --bundle bundles/parotid_gland --sites 3 --epochs 40 \\
        --schedules 8x5,40x1 --cases 8 --out logs/federated_parotid [--jobs 2]

Every stage whose output exists is skipped (a stopped run resumes). Writes OUT/federated_comparison.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shapeqc.federated.job import (  # noqa: E402
    initial_weights,
    simulate,
    site_datalists,
    write_federated_bundle,
    write_job,
)
from shapeqc.scoring.thresholds import leave_one_out_fpr, threshold_at  # noqa: E402

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_alone(bundle: Path, out: Path, name: str, datalist: Path | None, epochs: int, dataset_dir: str) -> Path:
    """``python -m monai.bundle run training`` of the bundle's own configs from OUT/initial_model.pt, on one site's
    datalist (or the bundle's whole training split), validating once at the end; returns the weights."""
    run = out / "runs" / name
    weights = run / "models" / "model.pt"
    if weights.is_file():
        return weights
    run.mkdir(parents=True, exist_ok=True)
    configs = f"['{bundle / 'configs' / 'inference.yaml'}','{bundle / 'configs' / 'train.yaml'}']"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--bundle_root", str(bundle),
               "--meta_file", str(bundle / "configs" / "metadata.json"),
               "--logging_file", str(bundle / "configs" / "logging.conf"), "--config_file", configs,
               "--dataset_dir", dataset_dir, "--epochs", str(epochs), "--val_interval", str(epochs),
               "--val_limit", "4", "--num_workers", "1", "--ckpt_file", str(out / "initial_model.pt"),
               "--ckpt_dir", str(run / "models"), "--output_dir", str(run / "runs")]
    if datalist is not None:
        command += ["--train#datalist", f"$datalists.datalist_split('{datalist}', 'training')"]
    with open(run / "log.txt", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=CHILD_ENV, cwd=REPO)
    return weights


def train_federated(bundle: Path, out: Path, sites: dict[str, Path], rounds: int, local_epochs: int,
                    dataset_dir: str) -> Path:
    """The NVFlare job (shapeqc.federated.job) simulated here; returns the federated bundle's weights."""
    job = out / f"federated_{rounds}x{local_epochs}"
    fed_bundle = job / "bundle"
    if not (fed_bundle / "models" / "model.pt").is_file():
        write_job(bundle, sites, rounds, local_epochs, job, dataset_dir=dataset_dir, threads=1)
        model = simulate(job)
        write_federated_bundle(bundle, model, fed_bundle, len(sites), rounds, local_epochs)
    return fed_bundle / "models" / "model.pt"


def batch_size(bundle: Path) -> int:
    """The training batch size of the bundle's own train.yaml."""
    from shapeqc.bundle.loading import TRAINING_CONFIGS, bundle_parser

    return int(bundle_parser(bundle, TRAINING_CONFIGS).get_parsed_content("batch_size"))


def bundle_with(bundle: Path, weights: Path, folder: Path) -> Path:
    """A copy of the bundle's configs with ``weights`` and no calibration (the benchmark needs no threshold)."""
    if not (folder / "models" / "model.pt").is_file():
        shutil.copytree(bundle / "configs", folder / "configs", dirs_exist_ok=True)
        (folder / "configs" / "thresholds.json").unlink(missing_ok=True)
        (folder / "models").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, folder / "models" / "model.pt")
    return folder


def benchmark(bundle_copy: Path, out: Path, cases: int, dataset_dir: str, swap_organ_from: Path) -> dict:
    result = out / "qc_quality.json"
    if not result.is_file():
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(REPO / "benchmarks" / "qc_quality.py"), "--bundle", str(bundle_copy),
                   "--data", dataset_dir, "--cases", str(cases), "--families", "all",
                   "--swap-organ-from", str(swap_organ_from), "--out", str(out)]
        with open(out / "log.txt", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=CHILD_ENV, cwd=REPO)
    return json.loads(result.read_text())


def summary(run: dict, target_fpr: float = 0.05) -> dict:
    """Family-mean Dice AUROC and the false-positive rates at the calibration rule's Dice threshold."""
    clean = np.array([c["scores"]["shapeqc_dice"] for c in run["clean_scores"]], dtype=float)
    other = np.array([c["scores"]["shapeqc_dice"] for c in run.get("plausible_scores", [])], dtype=float)
    threshold = threshold_at(clean, target_fpr, "below")
    return {"family_mean_dice_auroc": run["family_mean_moderate"]["shapeqc_dice"],
            "dice_threshold": float(threshold),
            "clean_fpr_leave_one_out": float(leave_one_out_fpr(clean, target_fpr, "below")),
            "other_rater_fpr": float(np.mean(other < threshold)) if other.size else None,
            "clean_cases": int(clean.size), "other_rater_cases": int(other.size),
            "corrupted_cases": len(run["corrupted_scores"])}


def table(results: dict, settings: dict) -> str:
    lines = ["| model | training masks | family-mean Dice AUROC | clean FPR (leave-one-out) | other rater's FPR |",
             "|---|---|---|---|---|"]
    for name, row in results.items():
        fpr = "-" if row["other_rater_fpr"] is None else f"{row['other_rater_fpr']:.3f}"
        lines.append(f"| {name} | {row['training_masks']} | {row['family_mean_dice_auroc']:.3f} | "
                     f"{row['clean_fpr_leave_one_out']:.3f} | {fpr} |")
    alone = [row["family_mean_dice_auroc"] for name, row in results.items() if name.startswith("(a)")]
    lines.append("")
    lines.append(f"(a) mean {np.mean(alone):.3f}; settings: {json.dumps(settings)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40, help="passes over each mask, for every model")
    parser.add_argument("--schedules", default="8x5,40x1",
                        help="federated schedules, comma-separated RxE: R rounds of E local epochs (R x E = epochs)")
    parser.add_argument("--cases", type=int, default=8, help="clean held-out cases of the QC benchmark")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--swap-organ-from", default=str(REPO / "bundles" / "hippocampus"))
    parser.add_argument("--central-steps-control", action="store_true",
                        help="also train centrally for the federation's number of optimizer steps")
    parser.add_argument("--jobs", type=int, default=2, help="trainings / benchmarks at once (one thread each)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    schedules = [tuple(int(v) for v in schedule.split("x")) for schedule in args.schedules.split(",")]
    if any(rounds * local_epochs != args.epochs for rounds, local_epochs in schedules):
        raise SystemExit("rounds x local epochs must equal --epochs: every model passes over each mask as often")
    bundle, out = Path(args.bundle).resolve(), Path(args.out).resolve()
    sites = {path.stem: path for path in sorted((out / "sites").glob("site-*.json"))}
    if len(sites) != args.sites:
        sites = site_datalists(bundle, args.dataset_dir, args.sites, out / "sites")
    if not (out / "initial_model.pt").is_file():
        initial_weights(bundle, out / "initial_model.pt")

    jobs = {f"(a) {name} alone": (lambda n=name, p=path: train_alone(bundle, out, n, p, args.epochs, args.dataset_dir))
            for name, path in sites.items()}
    jobs["(c) centralised"] = lambda: train_alone(bundle, out, "central", None, args.epochs, args.dataset_dir)
    if args.central_steps_control:
        # the federation's steps per pass: each site's steps per epoch, averaged as FedAvg weighs them (by steps)
        site_steps = [math.ceil(len(json.loads(path.read_text())["training"]) / batch_size(bundle))
                      for path in sites.values()]
        fed_steps = args.epochs * sum(n * n for n in site_steps) / sum(site_steps)
        all_masks = sum(len(json.loads(path.read_text())["training"]) for path in sites.values())
        control_epochs = max(1, round(fed_steps / math.ceil(all_masks / batch_size(bundle))))
        jobs[f"(c) centralised, {control_epochs} epochs (the federation's steps)"] = (
            lambda: train_alone(bundle, out, f"central_{control_epochs}", None, control_epochs, args.dataset_dir))
    for rounds, local_epochs in schedules:
        jobs[f"(b) federated {rounds}x{local_epochs}"] = (
            lambda r=rounds, e=local_epochs: train_federated(bundle, out, sites, r, e, args.dataset_dir))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        weights = dict(zip(jobs, pool.map(lambda job: job(), jobs.values()), strict=True))

    def judged(name: str) -> dict:
        slug = name.split(") ", 1)[1].split(" (")[0].replace(",", "").replace(" ", "_")
        copy = bundle_with(bundle, weights[name], out / "bundles" / slug)
        return summary(benchmark(copy, out / "bench" / slug, args.cases, args.dataset_dir,
                                 Path(args.swap_organ_from).resolve()))

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(zip(weights, pool.map(judged, weights), strict=True))
    counts = {name: len(json.loads(path.read_text())["training"]) for name, path in sites.items()}
    for name, row in results.items():
        row["training_masks"] = (counts[name.split()[1]] if name.startswith("(a)") else sum(counts.values()))
    results = dict(sorted(results.items()))
    settings = {key: getattr(args, key) for key in ("sites", "epochs", "schedules", "cases")}
    (out / "federated_comparison.json").write_text(json.dumps({"bundle": str(bundle), "settings": settings,
                                                                "results": results}, indent=1))
    (out / "federated_comparison.md").write_text(table(results, settings))
    print(table(results, settings))


if __name__ == "__main__":
    main()
