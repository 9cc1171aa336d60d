"""Running a sweep: `run_sweep` prepares the study, then local workers claim and run trials until it is done.

A worker is this process (one worker) or `python -m sweeps.workers JOB INDEX` subprocesses (several).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel
from rich.console import Console

from ldm import progress
from ldm.config import ExperimentConfig
from ldm.errors import UserError
from ldm.io import atomic_write_text
from ldm.tracking import MlflowTracker, TrialOutcome
from ldm.tracking.runs import resolve_tracking_uri
from sweeps import runs
from sweeps.objective import Reporter, TrialFn, run_trial
from sweeps.spec import SweepSpec, TrialPoint
from sweeps.trial_job import RankFailure, TrialJob, run_on_ranks
from sweeps.liveness import Liveness, worker_identity
from sweeps.resume import plan_resume, previous_attempt
from sweeps.study import (
    FAIL_REASON_ATTR,
    PARENT_RUN_ATTR,
    RETRY_ATTR,
    RUN_ID_ATTR,
    STALE_REASON,
    claim_trial,
    counts_toward_budget,
    enqueue_missing,
    load_study,
    objective_names,
    open_storage,
    open_study,
    params_text,
    pareto_front,
    request_stop,
    stop_requested,
    storage_location,
    study_dir,
    suggest_point,
    wait_for_parent_run,
    work_left,
    worker_liveness,
)

INTERRUPTED = "interrupted"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_exit(signum: int | None) -> int:
    """The exit status of a run stopped by `signum` (None: not stopped), as a shell reports a signal: 128 + its
    number, so 130 after SIGINT (Ctrl-C) and 143 after SIGTERM."""
    return 0 if signum is None else 128 + signum


STOPPED_EARLY_EXIT = 3  # `ldm sweep run` ended by timeout_s or the trial budget, with work left
# How often an idle worker looks for a dead worker's trial to take over (seconds; at most the heartbeat).
IDLE_POLL_S = 2.0
INTERRUPTED_EXITS = frozenset(signal_exit(s) for s in STOP_SIGNALS)
Log = Callable[[str], None]
Clock = Callable[[], float]  # seconds since the epoch, like `time.time`


class WorkerJob(BaseModel):
    """Everything a worker process needs to join a prepared study."""

    spec: SweepSpec
    workdir: Path
    storage: str
    tracking: runs.StudyTracking
    budget: int | None
    deadline: float | None
    trial_fn: str
    workers: int = 1


class Interrupted(BaseException):
    """Raised inside a running trial by SIGINT/SIGTERM (a BaseException, so trial code cannot swallow it)."""


class StopSignals:
    """SIGINT/SIGTERM: interrupt the running trial once, claim no new trial, pass the signal to children."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._in_trial = False
        self._children: list[subprocess.Popen] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread can receive signals
            return
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            return  # a second signal must not break the clean-up of the first
        self.signum = signum
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        if self._in_trial:
            raise Interrupted(signal.Signals(signum).name)

    def forward_to(self, children: list[subprocess.Popen]) -> None:
        self._children = children

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.requested:
            raise Interrupted("stop requested")
        self._in_trial = True
        try:
            yield
        finally:
            self._in_trial = False


@dataclass(frozen=True)
class TrialResult:
    number: int
    state: TrialState
    point: TrialPoint
    seconds: float
    values: dict[str, float]
    reason: str | None

    def line(self) -> str:
        result = "  ".join(f"{k}={v:.4g}" for k, v in self.values.items()) or self.reason or ""
        return (f"trial {self.number:<4d} {self.state.name:<8s} {params_text(self.point.params)} "
                f"seed={self.point.seed}  {result}  ({self.seconds:.1f} s)")


