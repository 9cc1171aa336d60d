"""Conditioners, one class per `diffusion.conditioning` type, found through a registry keyed by that value.

Adding a type: one `Conditioner` subclass in a module of this package, imported below, declared with
`kind="<value>"`, and the value added to the `Conditioning` Literal in `ldm/config.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ldm.diffusion.conditioning.base import (
    CONDITIONERS,
    Condition,
    ConditionInputs,
    Conditioner,
    DatasetInfo,
    DatasetSummary,
    EvaluationConditions,
    conditioned_forward,
)
from ldm.diffusion.conditioning.class_label import ClassEmbedder
from ldm.diffusion.conditioning.inpainting import ConcatConditioner, MaskedLatent
from ldm.diffusion.conditioning.text import TextEncoder
from ldm.diffusion.conditioning.unconditional import Unconditional

if TYPE_CHECKING:
    from ldm.config import Conditioning, DiffusionConfig


def conditioner_class(kind: Conditioning) -> type[Conditioner]:
    """The class registered for a `diffusion.conditioning` value."""
    return CONDITIONERS[kind]


def build_conditioner(cfg: DiffusionConfig, info: DatasetInfo) -> Conditioner:
    """The conditioner of cfg.conditioning, sized from the dataset."""
    return conditioner_class(cfg.conditioning).build(cfg, info)


__all__ = [
    "CONDITIONERS",
    "ClassEmbedder",
    "ConcatConditioner",
    "Condition",
    "ConditionInputs",
    "Conditioner",
    "DatasetInfo",
    "DatasetSummary",
    "EvaluationConditions",
    "MaskedLatent",
    "TextEncoder",
    "Unconditional",
    "build_conditioner",
    "conditioned_forward",
    "conditioner_class",
]
