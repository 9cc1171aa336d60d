"""Images reach torch-fidelity as uint8 RGB whether they arrive as floats in [-1, 1] or as uint8 already; the data
identity that names files derived from a split."""

from pathlib import Path

import torch

from evaluation.extractors import data_identity, to_uint8_rgb
from ldm.config import DataConfig
from ldm.data.catalog import DatasetName


def test_float_and_uint8_inputs_give_the_same_pixels() -> None:
    floats = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = ((floats + 1) * 127.5).round().to(torch.uint8)
    from_float, from_uint8 = to_uint8_rgb(floats), to_uint8_rgb(expected)
    assert from_float.dtype == from_uint8.dtype == torch.uint8
    assert from_float.shape == (5, 3, 8, 8)
    assert torch.equal(from_float, from_uint8)
    assert torch.equal(from_uint8[:, 2], expected[:, 0])


def test_data_identity_keeps_the_root_only_where_it_is_the_data() -> None:
    def identity(name: DatasetName, root: str) -> dict[str, object]:
        return data_identity(DataConfig(name=name, root=Path(root)))

    own_files: tuple[DatasetName, ...] = ("folder", "webdataset")
    for own in own_files:
        assert identity(own, "/a") != identity(own, "/b")
    assert identity("mnist", "/a") == identity("mnist", "/b")
