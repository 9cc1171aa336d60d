"""What every conditioner shares: the condition inputs, the data summary it draws from, and the `Conditioner` base.

A condition is a dict with `context` (B, L, D) tokens for cross-attention and/or `concat` (B, C', h, w) channels
joined to the UNet input. Each conditioning type is one `Conditioner` subclass, registered under its
`diffusion.conditioning` value, that owns all of that type's behaviour: what it takes from a batch and from a
generation request, how it completes a request and draws conditions for evaluation, its null condition for
classifier-free guidance, its condition dropout, and its extra UNet input channels and context width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
from torch import Tensor, nn

from ldm.errors import UserError

if TYPE_CHECKING:  # types only: `ldm.config` asks this package what each type needs while validating
    from ldm.config import Conditioning, DiffusionConfig, Split
    from ldm.data.base import ImageDataset
    from ldm.diffusion.tokenizer import WordTokenizer

Condition = dict[str, Tensor]
Batch = dict[str, Any]
# Encodes images in [-1, 1] to scaled first-stage latents (the inpainting condition needs it).
LatentEncoder = Callable[[Tensor], Tensor]
# A split of the model's dataset by name (evaluation draws conditions from the train or reference split).
SplitSource = Callable[["Split"], "ImageDataset"]


@dataclass(frozen=True)
class ConditionInputs:
    """What images are generated for, one entry per image; a conditioner says which fields it takes.

    `labels` (N,) class indices; `prompts` N strings; `masked_images` (N, C, H, W) in [-1, 1] with `masks`
    (N, 1, H, W), 1 = region to inpaint (pixels under the mask are zeroed before encoding, so whole images may
    be passed).
    """

    labels: Tensor | None = None
    prompts: list[str] | None = None
    masked_images: Tensor | None = None
    masks: Tensor | None = None

    def given(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __getitem__(self, part: slice) -> ConditionInputs:
        return replace(self, **{name: value[part] for name, value in self.given().items()})

    def to(self, device: torch.device) -> ConditionInputs:
        return replace(self, **{name: value.to(device) for name, value in self.given().items()
                                if isinstance(value, Tensor)})


@dataclass(frozen=True)
class EvaluationConditions:
    """Conditions drawn for an evaluation: the generation request, and the labels the samples should show."""

    inputs: ConditionInputs
    target_labels: Tensor | None = None  # for the conditioning accuracy (class models, and text via captions)


@dataclass(frozen=True)
class DatasetSummary:
    """What generation needs from the training split: class names, label and caption frequencies."""

    class_names: list[str]
    label_counts: list[int]
    captions: list[str]
    caption_counts: list[int]

    @classmethod
    def of(cls, dataset: ImageDataset) -> DatasetSummary:
        labels = dataset.labels
        label_counts = (torch.bincount(labels, minlength=dataset.num_classes).tolist()
                        if labels is not None else [])
        captions = Counter(dataset.captions or [])
        return cls(list(dataset.class_names), label_counts, sorted(captions), [captions[c] for c in sorted(captions)])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DatasetSummary:
        return cls(**state)


@dataclass(frozen=True)
class DatasetInfo:
    """What a conditioner is built from, by the caller from the dataset (or a checkpoint) and the first stage."""

    num_classes: int = 0
    captions: list[str] | None = None
    tokenizer: WordTokenizer | None = None  # a saved tokenizer (when loading a checkpoint) instead of `captions`
    latent_shape: tuple[int, int, int] | None = None  # (channels, h, w) of the first stage's latents


CONDITIONERS: dict[str, type[Conditioner]] = {}


class Conditioner(nn.Module, ABC):
    """Base of all conditioners; a subclass names its type: `class ClassEmbedder(Conditioner, kind="class")`.

    `needs` is the dataset item key the type conditions on (validated against what the dataset provides),
    `accepts` the `ConditionInputs` fields a generation request may set, `context_dim` the width of the context
    tokens (None: no cross-attention), `reads_images` whether the condition is computed from the training
    image itself (then training cannot run on cached latents alone), `labels_scored` whether its evaluation
    conditions carry target labels (then the evaluation measures `cond_accuracy`).
    """

    kind: ClassVar[Conditioning]
    needs: ClassVar[str | None] = None
    reads_images: ClassVar[bool] = False
    labels_scored: ClassVar[bool] = False
    accepts: ClassVar[frozenset[str]] = frozenset()
    context_dim: int | None = None

    def __init_subclass__(cls, kind: Conditioning | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            if kind in CONDITIONERS:
                raise TypeError(f"conditioning type '{kind}' is registered twice: {CONDITIONERS[kind].__name__}, "
                                f"{cls.__name__}")
            cls.kind = kind
            CONDITIONERS[kind] = cls

    @classmethod
    @abstractmethod
    def build(cls, cfg: DiffusionConfig, info: DatasetInfo) -> Self:
        """A new conditioner of this type, sized from the data."""

    @abstractmethod
    def condition(self, inputs: ConditionInputs, encode: LatentEncoder) -> Condition | None:
        """The denoiser's condition for a batch of inputs (None for an unconditional model)."""

    @abstractmethod
    def null(self, batch_size: int) -> Condition | None:
        """The unconditional input of classifier-free guidance, for a batch."""

    @abstractmethod
    def inputs_from_batch(self, batch: Batch, count: int | None = None) -> ConditionInputs:
        """What this type conditions on, from the first `count` items (all when None) of a training batch."""

    def complete_inputs(self, n: int, inputs: ConditionInputs, dataset: DatasetSummary,
                        generator: torch.Generator | None) -> ConditionInputs:
        """Check a generation request for `n` images against this type; fill in what may be drawn."""
        given = inputs.given()
        unexpected = sorted(name for name in given if name not in self.accepts)
        if unexpected:
            raise UserError(f"this model has diffusion.conditioning='{self.kind}': {', '.join(unexpected)} cannot "
                            f"be given; allowed: {', '.join(sorted(self.accepts)) or 'no condition'}")
        for name, value in given.items():
            if len(value) != n:
                raise UserError(f"{len(value)} {name} for n={n} images; give exactly one per image")
        return self.drawn_inputs(n, inputs, dataset, generator)

    def drawn_inputs(self, n: int, inputs: ConditionInputs, dataset: DatasetSummary,
                     generator: torch.Generator | None) -> ConditionInputs:
        """A checked request with its missing conditions drawn from the data frequencies (nothing to draw here)."""
        return inputs

    @abstractmethod
    def evaluation_conditions(self, n: int, split: SplitSource, reference_split: Split,
                              generator: torch.Generator) -> EvaluationConditions:
        """Conditions for `n` evaluation samples, drawn like the data so every number is comparable across types."""

    def grid_captions(self, inputs: ConditionInputs, dataset: DatasetSummary) -> list[str] | None:
        """Captions for a grid of images generated for `inputs` (None: no captions)."""
        return None

    def extra_in_channels(self, latent_channels: int) -> int:
        """Channels this conditioner adds to the UNet input."""
        return 0

    def saved_state(self) -> dict[str, Any]:
        """Checkpoint extras that rebuild this conditioner without the data (e.g. the tokenizer)."""
        return {}

    def drop_where(self, cond: Condition, dropped: Tensor) -> Condition:
        """Replace the condition of the items where `dropped` (bool, per item) by the null condition."""
        null = self.null(1)  # broadcast by torch.where: the text encoder runs once, not per item
        assert null is not None  # only a type that makes conditions drops them
        return {key: torch.where(dropped.to(value.device).view(-1, *[1] * (value.ndim - 1)), null[key], value)
                for key, value in cond.items()}


def training_items(split: SplitSource, n: int, generator: torch.Generator) -> tuple[ImageDataset, Tensor]:
    """The training split and `n` item indices drawn uniformly (so labels and captions follow its frequencies)."""
    train = split("train")
    return train, torch.randint(len(train), (n,), generator=generator)


def conditioned_forward(unet: nn.Module, x: Tensor, t: Tensor, cond: Condition | None) -> Tensor:
    """The UNet applied to x under a condition: `concat` joined to the input channels, `context` cross-attended."""
    cond = cond or {}
    if "concat" in cond:
        x = torch.cat([x, cond["concat"].to(x)], dim=1)
    return unet(x, t, context=cond.get("context"))
