"""Setting up MLflow runs, for `ldm train`, `ldm eval` and the sweeps: the store, experiments, runs, standard tags."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ldm.config import ExperimentConfig
from ldm.db_drivers import check_driver
from ldm.errors import UserError
from ldm.paths import default_artifact_root, default_tracking_uri
from ldm.tracking.tags import Tag
from ldm.tracking.tracker import MlflowTracker, NullTracker, Tracker, flatten
from ldm.training.device import resolve_device

# MLflow is imported inside the functions that open a store: untracked training and evaluation never load it.

SQLITE_PREFIX = "sqlite:///"
# Tracking URIs of a server, which places artifacts itself.
SERVER_SCHEMES = ("http://", "https://", "databricks")
# What MLflow exports to a process it starts inside a run (`mlflow run`, a tracked script).
RUN_ID_ENV = "MLFLOW_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def resolve_tracking_uri(workdir: Path, explicit: str | None = None) -> str:
    """`explicit`, else the embedded SQLite store under the work folder; a database URL's driver must be installed."""
    uri = explicit or default_tracking_uri(workdir)
    check_driver(uri)
    return uri


def create_store_folder(tracking_uri: str) -> None:
    """Make the folder of a SQLite store, which SQLite does not create itself; other stores need nothing."""
    if tracking_uri.startswith(SQLITE_PREFIX):
        Path(tracking_uri.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)


def artifact_root(tracking_uri: str, workdir: Path) -> Path | None:
    """Where artifacts go for a local store; a tracking server decides that itself."""
    return None if tracking_uri.startswith(SERVER_SCHEMES) else default_artifact_root(workdir)


# MLflow 3's UI opens an experiment of this kind on its training runs, not on GenAI traces.
EXPERIMENT_KIND = "custom_model_development"


def experiment_id(tracking_uri: str, name: str, workdir: Path) -> str:
    """The id of the active experiment `name`, created when missing (also by another process meanwhile)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    create_store_folder(tracking_uri)
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            root = artifact_root(tracking_uri, workdir)
            try:
                return client.create_experiment(name, artifact_location=(root / name).as_uri() if root else None,
                                                tags={Tag.EXPERIMENT_KIND: EXPERIMENT_KIND})
            except MlflowException:
                experiment = client.get_experiment_by_name(name)  # created meanwhile by another process
                if experiment is None:
                    raise
    except MlflowException as e:
        raise UserError(f"cannot use MLflow tracking URI '{tracking_uri}': {e.message}") from None
    if experiment.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment '{name}' in {tracking_uri} is deleted; restore it (`mlflow experiments "
                        f"restore --experiment-id {experiment.experiment_id}`) or use another experiment name")
    return experiment.experiment_id


def delete_experiment(tracking_uri: str, name: str) -> bool:
    """Delete the experiment `name`, renamed first so that the name is free for a new study (MLflow keeps a
    deleted experiment, restorable, until its store is garbage-collected); False if there is none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return False
    client.rename_experiment(experiment.experiment_id, f"{name} (deleted {time.strftime('%Y-%m-%d %H:%M:%S')})")
    client.delete_experiment(experiment.experiment_id)
    return True


def start_run(tracking_uri: str, experiment: str, name: str, *, parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None) -> MlflowTracker:
    """A new RUNNING run in experiment id `experiment`, nested under `parent_run_id` when given."""
    from mlflow.tracking import MlflowClient

    all_tags = {**(tags or {}), **({Tag.PARENT_RUN_ID: parent_run_id} if parent_run_id else {})}
    run = MlflowClient(tracking_uri=tracking_uri).create_run(
        experiment, run_name=name, tags={str(k): str(v) for k, v in all_tags.items()})
    return MlflowTracker(run.info.run_id, tracking_uri)


def describe_run(tracker: Tracker, cfg: ExperimentConfig, tags: Mapping[str, str] | None = None) -> None:
    """Every resolved config field and the seed as params; the provenance tags and `tags` in one batch."""
    tracker.log_params({**flatten(cfg.model_dump(mode="json")), "seed": cfg.training.seed})
    tracker.set_tags({
        Tag.CONFIG_HASH: cfg.config_hash(),
        Tag.FIRST_STAGE_HASH: cfg.first_stage_hash(),
        Tag.GIT_COMMIT: git_commit(),
        Tag.TORCH_VERSION: torch.__version__,
        Tag.DEVICE: resolve_device(cfg.training.device).type,
        **(tags or {}),
    })


@contextlib.contextmanager
def tracked_run(cfg: ExperimentConfig, workdir: Path) -> Iterator[MlflowTracker]:
    """One described run for a block (`cfg.tracking`'s store and experiment), FAILED or KILLED if it raises."""
    uri = resolve_tracking_uri(workdir, cfg.tracking.tracking_uri)
    tracker = start_run(uri, experiment_id(uri, cfg.tracking.experiment, workdir), cfg.name)
    status = "FAILED"
    try:
        describe_run(tracker, cfg)
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)


def active_run_tracker(workdir: Path) -> Tracker:
    """The MLflow run this process was started inside ($MLFLOW_RUN_ID, $MLFLOW_TRACKING_URI), else a NullTracker."""
    run_id = os.environ.get(RUN_ID_ENV)
    if not run_id:
        return NullTracker()
    return MlflowTracker(run_id, resolve_tracking_uri(workdir, os.environ.get(TRACKING_URI_ENV)))


@functools.cache
def git_commit() -> str:
    """HEAD of the checkout this code runs from; `unknown` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
