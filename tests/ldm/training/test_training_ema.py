"""EMA weights against the closed form of the exponential moving average."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ldm.training.ema import EMA


def warmed_decays(decay: float, n: int) -> list[float]:
    """d_k = min(decay, (1 + k) / (10 + k)) for the updates k = 0..n-1."""
    return [min(decay, (1 + k) / (10 + k)) for k in range(n)]


def test_shadow_follows_the_closed_form() -> None:
    model = nn.Linear(3, 2)
    start = model.weight.detach().clone()
    ema, decay = EMA(model, 0.9), 0.9
    values = [torch.full_like(start, v) for v in (1.0, -2.0, 0.5, 4.0)]
    for value in values:
        with torch.no_grad():
            model.weight.copy_(value)
        ema.update(model)
    d = warmed_decays(decay, len(values))
    # s_n = prod_k d_k s_0 + sum_k (1 - d_k) prod_{j > k} d_j p_k
    expected = math.prod(d) * start + sum((1 - d[k]) * math.prod(d[k + 1:]) * v for k, v in enumerate(values))
    torch.testing.assert_close(ema.shadow["weight"], expected, rtol=0, atol=1e-6)
    assert d == [0.1, 2 / 11, 0.25, 4 / 13]  # the warm-up, still below decay = 0.9


def test_warm_up_reaches_the_configured_decay() -> None:
    ema = EMA(nn.Linear(1, 1), 0.5)
    ema.updates = 8  # (1 + 8) / (10 + 8) = 0.5
    assert ema.current_decay() == 0.5
    ema.updates = 1000
    assert ema.current_decay() == 0.5


def test_constant_weights_converge_geometrically() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(3):
        ema.update(model)
    assert ema.shadow["weight"].item() == pytest.approx(1 - math.prod(warmed_decays(0.5, 3)))


def test_swapped_in_uses_shadow_then_restores_and_keeps_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, 0.99)
    assert set(ema.shadow) == {name for name, _ in model.named_parameters()}  # buffers are not averaged
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ema.shadow:
        ema.shadow[name].fill_(7.0)
    with ema.swapped_in(model):
        assert all(torch.all(p == 7.0) for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k])


def test_state_round_trip_and_decay_range() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    ema.shadow["bias"].fill_(3.0)
    other = EMA(nn.Linear(2, 2), 0.9)
    ema.update(model)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["bias"], ema.shadow["bias"]) and other.updates == 1
    with pytest.raises(ValueError, match=r"decay=1\.0 must lie strictly between 0 and 1"):
        EMA(model, 1.0)
