"""Rate-distortion metrics of a first stage: PSNR/SSIM/MSE on [0, 1] images, bits per pixel, latent size."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm.errors import DataError
from ldm.first_stage.autoencoder import FirstStage, evaluating
from ldm.first_stage.regularizers import QuantizedPosterior, code_usage_stats

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
# Caps PSNR at 100 dB, so a lossless first stage (f = 1) logs a finite number.
MIN_MSE = 1e-10


def to_unit_range(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped as images are when saved (decoders can overshoot)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean squared error of the [0, 1] images, shape (B,)."""
    return (to_unit_range(x) - to_unit_range(y)).pow(2).flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB on [0, 1] images (data range 2 for the [-1, 1] inputs), shape (B,)."""
    return -10.0 * torch.log10(mse(x, y).clamp_min(MIN_MSE))


def _gaussian_blur_valid(images: Tensor) -> Tensor:
    """Separable Gaussian filter (11 taps, sigma 1.5) of (N, 1, H, W), keeping only full-window positions."""
    taps = torch.arange(SSIM_WINDOW, dtype=images.dtype, device=images.device) - SSIM_WINDOW // 2
    kernel = torch.exp(-taps.pow(2) / (2 * SSIM_SIGMA**2))
    kernel = kernel / kernel.sum()
    return F.conv2d(F.conv2d(images, kernel.view(1, 1, -1, 1)), kernel.view(1, 1, 1, -1))


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM of the [0, 1] images, averaged over channels, shape (B,).

    Gaussian window 11 / sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances, and the mean over
    positions where the window fits: the same number as skimage's `structural_similarity` with
    `gaussian_weights=True, use_sample_covariance=False, data_range=1`.
    """
    batch, _, height, width = x.shape
    if min(height, width) < SSIM_WINDOW:
        raise DataError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}")
    # Float64: the variances are differences of nearly equal blurred moments.
    a = to_unit_range(x).double().reshape(-1, 1, height, width)
    b = to_unit_range(y).double().reshape(-1, 1, height, width)
    mu_a, mu_b = _gaussian_blur_valid(a), _gaussian_blur_valid(b)
    var_a = _gaussian_blur_valid(a * a) - mu_a.pow(2)
    var_b = _gaussian_blur_valid(b * b) - mu_b.pow(2)
    cov = _gaussian_blur_valid(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))
    return index.reshape(batch, -1).mean(1).to(x.dtype)


@dataclass(frozen=True)
class RateDistortion:
    psnr: float
    ssim: float
    mse: float
    bpp: float
    latent_ratio: float
    perplexity: float | None
    codebook_usage: float | None

    def as_metrics(self) -> dict[str, float]:
        """The values named as in `evaluation/metric_catalog.py`, without the ones that do not apply."""
        return {name: value for name, value in asdict(self).items() if value is not None}


def evaluate_rate_distortion(first_stage: FirstStage, batches: Iterable[Tensor]) -> RateDistortion:
    """Per-image averages over held-out batches in [-1, 1], reconstructing from the posterior mode."""
    sums = {"psnr": 0.0, "ssim": 0.0, "mse": 0.0, "kl": 0.0}
    count, resolution = 0, 0
    code_counts: Tensor | None = None
    with evaluating(first_stage):
        for images in batches:
            height, width = images.shape[-2:]
            if height != width:
                raise DataError(f"rate-distortion needs square images, got {height}x{width}")
            x = first_stage.on_device(images)
            posterior = first_stage.encode(x)
            reconstruction = first_stage.decode(posterior.mode())
            for name, values in (("psnr", psnr(reconstruction, x)), ("ssim", ssim(reconstruction, x)),
                                 ("mse", mse(reconstruction, x)), ("kl", posterior.kl())):
                sums[name] += values.double().sum().item()
            if isinstance(posterior, QuantizedPosterior):
                batch_counts = torch.bincount(posterior.indices.flatten(),
                                              minlength=first_stage.config.codebook_size).cpu()
                code_counts = batch_counts if code_counts is None else code_counts + batch_counts
            count, resolution = count + x.shape[0], height
    if count == 0:
        raise DataError("rate-distortion evaluation got no images; allowed: at least one non-empty batch")
    perplexity, usage = code_usage_stats(code_counts) if code_counts is not None else (None, None)
    return RateDistortion(
        psnr=sums["psnr"] / count,
        ssim=sums["ssim"] / count,
        mse=sums["mse"] / count,
        bpp=first_stage.bits_per_pixel(resolution, sums["kl"] / count),
        latent_ratio=first_stage.latent_ratio(resolution),
        perplexity=perplexity,
        codebook_usage=usage,
    )
