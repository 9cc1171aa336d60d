"""Image folders: classes from sub-folders, captions.csv, corrupt files both ways, missing roots."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from ldm.config import DataConfig
from ldm.data.catalog import dataset_provides
from ldm.data.folder import ROOT_CLASS
from ldm.data.registry import build_dataset
from ldm.errors import DataError

def _items(cfg: DataConfig, workdir: Path) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """caption -> (class name, split, decoded colour) over all splits."""
    found = {}
    for split in ("train", "val", "test"):
        dataset = build_dataset(cfg, split, workdir)
        for i in range(len(dataset)):
            colour = tuple(dataset.uint8_image(i)[:, 4, 4].tolist())
            found[dataset.captions[i]] = (dataset.class_names[int(dataset.labels[i])], split, colour)
    return found

if TYPE_CHECKING:
    from conftest import ImageTree


def test_classes_captions_and_pixels(tmp_path: Path, image_tree: ImageTree) -> None:
    root = image_tree.write(tmp_path / "images")
    cfg = DataConfig(name="folder", root=root, resolution=8, channels=3, val_fraction=0.2)
    found = _items(cfg, tmp_path)
    assert set(found) == {caption for _, caption in image_tree.images.values()}
    for file, (colour, caption) in image_tree.images.items():
        expected_class = file.split("/")[0] if "/" in file else ROOT_CLASS
        assert found[caption][0] == expected_class
        tolerance = 8 if file.endswith(".jpg") else 0
        assert max(abs(a - b) for a, b in zip(found[caption][2], colour, strict=True)) <= tolerance
    assert sorted(split for _, split, _ in found.values()) == ["test", "train", "train", "train", "train", "val"]
    train = build_dataset(cfg, "train", tmp_path)
    assert train.class_names == [ROOT_CLASS, "cats", "dogs"] and train.num_classes == 3
    assert train.provides == dataset_provides(cfg.name, cfg.root) == {"label", "caption"}
    assert train[0]["image"].shape == (3, 8, 8)


def test_without_captions_file_there_are_labels_only(tmp_path: Path, image_tree: ImageTree) -> None:
    image_tree.write(tmp_path / "images", captions=False)
    cfg = DataConfig(name="folder", root=tmp_path / "images", resolution=8, val_fraction=0.2)
    train = build_dataset(cfg, "train", tmp_path)
    assert train.captions is None and train.provides == dataset_provides(cfg.name, cfg.root) == {"label"}
    assert set(train[0]) == {"image", "label"} and train[0]["image"].shape == (1, 8, 8)


def test_corrupt_file_is_an_error_or_skipped_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for i in range(10):
        (root / "c").mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 10 * i).save(root / "c" / f"{i}.png")
    (root / "c" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    cfg = DataConfig(name="folder", root=root, resolution=8, val_fraction=0.1)
    splits = ("train", "val", "test")
    with pytest.raises(DataError, match=r"cannot read image '.*3\.png'.*data\.skip_bad_files=true"):
        for split in splits:
            build_dataset(cfg, split, tmp_path)
    skipping = cfg.model_copy(update={"skip_bad_files": True})
    with pytest.warns(UserWarning, match=r"skipping unreadable image '.*3\.png'"):
        sizes = [len(build_dataset(skipping, split, tmp_path)) for split in splits]
    assert sum(sizes) == 9


def test_missing_or_empty_root_and_incomplete_captions(tmp_path: Path, image_tree: ImageTree) -> None:
    with pytest.raises(DataError, match=re.escape(f"image folder '{tmp_path / 'absent'}' does not exist")):
        build_dataset(DataConfig(name="folder", root=tmp_path / "absent"), "train", tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"holds no images; allowed suffixes: \.png"):
        build_dataset(DataConfig(name="folder", root=tmp_path / "empty"), "train", tmp_path)
    root = image_tree.write(tmp_path / "images")
    (root / "captions.csv").write_text('file,caption\ncats/a.png,"a red cat"\n')
    with pytest.raises(DataError, match=r"no caption for 5 image\(s\), e.g. 'cats/b.jpg'"):
        build_dataset(DataConfig(name="folder", root=root), "train", tmp_path)
    (root / "captions.csv").write_text("name,text\n")
    with pytest.raises(DataError, match="must start with the header 'file,caption'"):
        build_dataset(DataConfig(name="folder", root=root), "train", tmp_path)
