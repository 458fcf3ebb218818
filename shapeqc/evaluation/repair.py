"""Repair: how much of a corruption a shape prior undoes, the training target watched in issue 32.

For a held-out organ on the bundle's canonical grid, each corruption family of :mod:`shapeqc.calibration.corruptions`
at each severity (seeded by case, family and severity) is applied to the clean grid mask; the prior reconstructs
the corrupted mask with the bundle's own inferer. Then

    repair = Dice(reconstruction of the corrupted mask, clean mask) - Dice(corrupted mask, clean mask)

A prior that copies its input scores 0; one that restores the clean organ scores the damage it undid; one that
makes things worse scores below 0. The clean row gives Dice(reconstruction of the clean mask, clean mask): how
closely the prior keeps a clean organ (the Dice a clean organ scores in analysis). Everything is measured on the
canonical grid (the prior's own space), so no resampling enters the figure.

    python -m shapeqc.evaluation.repair --bundle bundles/kidney --limit 24 [--skip-cases K] [--weights W.pt] \
        [--set network_def#input_resolution_features=False] [--out repair.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from shapeqc.calibration.corruptions import FAMILIES
from shapeqc.scoring.metrics import dice

CLEAN = "clean"


def held_out_grids(bundle_dir: str | Path, dataset_dir: str, limit: int | None = None,
                   overrides: dict | None = None, skip_cases: int = 0) -> list[tuple[str, np.ndarray]]:
    """(case name, (R, R, R) bool clean mask on the canonical grid) of the bundle's held-out split
    (``validate#datalist`` without its limit), the first ``limit`` of them after the first ``skip_cases`` (those that
    selected the weights, as the train config's ``val_limit`` says)."""
    from monai.transforms import Compose

    from shapeqc.bundle.loading import TRAINING_CONFIGS, bundle_parser

    # one parser gives both the grid transforms and the whole held-out split (no case limits)
    parser = bundle_parser(bundle_dir, TRAINING_CONFIGS, dataset_dir=dataset_dir,
                           **{**(overrides or {}), "val_limit": None, "train_limit": None})
    to_grid = Compose(parser.get_parsed_content("canonical_grid_transforms"))
    items = list(parser.get_parsed_content("validate#datalist"))[skip_cases:]
    grids = []
    for item in items[:limit] if limit else items:
        out = to_grid(dict(item))
        name = str(item["case_id"]) + (f"/{item['organ']}" if item.get("organ") else "")
        grids.append((name, np.asarray(out["mask"])[0] > 0.5))
    return grids


def repair_rows(reconstruct, grids: list[tuple[str, np.ndarray]], families: list[str] | None = None,
                seed: int = 2024) -> list[dict]:
    """One row per (case, family, severity) and one ``clean`` row per case.

    Args:
        reconstruct: (R, R, R) bool mask -> (R, R, R) bool reconstruction.
        grids: :func:`held_out_grids`'s output.
        families: names in :data:`FAMILIES`; None: all.
        seed: base seed; each corruption is seeded by ``stable_seed(f"{case}/{family}/{severity}", seed)``.
    Returns:
        rows with ``case``, ``family``, ``severity`` (index into the family's severities), ``dice_input``
        (corrupted to clean), ``dice_reconstruction`` (its reconstruction to clean), ``repair`` and ``qc_dice``
        (the given mask to its reconstruction: the score ``shapeqc analyse`` judges, on the grid).
    """
    from shapeqc.transforms.corruption import stable_seed

    rows = []
    for case, clean in grids:
        rows.append(_row(case, CLEAN, 0, clean, clean, reconstruct(clean)))
        for family in families or list(FAMILIES):
            generate, severities = FAMILIES[family]
            for level, kwargs in enumerate(severities):
                try:
                    corrupted = generate(clean, stable_seed(f"{case}/{family}/{level}", seed), **kwargs)
                except ValueError:  # no room for it on this grid (an island beside an organ filling the grid)
                    continue
                rows.append(_row(case, family, level, clean, corrupted, reconstruct(corrupted)))
    return rows


def _row(case: str, family: str, level: int, clean: np.ndarray, given: np.ndarray,
         reconstruction: np.ndarray) -> dict:
    dice_input, dice_reconstruction = dice(given, clean), dice(reconstruction, clean)
    return {"case": case, "family": family, "severity": level, "dice_input": dice_input,
            "dice_reconstruction": dice_reconstruction, "repair": dice_reconstruction - dice_input,
            "qc_dice": dice(given, reconstruction)}


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per family: organs ``n``, mean ``dice_input``, ``dice_reconstruction``, ``repair`` and ``qc_dice``, the
    share of rows with repair > 0 and ``qc_auroc`` (the family's corrupted organs against the clean ones, on
    1 - ``qc_dice``: how well the grid score alone tells them apart); plus ``mean_repair`` over every corruption
    row and ``mean_qc_auroc`` over the families."""
    from shapeqc.scoring.roc import auroc

    by_family: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row)
    table = {}
    for family, group in by_family.items():
        table[family] = {"n": len(group),
                         **{key: float(np.mean([r[key] for r in group]))
                            for key in ("dice_input", "dice_reconstruction", "repair", "qc_dice")},
                         "repaired_share": float(np.mean([r["repair"] > 0 for r in group]))}
    clean = [1.0 - r["qc_dice"] for r in by_family.get(CLEAN, [])]
    for family, group in by_family.items():
        if family != CLEAN and clean:
            table[family]["qc_auroc"] = auroc([1.0 - r["qc_dice"] for r in group], clean)
    corrupted = [r["repair"] for r in rows if r["family"] != CLEAN]
    aurocs = [row["qc_auroc"] for row in table.values() if "qc_auroc" in row]
    table["mean_repair"] = {"n": len(corrupted), "repair": float(np.mean(corrupted)) if corrupted else float("nan"),
                            "qc_auroc": float(np.mean(aurocs)) if aurocs else float("nan")}
    return table


def bundle_reconstructor(bundle_dir: str | Path, weights: str | Path | None = None, overrides: dict | None = None):
    """(R, R, R) bool -> (R, R, R) bool with the bundle's network (its ``models/model.pt`` or ``weights``: a
    state dict or a trainer checkpoint holding ``model``) and inferer, on the CPU."""
    from shapeqc.bundle.loading import INFERENCE_CONFIGS, bundle_parser

    parser = bundle_parser(bundle_dir, INFERENCE_CONFIGS, device="$torch.device('cpu')", **(overrides or {}))
    network = parser.get_parsed_content("network_def")
    state = torch.load(weights or Path(bundle_dir) / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    network.eval()
    inferer = parser.get_parsed_content("inferer")

    @torch.no_grad()
    def reconstruct(mask: np.ndarray) -> np.ndarray:
        grid = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        return inferer(grid, network)[0, 0].numpy() > 0

    return reconstruct


def format_table(table: dict[str, dict]) -> str:
    lines = [f"{'family':16s} {'n':>4s} {'Dice in':>8s} {'Dice out':>9s} {'repair':>8s} {'repaired':>9s} "
             f"{'QC Dice':>8s} {'QC AUROC':>9s}"]
    for family, row in table.items():
        if family == "mean_repair":
            continue
        lines.append(f"{family:16s} {row['n']:4d} {row['dice_input']:8.4f} {row['dice_reconstruction']:9.4f} "
                     f"{row['repair']:+8.4f} {row['repaired_share']:9.2f} {row['qc_dice']:8.4f} "
                     f"{row.get('qc_auroc', float('nan')):9.3f}")
    overall = table["mean_repair"]
    lines.append(f"mean repair over {overall['n']} corrupted organs: {overall['repair']:+.4f}; "
                 f"family-mean QC AUROC {overall['qc_auroc']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Repair of a bundle's prior on its held-out organs, per family.")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--dataset-dir", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--weights", help="a state dict or trainer checkpoint instead of models/model.pt")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--limit", type=int, help="first N held-out organs")
    parser.add_argument("--skip-cases", type=int, default=0, metavar="K",
                        help="leave out the first K held-out organs (those that selected the weights)")
    parser.add_argument("--families", nargs="*", help=f"default: all of {', '.join(FAMILIES)}")
    parser.add_argument("--out", help="write rows and summary as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from shapeqc.bundle.loading import parse_overrides

    overrides = parse_overrides(args.set)
    start = time.perf_counter()
    grids = held_out_grids(args.bundle, args.dataset_dir, args.limit, overrides, args.skip_cases)
    rows = repair_rows(bundle_reconstructor(args.bundle, args.weights, overrides), grids, args.families)
    table = summarise(rows)
    print(format_table(table))
    print(f"{len(grids)} held-out organs, {time.perf_counter() - start:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"bundle": str(args.bundle), "weights": args.weights,
                                              "overrides": overrides, "skipped_cases": args.skip_cases,
                                              "summary": table, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
