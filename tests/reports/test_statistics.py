"""reports/statistics.py: closed forms, a hand-computed Holm example, and calibration on synthetic studies."""

import numpy as np
import pytest
from gaussians import GaussianPair
from scipy.stats import t

from evaluation.bootstrap import resample_indices
from evaluation.frechet import FrechetRows
from reports.statistics import Comparison, adjust_holm, holm, paired_comparison, t_interval

DIM, N, B, SEEDS, REPETITIONS = 8, 200, 100, 2, 200


def test_t_interval_is_the_student_t_interval_of_the_seed_means() -> None:
    interval = t_interval([1.0, 2.0, 4.0])
    assert interval.mean == pytest.approx(7 / 3) and interval.n == 3
    assert interval.half_width == pytest.approx(t.ppf(0.975, 2) * np.std([1, 2, 4], ddof=1) / np.sqrt(3))


def test_one_seed_has_no_interval() -> None:
    assert t_interval([3.0]) == t_interval([3.0]) and t_interval([3.0]).half_width is None


def test_holm_against_a_hand_computed_example() -> None:
    # Sorted 0.01, 0.02, 0.03, 0.5 times 4, 3, 2, 1: 0.04, 0.06, 0.06, 0.5 (the third raised to stay monotone).
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.4, 0.9]) == pytest.approx([0.8, 0.9]) and holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_adjust_holm_sets_p_holm_over_the_family() -> None:
    family = [Comparison("fid", arm, "base", 1.0, 0.0, 2.0, p, p, 2, 2) for arm, p in (("a", 0.01), ("b", 0.04))]
    assert [c.p_holm for c in adjust_holm(family)] == pytest.approx([0.02, 0.04])


def test_the_same_inputs_give_the_same_comparison() -> None:
    rng = np.random.default_rng(0)
    arm, base = rng.normal(1.0, 0.1, (2, 50)), rng.normal(0.0, 0.1, (3, 50))
    first = paired_comparison(arm, base, [1.0, 1.2], [0.1, 0.0, -0.1])
    assert first == paired_comparison(arm, base, [1.0, 1.2], [0.1, 0.0, -0.1])
    assert first.difference == pytest.approx(1.1) and first.lo < 1.1 < first.hi and first.p < 0.05


def test_mismatched_replicates_are_refused() -> None:
    with pytest.raises(ValueError, match="one B"):
        paired_comparison(np.zeros((2, 10)), np.zeros((2, 11)), [0, 0], [0, 0])


def test_pairing_through_shared_samples_narrows_the_interval() -> None:
    """Arms that transform the same initial noises (as every run of a study does) differ by less than their
    sampling noise: replicate b of both resamples the same noises, so the paired interval is the narrower one."""
    pair = GaussianPair.make(dim=DIM, shift=0.0)
    reference, resamples = pair.reference(), resample_indices(0, N, B)
    noise = np.random.default_rng(0).normal(size=(N, DIM))  # the shared initial noises of sample 0 .. N-1
    root = np.linalg.cholesky(pair.sigma_gen)

    def run(shift: float, seed: int) -> tuple[float, np.ndarray]:
        # A model: the noise mapped to the Gaussian, shifted by the arm, perturbed a little by its training seed.
        features = shift + noise @ root.T + 0.05 * np.random.default_rng(seed).normal(size=(N, DIM))
        rows = FrechetRows(features, reference)
        return rows.fid(np.arange(N)), np.array([rows.fid(index) for index in resamples])

    arm, base = [run(0.2, seed) for seed in (1, 2)], [run(0.0, seed) for seed in (3, 4)]
    arm_reps, base_reps = np.stack([r for _, r in arm]), np.stack([r for _, r in base])
    values = ([v for v, _ in arm], [v for v, _ in base])
    paired = paired_comparison(arm_reps, base_reps, *values)
    unpaired = paired_comparison(arm_reps, base_reps[:, np.random.default_rng(5).permutation(B)], *values)
    assert paired.difference == unpaired.difference > 0
    assert paired.hi - paired.lo < 0.5 * (unpaired.hi - unpaired.lo)
    assert paired.p < 0.05


def study(shift: float, shifted_dims: int) -> list[Comparison]:
    """Repetitions of a two-arm study: per seed, N fresh samples of each arm's Gaussian, its FID against the
    shared reference statistics and B replicates on the shared resample indices; then the arm against the base."""
    pair = GaussianPair.make(dim=DIM, shift=0.0)
    reference, resamples = pair.reference(), resample_indices(0, N, B)
    delta = np.zeros(DIM)
    delta[:shifted_dims] = shift * np.sqrt(np.diag(pair.sigma_gen))[:shifted_dims]

    def run(rng: np.random.Generator, mu: np.ndarray) -> tuple[float, np.ndarray]:
        rows = FrechetRows(pair.generated(rng, N, mu), reference)
        return rows.fid(np.arange(N)), np.array([rows.fid(index) for index in resamples])

    comparisons = []
    for repetition in range(REPETITIONS):
        rng = np.random.default_rng(repetition)
        base = [run(rng, pair.mu) for _ in range(SEEDS)]
        arm = [run(rng, pair.mu + delta) for _ in range(SEEDS)]
        comparisons.append(paired_comparison(np.stack([r for _, r in arm]), np.stack([r for _, r in base]),
                                             [v for v, _ in arm], [v for v, _ in base]))
    return comparisons


def test_a_model_compared_with_itself_is_rarely_called_different() -> None:
    false_positives = np.mean([c.p < 0.05 for c in study(shift=0.0, shifted_dims=0)])
    assert false_positives <= 0.07


def test_a_known_degradation_is_detected() -> None:
    """Half a standard deviation off in 3 of 8 feature dimensions: FID about 2.5 -> 3.8."""
    comparisons = study(shift=0.5, shifted_dims=3)
    power = np.mean([c.p < 0.05 and c.difference > 0 for c in comparisons])
    assert power >= 0.95
