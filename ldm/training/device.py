"""Where training runs, and the CUDA-only speed-ups (bf16 autocast, channels_last, torch.compile)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ldm.distributed import current_ranks
from ldm.errors import UserError

Batch = dict[str, Any]


def resolve_device(choice: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is an error, not a silent CPU run.

    Under torchrun each rank gets the GPU of its local rank.
    """
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device='cuda' but no CUDA device is available; allowed here: auto, cpu")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", current_ranks().local_rank)
    torch.cuda.set_device(device)
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; on the CPU full float32, which keeps CPU runs exactly reproducible."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_module(module: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device; convolution weights go channels_last on CUDA, where it is faster."""
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    return module


def maybe_compile(module: nn.Module, device: torch.device, enabled: bool) -> Callable[..., Any]:
    """The callable to run the module with: compiled on CUDA when asked (it shares the module's weights)."""
    if enabled and device.type == "cuda":
        return torch.compile(module)
    return module


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """Move a batch's tensors to the device (images channels_last on CUDA); strings stay as they are."""
    moved: Batch = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if device.type == "cuda" and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved
