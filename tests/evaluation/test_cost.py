"""Cost measures against hand counts, closed forms and known allocations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evaluation.cost import PeakMemory, cpu_peak_resettable, forward_gflops, parameters_m


def test_parameter_count_matches_hand_count() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Linear(10, 4))
    # conv 3*8*3*3 + 8 bias, group norm 8 scale + 8 shift, linear 10*4 + 4 bias
    assert parameters_m(model) == pytest.approx((216 + 8 + 16 + 40 + 4) / 1e6, abs=0)
    assert parameters_m(None) == 0.0 and parameters_m(nn.Identity()) == 0.0


def test_conv_flops_are_twice_the_multiply_accumulates() -> None:
    c_in, c_out, k, side = 3, 8, 3, 16
    conv = nn.Conv2d(c_in, c_out, k, padding=1)
    macs = c_out * side * side * c_in * k * k  # one MAC per output value per kernel tap per input channel
    assert forward_gflops(conv, torch.zeros(1, c_in, side, side)) == pytest.approx(2 * macs / 1e9, rel=1e-12)


def test_linear_and_keyword_inputs_are_counted() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor, *, scale: float) -> torch.Tensor:
            return self.linear(x) * scale

    assert forward_gflops(Scaled(), torch.zeros(1, 64), scale=2.0) == pytest.approx(2 * 64 * 10 / 1e9, rel=1e-12)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_peak_memory_is_of_the_measured_work_not_of_earlier_allocations(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if device == "cpu" and not cpu_peak_resettable():
        pytest.skip("this system cannot reset a process's peak resident set (Linux can)")
    mib = 2**20 // 4  # float32 elements per MiB
    earlier = torch.ones(512 * mib, device=device)  # like training before a trial's evaluation
    del earlier
    memory = PeakMemory(torch.device(device))
    block = torch.ones(64 * mib, device=device)
    del block
    peak, start = memory.peak_mb(), memory.start_mb
    assert peak is not None and start is not None
    # The 64 MiB block, plus slack for what the interpreter touches meanwhile; not the 512 MiB before.
    assert start + 63 <= peak <= start + 64 + 32
