"""GaussianDiffusion: forward moments, posterior, parameterisations and the (min-SNR weighted) training loss."""

import pytest
import torch
from diffusers import DDPMScheduler

from ldm.config import DiffusionConfig, PredictionType
from ldm.diffusion.process import GaussianDiffusion
from ldm.diffusion.schedules import make_betas
from ldm.errors import ConfigError

PREDICTIONS: list[PredictionType] = ["epsilon", "v_prediction", "sample"]


def ddpm_linear(prediction: PredictionType = "epsilon", min_snr_gamma: float | None = None,
                timesteps: int = 1000) -> GaussianDiffusion:
    cfg = DiffusionConfig(schedule="linear", beta_start=1e-4, beta_end=0.02, timesteps=timesteps,
                          prediction=prediction, min_snr_gamma=min_snr_gamma)
    return GaussianDiffusion.from_config(cfg)


def test_q_sample_moments_match_the_closed_form() -> None:
    diffusion = ddpm_linear()
    generator = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.tensor([1.5, -2.0]).expand(n, 2)
    for step in (0, 250, 999):
        a = torch.prod(1 - make_betas(DiffusionConfig(schedule="linear", beta_start=1e-4, beta_end=0.02))[: step + 1])
        t = torch.full((n,), step)
        xt = diffusion.q_sample(x0, t, torch.randn(n, 2, generator=generator))
        mean, var = a.sqrt().item() * x0[0], (1 - a).item()
        standard_error = (var / n) ** 0.5
        torch.testing.assert_close(xt.mean(0), mean, atol=5 * standard_error, rtol=0)
        torch.testing.assert_close(xt.var(0), torch.full((2,), var), atol=5 * var * (2 / n) ** 0.5, rtol=0)


def test_posterior_is_the_bayes_product_of_the_two_gaussians() -> None:
    torch.manual_seed(0)
    diffusion = ddpm_linear()
    betas, abar = diffusion.betas, diffusion.alphas_cumprod
    x0, xt = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([1, 400, 999])
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, xt, t)
    # q(x_{t-1} | x_0) = N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1});  q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t)
    abar_prev, beta = abar[t - 1][:, None], betas[t][:, None]
    precision = 1 / (1 - abar_prev) + (1 - beta) / beta
    expected_mean = (abar_prev.sqrt() * x0 / (1 - abar_prev) + (1 - beta).sqrt() * xt / beta) / precision
    torch.testing.assert_close(mean, expected_mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(variance, 1 / precision, atol=1e-15, rtol=1e-10)
    torch.testing.assert_close(log_variance, (1 / precision).log(), atol=1e-10, rtol=0)


def test_posterior_at_t0_is_x0_with_the_t1_log_variance() -> None:
    torch.manual_seed(1)
    diffusion = ddpm_linear()
    x0, xt = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, xt, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(mean, x0, atol=1e-12, rtol=0)
    assert (variance == 0).all()
    torch.testing.assert_close(log_variance, diffusion.posterior_variance[1].log().expand(2, 1), atol=0, rtol=0)


@pytest.mark.parametrize("step", [1, 37, 500, 999])
def test_posterior_matches_diffusers_ddpm_step(step: int) -> None:
    torch.manual_seed(2)
    diffusion = ddpm_linear("sample")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, clip_sample=False,
                              prediction_type="sample")
    # diffusers' float32 beta_t = 1 - abar_t / abar_{t-1} loses about 3 digits at small t: give it float64 tables.
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), dim=0)
    x0, xt = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    prev = scheduler.step(x0, step, xt, generator=torch.Generator().manual_seed(1)).prev_sample
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    mean, variance, _ = diffusion.q_posterior_mean_variance(x0, xt, torch.full((2,), step))
    torch.testing.assert_close(variance.flatten().double(), scheduler._get_variance(step).expand(2),
                               atol=0, rtol=1e-6)
    torch.testing.assert_close(mean + variance.sqrt() * noise, prev, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_parameterisations_round_trip_exactly(prediction: PredictionType) -> None:
    torch.manual_seed(3)
    diffusion = ddpm_linear(prediction)
    x0, noise = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = diffusion.q_sample(x0, t, noise)
    predicted_x0, predicted_eps = diffusion.predict_x0_and_eps(xt, t, diffusion.model_target(x0, noise, t))
    torch.testing.assert_close(predicted_x0, x0, atol=1e-9, rtol=0)
    torch.testing.assert_close(predicted_eps, noise, atol=1e-9, rtol=0)


def test_v_target_matches_diffusers_velocity() -> None:
    torch.manual_seed(4)
    diffusion = ddpm_linear("v_prediction")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    # Float64 throughout (diffusers forms 1 - abar in the input's dtype, which in float32 loses digits at small t);
    # what remains is diffusers' float32 betas, about 1e-8 here.
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), dim=0)
    x0, noise = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64)
    t = torch.tensor([3, 300, 900])
    torch.testing.assert_close(diffusion.model_target(x0, noise, t), scheduler.get_velocity(x0, noise, t),
                               atol=1e-7, rtol=0)


