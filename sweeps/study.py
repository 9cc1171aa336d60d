"""The Optuna side of a sweep: storage, sampler and pruner, the trial queue, stale-trial recovery, status."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ldm.db_drivers import check_driver
from ldm.errors import UserError
from sweeps.liveness import OWNER_ATTR, Liveness, is_rdb_location, liveness_for
from sweeps.spec import SweepSpec, TrialPoint

JOURNAL_NAME = "journal.log"
# Trial user attributes (also what `optuna-dashboard` shows).
SEED_ATTR = "ldm.seed"
RUN_ID_ATTR = "mlflow_run_id"
FAIL_REASON_ATTR = "ldm.fail_reason"
RETRY_ATTR = "ldm.retry"
DUPLICATE_ATTR = "ldm.duplicate_of"  # the trial that runs the same point, or -1 for a trial over the budget
PARENT_RUN_ATTR = "ldm.parent_run_id"  # the study's MLflow parent run, set once by the study's creator
STOP_ATTR = "ldm.stop_requested"  # set by `ldm sweep stop`, cleared by the next `ldm sweep run`
# Study user attributes: what the study was created from, so a resume with another spec is caught.
IDENTITY_ATTR = "ldm.identity"
OBJECTIVES_ATTR = "ldm.objectives"
STALE_REASON = "worker died: it stopped heart-beating"
# A point whose trial killed its worker this often is not tried again (a crash in the trial itself).
MAX_DEATHS = 3
# How long a worker that did not create the study waits for its creator to set it up (seconds).
CREATOR_WAIT_S = 60.0
# Where `Study.enqueue_trial` keeps a queued trial's params until the trial suggests them.
ENQUEUED_PARAMS_ATTR = "fixed_params"

optuna.logging.set_verbosity(optuna.logging.WARNING)
# The heartbeat, its stale-trial failing and metric names are "experimental" in Optuna 5; they are what a
# multi-machine study needs, so their notices would only repeat in every worker's output.
warnings.filterwarnings("ignore", category=ExperimentalWarning)


def sweeps_root(workdir: Path) -> Path:
    return workdir / "sweeps"


def study_dir(workdir: Path, study: str) -> Path:
    """Journal, locks and per-trial files of one study."""
    return sweeps_root(workdir) / study


def storage_location(study: str, workdir: Path, storage: str | None) -> str:
    """An Optuna storage URL, or by default the journal file that local worker processes share safely."""
    return storage or str(study_dir(workdir, study) / JOURNAL_NAME)


def open_storage(location: str, liveness: Liveness | None = None) -> BaseStorage:
    """A URL (`postgresql://...`, `sqlite:///...`) is an RDB storage; a plain path is a journal file.

    Workers pass their `Liveness` (an RDB storage then records heartbeats); status and reports read without.
    """
    if not is_rdb_location(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(location))
    check_driver(location)
    try:
        return RDBStorage(location, **(liveness.rdb_options() if liveness is not None else {}))
    except Exception as e:  # SQLAlchemy raises many types for a bad URL or an unreachable server
        raise UserError(f"cannot open Optuna storage '{location}': {e}") from None


def worker_liveness(location: str, spec: SweepSpec) -> Liveness:
    """The spec's heartbeat; a trial failed for its dead worker has its configuration queued again at once."""
    return liveness_for(location, spec.heartbeat_s, spec.grace_s, lambda study, _: enqueue_missing(study, spec))


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    # A grid is enqueued point by point (see `enqueue_missing`), so its sampler never draws a value;
    # Optuna's GridSampler is avoided because concurrent workers can repeat its points.
    match spec.sampler:
        case "tpe":
            return optuna.samplers.TPESampler()
        case "nsga2":
            return optuna.samplers.NSGAIISampler()
        case "random" | "grid":
            return optuna.samplers.RandomSampler()
    raise AssertionError(spec.sampler)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    match spec.pruner:
        case "median":
            return optuna.pruners.MedianPruner()
        case "hyperband":
            return optuna.pruners.HyperbandPruner()
        case "none":
            return optuna.pruners.NopPruner()
    raise AssertionError(spec.pruner)


