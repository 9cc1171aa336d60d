"""Exponential moving average of a module's weights: shadow <- d_n * shadow + (1 - d_n) * weight.

d_n = min(decay, (1 + n) / (10 + n)) at the n-th update (n = 0, 1, ...), the warm-up of ADM and diffusers'
EMAModel: without it a decay of 0.999 keeps 37% of the random initialisation after 1,000 steps, and short
CPU runs would sample from mostly untrained weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


class EMA:
    """A shadow copy of `model`'s floating parameters, updated after every optimiser step.

    Buffers (norm statistics, VQ codebook averages) are not averaged: they are running statistics
    already, and the model's own are used together with the shadow weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay} must lie strictly between 0 and 1")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.dtype.is_floating_point
        }

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), weight)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s averaged parameters with the shadow weights."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run a block (previews, validation) with the shadow weights, then restore the trained ones."""
        trained = {name: p.detach().clone() for name, p in model.named_parameters() if name in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in trained:
                        p.copy_(trained[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow: dict[str, Tensor] = state["shadow"]
        missing = set(self.shadow) - set(shadow)
        if missing:
            raise KeyError(f"EMA state lacks weights for: {', '.join(sorted(missing))}")
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.updates = int(state["updates"])
