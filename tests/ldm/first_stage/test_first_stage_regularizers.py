"""The diagonal Gaussian posterior and the EMA vector quantiser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldm.io import atomic_torch_save, load_checkpoint
from ldm.first_stage.regularizers import (
    DiagonalGaussian,
    GaussianRegularizer,
    QuantizedPosterior,
    VectorQuantizer,
    code_usage_stats,
    nearest_code,
)


def test_kl_matches_closed_form_and_torch_distributions() -> None:
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0]).reshape(1, 4, 1, 1).repeat(2, 1, 3, 3)
    std = torch.tensor([1.0, 0.5, 2.0, 0.1]).reshape(1, 4, 1, 1).repeat(2, 1, 3, 3)
    posterior = DiagonalGaussian(torch.cat([mean, torch.log(std**2)], dim=1))
    pairs = [(0.5, 1.0), (-1.0, 0.5), (2.0, 2.0), (0.0, 0.1)]
    per_channel = [0.5 * (m**2 + s**2 - 1 - math.log(s**2)) for m, s in pairs]
    assert torch.allclose(posterior.kl(), torch.full((2,), 9 * sum(per_channel)), rtol=1e-6)
    reference = kl_divergence(Normal(mean, std), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(posterior.kl(), reference, rtol=1e-5)
    assert torch.equal(posterior.mode(), mean)


def test_logvar_is_clamped_as_compvis() -> None:
    logvar = torch.tensor([-50.0, 40.0]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2)
    moments = torch.cat([torch.zeros(1, 2, 2, 2), logvar], dim=1)
    posterior = DiagonalGaussian(moments)
    assert posterior.logvar.flatten().unique().tolist() == [-30.0, 20.0]


def test_gaussian_samples_have_the_posterior_moments_and_follow_the_generator() -> None:
    moments = torch.cat([torch.full((1, 1, 100, 100), 3.0), torch.full((1, 1, 100, 100), math.log(0.25))], 1)
    posterior = DiagonalGaussian(moments)
    a = posterior.sample(torch.Generator().manual_seed(7))
    assert torch.equal(a, posterior.sample(torch.Generator().manual_seed(7)))
    assert a.mean().item() == pytest.approx(3.0, abs=0.02) and a.std().item() == pytest.approx(0.5, abs=0.01)


def test_gaussian_regularizer_loss_is_weighted_mean_kl() -> None:
    moments = torch.randn(3, 4, 2, 2)
    out = GaussianRegularizer(kl_weight=1e-3)(moments)
    assert out.loss.item() == pytest.approx(1e-3 * DiagonalGaussian(moments).kl().mean().item(), rel=1e-6)


def test_nearest_code_matches_brute_force() -> None:
    torch.manual_seed(0)
    vectors, codebook = torch.randn(300, 4), torch.randn(37, 4)
    brute = [min(range(37), key=lambda k: ((v - codebook[k]) ** 2).sum().item()) for v in vectors]
    assert nearest_code(vectors, codebook).tolist() == brute


def test_quantized_output_is_the_nearest_code_at_every_position() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, commitment_weight=0.25, ema_decay=0.99).eval()
    z_e = torch.randn(2, 3, 4, 5)
    posterior = vq(z_e).posterior
    assert isinstance(posterior, QuantizedPosterior) and posterior.indices.shape == (2, 4, 5)
    vectors = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = ((vectors[:, None, :] - vq.codebook[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(posterior.indices.flatten(), brute)
    assert torch.allclose(posterior.sample().permute(0, 2, 3, 1).reshape(-1, 3), vq.codebook[brute])
    assert torch.equal(posterior.kl(), torch.zeros(2))


def test_straight_through_gradient_and_commitment_gradient() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, commitment_weight=0.25, ema_decay=0.99).eval()
    z_e = torch.randn(1, 2, 3, 3, requires_grad=True)
    out = vq(z_e)
    upstream = torch.randn(1, 2, 3, 3)
    (out.posterior.sample() * upstream).sum().backward()
    assert torch.allclose(z_e.grad, upstream)
    z_e.grad = None
    vq(z_e).loss.backward()
    z_q = out.posterior.mode().detach()
    assert torch.allclose(z_e.grad, 0.25 * 2 * (z_e.detach() - z_q) / z_e.numel(), atol=1e-7)


def _far_codebook(vq: VectorQuantizer, used_code: torch.Tensor) -> None:
    """Code 0 at `used_code`, every other code far away so a batch near it uses code 0 only."""
    codebook = torch.stack([used_code] + [torch.tensor([1000.0 + k, 1000.0]) for k in range(1, vq.codebook_size)])
    vq.codebook.copy_(codebook)
    vq.embedding_sum.copy_(codebook)


def test_ema_update_moves_the_used_code_toward_the_batch_mean() -> None:
    torch.manual_seed(0)
    decay, n = 0.9, 9
    vq = VectorQuantizer(8, 2, commitment_weight=0.25, ema_decay=decay, epsilon=0.0)
    start = torch.tensor([1.0, -1.0])
    _far_codebook(vq, start)
    z_e = start.reshape(1, 2, 1, 1) + 0.5 * torch.randn(1, 2, 3, 3)
    batch_mean = z_e.mean(dim=(0, 2, 3))
    vq(z_e)
    # Weighted mean of the old code (weight decay) and the batch (weight (1 - decay) * n): here halfway.
    expected = (decay * start + (1 - decay) * n * batch_mean) / (decay + (1 - decay) * n)
    assert torch.allclose(vq.codebook[0], expected, atol=1e-6)
    assert torch.allclose(vq.codebook[0], (start + batch_mean) / 2, atol=1e-6)
    assert vq.cluster_size[0].item() == pytest.approx(decay + (1 - decay) * n)
    assert torch.allclose(vq.codebook[1:, 0], torch.arange(1001.0, 1008.0))  # unused codes stay put


def test_ema_update_with_laplace_smoothing() -> None:
    torch.manual_seed(0)
    decay, eps, k = 0.99, 1e-2, 4
    vq = VectorQuantizer(k, 2, commitment_weight=0.25, ema_decay=decay, epsilon=eps)
    _far_codebook(vq, torch.zeros(2))
    z_e = 0.1 * torch.randn(2, 2, 2, 2)
    vq(z_e)
    sizes = torch.tensor([decay + (1 - decay) * 8] + [decay] * (k - 1))
    smoothed = (sizes + eps) / (sizes.sum() + k * eps) * sizes.sum()
    expected = (1 - decay) * z_e.sum(dim=(0, 2, 3)) / smoothed[0]
    assert torch.allclose(vq.codebook[0], expected, atol=1e-6)


def test_eval_mode_leaves_the_codebook_alone() -> None:
    vq = VectorQuantizer(8, 2, commitment_weight=0.25, ema_decay=0.5).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(2, 2, 4, 4))
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


def test_dead_codes_restart_from_batch_encoder_outputs() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, commitment_weight=0.25, ema_decay=0.99, restart_after_steps=2)
    _far_codebook(vq, torch.zeros(2))
    z_e = 0.1 * torch.randn(1, 2, 4, 4)
    vectors = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    vq(z_e)
    assert (vq.codebook[1:, 0] > 900).all() and vq.steps_unused.tolist() == [0, 1, 1, 1]
    vq(z_e)
    for code in vq.codebook[1:]:
        assert (vectors == code).all(1).any(), "a restarted code must be one of the batch's encoder outputs"
    assert vq.steps_unused.tolist() == [0, 0, 0, 0]
    assert vq.cluster_size[1:].tolist() == [1.0, 1.0, 1.0]


def test_codebook_state_is_buffers_that_survive_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, commitment_weight=0.25, ema_decay=0.9)
    vq(torch.randn(2, 2, 4, 4))
    assert list(vq.parameters()) == []
    assert set(vq.state_dict()) == {"codebook", "cluster_size", "embedding_sum", "steps_unused"}
    atomic_torch_save(vq.state_dict(), tmp_path / "vq.pt")
    restored = VectorQuantizer(8, 2, commitment_weight=0.25, ema_decay=0.9)
    restored.load_state_dict(load_checkpoint(tmp_path / "vq.pt"))
    z_e = torch.randn(1, 2, 3, 3)
    assert torch.equal(restored.eval()(z_e).posterior.indices, vq.eval()(z_e).posterior.indices)


def test_usage_stats_perplexity_and_percent() -> None:
    perplexity, usage = code_usage_stats(torch.tensor([5, 5, 5, 5, 0, 0, 0, 0]))
    assert perplexity == pytest.approx(4.0) and usage == 50.0
    perplexity, usage = code_usage_stats(torch.tensor([3, 1]))
    assert perplexity == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert usage == 100.0


def test_training_forward_reports_batch_usage() -> None:
    vq = VectorQuantizer(8, 2, commitment_weight=0.25, ema_decay=0.99)
    _far_codebook(vq, torch.zeros(2))
    stats = vq(0.1 * torch.randn(1, 2, 2, 2)).stats
    assert stats["perplexity"] == pytest.approx(1.0) and stats["codebook_usage"] == 12.5
