"""Labelled image grids (data previews, samples, reconstructions) and atomic image files."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ldm.data.base import ImageDataset
from ldm.errors import UserError
from ldm.io import atomic_path

MIN_TILE = 64
LABEL_PX = 13  # label text height: readable at 100% zoom under a 64-pixel tile
_PAD = 2
_MAX_LABEL_LINES = 5  # a shapes prompt ("a small red circle in the upper left") fits under a 64-pixel tile
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def make_grid_image(images: Tensor, labels: list[str] | None = None, ncol: int | None = None) -> Image.Image:
    """Tile N x C x H x W images (float in [-1, 1] or uint8; C = 1 or 3) into one RGB image.

    Tiles smaller than MIN_TILE pixels are upscaled by a whole factor (nearest) so digits stay crisp;
    each label is word-wrapped under its tile (at most five lines).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"expected N x (1|3) x H x W images with N >= 1, got shape {tuple(images.shape)}")
    if labels is not None and len(labels) != images.shape[0]:
        raise ValueError(f"{len(labels)} labels for {images.shape[0]} images")
    tiles = _to_uint8(images).expand(-1, 3, -1, -1)
    scale = max(1, math.ceil(MIN_TILE / min(tiles.shape[-2:])))
    tiles = tiles.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    count, _, height, width = tiles.shape
    ncol = min(ncol or math.ceil(math.sqrt(count)), count)
    nrow = math.ceil(count / ncol)

    font = ImageFont.load_default(size=LABEL_PX)  # a scalable font (PIL's bitmap one where FreeType is missing)
    line_height = _line_height(font)
    wrapped = [_wrap(label, font, width) for label in labels] if labels is not None else []
    band = max((len(lines) for lines in wrapped), default=0) * line_height
    cell_w, cell_h = width + _PAD, height + band + _PAD
    grid = Image.new("RGB", (ncol * cell_w + _PAD, nrow * cell_h + _PAD), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i in range(count):
        x, y = _PAD + (i % ncol) * cell_w, _PAD + (i // ncol) * cell_h
        grid.paste(Image.fromarray(tiles[i].permute(1, 2, 0).numpy()), (x, y))
        for k, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((x, y + height + k * line_height), line, fill=_TEXT, font=font)
    return grid


def dataset_grid(dataset: ImageDataset, n: int, ncol: int | None = None) -> Image.Image:
    """A grid of `n` items spread evenly over the split, labelled by caption, else by class name."""
    count = min(n, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    images = torch.stack([dataset.uint8_image(i) for i in indices])
    labels = None
    if dataset.captions is not None:
        labels = [dataset.captions[i] for i in indices]
    elif dataset.labels is not None:
        labels = [dataset.class_names[int(dataset.labels[i])] for i in indices]
    return make_grid_image(images, labels, ncol)


def save_image_atomic(image: Image.Image, path: Path) -> None:
    """Write `image` in the format its suffix names, never leaving a half-written file."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise UserError(f"cannot write an image to '{path}': unknown suffix '{path.suffix}'; "
                        "allowed: .png, .jpg, .webp, .bmp, .tif, ...")
    with atomic_path(path) as tmp:
        image.save(tmp, format=image_format)


def _to_uint8(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8:
        return images.cpu()
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    return int(font.getbbox("Ag")[3]) + 2


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; words wider than a line are cut, overflow ends in '...'."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(_fit(word, font, width))
    if len(lines) > _MAX_LABEL_LINES:
        lines = lines[:_MAX_LABEL_LINES]
        lines[-1] = _fit(lines[-1] + "...", font, width, keep_end=3)
    return lines


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int, keep_end: int = 0) -> str:
    """`text` cut from the right (sparing its last `keep_end` characters) until it is at most `width` wide."""
    head, tail = text[:len(text) - keep_end], text[len(text) - keep_end:]
    while head and font.getlength(head + tail) > width:
        head = head[:-1]
    return head + tail