def run_trial_in_study(job: WorkerJob, study: optuna.Study, liveness: Liveness, trial: optuna.Trial,
                       trial_fn: TrialFn, stop: StopSignals, log: Log, worker_started: float) -> TrialResult:
    """One claimed trial under its heartbeat: its MLflow child run, the trial function, its final state."""
    started = time.monotonic()
    spec = job.spec
    heartbeat = liveness.beating(study._storage, trial._trial_id)  # noqa: SLF001 - what Optuna's own heartbeat uses
    with heartbeat, _trial_watch(job, study, liveness, log):
        point = suggest_point(study, spec, trial)
        tracker = runs.start_trial_run(job.tracking, spec.name, trial.number, point)
        trial.set_user_attr(RUN_ID_ATTR, tracker.run_id)
        with progress.board().trial(trial_line(job, study, trial.number, point, worker_started, started)):
            ending = _run(job, study, trial, point, tracker, trial_fn, stop, log)
    runs.end_trial_run(tracker, ending.outcome, ending.reason, ending.files)
    if ending.reason is not None:
        trial.set_user_attr(FAIL_REASON_ATTR, ending.reason)
    if ending.outcome == TrialOutcome.INTERRUPTED:
        trial.set_user_attr(RETRY_ATTR, True)
    study.tell(trial, ending.values, state=ending.state)
    named = dict(zip([o.metric for o in spec.objectives], ending.values or []))
    return TrialResult(trial.number, ending.state, point, time.monotonic() - started, named, ending.reason)


def trial_line(job: WorkerJob, study: optuna.Study, number: int, point: TrialPoint, worker_started: float,
               trial_started: float) -> progress.TrialLine:
    """Trial k of the budget: k counts the finished trials and the running ones claimed before this one."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if counts_toward_budget(t)]
    running_before = sum(t.state == TrialState.RUNNING and t.number < number for t in trials)
    durations = [t.duration.total_seconds() for t in finished if t.duration is not None]
    return progress.TrialLine(
        k=len(finished) + running_before + 1, total=job.budget, label=runs.trial_run_name(point),
        study_started=worker_started, trial_started=trial_started,
        mean_trial_s=sum(durations) / len(durations) if durations else None, workers=job.workers)


@contextlib.contextmanager
def _trial_watch(job: WorkerJob, study: optuna.Study, liveness: Liveness, log: Log) -> Iterator[None]:
    """While this worker's trial runs, every heartbeat: take over the trials of dead workers (so that a death is
    handled within heartbeat + grace even when every worker is busy), and turn `ldm sweep stop` into a SIGTERM
    to this process (the trial is then marked interrupted and queued again, as after Ctrl-C)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(job.spec.heartbeat_s):
            try:
                _recover(job, study, liveness, log)
            except Exception as e:  # a storage or server hiccup: the next heartbeat tries again
                log(f"taking over dead workers' trials failed for now: {type(e).__name__}: {e}")
            if stop_requested(study):
                os.kill(os.getpid(), signal.SIGTERM)
                return

    watcher = threading.Thread(target=watch, name="trial watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@dataclass(frozen=True)
class _Ending:
    state: TrialState
    outcome: TrialOutcome
    reason: str | None = None
    values: list[float] | None = None
    files: tuple[Path, ...] = ()


def _run(job: WorkerJob, study: optuna.Study, trial: optuna.Trial, point: TrialPoint, tracker: MlflowTracker,
         trial_fn: TrialFn, stop: StopSignals, log: Log) -> _Ending:
    spec = job.spec
    trial_dir = study_dir(job.workdir, spec.name) / "trials" / f"{trial.number:05d}"
    try:
        cfg = _trial_config(job, point, trial.number)
        previous = previous_attempt(study, point, trial.number)
        plan = plan_resume(previous, cfg, _trial_config(job, point, previous.number) if previous else cfg,
                           job.workdir, job.tracking.tracking_uri, trial.number)
        if plan.line:
            log(plan.line)
        runs.describe_trial_run(tracker, cfg, trial_dir / "config.yaml")
        with stop.interruptible():
            if spec.gpus_per_trial > 1:
                metrics = run_on_ranks(TrialJob(
                    spec=spec, config_yaml=cfg.to_yaml(), workdir=job.workdir, tracking_uri=job.tracking.tracking_uri,
                    run_id=tracker.run_id, resume=plan.resume, trial_fn=job.trial_fn, storage=job.storage,
                    trial_id=trial._trial_id, result=trial_dir / "result.json"), spec.gpus_per_trial)  # noqa: SLF001
            else:
                metrics = trial_fn(cfg, job.workdir, tracker, pruning_reporter(spec, trial), plan.resume)
        values = spec.objective_values(metrics)
    except optuna.TrialPruned as e:
        return _Ending(TrialState.PRUNED, TrialOutcome.PRUNED, str(e) or "pruned")
    except Interrupted:
        return _Ending(TrialState.FAIL, TrialOutcome.INTERRUPTED, INTERRUPTED)
    except Exception as e:
        traceback_file = trial_dir / "traceback.txt"
        atomic_write_text(traceback_file, (e.rank_traceback if isinstance(e, RankFailure) else None)
                          or traceback.format_exc())
        return _Ending(TrialState.FAIL, TrialOutcome.FAILED, f"{type(e).__name__}: {e}"[:500], files=(traceback_file,))
    metrics_file = trial_dir / "metrics.json"
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2, sort_keys=True))
    return _Ending(TrialState.COMPLETE, TrialOutcome.COMPLETE, values=values, files=(metrics_file,))


