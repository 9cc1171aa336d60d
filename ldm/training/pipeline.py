"""A trained latent diffusion model as one object: conditions in, images out.

Conditions, by `diffusion.conditioning`:
- `none`: no labels, prompts or masks may be given.
- `class`: `labels` (N,) in 0..num_classes-1; when none are given they are drawn from the training
  split's label frequencies with the generator.
- `text`: `prompts` (N strings); when none are given they are drawn from the training captions,
  with their frequencies.
- `concat` (inpainting): `masked_images` (N, C, H, W) in [-1, 1] and `masks` (N, 1, H, W), 1 = region to
  inpaint; pixels under the mask are zeroed before encoding, so whole images may be passed. Both are required.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldm.config import Conditioning, ExperimentConfig, SamplingConfig
from ldm.data.base import ImageDataset
from ldm.diffusion.conditioning import (
    Condition,
    Conditioner,
    DatasetInfo,
    MaskedLatent,
    build_conditioner,
    conditioned_forward,
)
from ldm.diffusion.process import GaussianDiffusion
from ldm.diffusion.samplers import sample
from ldm.diffusion.tokenizer import WordTokenizer
from ldm.diffusion.unet import UNet
from ldm.errors import UserError
from ldm.first_stage import FirstStage
from ldm.training.autoencoder_stage import first_stage_of
from ldm.training.checkpoint import model_weights, read_checkpoint
from ldm.training.device import autocast

# The generation arguments each conditioning type takes.
CONDITION_ARGUMENTS: dict[Conditioning, frozenset[str]] = {
    "none": frozenset(),
    "class": frozenset({"labels"}),
    "text": frozenset({"prompts"}),
    "concat": frozenset({"masked_images", "masks"}),
}


class Denoiser(nn.Module):
    """What the diffusion stage trains: the UNet and its conditioner (None when unconditional)."""

    def __init__(self, unet: UNet, conditioner: Conditioner | None) -> None:
        super().__init__()
        self.unet = unet
        self.conditioner = conditioner

    def forward(self, x: Tensor, t: Tensor, cond: Condition | None = None) -> Tensor:
        return conditioned_forward(self.unet, x, t, cond)


def build_denoiser(cfg: ExperimentConfig, info: DatasetInfo) -> Denoiser:
    """UNet over latents of `info.latent_shape`, widened by the conditioner's extra input channels."""
    assert info.latent_shape is not None
    channels = info.latent_shape[0]
    conditioner = build_conditioner(cfg.diffusion, info)
    extra = conditioner.extra_in_channels(channels) if conditioner is not None else 0
    context_dim = conditioner.context_dim if conditioner is not None else None
    return Denoiser(UNet(cfg.diffusion.unet, channels + extra, channels, context_dim), conditioner)


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


def encode_latents(first_stage: FirstStage, images: Tensor, scale_factor: float, sample_posterior: bool) -> Tensor:
    """Scaled first-stage latents of images in [-1, 1]; the first stage is frozen."""
    with torch.no_grad():
        posterior = first_stage.encode(images)
        return (posterior.sample() if sample_posterior else posterior.mode()) * scale_factor


def conditioner_input(conditioning: Conditioning, first_stage: FirstStage, scale_factor: float, *,
                      labels: Tensor | None, prompts: list[str] | None, masked_images: Tensor | None,
                      masks: Tensor | None) -> Any:
    """What the conditioner of `conditioning` takes: labels, prompts, or the masked image's latent with the mask."""
    match conditioning:
        case "none":
            return None
        case "class":
            return labels
        case "text":
            return prompts
        case "concat":
            assert masked_images is not None and masks is not None
            masked = masked_images * (1 - masks)
            return MaskedLatent(encode_latents(first_stage, masked, scale_factor, sample_posterior=False), masks)


