"""Dataset files the data tests write: an image tree (with or without captions.csv) and tiny Fashion-MNIST idx files."""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@dataclass(frozen=True)
class ImageTree:
    """file -> (colour, caption); the colour identifies the image after decoding."""

    images: dict[str, tuple[tuple[int, int, int], str]]

    def write(self, root: Path, *, captions: bool = True) -> Path:
        for file, (colour, _) in self.images.items():
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 9), colour).save(root / file)
        (root / "notes.txt").write_text("not an image")
        if captions:
            rows = "".join(f'{file},"{caption}"\n' for file, (_, caption) in self.images.items())
            (root / "captions.csv").write_text("file,caption\n" + rows)
        return root


@pytest.fixture
def image_tree() -> ImageTree:
    return ImageTree({
        "cats/a.png": ((250, 0, 0), "a red cat"),
        "cats/b.jpg": ((0, 250, 0), "a green cat"),
        "cats/deeper/c.png": ((0, 0, 250), "a blue cat"),
        "dogs/d.png": ((250, 250, 0), "a yellow dog"),
        "dogs/e.bmp": ((0, 250, 250), "a cyan dog"),
        "f.png": ((250, 0, 250), "a loose magenta"),
    })


@dataclass(frozen=True)
class FashionMnistFiles:
    """What was written to <workdir>/data/FashionMNIST/raw: 20 train and 4 test images of 28x28."""

    train_labels: np.ndarray
    test_labels: np.ndarray
    test_images: np.ndarray


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The big-endian idx format of the (Fashion-)MNIST files: magic (uint8, ndim), sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_mnist_files(tmp_path: Path) -> FashionMnistFiles:
    """Tiny Fashion-MNIST idx files in `tmp_path`'s default data folder."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    files = FashionMnistFiles(train_labels=np.arange(20) % 10, test_labels=np.array([9, 8, 0, 5]),
                              test_images=rng.integers(0, 256, (4, 28, 28)))
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", files.train_labels)
    _write_idx(raw / "t10k-images-idx3-ubyte", files.test_images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", files.test_labels)
    return files
