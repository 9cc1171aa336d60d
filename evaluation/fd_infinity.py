"""FD-infinity (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find them").

FID over N samples is biased upwards, by about b / N (the bias of the covariance square root): two models scored
with different N, or with a different per-sample spread, are not comparable. FD-infinity computes FID on nested
subsets of sizes linearly spaced from N/5 to N (the first n of one random order), fits FID(n) = a + b/n by least
squares and reports the intercept a, the FID of infinitely many samples. The paper (their `score_infinity.py`)
draws 15 sizes from N/10 and shuffles per size; nested subsets of one order make the points share their samples,
so the fit is smoother at the same cost.

The 95% interval: the line's own standard error ignores that every point comes from the same N samples (it
covered the truth in 29 of 100 synthetic runs), so the interval is a +- t_0.975,R-1 * sd, with sd the standard
deviation of a over R bootstrap resamples of the N samples (each resample's first n as its nested subsets).
R is at most REPLICATES: each resample costs 15 FIDs (0.2 s at N = 500, D = 2048; 11 s at N = 4096), and 30
estimate sd within about 13%, which the t quantile allows for. On Gaussian features with a known distance it
covers the truth in at least 90 of 100 runs (94 measured; tests/evaluation/test_fd_infinity.py).

Where it holds: the 1/n law is the first term of the bias; with subsets smaller than about twice the feature
dimension the higher terms dominate and the fit over- or under-corrects (synthetic Gaussians: D = 64, N = 200
gave 15.4 for a true 19.3, D = 256, N = 1000 gave 67.6 for 76.1, intervals missing; D = 32, N = 300 and
D = 64, N = 1000 gave the truth within 0.15). `trustworthy` says whether N reaches that (N >= 10 D: for 2048
Inception features, about 20,000 samples, as the paper's 50,000); evaluations below it state so in their notes.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
from scipy.stats import t

from evaluation.frechet import FrechetRows

NUM_SIZES = 15
MIN_FRACTION = 0.2
LEVEL = 0.95
MIN_SUBSET_PER_DIMENSION = 2
REPLICATES = 30


def subset_sizes(n: int) -> np.ndarray:
    """The nested subset sizes for n samples: NUM_SIZES (or fewer, distinct) from max(2, n/5) to n."""
    return np.unique(np.linspace(max(2, int(n * MIN_FRACTION)), n, NUM_SIZES).astype(int))


def trustworthy(n: int, dim: int) -> bool:
    """Whether the smallest subset of n samples has at least MIN_SUBSET_PER_DIMENSION rows per feature dimension."""
    return subset_sizes(n)[0] >= MIN_SUBSET_PER_DIMENSION * dim


def samples_needed(dim: int) -> int:
    """The fewest samples that are `trustworthy` for `dim` feature dimensions."""
    return math.ceil(MIN_SUBSET_PER_DIMENSION * dim / MIN_FRACTION)


def fd_infinity(rows: FrechetRows, order: np.ndarray) -> float:
    """The intercept of FID(n) = a + b/n over the first n of `order` (indices into `rows`, repeats allowed)."""
    sizes = subset_sizes(len(order))
    fids = np.array([rows.fid(order[:size]) for size in sizes])
    design = np.stack([np.ones(len(sizes)), 1.0 / sizes], axis=1)
    (intercept, _), *_ = np.linalg.lstsq(design, fids, rcond=None)
    return float(intercept)


@dataclass(frozen=True)
class FdInfinity:
    value: float
    lo: float | None
    hi: float | None
    replicates: np.ndarray
    """FD-infinity of each bootstrap resample used (at most REPLICATES); empty without resamples (and no interval)."""


def fd_infinity_interval(rows: FrechetRows, order: np.ndarray, resamples: np.ndarray) -> FdInfinity:
    """FD-infinity over `order` (a permutation of the rows) and its 95% interval from the first REPLICATES rows of
    `resamples` (B, N)."""
    value = fd_infinity(rows, order)
    replicates = np.array([fd_infinity(rows, resample) for resample in resamples[:REPLICATES]])
    if len(replicates) < 2:
        return FdInfinity(value, None, None, replicates)
    half = float(t.ppf(0.5 + LEVEL / 2, len(replicates) - 1) * replicates.std(ddof=1))
    return FdInfinity(value, value - half, value + half, replicates)