def _trial_config(job: WorkerJob, point: TrialPoint, number: int) -> ExperimentConfig:
    cfg = job.spec.trial_config(point)
    cfg.name = f"{job.spec.name}-trial{number}"
    cfg.tracking.experiment = job.spec.name
    cfg.tracking.tracking_uri = job.tracking.tracking_uri
    return cfg


def pruning_reporter(spec: SweepSpec, trial: optuna.Trial) -> Reporter:
    """Intermediate values of `spec.prune_on` go to the trial; a pruned trial raises `optuna.TrialPruned`."""
    def report(metric: str, value: float, step: int) -> None:
        if spec.pruner == "none" or metric != spec.prune_on:
            return
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {metric}={value:.4g}")

    return report


def run_worker(job: WorkerJob, trial_fn: TrialFn, stop: StopSignals, log: Log, clock: Clock = time.time) -> None:
    """Claim and run trials until the budget, the grid or the time is used up, or a stop is requested.

    With nothing to claim, the worker stays while other workers' trials run, to take over any whose worker
    dies; it leaves once none runs. The time is up once `clock()` reaches `job.deadline`.
    """
    started = time.monotonic()
    liveness = worker_liveness(job.storage, job.spec)
    study = load_study(job.spec.name, open_storage(job.storage, liveness), job.spec)
    waiting = False
    with worker_identity(study_dir(job.workdir, job.spec.name)) as owner:
        while not stop.requested and (job.deadline is None or clock() < job.deadline):
            if stop_requested(study):
                log("stopping: `ldm sweep stop` was requested")
                return
            _recover(job, study, liveness, log)
            trial = claim_trial(study, job.spec, job.budget, owner)
            if trial is not None:
                log(run_trial_in_study(job, study, liveness, trial, trial_fn, stop, log, started).line())
                waiting = False
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            if not waiting:
                log(f"nothing to claim; staying while {len(running)} trial(s) of other workers run, to take over "
                    f"any whose worker stops heart-beating for {job.spec.grace_s} s")
                waiting = True
            _pause(stop, min(IDLE_POLL_S, job.spec.heartbeat_s))


def _pause(stop: StopSignals, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.1)


# ---------------------------------------------------------------- the coordinator


