"""How much Sobol initial noise (`evaluation.sobol_noise`) narrows the seed-to-seed spread of FID, on a toy generator.

A smooth fixed map g(z) = tanh(z W) from noise of dimension d to 8 features stands in for a sampler; FID of N
samples against the statistics of 200,000 independent ones, over 100 evaluation seeds, with independent normal
noise and with `evaluation.sobol.sobol_normal`. No network: seconds on one core.

    python -m bench.sobol_spread                     # d = 16 and 256, N = 256
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.harness import positive_ints
from evaluation.features import ReferenceFeatures
from evaluation.frechet import FrechetReference, FrechetRows
from evaluation.sobol import sobol_normal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=positive_ints, default=[16, 256])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for dim in args.dims:
        weights = 1.5 * rng.normal(size=(dim, 8)) / np.sqrt(dim)

        def generate(noise: np.ndarray) -> np.ndarray:
            return np.tanh(noise @ weights)

        population = generate(rng.normal(size=(200_000, dim)))
        reference = FrechetReference.of(ReferenceFeatures(population.mean(0), np.cov(population, rowvar=False),
                                                          None, None))
        everything = np.arange(args.n)
        independent = [FrechetRows(generate(np.random.default_rng(s).normal(size=(args.n, dim))), reference)
                       .fid(everything) for s in range(args.seeds)]
        sobol = [FrechetRows(generate(sobol_normal(s, 0, args.n, (dim,)).double().numpy()), reference)
                 .fid(everything) for s in range(args.seeds)]
        print(f"noise dim {dim}, N={args.n}, {args.seeds} seeds: FID mean / sd independent "
              f"{np.mean(independent):.4f} / {np.std(independent):.4f}, Sobol {np.mean(sobol):.4f} / "
              f"{np.std(sobol):.4f} (sd ratio {np.std(independent) / np.std(sobol):.1f})")


if __name__ == "__main__":
    main()
