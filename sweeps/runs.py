"""MLflow bookkeeping of a sweep: an experiment and a parent run per study, a child run per trial, none left RUNNING."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ldm.config import ExperimentConfig
from ldm.errors import UserError
from ldm.io import atomic_write_text
from ldm.paths import default_artifact_root, default_tracking_uri
from ldm.tracking import MlflowTracker, flatten
from ldm.training.device import resolve_device
from sweeps.spec import SweepSpec

ROLE_TAG = "ldm.role"
STUDY_TAG = "ldm.study"
TRIAL_TAG = "ldm.trial_number"
FAIL_TAG = "ldm.fail_reason"
SERVER_SCHEMES = ("http://", "https://", "databricks")


def resolve_tracking_uri(workdir: Path, tracking_uri: str | None) -> str:
    """`--tracking-uri`, else the embedded SQLite store under the work folder (its folder created)."""
    uri = tracking_uri or default_tracking_uri(workdir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def artifact_root(tracking_uri: str, workdir: Path) -> Path | None:
    """Where artifacts go for a local store; a tracking server decides that itself."""
    return None if tracking_uri.startswith(SERVER_SCHEMES) else default_artifact_root(workdir)


def mlflow_ui_command(tracking_uri: str, workdir: Path, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri]
    root = artifact_root(tracking_uri, workdir)
    if root is not None:
        command += ["--default-artifact-root", str(root)]
    return [*command, "--host", host, "--port", str(port)]


@dataclass(frozen=True)
class StudyTracking:
    """The MLflow home of one study."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    @functools.cached_property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)


def open_study_tracking(tracking_uri: str, workdir: Path, spec: SweepSpec, spec_file: Path) -> StudyTracking:
    """The study's experiment and its parent run (found by tag on resume), the run set RUNNING."""
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = _experiment(client, spec.name, artifact_root(tracking_uri, workdir))
    except MlflowException as e:
        raise UserError(f"cannot use MLflow tracking URI '{tracking_uri}': {e.message}") from None
    found = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'study'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        objectives = ",".join(f"{o.metric}:{o.direction}" for o in spec.objectives)
        run_id = client.create_run(experiment_id, run_name=spec.name, tags={
            ROLE_TAG: "study", STUDY_TAG: spec.name, "ldm.sampler": str(spec.sampler),
            "ldm.objectives": objectives}).info.run_id
        atomic_write_text(spec_file, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        client.log_artifact(run_id, str(spec_file))
    return StudyTracking(tracking_uri, experiment_id, run_id)


def _experiment(client: MlflowClient, name: str, root: Path | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (root / name).as_uri() if root is not None else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by another process
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment '{name}' is deleted; restore it (`mlflow experiments restore "
                        f"--experiment-id {experiment.experiment_id}`) or give the study another name")
    return experiment.experiment_id


def close_study_run(tracking: StudyTracking, status: str, tags: dict[str, str]) -> None:
    MlflowTracker(tracking.parent_run_id, tracking.tracking_uri).set_tags(tags)
    tracking.client.set_terminated(tracking.parent_run_id, status)


def start_trial_run(tracking: StudyTracking, study: str, number: int) -> MlflowTracker:
    run = tracking.client.create_run(tracking.experiment_id, run_name=f"trial-{number}", tags={
        MLFLOW_PARENT_RUN_ID: tracking.parent_run_id, ROLE_TAG: "trial", STUDY_TAG: study, TRIAL_TAG: str(number)})
    return MlflowTracker(run.info.run_id, tracking.tracking_uri)


def describe_trial_run(tracker: MlflowTracker, cfg: ExperimentConfig, seed: int, config_file: Path) -> None:
    """Every resolved config field as a param, the provenance tags, and the config itself."""
    tracker.log_params({**flatten(cfg.model_dump(mode="json")), "seed": seed})
    tracker.set_tags({
        "ldm.config_hash": cfg.config_hash(),
        "ldm.first_stage_hash": cfg.first_stage_hash(),
        "ldm.git_commit": git_commit(),
        "ldm.torch_version": torch.__version__,
        "ldm.device": resolve_device(cfg.training.device).type,
        "ldm.num_samples": str(cfg.evaluation.num_samples),
    })
    cfg.save(config_file)
    tracker.log_artifact(config_file)


def end_trial_run(tracker: MlflowTracker, status: str, reason: str | None = None,
                  files: Iterable[Path] = ()) -> None:
    for path in files:
        tracker.log_artifact(path)
    if reason is not None:
        tracker.set_tags({FAIL_TAG: reason})
    tracker.client.set_terminated(tracker.run_id, status)


def close_stale_runs(tracking: StudyTracking, stale_run_ids: Iterable[str], live_trials: set[int],
                     reason: str) -> list[str]:
    """KILL the runs of stale trials, and any RUNNING trial run whose trial no live worker holds."""
    running = tracking.client.search_runs(
        [tracking.experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'RUNNING'", max_results=50000)
    orphans = [r.info.run_id for r in running if int(r.data.tags.get(TRIAL_TAG, -1)) not in live_trials]
    killed = sorted(set(stale_run_ids) | set(orphans))
    for run_id in killed:
        tracking.client.set_tag(run_id, FAIL_TAG, reason)
        tracking.client.set_terminated(run_id, "KILLED")
    return killed


@functools.cache
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"

