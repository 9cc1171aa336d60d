"""Which datasets exist and what each one's items carry besides `image`.

A leaf module (no config, no torch): `ldm.config` checks conditioning against it, and the dataset modules build
items that match it (tests/ldm/data/test_data_catalog.py holds them to it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

DatasetName = Literal["mnist", "shapes", "fashion-mnist", "cifar10", "celeba", "folder", "webdataset"]
DATASET_NAMES: tuple[DatasetName, ...] = get_args(DatasetName)
# Datasets of the user's own files: `data.root` (and `data.shards`) name the data itself, not where it is kept.
OWN_FILES: frozenset[DatasetName] = frozenset({"folder", "webdataset"})

# The keys of a folder and of shards depend on their files (see `dataset_provides`); every other dataset's are fixed.
PROVIDES: dict[DatasetName, frozenset[str]] = {
    "mnist": frozenset({"label", "caption"}),
    "fashion-mnist": frozenset({"label", "caption"}),
    "cifar10": frozenset({"label", "caption"}),
    "celeba": frozenset(),
    "shapes": frozenset({"label", "caption", "mask"}),
}
FOLDER_CAPTIONS_FILE = "captions.csv"


def dataset_provides(name: DatasetName, root: Path | None, shards: str | None = None) -> frozenset[str]:
    """The item keys dataset `name` gives; a folder gives labels from sub-folders and captions from captions.csv,
    shards what their first sample carries (`cls`, `txt`)."""
    if name == "webdataset":
        # Reads one shard's first headers; imported here, as it loads torch (validation loads it anyway).
        from ldm.data.shards import shard_provides

        return shard_provides(root, shards)
    if name != "folder":
        return PROVIDES[name]
    if root is not None and (Path(root) / FOLDER_CAPTIONS_FILE).is_file():
        return frozenset({"label", "caption"})
    return frozenset({"label"})
