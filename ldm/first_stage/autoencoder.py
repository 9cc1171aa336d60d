"""First stages: the convolutional KL/VQ autoencoder and the identity (f = 1, pixel-space diffusion)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ldm.config import AutoencoderConfig
from ldm.errors import UserError
from ldm.first_stage.blocks import AttentionBlock, Downsample, ResnetBlock, Upsample, group_norm
from ldm.first_stage.regularizers import (
    GaussianRegularizer,
    LatentPosterior,
    PointPosterior,
    RegularizedLatent,
    VectorQuantizer,
)


@dataclass
class AutoencoderOutput:
    reconstruction: Tensor
    posterior: LatentPosterior
    reg_loss: Tensor
    stats: dict[str, float]


def level_channels(cfg: AutoencoderConfig) -> list[int]:
    """Width of each of the log2(f) + 1 levels; the last multiplier repeats, extra ones are ignored."""
    mult = cfg.channel_mult
    return [cfg.base_channels * mult[min(level, len(mult) - 1)] for level in range(cfg.levels + 1)]


def latent_channel_count(cfg: AutoencoderConfig, image_channels: int) -> int:
    """Channels of the latent: the image's own for the identity first stage, else `latent_channels`."""
    return image_channels if cfg.f == 1 else cfg.latent_channels


def _bottleneck(channels: int, attention: bool) -> nn.Sequential:
    middle = [AttentionBlock(channels)] if attention else []
    return nn.Sequential(ResnetBlock(channels, channels), *middle, ResnetBlock(channels, channels))


def _output_head(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))


class Encoder(nn.Module):
    """Image -> latent moments: per level `num_res_blocks` ResNet blocks then a downsampling."""

    def __init__(self, cfg: AutoencoderConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        widths = level_channels(cfg)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        width = widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(width, level_width))
                width = level_width
            if level < cfg.levels:
                layers.append(Downsample(width))
        layers += [_bottleneck(width, cfg.bottleneck_attention), _output_head(width, out_channels)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """Latent -> image, mirroring the encoder with `num_res_blocks + 1` blocks per level (as CompVis)."""

    def __init__(self, cfg: AutoencoderConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        widths = level_channels(cfg)
        width = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1),
                                   _bottleneck(width, cfg.bottleneck_attention)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResnetBlock(width, widths[level]))
                width = widths[level]
            if level > 0:
                layers.append(Upsample(width))
        self.layers = nn.Sequential(*layers)
        self.head = _output_head(width, out_channels)

    @property
    def last_layer(self) -> nn.Parameter:
        return self.head[-1].weight

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.layers(z))


class FirstStage(nn.Module, ABC):
    """Maps images in [-1, 1] to latents of shape (c, H/f, W/f) and back."""

    def __init__(self, config: AutoencoderConfig, image_channels: int) -> None:
        super().__init__()
        self.config = config
        self.image_channels = image_channels

    @abstractmethod
    def encode_regularized(self, x: Tensor) -> RegularizedLatent:
        """The posterior together with its regularisation loss and stats."""

    @abstractmethod
    def decode(self, z: Tensor) -> Tensor: ...

    @property
    @abstractmethod
    def decoder_last_layer(self) -> nn.Parameter:
        """Weight of the decoder's last convolution (for the adaptive discriminator weight)."""

    def encode(self, x: Tensor) -> LatentPosterior:
        return self.encode_regularized(x).posterior

    def forward(self, x: Tensor, sample_posterior: bool = True) -> AutoencoderOutput:
        regularized = self.encode_regularized(x)
        posterior = regularized.posterior
        z = posterior.sample() if sample_posterior else posterior.mode()
        return AutoencoderOutput(self.decode(z), posterior, regularized.loss, regularized.stats)

    def on_device(self, x: Tensor) -> Tensor:
        """`x` moved to this first stage's device; the parameter-free identity leaves it where it is."""
        parameter = next(self.parameters(), None)
        return x if parameter is None else x.to(parameter.device)

    def latent_channels(self) -> int:
        return latent_channel_count(self.config, self.image_channels)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        f = self.config.f
        if resolution % f:
            raise UserError(f"resolution {resolution} is not divisible by autoencoder.f={f}; allowed: multiples of {f}")
        return self.latent_channels(), resolution // f, resolution // f


class IdentityFirstStage(FirstStage):
    """f = 1: no parameters, the latent is the image, so the same pipeline runs pixel-space diffusion."""

    def encode_regularized(self, x: Tensor) -> RegularizedLatent:
        return RegularizedLatent(PointPosterior(x), x.new_zeros(()), {})

    def decode(self, z: Tensor) -> Tensor:
        return z

    @property
    def decoder_last_layer(self) -> nn.Parameter:
        raise UserError("the identity first stage (autoencoder.f=1) has no decoder to train; allowed: f >= 2")


class Autoencoder(FirstStage):
    """Convolutional encoder, KL or VQ regulariser, convolutional decoder."""

    def __init__(self, config: AutoencoderConfig, image_channels: int) -> None:
        super().__init__(config, image_channels)
        c = config.latent_channels
        self.regularizer: GaussianRegularizer | VectorQuantizer
        if config.regularizer == "kl":
            self.encoder = Encoder(config, image_channels, 2 * c)
            self.regularizer = GaussianRegularizer(config.kl_weight)
        else:
            self.encoder = Encoder(config, image_channels, c)
            self.regularizer = VectorQuantizer(config.codebook_size, c, config.commitment_weight,
                                               config.codebook_ema_decay)
        self.decoder = Decoder(config, c, image_channels)

    def encode_regularized(self, x: Tensor) -> RegularizedLatent:
        return self.regularizer(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    @property
    def decoder_last_layer(self) -> nn.Parameter:
        return self.decoder.last_layer


def build_first_stage(cfg: AutoencoderConfig, image_channels: int) -> FirstStage:
    if cfg.f == 1:
        return IdentityFirstStage(cfg, image_channels)
    return Autoencoder(cfg, image_channels)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode (no codebook updates) and no autograd inside the block; the previous mode after it."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def estimate_scale_factor(first_stage: FirstStage, images: Tensor, batch_size: int = 64) -> float:
    """1 / std of KL posterior samples over `images` (LDM App. D.1); 1 for VQ and identity.

    `autoencoder.scale_factor` overrides the estimate when set.
    """
    cfg = first_stage.config
    if cfg.scale_factor is not None:
        return cfg.scale_factor
    if cfg.f == 1 or cfg.regularizer == "vq":
        return 1.0
    with evaluating(first_stage):
        latents = [first_stage.encode(first_stage.on_device(chunk)).sample() for chunk in images.split(batch_size)]
    return 1.0 / torch.cat(latents).double().std().item()
