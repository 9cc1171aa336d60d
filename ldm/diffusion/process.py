"""The Gaussian diffusion process of one schedule: q(x_t | x_0), its posterior, parameterisations, training loss.

Tables are float64 and cast to the input's dtype at use. Predicted x_0 is never clipped unless asked
(`clip_denoised`, pixel space only): scaled latents lie well outside [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldm.config import DiffusionConfig, PredictionType
from ldm.diffusion.schedules import make_betas
from ldm.errors import ConfigError

ModelFn = Callable[..., torch.Tensor]


def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] in like's dtype and device, shaped (B, 1, ..., 1) to broadcast over like."""
    values = table.to(t.device)[t].to(device=like.device, dtype=like.dtype)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


class GaussianDiffusion:
    """Forward process q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I), a_t = prod_{s<=t} (1 - beta_s)."""

    def __init__(self, betas: torch.Tensor, prediction: PredictionType = "epsilon",
                 min_snr_gamma: float | None = None) -> None:
        betas = betas.to(torch.float64).cpu()
        if betas.ndim != 1 or len(betas) < 2 or betas.min() <= 0 or betas.max() > 1:
            raise ConfigError(f"betas must be a 1-D schedule of at least 2 values in (0, 1]; got shape "
                              f"{tuple(betas.shape)} with range [{betas.min():.3g}, {betas.max():.3g}]")
        self.prediction = prediction
        self.min_snr_gamma = min_snr_gamma
        self.betas = betas
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        if prediction == "epsilon" and alphas_cumprod[-1] == 0:
            # x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a) is undefined where a = 0 (Lin et al. 2023, Sec. 3.2).
            raise ConfigError("diffusion.zero_terminal_snr=true cannot be used with diffusion.prediction='epsilon'; "
                              "allowed: 'v_prediction' or 'sample'")
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = alphas_cumprod_prev
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt()
        self.posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log takes the t = 1 value there, as in improved-diffusion.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef_x0 = betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod)
        self.posterior_mean_coef_xt = (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> GaussianDiffusion:
        return cls(make_betas(cfg), cfg.prediction, cfg.min_snr_gamma)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio a_t / (1 - a_t), float64, shape (B,)."""
        a = self.alphas_cumprod.to(t.device)[t]
        return a / (1 - a)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given standard-normal noise."""
        return _at(self.sqrt_alphas_cumprod, t, x0) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(self, x0: torch.Tensor, xt: torch.Tensor,
                                  t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = _at(self.posterior_mean_coef_x0, t, xt) * x0 + _at(self.posterior_mean_coef_xt, t, xt) * xt
        return mean, _at(self.posterior_variance, t, xt), _at(self.posterior_log_variance_clipped, t, xt)

    def model_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for x_t = q_sample(x0, t, noise) in this parameterisation."""
        match self.prediction:
            case "epsilon":
                return noise
            case "v_prediction":
                sqrt_a, sqrt_1ma = _at(self.sqrt_alphas_cumprod, t, x0), _at(self.sqrt_one_minus_alphas_cumprod, t, x0)
                return sqrt_a * noise - sqrt_1ma * x0
            case "sample":
                return x0

    def predict_x0_and_eps(self, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor,
                           clip_denoised: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted x_0 and noise from a network output; with clip_denoised, x_0 is clamped and eps made consistent."""
        sqrt_a = _at(self.sqrt_alphas_cumprod, t, xt)
        sqrt_1ma = _at(self.sqrt_one_minus_alphas_cumprod, t, xt)
        match self.prediction:
            case "epsilon":
                x0, eps = (xt - sqrt_1ma * output) / sqrt_a, output
            case "v_prediction":
                x0, eps = sqrt_a * xt - sqrt_1ma * output, sqrt_a * output + sqrt_1ma * xt
            case "sample":
                x0, eps = output, (xt - sqrt_a * output) / sqrt_1ma
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = (xt - sqrt_a * x0) / sqrt_1ma
        return x0, eps

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-item weight (B,): 1, or min-SNR-gamma (Hang et al. 2023) expressed for this parameterisation."""
        if self.min_snr_gamma is None:
            return torch.ones(t.shape, dtype=torch.float64, device=t.device)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.min_snr_gamma)
        match self.prediction:
            case "epsilon":
                return clipped / snr
            case "v_prediction":
                return clipped / (snr + 1)
            case "sample":
                return clipped

    def training_loss(self, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                      model_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
        """Per-item (B,) weighted MSE between model_fn(x_t, t, **model_kwargs) and the parameterisation's target."""
        xt = self.q_sample(x0, t, noise)
        output = model_fn(xt, t, **(model_kwargs or {}))
        target = self.model_target(x0, noise, t)
        if output.shape != target.shape:
            raise ValueError(f"model output shape {tuple(output.shape)} differs from target {tuple(target.shape)}")
        mse = (output.float() - target.float()).pow(2).mean(dim=tuple(range(1, x0.ndim)))
        return mse * self.loss_weight(t).to(mse)
