"""A trained latent diffusion model as one object: condition inputs in, images out.

What a model takes is its conditioner's to say (`ldm/diffusion/conditioning/`): nothing for `none`, `labels`
for `class` and `prompts` for `text` (missing ones drawn from the training split's frequencies with the
generator), `masked_images` with `masks` for `concat` (inpainting; both required).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ldm.config import ExperimentConfig, SamplingConfig
from ldm.diffusion.conditioning import (
    Condition,
    ConditionInputs,
    Conditioner,
    DatasetInfo,
    DatasetSummary,
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


class Denoiser(nn.Module):
    """What the diffusion stage trains: the UNet and its conditioner."""

    def __init__(self, unet: UNet, conditioner: Conditioner) -> None:
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
    unet = UNet(cfg.diffusion.unet, channels + conditioner.extra_in_channels(channels), channels,
                conditioner.context_dim)
    return Denoiser(unet, conditioner)


def encode_latents(first_stage: FirstStage, images: Tensor, scale_factor: float,
                   posterior_noise: Tensor | None = None) -> Tensor:
    """Scaled first-stage latents of images in [-1, 1]: posterior samples with the standard normal draw
    `posterior_noise`, or the posterior mode without one. The first stage is frozen."""
    with torch.no_grad():
        posterior = first_stage.encode(images)
        latent = posterior.mode() if posterior_noise is None else posterior.sample(noise=posterior_noise)
        return latent * scale_factor


class LatentDiffusionPipeline:
    """First stage, denoiser, diffusion process and scale factor of one trained model, ready to sample."""

    def __init__(self, *, first_stage: FirstStage, denoiser: Denoiser, diffusion: GaussianDiffusion,
                 scale_factor: float, config: ExperimentConfig, dataset: DatasetSummary,
                 device: torch.device, training_timing: dict[str, float] | None = None) -> None:
        self.first_stage, self.denoiser, self.diffusion = first_stage, denoiser, diffusion
        self.scale_factor, self.config, self.dataset, self.device = scale_factor, config, dataset, device
        self.training_timing = training_timing
        """Seconds and images of the diffusion training behind a loaded checkpoint (all resumed parts)."""

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
        saved_tokenizer = extras.get("tokenizer")
        info = DatasetInfo(num_classes=len(dataset.class_names),
                           tokenizer=WordTokenizer.from_dict(saved_tokenizer) if saved_tokenizer else None,
                           latent_shape=first_stage.latent_shape(cfg.data.resolution))
        denoiser = build_denoiser(cfg, info)
        denoiser.load_state_dict(model_weights(ckpt, use_ema))
        for module in (first_stage, denoiser):
            module.to(device).eval().requires_grad_(False)
        return cls(first_stage=first_stage, denoiser=denoiser, diffusion=GaussianDiffusion.from_config(cfg.diffusion),
                   scale_factor=scale_factor, config=cfg, dataset=dataset, device=device,
                   training_timing=extras.get("timing"))

    @property
    def conditioner(self) -> Conditioner:
        return self.denoiser.conditioner

    @torch.no_grad()
    def to_float(self, n: int, *, conditions: ConditionInputs = ConditionInputs(),
                 sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                 batch_size: int = 64) -> Tensor:
        """`n` images as float (N, C, H, W) in [-1, 1], sampled in batches of `batch_size` (see the module doc)."""
        sampling = sampling or self.config.diffusion.sampling
        conditions = self.complete_conditions(n, conditions, generator)
        return torch.cat([self.sample_batch(min(batch_size, n - start), conditions[start:start + batch_size], sampling,
                                            generator) for start in range(0, n, batch_size)])

    @torch.no_grad()
    def sample_batch(self, size: int, conditions: ConditionInputs, sampling: SamplingConfig,
                     generator: torch.Generator | None, x_T: Tensor | None = None) -> Tensor:
        """`size` images as float (B, C, H, W) in [-1, 1] on the CPU, for `size` complete (checked) conditions.

        `x_T`: the initial latent noise (default: N(0, I) from `generator`)."""
        shape = self.first_stage.latent_shape(self.config.data.resolution)
        cond = self.condition(conditions.to(self.device))
        uncond = self.conditioner.null(size)
        with autocast(self.device):
            latents = sample(self.denoiser, self.diffusion, (size, *shape), sampling, cond, uncond, generator,
                             self.device, x_T=x_T)
            return self.first_stage.decode(latents / self.scale_factor).float().clamp(-1, 1).cpu()

    def generate(self, n: int, *, conditions: ConditionInputs = ConditionInputs(),
                 sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                 batch_size: int = 64) -> Tensor:
        """`n` images as uint8 (N, C, H, W); arguments as `to_float`."""
        images = self.to_float(n, conditions=conditions, sampling=sampling, generator=generator,
                               batch_size=batch_size)
        return ((images + 1) * 127.5).round().to(torch.uint8)

    def condition(self, inputs: ConditionInputs) -> Condition | None:
        """The denoiser's condition for a batch of inputs (None for an unconditional model)."""
        return self.conditioner.condition(
            inputs, lambda images: encode_latents(self.first_stage, images, self.scale_factor))

    def grid_captions(self, inputs: ConditionInputs) -> list[str] | None:
        """Captions for a grid of images generated for `inputs`: class names or prompts."""
        return self.conditioner.grid_captions(inputs, self.dataset)

    def complete_conditions(self, n: int, inputs: ConditionInputs,
                            generator: torch.Generator | None) -> ConditionInputs:
        """Check the given conditions against the model; draw missing labels or prompts from the data frequencies."""
        return self.conditioner.complete_inputs(n, inputs, self.dataset, generator)