@dataclass(frozen=True)
class StudySummary:
    study: str
    storage: str
    tracking_uri: str
    parent_run_id: str
    objectives: list[str]
    states: dict[str, int]
    best_trials: list[FrozenTrial]
    wall_s: float
    stop_signal: int | None
    stopped_early: str | None = None  # why a run that was not interrupted ended with work left

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal when interrupted; `STOPPED_EARLY_EXIT` when stopped early; 0 when complete."""
        if self.interrupted:
            return signal_exit(self.stop_signal)
        return STOPPED_EARLY_EXIT if self.stopped_early else 0


def run_sweep(spec: SweepSpec, workdir: Path, n_trials: int | None = None, workers: int = 1,
              storage: str | None = None, tracking_uri: str | None = None, trial_fn: TrialFn = run_trial,
              log: Log = print, clock: Clock = time.time) -> StudySummary:
    """Run (or resume) a study until it has `n_trials` finished trials, with `workers` local workers.

    `spec.timeout_s` is measured on `clock` in this process; worker processes read `time.time`.
    """
    started = time.monotonic()
    workdir = Path(workdir).resolve()
    if workers < 1:
        raise UserError(f"workers={workers} is not allowed; allowed: >= 1")
    fn_path = trial_fn_path(trial_fn)
    if (workers > 1 or spec.gpus_per_trial > 1) and resolve_trial_fn(fn_path) is not trial_fn:
        raise UserError(f"trial function {fn_path} cannot run in worker processes; with workers > 1 or "
                        "gpus_per_trial > 1 pass a module-level function")
    check_gpus(visible_gpus(), workers, spec.gpus_per_trial)
    budget = spec.trial_budget(n_trials)
    directory = study_dir(workdir, spec.name)
    location = storage_location(spec.name, workdir, storage)
    liveness = worker_liveness(location, spec)
    study, created = open_study(spec, open_storage(location, liveness))
    tracking = _study_tracking(study, created, spec, resolve_tracking_uri(workdir, tracking_uri), workdir,
                               directory / runs.SPEC_ARTIFACT, log)
    job = WorkerJob(spec=spec, workdir=workdir, storage=location, tracking=tracking, budget=budget,
                    deadline=clock() + spec.timeout_s if spec.timeout_s else None, trial_fn=fn_path,
                    workers=workers)
    stop = StopSignals()
    run_status, stopped = "FAILED", None
    request_stop(study, False)  # a run after `ldm sweep stop` resumes the study
    try:
        _recover(job, study, liveness, log)
        with stop.installed():
            if workers == 1:
                run_worker(job, trial_fn, stop, log, clock)
            else:
                _run_worker_processes(job, workers, stop, log)
        # `ldm sweep stop` ends a run as SIGTERM does, also where only its worker processes saw the request.
        stopped = stop.signum if stop.requested else (signal.SIGTERM if stop_requested(study) else None)
        run_status = "FINISHED" if stopped is None else "KILLED"
    finally:
        _recover(job, study, liveness, log)
        best = pareto_front(study)
        trials = study.get_trials(deepcopy=False)
        early = _stopped_early(job, study, clock) if run_status == "FINISHED" else None
        outcome = "complete" if run_status == "FINISHED" and early is None else (
            "stopped early" if early else "interrupted" if run_status == "KILLED" else "failed")
        runs.close_study_run(tracking, run_status, trials, best, outcome)
    states = dict(Counter(t.state.name for t in trials))
    return StudySummary(spec.name, location, tracking.tracking_uri, tracking.parent_run_id, objective_names(study),
                        states, best, time.monotonic() - started, stopped, early)


def _stopped_early(job: WorkerJob, study: optuna.Study, clock: Clock) -> str | None:
    left = work_left(study, job.spec, job.budget)
    if left is None:
        return None
    if job.deadline is not None and clock() >= job.deadline:
        return f"timeout_s={job.spec.timeout_s:g} reached with {left}"
    if job.budget is not None and job.spec.sampler == "grid" and job.budget < job.spec.grid_size:
        return f"the trial budget (n_trials={job.budget}) reached with {left}"
    return f"{left}: their trials failed or their workers died too often"


def _study_tracking(study: optuna.Study, created: bool, spec: SweepSpec, tracking_uri: str, workdir: Path,
                    spec_file: Path, log: Log) -> runs.StudyTracking:
    """The study's one parent run: its creator queues the grid, opens the run and records its id in the study;
    every other worker that joins a fresh study, on any machine, waits for that id."""
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if not created and parent is None and not any(t.state.is_finished() for t in study.get_trials(deepcopy=False)):
        parent = wait_for_parent_run(study)  # a fresh study whose creator is setting it up right now
    queued = enqueue_missing(study, spec)  # the creator queues the grid; a resume, what is left of it
    if queued:
        log(f"queued {queued} configuration(s)")
    tracking = runs.open_study_tracking(tracking_uri, workdir, spec, spec_file, parent)
    if parent is None:
        study.set_user_attr(PARENT_RUN_ATTR, tracking.parent_run_id)
    return tracking


def _recover(job: WorkerJob, study: optuna.Study, liveness: Liveness, log: Log) -> None:
    """Fail the trials of dead workers (their points are queued again) and KILL their MLflow runs."""
    dead = liveness.fail_dead_trials(study)
    if not dead:
        return
    live = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    runs.close_stale_runs(job.tracking, [t.user_attrs[RUN_ID_ATTR] for t in dead if RUN_ID_ATTR in t.user_attrs],
                          live, STALE_REASON)
    for t in dead:
        log(f"trial {t.number}: {STALE_REASON}; marked FAILED, its configuration queued again")


def _run_worker_processes(job: WorkerJob, workers: int, stop: StopSignals, log: Log) -> None:
    job_file = study_dir(job.workdir, job.spec.name) / f"job-{os.getpid()}.json"
    atomic_write_text(job_file, job.model_dump_json())
    gpus = visible_gpus()
    try:
        children = [subprocess.Popen([sys.executable, "-m", "sweeps.workers", str(job_file), str(i)],
                                     env=worker_env(i, gpus, job.spec.gpus_per_trial, workers)) for i in range(workers)]
        stop.forward_to(children)
        for i, child in enumerate(children):
            code = child.wait()
            if code not in (0, *INTERRUPTED_EXITS):
                log(f"worker {i} exited with code {code}")
    finally:
        job_file.unlink(missing_ok=True)


def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def check_gpus(gpus: list[str], workers: int, per_trial: int) -> None:
    """Trials of several ranks get GPUs of their own: W workers x k ranks need W x k visible GPUs (or none: CPU)."""
    if per_trial > 1 and gpus and len(gpus) < workers * per_trial:
        raise UserError(f"--workers {workers} x gpus_per_trial={per_trial} needs {workers * per_trial} GPUs, "
                        f"{len(gpus)} visible ({','.join(gpus)}); allowed: --workers <= {len(gpus) // per_trial}")


def worker_env(index: int, gpus: list[str], per_trial: int = 1, workers: int = 1) -> dict[str, str]:
    """Worker `index` sees GPUs of its own: one (round robin) for single-rank trials, else its own block of
    `per_trial`, so that no two workers' trials share a GPU. Without a thread count of the user's, the `workers`
    processes share the cores: each runs cores / workers torch threads instead of one per core."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    if per_trial > 1 and gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[index * per_trial:(index + 1) * per_trial])
    elif len(gpus) > 1:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def trial_fn_path(fn: TrialFn) -> str:
    """`module:qualname`, how a worker process imports the trial function."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def resolve_trial_fn(path: str) -> TrialFn | None:
    module, _, name = path.partition(":")
    try:
        target: object = importlib.import_module(module)
    except ImportError:
        return None
    for part in name.split("."):
        target = getattr(target, part, None)
    return target  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One sweep worker (started by `ldm sweep run --workers N`).")
    parser.add_argument("job", type=Path)
    parser.add_argument("index", type=int)
    args = parser.parse_args(argv)
    job = WorkerJob.model_validate_json(args.job.read_text())
    trial_fn = resolve_trial_fn(job.trial_fn)
    if trial_fn is None:
        raise UserError(f"trial function {job.trial_fn} not found")
    stop = StopSignals()
    # Workers share the coordinator's terminal: plain lines, each naming its worker, instead of rival bars.
    plain = progress.Board(Console(stderr=True, force_terminal=False), prefix=f"[w{args.index}] ")
    with stop.installed(), progress.using(plain):
        run_worker(job, trial_fn, stop, lambda line: print(f"[w{args.index}] {line}", flush=True))
    return signal_exit(stop.signum)


if __name__ == "__main__":
    sys.exit(main())
