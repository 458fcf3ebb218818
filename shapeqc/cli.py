"""The ``shapeqc`` command line.

- ``shapeqc analyse``: reconstruct, score and flag every organ the given bundles cover; write per-organ outputs,
  the journal and the reports (``shapeqc.runs.batch``).
- ``shapeqc calibrate``: set a bundle's outlier thresholds on clean masks, one profile per acquisition spacing.
- ``shapeqc datalist``: list cases from a NIfTI folder, a TotalSegmentator tree or the AdrenalMNIST3D npz,
  split them deterministically and write a MONAI datalist JSON.
- ``shapeqc grid``: bring one organ to its canonical grid and write it as NIfTI (with its grid_to_world), plus
  the grid mapped back to the input space.
- ``shapeqc new-bundle``: write a complete, trainable (untrained) bundle for a TotalSegmentator organ.
- ``shapeqc federated-job``: write an NVIDIA FLARE job that trains a bundle by FedAvg across sites (each on its
  own datalist); ``shapeqc federated-simulate`` runs it with simulated sites and writes the federated bundle.
- ``shapeqc reviews``: compare a reviewer's verdicts exported from report.html with the run's flags.
- ``shapeqc trust``: show what a bundle's configs run, and vouch for it (its digest into your trust store).

Sub-commands import their work when they run, so ``shapeqc --help`` loads neither torch nor MONAI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _datalist(args: argparse.Namespace) -> int:
    from shapeqc.bundle.datasets import (
        adrenalmnist3d_items,
        nifti_folder_items,
        split_items,
        totalsegmentator_tree_items,
        write_datalist,
    )

    source = Path(args.source).resolve()
    if source.suffix == ".npz":
        items = list(adrenalmnist3d_items(source))
    elif args.organs:
        items = list(totalsegmentator_tree_items(source, args.organs))
    else:
        items = list(nifti_folder_items(source))
    if args.organ and not args.organs:
        for item in items:
            item["organ"] = args.organ
    splits = split_items(items, seed=args.seed, val_fraction=args.val, test_fraction=args.test)
    path = write_datalist(splits, args.out)
    counts = {name: len(entries) for name, entries in splits.items()}
    print(f"{path}: {counts}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    from shapeqc.scoring.metrics import dice
    from shapeqc.transforms.canonical_grid import CanonicalGrid
    from shapeqc.transforms.grid_transforms import CanonicalGridToSourced, ToCanonicalGridd
    from shapeqc.transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd
    from shapeqc.transforms.volume_io import write_volume

    item = {"case_id": Path(args.input).name, "mask": args.input, "organ": args.organ}
    item = LoadOrganMaskd("mask", map_version=args.map_version)(item)
    item = CheckOrganMaskd("mask", check_border=not args.allow_truncated)(item)
    original = item["mask"].astype(bool)
    item = ToCanonicalGridd("mask", spacing_mm=args.spacing, grid_size=args.size, margin=args.margin,
                            mirror_side=args.mirror)(item)
    plan = CanonicalGrid.from_dict(item["grid"])
    out = Path(args.out)
    write_volume(out / "canonical_grid.nii.gz", item["mask"][0], plan.grid_to_world)
    restored = CanonicalGridToSourced("mask")(item)["mask"]
    write_volume(out / "round_trip.nii.gz", restored, plan.source_affine)
    summary = {"input": args.input, "organ": args.organ, "load": item["mask_load"], **plan.to_dict(),
               "round_trip_dice": dice(original, restored)}
    (out / "grid.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("input", "organ", "zoom", "mirrored", "round_trip_dice")}))
    return 0


def _new_bundle(args: argparse.Namespace) -> int:
    from shapeqc.bundle.loading import new_bundle

    template = Path(args.from_bundle)
    if not template.is_dir():
        template = Path("bundles") / args.from_bundle
    out = new_bundle(args.organ, args.out or Path("bundles") / args.organ, template, spacing_mm=args.spacing,
                     grid_size=args.size, preset=args.preset)
    print(f"wrote untrained bundle {out} (see {out}/docs/README.md to train it)")
    return 0


def _analyse(args: argparse.Namespace) -> int:
    from shapeqc.bundle.loading import BundleTrustError, load_bundle, load_trained_bundles
    from shapeqc.runs.batch import ImageArgumentError, run_batch
    from shapeqc.runs.journal import OutputInUseError, OutputLockedError
    from shapeqc.runs.threads import WAIT_POLICY, use_threads

    # in this process: the cores it may use, or --threads; Dask workers' are set by run_batch
    threads = None if args.scheduler else use_threads(args.threads)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    # each bundle loaded once for the whole batch; a named --bundle must be trained, a folder's untrained
    # bundles are skipped with a warning
    trusted = args.trust_bundle or []
    try:
        bundles = [load_bundle(path, device, refine_steps=args.refine_steps, trusted=trusted)
                   for path in args.bundle or []]
        bundles += load_trained_bundles(args.bundles or [], device, args.refine_steps, trusted=trusted,
                                        warn=lambda text: print(f"shapeqc analyse: {text}", file=sys.stderr))
    except BundleTrustError as error:
        raise SystemExit(f"shapeqc analyse: {error}") from None
    if not bundles:
        raise SystemExit("shapeqc analyse: no trained bundle; give --bundle DIR (repeatable) or --bundles FOLDER")
    where = (f"Dask scheduler {args.scheduler}" if args.scheduler
             else f"this process, {threads} thread(s), OpenMP waiting {os.environ.get(WAIT_POLICY, '?').lower()}")
    print(f"shapeqc analyse on {device} in {where}: {len(bundles)} bundle(s)", file=sys.stderr)
    for bundle in bundles:
        print(f"  {bundle.name} {bundle.metadata.get('version', '?')} sha256 {bundle.digest} ({bundle.trust})",
              file=sys.stderr)
    notes: list[str] = []
    try:
        records = run_batch(args.inputs, bundles, args.output, organ=args.organ, resume=args.resume,
                            map_version=args.map_version, scheduler=args.scheduler, retries=args.retries,
                            notes=notes, image=args.image, overwrite=args.overwrite,
                            threads=args.threads if args.scheduler else None)
    except (OutputLockedError, OutputInUseError, ImageArgumentError, BundleTrustError) as error:
        raise SystemExit(f"shapeqc analyse: {error}") from None
    for note in notes:
        print(f"shapeqc analyse: note: {note}", file=sys.stderr)
    counts = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    print(json.dumps({"records": len(records), **counts, "notes": notes,
                      "report": str(Path(args.output) / "report.html")}))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    if args.cohort:
        return _calibrate_cohort(args)
    if args.refit_quality:
        if not args.bundle:
            raise SystemExit("shapeqc calibrate --refit-quality: give --bundle")
        from shapeqc.calibration.profiles import refit_quality

        for quality in refit_quality(args.bundle):
            print(json.dumps({key: quality[key] for key in ("measured_coverage", "coverage_basis", "rank_by",
                                                            "half_width", "estimate", "raw_dice")}))
        return 0
    if not args.bundle or not args.data:
        raise SystemExit("shapeqc calibrate: give --bundle and --data (a bundle on clean masks), or --cohort OUT "
                         "(a finished run on its own scores)")
    from shapeqc.bundle.datalists import adrenalmnist3d_split, datalist_split
    from shapeqc.calibration.profiles import calibrate
    from shapeqc.runs.threads import use_threads

    use_threads(args.threads)

    if args.data.endswith(".json"):
        items = datalist_split(args.data, args.split, args.limit)
    else:
        items = adrenalmnist3d_split(args.data, "val", args.limit)
    spacing = tuple(float(v) for v in args.spacing.split(",")) if args.spacing else None
    report = calibrate(args.bundle, items, target_fpr=args.fpr, spacing_mm=spacing, refine_steps=args.refine_steps,
                       data_description=f"{args.data} ({len(items)} clean cases)", write=not args.dry_run)
    print(json.dumps({"thresholds": report["thresholds"]["metrics"], "families": report["families"]}, indent=1))
    return 0


def _calibrate_cohort(args: argparse.Namespace) -> int:
    from shapeqc.runs.cohort_calibration import COHORT_FILE, DEFAULT_MIN_ORGANS, calibrate_cohort
    from shapeqc.runs.journal import OutputLockedError

    min_organs = DEFAULT_MIN_ORGANS if args.min_organs is None else args.min_organs
    try:
        summary = calibrate_cohort(args.cohort, args.name, target_rate=args.fpr, min_organs=min_organs)
    except (FileNotFoundError, ValueError, OutputLockedError) as error:
        raise SystemExit(f"shapeqc calibrate --cohort: {error}") from None
    for organ, entry in summary["organs"].items():
        verdict = entry.get("refused") or (f"Dice < {entry['profile']['metrics']['dice']['threshold']:.4f} flags; "
                                           f"{entry['profile']['cohort']['set_aside']} gross failures set aside")
        print(f"{organ}: {entry['judged']} judged, flagged {entry['flagged_shipped']} by the shipped profile, "
              f"{entry['flagged_cohort']} by {summary['name']}: {verdict}", file=sys.stderr)
    print(json.dumps({"profile": summary["name"], "summary": str(Path(args.cohort) / COHORT_FILE),
                      "report": str(Path(args.cohort) / "report.html")}))
    return 0


def _site_pairs(pairs: list[str]) -> dict[str, str]:
    sites = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"shapeqc federated-job: --site wants NAME=DATALIST, got {pair!r}")
        sites[name] = path
    return sites


def _trust(args: argparse.Namespace) -> int:
    from shapeqc.bundle.trust import BundleTrustError, bundle_digest, trust_bundle, trust_store_path, what_it_runs

    try:
        if args.show:
            print(f"{args.bundle}: sha256 {bundle_digest(args.bundle)}; its configs run:")
            print("\n".join(f"  {line}" for line in what_it_runs(args.bundle)))
            return 0
        entry = trust_bundle(args.bundle, note=args.note or "")
    except BundleTrustError as error:
        raise SystemExit(f"shapeqc trust: {error}") from None
    print(f"{args.bundle}: sha256 {entry['sha256']}; its configs run:")
    print("\n".join(f"  {line}" for line in entry["runs"]))
    print(f"trusted: recorded in {trust_store_path()} (any change to any file of the bundle voids it)")
    return 0


def _federated_job(args: argparse.Namespace) -> int:
    from shapeqc.bundle.trust import BundleTrustError, require_trusted
    from shapeqc.federated.job import site_datalists, write_job

    try:  # every site will run the bundle's training config: code, so only a vouched-for bundle
        decision = require_trusted(args.bundle, args.trust_bundle or [], purpose="a federated job")
    except BundleTrustError as error:
        raise SystemExit(f"shapeqc federated-job: {error}") from None

    if bool(args.site) == bool(args.sites):
        raise SystemExit("shapeqc federated-job: give either --sites N (split the bundle's training data, for a "
                         "simulation) or --site NAME=DATALIST for every site")
    if args.sites:
        sites = site_datalists(args.bundle, args.dataset_dir, args.sites, Path(args.out) / "datalists",
                               seed=args.seed)
    else:
        sites = _site_pairs(args.site)
    job = write_job(args.bundle, sites, args.rounds, args.local_epochs, args.out, dataset_dir=args.dataset_dir,
                    seed=args.seed, threads=args.threads, digest=decision.digest)
    print(json.dumps({"job": str(job), "sites": {name: str(path) for name, path in sites.items()},
                      "simulate": f"shapeqc federated-simulate {args.out}"}, indent=1))
    return 0


def _federated_simulate(args: argparse.Namespace) -> int:
    from shapeqc.bundle.trust import BundleTrustError
    from shapeqc.federated.job import (
        JOB_SETTINGS,
        FederatedRunError,
        check_bundle_out,
        simulate,
        write_federated_bundle,
    )

    settings_file = Path(args.job) / JOB_SETTINGS
    if not settings_file.is_file():
        raise SystemExit(f"shapeqc federated-simulate: {settings_file} does not exist (write it with federated-job)")
    settings = json.loads(settings_file.read_text())
    out_bundle = args.bundle_out or str(Path(args.job) / "bundle")
    try:
        check_bundle_out(settings["bundle"], out_bundle)
        model = simulate(args.job, threads=args.threads)
        write_federated_bundle(settings["bundle"], model, out_bundle, len(settings["sites"]), settings["rounds"],
                               settings["local_epochs"], expected_digest=settings.get("digest"))
    except (FederatedRunError, BundleTrustError, FileExistsError) as error:
        raise SystemExit(f"shapeqc federated-simulate: {error}") from None
    print(json.dumps({"global_model": str(model), "bundle": out_bundle}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shapeqc", description="Shape-prior QC of organ segmentations")
    commands = parser.add_subparsers(dest="command", required=True)

    datalist = commands.add_parser("datalist", help="write a deterministic MONAI datalist JSON")
    datalist.add_argument("source", help="folder of NIfTI masks, TotalSegmentator tree, or AdrenalMNIST3D .npz")
    datalist.add_argument("--out", required=True, help="datalist JSON to write")
    datalist.add_argument("--organs", nargs="*", default=None, help="organs to list from a TotalSegmentator tree")
    datalist.add_argument("--organ", default=None, help="organ name to record on every item of a NIfTI folder")
    datalist.add_argument("--seed", type=int, default=0)
    datalist.add_argument("--val", type=float, default=0.1, help="validation fraction")
    datalist.add_argument("--test", type=float, default=0.0, help="test fraction")
    datalist.set_defaults(run=_datalist)

    grid = commands.add_parser("grid", help="bring one organ to its canonical grid and back")
    grid.add_argument("input", help="binary mask, multi-label map or TotalSegmentator folder")
    grid.add_argument("--organ", default=None, help="organ name (needed for multi-label maps and folders)")
    grid.add_argument("--map-version", default="auto", choices=("auto", "v1", "v2"))
    grid.add_argument("--spacing", type=float, default=1.0, help="grid spacing in mm")
    grid.add_argument("--size", type=int, default=128, help="grid size R")
    grid.add_argument("--margin", type=int, default=8, help="free voxels around the organ")
    grid.add_argument("--mirror", default=None, choices=("left", "right"), help="mirror organs of this side")
    grid.add_argument("--allow-truncated", action="store_true", help="accept organs touching the border")
    grid.add_argument("--out", required=True, help="output folder")
    grid.set_defaults(run=_grid)

    bundle = commands.add_parser("new-bundle", help="write a trainable bundle for a TotalSegmentator organ")
    bundle.add_argument("--organ", required=True, help="TotalSegmentator organ name, e.g. kidney_left")
    bundle.add_argument("--from", dest="from_bundle", default="adrenal_gland",
                        help="template bundle folder, or a name under bundles/ (default adrenal_gland)")
    bundle.add_argument("--out", type=Path, default=None, help="new bundle folder (default bundles/<organ>)")
    bundle.add_argument("--spacing", type=float, default=1.5, help="grid spacing in mm (research pipeline: 1.5)")
    bundle.add_argument("--size", type=int, default=128, help="grid size R (research pipeline: 128)")
    bundle.add_argument("--preset", default="research", help="network preset (research, cpu_small, tiny)")
    bundle.set_defaults(run=_new_bundle)

    analyse = commands.add_parser("analyse", help="reconstruct, score and flag organs; write reports")
    analyse.add_argument("inputs", nargs="+", help="NIfTI files, folders (recursive), TotalSegmentator trees")
    analyse.add_argument("--bundle", action="append", help="trained bundle folder (repeatable)")
    analyse.add_argument("--bundles", action="append", help="folder of bundle folders")
    analyse.add_argument("--output", required=True, help="output folder")
    analyse.add_argument("--organ", default=None, help="organ name when a bundle covers several")
    analyse.add_argument("--map-version", default="auto", choices=("auto", "v1", "v2"))
    analyse.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    analyse.add_argument("--resume", action="store_true",
                         help="continue the run in OUTPUT: keep each finished case whose input file, bundles and "
                              "--organ are unchanged; analyse the rest")
    analyse.add_argument("--overwrite", action="store_true",
                         help="start again in an OUTPUT that holds an earlier run (moved to OUTPUT/previous_runs/)")
    analyse.add_argument("--image", default=None, metavar="CT.nii.gz",
                         help="the image the single case given was segmented on, shown under its pictures (found "
                              "beside each segmentation without it: ct.nii.gz, NAME_ct.nii.gz, ...)")
    analyse.add_argument("--scheduler", default=None, metavar="local:N | tcp://HOST:PORT",
                         help="run each case as a Dask task: local:N starts N worker processes here, an address "
                              "uses a running Dask cluster (pip install shapeqc[cluster]); default: this process")
    analyse.add_argument("--threads", type=int, default=None,
                         help="torch threads (default: the cores this process may use; with --scheduler, per "
                              "worker: local:N shares them out, a running cluster's workers use 1)")
    analyse.add_argument("--retries", type=int, default=3,
                         help="with --scheduler: times a case is re-run after its worker died (default 3)")
    analyse.add_argument("--trust-bundle", action="append", metavar="PATH",
                         help="run this bundle for this run although it is neither shipped nor in your trust store "
                              "and its configs run more than analysis needs (a bundle is code: read what it runs "
                              "with `shapeqc trust --show PATH` first; repeatable)")
    analyse.add_argument("--refine-steps", type=int, default=0,
                         help="test-time refinement: encoder fine-tuning steps per organ (0: off)")
    analyse.set_defaults(run=_analyse)

    calibrate = commands.add_parser("calibrate", help="set a bundle's outlier thresholds on clean data, or a "
                                    "cohort's own on a finished run (--cohort)")
    calibrate.add_argument("--bundle", help="the bundle to calibrate on clean masks (with --data)")
    calibrate.add_argument("--data", help="datalist JSON, or the folder holding adrenalmnist3d/")
    calibrate.add_argument("--cohort", metavar="OUT", default=None,
                           help="a finished shapeqc analyse output folder: fit a Dice threshold per organ on the "
                                "run's own scores, store it as a named profile and re-judge the run")
    calibrate.add_argument("--name", default="cohort", help="the cohort profile's name (with --cohort)")
    calibrate.add_argument("--min-organs", type=int, default=None,
                           help="fewest judged organs to fit an organ's cohort profile on (with --cohort; default 50)")
    calibrate.add_argument("--split", default="validation", help="datalist split of clean cases")
    calibrate.add_argument("--fpr", type=float, default=0.05,
                           help="target false-positive rate on clean cases (--cohort: share of the cohort flagged)")
    calibrate.add_argument("--limit", type=int, default=None)
    calibrate.add_argument("--refine-steps", type=int, default=0, help="test-time refinement steps per case")
    calibrate.add_argument("--dry-run", action="store_true", help="report only; write no thresholds")
    calibrate.add_argument("--threads", type=int, default=None,
                           help="torch threads (default: the cores this process may use)")
    calibrate.add_argument("--refit-quality", action="store_true",
                           help="refit the bundle's quality estimators from its stored calibration organs "
                                "(docs/calibration_*.json); thresholds and reconstructions untouched")
    calibrate.add_argument("--spacing", default=None,
                           help="re-slice clean cases to this spacing first, e.g. 0.8,0.8,2.5 (a CT profile)")
    calibrate.set_defaults(run=_calibrate)

    job = commands.add_parser("federated-job", help="write an NVFlare FedAvg job training a bundle across sites")
    job.add_argument("--bundle", required=True)
    job.add_argument("--sites", type=int, default=0,
                     help="simulation: cut the bundle's training split into N sites (whole scans/cases per site)")
    job.add_argument("--site", action="append", default=[], metavar="NAME=DATALIST",
                     help="deployment: a site's NVFlare client name and its datalist JSON, as that site sees it")
    job.add_argument("--rounds", type=int, required=True, help="FedAvg rounds")
    job.add_argument("--local-epochs", type=int, default=1, help="epochs each site trains per round")
    job.add_argument("--out", required=True, help="folder for the job, its settings and (--sites) the datalists")
    job.add_argument("--dataset_dir", default="../shared/data", help="the bundle's dataset_dir (for --sites)")
    job.add_argument("--seed", type=int, default=0, help="initial weights and the site split")
    job.add_argument("--threads", type=int, default=0, help="torch threads per site (0: torch's default)")
    job.add_argument("--trust-bundle", action="append", metavar="PATH",
                     help="train this bundle although it is neither shipped nor in your trust store (its training "
                          "config is code that every site runs)")
    job.set_defaults(run=_federated_job)

    simulate = commands.add_parser("federated-simulate",
                                   help="run a federated job with NVFlare's simulator; write the federated bundle")
    simulate.add_argument("job", help="the --out folder of shapeqc federated-job")
    simulate.add_argument("--threads", type=int, default=None, help="sites running at once (default: all)")
    simulate.add_argument("--bundle-out", default=None, help="where to write the federated bundle (JOB/bundle)")
    simulate.set_defaults(run=_federated_simulate)

    trust = commands.add_parser("trust", help="vouch for a bundle: record its digest in your trust store")
    trust.add_argument("bundle", help="the bundle folder")
    trust.add_argument("--show", action="store_true", help="only print its digest and what its configs run")
    trust.add_argument("--note", default=None, help="why it is trusted (kept in the store)")
    trust.set_defaults(run=_trust)

    reviews = commands.add_parser("reviews", help="compare a reviewer's verdicts (reviews.csv) with the flags")
    reviews.add_argument("output", help="the output folder of a shapeqc analyse run (holds report.json)")
    reviews.add_argument("reviews_csv", help="reviews.csv exported from that run's report.html")
    reviews.add_argument("--json", action="store_true", help="print the comparison as JSON")
    reviews.set_defaults(run=_reviews)
    return parser


def _reviews(args: argparse.Namespace) -> int:
    from shapeqc.outputs.reviews import reviews_of_run, reviews_text

    try:
        result = reviews_of_run(args.output, args.reviews_csv)
    except (OSError, ValueError) as error:
        raise SystemExit(f"shapeqc reviews: {error}") from None
    print(json.dumps(result, indent=1) if args.json else reviews_text(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # `--help` ends here, before torch or MONAI is imported
    from shapeqc.runs.threads import passive_waiting

    passive_waiting()  # before the first torch import, the only moment OpenMP reads its wait policy
    from shapeqc.transforms.errors import SegmentationInputError

    try:
        return args.run(args)
    except SegmentationInputError as exc:
        print(f"shapeqc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
