"""Image folders: classes from sub-folders, captions.csv, lazy decoding, corrupt files both ways, missing roots."""

from __future__ import annotations

import contextlib
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ldm.config import DataConfig, Override, load_config
from ldm.data.base import ImageDataset, loader_workers
from ldm.data.catalog import dataset_provides
from ldm.data.encoded import UnreadableImageError
from ldm.data.folder import ROOT_CLASS, index_folder
from ldm.data.registry import build_dataset
from ldm.errors import DataError
from ldm.tracking import NullTracker
from ldm.training.loop import Stage, StepLosses, train_stage
from ldm.training.sharding import StepNoise

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


def _gray_pngs(root: Path, count: int) -> None:
    (root / "c").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("L", (8, 8), 10 * i).save(root / "c" / f"{i}.png")


def _load_all(datasets: list[ImageDataset]) -> None:
    for dataset in datasets:
        for i in range(len(dataset)):
            dataset.uint8_image(i)


def test_unreadable_file_fails_when_loaded_or_is_left_out_of_its_split(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _gray_pngs(root, 10)
    (root / "c" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    cfg = DataConfig(name="folder", root=root, resolution=8, val_fraction=0.1)
    splits = ("train", "val", "test")
    lazy = [build_dataset(cfg, split, tmp_path) for split in splits]  # building decodes nothing
    assert sum(len(dataset) for dataset in lazy) == 10
    with pytest.raises(DataError, match=r"cannot read image '.*3\.png'.*data\.skip_bad_files=true"):
        _load_all(lazy)
    skipping = cfg.model_copy(update={"skip_bad_files": True})
    with pytest.warns(UserWarning, match=r"skipping unreadable image '.*3\.png'"):
        checked = [build_dataset(skipping, split, tmp_path) for split in splits]
    _load_all(checked)
    # The readable files keep their splits: the bad one leaves its split and moves no other file.
    for before, after in zip(lazy, checked, strict=True):
        assert set(after.source_indices.tolist()) == set(before.source_indices.tolist()) - {3}


def test_an_unreadable_file_is_a_one_line_error_from_a_worker_too(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _gray_pngs(root, 10)
    (root / "c" / "3.png").write_bytes(b"not a png")
    train = build_dataset(DataConfig(name="folder", root=root, resolution=8, holdout_items=1), "train", tmp_path)
    with pytest.raises(UnreadableImageError) as raised:
        list(DataLoader(train, batch_size=len(train), num_workers=1))
    assert re.fullmatch(r"cannot read image '.*3\.png' \(.*\); fix or remove it, or leave such files out with "
                        r"-o data\.skip_bad_files=true", str(raised.value))


def test_a_file_that_passes_the_check_but_cannot_be_decoded_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _gray_pngs(root, 10)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "c" / "cut.jpg")  # noise: the pixel data outweigh the headers
    whole = (root / "c" / "cut.jpg").read_bytes()
    (root / "c" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    cfg = DataConfig(name="folder", root=root, resolution=8, val_fraction=0.1, skip_bad_files=True)
    splits = [build_dataset(cfg, split, tmp_path) for split in ("train", "val", "test")]
    assert sum(len(dataset) for dataset in splits) == 11
    with pytest.raises(DataError, match=r"cannot read image '.*cut\.jpg'.*passed the check when the split was built"):
        _load_all(splits)


def test_a_split_pickles_and_loads_the_same_in_worker_processes(tmp_path: Path, image_tree: ImageTree) -> None:
    root = image_tree.write(tmp_path / "images")
    train = build_dataset(DataConfig(name="folder", root=root, resolution=8, channels=3, val_fraction=0.2),
                          "train", tmp_path)
    copy = pickle.loads(pickle.dumps(train))
    assert [copy.uint8_image(i).tolist() for i in range(len(copy))] == \
        [train.uint8_image(i).tolist() for i in range(len(train))]
    in_process = next(iter(DataLoader(train, batch_size=len(train))))
    in_workers = next(iter(DataLoader(train, batch_size=len(train), num_workers=2)))
    assert torch.equal(in_process["image"], in_workers["image"]) and in_process["caption"] == in_workers["caption"]


def test_a_folder_is_listed_once_until_one_of_its_folders_changes(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _gray_pngs(root, 10)
    assert index_folder(root) is index_folder(root)
    Image.new("L", (8, 8)).save(root / "c" / "new.png")
    relisted = index_folder(root)
    assert len(relisted) == 11 and relisted is index_folder(root)


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


class _RecordingStep:
    """A linear model's step that records the captions and images of every batch it is given."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.seen: list[tuple[list[str], Tensor]] = []

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.model.parameters())}

    def losses(self, batch: dict[str, Any], step: int, noise: StepNoise) -> StepLosses:
        self.seen.append((list(batch["caption"]), batch["image"].clone()))
        return StepLosses({"model": self.model(batch["image"].flatten(1)).pow(2).mean()})

    def val_loss(self, batch: dict[str, Any], noise: StepNoise) -> Tensor:
        return torch.zeros(())

    def preview(self, batch: dict[str, Any]) -> Image.Image:
        return Image.new("L", (4, 4))


class _StopAt(NullTracker):
    def __init__(self, step: int) -> None:
        self.step = step

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is not None and step >= self.step:
            raise KeyboardInterrupt


def test_a_resumed_run_with_workers_sees_the_batches_of_an_uninterrupted_one(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _gray_pngs(root, 24)
    (root / "captions.csv").write_text("file,caption\n" + "".join(f"c/{i}.png,image {i}\n" for i in range(24)))
    data = DataConfig(name="folder", root=root, resolution=8, val_fraction=0.125)
    train, val = build_dataset(data, "train", tmp_path), build_dataset(data, "val", tmp_path)
    settings = {"steps": 10, "batch_size": 4, "checkpoint_every": 4, "log_every": 2, "image_every": 100,
                "val_batches": 1, "warmup_steps": 0}
    cfg = load_config(preset="tiny", overrides=[Override("training.num_workers", 2),
                                                *(Override(f"training.diffusion.{k}", v) for k, v in settings.items())])
    assert loader_workers(cfg.training.num_workers, train) == 2

    def run(checkpoint: Path, tracker: NullTracker, resume: bool = False) -> _RecordingStep:
        torch.manual_seed(0)
        model = nn.Linear(64, 1)
        step = _RecordingStep(model)
        stage = Stage(name="diffusion", settings=cfg.training.diffusion, metric_prefix="d", val_metric="val_loss",
                      model=model, step=step, train_data=train, val_data=val, checkpoint=checkpoint, extras={},
                      preview_key="p")
        with contextlib.suppress(KeyboardInterrupt):
            train_stage(stage, cfg, torch.device("cpu"), tracker, resume=resume)
        return step

    straight = run(tmp_path / "straight.pt", NullTracker())
    assert len(straight.seen) == 10 and len(train) == 18  # 4 batches an epoch: the run crosses two epochs
    run(tmp_path / "resumed.pt", _StopAt(6))  # interrupted at step 6, after the checkpoint of step 4
    resumed = run(tmp_path / "resumed.pt", NullTracker(), resume=True)
    assert [captions for captions, _ in resumed.seen] == [captions for captions, _ in straight.seen[4:]]
    for (_, a), (_, b) in zip(resumed.seen, straight.seen[4:], strict=True):
        assert torch.equal(a, b)
