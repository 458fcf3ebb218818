"""Surface-only decoding against dense decoding (issue 33, item 2), on every held-out organ of every bundle.

For each bundle, each organ of its held-out split (``validate#datalist``, no limit) is put on its canonical grid
as stored and once more Perlin-corrupted (``RandPerlinCorruptiond``, seeded): a prior that copies its input makes
islands and holes out of the corruption, the hardest case for a decoder that skips points. Both grids are decoded
densely over the analysis' region (``grid_logits`` with the default margin) and coarse to fine (the bundle's own
inferer settings), and compared:

- mismatching voxels: grid voxels whose occupancy (logit > 0) differs;
- corner error: the largest |logit| difference at the corners of every grid cell the dense 0.5 level crosses
  (the values the map back to the input's voxels interpolates; float rounding of a differently chunked decode
  is ~1e-6);
- decoded points of each, and the seconds of each on one thread.

    python benchmarks/decode_exact.py [--bundle bundles/spleen ...] [--limit N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def compare(bundle, grid: np.ndarray) -> dict:
    """Dense and coarse-to-fine decoding of one (R, R, R) bool grid with the bundle's network and inferer."""
    from shapeqc.prior.reconstruction import coarse_to_fine_logits, crossed_cell_corners, default_margin, grid_logits
    from shapeqc.transforms.boxes import organ_box

    tensor = torch.from_numpy(grid.astype(np.float32))[None, None]
    inferer = bundle.inferer
    margin = default_margin(grid.shape[-1]) if inferer.margin is None else inferer.margin
    start = time.perf_counter()
    dense = grid_logits(bundle.network, tensor, margin=margin)[0, 0]
    dense_s = time.perf_counter() - start
    start = time.perf_counter()
    fine, decoded = coarse_to_fine_logits(bundle.network, tensor, inferer.start_stride, inferer.near_fraction,
                                          inferer.chunk_points, margin)
    fine_s = time.perf_counter() - start
    corners = crossed_cell_corners(dense)
    return {"mismatches": int(((dense > 0) != (fine > 0)).sum()),
            "corner_error": float((dense[corners] - fine[corners]).abs().max()) if corners.any() else 0.0,
            "dense_points": int(np.prod([s.stop - s.start for s in organ_box(grid, margin)])),
            "decoded_points": int(decoded), "dense_s": dense_s, "fine_s": fine_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", help="bundle folders (default: every bundle in bundles/)")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out organs of each bundle")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from shapeqc.bundle.loading import load_bundle
    from shapeqc.evaluation.repair import held_out_grids
    from shapeqc.transforms.corruption import RandPerlinCorruptiond

    folders = args.bundle or sorted(str(p.parents[1]) for p in (ROOT / "bundles").glob("*/configs/metadata.json"))
    print("| bundle | grids (organs x clean, Perlin) | mismatching voxels | largest corner error | decoded points "
          "(dense -> coarse to fine, median) | s per grid (dense -> coarse to fine, median) |")
    print("|---|---|---|---|---|---|")
    worst = 0
    for folder in folders:
        bundle = load_bundle(folder)
        corrupt = RandPerlinCorruptiond("mask", add_prob=1.0, remove_prob=1.0)
        corrupt.set_random_state(0)
        rows = []
        for _, clean in held_out_grids(folder, str(DATA), limit=args.limit):
            corrupted = corrupt({"mask": clean[None].astype(np.uint8)})["mask"][0] > 0
            rows += [compare(bundle, clean), compare(bundle, corrupted)]
        mismatches = sum(r["mismatches"] for r in rows)
        worst = max(worst, mismatches)

        def median(key, rows=rows):
            return float(np.median([r[key] for r in rows]))

        print(f"| {Path(folder).name} | {len(rows)} | {mismatches} | {max(r['corner_error'] for r in rows):.1e} | "
              f"{median('dense_points'):,.0f} -> {median('decoded_points'):,.0f} | "
              f"{median('dense_s'):.2f} -> {median('fine_s'):.2f} |", flush=True)
    return 1 if worst else 0


if __name__ == "__main__":
    raise SystemExit(main())
