"""Which running trials still have a live worker, on any host: heartbeats in the Optuna storage itself.

A worker holds a lock file for its whole life and, while it runs a trial, records the trial's heartbeat
every `heartbeat_s` seconds. Any worker, on any host, fails a RUNNING trial that has been silent for
`grace_s` seconds (or, on the owner's own host, whose lock file is free: its process has ended) and hands it
to `on_dead`, which queues its configuration again.

- RDB storages (PostgreSQL, SQLite) use Optuna's own heartbeat: `RDBStorage(heartbeat_interval=...,
  grace_period=..., heartbeat_stale_trial_callback=...)` and `optuna.storages.fail_stale_trials`. The
  database server's clock times both ends, so the workers' clocks need not agree.
- A journal file has no heartbeat in Optuna; the equivalent here records `time.time()` as the trial's
  system attribute `ldm.heartbeat`, so on a shared filesystem the machines' clocks must agree (NTP) to well
  within the grace period.

Failing a trial is Optuna's atomic RUNNING -> FAIL update, so exactly one worker wins it and re-queues it.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import get_heartbeat_thread  # Optuna's own recorder, as `study.optimize` runs it
from optuna.trial import FrozenTrial, TrialState

HOST_ENV = "LDM_HOST"
OWNER_ATTR = "ldm.worker"
HEARTBEAT_ATTR = "ldm.heartbeat"

DeadTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def worker_host() -> str:
    """This worker's host identity: $LDM_HOST (e.g. a SLURM node name, or distinct names in tests), else the
    host name."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


@contextlib.contextmanager
def worker_identity(directory: Path) -> Iterator[dict[str, str]]:
    """Hold a lock file for the life of this worker: the OS drops it on any death (SIGKILL, power loss)."""
    path = directory.resolve() / "workers" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield {"host": worker_host(), "lock": str(path)}
        finally:
            path.unlink(missing_ok=True)


def _owner_gone(trial: FrozenTrial) -> bool:
    """A trial whose owner runs on this host and no longer holds its lock file; owners elsewhere are judged by
    their heartbeat alone."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    if owner is None or owner["host"] != worker_host():
        return False
    path = Path(owner["lock"])
    if not path.exists():
        return True
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    path.unlink(missing_ok=True)
    return True


class Liveness(abc.ABC):
    """Heartbeats of running trials and the failing of silent ones, for one kind of storage."""

    def __init__(self, heartbeat_s: int, grace_s: int, on_dead: DeadTrialCallback) -> None:
        self.heartbeat_s, self.grace_s = heartbeat_s, grace_s
        self._on_dead = on_dead
        self._failed: list[FrozenTrial] = []

    def rdb_options(self) -> dict[str, object]:
        """Keyword arguments of `RDBStorage` for this heartbeat."""
        return {}

    @abc.abstractmethod
    def beating(self, storage: BaseStorage, trial_id: int) -> contextlib.AbstractContextManager[None]:
        """Record the trial's heartbeat for the duration of the block."""

    @abc.abstractmethod
    def _fail_silent(self, study: optuna.Study) -> None:
        """Fail the RUNNING trials whose heartbeat is older than the grace period, through `dead`."""

    def dead(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """The failed-trial callback: remember the trial, and let the sweep re-queue its configuration."""
        self._failed.append(trial)
        self._on_dead(study, trial)

    def fail_dead_trials(self, study: optuna.Study) -> list[FrozenTrial]:
        """Fail every RUNNING trial whose worker is gone; returns them (each once, to the worker that won it)."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _owner_gone(trial):
                self._fail(study, trial)
        self._fail_silent(study)
        failed, self._failed = self._failed, []
        return failed

    def _fail(self, study: optuna.Study, trial: FrozenTrial) -> None:
        storage = study._storage  # noqa: SLF001 - the study's own storage, as optuna.storages.fail_stale_trials reads it
        try:
            won = storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)  # noqa: SLF001
        except UpdateFinishedTrialError:
            return  # another worker failed it first
        if won:
            self.dead(study, storage.get_trial(trial._trial_id))  # noqa: SLF001


class RdbLiveness(Liveness):
    """Optuna's heartbeat table; staleness is judged on the database server's clock."""

    def rdb_options(self) -> dict[str, object]:
        return {"heartbeat_interval": self.heartbeat_s, "grace_period": self.grace_s,
                "heartbeat_stale_trial_callback": self.dead}

    def beating(self, storage: BaseStorage, trial_id: int) -> contextlib.AbstractContextManager[None]:
        return get_heartbeat_thread(trial_id, storage)

    def _fail_silent(self, study: optuna.Study) -> None:
        optuna.storages.fail_stale_trials(study)


class JournalLiveness(Liveness):
    """A heartbeat timestamp in the journal; staleness is judged on the reading worker's clock."""

    @contextlib.contextmanager
    def beating(self, storage: BaseStorage, trial_id: int) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while True:
                try:
                    storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
                except UpdateFinishedTrialError:
                    return  # failed by another worker that took this one for dead
                if stop.wait(self.heartbeat_s):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat trial {trial_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _fail_silent(self, study: optuna.Study) -> None:
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if now - _last_sign_of_life(trial) > self.grace_s:
                self._fail(study, trial)


def _last_sign_of_life(trial: FrozenTrial) -> float:
    """Its last heartbeat, else its start (a worker that died before the first beat)."""
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    start = trial.datetime_start or datetime.now()
    return start.timestamp()


def is_rdb_location(location: str) -> bool:
    """A URL (`postgresql://...`, `sqlite:///...`) is an RDB storage; a plain path is a journal file."""
    return "://" in location


def liveness_for(location: str, heartbeat_s: int, grace_s: int, on_dead: DeadTrialCallback) -> Liveness:
    kind = RdbLiveness if is_rdb_location(location) else JournalLiveness
    return kind(heartbeat_s, grace_s, on_dead)
