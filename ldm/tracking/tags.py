"""Every MLflow tag name the suite writes and reads; the metric names are in `evaluation/metric_catalog.py`."""

from __future__ import annotations

from enum import StrEnum


class Tag(StrEnum):
    # Provenance of every run, from `ldm.tracking.runs.describe_run`.
    CONFIG_HASH = "ldm.config_hash"
    FIRST_STAGE_HASH = "ldm.first_stage_hash"
    GIT_COMMIT = "ldm.git_commit"
    TORCH_VERSION = "ldm.torch_version"
    DEVICE = "ldm.device"  # the device type, `cuda` or `cpu`
    # What the final metrics were computed from, set by evaluation.
    NUM_SAMPLES = "ldm.num_samples"
    EXTRACTOR_WEIGHTS = "ldm.extractor_weights"
    # 12 hex digits over what makes two runs' metrics comparable (`evaluation/protocol.py`); the protocol itself
    # is the run artifact `evaluation/protocol.json`.
    EVAL_PROTOCOL = "ldm.eval_protocol"
    # A sweep's parent run and its trial runs.
    ROLE = "ldm.role"
    STUDY = "ldm.study"
    TRIAL_NUMBER = "ldm.trial_number"
    FAIL_REASON = "ldm.fail_reason"
    TRIAL_OUTCOME = "ldm.trial_outcome"  # a `TrialOutcome` value, set when the trial run ends
    SAMPLER = "ldm.sampler"
    OBJECTIVES = "ldm.objectives"
    BEST_TRIALS = "ldm.best_trials"
    STUDY_OUTCOME = "ldm.study_outcome"  # complete, stopped early, interrupted or failed
    # The parent run's count of trials per Optuna state, set when the study run ends.
    TRIALS_COMPLETE = "ldm.trials_complete"
    TRIALS_FAILED = "ldm.trials_failed"
    TRIALS_PRUNED = "ldm.trials_pruned"
    TRIALS_RUNNING = "ldm.trials_running"
    TRIALS_WAITING = "ldm.trials_waiting"
    CONFIGURATION = "ldm.configuration"  # the swept values without the seed: groups a configuration's seeds
    # MLflow's own tags: the run that nests this one (the UI draws the tree from it), and the experiment's
    # kind, from which the UI picks its view.
    PARENT_RUN_ID = "mlflow.parentRunId"
    EXPERIMENT_KIND = "mlflow.experimentKind"


class Role(StrEnum):
    """Values of `Tag.ROLE`: a study's parent run or one of its trials."""

    STUDY = "study"
    TRIAL = "trial"


class TrialOutcome(StrEnum):
    """Values of `Tag.TRIAL_OUTCOME`: why a trial run ended; only `COMPLETE` runs enter a report's aggregates."""

    COMPLETE = "complete"
    PRUNED = "pruned"  # stopped by the pruner on an intermediate result
    FAILED = "failed"  # the trial raised; the reason is in `Tag.FAIL_REASON`
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM to its worker; the trial is queued again
    WORKER_DIED = "worker_died"  # its worker stopped heart-beating; the trial is queued again
