"""What a model costs: parameters, forward FLOPs and peak memory (throughput is timed where the work runs)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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


class PeakMemory:
    """Peak memory of what runs after this is made, not of the process so far (a trial trains before it evaluates).

    CUDA: peak allocated tensor memory, from a reset of torch's peak statistics. CPU: peak resident set size, from
    a reset of the kernel's high-water mark (Linux, proc(5) clear_refs); elsewhere it cannot be reset, and the peak
    is unknown (None). Memory already held at the start (model, libraries) counts; `start_mb` is that level.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_mb: float | None = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.start_mb = torch.cuda.memory_allocated(device) / 2**20
        elif cpu_peak_resettable():
            _CLEAR_REFS.write_text(_RESET_PEAK_RSS)
            self.start_mb = _status_mb("VmRSS")

    def peak_mb(self) -> float | None:
        """The peak since construction, in MiB; None on a CPU whose peak could not be reset."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _status_mb("VmHWM") if self.start_mb is not None else None


_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
_RESET_PEAK_RSS = "5"  # proc(5): writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS


def cpu_peak_resettable() -> bool:
    """Whether this system can reset the process's peak resident set size (Linux can)."""
    return _CLEAR_REFS.exists()


def _status_mb(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{_STATUS} has no {field} line")
    return int(match.group(1)) / 1024
