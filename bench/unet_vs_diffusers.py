"""Our UNet against diffusers' UNet2DModel / UNet2DConditionModel at a matched architecture, and DDIM against
diffusers' DDIMScheduler loop with the same network.

Matched: channels, levels, ResBlocks per level, attention placement and heads, scale-shift timestep conditioning,
1e-6 GroupNorm eps; parameter counts must agree within 5%. The one difference diffusers cannot express is the
GroupNorm group count: it takes one for all layers (32, or fewer when the base width is not a multiple of 32),
ours keeps at least 4 channels per group (16 groups at 64 channels). Ratios come from interleaved runs: `ratio` is
the median over repeats of diffusers' time over ours, `ratio_best` diffusers' fastest run over ours (> 1: ours is
faster).

    python -m bench.unet_vs_diffusers                       # latents 8x8x4 and 16x16x4, batch 32, 2 threads
    python -m bench.unet_vs_diffusers --device cuda --bf16 --channels-last --compile --peak-tflops 989
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel
from torch import nn

from bench.harness import (
    Report,
    Row,
    SpeedSettings,
    add_common_arguments,
    add_speed_arguments,
    best_ratio,
    interleaved_times,
    positive_ints,
    run_script,
    setup,
    speed_ratio,
    spread,
)
from evaluation.cost import forward_gflops
from ldm.config import DiffusionConfig, SamplingConfig, UNetConfig
from ldm.diffusion.process import GaussianDiffusion
from ldm.diffusion.samplers import sample
from ldm.diffusion.unet import UNet
from ldm.errors import UserError

MAX_GROUPS = 32
PARAMETER_TOLERANCE = 0.05
CONTEXT_TOKENS = 16  # the text conditioner's default max_tokens
LEARNING_RATE = 1e-4
SAMPLER_ALONE_REPEATS = 30
Denoise = Callable[..., torch.Tensor]


class DiffusersDenoiser(nn.Module):
    """A diffusers UNet behind our call signature `(x, t, context=None) -> eps`."""

    def __init__(self, unet: UNet2DModel | UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            return self.unet(x, t, return_dict=False)[0]
        return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]


def _block_types(cfg: UNetConfig, attention_kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down and up block names per level: `<kind>DownBlock2D` where the level has attention."""
    down = tuple(f"{attention_kind if level in cfg.attention_resolutions else ''}DownBlock2D"
                 for level in range(1, len(cfg.channel_mult) + 1))
    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    return down, up


def diffusers_unet(cfg: UNetConfig, channels: int, context_dim: int | None) -> DiffusersDenoiser:
    """The diffusers model with our architecture (see the module docstring for the one difference)."""
    widths = tuple(cfg.base_channels * mult for mult in cfg.channel_mult)
    common = {"in_channels": channels, "out_channels": channels, "block_out_channels": widths,
              "layers_per_block": cfg.num_res_blocks, "norm_num_groups": math.gcd(MAX_GROUPS, cfg.base_channels),
              "norm_eps": 1e-6, "resnet_time_scale_shift": "scale_shift", "flip_sin_to_cos": True, "freq_shift": 0,
              "dropout": cfg.dropout}
    if context_dim is None:
        down, up = _block_types(cfg, "Attn")
        # UNet2DModel takes one head width for every attention block (the middle one included), ours one head count.
        attended = {widths[level - 1] for level in cfg.attention_resolutions} | {widths[-1]}
        if len(attended) > 1:
            raise UserError(f"attention at levels {cfg.attention_resolutions} spans widths {sorted(attended)}; "
                            "UNet2DModel cannot give each the same head count; allowed: attention levels whose "
                            f"width equals the bottom width {widths[-1]}")
        model = UNet2DModel(down_block_types=down, up_block_types=up, attention_head_dim=widths[-1] // cfg.num_heads,
                            **common)
    else:
        down, up = _block_types(cfg, "CrossAttn")
        # UNet2DConditionModel's `attention_head_dim` is, despite its name, the number of heads.
        model = UNet2DConditionModel(down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
                                     attention_head_dim=cfg.num_heads, cross_attention_dim=context_dim,
                                     transformer_layers_per_block=cfg.transformer_depth, **common)
    return DiffusersDenoiser(model)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise_zero_parameters(module: nn.Module, seed: int) -> None:
    """Give zero-initialised layers small random weights, so outputs (and the sampler check) are not trivially 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))


@dataclass(frozen=True)
class Pair:
    """Our UNet and the matched diffusers UNet (both moved and laid out by the speed settings)."""

    kind: str
    ours: nn.Module
    diffusers: nn.Module
    context_dim: int | None

    def check_match(self) -> Row:
        ours, theirs = parameter_count(self.ours), parameter_count(self.diffusers)
        if abs(ours / theirs - 1) > PARAMETER_TOLERANCE:
            raise UserError(f"{self.kind}: {ours} parameters against diffusers' {theirs}, more than "
                            f"{PARAMETER_TOLERANCE:.0%} apart; the architectures do not match")
        return {"model": self.kind, "ours_params": ours, "diffusers_params": theirs,
                "difference_%": round(100 * (ours / theirs - 1), 3)}


def build_pairs(cfg: UNetConfig, channels: int, settings: SpeedSettings) -> list[Pair]:
    pairs = []
    for kind, context_dim in (("unconditional", None), ("cross-attention", cfg.context_dim)):
        torch.manual_seed(0)
        ours = UNet(cfg, channels, channels, context_dim)
        randomise_zero_parameters(ours, seed=0)
        theirs = diffusers_unet(cfg, channels, context_dim)
        pairs.append(Pair(kind, settings.module(ours), settings.module(theirs), context_dim))
    return pairs


def forward_case(model: Denoise, inputs: tuple[torch.Tensor | None, ...],
                 settings: SpeedSettings) -> Callable[[], None]:
    """One no-grad forward pass, as sampling runs it."""

    @torch.no_grad()
    def run() -> None:
        with settings.autocast():
            model(*inputs)

    return run


def train_case(model: Denoise, parameters: list[nn.Parameter], inputs: tuple[torch.Tensor | None, ...],
               target: torch.Tensor, settings: SpeedSettings) -> Callable[[], None]:
    """One optimisation step: forward, MSE to the target, backward, AdamW."""
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with settings.autocast():
            loss = F.mse_loss(model(*inputs).float(), target)
        loss.backward()
        optimizer.step()

    return run


def ddim_scheduler(cfg: DiffusionConfig) -> DDIMScheduler:
    """diffusers' DDIM with our schedule and conventions: no clipping, final alpha_bar = 1, `leading` spacing."""
    return DDIMScheduler(num_train_timesteps=cfg.timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                         beta_schedule=cfg.schedule, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                         prediction_type=cfg.prediction, timestep_spacing=cfg.sampling.timestep_spacing)


