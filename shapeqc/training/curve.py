"""Training curve of a bundle run: the loss and validation Dice read from the run's log, as a PNG.

    python -m shapeqc.training.curve train.log [MORE.log ...] --out bundles/adrenal_gland/docs/training_curve.png

Several logs are read in the order given, as one run continued from checkpoints (the trainer's epoch count runs on
across sessions and variants): each later log takes over from its first epoch, so the part of an earlier log past
the checkpoint a variant started from (the plain spleen campaign after epoch 682) is left out.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

LOSS_LINE = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+) -- train_loss: ([0-9.eE+-]+)")
METRIC_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)")


def read_log(text: str) -> tuple[list[tuple[float, float]], list[tuple[int, float]]]:
    """([(epoch as a fraction, loss)], [(epoch, val Dice)]) from a MONAI StatsHandler log."""
    losses = [(int(e) - 1 + int(i) / int(n), float(v)) for e, i, n, v in LOSS_LINE.findall(text)]
    dices = [(int(e), float(v)) for e, v in METRIC_LINE.findall(text)]
    return losses, dices


def continued_logs(texts: list[str]) -> tuple[list[tuple[float, float]], list[tuple[int, float]]]:
    """:func:`read_log` of several logs of one run in order, each taking over from its first epoch E: the earlier
    logs' losses past epoch E - 1 and validations from epoch E on are dropped."""
    losses: list[tuple[float, float]] = []
    dices: list[tuple[int, float]] = []
    for text in texts:
        more_losses, more_dices = read_log(text)
        if more_losses:
            first_epoch = math.ceil(more_losses[0][0])  # iteration i of epoch E sits at E - 1 + i / n
            losses = [point for point in losses if point[0] <= first_epoch - 1]
            dices = [point for point in dices if point[0] < first_epoch]
        losses += more_losses
        dices += more_dices
    return losses, dices


def plot_curve(log_paths: str | Path | list, out_path: str | Path) -> Path:
    """Plot the logs ``log_paths`` (one path, or several read in order as one run) into the PNG ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = [log_paths] if isinstance(log_paths, (str, Path)) else list(log_paths)
    losses, dices = continued_logs([Path(path).read_text() for path in paths])
    if not losses:
        raise ValueError(f"{', '.join(map(str, paths))}: no 'train_loss' lines found")
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
    parser.add_argument("log", nargs="+", help="one or more logs, read in order as one run")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    print(plot_curve(args.log, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
