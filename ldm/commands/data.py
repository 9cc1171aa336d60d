"""`ldm data`: list datasets, render labelled sample grids, write a folder as WebDataset shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ldm.commands.options import OverrideOption
from ldm.config import Override, Split, parse_overrides
from ldm.data.registry import build_dataset, data_config, dataset_statuses
from ldm.paths import resolve_workdir

app = typer.Typer(help="List datasets and look at them.", no_args_is_help=True)


@app.command("list")
def list_datasets() -> None:
    """List the datasets, what their items carry, and whether they load offline."""
    for status in dataset_statuses(resolve_workdir()):
        provides = ", ".join(sorted(status.provides)) or "images only"
        offline = "offline" if status.offline else "not offline"
        typer.echo(f"{status.name:<14} {provides:<22} {offline:<12} {status.detail}")


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Dataset name (see `ldm data list`)."),
    split: Split = typer.Option("train", "--split", help="Which split to draw from."),
    n: int = typer.Option(64, "--n", min=1, help="Number of images in the grid."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Image side (default: data.resolution)."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 or 3 (default: data.channels)."),
    override: list[str] = OverrideOption,
    out: Optional[Path] = typer.Option(
        None, "--out", help="Image file to write (default: <workdir>/previews/<name>-<split>.png)."
    ),
) -> None:
    """Write a grid of sample images labelled by caption or class name."""
    # Imported here so that the CLI starts without loading torch.
    from ldm.data.grid import dataset_grid, save_image_atomic

    flags = [Override(f"data.{key}", value) for key, value in (("resolution", resolution), ("channels", channels))
             if value is not None]
    cfg = data_config(name, [*parse_overrides(override), *flags])
    workdir = resolve_workdir()
    dataset = build_dataset(cfg, split, workdir)
    grid = dataset_grid(dataset, n)
    path = out or workdir / "previews" / f"{name}-{split}.png"
    save_image_atomic(grid, path)
    typer.echo(f"wrote {path}: {min(n, len(dataset))} of {len(dataset)} {split} images, "
               f"{grid.width}x{grid.height} px")


@app.command("shards")
def shards(
    source: Path = typer.Argument(..., help="A folder dataset: images in class sub-folders, optional captions.csv."),
    dest: Path = typer.Argument(..., help="New folder for shard-000000.tar, shard-000001.tar, ..."),
    per_shard: int = typer.Option(1000, "--per-shard", min=1, help="Samples per shard."),
) -> None:
    """Write a folder of images as WebDataset shards (image bytes, cls = class number, txt = caption)."""
    from ldm.data.shards import write_shards

    written = write_shards(source, dest, per_shard)
    typer.echo(f"wrote {len(written)} shard(s) to {dest}; train on them with -o data.name=webdataset "
               f"-o data.root={dest}")