def _identity(spec: SweepSpec) -> dict[str, object]:
    """What must not change when a study resumes: n_trials and timeout may, the search may not."""
    return {"base_config_hash": spec.base.load().config_hash(),
            **spec.model_dump(mode="json", include={"space", "objectives", "sampler", "pruner", "prune_on", "seeds"})}


def open_study(spec: SweepSpec, storage: BaseStorage) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists and was created from the same search; True if created here.

    Creating is atomic in every storage, so of workers that start together exactly one is the creator: it
    alone queues the grid and opens the parent run.
    """
    directions = [o.direction for o in spec.objectives]
    search = {"sampler": make_sampler(spec), "pruner": make_pruner(spec)}
    identity = _identity(spec)
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions, **search)
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, **search)
        stored = _wait_for_attr(study, IDENTITY_ATTR)
        if stored is not None and stored != identity:
            changed = ", ".join(k for k in identity if stored.get(k) != identity[k])
            raise UserError(f"study '{spec.name}' exists with a different spec (changed: {changed}); give the "
                            "spec a new name, or delete the study's storage to start over") from None
        if stored is not None:
            return study, False
    study.set_user_attr(IDENTITY_ATTR, identity)
    study.set_user_attr(OBJECTIVES_ATTR, [o.metric for o in spec.objectives])
    study.set_metric_names([o.metric for o in spec.objectives])  # what optuna-dashboard shows
    return study, True


def _wait_for_attr(study: optuna.Study, name: str, wait_s: float = CREATOR_WAIT_S) -> object | None:
    """A study attribute its creator sets right after creating it; None if the creator died before."""
    deadline = time.monotonic() + wait_s
    while (value := study.user_attrs.get(name)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def wait_for_parent_run(study: optuna.Study) -> str | None:
    """The parent run id that the study's creator records once the grid is queued."""
    value = _wait_for_attr(study, PARENT_RUN_ATTR)
    return None if value is None else str(value)


def load_study(study: str, storage: BaseStorage, spec: SweepSpec | None = None) -> optuna.Study:
    """An existing study; with its spec, ready to sample and prune (as a worker needs it)."""
    search = {"sampler": make_sampler(spec), "pruner": make_pruner(spec)} if spec is not None else {}
    try:
        return optuna.load_study(study_name=study, storage=storage, **search)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise UserError(f"no study '{study}' in this storage; studies there: {names}") from None


# ---------------------------------------------------------------- the queue, claims and retries


def fail_reason(trial: FrozenTrial) -> str | None:
    """Why a trial failed; a FAIL with no reason was failed for its dead worker (its heartbeat stopped)."""
    reason = trial.user_attrs.get(FAIL_REASON_ATTR)
    if reason is None and trial.state == TrialState.FAIL:
        return STALE_REASON
    return reason


def died(trial: FrozenTrial) -> bool:
    """Failed because its worker stopped (heartbeat), not by the trial itself."""
    return trial.state == TrialState.FAIL and FAIL_REASON_ATTR not in trial.user_attrs


