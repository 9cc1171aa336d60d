"""Attention blocks of the denoiser (ADM self-attention, LDM spatial transformer), on scaled_dot_product_attention.

Residual branches end in zero-initialised projections, so every block starts as the identity.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ldm.errors import ConfigError

MAX_GROUPS, MIN_CHANNELS_PER_GROUP = 32, 4
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups (up to 32, as ADM) that divide the channels and keep 4 or more per group.

    Narrow test-size models would otherwise get one channel per group, which at a 1x1 resolution
    normalises every value to zero.
    """
    groups = max(g for g in range(1, MAX_GROUPS + 1)
                 if channels % g == 0 and (channels // g >= MIN_CHANNELS_PER_GROUP or g == 1))
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_init(module: ModuleT) -> ModuleT:
    """Set every parameter of module to zero (the last layer of a residual branch)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def tokens_to_image(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H*W, C) tokens back to like's (B, C, H, W) layout."""
    return tokens.transpose(1, 2).reshape(like.shape)


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) to contiguous (B, H*W, C) tokens, whatever the memory format.

    One copy here (none for channels_last input) instead of one in every LayerNorm and Linear that would
    otherwise read channel-major tokens, forward and backward: 3-7% off an attention block's step on the CPU.
    """
    return x.flatten(2).transpose(1, 2).contiguous()


class CrossAttention(nn.Module):
    """Multi-head attention of query tokens to context tokens; self-attention when context_dim is None."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if query_dim % heads:
            raise ConfigError(f"unet.num_heads={heads} must divide the attention width {query_dim}")
        self.heads = heads
        key_dim = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(key_dim, query_dim, bias=False)
        self.to_v = nn.Linear(key_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Dropout(dropout))

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k, v = self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class SelfAttention2d(nn.Module):
    """ADM's spatial self-attention block: x + attention(norm(x)) over the H*W positions."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attention = CrossAttention(channels, None, heads)
        zero_init(self.attention.to_out)

    def forward(self, x: torch.Tensor, context: None = None) -> torch.Tensor:
        """context is always None; it is accepted so that both attention blocks share one call."""
        return x + tokens_to_image(self.attention(image_to_tokens(self.norm(x))), x)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020): h * gelu(gate)."""

    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, and GEGLU feed-forward, each residual."""

    FF_MULT = 4

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.self_attention = nn.LayerNorm(dim), CrossAttention(dim, None, heads, dropout)
        self.norm2, self.cross_attention = nn.LayerNorm(dim), CrossAttention(dim, context_dim, heads, dropout)
        self.norm3 = nn.LayerNorm(dim)
        inner = self.FF_MULT * dim
        self.feed_forward = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.norm1(x))
        x = x + self.cross_attention(self.norm2(x), context)
        return x + self.feed_forward(self.norm3(x))


class SpatialTransformer(nn.Module):
    """LDM's transformer on feature maps: norm, proj_in, transformer blocks over H*W tokens, zero-init proj_out."""

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim, dropout) for _ in range(depth))
        self.proj_out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        tokens = image_to_tokens(self.proj_in(self.norm(x)))
        for block in self.blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens_to_image(tokens, x))
