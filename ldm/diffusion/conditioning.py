"""Conditioners: one per conditioning type, each turning a batch's labels, captions or masked latents into a condition.

A condition is a dict with `context` (B, L, D) tokens for cross-attention and/or `concat` (B, C', h, w) channels
joined to the UNet input. Each conditioner also gives its null condition (for classifier-free guidance) and
replaces a random fraction of a batch by it during training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ldm.config import DiffusionConfig, TextEncoderConfig
from ldm.diffusion.tokenizer import PAD_ID, WordTokenizer
from ldm.errors import ConfigError, DataError

Condition = dict[str, torch.Tensor]
POSITION_INIT_STD = 0.02
TEXT_FF_MULT = 4


@dataclass(frozen=True)
class DatasetInfo:
    """What a conditioner needs to know about the data, built by the caller from the dataset and first stage."""

    num_classes: int = 0
    captions: list[str] | None = None
    tokenizer: WordTokenizer | None = None  # a saved tokenizer (when loading a checkpoint) instead of `captions`
    latent_shape: tuple[int, int, int] | None = None  # (channels, h, w) of the first stage's latents, for `concat`


@dataclass(frozen=True)
class MaskedLatent:
    """Inpainting input: the first-stage latent of the masked image and the pixel mask (1 = region to inpaint)."""

    latent: torch.Tensor  # (B, c, h, w)
    mask: torch.Tensor  # (B, 1, H, W)


class Conditioner(nn.Module, ABC):
    """Base of all conditioners; `context_dim` is the width of its context tokens (None: no cross-attention)."""

    context_dim: int | None = None

    @abstractmethod
    def forward(self, batch_cond: Any) -> Condition:
        """The condition of a batch's raw inputs: labels, captions or a MaskedLatent, by type."""

    @abstractmethod
    def null(self, batch_size: int) -> Condition:
        """The unconditional input of classifier-free guidance, for a batch."""

    def extra_in_channels(self, latent_channels: int) -> int:
        """Channels this conditioner adds to the UNet input."""
        return 0

    def drop(self, cond: Condition, p_uncond: float, generator: torch.Generator | None) -> Condition:
        """Replace each item's condition by the null condition with probability p_uncond (condition dropout)."""
        batch_size = next(iter(cond.values())).shape[0]
        source = generator.device if generator is not None else torch.device("cpu")
        dropped = torch.rand(batch_size, generator=generator, device=source) < p_uncond
        null = self.null(1)  # broadcast by torch.where: the text encoder runs once, not per item
        return {key: torch.where(dropped.to(value.device).view(-1, *[1] * (value.ndim - 1)), null[key], value)
                for key, value in cond.items()}


class ClassEmbedder(Conditioner):
    """A learned (B, 1, D) token per class, as LDM's class models; index num_classes is the learned null token."""

    def __init__(self, num_classes: int, context_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.embedding = nn.Embedding(num_classes + 1, context_dim)

    def forward(self, batch_cond: torch.Tensor) -> Condition:
        labels = batch_cond.to(self.embedding.weight.device)
        return {"context": self.embedding(labels)[:, None, :]}

    def null(self, batch_size: int) -> Condition:
        labels = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=self.embedding.weight.device)
        return self(labels)


class TextEncoder(Conditioner):
    """A small transformer encoder trained from scratch on word tokens; the null condition is the empty caption."""

    def __init__(self, tokenizer: WordTokenizer, cfg: TextEncoderConfig, context_dim: int) -> None:
        super().__init__()
        if context_dim % cfg.heads:
            raise ConfigError(f"diffusion.text.heads={cfg.heads} must divide unet.context_dim={context_dim}")
        if tokenizer.max_tokens != cfg.max_tokens:
            raise ConfigError(f"the saved tokenizer has max_tokens={tokenizer.max_tokens} but "
                              f"diffusion.text.max_tokens={cfg.max_tokens}; they must agree")
        self.tokenizer = tokenizer
        self.context_dim = context_dim
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, context_dim)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_tokens, context_dim) * POSITION_INIT_STD)
        layer = nn.TransformerEncoderLayer(context_dim, cfg.heads, TEXT_FF_MULT * context_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(context_dim)

    def forward(self, batch_cond: list[str]) -> Condition:
        tokens = self.tokenizer.encode(batch_cond).to(self.token_embedding.weight.device)
        h = self.token_embedding(tokens) + self.position_embedding
        h = self.encoder(h, src_key_padding_mask=tokens == PAD_ID)
        return {"context": self.final_norm(h)}

    def null(self, batch_size: int) -> Condition:
        return self([""] * batch_size)


class ConcatConditioner(Conditioner):
    """Inpainting: the masked image's latent and the mask at latent size, joined to the UNet input; null = zeros."""

    def __init__(self, latent_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.latent_shape = latent_shape
        # Holds no weights: this empty buffer follows .to(device) so that inputs and null() land on the model's device.
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    def forward(self, batch_cond: MaskedLatent) -> Condition:
        latent = batch_cond.latent.to(self._device_anchor.device)
        if tuple(latent.shape[1:]) != self.latent_shape:
            raise ValueError(f"masked latent has shape {tuple(latent.shape[1:])}, expected {self.latent_shape}")
        # Area averaging keeps the fraction of each latent cell to inpaint, so small holes survive large f.
        mask = F.interpolate(batch_cond.mask.to(latent), size=latent.shape[-2:], mode="area")
        return {"concat": torch.cat([latent, mask], dim=1)}

    def null(self, batch_size: int) -> Condition:
        channels, h, w = self.latent_shape
        return {"concat": torch.zeros(batch_size, channels + 1, h, w, device=self._device_anchor.device)}

    def extra_in_channels(self, latent_channels: int) -> int:
        return latent_channels + 1


def conditioned_forward(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Condition | None) -> torch.Tensor:
    """The UNet applied to x under a condition: `concat` joined to the input channels, `context` cross-attended."""
    cond = cond or {}
    if "concat" in cond:
        x = torch.cat([x, cond["concat"].to(x)], dim=1)
    return unet(x, t, context=cond.get("context"))


def build_conditioner(cfg: DiffusionConfig, dataset_info: DatasetInfo) -> Conditioner | None:
    """The conditioner of cfg.conditioning (None for `none`), sized from the dataset."""
    match cfg.conditioning:
        case "none":
            return None
        case "class":
            if dataset_info.num_classes < 1:
                raise DataError(f"diffusion.conditioning='class' needs labelled data; the dataset has "
                                f"num_classes={dataset_info.num_classes}")
            return ClassEmbedder(dataset_info.num_classes, cfg.unet.context_dim)
        case "text":
            tokenizer = dataset_info.tokenizer
            if tokenizer is None:
                if not dataset_info.captions:
                    raise DataError("diffusion.conditioning='text' needs captions; the dataset provides none")
                tokenizer = WordTokenizer.build(dataset_info.captions, cfg.text.max_tokens)
            return TextEncoder(tokenizer, cfg.text, cfg.unet.context_dim)
        case "concat":
            if dataset_info.latent_shape is None:
                raise ValueError("diffusion.conditioning='concat' needs DatasetInfo.latent_shape (the first stage's)")
            return ConcatConditioner(dataset_info.latent_shape)
