import numpy as np
import pytest
import torch
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from evaluation.bootstrap import IscReplicate, KidReplicate, PrcReplicates, percentile_interval, resample_indices
from evaluation.features import metric_kwargs

N, N_REF, DIM, CLASSES, SUBSET = 120, 150, 16, 10, 50


@pytest.fixture(scope="module")
def features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-negative (post-ReLU-like) generated and reference features, and class logits of the generated ones."""
    generator = torch.Generator().manual_seed(0)
    generated = (torch.randn(N, DIM, generator=generator) + 0.2).relu()
    reference = torch.randn(N_REF, DIM, generator=generator).relu()
    return generated, reference, 3 * torch.randn(N, CLASSES, generator=generator)


def kwargs() -> dict:
    return metric_kwargs(kid_subset_size=SUBSET, seed=7, largest_set=N_REF)


def resamples() -> list[np.ndarray]:
    """The identity, then two bootstrap resamples (repeats included)."""
    return [np.arange(N), *resample_indices(7, N, 2)]


def test_kid_replicate_is_torch_fidelitys_kid_of_the_resampled_set(features) -> None:
    generated, reference, _ = features
    replicate = KidReplicate(generated, reference, SUBSET, seed=7)
    for index in resamples():
        expected = kid_features_to_metric(generated[index], reference, **kwargs())["kernel_inception_distance_mean"]
        assert replicate(index) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_precision_and_recall_replicates_are_torch_fidelitys_of_the_resampled_set(features) -> None:
    generated, reference, _ = features
    prc = PrcReplicates(generated, reference, kwargs()["prc_neighborhood"], kwargs()["prc_batch_size"])
    for index in resamples():
        expected = prc_features_to_metric(generated[index], reference, **kwargs())
        assert prc.precision(index) == pytest.approx(expected["precision"], abs=1e-6)
        assert prc.recall(index) == pytest.approx(expected["recall"], abs=1e-6)


def test_is_replicate_is_torch_fidelitys_is_of_the_resampled_set(features) -> None:
    *_, logits = features
    replicate = IscReplicate(logits, splits=10, seed=7)
    for index in resamples():
        expected = isc_features_to_metric(logits[index], 10, True, 7)["inception_score_mean"]
        assert replicate(index) == pytest.approx(expected, rel=1e-6)


def test_resamples_depend_on_the_evaluation_seed_and_count_only() -> None:
    assert np.array_equal(resample_indices(3, 50, 4), resample_indices(3, 50, 4))
    assert not np.array_equal(resample_indices(3, 50, 4), resample_indices(4, 50, 4))
    assert resample_indices(3, 50, 4).shape == (4, 50) and resample_indices(3, 50, 4).max() < 50


def test_the_percentile_interval_holds_the_central_95_percent_moved_by_the_bootstrap_bias() -> None:
    replicates = np.arange(1001.0)  # mean 500
    assert percentile_interval(500.0, replicates) == pytest.approx((25.0, 975.0))
    assert percentile_interval(400.0, replicates) == pytest.approx((-75.0, 875.0))
