"""`none`: an unconditional model; no labels, prompts or masks may be given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import torch

from ldm.diffusion.conditioning.base import (
    Batch,
    Condition,
    ConditionInputs,
    Conditioner,
    DatasetInfo,
    EvaluationConditions,
    LatentEncoder,
    SplitSource,
)

if TYPE_CHECKING:
    from ldm.config import DiffusionConfig, Split


class Unconditional(Conditioner, kind="none"):
    """No condition: holds no weights, so an unconditional denoiser's checkpoint has no conditioner entries."""

    @classmethod
    def build(cls, cfg: DiffusionConfig, info: DatasetInfo) -> Self:
        return cls()

    def condition(self, inputs: ConditionInputs, encode: LatentEncoder) -> Condition | None:
        return None

    def null(self, batch_size: int) -> Condition | None:
        return None

    def inputs_from_batch(self, batch: Batch, count: int | None = None) -> ConditionInputs:
        return ConditionInputs()

    def evaluation_conditions(self, n: int, split: SplitSource, reference_split: Split,
                              generator: torch.Generator) -> EvaluationConditions:
        return EvaluationConditions(ConditionInputs())
