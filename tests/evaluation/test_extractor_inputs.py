"""Images reach torch-fidelity as uint8 RGB whether they arrive as floats in [-1, 1] or as uint8 already."""

from pathlib import Path

import torch

from evaluation.extractors import to_uint8_rgb


def test_float_and_uint8_inputs_give_the_same_pixels() -> None:
    floats = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = ((floats + 1) * 127.5).round().to(torch.uint8)
    from_float, from_uint8 = to_uint8_rgb(floats), to_uint8_rgb(expected)
    assert from_float.dtype == from_uint8.dtype == torch.uint8
    assert from_float.shape == (5, 3, 8, 8)
    assert torch.equal(from_float, from_uint8)
    assert torch.equal(from_uint8[:, 2], expected[:, 0])