def retryable(trial: FrozenTrial) -> bool:
    """Failed for its worker, not for its configuration: dead or interrupted. Its configuration runs again."""
    return died(trial) or (trial.state == TrialState.FAIL and trial.user_attrs.get(RETRY_ATTR, False))


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Finished for good: complete, pruned, or failed for its own reason (not a dead worker, not a duplicate)."""
    if trial.state == TrialState.FAIL:
        return not retryable(trial) and DUPLICATE_ATTR not in trial.user_attrs
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def trial_point(trial: FrozenTrial) -> TrialPoint | None:
    """The configuration a trial runs, also when it died before suggesting its params."""
    params = trial.system_attrs.get(ENQUEUED_PARAMS_ATTR, trial.params)
    seed = trial.user_attrs.get(SEED_ATTR)
    return None if seed is None else TrialPoint(dict(params), seed)


def _covered(trials: list[FrozenTrial]) -> set[str]:
    """Points that need no new trial: finished for good, queued or running, or dead too often to try again."""
    deaths = Counter(p.key() for t in trials if died(t) and (p := trial_point(t)) is not None)
    return {p.key() for t in trials if (p := trial_point(t)) is not None
            and (counts_toward_budget(t) or t.state in (TrialState.WAITING, TrialState.RUNNING)
                 or deaths[p.key()] >= MAX_DEATHS)}


def enqueue_missing(study: optuna.Study, spec: SweepSpec) -> int:
    """Queue every grid point (or retried configuration) that no live or finished trial covers.

    Two workers may queue the same point at the same moment; `claim_trial` then runs only one of them.
    """
    trials = study.get_trials(deepcopy=False)
    covered = _covered(trials)
    if spec.sampler == "grid":
        wanted = spec.grid_points()
    else:
        wanted = [p for t in trials if retryable(t) and (p := trial_point(t)) is not None
                  and set(p.params) == set(spec.space)]
    queued = 0
    for point in wanted:
        if point.key() not in covered:
            study.enqueue_trial(point.params, user_attrs={SEED_ATTR: point.seed})
            covered.add(point.key())
            queued += 1
    return queued


def _duplicate_of(trial: FrozenTrial, trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The trial that runs this one's point instead: an earlier queued or running one, or one already done.

    Trial numbers are handed out atomically by the storage, so every worker agrees on which is earlier.
    """
    point = trial_point(trial)
    if point is None:
        return None
    key = point.key()
    for other in trials:
        if other.number == trial.number or DUPLICATE_ATTR in other.user_attrs:
            continue
        same = (p := trial_point(other)) is not None and p.key() == key
        earlier_live = other.number < trial.number and other.state in (TrialState.WAITING, TrialState.RUNNING)
        if same and (earlier_live or counts_toward_budget(other)):
            return other
    return None


def _taken(trials: list[FrozenTrial], below: int | None = None) -> int:
    """Trials that use up the budget (finished for good, or running; never a duplicate), of those numbered
    below `below` when given."""
    return sum((below is None or t.number < below) and DUPLICATE_ATTR not in t.user_attrs
               and (counts_toward_budget(t) or t.state == TrialState.RUNNING) for t in trials)


def _over_budget(trial: FrozenTrial, trials: list[FrozenTrial], budget: int | None) -> bool:
    """A fresh trial beyond the budget: that many earlier trials are already taken."""
    return budget is not None and trial_point(trial) is None and _taken(trials, below=trial.number) >= budget


def _budget_left(study: optuna.Study, budget: int | None) -> bool:
    return budget is None or _taken(study.get_trials(deepcopy=False)) < budget


def claim_trial(study: optuna.Study, spec: SweepSpec, budget: int | None, owner: dict[str, str]
                ) -> optuna.Trial | None:
    """The next trial for this worker: the earliest queued one, else (not a grid) a fresh one from the sampler.

    None when there is nothing to run now. Claims go through the storage alone (Optuna's atomic WAITING ->
    RUNNING), so workers on any number of machines run each point once: a claimed trial whose point an
    earlier trial covers is closed as a duplicate, and never counts toward the budget.
    """
    while _budget_left(study, budget):
        # Optuna's atomic queue pop, as `Study.ask` does it; called alone so that a grid never gets a
        # sampled trial when another worker emptied the queue first.
        trial_id = study._pop_waiting_trial_id()  # noqa: SLF001
        if trial_id is None and spec.sampler == "grid":
            return None
        trial = study.ask() if trial_id is None else optuna.Trial(study, trial_id)
        trial.set_user_attr(OWNER_ATTR, owner)
        trials = study.get_trials(deepcopy=False)
        frozen = next(t for t in trials if t.number == trial.number)
        original = _duplicate_of(frozen, trials)
        if original is None and not _over_budget(frozen, trials, budget):
            return trial
        trial.set_user_attr(DUPLICATE_ATTR, -1 if original is None else original.number)
        trial.set_user_attr(FAIL_REASON_ATTR, "over budget" if original is None
                            else f"duplicate of trial {original.number}")
        study.tell(trial, state=TrialState.FAIL)
    return None


