"""Federated training of a bundle's shape prior with NVIDIA FLARE: every site trains the bundle's own
``configs/train.yaml`` on its own datalist, and only weights travel (FedAvg on the server).

The pieces, in the order a study uses them:

- :func:`site_datalists`: a bundle's training split cut into N disjoint "sites" (whole scans or cases stay at
  one site), one MONAI datalist JSON each, for a simulation on one machine. A real site writes its own datalist
  (``shapeqc datalist``) pointing at its own folder.
- :func:`initial_weights`: the bundle's ``network_def`` initialised under a seed: the model every site starts from.
- :func:`write_job`: an NVFlare job (Client API + ``FedAvgRecipe``) whose client script is
  :mod:`shapeqc.federated.client`; exported as a plain job folder that ``nvflare simulator`` or a provisioned
  deployment (``nvflare job submit``) runs.
- :func:`simulate`: runs an exported job with NVFlare's simulator, with simulated sites as separate processes.
- :func:`write_federated_bundle`: the final global model as a normal bundle (``models/model.pt``, version bumped,
  changelog "federated, N sites, R rounds"), ready for ``monai.bundle run evaluating``.

Needs the ``federated`` extra (``pip install -e ".[federated]"``); nothing else in shapeqc imports NVFlare.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from shapeqc.bundle.loading import bundle_datalist, bundle_parser

JOB_SETTINGS = "shapeqc_job.json"
# The job's client script: a stub that runs the installed shapeqc.federated.client. NVFlare copies every module a
# client script imports by name into the job's custom/ folder, which goes first on the site's path; a partial copy
# of shapeqc there would shadow the installed package, so the stub names no shapeqc module in an import statement.
SITE_SCRIPT = '''"""A shapeqc federated site: runs shapeqc.federated.client (installed with shapeqc) under NVFlare."""
import runpy

runpy.run_module("shapeqc.federated.client", run_name="__main__")
'''
GLOBAL_MODEL_FILE = "FL_global_model.pt"
INITIAL_MODEL = "initial_model.pt"
SITE_SCRIPT_FILE = "shapeqc_site.py"


class SiteDataError(RuntimeError):
    """A site's datalist is missing, unreadable or empty: raised by that site's client, naming site and file."""


class FederatedRunError(RuntimeError):
    """A simulated federated run failed; the message carries the failing sites' own errors."""


def _site_errors(workspace: Path) -> list[str]:
    """The distinct ``SiteDataError`` messages in a simulation's logs (each names its site and file)."""
    found: list[str] = []
    for log in sorted(workspace.rglob("log.txt")):
        for line in log.read_text(errors="replace").splitlines():
            if "SiteDataError: " in line:
                message = line.split("SiteDataError: ", 1)[1].strip()
                if message not in found:
                    found.append(message)
    return found


def _absolute_paths(item: dict) -> dict:
    """The datalist item with every existing relative path made absolute (a site's datalist must not depend on
    the folder a client process happens to start in)."""
    return {key: str(Path(value).resolve()) if isinstance(value, str) and value and Path(value).exists() else value
            for key, value in item.items()}


