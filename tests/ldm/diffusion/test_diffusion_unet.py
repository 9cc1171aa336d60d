"""UNet: shapes for every conditioning type and first-stage factor, initialisation, conditioning, channels_last."""

import math

import pytest
import torch

from ldm.config import Conditioning, DiffusionConfig, UNetConfig
from ldm.diffusion.conditioning import ConditionInputs, DatasetInfo, build_conditioner, conditioned_forward
from ldm.diffusion.unet import UNet, timestep_embedding
from ldm.errors import ConfigError

IMAGE_SIZE, LATENT_CHANNELS, BATCH = 32, 3, 2
TINY = UNetConfig(base_channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[1, 2, 3],
                  num_heads=2, context_dim=16)
CAPTIONS = ["a red circle", "a blue square on the left", "two green triangles"]


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Replace every parameter (zero-initialised ones included) by small random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))


def batch_inputs(conditioning: Conditioning) -> ConditionInputs:
    match conditioning:
        case "class":
            return ConditionInputs(labels=torch.tensor([0, 9]))
        case "text":
            return ConditionInputs(prompts=CAPTIONS[:BATCH])
        case "concat":
            mask = (torch.rand(BATCH, 1, IMAGE_SIZE, IMAGE_SIZE) > 0.5).float()
            return ConditionInputs(masked_images=torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1, masks=mask)
    return ConditionInputs()


@pytest.mark.parametrize("conditioning", ["none", "class", "text", "concat"])
@pytest.mark.parametrize("f", [1, 2, 4, 8])
def test_output_shape_for_every_conditioning_and_factor(conditioning: Conditioning, f: int) -> None:
    torch.manual_seed(0)
    side = IMAGE_SIZE // f
    cfg = DiffusionConfig(conditioning=conditioning, unet=TINY)
    info = DatasetInfo(num_classes=10, captions=CAPTIONS, latent_shape=(LATENT_CHANNELS, side, side))
    conditioner = build_conditioner(cfg, info)
    extra = conditioner.extra_in_channels(LATENT_CHANNELS)
    unet = UNet(cfg.unet, LATENT_CHANNELS + extra, LATENT_CHANNELS, conditioner.context_dim)
    randomise(unet)
    x = torch.randn(BATCH, LATENT_CHANNELS, side, side)
    cond = conditioner.condition(batch_inputs(conditioning), lambda images: torch.randn_like(x))
    out = conditioned_forward(unet, x, torch.tensor([0, 999]), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("side", [4, 5, 7, 12, 64])
def test_latent_sides_from_4_to_64_including_odd_ones(side: int) -> None:
    torch.manual_seed(1)
    unet = UNet(TINY, 4, 4, None)
    randomise(unet)
    assert unet(torch.randn(1, 4, side, side), torch.tensor([10])).shape == (1, 4, side, side)


def test_fresh_unet_outputs_zero_and_depends_on_x_t_and_context_once_trained() -> None:
    torch.manual_seed(2)
    unet = UNet(TINY, 4, 4, context_dim=16)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([5, 5]), torch.randn(2, 3, 16)
    assert torch.equal(unet(x, t, context), torch.zeros_like(x))  # zero-initialised output convolution
    randomise(unet)
    base = unet(x, t, context)
    assert not torch.allclose(base, unet(x, torch.tensor([600, 600]), context), atol=1e-4)
    assert not torch.allclose(base, unet(x, t, torch.randn(2, 3, 16)), atol=1e-4)
    assert not torch.allclose(base, unet(x + 0.1, t, context), atol=1e-4)
    # Items of a batch are independent (GroupNorm, not BatchNorm).
    torch.testing.assert_close(unet(x[:1], t[:1], context[:1]), base[:1], atol=1e-5, rtol=1e-5)


def test_channels_last_gives_the_same_output() -> None:
    torch.manual_seed(3)
    unet = UNet(TINY, 4, 4, context_dim=16)
    randomise(unet)
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([1, 700]), torch.randn(2, 3, 16)
    expected = unet(x, t, context)
    unet = unet.to(memory_format=torch.channels_last)
    out = unet(x.to(memory_format=torch.channels_last), t, context)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_timestep_embedding_is_cos_and_sin_of_geometric_frequencies() -> None:
    emb = timestep_embedding(torch.tensor([0, 3]), 6)
    freqs = [math.exp(-math.log(10_000) * i / 3) for i in range(3)]
    expected = [[math.cos(3 * f) for f in freqs] + [math.sin(3 * f) for f in freqs]]
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    torch.testing.assert_close(emb[1:], torch.tensor(expected), atol=1e-6, rtol=0)
    assert timestep_embedding(torch.tensor([1]), 7).shape == (1, 7)


def test_attention_only_at_the_configured_levels() -> None:
    unet = UNet(UNetConfig(base_channels=8, channel_mult=[1, 2], attention_resolutions=[2], num_heads=2), 4, 4)
    assert [block.attention is not None for block in unet.down[0].blocks] == [False]
    assert [block.attention is not None for block in unet.down[1].blocks] == [True]
    assert unet.middle.attention is not None


def test_unet_errors_name_the_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"unet.attention_resolutions=\[4\] names levels \[4\] .* allowed: 1..3"):
        UNet(TINY.model_copy(update={"attention_resolutions": [4]}), 4, 4)
    with pytest.raises(ConfigError, match="unet.num_heads=3 must divide the attention width 8"):
        UNet(TINY.model_copy(update={"num_heads": 3}), 4, 4)
    unet = UNet(TINY, 4, 4, context_dim=16)
    with pytest.raises(ValueError, match="context_dim=16: context must be a"):
        unet(torch.randn(1, 4, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="context_dim=None: context must be None"):
        UNet(TINY, 4, 4)(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.randn(1, 2, 16))
