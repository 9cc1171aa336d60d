"""A study's bootstrap replicates (run artifact `evaluation/bootstrap.json`) as the arrays `reports.statistics` pairs.

Runs evaluated with `evaluation.bootstrap_replicates: B` carry {metric: [B floats]}; replicate b of every run
of a study resampled the same sample slots (`evaluation.bootstrap.resample_indices`), which is what makes
rows of different runs comparable column by column.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from evaluation.intervals import BOOTSTRAP_ARTIFACT_DIR, BOOTSTRAP_FILE
from reports.statistics import Comparison, paired_comparison

BOOTSTRAP_ARTIFACT = f"{BOOTSTRAP_ARTIFACT_DIR}/{BOOTSTRAP_FILE}"


class ArtifactSource(Protocol):
    """What is read of a study (`reports.runs.StudyRuns` is one)."""

    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path | None: ...


class NoReplicates(Exception):
    """A run has no replicates of the metric: evaluated with bootstrap_replicates 0, or before they existed."""


def run_replicates(source: ArtifactSource, run_ids: Sequence[str], metric: str) -> np.ndarray:
    """(runs, B): each run's replicates of `metric`, in `run_ids` order; every run must have the same B."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            path = source.download_artifact(run_id, BOOTSTRAP_ARTIFACT, Path(tmp) / run_id)
            replicates = json.loads(path.read_text()) if path is not None else {}
            if metric not in replicates:
                raise NoReplicates(f"run {run_id} has no bootstrap replicates of {metric} ({BOOTSTRAP_ARTIFACT})")
            rows.append(replicates[metric])
    if len({len(row) for row in rows}) > 1:
        raise NoReplicates(f"runs {', '.join(run_ids)} have different replicate counts of {metric}: evaluated with "
                           "different evaluation.bootstrap_replicates")
    return np.array(rows, dtype=np.float64)


def compare_runs(source: ArtifactSource, metric: str, arm: tuple[str, dict[str, float]],
                 baseline: tuple[str, dict[str, float]]) -> Comparison:
    """`paired_comparison` of two configurations, each (name, {run id: its value of `metric`}), one run per seed."""
    (arm_name, arm_runs), (base_name, base_runs) = arm, baseline
    return paired_comparison(run_replicates(source, list(arm_runs), metric),
                             run_replicates(source, list(base_runs), metric),
                             list(arm_runs.values()), list(base_runs.values()),
                             metric=metric, arm=arm_name, baseline=base_name)
