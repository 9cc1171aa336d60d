"""A table's numbers from its rows' replication units: means, 95% intervals, and which cell a test lets stand out.

A row's mean is the mean over its units (seeds, `reports.balance`); its interval is the t-interval over them, or
for a row of one run, that run's bootstrap interval over its samples (`<metric>_lo`/`_hi`). A column's best row
is bold only when it is significantly better than every other row: a paired bootstrap of each difference
(`reports.statistics`, on the runs' shared resamples where they logged them), Holm-corrected over the column.
Where it is not, the rows the test cannot tell from the best are marked as tied with it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.intervals import BOOTSTRAP_ARTIFACT_DIR, BOOTSTRAP_FILE
from evaluation.metric_catalog import metric_info
from reports.balance import Layout, RowUnits
from reports.runs import StudyRuns, metric_column
from reports.statistics import Comparison, adjust_holm, paired_comparison, t_interval

ALPHA = 0.05
Mark = str  # "best": significantly better than every other row; "tie": not told apart from the best; "" neither


@dataclass(frozen=True)
class Arm:
    """One row's units: a value per unit, and (units, B) bootstrap replicates (B = 1: the values alone)."""

    values: np.ndarray
    replicates: np.ndarray


class RunNumbers:
    """Final values and bootstrap replicates of a study's finished runs, the replicates downloaded once each."""

    def __init__(self, study: StudyRuns) -> None:
        self.study = study
        self.by_run = study.finished.set_index("run_id")
        self._replicates: dict[str, dict[str, list[float]]] = {}

    def value(self, run_id: str, metric: str) -> float:
        return float(pd.to_numeric(self.by_run.get(metric_column(metric), pd.Series(dtype=float)).get(run_id),
                                   errors="coerce"))

    def replicates(self, run_id: str) -> dict[str, list[float]]:
        if run_id not in self._replicates:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.study.download_artifact(run_id, f"{BOOTSTRAP_ARTIFACT_DIR}/{BOOTSTRAP_FILE}", Path(tmp))
                self._replicates[run_id] = json.loads(path.read_text()) if path is not None else {}
        return self._replicates[run_id]


def arm(row: RowUnits, metric: str, numbers: RunNumbers, masked: Collection[str]) -> Arm | None:
    """The row's units for `metric` (a unit averages its runs); None when no unit has a value. Runs in `masked`
    (the identity first stage's fixed values) have none."""
    units = [[r for r in runs if r not in masked] for runs in row.runs]
    values = [np.mean([numbers.value(r, metric) for r in runs]) if runs else np.nan for runs in units]
    kept = [i for i, v in enumerate(values) if np.isfinite(v)]
    if not kept:
        return None
    reps = [[numbers.replicates(r).get(metric) for r in units[i]] for i in kept]
    lengths = {len(x) for unit in reps for x in unit if x is not None}
    if len(lengths) == 1 and all(x is not None for unit in reps for x in unit):
        replicates = np.array([np.mean(np.asarray(unit, dtype=float), axis=0) for unit in reps])
    else:  # some run has no replicates: the seeds' spread alone
        replicates = np.asarray([values[i] for i in kept], dtype=float)[:, None]
    return Arm(np.asarray([values[i] for i in kept], dtype=float), replicates)


@dataclass(frozen=True)
class Cell:
    mean: float
    half_width: float | None
    interval: str  # "t" over seeds, "bootstrap" over one run's samples, "" none
    n: int


def cell(found: Arm | None, row: RowUnits, metric: str, numbers: RunNumbers) -> Cell:
    """The row's mean and 95% half-width: a t-interval over its units, else half its one run's bootstrap interval."""
    if found is None:
        return Cell(np.nan, None, "", 0)
    interval = t_interval(found.values)
    if interval.half_width is not None:
        return Cell(interval.mean, interval.half_width, "t", interval.n)
    if len(row.all_runs) == 1:
        lo, hi = (numbers.value(row.all_runs[0], f"{metric}_{end}") for end in ("lo", "hi"))
        if np.isfinite(lo) and np.isfinite(hi):
            return Cell(interval.mean, (hi - lo) / 2, "bootstrap", 1)
    return Cell(interval.mean, None, "", interval.n)


def compare_to(arms: Mapping[int, Arm], baseline: int, metric: str, labels: Sequence[str]) -> list[Comparison]:
    """Each other row against `baseline` (difference = row - baseline), Holm-corrected over these comparisons."""
    if len({a.replicates.shape[1] for a in arms.values()}) > 1:  # some row lacks replicates: seeds alone for all
        arms = {i: Arm(a.values, a.values[:, None]) for i, a in arms.items()}
    base = arms[baseline]
    return adjust_holm([paired_comparison(a.replicates, base.replicates, a.values, base.values, metric=metric,
                                          arm=labels[i], baseline=labels[baseline])
                        for i, a in arms.items() if i != baseline])


def column_marks(arms: Mapping[int, Arm], metric: str, labels: Sequence[str], rows: int) -> list[Mark]:
    """Bold for a best row significantly better than every other; else the best and those tied with it marked."""
    info = metric_info(metric)
    marks: list[Mark] = [""] * rows
    if not info.result or len(arms) < 2:
        return marks
    means = {i: float(a.values.mean()) for i, a in arms.items()}
    best = (min if info.direction == "minimize" else max)(means, key=means.get)
    comparisons = compare_to(arms, best, metric, labels)
    if all(c.p_holm < ALPHA for c in comparisons):
        marks[best] = "best"
        return marks
    tied = {labels.index(c.arm) for c in comparisons if c.p_holm >= ALPHA}
    for i in (best, *tied):
        marks[i] = "tie"
    return marks


def row_labels(table_layout: Layout) -> list[str]:
    return [", ".join(row.key) for row in table_layout.rows]
