"""Reverse-process samplers: DDPM ancestral and DDIM, with classifier-free guidance on the model output.

`model_fn(x, t, cond)` returns the network output in the diffusion's parameterisation; `cond` and `uncond`
are opaque condition dicts (`context` (B, L, D) and/or `concat` (B, C', h, w)) that are only concatenated
along the batch here. Every random draw comes from the given generator, so a seed fixes the samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from tqdm.auto import tqdm

from ldm.config import SamplingConfig
from ldm.diffusion.conditioning import Condition
from ldm.diffusion.process import GaussianDiffusion
from ldm.errors import ConfigError, UserError

DenoiserFn = Callable[[torch.Tensor, torch.Tensor, Condition | None], torch.Tensor]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
StepFn = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: TimestepSpacing) -> torch.Tensor:
    """The K = steps timesteps visited by DDIM, descending, as diffusers' DDIMScheduler.set_timesteps defines them."""
    if steps > num_train_timesteps:
        raise ConfigError(f"sampling.steps={steps} exceeds diffusion.timesteps={num_train_timesteps}; "
                          f"allowed: 1..{num_train_timesteps}")
    match spacing:
        case "leading":
            ts = torch.arange(steps, dtype=torch.float64) * (num_train_timesteps // steps)
        case "trailing":
            ts = torch.round(num_train_timesteps - torch.arange(steps, dtype=torch.float64)
                             * (num_train_timesteps / steps)) - 1
        case "linspace":
            ts = torch.round(torch.linspace(0, num_train_timesteps - 1, steps, dtype=torch.float64))
    return ts.long().sort(descending=True).values


def concat_conditions(cond: Condition, uncond: Condition) -> Condition:
    """[cond; uncond] along the batch, key by key."""
    if cond.keys() != uncond.keys():
        raise ValueError(f"cond keys {sorted(cond)} differ from uncond keys {sorted(uncond)}")
    return {key: torch.cat([cond[key], uncond[key]]) for key in cond}


def guided_output(model_fn: DenoiserFn, x: torch.Tensor, t: torch.Tensor, cond: Condition | None,
                  uncond: Condition | None, guidance_scale: float) -> torch.Tensor:
    """uncond + s * (cond - uncond) from one batched forward of [cond; uncond]; s = 1 runs the conditional pass only."""
    if guidance_scale == 1.0:
        return model_fn(x, t, cond)
    if cond is None or uncond is None:
        raise UserError(f"sampling.guidance_scale={guidance_scale} needs a conditional model and its null "
                        "condition; allowed for unconditional models: 1.0")
    both = model_fn(torch.cat([x, x]), torch.cat([t, t]), concat_conditions(cond, uncond))
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """N(0, I) drawn on the generator's device, then moved, so a CPU generator gives the same numbers on any device."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def ddim_step(diffusion: GaussianDiffusion, output: torch.Tensor, x: torch.Tensor, t: int, t_prev: int,
              eta: float, generator: torch.Generator | None, clip_denoised: bool = False) -> torch.Tensor:
    """x_{t_prev} from x_t (Song et al. 2021, Eq. 12); t_prev < 0 means the final alpha_bar = 1."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    x0, eps = diffusion.predict_x0_and_eps(x, t_batch, output, clip_denoised)
    alpha = diffusion.alphas_cumprod[t].item()
    alpha_prev = diffusion.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    sigma = eta * ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)) ** 0.5
    x_prev = alpha_prev**0.5 * x0 + (1 - alpha_prev - sigma**2) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * standard_normal(tuple(x.shape), generator, x.device)
    return x_prev


def ddpm_step(diffusion: GaussianDiffusion, output: torch.Tensor, x: torch.Tensor, t: int,
              generator: torch.Generator | None, clip_denoised: bool = False) -> torch.Tensor:
    """Ancestral step: a draw from q(x_{t-1} | x_t, predicted x_0) with the posterior variance; the mean at t = 0."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    x0, _ = diffusion.predict_x0_and_eps(x, t_batch, output, clip_denoised)
    mean, _, log_variance = diffusion.q_posterior_mean_variance(x0, x, t_batch)
    if t == 0:
        return mean
    return mean + (0.5 * log_variance).exp() * standard_normal(tuple(x.shape), generator, x.device)


def timestep_pairs(diffusion: GaussianDiffusion, sampling: SamplingConfig) -> list[tuple[int, int]]:
    """(t, t_prev) for every step: all T steps for DDPM, K spaced steps for DDIM (t_prev = the next one visited).

    diffusers' DDIM takes t_prev = t - T // K instead, which coincides for `leading` and, when K divides T,
    for `trailing`; for `linspace` the next visited timestep is the consistent choice.
    """
    match sampling.sampler:
        case "ddpm":
            ts = list(range(diffusion.num_timesteps - 1, -1, -1))
        case "ddim":
            ts = ddim_timesteps(diffusion.num_timesteps, sampling.steps, sampling.timestep_spacing).tolist()
    return list(zip(ts, [*ts[1:], -1], strict=True))


def step_function(diffusion: GaussianDiffusion, sampling: SamplingConfig, generator: torch.Generator | None,
                  clip_denoised: bool) -> StepFn:
    """The configured sampler's update as `step(output, x, t, t_prev) -> x_prev`."""
    match sampling.sampler:
        case "ddpm":
            return lambda output, x, t, t_prev: ddpm_step(diffusion, output, x, t, generator, clip_denoised)
        case "ddim":
            return lambda output, x, t, t_prev: ddim_step(diffusion, output, x, t, t_prev, sampling.eta, generator,
                                                          clip_denoised)


@torch.no_grad()
def sample(model_fn: DenoiserFn, diffusion: GaussianDiffusion, shape: tuple[int, ...], sampling: SamplingConfig,
           cond: Condition | None, uncond: Condition | None, generator: torch.Generator | None,
           device: torch.device | str, progress: bool = False, *, x_T: torch.Tensor | None = None,
           clip_denoised: bool = False) -> torch.Tensor:
    """Run the reverse process from x_T (default: N(0, I) from the generator) to x_0 of the given shape."""
    if x_T is not None and tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    device = torch.device(device)
    x = x_T.to(device=device, dtype=torch.float32) if x_T is not None else standard_normal(shape, generator, device)
    step = step_function(diffusion, sampling, generator, clip_denoised)
    for t, t_prev in tqdm(timestep_pairs(diffusion, sampling), desc=sampling.sampler, disable=not progress):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
        output = guided_output(model_fn, x, t_batch, cond, uncond, sampling.guidance_scale).to(x.dtype)
        x = step(output, x, t, t_prev)
    return x
