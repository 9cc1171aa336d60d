"""What the first-stage factor f costs at a fixed image resolution: the paper's claim that latent diffusion cuts
compute, measured.

For each f, one fixed UNet (the default `UNetConfig`) works on (c, H/f, W/f) latents (c = the image channels at
f = 1, where the first stage is the identity). Timed per batch: the first-stage encode, the UNet training step
(forward, loss, backward, AdamW), DDIM sampling of the latents, and the decode, interleaved over all f. Peak
memory is measured per f and phase: CUDA max allocated above the allocation before the phase, or on the CPU, in
a fresh process each, the growth of the resident set (peak RSS, reset just before the phase, minus RSS then; Linux).

    python -m bench.cost_vs_f                                   # 64x64 RGB, batch 8, DDIM 10 steps, 2 threads
    python -m bench.cost_vs_f --device cuda --resolution 256 --batch 16 --ddim-steps 50 --bf16 --channels-last
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from bench.harness import (
    Report,
    Row,
    SpeedSettings,
    add_common_arguments,
    add_speed_arguments,
    interleaved_times,
    positive_ints,
    run_script,
    setup,
)
from evaluation.cost import PeakMemory, cpu_peak_resettable, forward_gflops
from ldm.config import AutoencoderConfig, DiffusionConfig, SamplingConfig, UNetConfig
from ldm.diffusion.process import GaussianDiffusion
from ldm.diffusion.samplers import sample
from ldm.diffusion.unet import UNet
from ldm.errors import UserError
from ldm.first_stage import FirstStage, build_first_stage
from ldm.first_stage.autoencoder import Autoencoder
from ldm.training.pipeline import encode_latents

Phase = Literal["train", "sample"]
PHASES: tuple[Phase, ...] = ("train", "sample")
STAGES = ("encode", "train", "sample", "decode")
LEARNING_RATE = 1e-4


@dataclass
class FactorModels:
    """The first stage of factor f, the fixed UNet on its latents, and a batch of images and latents."""

    f: int
    first_stage: FirstStage
    unet: UNet
    diffusion: GaussianDiffusion
    sampling: SamplingConfig
    settings: SpeedSettings
    images: torch.Tensor
    latents: torch.Tensor

    @classmethod
    def build(cls, f: int, args: argparse.Namespace, settings: SpeedSettings) -> FactorModels:
        torch.manual_seed(f)
        first_stage = build_first_stage(AutoencoderConfig(f=f, latent_channels=args.latent_channels),
                                        args.image_channels)
        settings.module(first_stage).eval().requires_grad_(False)
        channels = first_stage.latent_shape(args.resolution)[0]
        unet = settings.module(UNet(UNetConfig(), channels, channels))
        images = settings.tensor(torch.rand(args.batch, args.image_channels, args.resolution, args.resolution) * 2 - 1)
        diffusion_cfg = DiffusionConfig(sampling=SamplingConfig(sampler="ddim", steps=args.ddim_steps))
        with settings.autocast():
            latents = encode_latents(first_stage, images, 1.0,
                                     posterior_noise=torch.randn(len(images), *first_stage.latent_shape(args.resolution),
                                                                 device=images.device)).float()
        return cls(f, first_stage, unet, GaussianDiffusion.from_config(diffusion_cfg), diffusion_cfg.sampling,
                   settings, images, latents)

    def encode(self) -> torch.Tensor:
        with self.settings.autocast():
            noise = torch.randn(len(self.images), *self.latents.shape[1:], device=self.images.device)
            return encode_latents(self.first_stage, self.images, 1.0, posterior_noise=noise)

    @torch.no_grad()
    def decode(self) -> torch.Tensor:
        with self.settings.autocast():
            return self.first_stage.decode(self.latents)

    def train_step(self, model: Callable[..., torch.Tensor]) -> Callable[[], None]:
        """One UNet optimisation step on the batch's latents (the first stage is frozen and not included)."""
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=LEARNING_RATE)
        generator = torch.Generator(self.latents.device).manual_seed(0)

        def run() -> None:
            t = torch.randint(0, self.diffusion.num_timesteps, (len(self.latents),), device=self.latents.device,
                              generator=generator)
            noise = torch.randn(self.latents.shape, device=self.latents.device, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            with self.settings.autocast():
                loss = self.diffusion.training_loss(model, self.latents, t, noise).mean()
            loss.backward()
            optimizer.step()

        return run

    def sampler(self, model: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        """DDIM from noise to latents of the batch's shape (decoding is timed on its own)."""

        def denoise(x: torch.Tensor, t: torch.Tensor, cond: None) -> torch.Tensor:
            with self.settings.autocast():
                return model(x, t)

        generator = torch.Generator().manual_seed(0)
        return lambda: sample(denoise, self.diffusion, tuple(self.latents.shape), self.sampling, None, None,
                              generator, self.latents.device)

    def cases(self) -> dict[str, Callable[[], object]]:
        model = self.settings.runner(self.unet)
        return {"encode": self.encode, "train": self.train_step(model), "sample": self.sampler(model),
                "decode": self.decode}

    def gflops_per_image(self) -> dict[str, float]:
        """Forward GFLOPs of one image through the UNet (one step) and through the encoder and decoder."""
        one_image, one_latent = self.images[:1], self.latents[:1]
        t = torch.zeros(1, dtype=torch.long, device=one_latent.device)
        costs = {"unet": forward_gflops(self.unet, one_latent, t)}
        if isinstance(self.first_stage, Autoencoder):
            costs["encode"] = forward_gflops(self.first_stage.encoder, one_image)
            costs["decode"] = forward_gflops(self.first_stage.decoder, one_latent)
        return costs


def peak_memory_of_phase(f: int, phase: Phase, args: argparse.Namespace) -> float:
    """MB that one call of `phase` (train: encode + step; sample: DDIM + decode) adds at its peak.

    On the CPU this runs in a fresh process: memory freed by an earlier phase can stay resident (allocator caches)
    and hide what the next one needs.
    """
    device = setup(args)
    models = FactorModels.build(f, args, SpeedSettings.from_args(args, device))
    cases = models.cases()
    if device.type == "cpu" and not cpu_peak_resettable():
        raise UserError("measuring CPU peak memory needs Linux's /proc/self/clear_refs; allowed elsewhere: --no-memory")
    memory = PeakMemory(device)
    for stage in (("encode", "train") if phase == "train" else ("sample", "decode")):
        cases[stage]()
    peak, start = memory.peak_mb(), memory.start_mb
    assert peak is not None and start is not None  # CUDA, or a CPU whose peak resets (checked above)
    return peak - start


def measure_peak_memory(args: argparse.Namespace, device: torch.device) -> dict[tuple[int, Phase], float]:
    """Peak memory of every (f, phase), one after another; on the CPU each in a new spawned process."""
    if device.type == "cuda":  # CUDA's caching allocator counts allocated bytes exactly: no fresh process needed
        return {(f, phase): peak_memory_of_phase(f, phase, args) for f in args.factors for phase in PHASES}
    context = multiprocessing.get_context("spawn")
    peaks = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for f in args.factors:
            for phase in PHASES:
                peaks[f, phase] = pool.submit(peak_memory_of_phase, f, phase, args).result()
                print(f"  f={f} {phase}: peak +{peaks[f, phase]:.0f} MB", file=sys.stderr, flush=True)
    return peaks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=3)
    add_speed_arguments(parser)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--factors", type=positive_ints, default=[1, 2, 4, 8, 16])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-channels", type=int, choices=[1, 3], default=3)
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--ddim-steps", type=int, default=10, help="sampling time grows linearly with it")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory runs")
    args = parser.parse_args(argv)
    for f in args.factors:
        AutoencoderConfig(f=f)  # a power of two, or a readable error
        if args.resolution % f or args.resolution // f < 4:
            raise UserError(f"--factors includes f={f}, which does not give latents of at least 4x4 at "
                            f"--resolution={args.resolution}; allowed: powers of two up to {args.resolution // 4}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    settings = SpeedSettings.from_args(args, device)
    report = Report("cost_vs_f", args, device)
    all_models = {f: FactorModels.build(f, args, settings) for f in args.factors}
    cases = {f"{f}/{stage}": case for f, models in all_models.items() for stage, case in models.cases().items()}
    print(f"timing {len(cases)} cases x {args.repeats} repeats ...", file=sys.stderr, flush=True)
    times = interleaved_times(cases, device, args.repeats, args.warmup)
    median_ms = {name: statistics.median(seconds) * 1e3 for name, seconds in times.items()}
    peaks = {} if args.no_memory else measure_peak_memory(args, device)

    baseline = args.factors[0]
    rows: list[Row] = []
    for f, models in all_models.items():
        ms = {stage: median_ms[f"{f}/{stage}"] for stage in STAGES}
        gflops = models.gflops_per_image()
        train_total, sample_total = ms["encode"] + ms["train"], ms["sample"] + ms["decode"]
        base = {stage: median_ms[f"{baseline}/{stage}"] for stage in STAGES}
        rows.append({
            "f": f, "latent": "x".join(map(str, models.latents.shape[1:])),
            "unet_gflop/img": round(gflops["unet"], 3),
            "ae_gflop/img enc/dec": (f"{gflops['encode']:.2f}/{gflops['decode']:.2f}" if "encode" in gflops else "-"),
            "encode_ms": round(ms["encode"], 1), "unet_train_ms": round(ms["train"], 1),
            f"unet_sample{args.ddim_steps}_ms": round(ms["sample"], 1), "decode_ms": round(ms["decode"], 1),
            f"train_x_vs_f{baseline}": round((base["encode"] + base["train"]) / train_total, 2),
            f"sample_x_vs_f{baseline}": round((base["sample"] + base["decode"]) / sample_total, 2),
            "peak_train_mb": round(peaks[f, "train"]) if peaks else None,
            "peak_sample_mb": round(peaks[f, "sample"]) if peaks else None,
        })
    report.details["times_s"] = times
    report.note(f"{args.resolution}x{args.resolution}x{args.image_channels} images, batch {args.batch}, UNet "
                f"{UNetConfig().model_dump()}, KL first stage (default AutoencoderConfig, c={args.latent_channels}), "
                f"{settings.describe()}; ms = median of {args.repeats} interleaved repeats per batch; "
                f"'x vs f{baseline}' = speed-up of encode+train step and of sample+decode")
    report.note("peak memory = " + ("CUDA max allocated during the phase, above the allocation before it"
                                    if device.type == "cuda" else "peak RSS during the phase above the RSS before "
                                    "it (fresh process per f and phase)"))
    report.table(f"Cost of f at {args.resolution}x{args.resolution}: first stage shown separately", rows)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
