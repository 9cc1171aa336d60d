"""Any tree of images under `data.root`, with an optional `captions.csv`.

The class of an image is the top-level sub-folder it lies in (however deep); images directly in the root
belong to the class ".", a name no sub-folder can have. Every image thus has a label, as
`dataset_provides` promises. With `captions.csv` (header `file,caption`, `file` relative to the root with
`/` separators) every image needs a caption; rows naming other files are ignored. There is no official
test set: val and test are both seeded `data.val_fraction` shares. Files are listed in sorted order, so the
split depends only on the file names and the seed; only the requested split is decoded.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from PIL import Image
from torch import Tensor

from ldm.config import DataConfig, Split
from ldm.data.base import TensorImageDataset, data_root, fit_images, pil_to_uint8, split_indices
from ldm.data.catalog import FOLDER_CAPTIONS_FILE
from ldm.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ROOT_CLASS = "."


@dataclass(frozen=True)
class FolderIndex:
    """Every image under a root: paths relative to it (posix), their labels and, with captions.csv, captions."""

    root: Path
    files: list[str]
    labels: list[int]
    class_names: list[str]
    captions: list[str] | None


def build_folder(cfg: DataConfig, split: Split, workdir: Path) -> TensorImageDataset:
    index = index_folder(data_root(cfg, workdir))
    chosen = split_indices(cfg, split, len(index.files), carve_test=True)
    kept, images = [], []
    for i in chosen:
        image = decode_image(index.root / index.files[i], cfg)
        if image is not None:
            kept.append(int(i))
            images.append(image)
    if not images:
        raise DataError(f"no readable images in the {split} split of '{index.root}'")
    return TensorImageDataset(
        torch.stack(images),
        source_indices=torch.tensor(kept, dtype=torch.int64),
        class_names=index.class_names,
        labels=torch.tensor([index.labels[i] for i in kept], dtype=torch.int64),
        captions=None if index.captions is None else [index.captions[i] for i in kept],
    )


def index_folder(root: Path) -> FolderIndex:
    """List the images under `root` with their classes and captions, without decoding them."""
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist; point -o data.root=DIR at a folder of images "
                        "(one sub-folder per class)")
    files = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"image folder '{root}' holds no images; allowed suffixes: {', '.join(IMAGE_SUFFIXES)}")
    classes = [_class_of(file) for file in files]
    class_names = sorted(set(classes))
    captions_path = root / FOLDER_CAPTIONS_FILE
    return FolderIndex(
        root=root,
        files=files,
        labels=[class_names.index(c) for c in classes],
        class_names=class_names,
        captions=read_captions(captions_path, files) if captions_path.is_file() else None,
    )


def _class_of(file: str) -> str:
    parts = PurePosixPath(file).parts
    return parts[0] if len(parts) > 1 else ROOT_CLASS


def read_captions(path: Path, files: list[str]) -> list[str]:
    """The caption of each of `files` from a `file,caption` CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
            raise DataError(f"'{path}' must start with the header 'file,caption', found {reader.fieldnames}")
        by_file: dict[str, str] = {}
        for row in reader:
            file = PurePosixPath(row["file"].strip()).as_posix()
            if file in by_file:
                raise DataError(f"'{path}' has two captions for '{file}'")
            by_file[file] = row["caption"].strip()
    missing = [file for file in files if file not in by_file]
    if missing:
        raise DataError(f"'{path}' has no caption for {len(missing)} image(s), e.g. '{missing[0]}'")
    return [by_file[file] for file in files]


def decode_image(path: Path, cfg: DataConfig) -> Tensor | None:
    """The image fitted to the config as uint8 C x R x R; None (with a warning) if unreadable and skipping."""
    try:
        with Image.open(path) as image:
            rgb = pil_to_uint8(image)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        if not cfg.skip_bad_files:
            raise DataError(f"cannot read image '{path}' ({e}); fix or remove it, or skip such files with "
                            "-o data.skip_bad_files=true") from None
        warnings.warn(f"skipping unreadable image '{path}': {e}", stacklevel=2)
        return None
    return fit_images(rgb[None], cfg.resolution, cfg.channels)[0]


def offline_status(cfg: DataConfig, workdir: Path) -> tuple[bool, str]:
    return True, "your images under data.root (class = sub-folder, optional captions.csv)"
