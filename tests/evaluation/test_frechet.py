import numpy as np
import pytest
import torch

from evaluation.features import ReferenceFeatures, fid
from evaluation.frechet import FrechetReference, FrechetRows


@pytest.mark.parametrize(("dim", "n"), [(16, 200), (64, 40)])  # the D x D and the Gram (n < D) paths
def test_fid_of_any_index_multiset_is_torch_fidelitys_fid_of_those_rows(dim: int, n: int) -> None:
    generator = torch.Generator().manual_seed(0)
    reference = ReferenceFeatures.of(torch.randn(300, dim, generator=generator).relu())
    features = (1.1 * torch.randn(n, dim, generator=generator) + 0.1).relu()
    rows = FrechetRows(features, FrechetReference.of(reference))
    resample = np.random.default_rng(1).integers(0, n, n)
    for index in (np.arange(n), resample, resample[: n // 2]):
        assert rows.fid(index) == pytest.approx(fid(features[index], reference), rel=1e-6)
