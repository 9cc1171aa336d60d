"""The samples of one WebDataset shard: where each image lies in the tar, and its `cls` and `txt`.

A sample is the members sharing a key (webdataset's rule: the member's path up to the first `.` of its file
name). Listing a shard reads its tar headers (tarfile seeks over the data of an uncompressed tar) and its
small `cls` and `txt` members, about 0.2 ms a sample; the list is kept as JSON in
`<cache>/cache/shard-index/`, named by the shard's absolute path, size and modification time, so the next
process (the next stage, a sweep trial, another machine sharing the cache) reads it back instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import BinaryIO

from ldm.errors import DataError
from ldm.io import atomic_write_text

# Image extensions a sample may carry, most usual first; a sample's first one (in this order) is its image.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif")
LABEL_EXTENSION, CAPTION_EXTENSION = "cls", "txt"
# webdataset's `base_plus_ext`: the key is everything up to the first "." of the file name.
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# Bump when ShardSample changes, so that old cache entries are not read as new ones.
_FORMAT = 1


@dataclass(frozen=True)
class ShardSample:
    """One sample: its image member by name, byte offset and size; the text of its cls and txt, if any."""

    key: str
    image: str
    offset: int
    size: int
    label: str | None
    caption: str | None


def shard_samples(shard: Path, cache: Path) -> list[ShardSample]:
    """The samples of `shard` in member order, from the cache folder when listed before."""
    stat = shard.stat()
    name = json.dumps([_FORMAT, str(shard.resolve()), stat.st_size, stat.st_mtime_ns])
    entry = cache / "shard-index" / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.json"
    if entry.is_file():
        return [ShardSample(*row) for row in json.loads(entry.read_text(encoding="utf-8"))]
    with open(shard, "rb") as f:
        samples = [_sample(f"sample '{key}' of shard '{shard}'", key, members, f)
                   for key, members in grouped_members(shard)]
    atomic_write_text(entry, json.dumps([astuple(sample) for sample in samples]))
    return samples


def grouped_members(shard: Path) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, members by lower-case extension) of each sample of `shard`, in member order; headers only."""
    try:
        with tarfile.open(shard, "r:") as tar:
            key, members = None, {}
            for member in tar:
                match = _KEY_AND_EXTENSION.match(member.name) if member.isreg() else None
                if match is None:
                    continue
                if match.group(1) != key:
                    if key is not None:
                        yield key, members
                    key, members = match.group(1), {}
                members[match.group(2).lower()] = member
            if key is not None:
                yield key, members
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot read shard '{shard}' ({e}); allowed: uncompressed .tar files") from None


def _sample(where: str, key: str, members: dict[str, tarfile.TarInfo], f: BinaryIO) -> ShardSample:
    image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image is None:
        raise DataError(f"{where} has no image ({', '.join(sorted(members))}); allowed extensions: "
                        f"{', '.join(IMAGE_EXTENSIONS)}")
    text = {ext: _read(f, members[ext]) if ext in members else None for ext in (LABEL_EXTENSION, CAPTION_EXTENSION)}
    return ShardSample(key=key, image=image.name, offset=image.offset_data, size=image.size,
                       label=text[LABEL_EXTENSION], caption=text[CAPTION_EXTENSION])


def _read(f: BinaryIO, member: tarfile.TarInfo) -> str:
    f.seek(member.offset_data)
    return f.read(member.size).decode("utf-8")
