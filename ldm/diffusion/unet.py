"""The denoiser: an ADM/LDM-style UNet with timestep embedding, scale-shift ResBlocks and attention.

Level l (1 = input resolution, 2 = after one downsampling, ...) has `num_res_blocks` ResBlocks of
`base_channels * channel_mult[l-1]` channels, followed by attention when l is in `attention_resolutions`:
a SpatialTransformer cross-attending to the context when the UNet has a context_dim, else self-attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ldm.config import UNetConfig
from ldm.diffusion.attention import SelfAttention2d, SpatialTransformer, group_norm, zero_init
from ldm.errors import ConfigError

MAX_PERIOD = 10_000.0
TIME_EMBED_MULT = 4


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of (possibly fractional) timesteps t (B,), as in ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep embedding applied as scale and shift of the second norm."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(in_channels), nn.SiLU(),
                                       nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class ResAttentionBlock(nn.Module):
    """A ResBlock, then attention when the level has it."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, cfg: UNetConfig, attention: bool,
                 context_dim: int | None) -> None:
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_dim, cfg.dropout)
        self.attention = attention_block(out_channels, cfg, context_dim) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h = self.res(x, emb)
        return h if self.attention is None else self.attention(h, context)


def attention_block(channels: int, cfg: UNetConfig, context_dim: int | None) -> SelfAttention2d | SpatialTransformer:
    """Cross-attention to the context when there is one, else spatial self-attention."""
    if context_dim is None:
        return SelfAttention2d(channels, cfg.num_heads)
    return SpatialTransformer(channels, cfg.num_heads, context_dim, cfg.transformer_depth, cfg.dropout)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling to the matching skip's size (odd sizes round up on the way down), then a conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class Level(nn.Module):
    """The blocks of one resolution and the resampling that leaves it (None at the bottom/top)."""

    def __init__(self, blocks: list[ResAttentionBlock], resample: Downsample | Upsample | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """Predicts eps, v or x0 for (B, in_channels, h, w) latents; cross-attends to a (B, L, context_dim) context."""

    def __init__(self, cfg: UNetConfig, in_channels: int, out_channels: int, context_dim: int | None = None) -> None:
        super().__init__()
        levels = len(cfg.channel_mult)
        beyond = [a for a in cfg.attention_resolutions if not 1 <= a <= levels]
        if beyond:
            raise ConfigError(f"unet.attention_resolutions={cfg.attention_resolutions} names levels {beyond} that "
                              f"unet.channel_mult={cfg.channel_mult} does not have; allowed: 1..{levels}")
        self.context_dim = context_dim
        base, emb_dim = cfg.base_channels, TIME_EMBED_MULT * cfg.base_channels
        self.base_channels = base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_conv = nn.Conv2d(in_channels, base, 3, padding=1)

        def block(cin: int, cout: int, level: int) -> ResAttentionBlock:
            return ResAttentionBlock(cin, cout, emb_dim, cfg, level + 1 in cfg.attention_resolutions, context_dim)

        channels, skip_channels = base, [base]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(channels, base * mult, level))
                channels = base * mult
                skip_channels.append(channels)
            downsample = Downsample(channels) if level < levels - 1 else None
            if downsample is not None:
                skip_channels.append(channels)
            self.down.append(Level(blocks, downsample))

        self.middle = ResAttentionBlock(channels, channels, emb_dim, cfg, True, context_dim)
        self.middle_out = ResBlock(channels, channels, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(block(channels + skip_channels.pop(), base * mult, level))
                channels = base * mult
            self.up.append(Level(blocks, Upsample(channels) if level > 0 else None))

        self.output = nn.Sequential(group_norm(channels), nn.SiLU(),
                                    zero_init(nn.Conv2d(channels, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if (context is None) != (self.context_dim is None):
            raise ValueError(f"this UNet has context_dim={self.context_dim}: context must be "
                             f"{'None' if self.context_dim is None else 'a (B, L, context_dim) tensor'}")
        emb = self.time_embed(timestep_embedding(t, self.base_channels))
        h = self.input_conv(x)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, emb, context)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.middle_out(self.middle(h, emb, context), emb)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
            if level.resample is not None:
                h = level.resample(h, skips[-1].shape[-2:])
        return self.output(h)
