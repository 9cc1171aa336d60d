"""Procedural shapes: captions state what is drawn (colour, place, shape), masks cover it, splits are seeded."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ldm.config import DataConfig
from ldm.data.registry import build_dataset
from ldm.data.shapes import COLOURS, POSITIONS, SHAPE_NAMES, SIZES, ShapesDataset

CAPTION = re.compile(r"a (small|large) (\w+) (\w+) in the (upper left|upper right|lower left|lower right|center)")
# Share of its bounding box each shape covers, and the share of its area in the box's upper half.
AREA_SHARE = {"circle": math.pi / 4, "square": 1.0, "triangle": 1 / 2, "diamond": 1 / 2, "cross": 5 / 9}
UPPER_SHARE = {"circle": 0.5, "square": 0.5, "triangle": 1 / 4, "diamond": 0.5, "cross": 0.5}


def _all_items(cfg: DataConfig, workdir: Path) -> list[tuple[torch.Tensor, torch.Tensor, str, int]]:
    items = []
    for split in ("train", "val", "test"):
        dataset = build_dataset(cfg, split, workdir)
        assert isinstance(dataset, ShapesDataset)
        items += [(dataset.uint8_image(i), dataset.mask(i), dataset.captions[i], int(dataset.labels[i]))
                  for i in range(len(dataset))]
    return items


def test_captions_match_the_drawn_pixels(tmp_path: Path) -> None:
    resolution = 64
    items = _all_items(DataConfig(name="shapes", resolution=resolution, channels=3, shapes_count=30), tmp_path)
    assert len(items) == 30
    seen_shapes = set()
    for image, mask, caption, label in items:
        size, colour, shape, position = CAPTION.fullmatch(caption).groups()
        assert SHAPE_NAMES[label] == shape
        seen_shapes.add(shape)
        pixels, inside = image.float(), mask[0].bool()
        background = pixels[:, ~inside].median(dim=1).values.view(3, 1, 1)
        target = torch.tensor(COLOURS[colour], dtype=torch.float32).view(3, 1, 1)
        # Coverage of each pixel: how far it lies from the background towards the caption's colour.
        coverage = (((pixels - background) * (target - background)).sum(0)
                    / ((target - background) ** 2).sum()).clamp(0, 1)
        assert coverage[~inside].max() < 0.05, "the mask must cover the whole shape"

        core = coverage > 0.9
        mean_colour = pixels[:, core].mean(dim=1)
        nearest = min(COLOURS, key=lambda name: float((torch.tensor(COLOURS[name]) - mean_colour).norm()))
        assert nearest == colour, caption

        rows, cols = torch.nonzero(coverage > 0.5, as_tuple=True)
        centre = ((cols.min() + cols.max() + 1) / 2 / resolution, (rows.min() + rows.max() + 1) / 2 / resolution)
        nearest_place = min(POSITIONS, key=lambda p: math.dist(POSITIONS[p], (float(centre[0]), float(centre[1]))))
        assert nearest_place == position, caption

        side = SIZES[size] * resolution
        assert abs(float(coverage.sum()) / side**2 - AREA_SHARE[shape]) < 0.03, caption
        box_top, box_bottom = rows.min().item(), rows.max().item() + 1
        row_weight = (((box_top + box_bottom) / 2 - torch.arange(resolution)).clamp(0, 1)).view(-1, 1)
        assert abs(float((coverage * row_weight).sum() / coverage.sum()) - UPPER_SHARE[shape]) < 0.05, caption
    assert len(seen_shapes) >= 4


def test_items_types_ranges_and_collate(tmp_path: Path) -> None:
    cfg = DataConfig(name="shapes", resolution=24, channels=1, shapes_count=40)
    train = build_dataset(cfg, "train", tmp_path)
    assert train.provides == {"label", "caption", "mask"}
    assert train.num_classes == len(SHAPE_NAMES) >= 4 and train.class_names == SHAPE_NAMES
    assert len(COLOURS) >= 6 and len(POSITIONS) >= 5
    batch = next(iter(DataLoader(train, batch_size=4)))
    assert batch["image"].shape == (4, 1, 24, 24) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["mask"].shape == (4, 1, 24, 24) and batch["mask"].dtype == torch.float32
    assert set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    assert batch["label"].dtype == torch.int64 and len(batch["caption"]) == 4
    assert train.labels.dtype == torch.int64 and len(train.captions) == len(train)


@pytest.mark.parametrize("resolution", [8, 96])
def test_any_resolution(tmp_path: Path, resolution: int) -> None:
    dataset = build_dataset(DataConfig(name="shapes", resolution=resolution, channels=3, shapes_count=30),
                            "val", tmp_path)
    assert dataset[0]["image"].shape == (3, resolution, resolution)


def test_same_seed_same_items_other_seed_other_split(tmp_path: Path) -> None:
    cfg = DataConfig(name="shapes", resolution=16, channels=3, shapes_count=60)
    first, second = build_dataset(cfg, "train", tmp_path), build_dataset(cfg, "train", tmp_path)
    assert first.captions == second.captions
    assert all(torch.equal(first[i]["image"], second[i]["image"]) for i in range(5))
    reseeded = build_dataset(cfg.model_copy(update={"split_seed": 1}), "train", tmp_path)
    assert not torch.equal(reseeded.source_indices, first.source_indices)
    # The split seed moves items between splits; the items themselves stay the same.
    shared = sorted(set(first.source_indices.tolist()) & set(reseeded.source_indices.tolist()))[0]
    i, j = first.source_indices.tolist().index(shared), reseeded.source_indices.tolist().index(shared)
    assert first.captions[i] == reseeded.captions[j]
    assert torch.equal(first.uint8_image(i), reseeded.uint8_image(j))
