"""Percentile-bootstrap replicates of torch-fidelity's FID, KID, precision, recall and IS over the generated samples.

A replicate is what torch-fidelity computes on the generated set G[index] for one resample `index` (N draws with
replacement), the reference fixed: KID with the same subsets (positions in the resampled set, as its seeded
`RandomState` draws them), IS with the same shuffle and splits, precision/recall with the same k-NN radii rule.
The identity index gives torch-fidelity's own numbers. What does not depend on the resample is computed once:
the reference side, the kernel and distance matrices (O(N^2 + N N_ref) memory), softmaxes; a replicate gathers.

The resamples are a function of (evaluation seed, N, B) alone, so every arm of a study (same evaluation seed,
same initial noises and labels for sample i) draws the same indices: replicate b of arm A and of arm B resample
the same sample slots, a paired bootstrap through common random numbers (`reports/statistics.py`).
"""

from __future__ import annotations

import hashlib
import numpy as np
import torch
from torch import Tensor
from torch_fidelity.metric_kid import kernel_poly
from torch_fidelity.metric_prc import calc_cdist_full

LEVEL = 0.95
KID_SUBSETS = 100  # torch-fidelity's default `kid_subsets`, which the suite does not change


def seeded_rng(purpose: str, seed: int, n: int) -> np.random.Generator:
    """A generator of (purpose, evaluation seed, sample count) only, never of the model or the training seed."""
    digest = hashlib.sha256(f"ldm-eval-{purpose}:{seed}:{n}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def resample_indices(seed: int, n: int, replicates: int) -> np.ndarray:
    """(replicates, n) sample indices drawn with replacement: the same for every arm of a study."""
    return seeded_rng("bootstrap", seed, n).integers(0, n, (replicates, n))


def percentile_interval(point: float, replicates: np.ndarray) -> tuple[float, float]:
    """The central 95% of the replicates, moved by the bootstrap's estimate of its own bias, point - mean.

    A resample repeats about a third of the samples: FID and KID see fewer distinct samples and rise (the b/N
    bias grows), recall's k-NN balls shrink around the copies. Unmoved, the interval of a KID near 0 can lie
    wholly above it; moved, the replicates' spread is kept around the metric itself. For precision (a mean of
    per-sample indicators) the move is about 0.
    """
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.percentile(replicates, [tail, 100 - tail]) + (point - replicates.mean())
    return float(lo), float(hi)


class KidReplicate:
    """torch-fidelity's KID (mean over its seeded subsets of the unbiased MMD^2, polynomial kernel) of G[index]."""

    def __init__(self, generated: Tensor, reference: Tensor, subset_size: int, seed: int) -> None:
        gen, ref = generated.numpy(), reference.numpy()
        rng = np.random.RandomState(seed)  # drawn as kid_features_to_metric draws them: gen, then ref, per subset
        draws = [(rng.choice(len(gen), subset_size, replace=False), rng.choice(len(ref), subset_size, replace=False))
                 for _ in range(KID_SUBSETS)]
        self.gen_positions = np.stack([g for g, _ in draws])  # (S, m) positions in the resampled set
        ref_rows = np.stack([r for _, r in draws])
        # float32 kernels as torch-fidelity computes them (gamma = 1/D, degree 3, coef0 1).
        self.k_gg = kernel_poly(gen, gen, kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                kid_kernel_poly_coef0=1)
        k_gr = kernel_poly(gen, ref, kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
        self.k_gr = k_gr[:, ref_rows].transpose(1, 0, 2)  # (S, N, m): each subset's reference columns
        k_rr = np.stack([kernel_poly(ref[r], ref[r], kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                     kid_kernel_poly_coef0=1) for r in ref_rows])
        self.ref_sums = (k_rr.sum(axis=2) - np.diagonal(k_rr, axis1=1, axis2=2)).sum(axis=1)  # (S,)
        self.m = subset_size

    def __call__(self, index: np.ndarray) -> float:
        rows = index[self.gen_positions]  # (S, m) generated rows of each subset
        k_xx = self.k_gg[rows[:, :, None], rows[:, None, :]]
        k_xy = np.take_along_axis(self.k_gr, rows[:, :, None], axis=1)
        xx = (k_xx.sum(axis=2) - np.diagonal(k_xx, axis1=1, axis2=2)).sum(axis=1)
        m = self.m
        mmd = (xx + self.ref_sums) / (m * (m - 1)) - 2 * k_xy.sum(axis=1).sum(axis=1) / (m * m)
        return float(np.mean(mmd))


class PrcReplicates:
    """torch-fidelity's precision and recall (k-NN balls, `<=`) of G[index]; distances computed once, as it does."""

    def __init__(self, generated: Tensor, reference: Tensor, neighborhood: int, batch_size: int) -> None:
        self.k = neighborhood
        self.gen_gen = calc_cdist_full(generated, generated, batch_size)
        ref_gen = calc_cdist_full(reference, generated, batch_size)
        ref_radii = calc_cdist_full(reference, reference, batch_size).kthvalue(neighborhood + 1).values
        # Precision needs no resampling of the balls: it is the mean of a per-sample indicator.
        self.inside_real = (ref_gen <= ref_radii[:, None]).any(dim=0).numpy()
        self.ref_gen = ref_gen

    def precision(self, index: np.ndarray) -> float:
        return float(self.inside_real[index].astype(np.float32).mean())

    def recall(self, index: np.ndarray) -> float:
        """Each resampled point's ball has its (k+1)-th distance among the resampled set (itself and copies too)."""
        rows = torch.from_numpy(index)
        radii = self.gen_gen[rows][:, rows].kthvalue(self.k + 1).values
        return (self.ref_gen[:, rows] <= radii).any(dim=1).float().mean().item()


class IscReplicate:
    """torch-fidelity's IS (mean over its seeded shuffle's splits of exp KL(p(y|x) || p(y))) of G[index]."""

    def __init__(self, logits: Tensor, splits: int, seed: int) -> None:
        n = len(logits)
        self.order = np.random.RandomState(seed).permutation(n)
        log_p = logits.double().log_softmax(dim=1).numpy()
        self.p = np.exp(log_p)
        self.neg_entropy = (self.p * log_p).sum(axis=1)
        self.bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]

    def __call__(self, index: np.ndarray) -> float:
        rows = index[self.order]
        scores = []
        for start, stop in self.bounds:
            chunk = rows[start:stop]
            q = self.p[chunk].mean(axis=0)
            # mean_i sum_y p log(p / q) = mean_i sum_y p log p - sum_y q log q, since q is the chunk's mean p.
            scores.append(np.exp(self.neg_entropy[chunk].mean() - q @ np.log(q)))
        return float(np.mean(scores))
