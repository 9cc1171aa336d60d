"""WebDataset tar shards (`data.name: webdataset`), read by random access through an index of their members.

A sample (`ldm.data.shard_index`) is one image (`jpg`, `png`, `webp`, ...) and, optionally, `cls` (an integer
label) and `txt` (a caption), the same keys in every sample as in the first. The shards are `data.shards`, a
brace pattern such as `/data/train-{000000..000099}.tar` (expanded by webdataset), else every `*.tar` directly
in `data.root`, in sorted order. Labels are the `cls` numbers themselves and the class names their decimal
strings, so label 7 stays 7 in every subset of the shards.

Why an index and not a stream: listing a shard's members gives each image's byte offset without reading
the images, and `uint8_image(i)` then reads one member with one seek, in a DataLoader worker. The samples
are thus numbered (shard by shard, in member order), and all that works on numbered items works unchanged:
the seeded item-level splits of `ldm.data.encoded`, the seeded epoch permutations and exact resume of the
training loop's `ResumableBatches`, and `uint8_image` for FID reference sets. A stream would need
shard-level splits, a shuffle buffer and a stored stream position. The price: shards must be uncompressed
`.tar` files on a local or shared filesystem, not URLs. Each shard is listed once (its list is cached on
disk) and a set of shards assembled once per process.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import webdataset

from ldm.config import DataConfig, Split
from ldm.data.base import data_root
from ldm.data.encoded import EncodedFiles, EncodedImageDataset, encoded_split, packed_strings
from ldm.data.folder import index_folder
from ldm.data.shard_index import CAPTION_EXTENSION, LABEL_EXTENSION, ShardSample, grouped_members, shard_samples
from ldm.errors import DataError
from ldm.io import atomic_path
from ldm.paths import cache_dir

SHARD_NAME = "shard-{:06d}.tar"


class ShardFiles(EncodedFiles):
    """Every sample of a set of shards: where its image lies (shard, byte offset, size), its label and caption."""

    def __init__(self, location: str, shards: list[Path], samples: list[tuple[int, ShardSample]],
                 labels: list[int] | None, captions: list[str] | None) -> None:
        class_names = [str(k) for k in range(max(labels) + 1)] if labels else []
        super().__init__(location=location, class_names=class_names,
                         labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
                         captions=captions)
        self.shards = packed_strings(str(shard) for shard in shards)
        self.shard = np.array([shard for shard, _ in samples], dtype=np.int32)
        self.offset = np.array([sample.offset for _, sample in samples], dtype=np.int64)
        self.size = np.array([sample.size for _, sample in samples], dtype=np.int64)
        self.members = packed_strings(sample.image for _, sample in samples)

    def __len__(self) -> int:
        return len(self.offset)

    def open_file(self, index: int) -> BinaryIO:
        with open(self.shards[self.shard[index]].decode(), "rb") as f:
            f.seek(int(self.offset[index]))
            return io.BytesIO(f.read(int(self.size[index])))

    def file_name(self, index: int) -> str:
        return f"{self.shards[self.shard[index]].decode()}:{self.members[index].decode()}"


def build_webdataset(cfg: DataConfig, split: Split, workdir: Path) -> EncodedImageDataset:
    shards = shard_paths(cfg.shards, data_root(cfg, workdir))
    stamps = tuple((stat.st_size, stat.st_mtime_ns) for stat in (shard.stat() for shard in shards))
    return encoded_split(_index(tuple(shards), stamps, cache_dir(workdir)), cfg, split)


def shard_paths(pattern: str | None, root: Path) -> list[Path]:
    """The shards: brace `pattern` (`data.shards`) expanded, else the `*.tar` files in `root`."""
    if pattern is not None:
        paths = [Path(url) for url in webdataset.shardlists.expand_urls(pattern)]
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise DataError(f"data.shards='{pattern}' names {len(missing)} missing shard(s), e.g. '{missing[0]}'; "
                            "allowed: uncompressed .tar files on a local or shared filesystem")
        return paths
    paths = sorted(root.glob("*.tar")) if root.is_dir() else []
    if not paths:
        raise DataError(f"no shards: '{root}' holds no *.tar files; point -o data.root=DIR at a folder of shards, "
                        "or give them as -o 'data.shards=/path/train-{000000..000099}.tar'")
    return paths


@functools.lru_cache(maxsize=4)
def _index(shards: tuple[Path, ...], stamps: tuple[tuple[int, int], ...], cache: Path) -> ShardFiles:
    # `stamps` (size, mtime of each shard) are part of the cache key only: a rewritten shard is indexed again.
    listed = [(number, sample) for number, shard in enumerate(shards) for sample in shard_samples(shard, cache)]
    if not listed:
        raise DataError(f"the {len(shards)} shard(s) starting with '{shards[0]}' hold no samples")
    wants = _keys(listed[0][1])
    for number, sample in listed:
        lacking = wants - _keys(sample)
        if lacking:
            raise DataError(f"sample '{sample.key}' of shard '{shards[number]}' has no {'/'.join(sorted(lacking))}, "
                            "which the first sample has; every sample needs the same keys")
    return ShardFiles(str(shards[0].parent), list(shards), listed,
                      [_label(s.label, s.key, shards[n]) for n, s in listed] if LABEL_EXTENSION in wants else None,
                      [s.caption.strip() for _, s in listed] if CAPTION_EXTENSION in wants else None)


def _keys(sample: ShardSample) -> set[str]:
    return {ext for ext, text in ((LABEL_EXTENSION, sample.label), (CAPTION_EXTENSION, sample.caption))
            if text is not None}


def _label(text: str, key: str, shard: Path) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise DataError(f"sample '{key}' of shard '{shard}' has cls '{digits}'; allowed: an integer >= 0")
    return int(digits)


def shard_provides(root: Path | None, shards: str | None) -> frozenset[str]:
    """`label` and `caption` where the first sample has `cls` and `txt`; nothing when no shard is found."""
    if root is None and shards is None:  # the default root lies in a work folder, unknown here
        return frozenset()
    try:
        # root only counts without shards
        _, members = next(grouped_members(shard_paths(shards, Path(root or "."))[0]), ("", {}))
    except DataError:
        return frozenset()
    keys = {LABEL_EXTENSION: "label", CAPTION_EXTENSION: "caption"}
    return frozenset(keys[ext] for ext in keys if ext in members)


def write_shards(source: Path, dest: Path, per_shard: int) -> list[Path]:
    """The images of folder `source` as shards of `per_shard` samples in `dest`: the file's bytes as they are,
    its class number (the folder's sorted class names, 0, 1, ...) as `cls`, its captions.csv caption as `txt`."""
    files = index_folder(source)
    if dest.is_dir() and any(dest.glob("*.tar")):
        raise DataError(f"'{dest}' already holds .tar files; allowed: a new or empty folder, so that no old shard "
                        "joins the new ones")
    written = []
    for number, start in enumerate(range(0, len(files), per_shard)):
        path = dest / SHARD_NAME.format(number)
        # mtime 0: the same folder gives the same bytes on every run
        with atomic_path(path) as tmp, webdataset.TarWriter(str(tmp), mtime=0) as tar:
            for i in range(start, min(start + per_shard, len(files))):
                with files.open_file(i) as f:
                    sample = {"__key__": f"{i:08d}", Path(files.files[i].decode()).suffix[1:].lower(): f.read(),
                              LABEL_EXTENSION: str(int(files.labels[i]))}
                if files.captions is not None:
                    sample[CAPTION_EXTENSION] = files.captions[i]
                tar.write(sample)
        written.append(path)
    return written


def offline_status(cfg: DataConfig, workdir: Path) -> tuple[bool, str]:
    return True, "your WebDataset .tar shards in data.root or data.shards (image + optional cls, txt)"
