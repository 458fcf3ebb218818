"""End-to-end analysis time per organ, split by step, and coarse-to-fine vs dense decoding.

For the research preset (R = 128, untrained weights: timing only) and for the shipped adrenal bundle, on real
adrenal masks written as CT-like NIfTI inputs (0.8 x 0.8 x 2.5 mm): load, normalize, encode + decode
(coarse-to-fine), map back, metrics, outputs; the fraction of voxel centres the coarse-to-fine decoder
evaluates, the mismatch against dense decoding, and the dense time as the baseline measured in the same run.

    python benchmarks/bench_analysis.py [--cases 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import nibabel
import numpy as np
import torch

from shapeqc.analysis import Bundle, analyse_organ, load_bundle
from shapeqc.networks import ifnet_from_preset
from shapeqc.reconstruction import coarse_to_fine_logits, grid_logits
from transforms.grid_transforms import ToCanonicalGridd
from transforms.reslice import reslice_mask
from transforms.volume_io import write_volume

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT.parent / "shared/data/adrenalmnist3d/adrenalmnist3d_64_trainval.npz"


def research_bundle() -> Bundle:
    torch.manual_seed(0)
    network = ifnet_from_preset("research").eval()
    return Bundle(path=Path("research_preset_untrained"), metadata={}, network=network,
                  to_grid=ToCanonicalGridd("mask", spacing_mm=1.0, grid_size=128, margin=8, mirror_side="left"),
                  thresholds=None, device=torch.device("cpu"), organs=["adrenal_gland_left"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    with np.load(NPZ) as archive:
        masks = archive["val_images"][: args.cases] > 0
    work = Path(tempfile.mkdtemp())
    inputs = []
    for index, mask in enumerate(masks):
        ct_like, affine = reslice_mask(mask, np.eye(4), (0.8, 0.8, 2.5), (10.0, -15.0, 30.0))
        inputs.append(str(write_volume(work / f"case{index}.nii.gz", ct_like, affine)))
    bundles = {"research preset (R=128, untrained)": research_bundle(),
               "shipped adrenal bundle (R=64)": load_bundle(ROOT / "bundles" / "adrenal_gland")}
    print("| bundle | case | load | normalize | encode+decode (coarse-to-fine) | map back | metrics | outputs "
          "| total s | decoded / voxels | dense decode s | mismatches vs dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, bundle in bundles.items():
        for index, path in enumerate(inputs):
            record = analyse_organ(path, "adrenal_gland_left", bundle, work / name[:8] / str(index), f"case{index}")
            t = record["timings"]
            image = nibabel.load(path)
            item = bundle.to_grid({"mask": np.asarray(image.dataobj), "affine": image.affine,
                                   "organ": "adrenal_gland_left"})
            grid = torch.from_numpy(item["mask"].astype(np.float32))[None]
            start = time.perf_counter()
            dense = grid_logits(bundle.network, grid, margin=None)[0, 0]
            dense_time = time.perf_counter() - start
            fine, decoded = coarse_to_fine_logits(bundle.network, grid)
            mismatches = int(((dense > 0) != (fine > 0)).sum())
            size = grid.shape[-1] ** 3
            print(f"| {name} | {index} | {t['load']:.3f} | {t['normalize']:.3f} | {t['reconstruct']:.2f} | "
                  f"{t['map_back']:.3f} | {t['metrics']:.3f} | {t['outputs']:.3f} | {record['seconds']:.2f} | "
                  f"{decoded / size:.3f} | {dense_time:.2f} | {mismatches} |")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of the whole run: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
