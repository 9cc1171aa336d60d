"""The one git-ignored output folder that every generated file lives under."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_WORKDIR = Path("outputs")
WORKDIR_ENV = "LDM_WORKDIR"
CACHE_ENV = "LDM_CACHE"


def resolve_workdir(explicit: Path | None = None) -> Path:
    """`--workdir` wins, then $LDM_WORKDIR, then ./outputs; created when missing."""
    chosen = explicit or (Path(os.environ[WORKDIR_ENV]) if os.environ.get(WORKDIR_ENV) else DEFAULT_WORKDIR)
    chosen = chosen.expanduser().resolve()
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def data_dir(workdir: Path) -> Path:
    return workdir / "data"


def cache_root(workdir: Path) -> Path:
    """Where everything built once and reused lives: `--cache` / $LDM_CACHE, else the work folder itself.

    Several work folders (or machines, on a shared filesystem) that name one cache build each item once.
    """
    chosen = os.environ.get(CACHE_ENV)
    return Path(chosen).expanduser().resolve() if chosen else workdir


def cache_dir(workdir: Path) -> Path:
    """Derived data: decoded datasets, reference features, domain classifiers, downloaded artifacts."""
    return cache_root(workdir) / "cache"


def first_stage_dir(workdir: Path, first_stage_hash: str) -> Path:
    """A trained first stage, shared by every config with its first-stage hash."""
    return cache_root(workdir) / "first_stages" / first_stage_hash


def artifact_cache_dir(workdir: Path) -> Path:
    """Checkpoints downloaded from a tracking server's artifact store, one folder per URI."""
    return cache_dir(workdir) / "artifacts"


def runs_dir(workdir: Path) -> Path:
    return workdir / "runs"


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"


def default_artifact_root(workdir: Path) -> Path:
    return workdir / "mlflow" / "artifacts"
