"""The catalog and the built datasets agree: every dataset's items carry exactly what `dataset_provides` says."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ldm.config import DataConfig
from ldm.data.catalog import DATASET_NAMES, dataset_provides
from ldm.data.registry import build_dataset, dataset_statuses
from ldm.data.shards import write_shards
from ldm.paths import resolve_workdir

if TYPE_CHECKING:
    from conftest import ImageTree

# The catalog's datasets, a folder and shards both with and without captions.
CASES = ["mnist", "shapes", "fashion-mnist", "cifar10", "celeba", "folder", "folder-without-captions", "webdataset",
         "webdataset-without-captions"]


def test_every_catalog_dataset_has_a_case() -> None:
    assert {case.removesuffix("-without-captions") for case in CASES} == set(DATASET_NAMES)


@pytest.mark.parametrize("case", CASES)
def test_built_items_carry_what_the_catalog_says(case: str, tmp_path: Path, image_tree: ImageTree,
                                                 request: pytest.FixtureRequest) -> None:
    workdir = tmp_path
    match case:
        case "mnist" | "cifar10" | "celeba":
            cfg = DataConfig(name=case)
            if case != "mnist":  # their files cannot be generated (torchvision checks their hashes)
                workdir = resolve_workdir()
                status = {s.name: s for s in dataset_statuses(workdir)}[case]
                if not status.offline:
                    pytest.skip(f"{case}: {status.detail}")
        case "shapes":
            cfg = DataConfig(name="shapes", shapes_count=30)
        case "fashion-mnist":
            request.getfixturevalue("fashion_mnist_files")
            cfg = DataConfig(name="fashion-mnist", resolution=28)
        case "folder" | "folder-without-captions":
            root = image_tree.write(tmp_path / "images", captions=case == "folder")
            cfg = DataConfig(name="folder", root=root, resolution=8)
        case "webdataset" | "webdataset-without-captions":
            root = image_tree.write(tmp_path / "images", captions=case == "webdataset")
            cfg = DataConfig(name="webdataset", root=tmp_path / "shards", resolution=8)
            write_shards(root, cfg.root, per_shard=4)
    dataset = build_dataset(cfg, "test", workdir)
    assert dataset.provides == dataset_provides(cfg.name, cfg.root, cfg.shards)
    assert set(dataset[0]) == {"image"} | dataset.provides
