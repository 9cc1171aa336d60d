"""The interface every dataset split obeys, and the steps all datasets share: splitting, fitting, channels."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ldm.config import DataConfig, Split
from ldm.errors import DataError
from ldm.paths import data_dir

# ITU-R 601-2 luma weights, the ones PIL uses for RGB -> "L".
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Images resized per interpolate call: bounds the float32 working memory for 60,000-image sets.
_FIT_CHUNK = 4096
# DataLoader workers of `training.num_workers: null` for a split that decodes files: enough to keep a GPU fed
# on small images without one process per core of a large machine.
MAX_AUTO_WORKERS = 8

Item = dict[str, Tensor | str]


class ImageDataset(Dataset[Item], ABC):
    """One split of a dataset.

    Item i: `image` float32 CxHxW in [-1, 1]; `label` int64 0-d, `caption` str and `mask` float32 1xHxW
    (1 = region to inpaint) where the dataset has them, as named by `provides`. `source_indices[i]` is the
    item's index in the part it was drawn from (the official train or test set, or the whole generated set).
    """

    # True where `uint8_image` reads and decodes a file: work that DataLoader worker processes can take over.
    decodes_files: ClassVar[bool] = False

    def __init__(self, *, source_indices: Tensor, class_names: list[str], labels: Tensor | None,
                 captions: list[str] | None, has_masks: bool = False) -> None:
        self.source_indices = source_indices
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.labels = labels
        self.captions = captions
        present = {"label": labels is not None, "caption": captions is not None, "mask": has_masks}
        self.provides = frozenset(key for key, has in present.items() if has)

    def __len__(self) -> int:
        return len(self.source_indices)

    @abstractmethod
    def uint8_image(self, index: int) -> Tensor:
        """Image `index` as uint8 CxHxW, the form FID tools and grids take."""

    def mask(self, index: int) -> Tensor:
        """Float32 1xHxW, 1 = region to inpaint; only datasets that provide `mask` override this."""
        raise NotImplementedError(f"{type(self).__name__} has no masks")

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for a split of {len(self)} items")
        item: Item = {"image": self.uint8_image(index).float() / 127.5 - 1.0}
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.captions is not None:
            item["caption"] = self.captions[index]
        if "mask" in self.provides:
            item["mask"] = self.mask(index)
        return item


class TensorImageDataset(ImageDataset):
    """A split held decoded in memory as one uint8 tensor N x C x R x R."""

    def __init__(self, images: Tensor, *, source_indices: Tensor, class_names: list[str],
                 labels: Tensor | None, captions: list[str] | None) -> None:
        super().__init__(source_indices=source_indices, class_names=class_names, labels=labels, captions=captions)
        self.images = images

    def uint8_image(self, index: int) -> Tensor:
        return self.images[index]


@dataclass(frozen=True)
class LabelledImages:
    """Decoded uint8 images N x C x H x W (any size, C = 1 or 3) with int64 labels."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class OfficialSplits:
    """A dataset published as a training set and a test set."""

    train: LabelledImages
    test: LabelledImages


def split_indices(cfg: DataConfig, split: Split, pool_size: int, *, carve_test: bool) -> np.ndarray:
    """Sorted indices of `split` in a pool of `pool_size` items.

    A permutation seeded by `data.split_seed` gives `val` (and `test`, when `carve_test`, i.e. the dataset
    has no official test set) `data.holdout_items` items each, else a `data.val_fraction` share each; `train`
    is the rest, capped at `data.max_train_items`.
    """
    order = np.random.default_rng(cfg.split_seed).permutation(pool_size)
    held = cfg.holdout_items if cfg.holdout_items is not None else max(1, round(cfg.val_fraction * pool_size))
    parts_held = 2 if carve_test else 1
    if parts_held * held >= pool_size:
        held_for = "validation and test" if carve_test else "validation"
        if cfg.holdout_items is not None:
            raise DataError(f"data.holdout_items={held} leaves no train split: dataset '{cfg.name}' has {pool_size} "
                            f"items and {held_for} would take {parts_held * held}; allowed: "
                            f"data.holdout_items <= {(pool_size - 1) // parts_held}")
        raise DataError(f"dataset '{cfg.name}' has only {pool_size} items: too few for a train split after "
                        f"holding out data.val_fraction={cfg.val_fraction} for {held_for}")
    parts = {"val": order[:held], "train": order[parts_held * held:][:cfg.max_train_items]}
    if carve_test:
        parts["test"] = order[held:2 * held]
    return np.sort(parts[split])


