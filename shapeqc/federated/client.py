"""The site side of a shapeqc federated job (NVFlare Client API): one process per site runs this script.

Each round it receives the global weights, trains the bundle's own ``configs/train.yaml`` (inference.yaml +
train.yaml, as ``python -m monai.bundle run training`` does) for ``--local-epochs`` epochs on this site's datalist
only, and sends the new weights back with the number of steps it took (FedAvg weights sites by it). With a
``validation`` list in the site's datalist it first scores the received global model on it (the bundle's own
evaluator; metric ``val_mean_dice``), which the server uses to keep the best global model. Masks never leave the
site; only weights and that metric do.

    python shapeqc/federated/client.py --bundle BUNDLE --datalist SITE.json --local-epochs E [--dataset-dir D]

Written by :func:`shapeqc.federated.job.write_job` into the job; NVFlare starts it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("shapeqc.federated.client")
SITE_RECORD = "site_rounds.json"


def read_site_datalist(site: str, datalist: str) -> dict[str, list[dict]]:
    """This site's datalist JSON as {"training": [...], "validation": [...]} (validation may be empty); a missing,
    unreadable or empty training list raises :class:`shapeqc.federated.job.SiteDataError` naming site and file."""
    from shapeqc.federated.job import SiteDataError

    path = Path(datalist)
    if not path.is_file():
        raise SiteDataError(f"{site}: datalist {path} does not exist")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SiteDataError(f"{site}: datalist {path} is unreadable ({error})") from error
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise SiteDataError(f"{site}: datalist {path} has no 'training' list (a MONAI datalist JSON is expected)")
    if not content["training"]:
        raise SiteDataError(f"{site}: datalist {path} lists no training masks")
    return {"training": content["training"], "validation": list(content.get("validation") or [])}


def site_parser(bundle: str, datalist: str, local_epochs: int, dataset_dir: str, workdir: Path,
                has_validation: bool):
    """The bundle's training configs with this site's data, epochs and scratch folder. Local training runs no
    validation of its own (the global model is scored once per round instead)."""
    from shapeqc.bundle.loading import TRAINING_CONFIGS, bundle_parser

    datalist = str(Path(datalist).resolve())
    overrides = {
        "dataset_dir": dataset_dir,
        "epochs": local_epochs,
        "ckpt_dir": str(workdir / "models"),
        "output_dir": str(workdir / "runs"),
        "val_interval": 10**9,
        "ckpt_file": None,
        "train#datalist": f"$datalists.datalist_split({datalist!r}, 'training')",
        "validate#datalist": (f"$datalists.datalist_split({datalist!r}, 'validation')" if has_validation
                              else []),
    }
    return bundle_parser(Path(bundle).resolve(), TRAINING_CONFIGS, **overrides)


def main(argv: list[str] | None = None) -> int:
    import nvflare.client as flare
    import torch
    from nvflare.app_common.abstract.fl_model import FLModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="this site's copy of the bundle folder")
    parser.add_argument("--datalist", required=True, help="this site's MONAI datalist JSON (training[, validation])")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--dataset-dir", default=".", help="the bundle's dataset_dir (unused by datalist items)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--digest", default=None,
                        help="the sha256 the job was made with: this site's copy must have it (shapeqc.bundle.trust)")
    args = parser.parse_args(argv)
    if args.digest is not None:  # before any file of the bundle is read as config: a changed copy runs nothing
        from shapeqc.bundle.trust import decide_trust

        decide_trust(args.bundle, expected_digest=args.digest)
    if args.threads:
        torch.set_num_threads(args.threads)

    flare.init()
    site = flare.get_site_name()
    data = read_site_datalist(site, args.datalist)
    workdir = Path.cwd() / "shapeqc_site"
    workdir.mkdir(parents=True, exist_ok=True)
    config = site_parser(args.bundle, args.datalist, args.local_epochs, args.dataset_dir, workdir,
                         has_validation=bool(data["validation"]))
    config.get_parsed_content("initialize")
    network = config.get_parsed_content("network")
    trainer = config.get_parsed_content("train#trainer")
    evaluator = config.get_parsed_content("validate#evaluator") if data["validation"] else None
    steps_per_epoch = len(trainer.data_loader)
    logger.info("%s: %d training masks, %d validation masks, %d steps per epoch", site, len(data["training"]),
                len(data["validation"]), steps_per_epoch)

    record = {"site": site, "datalist": str(Path(args.datalist).resolve()), "training_masks": len(data["training"]),
              "validation_masks": len(data["validation"]), "rounds": []}
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        state = {name: torch.as_tensor(value) for name, value in received.params.items()}
        network.load_state_dict(state)
        metrics = {}
        if evaluator is not None:
            evaluator.run()
            metrics["val_mean_dice"] = float(evaluator.state.metrics["val_mean_dice"])
        if flare.is_evaluate():
            flare.send(FLModel(metrics=metrics))
            continue
        # continue the same ignite run: the optimizer keeps its moments from round to round, as MonaiAlgo does
        trainer.state.max_epochs = (trainer.state.epoch or 0) + args.local_epochs
        trainer.run()
        weights = {name: value.detach().cpu() for name, value in network.state_dict().items()}
        flare.send(FLModel(params=weights, metrics=metrics,
                           meta={"NUM_STEPS_CURRENT_ROUND": steps_per_epoch * args.local_epochs}))
        logger.info("%s: round %s trained (%d local epochs)", site, received.current_round, args.local_epochs)
        # what this site did, round by round, beside its scratch files (no mask data in it)
        record["rounds"].append({"round": received.current_round, "steps": steps_per_epoch * args.local_epochs,
                                 "epochs_total": trainer.state.epoch, **metrics})
        (workdir / SITE_RECORD).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