def site_datalists(bundle_dir: str | os.PathLike, dataset_dir: str, sites: int, out_dir: str | os.PathLike,
                   seed: int = 0) -> dict[str, Path]:
    """Cut the bundle's own training split (``train#datalist``) into ``sites`` disjoint sites and write
    ``out_dir/site-K.json`` (MONAI datalist, key ``training``) for K = 1..sites.

    Items of one scan (``scan``) or one case (``case_id``) stay at one site, as a hospital holds whole
    patients; groups are dealt round-robin after a seeded shuffle, so the sites differ by at most one group.
    Returns {site name: datalist path}.
    """
    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    items = [item for item in bundle_datalist(bundle_dir, dataset_dir, "train#datalist")]
    if any(not isinstance(item.get("mask"), str) for item in items):
        raise ValueError(f"{bundle_dir}: its training items are arrays, not files; a site's datalist must name files")
    group_key = "scan" if all("scan" in item for item in items) else "case_id"
    groups = sorted({str(item[group_key]) for item in items})
    if len(groups) < sites:
        raise ValueError(f"{bundle_dir}: {len(groups)} training groups ({group_key}) cannot fill {sites} sites")
    order = np.random.default_rng(seed).permutation(len(groups))
    site_of = {groups[index]: rank % sites for rank, index in enumerate(order)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for site in range(sites):
        name = f"site-{site + 1}"
        entries = [_absolute_paths(item) for item in items if site_of[str(item[group_key])] == site]
        paths[name] = out_dir / f"{name}.json"
        paths[name].write_text(json.dumps({"training": entries}, indent=1))
    return paths


def initial_weights(bundle_dir: str | os.PathLike, path: str | os.PathLike, seed: int = 0) -> Path:
    """Save the bundle's ``network_def`` initialised after ``monai.utils.set_determinism(seed)`` (a state dict,
    as ``models/model.pt``): the common start of every site, the federation and any baseline run."""
    import torch
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    network = bundle_parser(bundle_dir).get_parsed_content("network_def")
    set_determinism(seed=None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def _network_args(bundle_dir: str | os.PathLike) -> dict:
    """The bundle's ``network_def`` as NVFlare's model config: {"class_path", "args"} with every argument
    resolved (the server builds the same network without reading the bundle's configs)."""
    parser = bundle_parser(bundle_dir)
    raw = parser["network_def"]
    args = {key: parser.get_parsed_content(f"network_def#{key}") for key in raw if not key.startswith("_")}
    return {"class_path": raw["_target_"], "args": args}


@contextlib.contextmanager
def _working_folder(folder: Path):
    """Run the block in ``folder``: NVFlare resolves a job's relative files (the initial checkpoint, the client
    script) against the working folder and copies them into the job, which then carries its own start."""
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


def _recipe(settings: dict):
    """The FedAvg recipe of a job's settings (see :func:`write_job`); build and use it in the job's folder."""
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe.utils import set_per_site_config

    common = (f"--bundle {settings['bundle']} --local-epochs {settings['local_epochs']} "
              f"--dataset-dir {settings['dataset_dir']} --threads {settings['threads']}"
              + (f" --digest {settings['digest']}" if settings.get("digest") else ""))
    recipe = FedAvgRecipe(
        name=settings["name"],
        model=_network_args(settings["bundle"]),
        initial_ckpt=INITIAL_MODEL,
        min_clients=len(settings["sites"]),
        num_rounds=settings["rounds"],
        train_script=SITE_SCRIPT_FILE,
        train_args=common,
        # a site with a validation list scores each global model; the server keeps the best as well
        key_metric="val_mean_dice",
    )
    set_per_site_config(recipe, {site: {"train_args": f"{common} --datalist {path}"}
                                 for site, path in settings["sites"].items()})
    return recipe


def write_job(bundle_dir: str | os.PathLike, site_datalists: dict[str, str | os.PathLike], rounds: int,
              local_epochs: int, out_dir: str | os.PathLike, dataset_dir: str = ".", seed: int = 0,
              threads: int = 0, digest: str | None = None) -> Path:
    """Write the NVFlare job that trains ``bundle_dir`` by FedAvg across the named sites.

    ``site_datalists`` maps each site's name (its NVFlare client name) to its datalist JSON as that site sees it;
    ``rounds`` FedAvg rounds of ``local_epochs`` epochs each; ``threads`` caps torch's threads per site (0: torch's
    default). Every site needs shapeqc installed and the bundle at the same path (``bundle_dir``). The server
    starts from :func:`initial_weights` (carried inside the job), so every run of the job starts from the same
    model. ``digest``: the bundle's sha256 as trusted by the caller (:func:`shapeqc.bundle.trust.require_trusted`);
    every site refuses a copy with another one before reading it. Writes ``out_dir/job/<name>`` (the exported job:
    ``nvflare job submit -j out_dir/job/<name>`` on a
    provisioned deployment) and ``out_dir/shapeqc_job.json`` (the settings; :func:`simulate` reads them).
    Returns the exported job's folder.
    """
    if rounds < 1 or local_epochs < 1:
        raise ValueError(f"rounds and local_epochs must be >= 1, got {rounds} and {local_epochs}")
    if not site_datalists:
        raise ValueError("no sites")
    bundle_dir = Path(bundle_dir).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"name": f"shapeqc_{bundle_dir.name}", "bundle": str(bundle_dir),
                "sites": {site: str(Path(path).resolve()) for site, path in site_datalists.items()},
                "rounds": int(rounds), "local_epochs": int(local_epochs), "dataset_dir": str(dataset_dir),
                "seed": int(seed), "threads": int(threads), "digest": digest}
    initial_weights(bundle_dir, out_dir / INITIAL_MODEL, seed=seed)
    (out_dir / SITE_SCRIPT_FILE).write_text(SITE_SCRIPT)
    job_root = out_dir / "job"
    if job_root.exists():
        shutil.rmtree(job_root)
    with _working_folder(out_dir):
        _recipe(settings).export(str(job_root))
    (out_dir / JOB_SETTINGS).write_text(json.dumps(settings, indent=1))
    return job_root / settings["name"]


def simulate(out_dir: str | os.PathLike, threads: int | None = None) -> Path:
    """Run the job written by :func:`write_job` in ``out_dir`` with NVFlare's simulator (``SimEnv``: the server and
    one client per site on this machine, ``threads`` sites at a time, all by default), in ``out_dir/simulation``.
    Returns the final global model's checkpoint. A failing site aborts the run (RuntimeError): its message is in
    ``out_dir/simulation/<job>/<site>/simulate_job/log.txt`` and in the simulator's output."""
    from nvflare.recipe.sim_env import SimEnv

    out_dir = Path(out_dir).resolve()
    settings = json.loads((out_dir / JOB_SETTINGS).read_text())
    workspace = out_dir / "simulation"
    if (workspace / settings["name"]).exists():
        shutil.rmtree(workspace / settings["name"])
    env = SimEnv(clients=list(settings["sites"]), num_threads=threads or len(settings["sites"]),
                 workspace_root=str(workspace))
    try:
        with _working_folder(out_dir):
            _recipe(settings).run(env)
    except RuntimeError as error:
        reasons = _site_errors(workspace / settings["name"]) or [str(error)]
        raise FederatedRunError("federated run failed: " + "; ".join(reasons)) from error
    model = workspace / settings["name"] / "server" / "simulate_job" / "app_server" / GLOBAL_MODEL_FILE
    if not model.is_file():
        raise RuntimeError(f"the simulation wrote no global model ({model}); see the logs under {workspace}")
    return model


def _bumped(version: str) -> str:
    """The next minor version of ``major.minor.patch`` (a federated retraining is a new model, not a fix)."""
    major, minor, *_ = (version.split(".") + ["0", "0"])[:3]
    return f"{int(major)}.{int(minor) + 1}.0"


def check_bundle_out(bundle_dir: str | os.PathLike, out_bundle: str | os.PathLike) -> None:
    """FileExistsError unless ``out_bundle`` may receive the federated bundle: a new folder, or one that an earlier
    federated run wrote (its metadata says ``federated``); never the source bundle, a folder inside it or one
    holding it (replacing those would delete the source)."""
    source, out = Path(bundle_dir).resolve(), Path(out_bundle).resolve()
    if out == source or out.is_relative_to(source) or source.is_relative_to(out):
        raise FileExistsError(f"--bundle-out {out_bundle} is, holds or lies inside the source bundle {bundle_dir}; "
                              "choose a new folder")
    if out.exists():
        try:
            federated = "federated" in json.loads((out / "configs" / "metadata.json").read_text())
        except (OSError, ValueError):
            federated = False
        if not federated:
            raise FileExistsError(f"--bundle-out {out_bundle} exists and is not a federated bundle written by "
                                  "shapeqc; choose a new folder (nothing was removed)")


def write_federated_bundle(bundle_dir: str | os.PathLike, global_model: str | os.PathLike,
                           out_bundle: str | os.PathLike, sites: int, rounds: int, local_epochs: int,
                           expected_digest: str | None = None) -> Path:
    """Copy ``bundle_dir`` to ``out_bundle`` with the federated global model as ``models/model.pt``.

    The weights must load into the bundle's ``network_def`` (strict). The metadata's version gets a minor bump and
    a changelog entry "federated, N sites, R rounds"; ``eval_metrics`` are emptied and the calibration
    (``configs/thresholds.json``, ``docs/calibration_*``) is removed: it belonged to the old weights. Calibrate the
    new bundle with ``python -m monai.bundle run evaluating`` (its README's command) before analysing with it.
    ``out_bundle`` must pass :func:`check_bundle_out`; ``expected_digest``: the source bundle's sha256 the job was
    made with (checked before its configs are read).
    """
    import torch

    from shapeqc.bundle.trust import decide_trust

    check_bundle_out(bundle_dir, out_bundle)
    if expected_digest is not None:
        decide_trust(bundle_dir, expected_digest=expected_digest)
    bundle_dir, out_bundle = Path(bundle_dir).resolve(), Path(out_bundle).resolve()
    checkpoint = torch.load(global_model, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    network = bundle_parser(bundle_dir).get_parsed_content("network_def")
    network.load_state_dict({name: torch.as_tensor(value) for name, value in state.items()})
    if out_bundle.exists():
        shutil.rmtree(out_bundle)
    shutil.copytree(bundle_dir, out_bundle, ignore=shutil.ignore_patterns("runs", "checkpoint*.pt"))
    torch.save(network.state_dict(), out_bundle / "models" / "model.pt")
    (out_bundle / "configs" / "thresholds.json").unlink(missing_ok=True)
    # figures of the old weights (calibration, QC benchmark, quality, training curve) would describe another model
    for pattern in ("calibration_*", "qc_quality*", "quality.json", "training_curve.png"):
        for stale in (out_bundle / "docs").glob(pattern):
            stale.unlink()
    meta_path = out_bundle / "configs" / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    base_version = str(metadata.get("version", "0.0.0"))
    version = _bumped(base_version)
    metadata["version"] = version
    metadata["changelog"] = {version: (f"federated, {sites} sites, {rounds} rounds of {local_epochs} local epochs "
                                       f"(NVFlare FedAvg) from {base_version}'s configs; not yet calibrated"),
                             **metadata.get("changelog", {})}
    metadata["eval_metrics"] = {}
    metadata["federated"] = {"sites": sites, "rounds": rounds, "local_epochs": local_epochs,
                             "base_version": base_version}
    meta_path.write_text(json.dumps(metadata, indent=4) + "\n")
    return out_bundle
