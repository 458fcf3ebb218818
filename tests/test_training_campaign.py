"""A training campaign across sessions: the bundle's own training workflow run twice through the installed
command, the second session resuming the first one's trainer checkpoint (smoke-sized: 4 MSD spleens)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "spleen"


def session(campaigns: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shapeqc.training.campaign", "--bundle", str(BUNDLE),
                           "--minutes", "0.25", "--campaigns", str(campaigns), "--dataset-dir", str(SHARED_DATA),
                           *extra], capture_output=True, text=True, timeout=600)


def test_a_second_session_resumes_where_the_first_stopped(tmp_path):
    recipe = ["--set", "train_limit=4", "val_limit=2", "num_points=500", "val_interval=2"]
    first = session(tmp_path, *recipe)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / BUNDLE.name
    campaign = json.loads((folder / "campaign.json").read_text())
    assert campaign["recipe"] == {"train_limit": 4, "val_limit": 2, "num_points": 500, "val_interval": 2}
    one = campaign["sessions"][0]
    assert one["iterations"][0] == 0 and one["iterations"][1] > 0 and one["validation"]
    saved = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(saved) >= {"model", "optimizer", "trainer"} and (folder / "best_model.pt").exists()

    second = session(tmp_path)  # the stored recipe
    assert second.returncode == 0, second.stderr[-3000:]
    campaign = json.loads((folder / "campaign.json").read_text())
    two = campaign["sessions"][1]
    assert two["iterations"][0] == one["iterations"][1] and two["epochs"][0] == one["epochs"][1]
    assert two["iterations"][1] > two["iterations"][0]
    assert campaign["iterations"] == two["iterations"][1]
    # the resumed trainer went on counting: no epoch of the second session repeats one of the first
    assert min(e for e, _ in two["validation"]) > max(e for e, _ in one["validation"])
    log = (folder / "train.log").read_text()
    assert log.count("===== session") == 2

    # a campaign from before ``best`` was stored (each session then wrote its own best to best_model.pt), whose
    # last session validated better than the next will: that best stays the campaign's, now stored, and
    # best_model.pt is kept
    legacy = json.loads((folder / "campaign.json").read_text())
    del legacy["best"]
    legacy["sessions"][1]["validation"][0][1] = 1.0
    (folder / "campaign.json").write_text(json.dumps(legacy))
    kept_weights = (folder / "best_model.pt").read_bytes()
    two = legacy["sessions"][1]

    # the annealing that ends a campaign: a session-only decay, counted from the checkpoint's iteration, which
    # leaves the recipe as it was; the rate it ends on is the schedule's, not the one saved in the checkpoint
    third = session(tmp_path, "--decay", "2", "--session-set", "lr_floor=0.1")
    assert third.returncode == 0, third.stderr[-3000:]
    campaign = json.loads((folder / "campaign.json").read_text())
    start = two["iterations"][1]
    assert campaign["sessions"][2]["overrides"] == {"lr_floor": 0.1, "lr_decay_iterations": [start, start + 2]}
    assert campaign["recipe"] == {"train_limit": 4, "val_limit": 2, "num_points": 500, "val_interval": 2}
    assert campaign["iterations"] >= start + 2
    # best_model.pt holds the campaign's best validation, not the last session's
    curve = [point for past in campaign["sessions"] for point in past["validation"]]
    assert campaign["best"]["val_mean_dice"] == max(dice for _, dice in curve)
    assert [campaign["best"]["epoch"], campaign["best"]["val_mean_dice"]] in curve
    assert campaign["best"] == {"epoch": two["validation"][0][0], "val_mean_dice": 1.0}
    assert (folder / "best_model.pt").read_bytes() == kept_weights
    saved = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert [group["lr"] for group in saved["optimizer"]["param_groups"]] == [pytest.approx(0.0003 * 0.1)]

    other = session(tmp_path, "--set", "num_points=1000")
    assert other.returncode != 0 and "recipe" in other.stderr

    # a variant (another recipe) starts from this campaign's weights in its own folder
    variant = session(tmp_path / "variants", "--start-from", str(folder / "checkpoint.pt"),
                      "--set", "train_limit=4", "val_limit=2", "num_points=1000", "val_interval=2")
    assert variant.returncode == 0, variant.stderr[-3000:]
    seeded = json.loads((tmp_path / "variants" / BUNDLE.name / "campaign.json").read_text())
    assert seeded["started_from"]["iteration"] == campaign["iterations"]
    assert seeded["started_from"]["hours"] == pytest.approx(campaign["hours"])
    assert seeded["hours"] == pytest.approx(campaign["hours"] + seeded["sessions"][0]["minutes"] / 60)
    assert seeded["sessions"][0]["iterations"][0] == campaign["iterations"] and seeded["recipe"]["num_points"] == 1000
    again = session(tmp_path / "variants", "--start-from", str(folder / "checkpoint.pt"))
    assert again.returncode != 0 and "already holds a campaign" in again.stderr


def test_a_bundle_whose_training_cannot_stop_on_time_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "shapeqc.training.campaign", "--bundle",
                             str(ROOT / "bundles" / "adrenal_gland"), "--minutes", "1", "--campaigns", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "time_limit_s" in result.stderr


def test_a_variant_starts_from_best_weights_on_the_checkpoints_counts_with_a_fresh_optimiser(tmp_path):
    from shapeqc.training.campaign import load_campaign, seed_campaign, trainer_iteration

    network = torch.nn.Linear(3, 2)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    network(torch.ones(4, 3)).sum().backward()
    optimiser.step()
    torch.save({"model": network.state_dict(), "optimizer": optimiser.state_dict(),
                "trainer": {"iteration": 120, "epoch_length": 12, "max_epochs": 100}}, tmp_path / "checkpoint.pt")
    best = {name: torch.full_like(value, 0.5) for name, value in network.state_dict().items()}
    torch.save(best, tmp_path / "best_model.pt")

    folder = tmp_path / "variants" / "spleen"
    campaign = load_campaign(folder, "spleen", {"num_points": 500})
    seed_campaign(folder, campaign, tmp_path / "checkpoint.pt", tmp_path / "best_model.pt")
    seeded = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(seeded["model"][name], best[name]) for name in best)
    assert seeded["optimizer"]["state"] == {} and seeded["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert trainer_iteration(folder / "checkpoint.pt") == (10, 120)
    assert campaign["started_from"]["weights"] == str(tmp_path / "best_model.pt")
    # the emptied state loads and steps: Adam starts its moments afresh from the best weights
    network.load_state_dict(seeded["model"])
    fresh = torch.optim.Adam(network.parameters(), lr=1e-3)
    fresh.load_state_dict(seeded["optimizer"])
    network(torch.ones(4, 3)).sum().backward()
    fresh.step()
    assert int(fresh.state[network.weight]["step"]) == 1


def test_start_weights_without_a_checkpoint_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "shapeqc.training.campaign", "--bundle", str(BUNDLE), "--minutes",
                             "1", "--campaigns", str(tmp_path), "--start-weights", str(tmp_path / "best_model.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--start-weights needs --start-from" in result.stderr
