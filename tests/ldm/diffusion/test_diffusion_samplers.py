"""DDPM/DDIM samplers and classifier-free guidance: exact recovery, determinism, step-by-step match with diffusers."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ldm.config import DiffusionConfig, PredictionType, SamplingConfig
from ldm.diffusion.process import GaussianDiffusion
from ldm.diffusion.samplers import ddim_step, ddim_timesteps, ddpm_step, guided_output, sample
from ldm.errors import ConfigError, UserError

SHAPE = (3, 2, 4, 4)


def linear_diffusion(prediction: PredictionType = "epsilon", timesteps: int = 1000,
                     zero_terminal_snr: bool = False) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(DiffusionConfig(
        schedule="linear", beta_start=1e-4, beta_end=0.02, timesteps=timesteps, prediction=prediction,
        zero_terminal_snr=zero_terminal_snr))


def stub_model(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """A fixed nonlinear function of x, t and the condition (the stand-in for a network)."""
    shift = 0.0 if cond is None else cond["context"].mean(dim=(1, 2))[:, None, None, None]
    return torch.tanh(x * (1 + t[:, None, None, None] / 1000)) * 0.5 + shift


def oracle_for(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """A model that knows x0: it returns the exact eps / v / x0 output for whatever x_t it sees."""

    def model_fn(xt: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        sqrt_a = diffusion.sqrt_alphas_cumprod[t].float()[:, None, None, None]
        sqrt_1ma = diffusion.sqrt_one_minus_alphas_cumprod[t].float()[:, None, None, None]
        eps = (xt - sqrt_a * x0) / sqrt_1ma
        return diffusion.model_target(x0, eps, t)

    return model_fn


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize(("timesteps", "steps"), [(1000, 50), (1000, 7), (100, 100), (30, 4)])
def test_ddim_timesteps_match_diffusers(spacing: str, timesteps: int, steps: int) -> None:
    scheduler = DDIMScheduler(num_train_timesteps=timesteps, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    assert ddim_timesteps(timesteps, steps, spacing).tolist() == scheduler.timesteps.tolist()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_with_an_oracle_returns_the_known_x0(prediction: PredictionType, spacing: str) -> None:
    diffusion = linear_diffusion(prediction)
    sampling = SamplingConfig(sampler="ddim", steps=20, eta=0.0, timestep_spacing=spacing)
    generator = torch.Generator().manual_seed(0)
    x0, noise = 2 * torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    first = ddim_timesteps(1000, 20, spacing)[0].item()
    x_T = diffusion.q_sample(x0, torch.full((SHAPE[0],), first), noise)
    out = sample(oracle_for(diffusion, x0), diffusion, SHAPE, sampling, None, None, None, "cpu", x_T=x_T)
    torch.testing.assert_close(out, x0, atol=2e-5, rtol=0)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_ddim_oracle_recovers_x0_from_pure_noise_with_zero_terminal_snr(prediction: PredictionType) -> None:
    diffusion = linear_diffusion(prediction, zero_terminal_snr=True)
    sampling = SamplingConfig(sampler="ddim", steps=10, timestep_spacing="trailing")
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    out = sample(oracle_for(diffusion, x0), diffusion, SHAPE, sampling, None, None,
                 torch.Generator().manual_seed(2), "cpu")
    torch.testing.assert_close(out, x0, atol=2e-5, rtol=0)


def test_ddim_eta0_is_deterministic_for_a_seed_and_eta_draws_from_the_generator() -> None:
    torch.manual_seed(0)
    diffusion = linear_diffusion()
    for eta in (0.0, 0.7):
        sampling = SamplingConfig(sampler="ddim", steps=10, eta=eta)

        def run(seed: int) -> torch.Tensor:
            generator = torch.Generator().manual_seed(seed)
            return sample(stub_model, diffusion, SHAPE, sampling, None, None, generator, "cpu")

        assert torch.equal(run(3), run(3))
        assert not torch.allclose(run(3), run(4))
    x_T = torch.randn(SHAPE)
    ddim = SamplingConfig(sampler="ddim", steps=10)
    a = sample(stub_model, diffusion, SHAPE, ddim, None, None, torch.Generator().manual_seed(5), "cpu", x_T=x_T)
    b = sample(stub_model, diffusion, SHAPE, ddim, None, None, torch.Generator().manual_seed(6), "cpu", x_T=x_T)
    assert torch.equal(a, b)  # eta = 0 and a given x_T: no randomness left


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(("spacing", "eta"), [("leading", 0.0), ("trailing", 0.0), ("leading", 0.5), ("trailing", 1.0)])
def test_ddim_steps_match_diffusers(prediction: PredictionType, spacing: str, eta: float) -> None:
    diffusion = linear_diffusion(prediction)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, clip_sample=False,
                              set_alpha_to_one=True, prediction_type=prediction, timestep_spacing=spacing)
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), dim=0)  # no float32 cumprod drift
    scheduler.set_timesteps(25)
    ours_generator, theirs_generator = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8))
    visited = scheduler.timesteps.tolist()
    for t, t_prev in zip(visited, [*visited[1:], -1], strict=True):
        output = stub_model(x, torch.full((SHAPE[0],), t), None)
        ours = ddim_step(diffusion, output, x, t, t_prev, eta, ours_generator)
        theirs = scheduler.step(output, t, x, eta=eta, generator=theirs_generator).prev_sample
        # The untrained stub's x0 reaches |x| ~ 30: allow float32 rounding relative to that.
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)
        x = theirs


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_ancestral_steps_match_diffusers(prediction: PredictionType) -> None:
    diffusion = linear_diffusion(prediction, timesteps=50)
    scheduler = DDPMScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.02, clip_sample=False,
                              prediction_type=prediction)
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), dim=0)
    ours_generator, theirs_generator = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10))
    for t in range(49, -1, -1):
        output = stub_model(x, torch.full((SHAPE[0],), t), None)
        ours = ddpm_step(diffusion, output, x, t, ours_generator)
        theirs = scheduler.step(output, t, x, generator=theirs_generator).prev_sample
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)
        x = theirs
    ddpm = SamplingConfig(sampler="ddpm", steps=3)  # steps is ignored: DDPM visits all T steps
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10))
    full = sample(stub_model, diffusion, SHAPE, ddpm, None, None, torch.Generator().manual_seed(9), "cpu", x_T=x_T)
    torch.testing.assert_close(full, x, atol=1e-5, rtol=1e-6)


class CountingModel:
    """stub_model that records the batch size of every call."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor] | None) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return stub_model(x, t, cond)