def our_sampler(denoise: Denoise, diffusion: GaussianDiffusion, sampling: SamplingConfig,
                x_T: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: sample(lambda x, t, cond: denoise(x, t), diffusion, tuple(x_T.shape), sampling, None, None, None,
                          x_T.device, x_T=x_T)


def diffusers_sampler(denoise: Denoise, scheduler: DDIMScheduler, steps: int,
                      x_T: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The loop of diffusers' DDIMPipeline (set_timesteps, then model and scheduler.step per timestep)."""

    @torch.no_grad()
    def run() -> torch.Tensor:
        scheduler.set_timesteps(steps, device=x_T.device)
        x = x_T
        for t in scheduler.timesteps:
            x = scheduler.step(denoise(x, t.expand(len(x))).to(x.dtype), t, x).prev_sample
        return x

    return run


def autocast_denoiser(model: Denoise, settings: SpeedSettings) -> Denoise:
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with settings.autocast():
            return model(x, t)

    return denoise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=6)  # even: ours and diffusers run first equally often
    add_speed_arguments(parser)
    parser.add_argument("--sizes", type=positive_ints, default=[8, 16], help="latent sides, e.g. 8,16")
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--channel-mult", type=positive_ints, default=[1, 2, 2])
    parser.add_argument("--num-res-blocks", type=int, default=1)
    parser.add_argument("--attention-levels", type=positive_ints, default=[2], help="levels with attention (1 = input)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context-dim", type=int, default=128)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--sample-sizes", type=positive_ints, default=[8],
                        help="latent sides at which to time sampling (unconditional UNet); default 8")
    parser.add_argument("--sample-repeats", type=int, default=4, help="even, so each sampler runs first equally often")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak (989 for H100/H200 SXM): prints model FLOP utilisation")
    return parser.parse_args(argv)


def unet_config(args: argparse.Namespace) -> UNetConfig:
    """The architecture under test, validated as the suite's own config validates it."""
    cfg = DiffusionConfig(unet=UNetConfig(base_channels=args.base_channels, channel_mult=args.channel_mult,
                                          num_res_blocks=args.num_res_blocks,
                                          attention_resolutions=args.attention_levels, num_heads=args.heads,
                                          context_dim=args.context_dim))
    return cfg.unet


