"""`make demo`: the real analysis on an embedded example, on a fresh clone, with no data download.

The shipped adrenal bundle carries an example organ (``docs/example_organ.nii.gz``: the bundle's own
reconstruction of the AdrenalMNIST3D validation gland of median volume, 1 mm). The demo writes it as a CT-like
segmentation (0.8 x 0.8 x 2.5 mm, tilted direction cosines) plus two corrupted copies - a 6 mm ball stuck onto
the gland (over-segmentation, a leak) and a slab cut out of it (under-segmentation) - runs
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
# the bundle mirrors left glands onto the right side; the example is a right gland
ORGAN = "adrenal_gland_right"
BLOB_RADIUS_MM = 6.0


def make_example(bundle_dir: Path, dataset_dir: str) -> Path:
    """The bundle's own example organ (1 mm NIfTI): its reconstruction of the validation mask of median volume.

    A real gland's reconstruction rather than a synthetic or mean shape: the prior is fitted to real glands, and
    a mean shape (smoother and blunter than any real one) is off its distribution and scored like a defect.
    The median-volume case is chosen by rule, not by its score.
    """
    from shapeqc.bundle.datalists import adrenalmnist3d_split
    from shapeqc.bundle.loading import load_bundle
    from shapeqc.judging.analysis import reconstruct_in_source
    from shapeqc.transforms.organ_loading import load_organ_mask
    from shapeqc.transforms.volume_io import write_volume

    masks = []
    for item in adrenalmnist3d_split(dataset_dir, "val"):
        mask, affine, _ = load_organ_mask(item["mask"], affine=item.get("affine"), npz_array=item.get("npz_array"),
                                          npz_index=item.get("npz_index"))
        masks.append((mask.astype(bool), affine))
    volumes = np.array([mask.sum() for mask, _ in masks])
    mask, affine = masks[int(np.argsort(volumes, kind="stable")[len(volumes) // 2])]
    shape, _ = reconstruct_in_source(load_bundle(bundle_dir), mask, affine, ORGAN, {})
    return write_volume(bundle_dir / "docs" / "example_organ.nii.gz", shape, affine)


def demo_inputs(example_path: Path, out_dir: Path) -> dict[str, tuple[Path, np.ndarray | None]]:
    """Clean, blob-added and slab-cut CT-like inputs; returns name -> (path, corruption centre in mm or None)."""
    import nibabel as nib

    from shapeqc.transforms.reslice import reslice_mask
    from shapeqc.transforms.volume_io import write_volume

    image = nib.load(str(example_path))
    example = np.asarray(image.dataobj) > 0
    clean, affine = reslice_mask(example, image.affine, SPACING, ROTATION, pad_voxels=16)
    occupied = np.argwhere(clean)
    inputs = {"clean": (write_volume(out_dir / "inputs" / "clean.nii.gz", clean, affine), None)}

    # a leak: a ball of radius 6 mm (about a fifth of the gland's volume) stuck onto the gland's far end along
    # array axis 0, its centre 3 mm beyond the last voxel there
    tip = occupied[occupied[:, 0].argmax()]
    outward = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    centre_mm = affine[:3, :3] @ tip + affine[:3, 3] + 0.5 * BLOB_RADIUS_MM * outward
    voxel_mm = np.indices(clean.shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    ball = (np.linalg.norm(voxel_mm - centre_mm, axis=1) <= BLOB_RADIUS_MM).reshape(clean.shape)
    inputs["blob_added"] = (write_volume(out_dir / "inputs" / "blob_added.nii.gz", clean | ball, affine), centre_mm)

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

    from shapeqc.bundle.loading import load_bundle
    from shapeqc.outputs.reports import quality_text
    from shapeqc.outputs.review_page import estimate_notes
    from shapeqc.runs.batch import run_batch

    bundle = load_bundle(args.bundle)
    inputs = demo_inputs(args.bundle / "docs" / "example_organ.nii.gz", args.out)
    # the inputs were just written anew, so --resume analyses all three again and keeps any other run's records
    records = run_batch([str(path) for path, _ in inputs.values()], [bundle], args.out, organ=ORGAN,
                        progress=False, resume=True)
    records = [r for r in records if r["case"] in inputs]
    print(f"{'case':<14}{'status':<10}{'Dice':>7}{'ASD mm':>8}{'HD95 mm':>9}{'pred. Dice [interval]':>22}  "
          "largest defect (mm from corruption)")
    for record in sorted(records, key=lambda r: r["case"]):
        scores = record["scores"] or {}
        where = ""
        if record["defects"]:
            largest = record["defects"][0]
            centre = inputs[record["case"]][1]
            distance = "" if centre is None else f", {np.linalg.norm(np.subtract(largest['centroid_mm'], centre)):.1f}"
            where = f"{largest['kind']} {largest['volume_ml'] * 1000:.0f} mm^3{distance}"
        print(f"{record['case']:<14}{record['status']:<10}{scores.get('dice', float('nan')):>7.3f}"
              f"{scores.get('asd_mm', float('nan')):>8.2f}{scores.get('hd95_mm', float('nan')):>9.2f}"
              f"{quality_text(record) or '-':>22}  {where}")
    for note in estimate_notes(records):
        print(note)
    print(f"report: {(args.out / 'report.html').resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
