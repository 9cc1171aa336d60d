"""Options shared by every command that takes an experiment config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ldm.config import ExperimentConfig, load_config, parse_overrides

ConfigOption = typer.Option(None, "--config", "-c", help="Experiment YAML file.")
PresetOption = typer.Option(None, "--preset", "-p", help="Named preset (see `ldm config presets`); default tiny.")
OverrideOption = typer.Option(
    [], "--override", "-o", help="Dotted override, repeatable: -o autoencoder.f=8 -o diffusion.schedule=cosine"
)

# How every --checkpoint option states that it takes artifact URIs too (`ldm.artifacts.local_checkpoint`).
URI_HELP = ("or a runs:/<run id>/<path> or mlflow-artifacts:/ URI, downloaded once into the cache (tracking URI: "
            "$MLFLOW_TRACKING_URI, else the work folder's store).")


def resolve_config(config: Optional[Path], preset: Optional[str], overrides: list[str]) -> ExperimentConfig:
    return load_config(config, preset, parse_overrides(overrides))
