"""Shapes, the identity first stage, the building blocks and the latent scale factor."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import get_args

import pytest
import torch

from ldm.config import AutoencoderConfig, Regularizer
from ldm.errors import UserError
from ldm.first_stage import build_first_stage
from ldm.first_stage.autoencoder import Autoencoder, IdentityFirstStage, level_channels
from ldm.first_stage.blocks import AttentionBlock, Downsample, group_norm
from ldm.first_stage.regularizers import REGULARIZERS, DiagonalGaussian, QuantizedPosterior



@pytest.mark.parametrize("regularizer", ["kl", "vq"])
@pytest.mark.parametrize("f", [2, 4, 8, 16])
@pytest.mark.parametrize("c", [1, 3, 4])
def test_encoder_decoder_shapes(regularizer: str, f: int, c: int, tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    model = build_first_stage(tiny(f=f, latent_channels=c, regularizer=regularizer, codebook_size=16), 3)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = model(x)
    expected = (c, 64 // f, 64 // f)
    assert model.latent_channels == c
    assert model.latent_shape(64) == expected
    assert model.encoder(x).shape == (2, 2 * c if regularizer == "kl" else c, *expected[1:])
    assert out.posterior.sample().shape == out.posterior.mode().shape == (2, *expected)
    assert out.reconstruction.shape == x.shape
    assert model.decode(torch.randn(2, *expected)).shape == x.shape
    assert out.posterior.kl().shape == (2,)
    assert isinstance(out.posterior, DiagonalGaussian if regularizer == "kl" else QuantizedPosterior)
    assert sum(isinstance(m, Downsample) for m in model.modules()) == int(math.log2(f))
    assert all(isinstance(v, float) for v in out.stats.values())
    assert model.decoder_last_layer.shape == (3, 8, 3, 3)


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_identity_first_stage_is_pixel_space(regularizer: str) -> None:
    model = build_first_stage(AutoencoderConfig(f=1, latent_channels=4, regularizer=regularizer), 3)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = model(x)
    assert isinstance(model, IdentityFirstStage)
    assert list(model.parameters()) == []
    assert model.latent_channels == 3 and model.latent_shape(64) == (3, 64, 64)
    assert torch.equal(model.encode(x).sample(), x) and torch.equal(model.decode(x), x)
    assert torch.equal(out.reconstruction, x)
    assert out.reg_loss.item() == 0.0 and torch.equal(out.posterior.kl(), torch.zeros(2))
    with pytest.raises(UserError, match="autoencoder.f=1"):
        _ = model.decoder_last_layer


def test_latent_shape_rejects_indivisible_resolution(tiny: Callable[..., AutoencoderConfig]) -> None:
    with pytest.raises(UserError, match="resolution 20 is not divisible by autoencoder.f=8"):
        build_first_stage(tiny(f=8), 1).latent_shape(20)


def test_level_channels_repeat_last_multiplier_and_ignore_extras(tiny: Callable[..., AutoencoderConfig]) -> None:
    assert level_channels(tiny(f=16, channel_mult=[1, 2])) == [8, 16, 16, 16, 16]
    assert level_channels(tiny(f=4, channel_mult=[1, 2, 3, 4, 5])) == [8, 16, 24]


def test_deterministic_forward_decodes_the_mode(tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    model = build_first_stage(tiny(f=4, kl_weight=0.5), 1)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = model(x, sample_posterior=False)
    posterior = model.encode(x)
    assert torch.allclose(out.reconstruction, model.decode(posterior.mode()))
    assert out.reg_loss.item() == pytest.approx(0.5 * posterior.kl().mean().item(), rel=1e-6)
    assert out.stats["kl"] == pytest.approx(posterior.kl().mean().item(), rel=1e-6)


def test_gradients_reach_the_encoder_through_both_regularizers(tiny: Callable[..., AutoencoderConfig]) -> None:
    for regularizer in ("kl", "vq"):
        torch.manual_seed(0)
        model = build_first_stage(tiny(f=2, regularizer=regularizer, codebook_size=8), 1)
        assert isinstance(model, Autoencoder)
        out = model(torch.rand(2, 1, 8, 8))
        (out.reconstruction.square().mean() + out.reg_loss).backward()
        first_conv = model.encoder.layers[0].weight
        assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_group_norm_uses_at_most_32_dividing_groups() -> None:
    assert group_norm(64).num_groups == 32
    assert group_norm(24).num_groups == 24
    assert group_norm(48).num_groups == 24
    assert group_norm(7).num_groups == 7


def test_attention_block_matches_softmax_attention() -> None:
    torch.manual_seed(0)
    block = AttentionBlock(8)
    x = torch.randn(2, 8, 3, 5)
    q, k, v = (t.flatten(2).transpose(1, 2) for t in block.qkv(block.norm(x)).chunk(3, dim=1))
    attended = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1) @ v
    expected = x + block.proj_out(attended.transpose(1, 2).reshape(2, 8, 3, 5))
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_bottleneck_attention_is_built_when_asked(tiny: Callable[..., AutoencoderConfig]) -> None:
    with_attention = build_first_stage(tiny(f=2, bottleneck_attention=True), 1)
    without = build_first_stage(tiny(f=2), 1)
    assert sum(isinstance(m, AttentionBlock) for m in with_attention.modules()) == 2
    assert not any(isinstance(m, AttentionBlock) for m in without.modules())


def test_scale_factor_makes_kl_latents_unit_std(tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    model = build_first_stage(tiny(f=4, latent_channels=4, channel_mult=[1, 2]), 3)
    images = torch.rand(32, 3, 16, 16) * 2 - 1
    scale = model.scale_factor(images, batch_size=8)
    assert model.training  # the mode is restored
    with torch.no_grad():
        fresh = model.eval().encode(images).sample(torch.Generator().manual_seed(123))
    assert (scale * fresh).std().item() == pytest.approx(1.0, abs=0.03)
    assert scale != pytest.approx(1.0, abs=0.05)  # an untrained encoder is not already unit-std


def test_scale_factor_is_one_for_vq_and_identity_and_overridable(tiny: Callable[..., AutoencoderConfig]) -> None:
    images = torch.rand(4, 1, 16, 16)
    assert build_first_stage(tiny(f=2, regularizer="vq"), 1).scale_factor(images) == 1.0
    assert build_first_stage(tiny(f=1), 1).scale_factor(images) == 1.0
    assert build_first_stage(tiny(f=2, scale_factor=0.18215), 1).scale_factor(images) == 0.18215


def test_every_regularizer_value_has_one_registered_class() -> None:
    assert set(REGULARIZERS) == set(get_args(Regularizer))
    for kind, cls in REGULARIZERS.items():
        assert cls.kind == kind


@pytest.mark.parametrize(("f", "regularizer", "trainable", "rescales", "channels"), [
    (1, "kl", False, False, 3), (1, "vq", False, False, 3), (2, "kl", True, True, 2), (2, "vq", True, False, 2)])
def test_each_first_stage_answers_for_itself(f: int, regularizer: str, trainable: bool, rescales: bool, channels: int,
                                             tiny: Callable[..., AutoencoderConfig]) -> None:
    model = build_first_stage(tiny(f=f, regularizer=regularizer, codebook_size=16), 3)
    assert (model.trainable, model.rescales_latents, model.latent_channels) == (trainable, rescales, channels)
    assert model.latent_shape(16) == (channels, 16 // f, 16 // f)
    if f > 1:
        assert (len(list(model.parameters())) > 0, model.encoder.layers[-1][-1].out_channels) == (
            True, channels * (2 if regularizer == "kl" else 1))