def labelled_split(cfg: DataConfig, split: Split, official: OfficialSplits, class_names: list[str],
                   caption: Callable[[int, int], str]) -> TensorImageDataset:
    """Train/val from the official training set by seed, test = the official test set, fitted in memory.

    `caption(index, label)` gets the item's index in the official data (the test set numbered after the
    training set), so an image keeps its caption whatever the split seed.
    """
    if split == "test":
        part, indices, offset = official.test, np.arange(len(official.test.labels)), len(official.train.labels)
    else:
        part, offset = official.train, 0
        indices = split_indices(cfg, split, len(part.labels), carve_test=False)
    source = torch.from_numpy(indices)
    labels = part.labels[source].to(torch.int64)
    return TensorImageDataset(
        fit_images(part.images[source], cfg.resolution, cfg.channels),
        source_indices=source,
        class_names=class_names,
        labels=labels,
        captions=[caption(offset + int(i), int(y)) for i, y in zip(indices, labels, strict=True)],
    )


def loader_workers(requested: int | None, dataset: Dataset) -> int:
    """DataLoader worker processes: `requested`, or for None (auto) one per spare core (shared by the ranks torchrun
    started on this node), at most MAX_AUTO_WORKERS, where the items are decoded from files, and none for data in
    memory (workers would only add start-up time)."""
    if requested is not None:
        return requested
    if not (isinstance(dataset, ImageDataset) and dataset.decodes_files):
        return 0
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(MAX_AUTO_WORKERS, _usable_cpus() // ranks_here - 1))


def _usable_cpus() -> int:
    # The cores this process may run on (a container's or a batch job's share), where the platform tells.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fit_images(images: Tensor, resolution: int, channels: int) -> Tensor:
    """uint8 N x C x H x W (C = 1 or 3) -> uint8 N x channels x R x R.

    RGB becomes luminance for `channels` 1 and grayscale is repeated for 3; the short side is resized to R
    (bilinear, antialiased when shrinking) and the centre R x R is cropped.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 N x (1|3) x H x W images, got {images.dtype} {tuple(images.shape)}")
    return torch.cat([_fit_chunk(chunk, resolution, channels) for chunk in images.split(_FIT_CHUNK)])


def _fit_chunk(images: Tensor, resolution: int, channels: int) -> Tensor:
    x = images
    if x.shape[1] == 3 and channels == 1:
        x = (x.float() * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    height, width = x.shape[-2:]
    if min(height, width) != resolution:
        scale = resolution / min(height, width)
        size = (max(resolution, round(height * scale)), max(resolution, round(width * scale)))
        x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - resolution) // 2, (x.shape[-1] - resolution) // 2
    x = x[..., top:top + resolution, left:left + resolution]
    if x.is_floating_point():
        x = x.round().clamp(0, 255).to(torch.uint8)
    # Repeating gray after the resize gives the same pixels for a third of the work.
    return x.expand(-1, channels, -1, -1).contiguous() if x.shape[1] == 1 else x.contiguous()


def data_root(cfg: DataConfig, workdir: Path) -> Path:
    """Where dataset files live: `data.root`, else `<workdir>/data`."""
    return Path(cfg.root) if cfg.root is not None else data_dir(workdir)


def pil_to_uint8(image: Image.Image) -> Tensor:
    """A PIL image as uint8 3 x H x W RGB."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
