"""Image folders: classes from sub-folders, captions.csv, corrupt files both ways, missing roots."""

import re
from pathlib import Path

import pytest
from PIL import Image

from ldm.config import DataConfig
from ldm.data.folder import ROOT_CLASS
from ldm.data.registry import build_dataset, dataset_provides
from ldm.errors import DataError

# file -> (colour, caption); the colour identifies the image after decoding.
IMAGES = {
    "cats/a.png": ((250, 0, 0), "a red cat"),
    "cats/b.jpg": ((0, 250, 0), "a green cat"),
    "cats/deeper/c.png": ((0, 0, 250), "a blue cat"),
    "dogs/d.png": ((250, 250, 0), "a yellow dog"),
    "dogs/e.bmp": ((0, 250, 250), "a cyan dog"),
    "f.png": ((250, 0, 250), "a loose magenta"),
}


def _make_tree(root: Path, captions: bool = True) -> None:
    for file, (colour, _) in IMAGES.items():
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 9), colour).save(root / file)
    (root / "notes.txt").write_text("not an image")
    if captions:
        rows = "".join(f'{file},"{caption}"\n' for file, (_, caption) in IMAGES.items())
        (root / "captions.csv").write_text("file,caption\n" + rows)


def _items(cfg: DataConfig, workdir: Path) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """caption -> (class name, split, decoded colour) over all splits."""
    found = {}
    for split in ("train", "val", "test"):
        dataset = build_dataset(cfg, split, workdir)
        for i in range(len(dataset)):
            colour = tuple(dataset.uint8_image(i)[:, 4, 4].tolist())
            found[dataset.captions[i]] = (dataset.class_names[int(dataset.labels[i])], split, colour)
    return found


def test_classes_captions_and_pixels(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _make_tree(root)
    cfg = DataConfig(name="folder", root=root, resolution=8, channels=3, val_fraction=0.2)
    found = _items(cfg, tmp_path)
    assert set(found) == {caption for _, caption in IMAGES.values()}
    for file, (colour, caption) in IMAGES.items():
        expected_class = file.split("/")[0] if "/" in file else ROOT_CLASS
        assert found[caption][0] == expected_class
        tolerance = 8 if file.endswith(".jpg") else 0
        assert max(abs(a - b) for a, b in zip(found[caption][2], colour, strict=True)) <= tolerance
    assert sorted(split for _, split, _ in found.values()) == ["test", "train", "train", "train", "train", "val"]
    train = build_dataset(cfg, "train", tmp_path)
    assert train.class_names == [ROOT_CLASS, "cats", "dogs"] and train.num_classes == 3
    assert train.provides == dataset_provides(cfg) == {"label", "caption"}
    assert train[0]["image"].shape == (3, 8, 8)


def test_without_captions_file_there_are_labels_only(tmp_path: Path) -> None:
    _make_tree(tmp_path / "images", captions=False)
    cfg = DataConfig(name="folder", root=tmp_path / "images", resolution=8, val_fraction=0.2)
    train = build_dataset(cfg, "train", tmp_path)
    assert train.captions is None and train.provides == dataset_provides(cfg) == {"label"}
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


def test_missing_or_empty_root_and_incomplete_captions(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"image folder '{tmp_path / 'absent'}' does not exist")):
        build_dataset(DataConfig(name="folder", root=tmp_path / "absent"), "train", tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"holds no images; allowed suffixes: \.png"):
        build_dataset(DataConfig(name="folder", root=tmp_path / "empty"), "train", tmp_path)
    root = tmp_path / "images"
    _make_tree(root)
    (root / "captions.csv").write_text('file,caption\ncats/a.png,"a red cat"\n')
    with pytest.raises(DataError, match=r"no caption for 5 image\(s\), e.g. 'cats/b.jpg'"):
        build_dataset(DataConfig(name="folder", root=root), "train", tmp_path)
    (root / "captions.csv").write_text("name,text\n")
    with pytest.raises(DataError, match="must start with the header 'file,caption'"):
        build_dataset(DataConfig(name="folder", root=root), "train", tmp_path)
