"""MLflow bookkeeping of a sweep: an experiment and a parent run per study, a child run per trial, none left RUNNING."""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from ldm.config import ExperimentConfig, content_hash
from ldm.io import atomic_write_text
from ldm.tracking import MlflowTracker, Role, Tag, TrialOutcome
from ldm.tracking.runs import artifact_root, describe_run, experiment_id, start_run
from sweeps.spec import SweepSpec, TrialPoint, short_param_names

SPEC_ARTIFACT = "spec.yaml"  # the spec as the parent run logs it; reports read the study's design from it


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


def open_study_tracking(tracking_uri: str, workdir: Path, spec: SweepSpec, spec_file: Path,
                        parent_run_id: str | None = None) -> StudyTracking:
    """The study's experiment and its parent run, set RUNNING: the given one, else the one found by tag, else
    a new one (with the spec as its artifact)."""
    experiment = experiment_id(tracking_uri, spec.name, workdir)
    client = MlflowClient(tracking_uri=tracking_uri)
    if parent_run_id is None:
        found = client.search_runs([experiment], filter_string=f"tags.`{Tag.ROLE}` = '{Role.STUDY}'",
                                   max_results=1)
        parent_run_id = found[0].info.run_id if found else None
    save_runs_view(client, experiment, spec)
    if parent_run_id is not None:
        client.update_run(parent_run_id, status="RUNNING")
        return StudyTracking(tracking_uri, experiment, parent_run_id)
    objectives = ",".join(f"{o.metric}:{o.direction}" for o in spec.objectives)
    parent = start_run(tracking_uri, experiment, spec.name, tags={
        Tag.ROLE: Role.STUDY, Tag.STUDY: spec.name, Tag.SAMPLER: str(spec.sampler), Tag.OBJECTIVES: objectives})
    atomic_write_text(spec_file, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    parent.log_artifact(spec_file)
    return StudyTracking(tracking_uri, experiment, parent.run_id)


# The MLflow UI's saved runs views are experiment tags under this prefix, opened by `?viewStateShareKey=<key>`.
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "ldm-trials"


def runs_view_state(spec: SweepSpec) -> dict[str, object]:
    """The runs table a study opens on: its trials, one column per swept value and objective, best first."""
    swept = [f"params.`{SWEPT_PARAM_PREFIX}{path}`" for path, param in spec.space.items() if param.varies()]
    objectives = [f"metrics.`{o.metric}`" for o in spec.objectives]
    return {"selectedColumns": [*swept, *objectives],
            "orderByKey": objectives[0], "orderByAsc": spec.objectives[0].direction == "minimize",
            "searchFilter": f"tags.`{Tag.ROLE}` = '{Role.TRIAL}'", "runsHiddenMode": "SHOW_ALL"}


def save_runs_view(client: MlflowClient, experiment: str, spec: SweepSpec) -> None:
    client.set_experiment_tag(experiment, SHARED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY, json.dumps(runs_view_state(spec)))


def runs_view_urls(tracking_uri: str, ui_url: str) -> dict[str, str]:
    """Study name -> the URL of its saved runs view, for every study of the tracking store."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return {e.name: f"{ui_url}/#/experiments/{e.experiment_id}/runs?viewStateShareKey={RUNS_VIEW_KEY}"
            for e in client.search_experiments() if SHARED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY in e.tags}


TRIAL_COUNT_TAGS: dict[TrialState, Tag] = {
    TrialState.COMPLETE: Tag.TRIALS_COMPLETE,
    TrialState.FAIL: Tag.TRIALS_FAILED,
    TrialState.PRUNED: Tag.TRIALS_PRUNED,
    TrialState.RUNNING: Tag.TRIALS_RUNNING,
    TrialState.WAITING: Tag.TRIALS_WAITING,
}


def study_run_status(ended: str, counts: Counter[TrialState]) -> str:
    """A study that ran to its end without completing a single trial has FAILED; KILLED and FAILED stay."""
    return "FAILED" if ended == "FINISHED" and counts[TrialState.COMPLETE] == 0 else ended


def close_study_run(tracking: StudyTracking, ended: str, trials: Iterable[FrozenTrial],
                    best: Iterable[FrozenTrial], outcome: str) -> None:
    """End the parent run with its outcome (complete, stopped early, interrupted, failed), its trials counted per
    state and its best trials named."""
    counts = Counter(t.state for t in trials)
    parent = MlflowTracker(tracking.parent_run_id, tracking.tracking_uri)
    parent.set_tags({**{tag: str(counts[state]) for state, tag in TRIAL_COUNT_TAGS.items()},
                     Tag.BEST_TRIALS: ",".join(str(t.number) for t in best), Tag.STUDY_OUTCOME: outcome})
    parent.end(study_run_status(ended, counts))


SWEPT_PARAM_PREFIX = "_swept."  # swept params again under this prefix, so the UI lists them first


def trial_run_name(point: TrialPoint) -> str:
    """The swept values by their last path part, then the seed: `f=2 c=4 s0` (full paths where parts clash)."""
    names = short_param_names(list(point.params))
    return " ".join([*(f"{name}={value}" for name, value in zip(names, point.params.values())), f"s{point.seed}"])


def configuration_key(point: TrialPoint) -> str:
    """The same for every seed of one configuration."""
    return content_hash(point.params)


def start_trial_run(tracking: StudyTracking, study: str, number: int, point: TrialPoint) -> MlflowTracker:
    tracker = start_run(tracking.tracking_uri, tracking.experiment_id, trial_run_name(point),
                        parent_run_id=tracking.parent_run_id,
                        tags={Tag.ROLE: Role.TRIAL, Tag.STUDY: study, Tag.TRIAL_NUMBER: str(number),
                              Tag.CONFIGURATION: configuration_key(point)})
    tracker.log_params({f"{SWEPT_PARAM_PREFIX}{path}": value for path, value in point.params.items()})
    return tracker


def describe_trial_run(tracker: MlflowTracker, cfg: ExperimentConfig, config_file: Path) -> None:
    """The standard params and tags (`describe_run`), the evaluation's sample count, and the config itself."""
    describe_run(tracker, cfg, tags={Tag.NUM_SAMPLES: str(cfg.evaluation.num_samples)})
    cfg.save(config_file)
    tracker.log_artifact(config_file)


RUN_STATUS: dict[TrialOutcome, str] = {
    TrialOutcome.COMPLETE: "FINISHED",
    TrialOutcome.FAILED: "FAILED",
    TrialOutcome.PRUNED: "KILLED",
    TrialOutcome.INTERRUPTED: "KILLED",
    TrialOutcome.WORKER_DIED: "KILLED",
}


def end_trial_run(tracker: MlflowTracker, outcome: TrialOutcome, reason: str | None = None,
                  files: Iterable[Path] = ()) -> None:
    for path in files:
        tracker.log_artifact(path)
    tracker.set_tags({Tag.TRIAL_OUTCOME: outcome, **({Tag.FAIL_REASON: reason} if reason is not None else {})})
    tracker.end(RUN_STATUS[outcome])


def close_stale_runs(tracking: StudyTracking, stale_run_ids: Iterable[str], live_trials: set[int],
                     reason: str) -> list[str]:
    """KILL the runs of stale trials, and any RUNNING trial run whose trial no live worker holds."""
    running = tracking.client.search_runs(
        [tracking.experiment_id],
        filter_string=f"tags.`{Tag.ROLE}` = '{Role.TRIAL}' and attributes.status = 'RUNNING'", max_results=50000)
    orphans = [r.info.run_id for r in running if int(r.data.tags.get(Tag.TRIAL_NUMBER, -1)) not in live_trials]
    killed = sorted(set(stale_run_ids) | set(orphans))
    for run_id in killed:
        tracking.client.set_tag(run_id, Tag.FAIL_REASON, reason)
        tracking.client.set_tag(run_id, Tag.TRIAL_OUTCOME, TrialOutcome.WORKER_DIED)
        tracking.client.set_terminated(run_id, RUN_STATUS[TrialOutcome.WORKER_DIED])
    return killed

