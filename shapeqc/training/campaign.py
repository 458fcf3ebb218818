"""A training campaign: a bundle's prior trained across sessions, each resuming from the last committed trainer
checkpoint (issue 32).

A session of this project's machines stops after 180 minutes, and a prior that converges needs more. So each
session runs the bundle's own training workflow (``python -m monai.bundle run training`` with its
``configs/train.yaml``, the same command a site runs) for ``--minutes`` on one thread, resuming from
``docs/training/<bundle>/checkpoint.pt`` (model, optimiser and trainer state: ignite continues at the saved epoch
and iteration), and then keeps in that folder, for the next session and for git:

- ``checkpoint.pt``: the newest trainer checkpoint (the last finished epoch);
- ``best_model.pt``: the weights with the best validation Dice of the campaign (kept as ``best`` in campaign.json;
  a session replaces them only with better ones: every session validates on the same organs);
- ``train.log``: every session's log, appended;
- ``campaign.json``: the recipe (the config overrides every session uses), and per session its start, minutes,
  device, first and last iteration and validation curve; totals of iterations and hours.

    OMP_NUM_THREADS=1 python -m shapeqc.training.campaign --bundle bundles/kidney --minutes 90 \
        --set "network_def#input_resolution_features=False" num_points=2500

The recipe (``--set``) is fixed by the first session and must be the same in every later one (a checkpoint of one
network does not load into another). What only steers the optimiser may change from one session to the next and is
kept in that session's entry: ``--session-set KEY=VALUE`` (any override), and ``--decay N``, a half-cosine decay
of the learning rate over this session's next ``N`` iterations (``lr_decay_iterations`` = [the checkpoint's
iteration, + N]; ``shapeqc.training.schedules``), the annealing that ends a campaign:

    OMP_NUM_THREADS=1 python -m shapeqc.training.campaign --bundle bundles/kidney --minutes 100 --decay 3500

A variant of a campaign (another recipe) is a new campaign in its own folder; ``--start-from`` seeds it with another
campaign's trainer checkpoint, so that two recipes are compared from the same weights at equal time:

    python -m shapeqc.training.campaign --bundle bundles/spleen --minutes 30 --campaigns docs/training/variants \
        --start-from docs/training/spleen/checkpoint.pt --set spatial_augmentation_prob=0.5

``--start-weights docs/training/<bundle>/best_model.pt`` beside ``--start-from`` starts from the campaign's best
weights instead of its last ones (the optimiser state emptied).

The weights reach the bundle's ``models/model.pt`` only when it is recalibrated
and shipped (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "docs" / "training"
VALIDATION = re.compile(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)")


def load_campaign(folder: Path, bundle_name: str, overrides: dict) -> dict:
    """The campaign's state in ``folder``; a new one with ``overrides`` as its recipe, or the stored one, which
    must agree."""
    path = folder / "campaign.json"
    if not path.exists():
        return {"bundle": bundle_name, "recipe": overrides, "sessions": [], "iterations": 0, "hours": 0.0}
    campaign = json.loads(path.read_text())
    if overrides and overrides != campaign["recipe"]:
        raise SystemExit(f"the campaign in {path.parent} trains the recipe {campaign['recipe']}, not {overrides}: "
                         "start a new campaign folder for another recipe")
    return campaign


def seed_campaign(folder: Path, campaign: dict, checkpoint: Path, weights: Path | None = None) -> None:
    """Start the new ``campaign`` in ``folder`` from another campaign's trainer ``checkpoint`` (copied; its
    iteration, path and training hours kept as ``started_from``). ``weights`` (a ``best_model.pt``): the copy's
    model replaced by them and its optimiser state emptied (Adam's moments belong to the checkpoint's own weights;
    they restart from the next step), so that a variant starts from a campaign's best weights, which no trainer
    checkpoint holds, on the checkpoint's iteration count."""
    if campaign["sessions"] or (folder / "checkpoint.pt").exists():
        raise SystemExit(f"{folder} already holds a campaign: --start-from seeds a new one only")
    folder.mkdir(parents=True, exist_ok=True)
    if weights is None:
        shutil.copyfile(checkpoint, folder / "checkpoint.pt")
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state["model"] = torch.load(weights, map_location="cpu", weights_only=True)
        state["optimizer"]["state"] = {}
        torch.save(state, folder / "checkpoint.pt")
    _, iteration = trainer_iteration(folder / "checkpoint.pt")
    # the hours that trained those weights, from the campaign holding the checkpoint: iterations and hours stay
    # cumulative for the prior, whichever folder its sessions ran in
    source = Path(checkpoint).parent / "campaign.json"
    hours = float(json.loads(source.read_text()).get("hours", 0.0)) if source.exists() else 0.0
    campaign["started_from"] = {"checkpoint": str(checkpoint), "iteration": iteration, "hours": hours,
                                **({"weights": str(weights)} if weights is not None else {})}
    campaign["iterations"] = iteration
    campaign["hours"] = hours


