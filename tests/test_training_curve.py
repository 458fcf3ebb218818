"""The training-curve tool reads MONAI StatsHandler logs and writes a PNG."""

from __future__ import annotations

from shapeqc.training.curve import plot_curve, read_log

LOG = """2026-11-24 07:40:16,166 - INFO - Epoch: 1/2, Iter: 1/2 -- train_loss: 0.6944
2026-11-24 07:40:16,422 - INFO - Epoch: 1/2, Iter: 2/2 -- train_loss: 0.6906
2026-11-24 07:40:22,944 - INFO - Epoch[1] Metrics -- val_mean_dice: 0.5000
2026-11-24 07:40:23,166 - INFO - Epoch: 2/2, Iter: 1/2 -- train_loss: 0.5
2026-11-24 07:40:23,422 - INFO - Epoch: 2/2, Iter: 2/2 -- train_loss: 0.25
2026-11-24 07:40:29,944 - INFO - Epoch[2] Metrics -- val_mean_dice: 0.7500
"""


def test_read_log():
    losses, dices = read_log(LOG)
    assert losses == [(0.5, 0.6944), (1.0, 0.6906), (1.5, 0.5), (2.0, 0.25)]
    assert dices == [(1, 0.5), (2, 0.75)]


def test_plot_writes_a_png(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(LOG)
    out = plot_curve(log, tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