def test_clip_denoised_clamps_x0_and_keeps_eps_consistent() -> None:
    torch.manual_seed(5)
    diffusion = ddpm_linear()
    xt, output = 3 * torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 50)
    unclipped, _ = diffusion.predict_x0_and_eps(xt, t, output)
    x0, eps = diffusion.predict_x0_and_eps(xt, t, output, clip_denoised=True)
    assert unclipped.abs().max() > 1 and x0.abs().max() <= 1
    torch.testing.assert_close(diffusion.q_sample(x0, t, eps), xt, atol=1e-12, rtol=0)


def test_snr_is_alpha_bar_over_one_minus_alpha_bar() -> None:
    diffusion = ddpm_linear()
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    t = torch.tensor([0, 123, 999])
    torch.testing.assert_close(diffusion.snr(t), abar[t] / (1 - abar[t]), atol=0, rtol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_loss_is_zero_for_the_true_target(prediction: PredictionType) -> None:
    torch.manual_seed(6)
    diffusion = ddpm_linear(prediction, min_snr_gamma=5.0)
    x0, noise, t = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4), torch.tensor([0, 5, 500, 999])

    def oracle(xt: torch.Tensor, t: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * diffusion.model_target(x0, noise, t)

    assert diffusion.training_loss(oracle, x0, t, noise, {"scale": 1.0}).abs().max() < 1e-10
    # A model off by 10%: the loss is the weighted mean of (0.1 * target)^2 per item.
    loss = diffusion.training_loss(oracle, x0, t, noise, {"scale": 0.9})
    expected = (0.1 * diffusion.model_target(x0, noise, t)).pow(2).mean(dim=(1, 2, 3)) * diffusion.loss_weight(t)
    torch.testing.assert_close(loss, expected.float(), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(("prediction", "weight"), [
    ("epsilon", lambda snr, g: min(snr, g) / snr),
    ("v_prediction", lambda snr, g: min(snr, g) / (snr + 1)),
    ("sample", lambda snr, g: min(snr, g)),
])
def test_min_snr_gamma_weights_follow_hang_et_al(prediction: PredictionType, weight) -> None:
    gamma = 5.0
    diffusion = ddpm_linear(prediction, min_snr_gamma=gamma)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    t = torch.tensor([10, 200, 800])  # SNR about 1000, 4.2 and 0.0007: both sides of gamma
    snr = (abar[t] / (1 - abar[t])).tolist()
    assert snr[0] > gamma > snr[1]
    expected = torch.tensor([weight(s, gamma) for s in snr], dtype=torch.float64)
    torch.testing.assert_close(diffusion.loss_weight(t), expected, atol=0, rtol=1e-12)
    assert (ddpm_linear(prediction).loss_weight(t) == 1).all()


def test_zero_terminal_snr_refuses_epsilon_prediction() -> None:
    # The config rejects this pair up front; the process itself refuses any schedule ending at alpha_bar = 0.
    cfg = DiffusionConfig(zero_terminal_snr=True, prediction="v_prediction")
    with pytest.raises(ConfigError, match="zero_terminal_snr=true cannot be used with diffusion.prediction='epsilon'"):
        GaussianDiffusion(make_betas(cfg), "epsilon")
    v = GaussianDiffusion.from_config(cfg)
    assert v.snr(torch.tensor([999])).item() == 0.0


def test_bad_betas_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"betas must be a 1-D schedule .* in \(0, 1\]"):
        GaussianDiffusion(torch.tensor([0.0, 0.1, 0.2]))