class LatentDiffusionPipeline:
    """First stage, denoiser, diffusion process and scale factor of one trained model, ready to sample."""

    def __init__(self, *, first_stage: FirstStage, denoiser: Denoiser, diffusion: GaussianDiffusion,
                 scale_factor: float, config: ExperimentConfig, dataset: DatasetSummary,
                 device: torch.device) -> None:
        self.first_stage, self.denoiser, self.diffusion = first_stage, denoiser, diffusion
        self.scale_factor, self.config, self.dataset, self.device = scale_factor, config, dataset, device

    @classmethod
    def from_checkpoint(cls, path: Path, device: str | torch.device = "cpu",
                        use_ema: bool = True) -> LatentDiffusionPipeline:
        """Load a `diffusion.pt`; `use_ema` takes the averaged weights when the run kept them."""
        ckpt = read_checkpoint(path)
        extras = ckpt["extras"]
        if "first_stage" not in extras:
            raise UserError(f"'{path}' is a first-stage checkpoint; sampling needs a diffusion checkpoint "
                            "(diffusion.pt in the run folder)")
        first_stage, scale_factor, cfg = first_stage_of(ckpt, path)
        device = torch.device(device)
        dataset = DatasetSummary.from_dict(extras["dataset"])
        tokenizer = WordTokenizer.from_dict(extras["tokenizer"]) if extras["tokenizer"] is not None else None
        info = DatasetInfo(num_classes=len(dataset.class_names), tokenizer=tokenizer,
                           latent_shape=first_stage.latent_shape(cfg.data.resolution))
        denoiser = build_denoiser(cfg, info)
        denoiser.load_state_dict(model_weights(ckpt, use_ema))
        for module in (first_stage, denoiser):
            module.to(device).eval().requires_grad_(False)
        return cls(first_stage=first_stage, denoiser=denoiser, diffusion=GaussianDiffusion.from_config(cfg.diffusion),
                   scale_factor=scale_factor, config=cfg, dataset=dataset, device=device)

    @property
    def conditioning(self) -> Conditioning:
        return self.config.diffusion.conditioning

    @torch.no_grad()
    def to_float(self, n: int, sampling: SamplingConfig | None = None, labels: Tensor | None = None,
                 prompts: list[str] | None = None, masked_images: Tensor | None = None, masks: Tensor | None = None,
                 generator: torch.Generator | None = None, batch_size: int = 64) -> Tensor:
        """`n` images as float (N, C, H, W) in [-1, 1], sampled in batches of `batch_size` (see the module doc)."""
        sampling = sampling or self.config.diffusion.sampling
        labels, prompts = self.complete_conditions(n, labels, prompts, masked_images, masks, generator)
        shape = self.first_stage.latent_shape(self.config.data.resolution)
        chunks = []
        for start in range(0, n, batch_size):
            part = slice(start, min(n, start + batch_size))
            size = part.stop - part.start
            cond = self.condition(
                labels=labels[part] if labels is not None else None,
                prompts=prompts[part] if prompts is not None else None,
                masked_images=masked_images[part].to(self.device) if masked_images is not None else None,
                masks=masks[part].to(self.device) if masks is not None else None)
            uncond = self.denoiser.conditioner.null(size) if self.denoiser.conditioner is not None else None
            with autocast(self.device):
                latents = sample(self.denoiser, self.diffusion, (size, *shape), sampling, cond, uncond, generator,
                                 self.device)
                chunks.append(self.first_stage.decode(latents / self.scale_factor).float().clamp(-1, 1))
        return torch.cat(chunks).cpu()

    def generate(self, n: int, sampling: SamplingConfig | None = None, labels: Tensor | None = None,
                 prompts: list[str] | None = None, masked_images: Tensor | None = None, masks: Tensor | None = None,
                 generator: torch.Generator | None = None, batch_size: int = 64) -> Tensor:
        """`n` images as uint8 (N, C, H, W); arguments as `to_float`."""
        images = self.to_float(n, sampling, labels, prompts, masked_images, masks, generator, batch_size)
        return ((images + 1) * 127.5).round().to(torch.uint8)

    def condition(self, *, labels: Tensor | None = None, prompts: list[str] | None = None,
                  masked_images: Tensor | None = None, masks: Tensor | None = None) -> Condition | None:
        """The denoiser's condition for a batch of inputs (None for an unconditional model)."""
        raw = conditioner_input(self.conditioning, self.first_stage, self.scale_factor, labels=labels,
                                prompts=prompts, masked_images=masked_images, masks=masks)
        return self.denoiser.conditioner(raw) if self.denoiser.conditioner is not None else None

    def condition_names(self, labels: Tensor | None, prompts: list[str] | None) -> list[str] | None:
        """Captions for a grid of generated images: the class names of the labels, else the prompts."""
        if labels is not None:
            return [self.dataset.class_names[int(label)] for label in labels]
        return prompts

    def complete_conditions(self, n: int, labels: Tensor | None, prompts: list[str] | None,
                             masked_images: Tensor | None, masks: Tensor | None,
                             generator: torch.Generator | None) -> tuple[Tensor | None, list[str] | None]:
        """Check the given conditions against the model; draw missing labels or prompts from the data frequencies."""
        kind, allowed = self.conditioning, CONDITION_ARGUMENTS[self.conditioning]
        given = {"labels": labels, "prompts": prompts, "masked_images": masked_images, "masks": masks}
        unexpected = sorted(name for name, value in given.items() if value is not None and name not in allowed)
        if unexpected:
            raise UserError(f"this model has diffusion.conditioning='{kind}': {', '.join(unexpected)} cannot be "
                            f"given; allowed: {', '.join(sorted(allowed)) or 'no condition'}")
        for name, value in given.items():
            if value is not None and len(value) != n:
                raise UserError(f"{len(value)} {name} for n={n} images; give exactly one per image")
        if kind == "concat" and (masked_images is None or masks is None):
            raise UserError("an inpainting model (diffusion.conditioning='concat') needs masked_images and masks")
        if kind == "class":
            count = len(self.dataset.class_names)
            if labels is None:
                weights = torch.tensor(self.dataset.label_counts, dtype=torch.float64)
                labels = torch.multinomial(weights, n, replacement=True, generator=generator)
            else:
                outside = labels[(labels < 0) | (labels >= count)]
                if outside.numel():
                    raise UserError(f"label {int(outside[0])} is out of range; allowed: 0..{count - 1}")
        if kind == "text" and prompts is None:
            weights = torch.tensor(self.dataset.caption_counts, dtype=torch.float64)
            prompts = [self.dataset.captions[i] for i in torch.multinomial(weights, n, replacement=True,
                                                                              generator=generator).tolist()]
        return labels, prompts
