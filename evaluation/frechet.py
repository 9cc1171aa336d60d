"""The Fréchet distance of any multiset of generated rows against fixed reference statistics, cheaply and often.

torch-fidelity's FID takes `sqrtm(S_gen S_ref)`, a D x D matrix square root, per call. Bootstrap replicates and
FD-infinity's subsets need hundreds of FIDs of the same rows against the same reference, so the reference side is
factored once: with A = S_ref^(1/2) (symmetric), tr sqrtm(S_gen S_ref) = sum sqrt(eig(A S_gen A)), and
A S_gen A = Yc^T Yc / (n - 1) with Yc the centred rows of Y = X A. Its non-zero eigenvalues are those of the
n x n Gram matrix Yc Yc^T / (n - 1) too, so each FID costs one eigen problem of size min(n, D) once Y is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from evaluation.features import ReferenceFeatures


@dataclass(frozen=True)
class FrechetReference:
    """The reference statistics factored for many FIDs: mean, S_ref^(1/2) and tr S_ref, in float64."""

    mu: np.ndarray
    root: np.ndarray
    trace: float

    @classmethod
    def of(cls, reference: ReferenceFeatures) -> FrechetReference:
        sigma = np.asarray(reference.sigma, dtype=np.float64)
        values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
        # A covariance is PSD; eigh's tiny negative round-off would make the root complex.
        root = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
        return cls(np.asarray(reference.mu, dtype=np.float64), root, float(np.trace(sigma)))


class FrechetRows:
    """Generated rows X (N, D) projected once as Y = X S_ref^(1/2); `fid(index)` is the FID of rows X[index].

    With N < D (2048 Inception features, a few hundred samples) the N x N Gram matrix Y Y^T is kept too, so an
    FID of any index multiset only gathers its block: the cost is one eigen problem of size n, O(n^3).
    """

    def __init__(self, features: Tensor | np.ndarray, reference: FrechetReference) -> None:
        self.rows = np.asarray(features, dtype=np.float64)
        self.projected = self.rows @ reference.root
        self.reference = reference
        self.gram = self.projected @ self.projected.T if len(self.rows) < self.rows.shape[1] else None

    def __len__(self) -> int:
        return len(self.rows)

    def fid(self, index: np.ndarray) -> float:
        """FID of the rows `index` (repeats allowed: a bootstrap resample), torch-fidelity's up to round-off."""
        x, n = self.rows[index], len(index)
        mean = x.mean(axis=0)
        xc = x - mean
        if n < x.shape[1]:
            # Centring the Gram block: (I - 11^T/n) G (I - 11^T/n), with G gathered or computed.
            y = self.projected[index]
            block = self.gram[np.ix_(index, index)] if self.gram is not None else y @ y.T
            row = block.mean(axis=1)
            moment = block - row[:, None] - row[None, :] + row.mean()
        else:
            yc = self.projected[index] - self.projected[index].mean(axis=0)
            moment = yc.T @ yc
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(moment), 0.0, None)).sum() / np.sqrt(n - 1)
        diff = mean - self.reference.mu
        return float(diff @ diff + np.einsum("ij,ij->", xc, xc) / (n - 1) + self.reference.trace - 2 * cross)
