"""One study's MLflow runs as pandas: the parent run, trials by state, swept factors, histories and artifacts."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import mlflow
import pandas as pd
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.tracking import MlflowClient

from evaluation.metric_catalog import CATALOG
from ldm.config import ExperimentConfig
from ldm.errors import UserError
from ldm.tracking import Role, Tag, TrialOutcome, flatten
from reports.design import SEED_PARAM, StudyDesign, spec_design
from sweeps.runs import SPEC_ARTIFACT, SWEPT_PARAM_PREFIX
from sweeps.spec import ReportSpec

MISSING_VALUE = "n/a"

TrialState = Literal["finished", "duplicate", "failed", "pruned", "interrupted", "worker_died", "killed", "running"]
TRIAL_STATES: tuple[TrialState, ...] = get_args(TrialState)
# Why a trial run ended, from the tag the sweep sets (`sweeps.runs.end_trial_run`); only finished trials enter
# aggregates, and a later finished run of the same configuration and seed is a `duplicate`, not a replicate.
STATE_OF_OUTCOME: dict[str, TrialState] = {
    TrialOutcome.COMPLETE: "finished", TrialOutcome.FAILED: "failed", TrialOutcome.PRUNED: "pruned",
    TrialOutcome.INTERRUPTED: "interrupted", TrialOutcome.WORKER_DIED: "worker_died",
}
# Runs without that tag: KILLED is the pruner, a dead worker or an interruption alike, so it says no more than killed.
STATE_OF_STATUS: dict[str, TrialState] = {
    "FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running", "SCHEDULED": "running",
}
DUPLICATE_OF = "duplicate_of"  # column of `StudyRuns.trials`: the trial number a duplicate repeats
# `autoencoder.f` of the identity first stage (`ldm.first_stage.build_first_stage`), as MLflow logs the param.
IDENTITY_F = "1"

# Readable row labels for the factors of the LDM ablations, in the order tables list them.
FACTOR_LABELS: dict[str, str] = {
    "autoencoder.f": "f",
    "autoencoder.latent_channels": "c",
    "autoencoder.regularizer": "regulariser",
    "diffusion.schedule": "schedule",
    "diffusion.prediction": "prediction",
    "diffusion.conditioning": "conditioning",
    "diffusion.sampling.guidance_scale": "guidance",
}


# Sweep variants of a catalog metric: `ddim<K>/<metric>` and `g<scale>/<metric>` (docs/architecture.md).
SWEEP_VARIANT = re.compile(r"^(?P<kind>ddim|g)(?P<value>\d+(?:\.\d+)?)/(?P<metric>.+)$")


def catalog_base(name: str) -> str | None:
    """The catalog metric behind a logged name (itself or a sweep variant's base); None for training curves."""
    match = SWEEP_VARIANT.match(name)
    base = match["metric"] if match else name
    return base if base in CATALOG else None


def param_column(name: str) -> str:
    return f"params.{name}"


def metric_column(name: str) -> str:
    return f"metrics.{name}"


def tag_column(name: str) -> str:
    return f"tags.{name}"


def factor_label(param: str) -> str:
    """Short name of a swept config field (`autoencoder.f` -> `f`); other fields keep their dotted name."""
    return FACTOR_LABELS.get(param, param)


def is_seed(param: str) -> bool:
    """Seeds make replicates of a configuration, never a configuration of their own."""
    last = param.rsplit(".", 1)[-1]
    return last == "seed" or last.endswith("_seed")


def _non_semantic_params() -> frozenset[str]:
    """Config fields that never change results (paths, tracking, worker counts), so they are never factors."""
    cfg = ExperimentConfig()
    return frozenset(flatten(cfg.model_dump(mode="json"))) - frozenset(flatten(cfg.semantic_dict()))


NON_FACTOR_PARAMS = _non_semantic_params()


def ordered_values(values: Iterable[str]) -> list[str]:
    """Distinct values, numerically when all are numbers (f = 1, 2, 4, 16 rather than 1, 16, 2, 4)."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def configuration_label(values: Mapping[str, str]) -> str:
    """`f=4, schedule=cosine` from swept param -> value; `all runs` when nothing is swept."""
    return ", ".join(f"{factor_label(p)}={v}" for p, v in values.items()) or "all runs"


def column_or_missing(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column of `search_runs` output; all-missing when no run logged it (MLflow omits such columns)."""
    if column in frame.columns:
        return frame[column]
    return pd.Series(pd.NA, index=frame.index, dtype="object")


@dataclass(frozen=True)
class StudyRuns:
    """The runs of one study: `trials` has `search_runs` columns plus `state` and `duplicate_of`.

    `factors` and their `levels` come from the parent run's spec when it logged one (`reports.design`),
    otherwise from the params that vary across finished trials; `grid_seeds` only for a grid study.
    `objectives` and `report` (the spec's `report:` section) are empty and the defaults without a spec.
    """

    name: str
    parent: pd.Series
    trials: pd.DataFrame
    factors: tuple[str, ...]
    levels: dict[str, tuple[str, ...]]
    spec_yaml: str | None
    grid_seeds: tuple[str, ...] | None
    objectives: tuple[str, ...]
    report: ReportSpec
    client: MlflowClient = field(repr=False)

    @functools.cached_property
    def finished(self) -> pd.DataFrame:
        return self.in_state("finished")

    def in_state(self, state: TrialState) -> pd.DataFrame:
        return self.trials[self.trials["state"] == state]

    def state_counts(self) -> dict[TrialState, int]:
        return {state: int((self.trials["state"] == state).sum()) for state in TRIAL_STATES}

    def grid_points(self) -> list[dict[str, str]]:
        """Every point of a grid study (factor levels, then `training.seed`), seeds outermost; [] for other samplers."""
        combos = list(itertools.product(*(self.levels[f] for f in self.factors)))
        return [{**dict(zip(self.factors, combo)), SEED_PARAM: seed}
                for seed in self.grid_seeds or () for combo in combos]

    def missing_points(self) -> list[dict[str, str]]:
        """Grid points that no finished trial covers (their trials failed, were stopped, or never ran)."""
        keys = pd.DataFrame({p: column_or_missing(self.finished, param_column(p)) for p in (*self.factors, SEED_PARAM)})
        covered = set(keys.itertuples(index=False, name=None))
        return [p for p in self.grid_points() if tuple(p.values()) not in covered]

    def metric_names(self) -> list[str]:
        """Metrics that at least one finished trial logged, sorted by name."""
        finished = self.finished
        return sorted(c.removeprefix("metrics.") for c in finished.columns
                      if c.startswith("metrics.") and finished[c].notna().any())

    def metric(self, name: str) -> pd.Series:
        """The final value of a metric per finished trial (NaN where a trial did not log it)."""
        return pd.to_numeric(column_or_missing(self.finished, metric_column(name)), errors="coerce")

    def identity_run_ids(self) -> frozenset[str]:
        """The finished trials that ran on the identity first stage, by run id."""
        return frozenset(self.finished.loc[self.identity_first_stage(), "run_id"])

    def identity_first_stage(self) -> pd.Series:
        """Per finished trial, whether it ran on the identity first stage (f = 1), by its logged config."""
        return column_or_missing(self.finished, param_column("autoencoder.f")) == IDENTITY_F

    def tag_values(self, tag: str) -> list[str]:
        """Distinct values of a tag over the parent and all trials, in first-seen order."""
        values = [self.parent.get(tag_column(tag)), *column_or_missing(self.trials, tag_column(tag))]
        return list(dict.fromkeys(v for v in values if isinstance(v, str)))

    def parent_params(self) -> dict[str, str]:
        return {k.removeprefix("params."): v for k, v in self.parent.items()
                if k.startswith("params.") and isinstance(v, str)}

    def history(self, run_id: str, key: str) -> pd.DataFrame:
        """Every logged value of a step metric (`step`, `value`); a re-logged step keeps its latest value."""
        points = sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        frame = pd.DataFrame({"step": [m.step for m in points], "value": [m.value for m in points]})
        return frame.drop_duplicates("step", keep="last").sort_values("step", ignore_index=True)

    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path | None:
        """Copy a run's artifact under `dst`; None when the run has no such artifact."""
        return _download_artifact(self.client, run_id, path, dst)

    def log_folder(self, folder: Path, artifact_path: str) -> None:
        """Log a local folder's files to the parent run under `artifact_path`."""
        self.client.log_artifacts(self.parent["run_id"], str(folder), artifact_path)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for a block (MLflow would draw a progress bar per downloaded file)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """`mlflow.search_runs` reads the global tracking URI: set it for the call and restore it afterwards."""
    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def swept_factors(finished: pd.DataFrame) -> tuple[str, ...]:
    """Params that take more than one value across finished trials, minus seeds and non-semantic fields."""
    return _as_factors(c.removeprefix("params.") for c in finished.columns
                       if c.startswith("params.") and finished[c].nunique(dropna=False) > 1)


def _as_factors(params: Iterable[str]) -> tuple[str, ...]:
    """Params without seeds and non-semantic fields, in the order tables list them."""
    factors = [p for p in params if not is_seed(p) and p not in NON_FACTOR_PARAMS
               and not p.startswith(SWEPT_PARAM_PREFIX)]  # the sweep's copies of the swept params
    known = list(FACTOR_LABELS)
    return tuple(sorted(factors, key=lambda p: (known.index(p) if p in known else len(known), p)))


def trial_states(trials: pd.DataFrame) -> pd.Series:
    """Each trial run's state: from its `Tag.TRIAL_OUTCOME`, else from its MLflow status (`STATE_OF_STATUS`)."""
    outcome = column_or_missing(trials, tag_column(Tag.TRIAL_OUTCOME)).map(STATE_OF_OUTCOME)
    return outcome.fillna(trials["status"].map(STATE_OF_STATUS)).fillna("running")


def mark_duplicates(trials: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """Finished trials repeating a configuration and seed become `duplicate`; the earliest finished one stays.

    A re-queued trial whose first worker was only presumed dead finishes twice; counting both would make
    one seed look like two replicates. `duplicate_of` holds the trial number of the one kept.
    """
    keys = [param_column(p) for p in (*factors, SEED_PARAM)]
    number = tag_column(Tag.TRIAL_NUMBER)
    finished = trials[trials["state"] == "finished"]
    finished = pd.DataFrame({k: column_or_missing(finished, k) for k in (*keys, number, "end_time")},
                            index=finished.index).sort_values("end_time", kind="stable")
    repeats = finished[finished.duplicated(keys)]
    kept = finished.drop_duplicates(keys)[[*keys, number]]
    kept_number = repeats[keys].merge(kept, on=keys, how="left").set_axis(repeats.index)[number]
    return trials.assign(state=trials["state"].mask(trials.index.isin(repeats.index), "duplicate"),
                         **{DUPLICATE_OF: kept_number.reindex(trials.index)})


def _download_artifact(client: MlflowClient, run_id: str, path: str, dst: Path) -> Path | None:
    folder, _, name = path.rpartition("/")
    listed = {Path(a.path).name for a in client.list_artifacts(run_id, folder or None)}
    if name not in listed:
        return None
    dst.mkdir(parents=True, exist_ok=True)
    with _environment(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, "false"):
        return Path(client.download_artifacts(run_id, path, str(dst)))


def _spec_yaml(client: MlflowClient, run_id: str) -> str | None:
    """The spec the parent run logged (`sweeps.runs`); None when it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _download_artifact(client, run_id, SPEC_ARTIFACT, Path(tmp))
        return path.read_text() if path is not None else None


def load_study(study: str, tracking_uri: str) -> StudyRuns:
    """Read a study (an MLflow experiment) with `mlflow.search_runs`; UserError names the studies that exist."""
    sqlite_file = tracking_uri.removeprefix("sqlite:///") if tracking_uri.startswith("sqlite:///") else None
    if sqlite_file is not None and not Path(sqlite_file).is_file():
        # MLflow would silently create an empty store there
        raise UserError(f"no MLflow store at {tracking_uri}; run a sweep first or pass the store's tracking URI")
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"unknown study '{study}' in {tracking_uri}; studies there: {', '.join(names) or 'none'}")
    with _global_tracking_uri(tracking_uri):
        runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id])
    roles = column_or_missing(runs, tag_column(Tag.ROLE))
    parents = runs[roles == Role.STUDY]
    if parents.empty:
        raise UserError(f"study '{study}' has no parent run (tag {Tag.ROLE}={Role.STUDY}); "
                        "was it started by `ldm sweep`?")
    trials = runs[roles == Role.TRIAL].assign(state=trial_states)
    number = pd.to_numeric(column_or_missing(trials, tag_column(Tag.TRIAL_NUMBER)), errors="coerce")
    trials = trials.loc[number.sort_values(na_position="last", kind="stable").index]
    # search_runs lists the newest run first: a resumed study reports into its latest parent.
    parent = parents.iloc[0]
    spec_yaml = _spec_yaml(client, parent["run_id"])
    design = spec_design(spec_yaml) if spec_yaml is not None else None
    specified = design.levels if design is not None else None
    factors = _as_factors(specified) if specified is not None else swept_factors(trials[trials["state"] == "finished"])
    trials = trials.assign(**{param_column(p): column_or_missing(trials, param_column(p)).fillna(MISSING_VALUE)
                              for p in factors})
    observed_in = trials if specified is not None else trials[trials["state"] == "finished"]
    levels = {f: tuple(ordered_values((specified or {}).get(f) or observed_in[param_column(f)])) for f in factors}
    trials = mark_duplicates(trials, factors).reset_index(drop=True)
    logged = design or StudyDesign({}, None)  # without a spec: no seeds, objectives or report settings
    return StudyRuns(study, parent, trials, factors, levels, spec_yaml, logged.grid_seeds,
                     objectives=logged.objectives, report=logged.report, client=client)
