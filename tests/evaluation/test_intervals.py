from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.features import ReferenceFeatures, fidelity_scores
from evaluation.frechet import FrechetReference
from evaluation.intervals import interval_scores

N, DIM, CLASSES = 60, 8, 5


def extractor(has_isc: bool) -> SimpleNamespace:
    """What interval_scores reads of a LoadedExtractor: its layers, name and whether it has class logits."""
    return SimpleNamespace(layer="f", isc_layer="logits" if has_isc else None, has_isc=has_isc,
                           spec=SimpleNamespace(name="toy"))


def inputs(seed: int = 0) -> tuple[dict[str, torch.Tensor], ReferenceFeatures]:
    generator = torch.Generator().manual_seed(seed)
    generated = {"f": torch.randn(N, DIM, generator=generator).relu(),
                 "logits": torch.randn(N, CLASSES, generator=generator)}
    return generated, ReferenceFeatures.of(torch.randn(80, DIM, generator=generator).relu())


def scores(replicates: int, metrics=("fid", "kid", "prc", "isc", "fdinf"), has_isc: bool = True, seed: int = 3):
    generated, reference = inputs()
    points = fidelity_scores(generated, reference, extractor(has_isc), metrics=metrics, kid_subset_size=20, seed=seed)
    return interval_scores(generated, reference, FrechetReference.of(reference), extractor(has_isc), points,
                           metrics=metrics, kid_subset_size=20, seed=seed, replicates=replicates)


def test_every_metric_gets_an_interval_around_it_and_its_replicates() -> None:
    out = scores(replicates=40)
    generated, reference = inputs()
    point = fidelity_scores(generated, reference, extractor(True), metrics={"fid", "kid", "prc", "isc"},
                            kid_subset_size=20, seed=3)
    assert len(out.replicates["fdinf_toy"]) == 30  # fd_infinity.REPLICATES
    for metric in ("fid_toy", "kid_toy", "precision_toy", "recall_toy", "is_toy", "fdinf_toy"):
        assert len(out.replicates[metric]) == (30 if metric == "fdinf_toy" else 40)
        assert out.values[f"{metric}_lo"] < out.values[f"{metric}_hi"], metric
    for metric in ("fid_toy", "kid_toy", "precision_toy", "recall_toy", "is_toy"):
        assert out.values[f"{metric}_lo"] <= point[metric] <= out.values[f"{metric}_hi"], metric
    assert out.values["fdinf_toy_lo"] < out.values["fdinf_toy"] < out.values["fdinf_toy_hi"]


def test_the_same_evaluation_seed_gives_the_same_intervals() -> None:
    assert scores(replicates=10).values == scores(replicates=10).values
    assert scores(replicates=10).values != scores(replicates=10, seed=4).values


def test_no_replicates_no_intervals_but_fd_infinity_still() -> None:
    out = scores(replicates=0)
    assert out.replicates == {}
    assert set(out.values) == {"fdinf_toy", "fdinf_toy_lo", "fdinf_toy_hi"}
    assert out.values["fdinf_toy_lo"] is None and out.values["fdinf_toy"] == pytest.approx(out.values["fdinf_toy"])


def test_only_the_requested_and_available_metrics() -> None:
    out = scores(replicates=5, metrics={"fid"}, has_isc=False)
    assert set(out.values) == {"fid_toy_lo", "fid_toy_hi"} and set(out.replicates) == {"fid_toy"}
    assert np.isfinite(out.values["fid_toy_lo"])


def test_too_few_samples_per_dimension_for_fd_infinity_are_noted() -> None:
    """60 samples: the smallest subset, 12, is under 2 x 8 dimensions, and not under 2 x 4."""
    out = scores(replicates=0)
    assert len(out.notes) == 1 and "fdinf_toy" in out.notes[0] and "from 80 samples" in out.notes[0]
    generated, reference = inputs()
    narrow = {"f": generated["f"][:, :4]}
    narrow_reference = ReferenceFeatures.of(reference.features[:, :4])
    assert interval_scores(narrow, narrow_reference, FrechetReference.of(narrow_reference), extractor(False), {},
                           metrics={"fdinf"}, kid_subset_size=20, seed=3, replicates=0).notes == []
