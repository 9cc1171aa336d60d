"""First stages: the convolutional KL/VQ autoencoder and the identity (f = 1, pixel-space diffusion).

Each first stage answers for itself: its latent channels, whether it is trained, its scale factor and its
rate; `build_first_stage` is the one place that picks one from the config.
"""

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
    LatentPosterior,
    PointPosterior,
    RegularizedLatent,
    REGULARIZERS,
    Regularizer,
)

# Raw pixels: the rate of the identity first stage.
RAW_BITS_PER_CHANNEL = 8


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
    """Maps images in [-1, 1] to latents of shape (c, H/f, W/f) and back.

    `trainable`: whether stage 1 has anything to learn.
    """

    trainable: bool = True

    def __init__(self, config: AutoencoderConfig, image_channels: int) -> None:
        super().__init__()
        self.config = config
        self.image_channels = image_channels

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels c of the latent."""

    @property
    @abstractmethod
    def rescales_latents(self) -> bool:
        """Whether diffusion sees the latents scaled by the scale factor (1/std) rather than as they are."""

    @abstractmethod
    def bits_per_pixel(self, resolution: int, mean_kl_nats: float) -> float:
        """The rate of a `resolution`^2 image's latent (`mean_kl_nats`: the mean KL, for KL first stages)."""

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

    def forward(self, x: Tensor, sample_posterior: bool = True, noise: Tensor | None = None) -> AutoencoderOutput:
        """Reconstruct through a posterior sample (its standard normal draw `noise` when given) or its mode."""
        regularized = self.encode_regularized(x)
        posterior = regularized.posterior
        z = posterior.sample(noise=noise) if sample_posterior else posterior.mode()
        return AutoencoderOutput(self.decode(z), posterior, regularized.loss, regularized.stats)

    def on_device(self, x: Tensor) -> Tensor:
        """`x` moved to this first stage's device; the parameter-free identity leaves it where it is."""
        parameter = next(self.parameters(), None)
        return x if parameter is None else x.to(parameter.device)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        f = self.config.f
        if resolution % f:
            raise UserError(f"resolution {resolution} is not divisible by autoencoder.f={f}; allowed: multiples of {f}")
        return self.latent_channels, resolution // f, resolution // f

    def latent_ratio(self, resolution: int) -> float:
        """(H/f * W/f * c) / (H * W * C): the fraction of the image's values the latent keeps."""
        channels, side, _ = self.latent_shape(resolution)
        return side * side * channels / (resolution * resolution * self.image_channels)

    def scale_factor(self, images: Tensor, batch_size: int = 64) -> float:
        """`autoencoder.scale_factor` when set, else 1 / std of posterior samples over `images` (LDM App. D.1)
        for a first stage that rescales its latents, else 1."""
        if self.config.scale_factor is not None:
            return self.config.scale_factor
        if not self.rescales_latents:
            return 1.0
        with evaluating(self):
            latents = [self.encode(self.on_device(chunk)).sample() for chunk in images.split(batch_size)]
        return 1.0 / torch.cat(latents).double().std().item()


class IdentityFirstStage(FirstStage):
    """f = 1: no parameters, the latent is the image, so the same pipeline runs pixel-space diffusion.

    It ignores every autoencoder field but `f` and `scale_factor`; its rate is that of the raw 8-bit pixels.
    """

    trainable = False
    rescales_latents = False

    @property
    def latent_channels(self) -> int:
        return self.image_channels

    def bits_per_pixel(self, resolution: int, mean_kl_nats: float) -> float:
        return float(RAW_BITS_PER_CHANNEL * self.image_channels)

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
        regularizer = REGULARIZERS[config.regularizer]
        self.encoder = Encoder(config, image_channels, regularizer.moments_per_channel * c)
        self.regularizer: Regularizer = regularizer.build(config)
        self.decoder = Decoder(config, c, image_channels)

    @property
    def rescales_latents(self) -> bool:
        return self.regularizer.rescales_latents

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def bits_per_pixel(self, resolution: int, mean_kl_nats: float) -> float:
        return self.regularizer.bits_per_pixel(resolution, resolution // self.config.f, mean_kl_nats)

    def encode_regularized(self, x: Tensor) -> RegularizedLatent:
        return self.regularizer(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    @property
    def decoder_last_layer(self) -> nn.Parameter:
        return self.decoder.last_layer


def build_first_stage(cfg: AutoencoderConfig, image_channels: int) -> FirstStage:
    """The identity for f = 1 (pixel space), else the autoencoder with its regulariser."""
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
