"""Grids: layout sizes, nearest upscaling of tiles, labels drawn, atomic saving and its errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.config import DataConfig
from ldm.data.grid import MIN_TILE, dataset_grid, make_grid_image, save_image_atomic
from ldm.data.registry import build_dataset
from ldm.errors import UserError

PAD = 2


def test_layout_and_nearest_upscaling() -> None:
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    grid = make_grid_image(images, ncol=3)
    scale = MIN_TILE // 16
    assert grid.size == (3 * (MIN_TILE + PAD) + PAD, 2 * (MIN_TILE + PAD) + PAD)
    pixels = torch.from_numpy(np.array(grid)).permute(2, 0, 1)
    x, y = PAD + (MIN_TILE + PAD), PAD  # second tile of the first row
    expected = images[1].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    assert torch.equal(pixels[:, y:y + MIN_TILE, x:x + MIN_TILE], expected)
    # A large tile is not rescaled; the default is a square-ish layout.
    assert make_grid_image(torch.zeros(4, 1, 80, 80, dtype=torch.uint8)).size == (2 * 82 + PAD, 2 * 82 + PAD)


def test_float_images_map_from_minus_one_one() -> None:
    images = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(4, 1, 1, 1).expand(4, 1, 64, 64)
    grid = make_grid_image(images, ncol=4)
    centres = [grid.getpixel((PAD + i * (64 + PAD) + 32, PAD + 32)) for i in range(4)]
    assert centres == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (255, 255, 255)]


def test_labels_are_drawn_under_tiles_and_wrapped() -> None:
    images = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    plain = make_grid_image(images)
    labelled = make_grid_image(images, labels=["seven", "a very long caption that must wrap over lines"])
    assert labelled.width == plain.width and labelled.height > plain.height
    band = labelled.crop((PAD, PAD + 64, PAD + 64, labelled.height - PAD))
    assert np.asarray(band.convert("L")).min() < 128, "text pixels under the first tile"
    single_line = make_grid_image(images, labels=["7", "8"])
    assert plain.height < single_line.height < labelled.height
    with pytest.raises(ValueError, match="1 labels for 2 images"):
        make_grid_image(images, labels=["x"])


def test_dataset_grid_shows_the_items_with_captions(tmp_path: Path) -> None:
    dataset = build_dataset(DataConfig(name="shapes", resolution=16, channels=3, shapes_count=30), "val", tmp_path)
    assert len(dataset) == 3
    grid = dataset_grid(dataset, n=100, ncol=3)
    unlabelled = make_grid_image(torch.stack([dataset.uint8_image(i) for i in range(3)]), ncol=3)
    assert grid.width == unlabelled.width == 3 * (MIN_TILE + PAD) + PAD
    assert grid.height > unlabelled.height
    tiles = (0, 0, grid.width, PAD + MIN_TILE)
    assert np.array_equal(np.asarray(grid.crop(tiles)), np.asarray(unlabelled.crop(tiles)))


def test_save_is_atomic_and_checks_the_suffix(tmp_path: Path) -> None:
    image = make_grid_image(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    path = tmp_path / "out" / "grid.png"
    save_image_atomic(image, path)
    with Image.open(path) as written:
        assert written.format == "PNG" and written.size == image.size
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]
    with pytest.raises(UserError, match=r"unknown suffix '\.grid'; allowed: \.png"):
        save_image_atomic(image, tmp_path / "x.grid")


def test_labels_are_drawn_tall_enough_to_read_at_full_size():
    grid = np.asarray(make_grid_image(torch.zeros(1, 1, 16, 16, dtype=torch.uint8), labels=["Ag"]).convert("L"))
    band = grid[2 + MIN_TILE:]  # under the tile (upscaled to MIN_TILE pixels), past the padding
    inked = np.flatnonzero((band < 128).any(axis=1))
    assert inked.max() - inked.min() + 1 >= 12  # PIL's bitmap default font inks 10 rows, too small to read
