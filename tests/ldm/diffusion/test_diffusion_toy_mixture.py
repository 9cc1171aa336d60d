"""A learned end-to-end check: a tiny MLP denoiser trained on a 2-D Gaussian mixture samples its modes and weights."""


import pytest
import torch
from torch import nn

from ldm.config import DiffusionConfig, SamplingConfig
from ldm.diffusion.process import GaussianDiffusion
from ldm.diffusion.samplers import sample
from ldm.diffusion.unet import timestep_embedding

MEANS = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])
WEIGHTS = torch.tensor([0.1, 0.2, 0.3, 0.4])
STD = 0.25
EMBED_DIM, WIDTH = 32, 128
TRAIN_STEPS, BATCH, LR = 1000, 512, 3e-3
NUM_SAMPLES = 4000
STRAGGLER_RADIUS = 4 * STD


def draw_mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    component = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    return MEANS[component] + STD * torch.randn(n, 2, generator=generator)


class MixtureDenoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + EMBED_DIM, WIDTH), nn.SiLU(), nn.Linear(WIDTH, WIDTH), nn.SiLU(),
                                 nn.Linear(WIDTH, WIDTH), nn.SiLU(), nn.Linear(WIDTH, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        return self.net(torch.cat([x, timestep_embedding(t, EMBED_DIM)], dim=1))


def train_denoiser(diffusion: GaussianDiffusion, seed: int) -> MixtureDenoiser:
    torch.manual_seed(seed)
    model = MixtureDenoiser()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=TRAIN_STEPS, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(TRAIN_STEPS):
        x0 = draw_mixture(BATCH, generator)
        t = torch.randint(0, diffusion.num_timesteps, (BATCH,), generator=generator)
        loss = diffusion.training_loss(model, x0, t, torch.randn(BATCH, 2, generator=generator)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def mixture_fit(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Weights and means of the samples assigned to their nearest mode, and the fraction far from every mode."""
    distances = torch.cdist(samples, MEANS)
    nearest = distances.argmin(dim=1)
    weights = torch.bincount(nearest, minlength=len(MEANS)).float() / len(samples)
    means = torch.stack([samples[nearest == k].mean(0) for k in range(len(MEANS))])
    stragglers = (distances.min(dim=1).values > STRAGGLER_RADIUS).float().mean().item()
    return weights, means, stragglers


@pytest.fixture(scope="module")
def trained() -> tuple[GaussianDiffusion, MixtureDenoiser]:
    # 100 steps of LDM's sqrt-linear schedule with a 10x beta range: alpha_bar_T = 2e-4, close to pure noise.
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(
        schedule="scaled_linear", beta_start=0.015, beta_end=0.195, timesteps=100, prediction="epsilon"))
    return diffusion, train_denoiser(diffusion, seed=0)


# Tolerances about 1.5-2x the worst seen over training seeds 0-4 (weight error / mean error / stragglers):
# DDPM 0.019 / 0.046 / 0.7%, DDIM-25 0.023 / 0.099 / 4.1%. The deterministic DDIM ODE leaves more samples
# between modes than ancestral sampling does.
@pytest.mark.parametrize(("sampling", "weight_tol", "mean_tol", "straggler_max"), [
    (SamplingConfig(sampler="ddpm"), 0.035, 0.08, 0.015),
    (SamplingConfig(sampler="ddim", steps=25), 0.04, 0.15, 0.07),
], ids=["ddpm", "ddim25"])
def test_samples_match_the_mixture(trained: tuple[GaussianDiffusion, MixtureDenoiser], sampling: SamplingConfig,
                                   weight_tol: float, mean_tol: float, straggler_max: float) -> None:
    diffusion, model = trained
    samples = sample(model, diffusion, (NUM_SAMPLES, 2), sampling, None, None, torch.Generator().manual_seed(1),
                     "cpu")
    weights, means, stragglers = mixture_fit(samples)
    torch.testing.assert_close(weights, WEIGHTS, atol=weight_tol, rtol=0)
    torch.testing.assert_close(means, MEANS, atol=mean_tol, rtol=0)
    assert stragglers < straggler_max
