"""`concat`: inpainting, the masked image's latent and the mask joined to the UNet input channels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import torch
import torch.nn.functional as F
from torch import Tensor

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
)
from ldm.errors import UserError

if TYPE_CHECKING:
    from ldm.config import DiffusionConfig, Split


@dataclass(frozen=True)
class MaskedLatent:
    """Inpainting input: the first-stage latent of the masked image and the pixel mask (1 = region to inpaint)."""

    latent: Tensor  # (B, c, h, w)
    mask: Tensor  # (B, 1, H, W)


class ConcatConditioner(Conditioner, kind="concat"):
    """The masked latent and the mask at latent size; null = zeros. Requests must give masked_images and masks."""

    needs = "mask"
    reads_images = True
    accepts = frozenset({"masked_images", "masks"})

    def __init__(self, latent_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.latent_shape = latent_shape
        # Holds no weights: this empty buffer follows .to(device) so that inputs and null() land on the model's device.
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    @classmethod
    def build(cls, cfg: DiffusionConfig, info: DatasetInfo) -> Self:
        if info.latent_shape is None:
            raise ValueError("diffusion.conditioning='concat' needs DatasetInfo.latent_shape (the first stage's)")
        return cls(info.latent_shape)

    def forward(self, masked: MaskedLatent) -> Condition:
        latent = masked.latent.to(self._device_anchor.device)
        if tuple(latent.shape[1:]) != self.latent_shape:
            raise ValueError(f"masked latent has shape {tuple(latent.shape[1:])}, expected {self.latent_shape}")
        # Area averaging keeps the fraction of each latent cell to inpaint, so small holes survive large f.
        mask = F.interpolate(masked.mask.to(latent), size=latent.shape[-2:], mode="area")
        return {"concat": torch.cat([latent, mask], dim=1)}

    def condition(self, inputs: ConditionInputs, encode: LatentEncoder) -> Condition | None:
        assert inputs.masked_images is not None and inputs.masks is not None  # completed or taken from a batch
        # The region to fill is zeroed before encoding: the model must never see what it inpaints.
        masked = inputs.masked_images * (1 - inputs.masks)
        return self(MaskedLatent(encode(masked), inputs.masks))

    def null(self, batch_size: int) -> Condition | None:
        channels, h, w = self.latent_shape
        return {"concat": torch.zeros(batch_size, channels + 1, h, w, device=self._device_anchor.device)}

    def inputs_from_batch(self, batch: Batch, count: int | None = None) -> ConditionInputs:
        return ConditionInputs(masked_images=batch["image"][:count], masks=batch["mask"][:count])

    def drawn_inputs(self, n: int, inputs: ConditionInputs, dataset: DatasetSummary,
                     generator: torch.Generator | None) -> ConditionInputs:
        if inputs.masked_images is None or inputs.masks is None:
            raise UserError("an inpainting model (diffusion.conditioning='concat') needs masked_images and masks")
        return inputs

    def evaluation_conditions(self, n: int, split: SplitSource, reference_split: Split,
                              generator: torch.Generator) -> EvaluationConditions:
        # The reference split's own images and masks: the samples inpaint exactly what FID compares them with.
        reference = split(reference_split)
        picks = torch.randperm(len(reference), generator=generator)[:n]
        items = [reference[int(i)] for i in picks]
        images = torch.stack([item["image"] for item in items])
        masks = torch.stack([item["mask"] for item in items])
        return EvaluationConditions(ConditionInputs(masked_images=images * (1 - masks), masks=masks))

    def extra_in_channels(self, latent_channels: int) -> int:
        return latent_channels + 1
