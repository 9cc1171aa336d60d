"""`class`: a learned context token per class label, as LDM's class-conditional models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import torch
from torch import Tensor, nn

from ldm.diffusion.conditioning.base import (
    Batch,
    Condition,
    ConditionInputs,
    Conditioner,
    DatasetInfo,
    DatasetSummary,
    EvaluationConditions,
    LatentEncoder,
    SplitSource,
    training_items,
)
from ldm.errors import DataError, UserError

if TYPE_CHECKING:
    from ldm.config import DiffusionConfig, Split


class ClassEmbedder(Conditioner, kind="class"):
    """A learned (B, 1, D) token per class; index num_classes is the learned null token.

    Missing labels of a generation request are drawn from the training split's label frequencies.
    """

    needs = "label"
    accepts = frozenset({"labels"})
    labels_scored = True

    def __init__(self, num_classes: int, context_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.embedding = nn.Embedding(num_classes + 1, context_dim)

    @classmethod
    def build(cls, cfg: DiffusionConfig, info: DatasetInfo) -> Self:
        if info.num_classes < 1:
            raise DataError(f"diffusion.conditioning='class' needs labelled data; the dataset has "
                            f"num_classes={info.num_classes}")
        return cls(info.num_classes, cfg.unet.context_dim)

    def forward(self, labels: Tensor) -> Condition:
        return {"context": self.embedding(labels.to(self.embedding.weight.device))[:, None, :]}

    def condition(self, inputs: ConditionInputs, encode: LatentEncoder) -> Condition | None:
        assert inputs.labels is not None  # completed or taken from a batch
        return self(inputs.labels)

    def null(self, batch_size: int) -> Condition | None:
        labels = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=self.embedding.weight.device)
        return self(labels)

    def inputs_from_batch(self, batch: Batch, count: int | None = None) -> ConditionInputs:
        return ConditionInputs(labels=batch["label"][:count])

    def drawn_inputs(self, n: int, inputs: ConditionInputs, dataset: DatasetSummary,
                     generator: torch.Generator | None) -> ConditionInputs:
        count = len(dataset.class_names)
        if inputs.labels is None:
            weights = torch.tensor(dataset.label_counts, dtype=torch.float64)
            return ConditionInputs(labels=torch.multinomial(weights, n, replacement=True, generator=generator))
        outside = inputs.labels[(inputs.labels < 0) | (inputs.labels >= count)]
        if outside.numel():
            raise UserError(f"label {int(outside[0])} is out of range; allowed: 0..{count - 1}")
        return inputs

    def evaluation_conditions(self, n: int, split: SplitSource, reference_split: Split,
                              generator: torch.Generator) -> EvaluationConditions:
        train, picks = training_items(split, n, generator)
        assert train.labels is not None  # validated: class conditioning needs labels
        labels = train.labels[picks]
        return EvaluationConditions(ConditionInputs(labels=labels), target_labels=labels)

    def grid_captions(self, inputs: ConditionInputs, dataset: DatasetSummary) -> list[str] | None:
        assert inputs.labels is not None
        return [dataset.class_names[int(label)] for label in inputs.labels]
