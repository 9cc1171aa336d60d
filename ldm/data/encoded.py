"""Datasets kept as encoded image files (PNG, JPEG, ...) until an item is read: a folder, tar shards.

Only the list of files, the labels and the captions are held; `uint8_image(i)` decodes and fits one image, in
the DataLoader worker process that asks for it, so memory does not grow with the dataset. Splits are seeded
shares of the whole set (`split_indices`, val and test both carved), as for any dataset without an official
test set. With `data.skip_bad_files` the files of a split are checked when it is built (`Image.open` and
`verify()`: headers and, for PNG, chunk checksums, without decoding pixels) and the unreadable ones leave it,
so which files a split holds depends only on the file names, their contents and the seed. A file that passes
the check but fails to decode later (a JPEG truncated inside its pixel data) is a DataError when it is
loaded, as is any unreadable file without `skip_bad_files`.
"""

from __future__ import annotations

import struct
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import BinaryIO, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ldm.config import DataConfig, Split
from ldm.data.base import ImageDataset, fit_images, pil_to_uint8, split_indices
from ldm.errors import DataError

# What PIL raises for a file it cannot parse: SyntaxError and struct.error escape from some plugins' verify().
_UNREADABLE = (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError)


class UnreadableImageError(DataError):
    """An image file that cannot be decoded; its message stays one line when a DataLoader worker raised it."""

    def __init__(self, message: str) -> None:
        # A worker's exception is raised again in the training process as type(text), the text ending in the
        # worker's traceback, whose last line is "module.Type: message"; the message is what a user needs.
        last = message.rstrip().splitlines()[-1]
        super().__init__(last.removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: "))


class EncodedFiles(ABC):
    """Every image of a dataset as encoded bytes, with labels and captions where it has them."""

    def __init__(self, *, location: str, class_names: list[str], labels: Tensor | None,
                 captions: list[str] | None) -> None:
        self.location, self.class_names, self.labels, self.captions = location, class_names, labels, captions
        self._readable: dict[int, bool] = {}  # the checks done so far: each split is built more than once

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def open_file(self, index: int) -> BinaryIO:
        """The encoded bytes of image `index` as a file to read (the caller closes it)."""

    @abstractmethod
    def file_name(self, index: int) -> str:
        """Where image `index` lies, as messages name it."""

    def readable(self, indices: np.ndarray) -> np.ndarray:
        """Those of `indices` whose file opens and verifies, warning once about each one that does not."""
        for index in (int(i) for i in indices if int(i) not in self._readable):
            try:
                with self.open_file(index) as f, Image.open(f) as image:
                    image.verify()
                self._readable[index] = True
            except _UNREADABLE as e:
                warnings.warn(f"skipping unreadable image '{self.file_name(index)}': {_reason(e)}", stacklevel=2)
                self._readable[index] = False
        return indices[[self._readable[int(i)] for i in indices]]


class EncodedImageDataset(ImageDataset):
    """One split of encoded files, each decoded and fitted to the config when it is read."""

    decodes_files: ClassVar[bool] = True

    def __init__(self, files: EncodedFiles, indices: np.ndarray, cfg: DataConfig) -> None:
        source = torch.from_numpy(indices)
        super().__init__(source_indices=source, class_names=files.class_names,
                         labels=None if files.labels is None else files.labels[source],
                         captions=None if files.captions is None else [files.captions[i] for i in indices])
        self.files, self.resolution, self.channels = files, cfg.resolution, cfg.channels
        self.checked = cfg.skip_bad_files

    def uint8_image(self, index: int) -> Tensor:
        source = int(self.source_indices[index])
        try:
            with self.files.open_file(source) as f, Image.open(f) as image:
                rgb = pil_to_uint8(image)
        except _UNREADABLE as e:
            advice = ("it passed the check when the split was built; fix or remove it" if self.checked else
                      "fix or remove it, or leave such files out with -o data.skip_bad_files=true")
            raise UnreadableImageError(f"cannot read image '{self.files.file_name(source)}' ({_reason(e)}); "
                                       f"{advice}") from None
        return fit_images(rgb[None], self.resolution, self.channels)[0]


def _reason(error: Exception) -> str:
    # PIL's own text names the file object it was given (a BytesIO for a shard), not the file.
    return "not an image format PIL can identify" if isinstance(error, UnidentifiedImageError) else str(error)


def encoded_split(files: EncodedFiles, cfg: DataConfig, split: Split) -> EncodedImageDataset:
    """The seeded `split` of `files`, less its unreadable files when `data.skip_bad_files`."""
    chosen = split_indices(cfg, split, len(files), carve_test=True)
    if cfg.skip_bad_files:
        chosen = files.readable(chosen)
    if len(chosen) == 0:
        raise DataError(f"no readable images in the {split} split of '{files.location}'")
    return EncodedImageDataset(files, chosen, cfg)


def packed_strings(strings: Iterable[str]) -> np.ndarray:
    """UTF-8 strings in one fixed-width numpy buffer (an entry back with `.decode()`).

    A list of a million str objects would be copied page by page into every forked DataLoader worker as their
    reference counts change; one buffer stays shared.
    """
    return np.array([s.encode() for s in strings], dtype=np.bytes_)
