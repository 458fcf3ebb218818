"""The training-curve tool reads MONAI StatsHandler logs and writes a PNG."""

from __future__ import annotations

import pytest

from shapeqc.training.curve import continued_logs, plot_curve, read_log

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


def test_a_campaign_and_its_continuation_plot_as_one_run(tmp_path):
    first, second = tmp_path / "campaign.log", tmp_path / "variant.log"
    first.write_text(LOG)
    second.write_text(LOG.replace("Epoch: 1/2", "Epoch: 3/4").replace("Epoch: 2/2", "Epoch: 4/4")
                      .replace("Epoch[1]", "Epoch[3]").replace("Epoch[2]", "Epoch[4]"))
    out = plot_curve([first, second], tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    losses, dices = read_log(first.read_text() + "\n" + second.read_text())
    assert [epoch for epoch, _ in dices] == [1, 2, 3, 4] and losses[-1] == (4.0, 0.25)
    # a log without a single loss line is named in the error
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(ValueError, match="empty.log"):
        plot_curve([empty], tmp_path / "none.png")


def test_a_later_log_takes_over_from_its_first_epoch():
    # a variant continued from the checkpoint after epoch 1: the first log's epoch 2 is not part of this run
    variant = (LOG.replace("Epoch: 1/2", "Epoch: 2/3").replace("Epoch: 2/2", "Epoch: 3/3")
               .replace("Epoch[2]", "Epoch[3]").replace("Epoch[1]", "Epoch[2]"))
    losses, dices = continued_logs([LOG, variant])
    assert dices == [(1, 0.5), (2, 0.5), (3, 0.75)]
    assert losses == [(0.5, 0.6944), (1.0, 0.6906), (1.5, 0.6944), (2.0, 0.6906), (2.5, 0.5), (3.0, 0.25)]