def time_network(pairs: list[Pair], size: int, args: argparse.Namespace, settings: SpeedSettings,
                 report: Report) -> list[Row]:
    """Forward and training-step rows for every model pair at one latent size."""
    device = settings.device
    x = settings.tensor(torch.randn(args.batch, args.latent_channels, size, size))
    t = torch.randint(0, 1000, (args.batch,), device=device)
    target = settings.tensor(torch.randn_like(x))
    rows = []
    for pair in pairs:
        context = None if pair.context_dim is None else torch.randn(args.batch, CONTEXT_TOKENS, pair.context_dim,
                                                                    device=device)
        inputs = (x, t, context)
        gflops = {name: forward_gflops(model, *inputs) for name, model in (("ours", pair.ours),
                                                                           ("diffusers", pair.diffusers))}
        runners = {"ours": settings.runner(pair.ours), "diffusers": settings.runner(pair.diffusers)}
        models = {"ours": pair.ours, "diffusers": pair.diffusers}
        for mode in ("forward", "train"):
            cases = {name: (forward_case(runners[name], inputs, settings) if mode == "forward" else
                            train_case(runners[name], list(models[name].parameters()), inputs, target, settings))
                     for name in ("ours", "diffusers")}
            times = interleaved_times(cases, device, args.repeats, args.warmup)
            flops = gflops["ours"] * (3 if mode == "train" else 1) * 1e9
            achieved = flops / statistics.median(times["ours"]) / 1e12
            row: Row = {"latent": f"{size}x{size}x{args.latent_channels}", "model": pair.kind, "pass": mode,
                        "ours_ms": spread(times["ours"]), "diffusers_ms": spread(times["diffusers"]),
                        "ratio": round(speed_ratio(times["diffusers"], times["ours"]), 3),
                        "ratio_best": round(best_ratio(times["diffusers"], times["ours"]), 3),
                        "ours_img_s": round(args.batch / statistics.median(times["ours"]), 1),
                        "gflop_ours/diffusers": f"{gflops['ours']:.2f}/{gflops['diffusers']:.2f}",
                        "ours_tflop_s": round(achieved, 4)}
            if args.peak_tflops:
                row["ours_mfu_%"] = round(100 * achieved / args.peak_tflops, 2)
            rows.append(row)
            report.details.setdefault("times_s", {})[f"{size}/{pair.kind}/{mode}"] = times
            print(f"  {size}x{size} {pair.kind} {mode}: ratio {row['ratio']}", file=sys.stderr, flush=True)
    return rows


def time_sampling(unet: nn.Module, size: int, args: argparse.Namespace, settings: SpeedSettings,
                  report: Report) -> list[Row]:
    """DDIM with our sampler against diffusers' loop, with our UNet and with no network (the sampler alone)."""
    diffusion_cfg = DiffusionConfig(sampling=SamplingConfig(sampler="ddim", steps=args.ddim_steps))
    diffusion = GaussianDiffusion.from_config(diffusion_cfg)
    scheduler = ddim_scheduler(diffusion_cfg)
    x_T = settings.tensor(torch.randn(args.batch, args.latent_channels, size, size,
                                      generator=torch.Generator().manual_seed(1)))
    network = autocast_denoiser(settings.runner(unet), settings)
    rows = []
    # Without a network a run takes milliseconds: many repeats cost little and steady the median.
    for label, denoise, repeats in (("our UNet", network, args.sample_repeats),
                                    ("no network (sampler alone)", lambda x, t: 0.1 * x, SAMPLER_ALONE_REPEATS)):
        cases = {"ours": our_sampler(denoise, diffusion, diffusion_cfg.sampling, x_T),
                 "diffusers": diffusers_sampler(denoise, scheduler, args.ddim_steps, x_T)}
        difference = (cases["ours"]() - cases["diffusers"]()).abs().max().item()
        times = interleaved_times(cases, settings.device, repeats, warmup=0)
        rows.append({"latent": f"{size}x{size}x{args.latent_channels}", "denoiser": label,
                     "steps": args.ddim_steps, "ours_ms": spread(times["ours"]),
                     "diffusers_ms": spread(times["diffusers"]),
                     "ratio": round(speed_ratio(times["diffusers"], times["ours"]), 3),
                     "ratio_best": round(best_ratio(times["diffusers"], times["ours"]), 3),
                     "ours_img_s": round(args.batch / statistics.median(times["ours"]), 1),
                     "max_abs_diff": f"{difference:.1e}"})
        report.details.setdefault("times_s", {})[f"{size}/sampling/{label}"] = times
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    settings = SpeedSettings.from_args(args, device)
    report = Report("unet_vs_diffusers", args, device)
    cfg = unet_config(args)
    pairs = build_pairs(cfg, args.latent_channels, settings)
    report.table("Matched architectures (parameter counts)", [pair.check_match() for pair in pairs])
    report.note(f"batch {args.batch}, AdamW, {settings.describe()}; ms = median (min-max) of {args.repeats} "
                "interleaved repeats; ratio = median of paired diffusers/ours (> 1: ours faster); ratio_best = "
                "diffusers' fastest run over ours")
    rows = [row for size in args.sizes for row in time_network(pairs, size, args, settings, report)]
    report.table("UNet forward and training step: ours vs diffusers", rows)
    sampling = [row for size in args.sample_sizes for row in time_sampling(pairs[0].ours, size, args, settings,
                                                                           report)]
    report.table(f"DDIM {args.ddim_steps} steps, batch {args.batch}: ldm.diffusion.samplers.sample vs "
                 "diffusers DDIMScheduler loop (same network)", sampling)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