def work_left(study: optuna.Study, spec: SweepSpec, budget: int | None) -> str | None:
    """What the study still lacks, in words, or None when it is complete (every grid point, or the budget)."""
    trials = study.get_trials(deepcopy=False)
    if spec.sampler == "grid":
        done = {p.key() for t in trials if counts_toward_budget(t) and (p := trial_point(t)) is not None}
        left = sum(p.key() not in done for p in spec.grid_points())
        return f"{left} of {spec.grid_size} grid points left" if left else None
    taken = sum(counts_toward_budget(t) for t in trials)
    return f"{budget - taken} of {budget} trials left" if budget is not None and taken < budget else None


def request_stop(study: optuna.Study, requested: bool = True) -> None:
    """Ask every worker of the study, on any machine, to stop (`ldm sweep stop`), or withdraw the request."""
    study.set_user_attr(STOP_ATTR, requested)


def stop_requested(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get(STOP_ATTR, False))


def suggest_point(study: optuna.Study, spec: SweepSpec, trial: optuna.Trial) -> TrialPoint:
    """The trial's configuration; a fresh one from the sampler runs with the first seed, the others are queued."""
    params = {path: param.suggest(trial, path) for path, param in spec.space.items()}
    seed = trial.user_attrs.get(SEED_ATTR)
    if seed is None:
        seed = spec.seeds[0]
        trial.set_user_attr(SEED_ATTR, seed)
        for other in spec.seeds[1:]:
            study.enqueue_trial(params, user_attrs={SEED_ATTR: other})
    return TrialPoint(params, seed)


# ---------------------------------------------------------------- results


def objective_names(study: optuna.Study) -> list[str]:
    return study.user_attrs.get(OBJECTIVES_ATTR) or [f"value_{i}" for i in range(len(study.directions))]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Best trials: the Pareto front of a multi-objective study, the single best trial otherwise."""
    return study.best_trials


def study_location(study: str, workdir: Path, storage: str | None) -> str:
    """The storage of an existing study; the default journal must exist."""
    location = storage_location(study, workdir, storage)
    if not is_rdb_location(location) and not Path(location).is_file():
        raise UserError(f"no study '{study}' under {study_dir(workdir, study)}; run `ldm sweep run` first "
                        "or pass --storage")
    return location


def sweep_status(study: str, workdir: Path, storage: str | None = None) -> pd.DataFrame:
    """One row per trial: number, state, seed, params, objectives, duration, fail reason, run id, pareto."""
    return trials_frame(load_study(study, open_storage(study_location(study, workdir, storage))))


def delete_study(study: str, workdir: Path, storage: str | None, tracking_uri: str) -> str:
    """Remove the Optuna study and delete its MLflow experiment; returns what was deleted, in words."""
    from ldm.tracking.runs import delete_experiment

    location = study_location(study, workdir, storage)
    opened = open_storage(location)
    load_study(study, opened)  # a missing study is an error naming the ones there
    optuna.delete_study(study_name=study, storage=opened)
    deleted = [f"the Optuna study in {location}"]
    if storage is None:
        shutil.rmtree(study_dir(workdir, study))
    if delete_experiment(tracking_uri, study):
        deleted.append(f"the MLflow experiment in {tracking_uri}")
    return " and ".join(deleted)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """`sweep_status`'s table; `frame.attrs["objectives"]` names the objective columns."""
    names = objective_names(study)
    front = {t.number for t in pareto_front(study)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        end = t.datetime_complete
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "seed": t.user_attrs.get(SEED_ATTR),
            **t.params,
            **dict(zip(names, t.values or [None] * len(names))),
            "duration_s": (end - t.datetime_start).total_seconds() if end and t.datetime_start else None,
            "fail_reason": fail_reason(t),
            "mlflow_run_id": t.user_attrs.get(RUN_ID_ATTR),
            "pareto": t.number in front,
        })
    frame = pd.DataFrame(rows)
    frame.attrs["objectives"] = names
    return frame


def params_text(params: dict[str, object]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in params.items())
