"""Quality bars of a trained bundle on real validation masks, in the canonical grid.

For each usable validation mask: reconstruct the clean grid (Dice of reconstruction to input), and a Perlin-
corrupted copy (fixed per case: seeded by case id), reporting the reconstruction's Dice to the clean mask next
to the corrupted input's own Dice to the clean mask: a shape prior must repair, i.e. the first clearly higher.

    python -m shapeqc.training.quality_bars --bundle bundles/adrenal_gland --dataset_dir ../shared/data [--limit N]

The validation masks are the bundle's own ``validate#datalist`` (its train.yaml), any dataset. Reconstruction is
the bundle's own ``inferer`` (inference.yaml), as in analysis.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from monai.transforms import Compose

from shapeqc.bundle.loading import bundle_parser, load_bundle
from shapeqc.scoring.metrics import dice
from shapeqc.transforms.corruption import RandPerlinCorruptiond


def reconstruct(bundle, grid: np.ndarray) -> np.ndarray:
    """(R, R, R) bool reconstruction of a (R, R, R) binary grid by the bundle's inferer."""
    tensor = torch.from_numpy(np.asarray(grid, dtype=np.float32))[None, None].to(bundle.device)
    with torch.no_grad():
        return (bundle.inferer(tensor, bundle.network)[0, 0] > 0).cpu().numpy()


def bundle_quality(bundle_dir: str, items: list[dict], bundle=None) -> dict:
    """Per-case Dice figures and their summary for ``items`` (datalist items of real masks)."""
    bundle = bundle or load_bundle(bundle_dir)
    # from the file to the grid: the config's loading + to_grid, as the bundle's datasets run them
    to_grid = Compose(bundle_parser(bundle_dir).get_parsed_content("canonical_grid_transforms"))
    corrupt = RandPerlinCorruptiond("mask", output_keys="corrupted", add_prob=0.5, remove_prob=0.5,
                                    seed_key="case_id")
    cases = []
    for item in items:
        data = corrupt(to_grid(dict(item)))
        clean, corrupted = data["mask"][0] > 0, data["corrupted"][0] > 0
        cases.append({
            "case_id": item["case_id"],
            "clean_reconstruction_dice": dice(reconstruct(bundle, clean), clean),
            "corrupted_input_dice": dice(corrupted, clean),
            "corrupted_reconstruction_dice": dice(reconstruct(bundle, corrupted), clean),
        })
    values = {key: np.array([c[key] for c in cases]) for key in cases[0] if key != "case_id"}
    corrupted_cases = values["corrupted_input_dice"] < 1.0
    summary = {
        "cases": len(cases),
        "clean_reconstruction_dice_mean": float(values["clean_reconstruction_dice"].mean()),
        "clean_reconstruction_dice_p5": float(np.percentile(values["clean_reconstruction_dice"], 5)),
        "corrupted_cases": int(corrupted_cases.sum()),
        "corrupted_input_dice_mean": float(values["corrupted_input_dice"][corrupted_cases].mean()),
        "corrupted_reconstruction_dice_mean": float(values["corrupted_reconstruction_dice"][corrupted_cases].mean()),
    }
    return {"summary": summary, "cases": cases}


def main(argv: list[str] | None = None) -> int:
    from shapeqc.bundle.loading import bundle_datalist

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--dataset_dir", required=True, help="the bundle's dataset_dir (the shared data folder)")
    parser.add_argument("--limit", type=int, default=None, help="first N usable val masks only")
    parser.add_argument("--out", default=None, help="write the per-case JSON here")
    args = parser.parse_args(argv)
    items = bundle_datalist(args.bundle, args.dataset_dir, "validate#datalist")
    items = items[:args.limit] if args.limit else items
    start = time.perf_counter()
    report = bundle_quality(args.bundle, items)
    report["summary"]["seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
