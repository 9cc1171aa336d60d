"""Two Gaussians in a few dimensions with their closed-form Fréchet distance, for the statistics tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from evaluation.features import ReferenceFeatures
from evaluation.frechet import FrechetReference


@dataclass(frozen=True)
class GaussianPair:
    """Reference N(0, S_ref) and generated N(mu, S_gen), with S_ref, S_gen random SPD matrices of one seed."""

    mu: np.ndarray
    sigma_ref: np.ndarray
    sigma_gen: np.ndarray

    @classmethod
    def make(cls, dim: int, shift: float, shifted_dims: int = 3, seed: int = 0) -> GaussianPair:
        rng = np.random.default_rng(seed)
        a, b = rng.normal(size=(2, dim, dim)) / np.sqrt(dim)
        mu = np.zeros(dim)
        mu[:shifted_dims] = shift
        return cls(mu, a @ a.T + 0.5 * np.eye(dim), b @ b.T + 0.5 * np.eye(dim))

    def distance(self) -> float:
        """|mu_g - mu_r|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)."""
        root = scipy.linalg.sqrtm(self.sigma_ref).real
        cross = scipy.linalg.sqrtm(root @ self.sigma_gen @ root).real
        return float(self.mu @ self.mu + np.trace(self.sigma_ref + self.sigma_gen - 2 * cross))

    def reference(self) -> FrechetReference:
        """The reference side as its true statistics."""
        dim = len(self.mu)
        return FrechetReference.of(ReferenceFeatures(np.zeros(dim), self.sigma_ref, None, None))

    def generated(self, rng: np.random.Generator, n: int, mu: np.ndarray | None = None) -> np.ndarray:
        return (self.mu if mu is None else mu) + rng.normal(size=(n, len(self.mu))) @ np.linalg.cholesky(
            self.sigma_gen).T
