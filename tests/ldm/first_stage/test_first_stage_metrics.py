"""PSNR/SSIM/MSE against skimage and closed forms, rates against hand-computed numbers."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from ldm.config import AutoencoderConfig
from ldm.errors import DataError
from ldm.first_stage import build_first_stage, evaluate_rate_distortion
from ldm.first_stage.metrics import mse, psnr, ssim
from ldm.first_stage.regularizers import DiagonalGaussian, kl_bits_per_pixel, vq_bits_per_pixel



def skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    return [
        structural_similarity(((a + 1) / 2).numpy(), ((b + 1) / 2).numpy(), gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1.0, channel_axis=0)
        for a, b in zip(x.double(), y.double(), strict=True)
    ]


def photo_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 48x48 astronaut and camera crop in [-1, 1], and blurred + noisy versions of them."""
    rng = np.random.default_rng(0)
    astronaut = resize(skdata.astronaut(), (48, 48), anti_aliasing=True).transpose(2, 0, 1)
    camera = np.repeat(resize(skdata.camera(), (48, 48), anti_aliasing=True)[None], 3, axis=0)
    clean = np.stack([astronaut, camera])
    degraded = np.clip(gaussian(clean, sigma=(0, 0, 1, 1)) + 0.05 * rng.standard_normal(clean.shape), 0, 1)
    return (torch.tensor(clean, dtype=torch.float32) * 2 - 1, torch.tensor(degraded, dtype=torch.float32) * 2 - 1)


def test_ssim_matches_skimage_on_random_images() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 40) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert ssim(x, y).tolist() == pytest.approx(skimage_ssim(x, y), abs=1e-4)
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_ssim_matches_skimage_on_photos() -> None:
    clean, degraded = photo_pair()
    ours = ssim(degraded, clean).tolist()
    assert ours == pytest.approx(skimage_ssim(degraded, clean), abs=1e-4)
    assert all(0.3 < s < 0.99 for s in ours)  # a meaningful, not degenerate, comparison


def test_ssim_rejects_images_smaller_than_the_window() -> None:
    with pytest.raises(DataError, match="at least 11x11 pixels, got 8x8"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_psnr_and_mse_closed_form() -> None:
    x = torch.zeros(2, 1, 16, 16)
    y = x + 0.1  # 0.05 apart on [0, 1] images: mse 0.0025, psnr 10 log10(400)
    assert mse(x, y).tolist() == pytest.approx([0.0025] * 2)
    assert psnr(x, y).tolist() == pytest.approx([10 * math.log10(400)] * 2, rel=1e-5)
    assert mse(-torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)).item() == 1.0
    assert psnr(x, x).tolist() == [100.0, 100.0]  # capped, so a lossless first stage logs a number


def test_psnr_matches_skimage_with_data_range_two() -> None:
    clean, degraded = photo_pair()
    expected = [peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=2.0) for a, b in zip(clean, degraded)]
    assert psnr(clean, degraded).tolist() == pytest.approx(expected, abs=1e-3)


def test_bits_per_pixel_hand_computed(tiny: Callable[..., AutoencoderConfig]) -> None:
    assert vq_bits_per_pixel(32, 8, 512) == 64 * 9 / 1024
    assert vq_bits_per_pixel(256, 32, 16384) == 32 * 32 * 14 / 256**2
    assert kl_bits_per_pixel(1024 * math.log(2), 32) == pytest.approx(1.0)
    vq = build_first_stage(tiny(f=4, regularizer="vq", codebook_size=512), 3)
    assert vq.bits_per_pixel(32, mean_kl_nats=0.0) == 0.5625
    assert build_first_stage(tiny(f=1), 3).bits_per_pixel(32, mean_kl_nats=0.0) == 24.0
    assert build_first_stage(tiny(f=1), 1).bits_per_pixel(32, mean_kl_nats=0.0) == 8.0


