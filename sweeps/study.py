"""The Optuna side of a sweep: storage, sampler and pruner, the trial queue, stale-trial recovery, status."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ldm.errors import UserError
from sweeps.spec import SweepSpec, TrialPoint

JOURNAL_NAME = "journal.log"
# Trial user attributes (also what `optuna-dashboard` shows).
SEED_ATTR = "ldm.seed"
OWNER_ATTR = "ldm.worker"
RUN_ID_ATTR = "mlflow_run_id"
FAIL_REASON_ATTR = "ldm.fail_reason"
RETRY_ATTR = "ldm.retry"
# Study user attributes: what the study was created from, so a resume with another spec is caught.
IDENTITY_ATTR = "ldm.identity"
OBJECTIVES_ATTR = "ldm.objectives"
STALE_REASON = "worker process ended without finishing the trial"
# Where `Study.enqueue_trial` keeps a queued trial's params until the trial suggests them.
ENQUEUED_PARAMS_ATTR = "fixed_params"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sweeps_root(workdir: Path) -> Path:
    return workdir / "sweeps"


def study_dir(workdir: Path, study: str) -> Path:
    """Journal, locks and per-trial files of one study."""
    return sweeps_root(workdir) / study


def storage_location(study: str, workdir: Path, storage: str | None) -> str:
    """An Optuna storage URL, or by default the journal file that local worker processes share safely."""
    return storage or str(study_dir(workdir, study) / JOURNAL_NAME)


def open_storage(location: str) -> BaseStorage:
    """A URL (`sqlite:///...`, `postgresql://...`) is an RDB storage; a plain path is a journal file."""
    if "://" in location:
        try:
            return RDBStorage(location)
        except Exception as e:  # SQLAlchemy raises many types for a bad URL or an unreachable server
            raise UserError(f"cannot open Optuna storage '{location}': {e}") from None
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(location))


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


def open_study(spec: SweepSpec, storage: BaseStorage) -> optuna.Study:
    """Create the study, or load it when it exists and was created from the same search."""
    directions = [o.direction for o in spec.objectives]
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions,
                                sampler=make_sampler(spec), pruner=make_pruner(spec), load_if_exists=True)
    identity = _identity(spec)
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        study.set_user_attr(IDENTITY_ATTR, identity)
        study.set_user_attr(OBJECTIVES_ATTR, [o.metric for o in spec.objectives])
    elif stored != identity:
        changed = ", ".join(k for k in identity if stored.get(k) != identity[k])
        raise UserError(f"study '{spec.name}' exists with a different spec (changed: {changed}); give the "
                        "spec a new name, or delete the study's storage to start over")
    return study


def load_study(study: str, storage: BaseStorage, spec: SweepSpec | None = None) -> optuna.Study:
    """An existing study; with its spec, ready to sample and prune (as a worker needs it)."""
    search = {"sampler": make_sampler(spec), "pruner": make_pruner(spec)} if spec is not None else {}
    try:
        return optuna.load_study(study_name=study, storage=storage, **search)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise UserError(f"no study '{study}' in this storage; studies there: {names}") from None


# ---------------------------------------------------------------- trial ownership and the queue lock


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def queue_lock(directory: Path) -> contextlib.AbstractContextManager[None]:
    """Serialises claiming trials, enqueueing and recovery among processes of this machine."""
    return _flocked(directory / "queue.lock")


@contextlib.contextmanager
def worker_identity(directory: Path) -> Iterator[dict[str, str]]:
    """Hold a lock file for the life of this worker: the OS drops it on any death (SIGKILL, power loss)."""
    path = directory.resolve() / "workers" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield {"host": socket.gethostname(), "lock": str(path)}
        finally:
            path.unlink(missing_ok=True)


def _owner_alive(trial: FrozenTrial) -> bool:
    """Only owners on this machine can be checked; others are assumed alive."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    if owner is None:
        return False
    if owner["host"] != socket.gethostname():
        return True
    path = Path(owner["lock"])
    if not path.exists():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    path.unlink(missing_ok=True)
    return False


def fail_stale_trials(storage: BaseStorage, study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose worker is gone become FAILED, to be retried. Call under `queue_lock`."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if not _owner_alive(t)]
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, STALE_REASON)
        storage.set_trial_user_attr(trial_id, RETRY_ATTR, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return stale


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Finished for good: complete, pruned, or failed for a reason other than a dead or interrupted worker."""
    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get(RETRY_ATTR, False)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def trial_point(trial: FrozenTrial) -> TrialPoint | None:
    """The configuration a trial runs, also when it died before suggesting its params."""
    params = trial.system_attrs.get(ENQUEUED_PARAMS_ATTR, trial.params)
    seed = trial.user_attrs.get(SEED_ATTR)
    return None if seed is None else TrialPoint(dict(params), seed)


def enqueue_missing(study: optuna.Study, spec: SweepSpec) -> int:
    """Queue every grid point (or retried configuration) that no live or finished trial covers.

    Call under `queue_lock`, so two processes never queue the same point.
    """
    trials = study.get_trials(deepcopy=False)
    covered = {p.key() for t in trials if (p := trial_point(t)) is not None
               and (counts_toward_budget(t) or t.state in (TrialState.WAITING, TrialState.RUNNING))}
    if spec.sampler == "grid":
        wanted = spec.grid_points()
    else:
        wanted = [p for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(RETRY_ATTR)
                  and (p := trial_point(t)) is not None and set(p.params) == set(spec.space)]
    queued = 0
    for point in wanted:
        if point.key() not in covered:
            study.enqueue_trial(point.params, user_attrs={SEED_ATTR: point.seed})
            covered.add(point.key())
            queued += 1
    return queued


def claim_trial(study: optuna.Study, spec: SweepSpec, budget: int | None, directory: Path,
                owner: dict[str, str]) -> optuna.Trial | None:
    """The next trial for this worker (queued ones first), or None when the budget or the grid is used up."""
    with queue_lock(directory):
        trials = study.get_trials(deepcopy=False)
        taken = sum(counts_toward_budget(t) or t.state == TrialState.RUNNING for t in trials)
        if budget is not None and taken >= budget:
            return None
        if spec.sampler == "grid" and not any(t.state == TrialState.WAITING for t in trials):
            return None
        trial = study.ask()
        trial.set_user_attr(OWNER_ATTR, owner)
        return trial


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


def sweep_status(study: str, workdir: Path, storage: str | None = None) -> pd.DataFrame:
    """One row per trial: number, state, seed, params, objectives, duration, fail reason, run id, pareto."""
    location = storage_location(study, workdir, storage)
    if "://" not in location and not Path(location).is_file():
        raise UserError(f"no study '{study}' under {study_dir(workdir, study)}; run `ldm sweep run` first "
                        "or pass --storage")
    return trials_frame(load_study(study, open_storage(location)))


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
            "fail_reason": t.user_attrs.get(FAIL_REASON_ATTR),
            "mlflow_run_id": t.user_attrs.get(RUN_ID_ATTR),
            "pareto": t.number in front,
        })
    frame = pd.DataFrame(rows)
    frame.attrs["objectives"] = names
    return frame


def params_text(params: dict[str, object]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in params.items())
