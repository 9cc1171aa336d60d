"""Reconstruction + regulariser loss, the adaptive discriminator weight and the PatchGAN."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm.config import AutoencoderConfig
from ldm.first_stage import AutoencoderLoss, build_first_stage
from ldm.first_stage.discriminator import NLayerDiscriminator, hinge_discriminator_loss
from ldm.first_stage.losses import MAX_ADAPTIVE_WEIGHT, adaptive_disc_weight



def _toy_decoder_losses(target_offset: float, critic_gain: float) -> tuple[torch.Tensor, ...]:
    """Decoder whose last layer is a 1x1 conv (w1, w2) on latents z, and a linear critic D(r) = a * r."""
    torch.manual_seed(0)
    last = nn.Conv2d(2, 1, 1, bias=False)
    z, x = torch.randn(4, 2, 3, 3), torch.randn(4, 1, 3, 3) + target_offset
    reconstruction = last(z)
    rec = F.mse_loss(reconstruction, x)
    g = -(critic_gain * reconstruction).mean()
    # d rec / d w_i = mean(2 (r - x) z_i);  d g / d w_i = -a mean(z_i).
    rec_grad = torch.stack([(2 * (reconstruction - x) * z[:, i : i + 1]).mean() for i in range(2)]).detach()
    g_grad = torch.stack([-critic_gain * z[:, i].mean() for i in range(2)])
    return rec, g, last.weight, rec_grad.norm(), g_grad.norm()


def test_adaptive_weight_is_the_ratio_of_last_layer_grad_norms() -> None:
    rec, g, weight, rec_norm, g_norm = _toy_decoder_losses(target_offset=0.0, critic_gain=3.0)
    expected = 0.5 * rec_norm / (g_norm + 1e-4)
    assert adaptive_disc_weight(rec, g, weight, disc_weight=0.5).item() == pytest.approx(expected.item(), rel=1e-5)


def test_adaptive_weight_is_clamped() -> None:
    rec, g, weight, rec_norm, _ = _toy_decoder_losses(target_offset=10.0, critic_gain=0.0)
    assert rec_norm.item() / 1e-4 > MAX_ADAPTIVE_WEIGHT
    assert adaptive_disc_weight(rec, g, weight, disc_weight=2.0).item() == pytest.approx(2.0 * MAX_ADAPTIVE_WEIGHT)


@pytest.mark.parametrize("recon_loss", ["l1", "l2"])
def test_without_discriminator_the_loss_is_reconstruction_plus_regularizer(recon_loss: str,
        tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    cfg = tiny(recon_loss=recon_loss, kl_weight=0.1)
    model, loss_fn = build_first_stage(cfg, 1), AutoencoderLoss(cfg, 1)
    assert loss_fn.discriminator is None and list(loss_fn.parameters()) == []
    assert not loss_fn.discriminator_active(10**6)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    out = model(x)
    loss, logs = loss_fn.generator_loss(x, out, step=0, last_layer=model.decoder_last_layer)
    diff = (out.reconstruction - x).detach()
    rec = diff.abs().mean() if recon_loss == "l1" else diff.square().mean()
    assert loss.item() == pytest.approx(rec.item() + 0.1 * out.posterior.kl().mean().item(), rel=1e-5)
    assert logs["loss"] == pytest.approx(loss.item()) and logs["rec_loss"] == pytest.approx(rec.item(), rel=1e-5)
    assert "kl" in logs and "g_loss" not in logs
    with pytest.raises(RuntimeError, match="disc_weight=0"):
        loss_fn.discriminator_loss(x, out.reconstruction)


def test_discriminator_switches_on_at_disc_start_with_adaptive_weight(tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    cfg = tiny(disc_weight=0.5, disc_start=100)
    model, loss_fn = build_first_stage(cfg, 1), AutoencoderLoss(cfg, 1)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    out = model(x)
    before, logs_before = loss_fn.generator_loss(x, out, step=99, last_layer=model.decoder_last_layer)
    assert "g_loss" not in logs_before and not loss_fn.discriminator_active(99)
    after, logs = loss_fn.generator_loss(x, out, step=100, last_layer=model.decoder_last_layer)
    assert loss_fn.discriminator_active(100)
    assert 0 < logs["disc_adaptive_weight"] <= 0.5 * MAX_ADAPTIVE_WEIGHT
    assert after.item() == pytest.approx(before.item() + logs["disc_adaptive_weight"] * logs["g_loss"], rel=1e-5)
    after.backward()
    assert model.decoder_last_layer.grad is not None


def test_validation_without_autograd_leaves_the_gan_term_out(tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    cfg = tiny(disc_weight=0.5, disc_start=0)
    model, loss_fn = build_first_stage(cfg, 1), AutoencoderLoss(cfg, 1)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        out = model(x)
        loss, logs = loss_fn.generator_loss(x, out, step=5, last_layer=model.decoder_last_layer)
    assert logs["disc_adaptive_weight"] == 0.0
    assert loss.item() == pytest.approx(logs["rec_loss"] + logs["reg_loss"], rel=1e-6)


def test_hinge_loss_closed_form() -> None:
    # relu(1 - [2, 0.5]) = [0, 0.5]; relu(1 + [-2, 0.5]) = [0, 1.5]; 0.5 * (0.25 + 0.75).
    assert hinge_discriminator_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])).item() == pytest.approx(0.5)


def test_discriminator_loss_is_hinge_on_patch_logits_and_detaches_the_fake(
        tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    cfg = tiny(disc_weight=1.0, disc_start=0)
    loss_fn = AutoencoderLoss(cfg, 1).eval()  # eval: BatchNorm statistics fixed, so logits are repeatable
    real, fake = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8, requires_grad=True)
    d_loss, logs = loss_fn.discriminator_loss(real, fake)
    disc = loss_fn.discriminator
    assert disc is not None
    expected = hinge_discriminator_loss(disc(real), disc(fake))
    assert d_loss.item() == pytest.approx(expected.item(), rel=1e-6) and logs["d_loss"] == pytest.approx(d_loss.item())
    d_loss.backward()
    assert fake.grad is None
    assert all(p.grad is not None for p in disc.parameters())


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_patch_discriminator_grid_is_a_quarter_of_the_image(resolution: int) -> None:
    disc = NLayerDiscriminator(3, base_channels=8)
    assert disc(torch.randn(2, 3, resolution, resolution)).shape == (2, 1, resolution // 4, resolution // 4)
    assert sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in disc.modules()) == 2
