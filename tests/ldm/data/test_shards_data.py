"""WebDataset shards: written from a folder they give the folder's items; patterns, keys and errors."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import webdataset
from PIL import Image
from torch.utils.data import DataLoader

from ldm.config import DataConfig, Override, load_config
from ldm.data.catalog import dataset_provides
from ldm.data.registry import build_dataset, data_config
from ldm.data.shards import _index, write_shards
from ldm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from conftest import ImageTree

SPLITS = ("train", "val", "test")


def _shards(tmp_path: Path, image_tree: ImageTree, *, captions: bool = True, per_shard: int = 2) -> Path:
    write_shards(image_tree.write(tmp_path / "images", captions=captions), tmp_path / "shards", per_shard)
    return tmp_path / "shards"


def _write(path: Path, samples: list[dict[str, bytes | str]]) -> None:
    with webdataset.TarWriter(str(path)) as tar:
        for sample in samples:
            tar.write(sample)


def test_shards_of_a_folder_hold_its_items_in_every_split(tmp_path: Path, image_tree: ImageTree) -> None:
    shards = _shards(tmp_path, image_tree)
    assert sorted(p.name for p in shards.iterdir()) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    folder_cfg = DataConfig(name="folder", root=tmp_path / "images", resolution=8, channels=3, val_fraction=0.2)
    shards_cfg = folder_cfg.model_copy(update={"name": "webdataset", "root": shards})
    for split in SPLITS:
        folder, sharded = build_dataset(folder_cfg, split, tmp_path), build_dataset(shards_cfg, split, tmp_path)
        assert sharded.captions == folder.captions and torch.equal(sharded.labels, folder.labels)
        assert [sharded.uint8_image(i).tolist() for i in range(len(sharded))] == \
            [folder.uint8_image(i).tolist() for i in range(len(folder))]
    # Class names become the class numbers the shards store.
    assert sharded.class_names == ["0", "1", "2"] and sharded.provides == {"label", "caption"}
    assert sharded.provides == dataset_provides("webdataset", shards)
    batch = next(iter(DataLoader(build_dataset(shards_cfg, "train", tmp_path), batch_size=4, num_workers=2)))
    assert batch["image"].shape == (4, 3, 8, 8) and len(batch["caption"]) == 4


def test_a_brace_pattern_chooses_the_shards(tmp_path: Path, image_tree: ImageTree) -> None:
    shards = _shards(tmp_path, image_tree, captions=False)
    cfg = DataConfig(name="webdataset", shards=f"{shards}/shard-{{000000..000001}}.tar", resolution=8,
                     val_fraction=0.2)
    assert sum(len(build_dataset(cfg, split, tmp_path)) for split in SPLITS) == 4
    assert dataset_provides("webdataset", None, cfg.shards) == {"label"}
    missing = cfg.model_copy(update={"shards": f"{shards}/shard-{{000002..000003}}.tar"})
    with pytest.raises(DataError, match=r"names 1 missing shard\(s\), e.g. '.*shard-000003\.tar'"):
        build_dataset(missing, "train", tmp_path)


def test_conditioning_is_checked_against_the_first_sample(tmp_path: Path, image_tree: ImageTree) -> None:
    shards = _shards(tmp_path, image_tree, captions=False)
    base = [Override("data.name", "webdataset"), Override("data.root", str(shards))]
    assert load_config(preset="micro", overrides=[*base, Override("diffusion.conditioning", "class")])
    with pytest.raises(ConfigError, match="conditioning='text' needs a caption per image, but dataset 'webdataset' "
                                          "provides: label"):
        load_config(preset="micro", overrides=[*base, Override("diffusion.conditioning", "text")])
    with pytest.raises(ConfigError, match=r"data\.shards='a\.tar' is read by data\.name=webdataset only, not 'folder'"):
        data_config("folder", [Override("data.shards", "a.tar")])
    assert dataset_provides("webdataset", tmp_path / "nowhere") == frozenset()


def test_samples_need_an_image_the_same_keys_and_integer_classes(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    image = png.getvalue()
    cases = {
        "no-image": ([{"__key__": "a", "png": image, "cls": "0"}, {"__key__": "b", "cls": "1"}],
                     r"sample 'b' of shard '.*no-image\.tar' has no image \(cls\); allowed extensions: jpg"),
        "keys": ([{"__key__": "a", "png": image, "cls": "0", "txt": "x"}, {"__key__": "b", "png": image, "cls": "1"}],
                 r"sample 'b' of shard '.*keys\.tar' has no txt, which the first sample has"),
        "cls": ([{"__key__": "a", "png": image, "cls": "cat"}], r"sample 'a' of shard .* has cls 'cat'; allowed: an "
                                                                r"integer >= 0"),
    }
    for name, (samples, message) in cases.items():
        (tmp_path / name).mkdir()
        _write(tmp_path / name / f"{name}.tar", samples)
        with pytest.raises(DataError, match=message):
            build_dataset(DataConfig(name="webdataset", root=tmp_path / name), "train", tmp_path)


def test_no_shards_and_compressed_shards_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=re.escape(f"no shards: '{tmp_path / 'empty'}' holds no *.tar files")):
        build_dataset(DataConfig(name="webdataset", root=tmp_path / "empty"), "train", tmp_path)
    (tmp_path / "gz").mkdir()
    with tarfile.open(tmp_path / "gz" / "a.tar", "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("a.png"), io.BytesIO(b""))
    with pytest.raises(DataError, match=r"cannot read shard '.*a\.tar' .*allowed: uncompressed \.tar files"):
        build_dataset(DataConfig(name="webdataset", root=tmp_path / "gz"), "train", tmp_path)


def test_shards_are_written_into_a_new_folder_only(tmp_path: Path, image_tree: ImageTree) -> None:
    shards = _shards(tmp_path, image_tree)
    first = (shards / "shard-000000.tar").read_bytes()
    with pytest.raises(DataError, match="already holds .tar files; allowed: a new or empty folder"):
        write_shards(tmp_path / "images", shards, 2)
    write_shards(tmp_path / "images", tmp_path / "again", 2)
    assert (tmp_path / "again" / "shard-000000.tar").read_bytes() == first  # the same bytes on every run


def test_a_shard_is_listed_once_until_it_changes(tmp_path: Path, image_tree: ImageTree,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    shards = _shards(tmp_path, image_tree)
    cfg = DataConfig(name="webdataset", root=shards, resolution=8, val_fraction=0.2)
    listed = build_dataset(cfg, "train", tmp_path)
    # Another process: nothing in memory, the cache folder's lists instead of the tar headers.
    _index.cache_clear()
    with monkeypatch.context() as m:
        m.setattr("ldm.data.shard_index.grouped_members", lambda shard: pytest.fail(f"listed {shard} again"))
        cached = build_dataset(cfg, "train", tmp_path)
        assert cached.captions == listed.captions and torch.equal(cached.uint8_image(0), listed.uint8_image(0))
        os.utime(shards / "shard-000001.tar", ns=(1, 1))
        with pytest.raises(pytest.fail.Exception, match="listed .*shard-000001.tar again"):
            build_dataset(cfg, "train", tmp_path)
