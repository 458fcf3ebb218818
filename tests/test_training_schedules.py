"""The learning-rate schedule of a campaign's annealing, in the trainer's iteration count."""

from __future__ import annotations

import pytest

from shapeqc.training.schedules import cosine_decay_factor


@pytest.mark.parametrize(("iteration", "expected"), [
    (0, 1.0), (100, 1.0), (150, 0.1 + 0.9 * 0.5), (200, 0.1), (10_000, 0.1),
])
def test_cosine_decay_is_flat_then_half_a_cosine_then_the_floor(iteration, expected):
    assert cosine_decay_factor(iteration, [100, 200], 0.1) == pytest.approx(expected)


@pytest.mark.parametrize(("window", "floor"), [([200, 100], 0.1), ([100, 100], 0.1), ([0, 10], 1.5)])
def test_a_backward_window_or_a_floor_outside_0_1_is_refused(window, floor):
    with pytest.raises(ValueError):
        cosine_decay_factor(0, window, floor)
