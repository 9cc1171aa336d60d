"""Procedural coloured shapes with true captions and inpainting masks: file-free, any resolution.

Each image shows one shape (its label) of one colour and size, in one of five positions, on a plain dark
grey background. The caption states exactly that ("a small red triangle in the upper left"); the mask is
the shape's bounding box, rounded outwards to whole pixels. The factors of every image are drawn at once
from a fixed seed, so `data.split_seed` changes only which images land in which split. Images are rendered
on demand, supersampled and box-filtered down for antialiasing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ldm.config import DataConfig, Split
from ldm.data.base import ImageDataset, fit_images, pil_to_uint8, split_indices

Box = tuple[float, float, float, float]
RGB = tuple[int, int, int]

SHAPE_NAMES = ["circle", "square", "triangle", "diamond", "cross"]
COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (50, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 50),
    "purple": (150, 70, 210),
    "cyan": (60, 210, 220),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
# Side of the shape's bounding box, as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.24, "large": 0.42}
# Centre of each position's cell, (x, y) as fractions of the image side; a cell is CELL x CELL.
POSITIONS: dict[str, tuple[float, float]] = {
    "upper left": (0.25, 0.25),
    "upper right": (0.75, 0.25),
    "lower left": (0.25, 0.75),
    "lower right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
CELL = 0.5
CONTENT_SEED = 2112
# Share of the free room in its cell by which a shape's centre may move: it never leaves the cell.
_JITTER = 0.8
_BACKGROUND_GREYS = (20, 70)
_MAX_SUPERSAMPLING = 8
_MAX_CANVAS = 1024


@dataclass(frozen=True)
class ShapeScene:
    """The facts of one image; coordinates are fractions of the image side."""

    shape: str
    colour: str
    size: str
    position: str
    centre: tuple[float, float]
    background: int

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} in the {self.position}"

    @property
    def box(self) -> Box:
        """The shape's bounding box (x0, y0, x1, y1)."""
        half = SIZES[self.size] / 2
        x, y = self.centre
        return (x - half, y - half, x + half, y + half)


class ShapeFactors:
    """The factors of all `count` images, drawn from CONTENT_SEED; `scene(i)` assembles image i's facts."""

    def __init__(self, count: int) -> None:
        rng = np.random.default_rng(CONTENT_SEED)
        self.shape = rng.integers(len(SHAPE_NAMES), size=count)
        self.colour = rng.integers(len(COLOURS), size=count)
        self.size = rng.integers(len(SIZES), size=count)
        self.position = rng.integers(len(POSITIONS), size=count)
        self.offset = rng.uniform(-1.0, 1.0, size=(count, 2))
        self.background = rng.integers(_BACKGROUND_GREYS[0], _BACKGROUND_GREYS[1], size=count, endpoint=True)

    def scene(self, index: int) -> ShapeScene:
        size = list(SIZES)[self.size[index]]
        position = list(POSITIONS)[self.position[index]]
        room = _JITTER * (CELL - SIZES[size]) / 2
        cell_x, cell_y = POSITIONS[position]
        dx, dy = self.offset[index]
        return ShapeScene(
            shape=SHAPE_NAMES[self.shape[index]],
            colour=list(COLOURS)[self.colour[index]],
            size=size,
            position=position,
            centre=(cell_x + room * float(dx), cell_y + room * float(dy)),
            background=int(self.background[index]),
        )


def build_shapes(cfg: DataConfig, split: Split, workdir: Path) -> ShapesDataset:
    indices = split_indices(cfg, split, cfg.shapes_count, carve_test=True)
    return ShapesDataset(ShapeFactors(cfg.shapes_count), torch.from_numpy(indices), cfg.resolution, cfg.channels)


class ShapesDataset(ImageDataset):
    """A split of the generated shapes: labels, captions and masks, images rendered per item."""

    def __init__(self, factors: ShapeFactors, source_indices: Tensor, resolution: int, channels: int) -> None:
        super().__init__(
            source_indices=source_indices,
            class_names=list(SHAPE_NAMES),
            labels=torch.from_numpy(factors.shape[source_indices.numpy()]).to(torch.int64),
            captions=[factors.scene(int(i)).caption for i in source_indices],
            has_masks=True,
        )
        self.factors = factors
        self.resolution = resolution
        self.channels = channels

    def scene(self, index: int) -> ShapeScene:
        return self.factors.scene(int(self.source_indices[index]))

    def uint8_image(self, index: int) -> Tensor:
        rgb = render_scene(self.scene(index), self.resolution)
        return fit_images(rgb[None], self.resolution, self.channels)[0]

    def mask(self, index: int) -> Tensor:
        return scene_mask(self.scene(index), self.resolution)


def render_scene(scene: ShapeScene, resolution: int) -> Tensor:
    """The scene as uint8 3 x R x R RGB."""
    factor = max(1, min(_MAX_SUPERSAMPLING, _MAX_CANVAS // resolution))
    side = resolution * factor
    canvas = Image.new("RGB", (side, side), (scene.background,) * 3)
    box = tuple(v * side for v in scene.box)
    _DRAW[scene.shape](ImageDraw.Draw(canvas), box, COLOURS[scene.colour])
    # Image.reduce averages factor x factor blocks: each pixel gets its exact coverage.
    return pil_to_uint8(canvas.reduce(factor))


def scene_mask(scene: ShapeScene, resolution: int) -> Tensor:
    """Float32 1 x R x R, 1 on every pixel the shape's bounding box touches."""
    x0, y0, x1, y1 = scene.box
    mask = torch.zeros(1, resolution, resolution)
    rows = slice(math.floor(y0 * resolution), math.ceil(y1 * resolution))
    cols = slice(math.floor(x0 * resolution), math.ceil(x1 * resolution))
    mask[:, rows, cols] = 1.0
    return mask


# PIL fills rectangles and ellipses over inclusive integer pixel bounds, and polygons over the pixels whose
# centres lie inside; the helpers map a continuous box (pixel k spans [k, k + 1)) onto those conventions.
def _inclusive(box: Box) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (round(v) for v in box)
    return (x0, y0, x1 - 1, y1 - 1)


def _polygon(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], fill: RGB) -> None:
    draw.polygon([(x - 0.5, y - 0.5) for x, y in points], fill=fill)


def _circle(draw: ImageDraw.ImageDraw, box: Box, fill: RGB) -> None:
    draw.ellipse(_inclusive(box), fill=fill)


def _square(draw: ImageDraw.ImageDraw, box: Box, fill: RGB) -> None:
    draw.rectangle(_inclusive(box), fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, box: Box, fill: RGB) -> None:
    """Pointing up."""
    x0, y0, x1, y1 = box
    _polygon(draw, [(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill)


def _diamond(draw: ImageDraw.ImageDraw, box: Box, fill: RGB) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    _polygon(draw, [(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill)


def _cross(draw: ImageDraw.ImageDraw, box: Box, fill: RGB) -> None:
    """A plus sign whose bars are a third of the box wide."""
    x0, y0, x1, y1 = box
    cx, cy, half_bar = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 6
    draw.rectangle(_inclusive((cx - half_bar, y0, cx + half_bar, y1)), fill=fill)
    draw.rectangle(_inclusive((x0, cy - half_bar, x1, cy + half_bar)), fill=fill)


_DRAW: dict[str, Callable[[ImageDraw.ImageDraw, Box, RGB], None]] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "diamond": _diamond, "cross": _cross,
}


def offline_status(cfg: DataConfig, workdir: Path) -> tuple[bool, str]:
    return True, "procedural, no files"
