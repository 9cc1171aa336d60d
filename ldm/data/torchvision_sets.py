"""Datasets read by torchvision from `data.root` (default `<workdir>/data`), downloaded only with `data.download`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ldm.config import DataConfig, Split
from ldm.data.base import (
    ImageDataset,
    LabelledImages,
    OfficialSplits,
    TensorImageDataset,
    data_root,
    fit_images,
    labelled_split,
    pil_to_uint8,
    split_indices,
)
from ldm.errors import DataError

Part = Literal["train", "test"]
Opener = Callable[[Path, Part, bool], Any]


@dataclass(frozen=True)
class TorchvisionSet:
    """How to open one torchvision dataset and where it keeps its files under the root."""

    title: str
    folder: str
    open: Opener


def _train_test_set(class_name: str) -> Opener:
    """Opener for a torchvision class whose parts are chosen with `train=`."""

    def open_part(root: Path, part: Part, download: bool) -> Any:
        # torchvision takes seconds to import: only datasets that use it pay for it.
        from torchvision import datasets

        return getattr(datasets, class_name)(str(root), train=part == "train", download=download)

    return open_part


def _open_celeba(root: Path, part: Part, download: bool) -> Any:
    from torchvision import datasets

    return datasets.CelebA(str(root), split=part, target_type=[], download=download)


TORCHVISION_SETS: dict[str, TorchvisionSet] = {
    "mnist": TorchvisionSet("MNIST", "MNIST/raw", _train_test_set("MNIST")),
    "fashion-mnist": TorchvisionSet("Fashion-MNIST", "FashionMNIST/raw", _train_test_set("FashionMNIST")),
    "cifar10": TorchvisionSet("CIFAR-10", "cifar-10-batches-py", _train_test_set("CIFAR10")),
    "celeba": TorchvisionSet("CelebA", "celeba", _open_celeba),
}

# Class names of the labelled photo sets, in label order, as captions use them.
PHOTO_CLASSES: dict[str, list[str]] = {
    "fashion-mnist": ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def build_photo_set(name: str, cfg: DataConfig, split: Split, workdir: Path) -> TensorImageDataset:
    """Fashion-MNIST or CIFAR-10, held in memory, captioned "a photo of a <class>"."""
    class_names = PHOTO_CLASSES[name]
    return labelled_split(cfg, split, official_splits(name, cfg, workdir), class_names, _photo_caption(class_names))


def build_celeba(cfg: DataConfig, split: Split, workdir: Path) -> ImageDataset:
    """Images only; train/val split the official training partition by seed, test is the official test one."""
    source = open_torchvision("celeba", "test" if split == "test" else "train", cfg, workdir)
    indices = np.arange(len(source)) if split == "test" else split_indices(cfg, split, len(source), carve_test=False)
    return LazyImageDataset(source, torch.from_numpy(indices), cfg.resolution, cfg.channels)


class LazyImageDataset(ImageDataset):
    """Images decoded and fitted per item, for sets too large to hold in memory; no labels or captions."""

    decodes_files = True

    def __init__(self, source: Sequence[tuple[Image.Image, Any]], source_indices: Tensor, resolution: int,
                 channels: int) -> None:
        super().__init__(source_indices=source_indices, class_names=[], labels=None, captions=None)
        self.source = source
        self.resolution = resolution
        self.channels = channels

    def uint8_image(self, index: int) -> Tensor:
        image, _ = self.source[int(self.source_indices[index])]
        return fit_images(pil_to_uint8(image)[None], self.resolution, self.channels)[0]


def official_splits(name: str, cfg: DataConfig, workdir: Path) -> OfficialSplits:
    """The official train and test sets of an in-memory torchvision dataset (MNIST-like or CIFAR-10)."""
    train, test = (open_torchvision(name, part, cfg, workdir) for part in ("train", "test"))
    return OfficialSplits(train=_labelled(train), test=_labelled(test))


def _labelled(dataset: Any) -> LabelledImages:
    images = torch.as_tensor(np.asarray(dataset.data))
    # MNIST-like sets store N x H x W, CIFAR-10 stores N x H x W x 3.
    images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return LabelledImages(images.contiguous(), torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64))


def open_torchvision(name: str, part: Part, cfg: DataConfig, workdir: Path) -> Any:
    """Open one part of a torchvision dataset, turning its missing-file and download errors into DataErrors."""
    kind = TORCHVISION_SETS[name]
    root = data_root(cfg, workdir)
    try:
        return kind.open(root, part, cfg.download)
    except (RuntimeError, OSError) as e:
        if cfg.download:
            raise DataError(f"could not download {kind.title} into '{root}': {e}") from None
        raise DataError(
            f"{kind.title} files not found in '{root / kind.folder}': run with -o data.download=true (needs "
            f"internet), or copy the files there (set -o data.root=DIR to use another folder)"
        ) from None


def offline_status(name: str, cfg: DataConfig, workdir: Path) -> tuple[bool, str]:
    """Whether a torchvision dataset's folder is present (a quick check; loading verifies the files)."""
    folder = data_root(cfg, workdir) / TORCHVISION_SETS[name].folder
    if folder.is_dir():
        return True, f"files in {folder}"
    return False, f"needs files in {folder} (-o data.download=true with internet)"


def _photo_caption(class_names: list[str]) -> Callable[[int, int], str]:
    def caption(index: int, label: int) -> str:
        name = class_names[label]
        return f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}"

    return caption
