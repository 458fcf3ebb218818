"""How good is the detection? shapeqc against simpler QC scores on real masks and seeded corruptions of them.

Clean cases: real masks the bundle never trained on (the AdrenalMNIST3D val split by default). Corrupted cases:
every family of ``shapeqc.calibration.corruptions`` at each severity, plus two swaps: ``swap``, another val
subject's organ in place, and ``swap_organ``, another organ's real shape (the val masks of ``--swap-organ-from``,
by default the hippocampus bundle's) scaled to the organ's volume and put in its place; seeded per case, family and
severity (re-running gives the same cases). Scores, all on the same cases: shapeqc's four metrics (input vs
reconstruction) and baselines A-E (``shapeqc.evaluation.baselines``, fitted on the training split). Per family and
severity: AUROC against the clean cases and the detection rate at each method's threshold set at 5% false positives
on the clean cases (for shapeqc Dice also at the bundle's shipped threshold). Quality estimation (the nnQC
protocol): how well Dice(input, reconstruction) predicts the true Dice(input, clean mask) over all corrupted cases.

    python benchmarks/qc_quality.py [--cases 30] [--families plane_cut,hole] [--out benchmarks/results]
                                    [--spacing 0.8 0.8 2.5] [--swap-organ-from bundles/hippocampus]

With ``--spacing``, every mask (clean, donor, baselines' training set) is first re-sliced as a CT acquisition at
that voxel size with a tilt seeded by its case id (``shapeqc.calibration.profiles.acquisition``, the calibration's CT
profile), and the corruptions act on that grid (a dilation by one voxel is then 0.8 mm in-plane, 2.5 mm across
slices, as on a real CT); shapeqc is judged at the bundle's threshold for that profile.

``--rescore RUN.json`` rebuilds the tables from a stored run's per-case scores in seconds; with
``--thresholds-from BUNDLE`` it also takes the shipped threshold from that bundle (a calibration that finished
after the run: the AUROCs do not depend on it, the detection at the shipped threshold and the clean FPR do).

The protocol, statistics and tables are the library :mod:`shapeqc.evaluation`; this file is the command.

Writes OUT/qc_quality.md (tables), OUT/qc_quality.json (summaries and every case's scores) and
OUT/qc_quality_roc.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shapeqc.evaluation.protocol import organ_swap_source, other_rater_true_dice, score_run
from shapeqc.evaluation.report import markdown, plot_roc
from shapeqc.evaluation.statistics import shipped_fields, shipped_profile, tabulate

ROOT = Path(__file__).resolve().parents[1]


def display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (the command as a user types it)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def command(args) -> str:
    """The command line that rebuilds this run, stored with its scores."""
    spacing = args.spacing
    return (f"python benchmarks/qc_quality.py --bundle bundles/{args.bundle.name} --cases {args.cases} "
            f"--train-limit {args.train_limit} --out {display_path(args.out)} --families {args.families}"
            + (" --spacing " + " ".join(f"{v:g}" for v in spacing) if spacing else "")
            + (f" --swap-organ-from {display_path(args.swap_organ_from)}" if args.swap_organ_from else "")
            + (f" --skip-cases {args.skip_cases}" if args.skip_cases else ""))


def stored_scores(path: Path) -> dict:
    """A stored qc_quality.json's scores as :func:`score_run` returns them (every shipped run stores them)."""
    stored = json.loads(Path(path).read_text())
    if "corrupted_scores" not in stored or "command" not in stored:
        raise SystemExit(f"{path}: written without every case's scores or its command; run the benchmark again")
    stored.setdefault("plausible_scores", [])
    return stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "adrenal_gland")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cases", type=int, default=30, help="clean val cases")
    parser.add_argument("--skip-cases", type=int, default=0, metavar="K",
                        help="leave out the first K val items: those that selected the weights (the train "
                             "config's val_limit), so no clean case took part in a training decision")
    parser.add_argument("--train-limit", type=int, default=400, help="training masks fitting the baselines")
    parser.add_argument("--families", default="all", help="comma-separated families, or all (incl. the swaps)")
    parser.add_argument("--swap-organ-from", type=Path, default=None, metavar="BUNDLE",
                        help="bundle whose val masks are the other organ of swap_organ (default: hippocampus; "
                             "adrenal_gland for the hippocampus bundle)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="re-slice every mask as a CT acquisition at this voxel size (mm) first")
    parser.add_argument("--rescore", type=Path, default=None, metavar="QC_QUALITY_JSON",
                        help="rebuild the tables from a stored run's scores (no reconstruction); other options "
                             "but --out and --thresholds-from are ignored")
    parser.add_argument("--thresholds-from", type=Path, default=None, metavar="BUNDLE",
                        help="with --rescore: take the shipped Dice threshold from this bundle's thresholds.json "
                             "(a calibration that finished after the run)")
    args = parser.parse_args()
    if args.thresholds_from and not args.rescore:
        parser.error("--thresholds-from needs --rescore")
    if args.rescore:
        scored = stored_scores(args.rescore)
        scored["rescored"] = (f"python benchmarks/qc_quality.py --rescore {display_path(args.rescore)} "
                              f"--out {display_path(args.out)}")
        if args.thresholds_from:
            try:
                scored.update(shipped_fields(shipped_profile(args.thresholds_from, scored["spacing_mm"])))
            except ValueError as error:
                raise SystemExit(str(error)) from None
            scored["rescored"] += f" --thresholds-from bundles/{args.thresholds_from.name}"
    else:
        # the other organ of swap_organ: by default this repository's hippocampus (or adrenal) bundle
        swap_organ_from = args.swap_organ_from or organ_swap_source(args.bundle, ROOT / "bundles")
        scored = score_run(args.bundle, args.data, args.cases, args.train_limit, args.families,
                           tuple(args.spacing) if args.spacing else None, swap_organ_from, args.skip_cases)
        # read now rather than at start: a calibration finishing while the scores were computed is the shipped
        # one; a bundle not calibrated yet still gets its scores and AUROCs (shipped columns: --rescore later)
        scored.update(shipped_fields(shipped_profile(args.bundle, args.spacing, required=False)))
        scored["command"] = command(args)
    if not scored.get("spacing_mm"):
        # another rater's masks of the held-out scans (head and neck): their true Dice, for the predicted Dice
        bundle_dir = args.bundle if not args.rescore else ROOT / "bundles" / scored["bundle"]
        scored["plausible_true_dice"] = other_rater_true_dice(bundle_dir, args.data)
    result = tabulate(scored)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qc_quality.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "qc_quality.md").write_text(markdown(result))
    plot_roc(result["corrupted_scores"], [s["scores"] for s in result["clean_scores"]], args.out / "qc_quality_roc.png")
    print((args.out / "qc_quality.md").read_text())


if __name__ == "__main__":
    main()
