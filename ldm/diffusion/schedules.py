"""Noise schedules: the betas of the forward process, one small function per named schedule.

All betas are float64 of length T. Names follow diffusers (`cosine` is diffusers' `squaredcos_cap_v2`).
The config's default beta range 0.0015..0.0195 is CompVis's class-model range (with `scaled_linear`,
which CompVis calls "linear"); the DDPM paper's `linear` range is beta_start=1e-4, beta_end=0.02.
"""

from __future__ import annotations

import math

import torch

from ldm.config import DiffusionConfig

COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Betas evenly spaced from beta_start to beta_end (DDPM uses 1e-4..0.02)."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def scaled_linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """sqrt(beta) evenly spaced (LDM's schedule; CompVis uses 0.0015..0.0195 for class models)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2


def cosine_betas(timesteps: int, offset: float = COSINE_OFFSET, max_beta: float = COSINE_MAX_BETA) -> torch.Tensor:
    """Nichol & Dhariwal's schedule: alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2); ignores the beta range."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigmoid_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """GeoDiff's schedule as diffusers defines it: sigmoid(linspace(-6, 6, T)) scaled into the beta range."""
    return torch.sigmoid(torch.linspace(-6, 6, timesteps, dtype=torch.float64)) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Alg. 1: shift and scale sqrt(alpha_bar) so the last step is pure noise, the first unchanged."""
    sqrt_alpha_bar = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """The float64 betas (length cfg.timesteps) of the configured schedule, optionally rescaled to zero terminal SNR."""
    match cfg.schedule:
        case "linear":
            betas = linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        case "scaled_linear":
            betas = scaled_linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        case "cosine":
            betas = cosine_betas(cfg.timesteps)
        case "sigmoid":
            betas = sigmoid_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    return rescale_zero_terminal_snr(betas) if cfg.zero_terminal_snr else betas