def test_kl_rate_of_a_known_posterior(tiny: Callable[..., AutoencoderConfig]) -> None:
    # c=4, 8x8 latent of a 32x32 image, mean 1 and unit variance: KL = 0.5 * 256 * 1 = 128 nats.
    posterior = DiagonalGaussian(torch.cat([torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)], dim=1))
    kl = posterior.kl().mean().item()
    assert kl == pytest.approx(128.0)
    kl_stage = build_first_stage(tiny(f=4), 3)
    assert kl_stage.bits_per_pixel(32, mean_kl_nats=kl) == pytest.approx(128 / math.log(2) / 1024)


def test_latent_size_ratio(tiny: Callable[..., AutoencoderConfig]) -> None:
    ratio = build_first_stage(tiny(f=4, latent_channels=4), 3).latent_ratio(32)
    assert ratio == pytest.approx(8 * 8 * 4 / (32 * 32 * 3))
    assert build_first_stage(tiny(f=8, latent_channels=16), 1).latent_ratio(64) == pytest.approx(0.25)
    assert build_first_stage(tiny(f=1, latent_channels=16), 3).latent_ratio(64) == 1.0


def test_identity_first_stage_is_lossless_at_raw_rate(tiny: Callable[..., AutoencoderConfig]) -> None:
    cfg = tiny(f=1)
    rd = evaluate_rate_distortion(build_first_stage(cfg, 3), [torch.rand(2, 3, 16, 16) * 2 - 1])
    assert (rd.psnr, rd.ssim, rd.mse, rd.bpp, rd.latent_ratio) == (100.0, pytest.approx(1.0), 0.0, 24.0, 1.0)
    assert rd.perplexity is None and rd.codebook_usage is None
    assert set(rd.as_metrics()) == {"psnr", "ssim", "mse", "bpp", "latent_ratio"}


def test_kl_rate_distortion_averages_per_image_over_uneven_batches(tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    cfg = tiny(f=2, latent_channels=3)
    model = build_first_stage(cfg, 1)
    batches = [torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(1, 1, 16, 16) * 2 - 1]
    rd = evaluate_rate_distortion(model, batches)
    assert model.training  # the mode is restored
    images = torch.cat(batches)
    with torch.no_grad():
        posterior = model.eval().encode(images)
        reconstruction = model.decode(posterior.mode()).clamp(-1, 1)
    pairs = list(zip(images.numpy(), reconstruction.numpy()))
    reference_psnr = np.mean([peak_signal_noise_ratio(a, b, data_range=2.0) for a, b in pairs])
    assert rd.psnr == pytest.approx(reference_psnr, abs=1e-3)
    assert rd.ssim == pytest.approx(np.mean(skimage_ssim(reconstruction, images)), abs=1e-4)
    assert rd.mse == pytest.approx(np.mean([((a - b) ** 2).mean() / 4 for a, b in pairs]), rel=1e-4)
    assert rd.bpp == pytest.approx(posterior.kl().mean().item() / math.log(2) / 256, rel=1e-5)
    assert rd.latent_ratio == pytest.approx(8 * 8 * 3 / 256)
    assert rd.perplexity is None


def test_vq_rate_distortion_counts_codes_over_the_whole_split(tiny: Callable[..., AutoencoderConfig]) -> None:
    torch.manual_seed(0)
    cfg = tiny(f=4, regularizer="vq", codebook_size=16)
    model = build_first_stage(cfg, 1)
    codebook_before = model.regularizer.codebook.clone()
    batches = [torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(3, 1, 16, 16) * 2 - 1]
    rd = evaluate_rate_distortion(model, batches)
    assert torch.equal(model.regularizer.codebook, codebook_before)  # eval: no EMA update
    with torch.no_grad():
        codes = model.eval().encode(torch.cat(batches)).indices.flatten().tolist()
    counts = Counter(codes)
    probabilities = [n / len(codes) for n in counts.values()]
    assert rd.perplexity == pytest.approx(math.exp(-sum(p * math.log(p) for p in probabilities)))
    assert rd.codebook_usage == pytest.approx(100 * len(counts) / 16)
    assert rd.bpp == 16 * 4 / 256


def test_rate_distortion_needs_images(tiny: Callable[..., AutoencoderConfig]) -> None:
    cfg = tiny()
    with pytest.raises(DataError, match="no images"):
        evaluate_rate_distortion(build_first_stage(cfg, 1), [])
