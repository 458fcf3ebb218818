"""Other scores from the same reconstruction: would any separate corrupted from clean masks better than Dice?

The shipped score is Dice(input, reconstruction) with the reconstruction's occupancy thresholded at 0.5. The
prior's soft occupancy holds more: where it is unsure whether to add the part a plane cut removed, the
probabilities rise without crossing 0.5. Scored here in the canonical grid, on the benchmark's clean val masks
and its seeded corruptions (``shapeqc.evaluation.protocol.corrupted_cases``, same seeds: the benchmark's cases):

- ``dice``: Dice(input, occupancy > 0.5), the shipped score (in the grid rather than mapped back to the input);
- ``soft_dice``: 2 sum(p m) / (sum(p) + sum(m)) with the occupancy probabilities p;
- ``dice_p0.35``: Dice with the occupancy thresholded at 0.35 instead of 0.5;
- ``largest_added_p0.35``: the largest connected region (26-connectivity) the prior adds (p > 0.35, not in the
  input), as a fraction of the input's volume: a localized score, blind to scattered boundary flips;
- ``dice_iterated``: Dice(input, reconstruction of the reconstruction): feeding the prior its own output once
  more, so a partial repair can grow.
- ``dice_flip_mean``: Dice(input, mean occupancy of the input's reconstruction and of its mirror image's
  reconstruction mirrored back > 0.5): test-time augmentation with the one flip the prior was trained on (first
  grid axis), averaging out reconstruction noise that is not a property of the shape.

    python benchmarks/score_variants.py --bundle bundles/adrenal_gland --cases 20 --out DIR

Writes DIR/score_variants.md (AUROC per family and severity, clean cases as negatives) and score_variants.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("dice", "soft_dice", "dice_p0.35", "largest_added_p0.35", "dice_iterated", "dice_flip_mean")
# scores that fall with a worse segmentation (the others grow)
FALLING = {"dice", "soft_dice", "dice_p0.35", "dice_iterated", "dice_flip_mean"}
DEFAULT_FAMILIES = "plane_cut,dropped_slices,cube_remove,perlin_remove,erosion,swap"


def largest_component(region: np.ndarray) -> int:
    """Voxel count of the largest 26-connected component of a bool array (0 if empty)."""
    from scipy import ndimage

    labels, count = ndimage.label(region, structure=np.ones((3, 3, 3)))
    return int(np.bincount(labels.ravel())[1:].max()) if count else 0


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / max(int(a.sum()) + int(b.sum()), 1))


def variant_scores(bundle, mask: np.ndarray, affine: np.ndarray, organ: str) -> dict:
    """Every score of :data:`SCORES` for one mask (D, H, W) bool with its affine, in the bundle's canonical grid."""
    import torch

    from shapeqc.prior.reconstruction import grid_logits

    def occupancy(grid: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(grid.astype(np.float32))[None, None]
        return torch.sigmoid(grid_logits(bundle.network, tensor, margin=8))[0, 0].numpy()

    grid = np.asarray(bundle.to_grid({"mask": mask.astype(np.uint8), "affine": affine, "organ": organ})["mask"])[0]
    inside = grid > 0.5
    volume = max(int(inside.sum()), 1)
    probability = occupancy(inside)
    reconstruction = probability > 0.5
    return {
        "dice": overlap(inside, reconstruction),
        "soft_dice": float(2.0 * (probability * inside).sum() / (probability.sum() + volume)),
        "dice_p0.35": overlap(inside, probability > 0.35),
        "largest_added_p0.35": largest_component((probability > 0.35) & ~inside) / volume,
        "dice_iterated": overlap(inside, occupancy(reconstruction) > 0.5),
        "dice_flip_mean": overlap(inside, (probability + occupancy(inside[::-1].copy())[::-1]) / 2.0 > 0.5),
    }


def main(argv: list[str] | None = None) -> int:
    from qc_quality import display_path

    from shapeqc.bundle.loading import bundle_datalist, load_bundle
    from shapeqc.evaluation.protocol import corrupted_cases, load_masks, swaps_in_place
    from shapeqc.scoring.roc import auroc
    from shapeqc.scoring.thresholds import badness as oriented

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "adrenal_gland")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cases", type=int, default=20, help="clean val cases (the benchmark's first N)")
    parser.add_argument("--families", default=DEFAULT_FAMILIES)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    bundle = load_bundle(args.bundle)
    clean = load_masks(bundle_datalist(args.bundle, args.data, "validate#datalist"), args.cases)
    cases = corrupted_cases(clean, args.families.split(","), {"swap": swaps_in_place(clean)})
    clean_scores = [variant_scores(bundle, m, a, o) for _, m, a, o in clean]
    for case in cases:
        case["scores"] = variant_scores(bundle, case["mask"], case["affine"], case["organ"])

    def badness(score: str, values) -> np.ndarray:
        return oriented(score, values, "below" if score in FALLING else "above")

    def row(selected: list[dict]) -> dict:
        return {score: auroc(badness(score, [c["scores"][score] for c in selected]),
                             badness(score, [s[score] for s in clean_scores])) for score in SCORES}

    table = {}
    for family in args.families.split(","):
        for params in sorted({json.dumps(c["params"], sort_keys=True) for c in cases if c["family"] == family}):
            selected = [c for c in cases if c["family"] == family and json.dumps(c["params"], sort_keys=True) == params]
            table[f"{family} {params}"] = {"cases": len(selected),
                                           "volume_change": float(np.median([c["volume_change"] for c in selected])),
                                           **row(selected)}
    moderate = [c for c in cases if c["volume_change"] >= 0.10]
    if moderate:
        table["**>= 10% volume changed**"] = {"cases": len(moderate), "volume_change": float(
            np.median([c["volume_change"] for c in moderate])), **row(moderate)}
    seconds = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"bundle": args.bundle.name, "bundle_version": bundle.metadata.get("version"), "clean_cases": len(clean),
              "corrupted_cases": len(cases), "table": table, "seconds": seconds,
              "clean_scores": clean_scores,
              "corrupted_scores": [{k: c[k] for k in ("case", "family", "params", "volume_change", "scores")}
                                   for c in cases]}
    (args.out / "score_variants.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Score variants: bundle `{args.bundle.name}` {bundle.metadata.get('version', '')}", "",
             f"Command: `python benchmarks/score_variants.py --bundle {display_path(args.bundle)} --cases {args.cases} "
             f"--families {args.families} --out {display_path(args.out)}` ({seconds:.0f} s). "
             f"AUROC against {len(clean)} clean val masks.", "",
             "| family (severity) | cases | median volume change | " + " | ".join(SCORES) + " |",
             "|---|---|---|" + "---|" * len(SCORES)]
    for name, entry in table.items():
        lines.append(f"| {name} | {entry['cases']} | {entry['volume_change']:.3f} | "
                     + " | ".join(f"{entry[s]:.3f}" for s in SCORES) + " |")
    (args.out / "score_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
