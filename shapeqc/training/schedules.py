"""Learning-rate schedules of a bundle's training, in the trainer's own iteration count (issue 32).

A campaign resumes its trainer across sessions (``shapeqc.training.campaign``): a schedule written in the
scheduler's own step count would restart with every session, one written in ignite's iteration (saved in the
trainer checkpoint) continues the same curve. The bundles' train.yaml wires it as

    LrScheduleHandler(LambdaLR(optimizer, lambda _: cosine_decay_factor(trainer.state.iteration, window, floor)))
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def cosine_decay_factor(iteration: int, window: Sequence[int], floor: float) -> float:
    """Factor on the configured learning rate at trainer ``iteration``: 1 before ``window[0]``, a half cosine down
    to ``floor`` between ``window[0]`` and ``window[1]``, ``floor`` after.

    iteration: ignite's ``engine.state.iteration`` (counts across resumed sessions).
    window: (first, last) iteration of the decay, first < last.
    floor: the factor reached at ``window[1]``, in [0, 1].
    """
    first, last = int(window[0]), int(window[1])
    if not first < last:
        raise ValueError(f"the decay window {list(window)} must run forward (first < last)")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"the learning-rate floor {floor} must be in [0, 1]")
    progress = min(max((iteration - first) / (last - first), 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
