"""Comparison statistics over a study's runs: intervals over seeds, paired bootstrap differences, Holm's correction.

Pure functions of numbers (seed means, per-run bootstrap replicates from `evaluation/bootstrap.json`); reading
runs and writing the report text are elsewhere. Every draw comes from a generator of a fixed seed, so a report
built twice from the same runs says the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import t

LEVEL = 0.95
DRAWS = 4000  # hierarchical bootstrap draws of a difference: p-values resolve to about 1/4000


@dataclass(frozen=True)
class TInterval:
    mean: float
    half_width: float | None
    """None with one value: one seed says nothing about the spread between seeds."""
    n: int


def t_interval(values: Sequence[float], level: float = LEVEL) -> TInterval:
    """Student-t interval of the mean of per-seed values: mean +- t_{n-1} * sd / sqrt(n)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return TInterval(float(x.mean()), None, len(x))
    half = t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return TInterval(float(x.mean()), float(half), len(x))


@dataclass(frozen=True)
class Comparison:
    """`difference` = mean over the arm's seeds - mean over the baseline's, its 95% interval and p-values."""

    metric: str
    arm: str
    baseline: str
    difference: float
    lo: float
    hi: float
    p: float
    p_holm: float
    """Holm-adjusted over the comparisons of one report (`adjust_holm`); p itself until then."""
    n_arm: int
    n_base: int


def paired_comparison(arm_replicates: np.ndarray, base_replicates: np.ndarray, arm_values: Sequence[float],
                      base_values: Sequence[float], *, metric: str = "", arm: str = "", baseline: str = "",
                      seed: int = 0, level: float = LEVEL) -> Comparison:
    """A two-level paired bootstrap of mean(arm) - mean(baseline) over seeds.

    `*_replicates` are (seeds, B): replicate b of every run resampled the same sample slots (the resamples come
    from `evaluation.seed` alone, and sample i of every run shares its initial noise and label), so replicate b of
    the arm and of the baseline are paired. Draw k resamples each side's seeds with replacement (the spread
    between training seeds) and takes replicate b = k mod B of the drawn runs (the spread of the samples):
    d_k = mean over drawn arm seeds of arm[s, b] - the same of the baseline. For runs without differences between
    seeds the two levels count the sampling spread twice over, which errs towards wide intervals.

    Bias: a resample repeats about a third of the samples, so an FID replicate exceeds its run's FID by about
    b / N_eff - b / N, with b set by the model's covariance; the difference cancels most of it (arms of one study
    have similar b), and the draws are centred on the observed difference mean(arm_values) - mean(base_values)
    to remove what is left: the bootstrap supplies the spread, not the centre. The interval is the central
    `level` of the centred draws; p = 2 min(P(d <= 0), P(d >= 0)) with the +1 correction, at most 1.
    """
    arm_reps, base_reps = (np.asarray(r, dtype=np.float64) for r in (arm_replicates, base_replicates))
    if arm_reps.ndim != 2 or arm_reps.shape[1] != base_reps.shape[1] or arm_reps.shape[1] == 0:
        raise ValueError(f"replicates {arm_reps.shape} and {base_reps.shape}; allowed: (seeds, B) with one B >= 1")
    if len(arm_values) != len(arm_reps) or len(base_values) != len(base_reps):
        raise ValueError("one value per run: as many values as rows of replicates")
    rng = np.random.default_rng(seed)
    column = np.arange(DRAWS) % arm_reps.shape[1]
    draws = (arm_reps[rng.integers(0, len(arm_reps), (DRAWS, len(arm_reps))), column[:, None]].mean(axis=1)
             - base_reps[rng.integers(0, len(base_reps), (DRAWS, len(base_reps))), column[:, None]].mean(axis=1))
    observed = float(np.mean(arm_values) - np.mean(base_values))
    draws += observed - draws.mean()
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    below, above = ((1 + np.count_nonzero(side)) / (DRAWS + 1) for side in (draws <= 0, draws >= 0))
    p = float(min(1.0, 2 * min(below, above)))
    return Comparison(metric, arm, baseline, observed, float(lo), float(hi), p, p, len(arm_reps), len(base_reps))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order: step-down, monotone, at most 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted.tolist()


def adjust_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of one family (one report) with `p_holm` set over all of them."""
    return [replace(c, p_holm=p) for c, p in zip(comparisons, holm([c.p for c in comparisons]), strict=True)]
