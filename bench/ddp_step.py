"""The UNet training step through the distributed path: run under torchrun, it reports step time, images/s and
model FLOP utilisation per GPU.

Each rank runs the training loop's own update (`ldm.training.loop._optimise`: posterior sample from cached
moments, UNet forward and backward, gradient all-reduce, clipping, AdamW) on its share of a global batch, as
`training.diffusion.cache_latents` trains. MFU = 3 x forward FLOPs of the rank's micro-batch
(FlopCounterMode, matmuls and convolutions) / step time / --peak-tflops.

    torchrun --standalone --nproc_per_node=1 -m bench.ddp_step --device cuda          # DDP on one GPU
    torchrun --standalone --nproc_per_node=2 -m bench.ddp_step --resolution 32 --batch 4   # 2 CPU ranks (gloo)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from bench.harness import Report, Row, add_common_arguments, interleaved_times, run_script, setup
from bench.latent_cache import training_steps
from evaluation.cost import forward_gflops
from ldm.distributed import init_distributed
from ldm.training.device import autocast

CASE = "cached latents"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=20, warmup=3)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--f", type=int, default=8, help="first-stage factor: the UNet works on resolution / f")
    parser.add_argument("--batch", type=int, default=64, help="global batch over all ranks")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU (H100/H200)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ranks = init_distributed()
    device = setup(args)
    steps = training_steps(args.f, args, device, ranks)
    update = steps.updates[f"{args.f}/{CASE}"]
    times = interleaved_times({CASE: update}, device, args.repeats, args.warmup)[CASE]
    t = torch.zeros(len(steps.latents), dtype=torch.long, device=device)
    with autocast(device):
        forward = forward_gflops(steps.denoiser, steps.latents, t)
    step_s = statistics.median(times)
    if not ranks.is_main:
        return 0
    report = Report("ddp_step", args, device)
    achieved = 3 * forward / step_s / 1e3  # TFLOP/s of one rank
    latent = "x".join(map(str, steps.latents.shape[1:]))
    row: Row = {"ranks": ranks.world_size, "global_batch": args.batch, "latent": latent,
                "step_ms": round(step_s * 1e3, 1), "images_per_s": round(args.batch / step_s, 1),
                "tflops_per_rank": round(achieved, 4)}
    if device.type == "cuda":
        row["mfu_%"] = round(100 * achieved / args.peak_tflops, 2)
    report.details["times_s"] = times
    report.note(f"{args.resolution}x{args.resolution} images at f={args.f}, default UNet, one optimiser step of the "
                f"training loop on each rank's share; median of {args.repeats} steps")
    report.table("UNet training step under torch.distributed", [row])
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
