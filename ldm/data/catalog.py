"""Which datasets exist and what each one's items carry besides `image`.

A leaf module (no config, no torch): `ldm.config` checks conditioning against it, and the dataset modules build
items that match it (tests/ldm/data/test_data_catalog.py holds them to it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

DatasetName = Literal["mnist", "shapes", "fashion-mnist", "cifar10", "celeba", "folder"]
DATASET_NAMES: tuple[DatasetName, ...] = get_args(DatasetName)

# A folder's keys depend on its files (see `dataset_provides`); every other dataset's are fixed.
PROVIDES: dict[DatasetName, frozenset[str]] = {
    "mnist": frozenset({"label", "caption"}),
    "fashion-mnist": frozenset({"label", "caption"}),
    "cifar10": frozenset({"label", "caption"}),
    "celeba": frozenset(),
    "shapes": frozenset({"label", "caption", "mask"}),
}
FOLDER_CAPTIONS_FILE = "captions.csv"


def dataset_provides(name: DatasetName, root: Path | None) -> frozenset[str]:
    """The item keys dataset `name` gives; a folder gives labels from sub-folders and captions from captions.csv."""
    if name != "folder":
        return PROVIDES[name]
    if root is not None and (Path(root) / FOLDER_CAPTIONS_FILE).is_file():
        return frozenset({"label", "caption"})
    return frozenset({"label"})
