"""Streamed metrics are torch-fidelity's: equal to `calculate_metrics` on the same images, for both extractors."""

from __future__ import annotations

from pathlib import Path

import torch
import torch_fidelity

from evaluation.extractors import UInt8Images
from evaluation.extractors.resolve import resolve_extractor
from evaluation.features import CATALOG_NAMES
from evaluation.generation import compute_generation_metrics
from evaluation.reference import reference_set
from evaluation.report_card import metric_values
from ldm.config import DataConfig, EvaluationConfig, ExtractorName
from ldm.data.registry import build_dataset

MNIST = DataConfig(name="mnist", resolution=32, channels=1)


def direct(name: ExtractorName, generated: torch.Tensor, evaluation: EvaluationConfig, workdir: Path
           ) -> dict[str, float]:
    """One `torch_fidelity.calculate_metrics` call on all images at once, no cache, under catalog names."""
    spec = resolve_extractor(name, MNIST, workdir)
    reference = reference_set(MNIST, evaluation.reference_split, evaluation.num_reference, evaluation.seed, workdir)
    raw = torch_fidelity.calculate_metrics(
        input1=UInt8Images(generated), input2=UInt8Images(torch.cat(list(reference.uint8_batches(7)))),
        cache=False, cuda=torch.cuda.is_available(), batch_size=evaluation.batch_size, fid=True, kid=True, prc=True,
        isc=spec.isc_unavailable is None, kid_subset_size=evaluation.kid_subset_size, prc_neighborhood=3,
        isc_splits=10, rng_seed=evaluation.seed, save_cpu_ram=True, verbose=False, **spec.fidelity_kwargs())
    return {CATALOG_NAMES[key].format(name): value for key, value in raw.items() if key in CATALOG_NAMES}


def digits(workdir: Path, n: int) -> torch.Tensor:
    train = build_dataset(MNIST, "train", workdir)
    return torch.stack([train.uint8_image(i) for i in range(n)]).expand(-1, 3, -1, -1).contiguous()


def test_domain_metrics_equal_calculate_metrics(mnist_workdir: Path) -> None:
    # More reference images than samples, a batch size that leaves a short last batch, a KID subset below both.
    evaluation = EvaluationConfig(extractors=["domain"], num_samples=40, num_reference=60, kid_subset_size=30,
                                  batch_size=16, seed=3)
    generated = digits(mnist_workdir, 40)
    ours = metric_values(compute_generation_metrics(generated, MNIST, evaluation, mnist_workdir))
    expected = direct("domain", generated, evaluation, mnist_workdir)
    assert set(expected) == {"fid_domain", "kid_domain", "kid_domain_std", "precision_domain", "recall_domain",
                             "is_domain", "is_domain_std"}
    # Besides torch-fidelity's metrics, FD-infinity (without an interval: compute_generation_metrics bootstraps none).
    assert ours == {**expected, "fdinf_domain": ours["fdinf_domain"], "fdinf_domain_lo": None, "fdinf_domain_hi": None}


def test_inception_metrics_equal_calculate_metrics(mnist_workdir: Path) -> None:
    # The TorchScript Inception takes 0.1 to 1 s per image here: 10 samples, 12 reference images.
    evaluation = EvaluationConfig(extractors=["inception"], num_samples=10, num_reference=12, kid_subset_size=10,
                                  batch_size=5, seed=1)
    generated = digits(mnist_workdir, 10)
    ours = metric_values(compute_generation_metrics(generated, MNIST, evaluation, mnist_workdir))
    expected = direct("inception", generated, evaluation, mnist_workdir)
    assert set(expected) == {"fid_inception", "kid_inception", "kid_inception_std", "precision_inception",
                             "recall_inception"}
    assert {k: v for k, v in ours.items() if k in expected} == expected
    assert ours["is_inception"] is None  # no classifier head in the TorchScript graph
