"""One trial on k ranks (`gpus_per_trial: k`): the worker starts `torchrun`, every rank runs the trial function.

The worker that claimed the trial writes a `TrialJob` file, runs `torchrun --nproc_per_node k -m
sweeps.trial_job JOB` on its own k GPUs (k CPU processes without GPUs) and waits. Rank 0 logs into the
trial's MLflow run, reports intermediate values to the study (so the pruner sees them) and writes the
`TrialJobResult` the worker reads back; the other ranks only compute. A SIGINT or SIGTERM to the worker
is passed to torchrun, which stops its ranks.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import optuna
import yaml
from pydantic import BaseModel

from ldm.config import build_config
from ldm.io import atomic_write_text
from ldm.tracking import MlflowTracker, NullTracker, Tracker
from sweeps.objective import Reporter, TrialFn
from sweeps.spec import SweepSpec

# Long enough for torchrun to pass a stop on to its ranks and for rank 0 to close its files.
STOP_GRACE_S = 30.0


class TrialJob(BaseModel):
    """What every rank of a trial needs, written by the worker."""

    spec: SweepSpec
    config_yaml: str
    workdir: Path
    tracking_uri: str
    run_id: str
    resume: bool
    trial_fn: str  # `module:qualname`
    storage: str
    trial_id: int
    result: Path


class TrialJobResult(BaseModel):
    """Rank 0's account of the trial: its metrics, or why it has none."""

    metrics: dict[str, Any] | None = None  # the trial function's report, its `meta` included
    pruned: str | None = None
    error: str | None = None
    traceback: str | None = None


class RankFailure(RuntimeError):
    """The trial failed on rank 0: its reason, and its traceback for the trial folder."""

    def __init__(self, reason: str, rank_traceback: str | None) -> None:
        super().__init__(reason)
        self.rank_traceback = rank_traceback


def run_on_ranks(job: TrialJob, ranks: int) -> dict[str, Any]:
    """Run the trial under torchrun on `ranks` processes and return its metrics.

    Raises `optuna.TrialPruned` when rank 0 was pruned and `RankFailure` when the trial failed.
    """
    job_file = job.result.with_name("trial-job.json")
    atomic_write_text(job_file, job.model_dump_json())
    job.result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "-m", "sweeps.trial_job", str(job_file)]
    launcher = subprocess.Popen(command)  # torchrun gives each rank one OpenMP thread unless told otherwise
    try:
        code = launcher.wait()
    except BaseException:  # the worker was told to stop: so are the ranks
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            launcher.kill()
        raise
    finally:
        job_file.unlink(missing_ok=True)
    if not job.result.is_file():
        raise RankFailure(f"torchrun exited with code {code} before rank 0 wrote a result", None)
    result = TrialJobResult.model_validate_json(job.result.read_text())
    if result.pruned is not None:
        raise optuna.TrialPruned(result.pruned)
    if result.metrics is None:
        raise RankFailure(result.error or "rank 0 wrote no metrics", result.traceback)
    return result.metrics


def _rank_reporter(job: TrialJob) -> Reporter:
    """Rank 0 reports to the claimed trial through its own connection to the study's storage."""
    from sweeps.study import open_storage
    from sweeps.workers import pruning_reporter

    storage = open_storage(job.storage)
    study = optuna.load_study(study_name=job.spec.name, storage=storage)
    return pruning_reporter(job.spec, optuna.trial.Trial(study, job.trial_id))


def _run_rank(job: TrialJob) -> None:
    from ldm.distributed import init_distributed
    from sweeps.workers import resolve_trial_fn

    ranks = init_distributed()
    trial_fn: TrialFn | None = resolve_trial_fn(job.trial_fn)
    if trial_fn is None:
        raise RuntimeError(f"trial function {job.trial_fn} not found")
    cfg = build_config(yaml.safe_load(job.config_yaml))
    tracker: Tracker = MlflowTracker(job.run_id, job.tracking_uri) if ranks.is_main else NullTracker()
    report: Reporter = _rank_reporter(job) if ranks.is_main else (lambda metric, value, step: None)
    try:
        result = TrialJobResult(metrics=trial_fn(cfg, job.workdir, tracker, report, job.resume))
    except optuna.TrialPruned as e:
        result = TrialJobResult(pruned=str(e) or "pruned")
    except Exception as e:
        result = TrialJobResult(error=f"{type(e).__name__}: {e}"[:500], traceback=traceback.format_exc())
    if ranks.is_main:
        atomic_write_text(job.result, result.model_dump_json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One rank of a trial (started by a sweep worker via torchrun).")
    parser.add_argument("job", type=Path)
    args = parser.parse_args(argv)
    _run_rank(TrialJob.model_validate_json(args.job.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
