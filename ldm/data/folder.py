"""Any tree of images under `data.root`, with an optional `captions.csv`, decoded one image at a time.

The class of an image is the top-level sub-folder it lies in (however deep); images directly in the root
belong to the class ".", a name no sub-folder can have. Every image thus has a label, as
`dataset_provides` promises. With `captions.csv` (header `file,caption`, `file` relative to the root with
`/` separators) every image needs a caption; rows naming other files are ignored. There is no official
test set: val and test are both seeded shares (`ldm.data.encoded`). Files are listed in sorted order, so the
split depends only on the file names and the seed. A folder is listed once per process and listed again
when the modification time of the root, of one of its sub-folders or of captions.csv changes (adding or
removing a file changes its folder's); a change deeper down is seen by the next process.
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import torch

from ldm.config import DataConfig, Split
from ldm.data.base import data_root
from ldm.data.catalog import FOLDER_CAPTIONS_FILE
from ldm.data.encoded import EncodedFiles, EncodedImageDataset, encoded_split, packed_strings
from ldm.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ROOT_CLASS = "."


class FolderFiles(EncodedFiles):
    """Every image under a root: paths relative to it (posix), their labels and, with captions.csv, captions."""

    def __init__(self, root: Path, files: list[str], class_names: list[str], labels: list[int],
                 captions: list[str] | None) -> None:
        super().__init__(location=str(root), class_names=class_names,
                         labels=torch.tensor(labels, dtype=torch.int64), captions=captions)
        self.root, self.files = root, packed_strings(files)

    def __len__(self) -> int:
        return len(self.files)

    def open_file(self, index: int) -> BinaryIO:
        return open(self.root / self.files[index].decode(), "rb")

    def file_name(self, index: int) -> str:
        return str(self.root / self.files[index].decode())


def build_folder(cfg: DataConfig, split: Split, workdir: Path) -> EncodedImageDataset:
    return encoded_split(index_folder(data_root(cfg, workdir)), cfg, split)


def index_folder(root: Path) -> FolderFiles:
    """The images under `root` with their classes and captions, without decoding them; cached per process."""
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist; point -o data.root=DIR at a folder of images "
                        "(one sub-folder per class)")
    return _listed(root, _modification_times(root))


def _modification_times(root: Path) -> tuple[int, ...]:
    with os.scandir(root) as entries:
        children = sorted((e.name, e.stat().st_mtime_ns) for e in entries
                          if e.is_dir() or e.name == FOLDER_CAPTIONS_FILE)
    return (root.stat().st_mtime_ns, *(mtime for _, mtime in children))


@functools.lru_cache(maxsize=4)
def _listed(root: Path, modification_times: tuple[int, ...]) -> FolderFiles:
    files = sorted(_image_files(root))
    if not files:
        raise DataError(f"image folder '{root}' holds no images; allowed suffixes: {', '.join(IMAGE_SUFFIXES)}")
    classes = [_class_of(file) for file in files]
    class_names = sorted(set(classes))
    number = {name: i for i, name in enumerate(class_names)}
    captions_path = root / FOLDER_CAPTIONS_FILE
    return FolderFiles(root, files, class_names, [number[c] for c in classes],
                       read_captions(captions_path, files) if captions_path.is_file() else None)


def _image_files(root: Path) -> list[str]:
    """Image paths relative to `root`, hidden files and folders left out; os.walk needs no stat per file."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        prefix = Path(folder).relative_to(root)
        found += [(prefix / name).as_posix() for name in names
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES]
    return found


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


def offline_status(cfg: DataConfig, workdir: Path) -> tuple[bool, str]:
    return True, "your images under data.root (class = sub-folder, optional captions.csv)"
