"""GPU against CPU in one run, on a machine with a CUDA GPU (the checks benchmarks/gpu_checks.sh runs there).

1. Kernels: boundary sampling (100k points, a real adrenal mask in a 128^3 grid) and Perlin noise (a 128^3 box),
   the CuPy kernel on device arrays against the CPU implementation on the same input; the CUDA results are
   compared with the CPU ones (points: same occupancy rule; noise: max abs difference).
2. A training step (forward + backward + Adam step, batch 4, 5,000 points per organ) of the ``cpu_small`` and
   ``research`` IF-Net presets on ``cuda`` against ``cpu``.
3. Analysis per organ: ``analyse_organ`` of each trained bundle given with ``--bundle`` on one of its own
   validation masks (written as NIfTI), device ``cuda`` against ``cpu``, without outputs.

Every figure is the median of ``--repeats`` runs after one warm-up; CUDA work is synchronised before the clock
stops. Prints markdown tables.

    python benchmarks/bench_gpu.py --bundle bundles/adrenal_gland --bundle bundles/kidney [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(run, repeats: int, sync: bool) -> float:
    """Median seconds of ``run()`` over ``repeats`` calls after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernels(data: Path, repeats: int) -> list[str]:
    import cupy

    from shapeqc.cuda_kernels import perlin3d, sample_boundary
    from shapeqc.transforms.organ_loading import read_npz_mask

    mask = read_npz_mask(data / "adrenalmnist3d/adrenalmnist3d_64_trainval.npz", "val_images", 0)
    grid = np.zeros((128, 128, 128), np.float32)
    grid[32:96, 32:96, 32:96] = mask
    grid_gpu = cupy.asarray(grid)
    rows = ["| kernel | input | CPU ms | CUDA ms | ratio | CUDA vs CPU |", "|---|---|---|---|---|---|"]
    cpu = timed(lambda: sample_boundary(grid, 100_000, [0.1, 0.01], seed=0), repeats, False)
    gpu = timed(lambda: sample_boundary(grid_gpu, 100_000, [0.1, 0.01], seed=0), repeats, True)
    points, occupancy = sample_boundary(grid_gpu, 100_000, [0.1, 0.01], seed=0)
    inside = sample_boundary(grid, 100_000, [0.1, 0.01], seed=0)[1].mean()
    inside_gpu = float(cupy.asnumpy(occupancy).mean())
    rows.append(f"| boundary sampling, 100k points | 128^3 grid, real gland | {cpu * 1e3:.1f} | {gpu * 1e3:.2f} | "
                f"{cpu / gpu:.0f}x | inside fraction {inside_gpu:.3f} vs {float(inside):.3f} |")
    axes = [np.linspace(0, 8, 128, dtype=np.float32) for _ in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    xg, yg, zg = (cupy.asarray(v) for v in (x, y, z))
    cpu = timed(lambda: perlin3d(x, y, z), repeats, False)
    gpu = timed(lambda: perlin3d(xg, yg, zg), repeats, True)
    difference = float(np.abs(cupy.asnumpy(perlin3d(xg, yg, zg)) - perlin3d(x, y, z)).max())
    rows.append(f"| Perlin noise | 128^3 box | {cpu * 1e3:.1f} | {gpu * 1e3:.2f} | {cpu / gpu:.0f}x | "
                f"max abs difference {difference:.1e} |")
    return rows


def training_steps(repeats: int) -> list[str]:
    from shapeqc.prior.ifnet import ifnet_from_preset

    rows = ["| preset | grid | CPU s per step | CUDA s per step | ratio |", "|---|---|---|---|---|"]
    for preset, size in (("cpu_small", 64), ("research", 128)):
        seconds = {}
        for device in ("cpu", "cuda"):
            torch.manual_seed(0)
            network = ifnet_from_preset(preset, grid_size=size).to(device)
            optimizer = torch.optim.Adam(network.parameters(), 1e-4)
            grid = (torch.rand(4, 1, size, size, size, device=device) > 0.5).float()
            points = torch.rand(4, 5000, 3, device=device) * 2 - 1
            target = (torch.rand(4, 5000, device=device) > 0.5).float()

            def step(network=network, optimizer=optimizer, grid=grid, points=points, target=target):
                optimizer.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(network(grid, points), target)
                loss.backward()
                optimizer.step()

            seconds[device] = timed(step, 1 if device == "cpu" and preset == "research" else repeats,
                                    device == "cuda")
        rows.append(f"| {preset} | {size}^3 | {seconds['cpu']:.3f} | {seconds['cuda']:.4f} | "
                    f"{seconds['cpu'] / seconds['cuda']:.0f}x |")
    return rows


def analysis(bundle_dirs: list[Path], data: Path, repeats: int) -> list[str]:
    import nibabel

    from shapeqc.bundle.loading import bundle_datalist, load_bundle
    from shapeqc.judging.analysis import analyse_organ
    from shapeqc.transforms.organ_loading import load_item_mask

    rows = ["| bundle | organ | CPU s | CUDA s | ratio | CUDA encode + decode s |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for bundle_dir in bundle_dirs:
            items = bundle_datalist(bundle_dir, str(data), "validate#datalist")
            if not items:
                rows.append(f"| {bundle_dir.name} | no validation mask under {data} | | | | |")
                continue
            item = items[0]
            mask, affine = load_item_mask(item)
            path = Path(work) / f"{bundle_dir.name}.nii.gz"
            nibabel.save(nibabel.Nifti1Image(mask.astype(np.uint8), affine), path)
            organ = item.get("organ") or load_bundle(bundle_dir).organs[0]
            seconds, steps = {}, {}
            for device in ("cpu", "cuda"):
                bundle = load_bundle(bundle_dir, device)
                records = []
                seconds[device] = timed(lambda bundle=bundle, records=records, path=path, organ=organ: records.append(
                    analyse_organ(str(path), organ, bundle, None, "bench")), repeats, device == "cuda")
                timings = records[-1].get("timings") or {}
                steps[device] = sum(v for k, v in timings.items() if k in ("encode", "decode"))
            rows.append(f"| {bundle_dir.name} | {organ} | {seconds['cpu']:.2f} | {seconds['cuda']:.3f} | "
                        f"{seconds['cpu'] / seconds['cuda']:.1f}x | {steps['cuda']:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, action="append", default=[])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this benchmark compares the GPU with the CPU")
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}\n")
    for title, table in (("Kernels", lambda: kernels(args.data, args.repeats)),
                         ("Training step", lambda: training_steps(args.repeats)),
                         ("Analysis per organ", lambda: analysis(args.bundle, args.data, args.repeats))):
        print(f"## {title}\n" + "\n".join(table()) + "\n", flush=True)


if __name__ == "__main__":
    main()
