"""The registry: config and split errors name the value; every dataset has a status."""

from pathlib import Path

import pytest

from ldm.config import DataConfig, Override, parse_overrides
from ldm.data.registry import build_dataset, data_config, dataset_statuses
from ldm.errors import ConfigError


def test_bad_split_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split 'dev' is not allowed; allowed: train, val, test"):
        build_dataset(DataConfig(name="shapes", shapes_count=30), "dev", tmp_path)  # type: ignore[arg-type]


def test_data_config_applies_data_overrides_only() -> None:
    cfg = data_config("shapes", [*parse_overrides(["data.resolution=48", "data.channels=3"]),
                                 Override("data.split_seed", 5)])
    assert (cfg.name, cfg.resolution, cfg.channels, cfg.split_seed) == ("shapes", 48, 3, 5)
    with pytest.raises(ConfigError, match=r"^unknown dataset 'imagenet'; allowed: mnist, shapes, fashion-mnist"):
        data_config("imagenet")
    with pytest.raises(ConfigError, match=r"override 'autoencoder\.f=8' does not apply to a dataset"):
        data_config("mnist", [Override("autoencoder.f", 8)])
    with pytest.raises(ConfigError, match=r"data\.channels=2 is not allowed"):
        data_config("mnist", parse_overrides(["data.channels=2"]))
    with pytest.raises(ConfigError, match=r"unknown field 'data\.colour'"):
        data_config("mnist", parse_overrides(["data.colour=red"]))


def test_statuses_cover_every_dataset(tmp_path: Path) -> None:
    statuses = {status.name: status for status in dataset_statuses(tmp_path)}
    assert set(statuses) == {"mnist", "shapes", "fashion-mnist", "cifar10", "celeba", "folder",
                             "webdataset"}
    assert statuses["shapes"].offline and statuses["mnist"].offline
    assert not statuses["cifar10"].offline
    assert str(tmp_path / "data" / "cifar-10-batches-py") in statuses["cifar10"].detail
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    assert {s.name: s for s in dataset_statuses(tmp_path)}["cifar10"].offline
