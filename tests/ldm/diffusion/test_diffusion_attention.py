"""Attention blocks against a hand-written multi-head attention, and their identity initialisation."""

import pytest
import torch

from ldm.diffusion.attention import CrossAttention, SelfAttention2d, SpatialTransformer, group_norm


def reference_attention(module: CrossAttention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, written out."""
    heads = module.heads
    q, k, v = module.to_q(x), module.to_k(context), module.to_v(context)
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        qh, kh, vh = (m[..., h * d:(h + 1) * d] for m in (q, k, v))
        weights = torch.softmax(qh @ kh.transpose(1, 2) / d**0.5, dim=-1)
        outs.append(weights @ vh)
    return module.to_out(torch.cat(outs, dim=-1))


def test_cross_attention_matches_the_written_out_formula() -> None:
    torch.manual_seed(0)
    attention = CrossAttention(query_dim=12, context_dim=5, heads=3)
    x, context = torch.randn(2, 7, 12), torch.randn(2, 4, 5)
    torch.testing.assert_close(attention(x, context), reference_attention(attention, x, context), atol=1e-6, rtol=1e-5)


def test_self_attention_attends_to_its_own_tokens() -> None:
    torch.manual_seed(1)
    attention = CrossAttention(query_dim=8, context_dim=None, heads=2)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(attention(x), reference_attention(attention, x, x), atol=1e-6, rtol=1e-5)
    # Self-attention without positions is permutation-equivariant over tokens.
    order = torch.randperm(5)
    torch.testing.assert_close(attention(x[:, order]), attention(x)[:, order], atol=1e-6, rtol=1e-5)


def test_blocks_start_as_the_identity_and_then_use_the_context() -> None:
    torch.manual_seed(2)
    x, context = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 6)
    self_attention = SelfAttention2d(8, heads=2)
    transformer = SpatialTransformer(8, heads=2, context_dim=6, depth=2)
    assert torch.equal(self_attention(x), x)
    assert torch.equal(transformer(x, context), x)
    torch.nn.init.normal_(transformer.proj_out.weight)
    assert not torch.allclose(transformer(x, context), transformer(x, torch.randn(2, 3, 6)))


@pytest.mark.parametrize(("channels", "groups"), [(8, 2), (16, 4), (24, 6), (64, 16), (128, 32), (384, 32), (9, 1)])
def test_group_norm_keeps_at_least_four_channels_per_group(channels: int, groups: int) -> None:
    assert group_norm(channels).num_groups == groups
