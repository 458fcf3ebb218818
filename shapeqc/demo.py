"""`make demo`: the real analysis on an embedded example, on a fresh clone, with no data download.

The shipped adrenal bundle carries an example organ (``docs/example_organ.nii.gz``: the mean canonical adrenal
shape of its training set at the median volume, reconstructed three times by the bundle itself, 1 mm). The
demo writes it as a CT-like segmentation (0.8 x 0.8 x 2.5 mm, tilted direction cosines) plus two corrupted
copies - a blob stuck onto the gland (over-segmentation) and a slab cut out of it (under-segmentation) - runs
``shapeqc analyse`` on the three, prints the summary table and the path of ``report.html``.

    python -m shapeqc.demo [--out out/demo] [--bundle bundles/adrenal_gland]
    python -m shapeqc.demo --make-example --dataset_dir ../shared/data   # (re)build the example organ
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "adrenal_gland"
SPACING = (0.8, 0.8, 2.5)
ROTATION = (10.0, -15.0, 30.0)


def make_example(bundle_dir: Path, dataset_dir: str, iterations: int = 3) -> Path:
    """The bundle's own example organ: the mean canonical grid of its training masks, thresholded at the level
    that gives the median training volume, then reconstructed ``iterations`` times by the bundle (1 mm NIfTI)."""
    from monai.transforms import Compose

    from shapeqc.analysis import load_bundle, reconstruct_in_source
    from shapeqc.bundles import bundle_parser
    from shapeqc.training_data import adrenalmnist3d_split
    from transforms.volume_io import write_volume

    to_grid = Compose(bundle_parser(bundle_dir).get_parsed_content("canonical_grid_transforms"))
    total, volumes = None, []
    items = adrenalmnist3d_split(dataset_dir, "train")
    for item in items:
        grid = to_grid(dict(item))["mask"][0].astype(np.float64)
        volumes.append(grid.sum())
        total = grid if total is None else total + grid
    mean = total / len(items)
    levels = np.linspace(0.02, 0.98, 97)
    level = levels[np.argmin([abs((mean >= v).sum() - np.median(volumes)) for v in levels])]
    shape = mean >= level
    bundle = load_bundle(bundle_dir)
    for _ in range(iterations):
        shape, _ = reconstruct_in_source(bundle, shape, np.eye(4), "adrenal_gland_right", {})
    return write_volume(bundle_dir / "docs" / "example_organ.nii.gz", shape, np.eye(4))


def demo_inputs(example_path: Path, out_dir: Path) -> dict[str, tuple[Path, np.ndarray | None]]:
    """Clean, blob-added and slab-cut CT-like inputs; returns name -> (path, corruption centre in mm or None)."""
    import nibabel as nib

    from transforms.reslice import reslice_mask
    from transforms.volume_io import write_volume

    example = np.asarray(nib.load(str(example_path)).dataobj) > 0
    clean, affine = reslice_mask(example, np.eye(4), SPACING, ROTATION, pad_voxels=6)
    occupied = np.argwhere(clean)
    inputs = {"clean": (write_volume(out_dir / "inputs" / "clean.nii.gz", clean, affine), None)}

    blob = clean.copy()
    top = occupied[occupied[:, 0].argmax()]  # stuck onto the gland's far end along axis 0
    centre = top + np.array([3, 0, 0])
    box = tuple(slice(max(int(c) - r, 0), int(c) + r + 1) for c, r in zip(centre, (4, 4, 2), strict=True))
    blob[box] = 1
    inputs["blob_added"] = (write_volume(out_dir / "inputs" / "blob_added.nii.gz", blob, affine),
                            affine[:3, :3] @ centre + affine[:3, 3])

    cut = clean.copy()
    middle = occupied.mean(axis=0).round().astype(int)
    slab = (slice(None), slice(None), slice(middle[2] - 1, middle[2] + 2))  # three 2.5 mm slices missing
    cut[slab] = 0
    inputs["slab_removed"] = (write_volume(out_dir / "inputs" / "slab_removed.nii.gz", cut, affine),
                              affine[:3, :3] @ middle + affine[:3, 3])
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--make-example", action="store_true", help="rebuild the bundle's example organ")
    parser.add_argument("--dataset_dir", default="../shared/data", help="with --make-example: training data")
    args = parser.parse_args(argv)
    if args.make_example:
        print(make_example(args.bundle, args.dataset_dir))
        return 0

    from shapeqc.analysis import load_bundle
    from shapeqc.batch import run_batch

    bundle = load_bundle(args.bundle)
    inputs = demo_inputs(args.bundle / "docs" / "example_organ.nii.gz", args.out)
    records = run_batch([str(path) for path, _ in inputs.values()], [bundle], args.out, organ="adrenal_gland_left",
                        progress=False)
    print(f"{'case':<14}{'status':<10}{'Dice':>7}{'ASD mm':>8}{'HD95 mm':>9}  largest defect (mm from corruption)")
    for record in sorted(records, key=lambda r: r["case"]):
        scores = record["scores"] or {}
        where = ""
        if record["defects"]:
            largest = record["defects"][0]
            centre = inputs[record["case"]][1]
            distance = "" if centre is None else f", {np.linalg.norm(np.subtract(largest['centroid_mm'], centre)):.1f}"
            where = f"{largest['kind']} {largest['volume_ml'] * 1000:.0f} mm^3{distance}"
        print(f"{record['case']:<14}{record['status']:<10}{scores.get('dice', float('nan')):>7.3f}"
              f"{scores.get('asd_mm', float('nan')):>8.2f}{scores.get('hd95_mm', float('nan')):>9.2f}  {where}")
    print(f"report: {(args.out / 'report.html').resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
