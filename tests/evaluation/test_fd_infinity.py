import numpy as np
import pytest
from gaussians import GaussianPair

from evaluation.fd_infinity import fd_infinity, fd_infinity_interval, samples_needed, subset_sizes, trustworthy
from evaluation.frechet import FrechetRows

REPETITIONS, N, REPLICATES = 100, 200, 50


@pytest.fixture(scope="module")
def runs() -> tuple[float, np.ndarray, list]:
    """FID over all N samples and FD-infinity with its interval, in 100 seeded repetitions of one Gaussian pair."""
    pair = GaussianPair.make(dim=12, shift=0.3)
    reference = pair.reference()
    fids, estimates = [], []
    for repetition in range(REPETITIONS):
        rng = np.random.default_rng(repetition)
        rows = FrechetRows(pair.generated(rng, N), reference)
        fids.append(rows.fid(np.arange(N)))
        estimates.append(fd_infinity_interval(rows, rng.permutation(N), rng.integers(0, N, (REPLICATES, N))))
    return pair.distance(), np.array(fids), estimates


def test_the_95_percent_interval_covers_the_closed_form_distance(runs: tuple[float, np.ndarray, list]) -> None:
    truth, _, estimates = runs
    covered = sum(e.lo <= truth <= e.hi for e in estimates)
    assert covered >= 90
    assert all(len(e.replicates) == 30 for e in estimates)  # of the 50 resamples given


def test_fixed_n_fid_is_biased_above_the_truth_and_fd_infinity_is_not(runs: tuple[float, np.ndarray, list]) -> None:
    truth, fids, estimates = runs
    bias_fid = fids.mean() - truth
    bias_infinity = np.mean([e.value for e in estimates]) - truth
    spread = np.std([e.value for e in estimates]) / np.sqrt(REPETITIONS)
    assert bias_fid > 0.1 and bias_fid > 5 * spread
    assert abs(bias_infinity) < 0.25 * bias_fid


def test_subset_sizes_run_linearly_from_a_fifth_to_all() -> None:
    sizes = subset_sizes(500)
    assert (sizes[0], sizes[-1], len(sizes)) == (100, 500, 15)
    assert np.ptp(np.diff(sizes)) <= 1


def test_the_intercept_of_an_exact_bias_law_is_recovered() -> None:
    """Rows whose FID is exactly a + b/n make the fit return a."""

    class Law(FrechetRows):
        def __init__(self) -> None:
            pass

        def fid(self, index: np.ndarray) -> float:
            return 3.0 + 40.0 / len(index)

    assert fd_infinity(Law(), np.arange(300)) == pytest.approx(3.0)


def test_trustworthy_from_ten_samples_per_feature_dimension() -> None:
    assert trustworthy(200, 12) and trustworthy(20480, 2048)
    assert not trustworthy(500, 2048) and not trustworthy(200, 64)
    assert samples_needed(2048) == 20480 and trustworthy(samples_needed(12), 12)
    assert not trustworthy(samples_needed(12) - 5, 12)