def campaign_best(campaign: dict) -> dict | None:
    """The epoch and validation Dice of ``best_model.pt``: stored as ``best``, or (campaigns from before it was
    stored, whose last session wrote best_model.pt) the best point of the last session's curve."""
    if "best" in campaign:
        return campaign["best"]
    curve = campaign["sessions"][-1]["validation"] if campaign["sessions"] else []
    if not curve:
        return None
    epoch, dice = max(curve, key=lambda point: point[1])
    return {"epoch": epoch, "val_mean_dice": dice}


def trainer_iteration(checkpoint: Path) -> tuple[int, int]:
    """(epoch, iteration) stored in a trainer checkpoint (ignite keeps the iteration and the epoch length)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["trainer"]
    iteration = int(state["iteration"])
    return iteration // max(int(state["epoch_length"] or 1), 1), iteration


def run_session(folder: Path, bundle: Path, campaign: dict, dataset_dir: str, minutes: float,
                threads: int = 1, session_overrides: dict | None = None, decay_iterations: int | None = None) -> dict:
    """One session of ``campaign`` (:func:`load_campaign`), kept in ``folder`` (module doc); returns its entry in
    ``campaign.json``. ``session_overrides`` apply to this session only (on top of the recipe); ``decay_iterations``
    adds ``lr_decay_iterations`` = [the checkpoint's iteration, that + ``decay_iterations``]."""
    import yaml

    if "time_limit_s" not in yaml.safe_load((bundle / "configs" / "train.yaml").read_text()):
        raise SystemExit(f"{bundle / 'configs' / 'train.yaml'} has no time_limit_s (ignite TimeLimit): a session "
                         "could not stop on time; add it as the kidney, liver and spleen bundles have it")
    folder.mkdir(parents=True, exist_ok=True)
    # the recipe is on disk before training starts: a session killed midway leaves a checkpoint and its recipe
    (folder / "campaign.json").write_text(json.dumps(campaign, indent=1))
    checkpoint = folder / "checkpoint.pt"
    start_epoch, start_iteration = trainer_iteration(checkpoint) if checkpoint.exists() else (0, 0)
    session_overrides = dict(session_overrides or {})
    if decay_iterations is not None:
        session_overrides["lr_decay_iterations"] = [start_iteration, start_iteration + int(decay_iterations)]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"campaign_{bundle.name}_") as run_dir:
        command = [sys.executable, "-m", "monai.bundle", "run", "training", "--bundle_root", str(bundle),
                   "--meta_file", str(bundle / "configs" / "metadata.json"),
                   "--config_file", str([str(bundle / "configs" / "inference.yaml"),
                                         str(bundle / "configs" / "train.yaml")]),
                   "--dataset_dir", dataset_dir, "--num_workers", "0", "--epochs", "100000",
                   "--time_limit_s", str(int(minutes * 60)), "--ckpt_dir", run_dir, "--output_dir", run_dir]
        if checkpoint.exists():
            command += ["--resume_from", str(checkpoint)]
        for key, value in {**campaign["recipe"], **session_overrides}.items():
            command += [f"--{key}", repr(value)]
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        log_path = Path(run_dir) / "session.log"
        with open(log_path, "w") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment, check=False)
        log_text = log_path.read_text()
        with open(folder / "train.log", "a") as log:
            log.write(f"\n===== session {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))} =====\n")
            log.write("\n".join(line for line in log_text.splitlines()
                                 if "Warning" not in line and "Loading dataset" not in line) + "\n")
        # kept even when the run failed or was killed: the epochs it finished are not lost
        newest = sorted(Path(run_dir).glob("checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))
        if newest:
            shutil.copyfile(newest[-1], checkpoint)
        session_curve = [[int(e), float(v)] for e, v in VALIDATION.findall(log_text)]
        best = campaign_best(campaign)
        if (Path(run_dir) / "model.pt").exists() and session_curve:
            epoch, dice = max(session_curve, key=lambda point: point[1])
            if best is None or dice > best["val_mean_dice"]:
                shutil.copyfile(Path(run_dir) / "model.pt", folder / "best_model.pt")
                best = {"epoch": epoch, "val_mean_dice": dice}
        if best is not None:
            # stored even when kept: a campaign from before ``best`` was stored would otherwise derive it from the
            # session appended below, whose curve is not what best_model.pt holds
            campaign["best"] = best
        if result.returncode != 0:
            raise SystemExit(f"training failed (exit {result.returncode}); its log: {folder / 'train.log'}")
    end_epoch, end_iteration = trainer_iteration(checkpoint) if checkpoint.exists() else (0, 0)
    seconds = time.time() - started
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "minutes": seconds / 60,
               "device": f"cpu, {threads} thread(s)" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
               "epochs": [start_epoch, end_epoch], "iterations": [start_iteration, end_iteration],
               **({"overrides": session_overrides} if session_overrides else {}),
               "validation": session_curve}
    campaign["sessions"].append(session)
    campaign["iterations"] = end_iteration
    campaign["hours"] = campaign.get("hours", 0.0) + seconds / 3600
    (folder / "campaign.json").write_text(json.dumps(campaign, indent=1))
    return session


def main(argv: list[str] | None = None) -> int:
    from shapeqc.bundle.loading import parse_overrides

    parser = argparse.ArgumentParser(description="One session of a bundle's training campaign.")
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--dataset-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--minutes", type=float, required=True, help="training time of this session")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--campaigns", type=Path, default=CAMPAIGNS,
                        help="folder holding one campaign folder per bundle (default docs/training)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides: the campaign's recipe (first session; later ones must agree)")
    parser.add_argument("--session-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides of this session only (what steers the optimiser, not the network)")
    parser.add_argument("--start-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="seed a new campaign with another campaign's trainer checkpoint (a variant's start)")
    parser.add_argument("--start-weights", type=Path, default=None, metavar="WEIGHTS",
                        help="with --start-from: start from these weights (e.g. the campaign's best_model.pt) on the "
                             "checkpoint's iteration count, the optimiser state emptied")
    parser.add_argument("--decay", type=int, default=None, metavar="N",
                        help="half-cosine learning-rate decay over this session's next N iterations (to lr_floor)")
    args = parser.parse_args(argv)
    bundle = args.bundle.resolve()
    folder = args.campaigns / bundle.name
    campaign = load_campaign(folder, bundle.name, parse_overrides(args.set))
    if args.start_weights is not None and args.start_from is None:
        parser.error("--start-weights needs --start-from (the trainer checkpoint whose counts it keeps)")
    if args.start_from is not None:
        # the paths kept as typed: repository paths, not this machine's
        seed_campaign(folder, campaign, args.start_from, args.start_weights)
    session = run_session(folder, bundle, campaign, args.dataset_dir, args.minutes, args.threads,
                          parse_overrides(args.session_set), args.decay)
    print(json.dumps(session))
    return 0


if __name__ == "__main__":
    sys.exit(main())
