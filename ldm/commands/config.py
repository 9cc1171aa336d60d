"""`ldm config`: show, validate and list experiment configs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ldm.commands.options import ConfigOption, OverrideOption, PresetOption, resolve_config
from ldm.config import load_config, preset_names

app = typer.Typer(help="Inspect and validate experiment configs.", no_args_is_help=True)


@app.command("show")
def show(
    config: Optional[Path] = ConfigOption,
    preset: Optional[str] = PresetOption,
    override: list[str] = OverrideOption,
) -> None:
    """Print the resolved YAML config and its content hash."""
    cfg = resolve_config(config, preset, override)
    typer.echo(cfg.to_yaml(), nl=False)
    typer.echo(f"# config hash: {cfg.config_hash()}  first-stage hash: {cfg.first_stage_hash()}")


@app.command("validate")
def validate(file: Path = typer.Argument(..., help="Experiment YAML file.")) -> None:
    """Check a config file; exit 1 with the reason if it is invalid."""
    cfg = load_config(file)
    typer.echo(f"{file}: valid (config hash {cfg.config_hash()})")


@app.command("presets")
def presets() -> None:
    """List the named presets shipped with the package."""
    for name in preset_names():
        typer.echo(name)
