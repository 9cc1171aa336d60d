"""What `training.diffusion.cache_latents` saves: the diffusion training step on cached posteriors against the
step that encodes every batch, at f = 4 and f = 8.

Both cases run the loop's own update (`ldm.training.loop._optimise`: DiffusionStep losses, gradients, clipping,
AdamW) on the same batch with the same per-sample noise; the cached case reads the batch's posterior moments
(as `CachedLatents` yields them) instead of encoding its images. The first stage is the default
`AutoencoderConfig` (KL, c = 4) and the UNet the default `UNetConfig`, as in `bench.cost_vs_f`.

    python -m bench.latent_cache                      # 64x64 RGB, batch 8, 2 threads
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from collections.abc import Callable

from dataclasses import dataclass

import torch
from torch import nn

from bench.harness import Report, Row, add_common_arguments, interleaved_times, positive_ints, run_script, setup
from ldm.config import ExperimentConfig, Override, load_config
from ldm.diffusion.conditioning import DatasetInfo, DatasetSummary
from ldm.diffusion.process import GaussianDiffusion
from ldm.distributed import Ranks
from ldm.first_stage import build_first_stage
from ldm.first_stage.regularizers import DiagonalGaussian
from ldm.training.diffusion_stage import DiffusionStep
from ldm.training.latent_cache import LOGVAR_KEY, MEAN_KEY
from ldm.training.loop import _optimise
from ldm.training.pipeline import LatentDiffusionPipeline, build_denoiser
from ldm.training.sharding import BatchLayout


def experiment(f: int, args: argparse.Namespace) -> ExperimentConfig:
    return load_config(preset="tiny", overrides=[
        Override("data.resolution", args.resolution), Override("data.channels", 3), Override("autoencoder.f", f),
        Override("autoencoder.latent_channels", 4), Override("autoencoder.base_channels", 32),
        Override("autoencoder.channel_mult", [1, 2, 2, 4]), Override("diffusion.unet.base_channels", 64),
        Override("diffusion.unet.channel_mult", [1, 2, 2]), Override("diffusion.unet.attention_resolutions", [2]),
        Override("training.diffusion.batch_size", args.batch)])


@dataclass(frozen=True)
class TrainingSteps:
    """The loop's update on one batch of images and on the same batch's cached moments, and what it trains."""

    updates: dict[str, Callable[[], object]]
    denoiser: nn.Module
    latents: torch.Tensor  # the batch's posterior means: the UNet's input shape


def training_steps(f: int, args: argparse.Namespace, device: torch.device, ranks: Ranks = Ranks()) -> TrainingSteps:
    """The two updates of a global batch of `args.batch` split over `ranks` (this process's share)."""
    cfg = experiment(f, args)
    torch.manual_seed(0)
    first_stage = build_first_stage(cfg.autoencoder, 3).to(device).eval().requires_grad_(False)
    info = DatasetInfo(num_classes=0, latent_shape=first_stage.latent_shape(args.resolution))
    denoiser = build_denoiser(cfg, info).to(device)
    pipeline = LatentDiffusionPipeline(first_stage=first_stage, denoiser=denoiser,
                                       diffusion=GaussianDiffusion.from_config(cfg.diffusion), scale_factor=1.0,
                                       config=cfg, dataset=DatasetSummary([], [], [], []),
                                       device=device)
    step = DiffusionStep(pipeline, denoiser, p_uncond=0.0, seed=0)
    settings = cfg.training.diffusion
    layout = BatchLayout.of(settings, ranks, "diffusion")
    optimizers = {"model": torch.optim.AdamW(denoiser.parameters(), lr=settings.lr, fused=True)}
    groups = step.parameter_groups()
    images = torch.rand(layout.micro_size, 3, args.resolution, args.resolution, device=device) * 2 - 1
    with torch.no_grad():
        posterior = first_stage.encode(images)
    assert isinstance(posterior, DiagonalGaussian)
    batches = {"encode every step": {"image": images},
               "cached latents": {MEAN_KEY: posterior.mean, LOGVAR_KEY: posterior.logvar}}

    def update(batch: dict[str, torch.Tensor]) -> Callable[[], object]:
        return lambda: _optimise(step, itertools.repeat(batch), layout, 1, 0, settings, optimizers, groups, device)

    return TrainingSteps({f"{f}/{name}": update(batch) for name, batch in batches.items()}, denoiser,
                         posterior.mean)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=10, warmup=2)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--factors", type=positive_ints, default=[4, 8])
    parser.add_argument("--batch", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    report = Report("latent_cache", args, device)
    cases: dict[str, Callable[[], object]] = {}
    for f in args.factors:
        cases |= training_steps(f, args, device).updates
    print(f"timing {len(cases)} cases x {args.repeats} repeats ...", file=sys.stderr, flush=True)
    times = interleaved_times(cases, device, args.repeats, args.warmup)
    rows: list[Row] = []
    for f in args.factors:
        uncached, cached = times[f"{f}/encode every step"], times[f"{f}/cached latents"]
        ratios = [u / c for u, c in zip(uncached, cached, strict=True)]
        rows.append({"f": f, "encode_every_step_ms": round(statistics.median(uncached) * 1e3, 1),
                     "cached_ms": round(statistics.median(cached) * 1e3, 1),
                     "speed-up (median of paired ratios)": round(statistics.median(ratios), 2),
                     "speed-up (fastest runs)": round(min(uncached) / min(cached), 2)})
    report.details["times_s"] = times
    report.note(f"{args.resolution}x{args.resolution}x3 images, batch {args.batch}, default KL first stage (c = 4), "
                "default UNet; one optimiser step of the training loop per call, interleaved")
    report.table("Diffusion training step: cached posteriors against encoding every batch", rows)
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
