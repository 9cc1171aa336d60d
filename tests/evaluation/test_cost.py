"""Cost measures against hand counts and closed forms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import evaluation.cost as cost
from evaluation.cost import (
    forward_gflops,
    items_per_second,
    parameters_m,
    peak_memory_mb,
    sampling_images_per_s,
    training_images_per_s,
)
from ldm.errors import UserError


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


class FakeClock:
    """perf_counter that advances only when the measured step runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throughput_counts_only_timed_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(cost.time, "perf_counter", clock)
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        clock.now += 0.5

    # 3 timed steps of 4 items in 1.5 s; the 2 warm-up steps cost time but are not timed.
    assert items_per_second(step, 4, steps=3, warmup=2) == pytest.approx(8.0)
    assert len(calls) == 5


def test_sampling_and_training_throughput_pass_their_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(cost.time, "perf_counter", clock)
    sizes: list[int] = []

    def generate(n: int) -> torch.Tensor:
        sizes.append(n)
        clock.now += 0.25
        return torch.zeros(n, 3, 8, 8)

    assert sampling_images_per_s(generate, 6, batches=2, warmup=1) == pytest.approx(6 * 2 / 0.5)
    assert sizes == [6, 6, 6]

    def train_step() -> None:
        clock.now += 2.0

    assert training_images_per_s(train_step, 32, steps=4, warmup=0) == pytest.approx(32 / 2.0)
    with pytest.raises(UserError, match="steps >= 1 and warmup >= 0; got steps=0, warmup=1"):
        items_per_second(train_step, 1, steps=0)


def test_cpu_peak_memory_is_the_process_high_water_mark() -> None:
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("needs Linux /proc to read the kernel's own high-water mark")
    before = _vm_hwm_mb(status)
    measured = peak_memory_mb(torch.device("cpu"))
    after = _vm_hwm_mb(status)
    assert before - 1 <= measured <= after + 1


def _vm_hwm_mb(status: Path) -> float:
    line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
