"""Training cost of a bundle's train config: steps per second and seconds per 1,000 organs seen, today's network
and pipeline against cheaper variants, in one run on one thread (issue 32).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py --bundle bundles/kidney --organs 8 --steps 8

The train config's own pipeline is run (canonical grid cached as in training, then its random transforms) on
``--organs`` training organs; the seconds its random transforms take per organ are measured apart. Each variant
then trains from the same initial weights on the same batches (forward, BCE, backward, Adam step) and is timed
over ``--steps`` steps after one warm-up step. A variant changes one lever:

- ``points_<n>``: n boundary samples per organ instead of the config's ``num_points`` (a random subset of
  the same samples, so the two sigmas keep their mix);
- ``no_input_res``: the decoder without the two input-resolution maps (``IFNet(input_resolution_features=False)``);
- ``channels_last``: the grids in ``torch.channels_last_3d`` memory format (oneDNN's preferred conv3d layout);
- ``compile``: ``torch.compile`` of the network (only with ``--compile``: it needs a C++ compiler and minutes).

Printed: seconds per step, steps per second, seconds per 1,000 organs seen (network + random transforms) and each
variant's speed-up over ``today`` measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def training_batches(bundle: Path, dataset_dir: str, organs: int, seed: int = 0):
    """(batches, seconds of random transforms per organ, parser): ``organs`` training organs through the bundle's
    train pipeline, collated in the config's ``batch_size``."""
    from monai.data import list_data_collate
    from monai.utils import set_determinism

    from shapeqc.bundle.loading import bundle_parser

    parser = bundle_parser(bundle, ["inference.yaml", "train.yaml"], dataset_dir=dataset_dir, train_limit=organs,
                           num_workers=0)
    batch_size = int(parser.get_parsed_content("batch_size"))
    set_determinism(seed=seed)
    dataset = parser.get_parsed_content("train#dataset")  # caches the canonical grids, as training does
    start = time.perf_counter()
    items = [dataset[i] for i in range(len(dataset))]
    transform_s = (time.perf_counter() - start) / len(items)
    batches = [list_data_collate(items[i:i + batch_size]) for i in range(0, len(items) - batch_size + 1, batch_size)]
    return batches, transform_s, parser


def time_variant(network: torch.nn.Module, batches: list[dict], steps: int, points: int | None,
                 channels_last: bool, learning_rate: float) -> float:
    """Mean seconds of one training step (forward, loss, backward, optimiser step) over ``steps`` steps."""
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=1e-5)
    loss_function = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(0)
    network.train()

    def step(batch: dict) -> None:
        grid, query, label = batch["image"], batch["points"], batch["label"]
        if points is not None and points < query.shape[1]:
            keep = torch.randperm(query.shape[1], generator=generator)[:points]
            query, label = query[:, keep], label[:, keep]
        if channels_last:
            grid = grid.contiguous(memory_format=torch.channels_last_3d)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(network(grid, query), label)
        loss.backward()
        optimizer.step()

    step(batches[0])  # warm-up: allocator, oneDNN primitives, compilation
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(ROOT / "bundles" / "kidney"))
    parser.add_argument("--dataset-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--organs", type=int, default=8, help="training organs run through the pipeline")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--points", type=int, nargs="*", default=[2500], help="boundary-sample counts to try")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    bundle = Path(args.bundle)
    batches, transform_s, config = training_batches(bundle, args.dataset_dir, args.organs)
    batch_size = batches[0]["image"].shape[0]
    base = config.get_parsed_content("network_def")
    num_points = batches[0]["points"].shape[1]
    learning_rate = float(config.get_parsed_content("learning_rate"))

    def network(**overrides) -> torch.nn.Module:
        from shapeqc.prior.ifnet import IFNet

        arguments = {"grid_size": base.grid_size, "channels": base.channels, "hidden": base.hidden,
                     "input_resolution_features": base.input_resolution_features, **overrides}
        torch.manual_seed(0)
        return IFNet(**arguments)

    variants: list[tuple[str, dict, dict]] = [("today", {}, {}), ("today (again: the run's noise)", {}, {})]
    variants += [(f"points_{n}", {}, {"points": n}) for n in args.points]
    variants += [("no_input_res", {"input_resolution_features": False}, {}),
                 ("channels_last", {}, {"channels_last": True})]
    variants += [(f"no_input_res+points_{n}", {"input_resolution_features": False}, {"points": n})
                 for n in args.points]
    if args.compile:
        variants.append(("compile", {}, {"compile": True}))

    print(f"bundle {bundle.name}: {len(batches)} batches of {batch_size} organs, {num_points} points each, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"random transforms: {transform_s:.3f} s per organ")
    print(f"{'variant':28s} {'s/step':>8s} {'steps/s':>8s} {'s/1000 organs':>14s} {'speed-up':>9s}")
    reference = None
    for name, net_args, step_args in variants:
        net = network(**net_args)
        if step_args.get("compile"):
            net = torch.compile(copy.deepcopy(net))
        seconds = time_variant(net, batches, args.steps, step_args.get("points"),
                               bool(step_args.get("channels_last")), learning_rate)
        per_thousand = 1000 * (seconds / batch_size + transform_s)
        reference = reference or per_thousand
        print(f"{name:28s} {seconds:8.3f} {1 / seconds:8.2f} {per_thousand:14.0f} {reference / per_thousand:8.2f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
