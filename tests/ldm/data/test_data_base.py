"""Shared dataset steps: fitting against PIL as the reference, seeded splits, and the item contract."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ldm.config import DataConfig
from ldm.data.base import TensorImageDataset, fit_images, loader_workers, pil_to_uint8, split_indices
from ldm.errors import DataError


def _random_uint8(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8))


def test_downscale_matches_pil_antialiased_bilinear() -> None:
    rgb = _random_uint8(48, 48, 3)
    reference = np.asarray(Image.fromarray(rgb.numpy()).resize((16, 16), Image.Resampling.BILINEAR)).astype(int)
    ours = fit_images(rgb.permute(2, 0, 1)[None].contiguous(), 16, 3)[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - reference).max() <= 1


def test_luminance_matches_pil_and_gray_repeats() -> None:
    rgb = _random_uint8(20, 20, 3, seed=1)
    reference = np.asarray(Image.fromarray(rgb.numpy()).convert("L")).astype(int)
    gray = fit_images(rgb.permute(2, 0, 1)[None].contiguous(), 20, 1)[0, 0].numpy().astype(int)
    assert np.abs(gray - reference).max() <= 1
    assert int(fit_images(torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1), 1, 1)) == 76

    single = _random_uint8(2, 1, 9, 9, seed=2)
    repeated = fit_images(single, 9, 3)
    assert repeated.shape == (2, 3, 9, 9)
    assert torch.equal(repeated, single.expand(-1, 3, -1, -1))


def test_short_side_is_kept_and_the_centre_is_cropped() -> None:
    wide = _random_uint8(1, 3, 8, 14, seed=3)
    assert torch.equal(fit_images(wide, 8, 3), wide[..., 3:11])
    tall = _random_uint8(1, 1, 20, 10, seed=4)
    assert torch.equal(fit_images(tall, 10, 1), tall[..., 5:15, :])
    # Upscaling a constant image stays constant.
    flat = torch.full((1, 1, 7, 7), 200, dtype=torch.uint8)
    assert torch.equal(fit_images(flat, 12, 1), torch.full((1, 1, 12, 12), 200, dtype=torch.uint8))


def test_fit_rejects_float_input() -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        fit_images(torch.zeros(1, 3, 4, 4), 4, 3)


def test_pil_to_uint8_is_chw_rgb() -> None:
    image = Image.new("RGB", (5, 3), (10, 20, 30))
    tensor = pil_to_uint8(image)
    assert tensor.shape == (3, 3, 5) and tensor.dtype == torch.uint8
    assert tensor[:, 0, 0].tolist() == [10, 20, 30]


def test_splits_partition_the_pool_and_follow_the_seed() -> None:
    cfg = DataConfig(name="shapes", val_fraction=0.2, split_seed=7)
    parts = {split: split_indices(cfg, split, 50, carve_test=True) for split in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [30, 10, 10]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(50))
    assert np.array_equal(parts["val"], split_indices(cfg, "val", 50, carve_test=True))
    other = split_indices(cfg.model_copy(update={"split_seed": 8}), "val", 50, carve_test=True)
    assert not np.array_equal(parts["val"], other)

    no_test = {split: split_indices(cfg, split, 50, carve_test=False) for split in ("train", "val")}
    assert len(no_test["train"]) == 40 and len(no_test["val"]) == 10
    capped = split_indices(cfg.model_copy(update={"max_train_items": 5}), "train", 50, carve_test=True)
    assert len(capped) == 5 and set(capped) <= set(parts["train"])


def test_too_small_pool_is_a_data_error() -> None:
    with pytest.raises(DataError, match="has only 2 items: too few for a train split"):
        split_indices(DataConfig(name="folder"), "train", 2, carve_test=True)


def test_holdout_items_sizes_val_and_test_whatever_the_fraction() -> None:
    cfg = DataConfig(name="shapes", val_fraction=0.1, holdout_items=13, split_seed=3)
    parts = {split: split_indices(cfg, split, 50, carve_test=True) for split in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [24, 13, 13]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(50))
    assert len(split_indices(cfg, "val", 50, carve_test=False)) == 13
    assert len(split_indices(cfg, "train", 50, carve_test=False)) == 37
    # A larger reference split keeps the smaller one's items: the same seeded order, cut later.
    larger = split_indices(cfg.model_copy(update={"holdout_items": 20}), "val", 50, carve_test=True)
    assert set(parts["val"]) < set(larger)


@pytest.mark.parametrize(("carve_test", "allowed"), [(True, 24), (False, 49)])
def test_holdout_items_must_leave_a_train_split(carve_test: bool, allowed: int) -> None:
    cfg = DataConfig(name="folder", holdout_items=allowed + 1)
    with pytest.raises(DataError, match=rf"^data\.holdout_items={allowed + 1} leaves no train split: dataset "
                                        rf"'folder' has 50 items.*allowed: data\.holdout_items <= {allowed}$"):
        split_indices(cfg, "val", 50, carve_test=carve_test)
    assert len(split_indices(cfg.model_copy(update={"holdout_items": allowed}), "train", 50,
                             carve_test=carve_test)) == 50 - allowed * (2 if carve_test else 1)


class _Decoding(TensorImageDataset):
    decodes_files = True


@pytest.mark.parametrize(("cores", "expected"), [(16, 8), (2, 1), (1, 0)])
def test_auto_workers_follow_the_cores_for_decoded_data_only(cores: int, expected: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    images = _random_uint8(2, 1, 4, 4)
    in_memory = TensorImageDataset(images, source_indices=torch.arange(2), class_names=[], labels=None,
                                   captions=None)
    decoded = _Decoding(images, source_indices=torch.arange(2), class_names=[], labels=None, captions=None)
    assert loader_workers(None, decoded) == expected
    assert loader_workers(None, in_memory) == 0 and loader_workers(None, torch.utils.data.TensorDataset()) == 0
    assert loader_workers(3, in_memory) == 3 and loader_workers(0, decoded) == 0


def test_items_follow_the_contract_and_collate() -> None:
    images = _random_uint8(4, 3, 8, 8, seed=5)
    dataset = TensorImageDataset(images, source_indices=torch.arange(4), class_names=["a", "b"],
                                 labels=torch.tensor([0, 1, 1, 0]), captions=["w", "x", "y", "z"])
    assert dataset.provides == {"label", "caption"} and dataset.num_classes == 2
    item = dataset[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 8, 8)
    assert torch.allclose(item["image"], images[1].float() / 127.5 - 1)
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0 and int(item["label"]) == 1
    assert item["caption"] == "x"
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, 8, 8) and batch["label"].tolist() == [0, 1, 1]
    assert batch["caption"] == ["w", "x", "y"]
    with pytest.raises(IndexError, match="index 4 is out of range"):
        dataset[4]
