"""Training curve of a bundle run: the loss and validation Dice read from the run's log, as a PNG.

    python -m shapeqc.training.curve train.log --out bundles/adrenal_gland/docs/training_curve.png
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

LOSS_LINE = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+) -- train_loss: ([0-9.eE+-]+)")
METRIC_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)")


def read_log(text: str) -> tuple[list[tuple[float, float]], list[tuple[int, float]]]:
    """([(epoch as a fraction, loss)], [(epoch, val Dice)]) from a MONAI StatsHandler log."""
    losses = [(int(e) - 1 + int(i) / int(n), float(v)) for e, i, n, v in LOSS_LINE.findall(text)]
    dices = [(int(e), float(v)) for e, v in METRIC_LINE.findall(text)]
    return losses, dices


def plot_curve(log_path: str | Path, out_path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    losses, dices = read_log(Path(log_path).read_text())
    if not losses:
        raise ValueError(f"{log_path}: no 'train_loss' lines found")
    x, y = np.array(losses).T
    window = max(1, len(y) // 50)
    smooth = np.convolve(y, np.ones(window) / window, mode="valid")
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=110)
    loss_axis.plot(x, y, color="0.8", lw=0.6, label="train loss (BCE), per iteration")
    loss_axis.plot(x[window - 1:], smooth, color="C0", lw=1.5, label=f"train loss, mean of {window}")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("BCE loss")
    dice_axis = loss_axis.twinx()
    if dices:
        epochs, values = np.array(dices).T
        dice_axis.plot(epochs, values, "o-", color="C3", label="val Dice (corrupted -> clean)")
    dice_axis.set_ylabel("validation Dice")
    dice_axis.set_ylim(0, 1)
    handles = loss_axis.get_legend_handles_labels()[0] + dice_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path)
    plt.close(figure)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    print(plot_curve(args.log, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
