"""torchvision datasets offline: the missing-files message, a tiny Fashion-MNIST in idx files, lazy images."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.config import DataConfig
from ldm.data.registry import build_dataset
from ldm.data.torchvision_sets import PHOTO_CLASSES, LazyImageDataset
from ldm.errors import DataError

if TYPE_CHECKING:
    from conftest import FashionMnistFiles


@pytest.mark.parametrize(("name", "folder", "title"), [
    ("fashion-mnist", "FashionMNIST/raw", "Fashion-MNIST"),
    ("cifar10", "cifar-10-batches-py", "CIFAR-10"),
    ("celeba", "celeba", "CelebA"),
])
def test_missing_files_say_where_and_how(tmp_path: Path, name: str, folder: str, title: str) -> None:
    with pytest.raises(DataError) as error:
        build_dataset(DataConfig(name=name), "train", tmp_path)
    message = str(error.value)
    assert f"{title} files not found in '{tmp_path / 'data' / folder}'" in message
    assert "-o data.download=true" in message and "copy the files there" in message
    root = tmp_path / "elsewhere"
    with pytest.raises(DataError, match=re.escape(str(root / folder))):
        build_dataset(DataConfig(name=name, root=root), "test", tmp_path)


def test_fashion_mnist_from_idx_files(tmp_path: Path, fashion_mnist_files: FashionMnistFiles) -> None:
    files = fashion_mnist_files
    cfg = DataConfig(name="fashion-mnist", resolution=28, val_fraction=0.2)
    train, val, test = (build_dataset(cfg, split, tmp_path) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (16, 4, 4)
    assert sorted(torch.cat([train.labels, val.labels]).tolist()) == sorted(files.train_labels.tolist())
    assert test.labels.tolist() == files.test_labels.tolist()
    assert torch.equal(test.images[:, 0], torch.from_numpy(files.test_images.astype(np.uint8)))
    assert test.captions == ["a photo of an ankle boot", "a photo of a bag", "a photo of a t-shirt/top",
                             "a photo of a sandal"]
    assert test.class_names == PHOTO_CLASSES["fashion-mnist"] and test.provides == {"label", "caption"}
    assert test[0]["image"].shape == (1, 28, 28)


def test_lazy_images_are_fitted_per_item() -> None:
    red = Image.new("RGB", (30, 20), (255, 0, 0))
    gray = Image.new("L", (40, 20), 200)
    dataset = LazyImageDataset([(red, None), (gray, None)], torch.tensor([1, 0]), resolution=10, channels=1)
    assert dataset.provides == frozenset() and dataset.num_classes == 0 and dataset.labels is None
    assert len(dataset) == 2 and set(dataset[0]) == {"image"}
    assert dataset[0]["image"].shape == (1, 10, 10)
    assert torch.allclose(dataset[0]["image"], torch.full((1, 10, 10), 200 / 127.5 - 1))
    # Red becomes its luma, 0.299 * 255 = 76.
    assert torch.equal(dataset.uint8_image(1), torch.full((1, 10, 10), 76, dtype=torch.uint8))
