"""A retried trial continues from the last checkpoint of its dead attempt when one can be reached.

Reachable means: in the dead attempt's MLflow run (`tracking.log_checkpoints: all` uploads every periodic
checkpoint), or in its run folder when this worker shares the work folder (same host, or a shared
filesystem). Otherwise the trial starts afresh. Either way the worker logs which.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from ldm.config import ExperimentConfig
from sweeps.spec import TrialPoint
from sweeps.study import RUN_ID_ATTR, retryable, trial_point


@dataclass(frozen=True)
class ResumePlan:
    resume: bool
    line: str


def previous_attempt(study: optuna.Study, point: TrialPoint, number: int) -> FrozenTrial | None:
    """The latest earlier trial of the same point that failed for its worker (dead or interrupted)."""
    key = point.key()
    attempts = [t for t in study.get_trials(deepcopy=False) if t.number < number and retryable(t)
                and (p := trial_point(t)) is not None and p.key() == key]
    return max(attempts, key=lambda t: t.number, default=None)


def plan_resume(previous: FrozenTrial | None, cfg: ExperimentConfig, previous_cfg: ExperimentConfig,
                workdir: Path, tracking_uri: str, number: int) -> ResumePlan:
    """Put the dead attempt's diffusion checkpoint where this trial's training resumes from, if it exists."""
    if previous is None:
        return ResumePlan(False, "")
    from ldm.artifacts import latest_checkpoint
    from ldm.training.checkpoint import read_checkpoint
    from ldm.training.diffusion_stage import CHECKPOINT_NAME, run_dir

    target = run_dir(cfg, workdir) / CHECKPOINT_NAME
    run_id = previous.user_attrs.get(RUN_ID_ATTR)
    local = run_dir(previous_cfg, workdir) / CHECKPOINT_NAME
    if run_id is not None and latest_checkpoint(run_id, tracking_uri, CHECKPOINT_NAME, target.parent) is not None:
        source = f"runs:/{run_id}"
    elif local.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
        source = str(local)
    else:
        return ResumePlan(False, f"trial {number}: retry of trial {previous.number}, whose checkpoint cannot be "
                                 "reached (log it with tracking.log_checkpoints: all); starting afresh")
    step = read_checkpoint(target)["step"]
    return ResumePlan(True, f"trial {number}: retry of trial {previous.number}, resuming at diffusion step {step} "
                            f"from {source}")
