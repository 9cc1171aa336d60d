"""Training of both stages: one shared loop, exact-resume checkpoints, the stage entry points, the pipeline."""

from __future__ import annotations

import math

from ldm.errors import UserError


class DivergedError(UserError):
    """The loss became non-finite; a UserError so the CLI prints one line and sweeps can mark the trial failed."""

    def __init__(self, step: int, value: float) -> None:
        hint = "lower training.<stage>.lr, raise warmup_steps or set grad_clip"
        what = "NaN" if math.isnan(value) else str(value)
        super().__init__(f"training diverged at step {step}: the loss is {what}; {hint}")
        self.step = step
        self.value = value
