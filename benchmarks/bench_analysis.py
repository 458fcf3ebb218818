"""End-to-end analysis time and peak memory per organ, split by step, against the research route's decoding.

For the research preset (R = 128, untrained weights: timing only) and for the shipped adrenal bundle, on real
adrenal masks written as CT-like NIfTI inputs (0.8 x 0.8 x 2.5 mm), ``analyse_organ`` is timed step by step:
load, normalize (canonical grid), encode (with the decoding preparation), decode (coarse to fine inside the
organ's box grown by the default margin), map back, metrics (scores, difference map, defects), outputs
(NIfTI, STL, PNG). The baseline, measured in the same run on the same grids, is the research route's
decoding: dense over every voxel centre of the whole grid with the plain decoder (``grid_sample`` features, no
preparation, no region). Its binary result is compared voxel by voxel with the analysis' reconstruction.
Each bundle runs in its own process so that its peak resident memory is its own.

    python benchmarks/bench_analysis.py [--cases 3]
    python benchmarks/bench_analysis.py --bundle bundles/kidney [--bundle ...] [--cases 3]

With ``--bundle``, each trained bundle is timed instead on its own first held-out masks (``validate#datalist``)
as stored (their own voxel grids, e.g. KiTS's 0.8 x 0.8 x 5 mm), one process per bundle.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT.parent / "shared/data/adrenalmnist3d/adrenalmnist3d_64_trainval.npz"
BUNDLES = {"research": "research preset (R=128, untrained)", "shipped": "shipped adrenal bundle (R=64)"}
# the research pipeline's own figures on this CPU (issue 8): dense 256^3 twice per organ
RESEARCH_ROUTE_S = 2 * 710.0


def load(kind: str):
    from shapeqc.bundle.loading import bundle_from_config, load_bundle
    from shapeqc.prior.ifnet import ifnet_from_preset
    from shapeqc.prior.reconstruction import CoarseToFineInferer
    from shapeqc.transforms.grid_transforms import CanonicalGridToSourced, ToCanonicalGridd

    if kind == "shipped":
        return load_bundle(ROOT / "bundles" / "adrenal_gland")
    if kind not in BUNDLES:  # a trained bundle's folder
        return load_bundle(kind)
    torch.manual_seed(0)
    from monai.transforms import Activationsd

    return bundle_from_config(
        Path("research_preset_untrained"), ifnet_from_preset("research"),
        [ToCanonicalGridd("mask", spacing_mm=1.0, grid_size=128, margin=8, mirror_side="left")],
        CoarseToFineInferer(), [Activationsd("pred", sigmoid=True), CanonicalGridToSourced("pred")],
        metadata={"organs": ["adrenal_gland_left"]})


class _PlainDecoder(torch.nn.Module):
    """The network without ``prepare_decoding``: the research route's decoder."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def encode(self, grid):
        return self.network.encode(grid)

    def decode(self, features, points):
        return self.network.decode(features, points)


def child(kind: str, cases: int, work: Path) -> None:
    from shapeqc.judging.analysis import analyse_organ
    from shapeqc.prior.reconstruction import grid_logits
    from shapeqc.transforms.canonical_grid import CanonicalGrid, grid_to_source

    bundle = load(kind)
    organs = json.loads((work / "organs.json").read_text()) if (work / "organs.json").exists() else {}
    for index in range(cases):
        path = str(work / f"case{index}.nii.gz")
        out = work / Path(kind).name / str(index)
        organ = organs.get(str(index), "adrenal_gland_left")
        record = analyse_organ(path, organ, bundle, out, f"case{index}")
        image = nibabel.load(path)
        item = bundle.to_grid({"mask": np.asarray(image.dataobj), "affine": image.affine, "organ": organ})
        grid = torch.from_numpy(item["mask"].astype(np.float32))[None]
        start = time.perf_counter()
        dense = grid_logits(_PlainDecoder(bundle.network), grid, margin=None)[0, 0]
        dense_s = time.perf_counter() - start
        dense_source = grid_to_source(torch.sigmoid(dense).numpy(), CanonicalGrid.from_dict(item["grid"]), binary=True)
        ours = np.asarray(nibabel.load(record["outputs"]["reconstruction"]).dataobj) > 0
        print(json.dumps({"kind": kind, "case": index, "timings": record["timings"], "seconds": record["seconds"],
                          "voxels": grid.shape[-1] ** 3, "dense_s": dense_s,
                          "mismatches": int((dense_source != ours).sum())}), flush=True)
    print(json.dumps({"kind": kind, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--bundle", action="append", default=[], help="a trained bundle, on its own val masks")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cases, args.work)
        return
    from shapeqc.transforms.reslice import reslice_mask
    from shapeqc.transforms.volume_io import write_volume

    runs = {}
    for bundle_dir in args.bundle:  # each on its own held-out masks as stored
        from shapeqc.bundle.loading import bundle_datalist
        from shapeqc.transforms.organ_loading import load_item_mask

        work = Path(tempfile.mkdtemp())
        items = bundle_datalist(bundle_dir, str(ROOT.parent / "shared" / "data"), "validate#datalist")[: args.cases]
        for index, item in enumerate(items):
            mask, affine = load_item_mask(item)
            write_volume(work / f"case{index}.nii.gz", mask.astype(np.uint8), affine)
        (work / "organs.json").write_text(json.dumps({str(i): item.get("organ") for i, item in enumerate(items)}))
        runs[str(bundle_dir)] = (f"{Path(bundle_dir).name} bundle, its val masks as stored", work)
    if not args.bundle:
        with np.load(NPZ) as archive:
            masks = archive["val_images"][: args.cases] > 0
        work = Path(tempfile.mkdtemp())
        for index, mask in enumerate(masks):
            ct_like, affine = reslice_mask(mask, np.eye(4), (0.8, 0.8, 2.5), (10.0, -15.0, 30.0))
            write_volume(work / f"case{index}.nii.gz", ct_like, affine)
        runs = {kind: (name, work) for kind, name in BUNDLES.items()}
    print("| bundle | case | load | normalize | encode | decode | map back | metrics | outputs | total s "
          "| decoded / voxels | research-route decode s (dense, plain) | ratio | mismatches | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, (name, work) in runs.items():
        lines = subprocess.run([sys.executable, __file__, "--child", kind, "--cases", str(args.cases),
                                "--work", str(work)], check=True, capture_output=True, text=True).stdout
        rows = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
        peak = rows[-1]["peak_mb"]
        for row in rows[:-1]:
            t = row["timings"]
            metrics = t["scores"] + t["metrics"]
            print(f"| {name} | {row['case']} | {t['load']:.3f} | {t['normalize']:.3f} | {t['encode']:.2f} | "
                  f"{t['decode']:.2f} | {t['map_back']:.3f} | {metrics:.3f} | {t['outputs']:.2f} | "
                  f"{row['seconds']:.2f} | {t['decoded_points'] / row['voxels']:.3f} | {row['dense_s']:.1f} | "
                  f"{row['dense_s'] / row['seconds']:.1f}x | {row['mismatches']} | {peak:.0f} |")
    print(f"\nresearch pipeline's route (dense 256^3, twice per organ, issue 8's figure): {RESEARCH_ROUTE_S:.0f} s")


if __name__ == "__main__":
    main()
