"""Which datasets exist, what each provides, and how to build a split of one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pydantic import ValidationError

from ldm.config import DataConfig, Override, Section, Split, format_validation_error
from ldm.data.catalog import DATASET_NAMES, dataset_provides
from ldm.errors import ConfigError

if TYPE_CHECKING:
    from ldm.data.base import ImageDataset

def build_dataset(cfg: DataConfig, split: Split, workdir: Path) -> ImageDataset:
    """One split of the configured dataset; items follow the `ImageDataset` contract."""
    if split not in get_args(Split):
        raise ConfigError(f"split '{split}' is not allowed; allowed: {', '.join(get_args(Split))}")
    return _families()[cfg.name].build(cfg, split, Path(workdir))


def data_config(name: str, overrides: Sequence[Override] = ()) -> DataConfig:
    """The data section for dataset `name` plus `data.*` overrides, as the `ldm data` commands see it."""
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset '{name}'; allowed: {', '.join(DATASET_NAMES)}")
    raw: dict[str, Any] = {"data": {"name": name}}
    for override in overrides:
        if not override.path.startswith("data."):
            raise ConfigError(f"override '{override}' does not apply to a dataset; only data.* fields do, "
                              "e.g. -o data.root=DIR")
        override.apply_to(raw)
    try:
        return _DataSection.model_validate(raw).data
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


@dataclass(frozen=True)
class DatasetStatus:
    """What `ldm data list` shows for one dataset."""

    name: str
    provides: frozenset[str]
    offline: bool
    detail: str


def dataset_statuses(workdir: Path) -> list[DatasetStatus]:
    """Every dataset, what its items carry, and whether it loads without internet (default data location)."""
    statuses = []
    for name, family in _families().items():
        cfg = DataConfig(name=name)
        offline, detail = family.offline_status(cfg, workdir)
        statuses.append(DatasetStatus(name, dataset_provides(cfg.name, cfg.root, cfg.shards), offline, detail))
    return statuses


class _DataSection(Section):
    """Only the data section, so validation messages name fields `data.<field>`."""

    data: DataConfig


@dataclass(frozen=True)
class _Family:
    build: Callable[[DataConfig, Split, Path], ImageDataset]
    offline_status: Callable[[DataConfig, Path], tuple[bool, str]]


def _families() -> dict[str, _Family]:
    # Imported here so that `ldm data list` and `data_config` start without loading torch.
    from ldm.data import folder, mnist, shapes, shards
    from ldm.data import torchvision_sets as tv

    return {
        "mnist": _Family(mnist.build_mnist, mnist.offline_status),
        "shapes": _Family(shapes.build_shapes, shapes.offline_status),
        "fashion-mnist": _Family(partial(tv.build_photo_set, "fashion-mnist"),
                                 partial(tv.offline_status, "fashion-mnist")),
        "cifar10": _Family(partial(tv.build_photo_set, "cifar10"), partial(tv.offline_status, "cifar10")),
        "celeba": _Family(tv.build_celeba, partial(tv.offline_status, "celeba")),
        "folder": _Family(folder.build_folder, folder.offline_status),
        "webdataset": _Family(shards.build_webdataset, shards.offline_status),
    }