def test_guidance_scale_1_is_the_conditional_output_from_one_unbatched_pass() -> None:
    torch.manual_seed(1)
    x, t = torch.randn(SHAPE), torch.full((SHAPE[0],), 500)
    cond, uncond = {"context": torch.randn(3, 2, 5)}, {"context": torch.zeros(3, 2, 5)}
    model = CountingModel()
    assert torch.equal(guided_output(model, x, t, cond, uncond, 1.0), stub_model(x, t, cond))
    assert model.batch_sizes == [3]


@pytest.mark.parametrize("scale", [0.0, 3.0, 7.5])
def test_guidance_is_uncond_plus_scale_times_difference_from_one_batched_pass(scale: float) -> None:
    torch.manual_seed(2)
    x, t = torch.randn(SHAPE), torch.full((SHAPE[0],), 500)
    cond = {"context": torch.randn(3, 2, 5), "concat": torch.randn(3, 1, 4, 4)}
    uncond = {"context": torch.zeros(3, 2, 5), "concat": torch.zeros(3, 1, 4, 4)}
    model = CountingModel()
    guided = guided_output(model, x, t, cond, uncond, scale)
    conditional, unconditional = stub_model(x, t, cond), stub_model(x, t, uncond)
    torch.testing.assert_close(guided, unconditional + scale * (conditional - unconditional), atol=1e-6, rtol=0)
    assert model.batch_sizes == [6]


def test_sampling_applies_guidance_at_every_step() -> None:
    diffusion = linear_diffusion()
    cond, uncond = {"context": torch.ones(3, 1, 2)}, {"context": torch.zeros(3, 1, 2)}
    sampling = SamplingConfig(sampler="ddim", steps=5, guidance_scale=2.0)
    model = CountingModel()
    sample(model, diffusion, SHAPE, sampling, cond, uncond, torch.Generator().manual_seed(0), "cpu")
    assert model.batch_sizes == [6] * 5


def test_sampler_errors_name_the_bad_value() -> None:
    diffusion = linear_diffusion(timesteps=100)
    with pytest.raises(UserError, match="sampling.guidance_scale=3.0 needs a conditional model"):
        sample(stub_model, diffusion, SHAPE, SamplingConfig(guidance_scale=3.0), None, None, None, "cpu")
    with pytest.raises(ConfigError, match=r"sampling.steps=200 exceeds diffusion.timesteps=100; allowed: 1..100"):
        sample(stub_model, diffusion, SHAPE, SamplingConfig(steps=200), None, None, None, "cpu")
