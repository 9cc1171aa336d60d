"""What a model costs: parameters, forward FLOPs, wall-clock throughput and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ldm.errors import UserError


def parameters_m(module: nn.Module | None) -> float:
    """Parameter count in millions (0 for a missing or parameter-free module, e.g. the f = 1 first stage)."""
    if module is None:
        return 0.0
    return sum(p.numel() for p in module.parameters()) / 1e6


@torch.no_grad()
def forward_gflops(module: nn.Module, *inputs: torch.Tensor, **kwargs: object) -> float:
    """GFLOPs of one forward pass on `inputs` (give batch 1 for the UNet's per-image cost).

    torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate (FLOPs = 2 * MACs) and only the matmul,
    convolution and attention kernels; elementwise work (norms, activations, additions) is not included.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        module(*inputs, **kwargs)
    return counter.get_total_flops() / 1e9


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def items_per_second(step: Callable[[], object], items_per_step: int, *, steps: int, warmup: int = 1) -> float:
    """Wall-clock throughput of `step`, after `warmup` untimed calls (allocator, cuDNN autotune, compilation)."""
    if steps < 1 or warmup < 0:
        raise UserError(f"throughput needs steps >= 1 and warmup >= 0; got steps={steps}, warmup={warmup}")
    for _ in range(warmup):
        step()
    _synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize()
    return items_per_step * steps / (time.perf_counter() - start)


def sampling_images_per_s(generate: Callable[[int], torch.Tensor], batch_size: int, *, batches: int = 2,
                          warmup: int = 1) -> float:
    """Images per second of `generate(batch_size)`, which must include decoding latents to images."""
    return items_per_second(lambda: generate(batch_size), batch_size, steps=batches, warmup=warmup)


def training_images_per_s(train_step: Callable[[], object], batch_size: int, *, steps: int = 5,
                          warmup: int = 1) -> float:
    """Images per second of an optimisation step (forward, backward, update) on `batch_size` images."""
    return items_per_second(train_step, batch_size, steps=steps, warmup=warmup)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak; a process's max RSS (the CPU measure) cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated tensor memory since the last reset. CPU: the whole process's max resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    return max_rss / 2**20 if sys.platform == "darwin" else max_rss / 2**10
