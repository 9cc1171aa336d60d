"""Noise schedules against their published formulas, endpoints and diffusers' DDPMScheduler."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from ldm.config import DiffusionConfig, ScheduleName
from ldm.diffusion.schedules import make_betas

T = 1000
DDPM_RANGE = {"beta_start": 1e-4, "beta_end": 0.02}
DIFFUSERS_NAME: dict[ScheduleName, str] = {
    "linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1 - betas, dim=0)


@pytest.mark.parametrize("schedule", list(DIFFUSERS_NAME))
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_alphas_cumprod_match_diffusers(schedule: ScheduleName, zero_terminal_snr: bool) -> None:
    cfg = DiffusionConfig(schedule=schedule, timesteps=T, zero_terminal_snr=zero_terminal_snr,
                          prediction="v_prediction" if zero_terminal_snr else "epsilon", **DDPM_RANGE)
    betas = make_betas(cfg)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    reference = DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[schedule],
                              rescale_betas_zero_snr=zero_terminal_snr, **DDPM_RANGE).alphas_cumprod
    torch.testing.assert_close(alphas_cumprod(betas), reference.double(), atol=1e-6, rtol=0)


def test_linear_is_evenly_spaced_between_the_endpoints() -> None:
    betas = make_betas(DiffusionConfig(schedule="linear", timesteps=T, **DDPM_RANGE))
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15) and betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    steps = betas.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, (0.02 - 1e-4) / (T - 1)), atol=1e-15, rtol=0)


def test_scaled_linear_is_linear_in_sqrt_beta_with_the_compvis_default_range() -> None:
    betas = make_betas(DiffusionConfig(schedule="scaled_linear", timesteps=T))
    assert betas[0].item() == pytest.approx(0.0015) and betas[-1].item() == pytest.approx(0.0195)
    sqrt_steps = betas.sqrt().diff()
    expected = (0.0195**0.5 - 0.0015**0.5) / (T - 1)
    torch.testing.assert_close(sqrt_steps, torch.full_like(sqrt_steps, expected), atol=1e-14, rtol=0)


def test_cosine_follows_nichol_dhariwal_alpha_bar_and_clips_at_0_999() -> None:
    betas = make_betas(DiffusionConfig(schedule="cosine", timesteps=T))

    def f(t: float) -> float:
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    unclipped = betas < 0.999
    assert unclipped[: T - 1].all() and betas[-1].item() == pytest.approx(0.999)
    torch.testing.assert_close(alphas_cumprod(betas)[unclipped], expected[unclipped], atol=1e-12, rtol=0)


def test_sigmoid_is_symmetric_around_the_middle_of_the_range() -> None:
    betas = make_betas(DiffusionConfig(schedule="sigmoid", timesteps=T, **DDPM_RANGE))
    torch.testing.assert_close(betas + betas.flip(0), torch.full_like(betas, 1e-4 + 0.02), atol=1e-15, rtol=0)
    sigmoid_6 = 1 / (1 + math.exp(-6))
    assert betas[-1].item() == pytest.approx(sigmoid_6 * (0.02 - 1e-4) + 1e-4, abs=1e-15)


@pytest.mark.parametrize("schedule", list(DIFFUSERS_NAME))
def test_zero_terminal_snr_is_an_affine_rescale_of_sqrt_alpha_bar(schedule: ScheduleName) -> None:
    cfg = DiffusionConfig(schedule=schedule, timesteps=T, **DDPM_RANGE)
    original = alphas_cumprod(make_betas(cfg)).sqrt()
    rescaled = alphas_cumprod(make_betas(cfg.model_copy(update={"zero_terminal_snr": True}))).sqrt()
    assert rescaled[-1].item() == 0.0
    assert rescaled[0].item() == pytest.approx(original[0].item(), abs=1e-14)
    expected = (original - original[-1]) * original[0] / (original[0] - original[-1])
    torch.testing.assert_close(rescaled, expected, atol=1e-12, rtol=0)
