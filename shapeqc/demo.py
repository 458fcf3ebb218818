"""`make demo`: a real adrenal mask, written as a CT-like NIfTI, to the canonical grid and back.

What it does (the analysis itself comes with the trained bundle; this shows the data side that exists):
1. takes one real AdrenalMNIST3D mask (1 mm) and writes it as NIfTI re-sliced to 0.8 x 0.8 x 2.5 mm with
   tilted direction cosines, as a CT segmentation would arrive;
2. loads it like any user input, brings it to the 128^3 canonical grid (and to a 32^3 grid, which forces a
   zoom-out), maps each grid back to the input's voxel space, and prints spacing, zoom and round-trip Dice.
All files go to ``--out`` (default ``out/demo``) so they can be opened in 3D Slicer over each other.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from shapeqc.metrics import dice
from transforms.canonical_grid import CanonicalGrid
from transforms.grid_transforms import CanonicalGridToSourced, ToCanonicalGridd
from transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd, read_npz_mask
from transforms.reslice import reslice_mask
from transforms.volume_io import write_volume

DEFAULT_NPZ = Path("../shared/data/adrenalmnist3d/adrenalmnist3d_64_trainval.npz")


def find_real_mask(npz: Path | None, index: int) -> tuple[np.ndarray, str]:
    """A real adrenal mask from the given npz, $SHAPEQC_ADRENAL_NPZ or the project's shared data."""
    candidates = [npz, Path(os.environ["SHAPEQC_ADRENAL_NPZ"]) if "SHAPEQC_ADRENAL_NPZ" in os.environ else None,
                  DEFAULT_NPZ]
    for candidate in candidates:
        if candidate is not None and candidate.exists():
            return read_npz_mask(candidate, "val_images", index), f"{candidate} val_images[{index}]"
    raise SystemExit(
        "no AdrenalMNIST3D file found: pass --npz PATH or set SHAPEQC_ADRENAL_NPZ "
        "(the demo uses real masks only; see README 'Data')"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=None, help="AdrenalMNIST3D npz (default: ../shared/data/...)")
    parser.add_argument("--index", type=int, default=0, help="which val mask to use")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args(argv)

    mask, origin = find_real_mask(args.npz, args.index)
    spacing, rotation = (0.8, 0.8, 2.5), (10.0, -15.0, 30.0)
    ct_like, ct_affine = reslice_mask(mask, np.eye(4), spacing, rotation)
    input_path = write_volume(args.out / "input_adrenal_gland_left.nii.gz", ct_like, ct_affine)
    print(f"real mask      : {origin}, {int(mask.sum())} voxels at 1 mm")
    print(f"input written  : {input_path} shape {ct_like.shape}, spacing {spacing} mm, "
          f"direction tilted by {rotation} deg, {int(ct_like.sum())} voxels")

    load = LoadOrganMaskd("mask")
    check = CheckOrganMaskd("mask")
    back = CanonicalGridToSourced("mask")
    for grid_size in (128, 32):
        item = check(load({"case_id": "demo", "mask": str(input_path), "organ": "adrenal_gland_left"}))
        original = item["mask"].astype(bool)
        to_grid = ToCanonicalGridd("mask", spacing_mm=1.0, grid_size=grid_size, margin=8, mirror_side="left")
        item = to_grid(item)
        plan = CanonicalGrid.from_dict(item["grid"])
        grid_path = write_volume(args.out / f"canonical_grid_{grid_size}.nii.gz", item["mask"][0], plan.grid_to_world)
        restored = back(item)["mask"].astype(bool)
        write_volume(args.out / f"round_trip_{grid_size}.nii.gz", restored, ct_affine)
        print(f"grid {grid_size:>3}^3      : spacing {plan.grid_spacing_mm:.3f} mm (zoom {plan.zoom:.3f}), "
              f"mirrored {plan.mirrored}, {int(item['mask'].sum())} voxels -> {grid_path}")
        print(f"  round trip   : Dice {dice(original, restored):.4f} in the input's voxel space")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
