"""The repair figure (shapeqc.evaluation.repair) on a real held-out spleen of the bundle's own split: a prior that
copies its input repairs nothing, one that returns the clean organ repairs all the damage."""

from pathlib import Path

import numpy as np
import pytest

from shapeqc.evaluation.repair import CLEAN, held_out_grids, repair_rows, summarise
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]

FAMILIES = ["plane_cut", "hole"]


@pytest.fixture(scope="module")
def spleen_grid():
    if not (SHARED_DATA / "msd_spleen").exists():
        pytest.fail(f"{SHARED_DATA / 'msd_spleen'} is missing: the tests need ../shared/data")
    grids = held_out_grids(ROOT / "bundles" / "spleen", str(SHARED_DATA), limit=1)
    assert len(grids) == 1
    name, grid = grids[0]
    assert grid.dtype == bool and grid.ndim == 3 and grid.any() and name
    return grids


def test_a_copying_prior_repairs_nothing(spleen_grid):
    rows = repair_rows(lambda mask: mask, spleen_grid, FAMILIES)
    corrupted = [r for r in rows if r["family"] != CLEAN]
    assert {r["family"] for r in corrupted} == set(FAMILIES)
    assert all(r["repair"] == 0.0 and r["qc_dice"] == 1.0 for r in rows)
    assert all(r["dice_input"] < 1.0 for r in corrupted)  # every corruption damaged the organ
    table = summarise(rows)
    assert table["mean_repair"]["repair"] == 0.0
    assert table["plane_cut"]["qc_auroc"] == 0.5  # a score of 0 everywhere tells nothing apart


def test_a_prior_returning_the_clean_organ_repairs_all_damage(spleen_grid):
    clean = spleen_grid[0][1]
    rows = repair_rows(lambda mask: clean, spleen_grid, FAMILIES)
    for row in rows:
        assert row["dice_reconstruction"] == 1.0
        assert row["repair"] == pytest.approx(1.0 - row["dice_input"])
        assert row["qc_dice"] == pytest.approx(row["dice_input"])
    table = summarise(rows)
    assert table["mean_repair"]["repair"] > 0.02
    assert table["mean_repair"]["qc_auroc"] == 1.0


def test_corruptions_are_seeded(spleen_grid):
    first = repair_rows(lambda mask: mask, spleen_grid, FAMILIES, seed=7)
    again = repair_rows(lambda mask: mask, spleen_grid, FAMILIES, seed=7)
    other = repair_rows(lambda mask: mask, spleen_grid, FAMILIES, seed=8)
    assert [r["dice_input"] for r in first] == [r["dice_input"] for r in again]
    assert not np.allclose([r["dice_input"] for r in first], [r["dice_input"] for r in other])


def test_skipping_the_organs_that_selected_the_weights(spleen_grid):
    """--skip-cases K: the held-out organs after the first K, in the split's order."""
    first_two = held_out_grids(ROOT / "bundles" / "spleen", str(SHARED_DATA), limit=2)
    (name, grid), = held_out_grids(ROOT / "bundles" / "spleen", str(SHARED_DATA), limit=1, skip_cases=1)
    assert first_two[0][0] == spleen_grid[0][0] and name == first_two[1][0] != spleen_grid[0][0]
    assert np.array_equal(grid, first_two[1][1])
