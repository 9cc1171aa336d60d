"""The domain classifier: accuracy, caching, input conversion and the no-labels error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluation.extractors import to_uint8_rgb
from evaluation.extractors.domain import (
    FEATURES,
    FIDELITY_NAME,
    LOGITS,
    DomainFeatureExtractor,
    classifier_path,
    load_domain_extractor,
    resolve_domain,
    train_classifier,
)
from ldm.config import DataConfig
from ldm.data.registry import build_dataset
from ldm.errors import UserError
from ldm.io import load_checkpoint

MNIST = DataConfig(name="mnist", resolution=32, channels=1)


def test_classifier_reaches_98_percent_on_mnist_test(mnist_workdir: Path) -> None:
    path = classifier_path(MNIST, mnist_workdir)
    assert path.parent == mnist_workdir / "cache" / "domain"
    assert path.name.startswith("mnist-32-1-") and path.suffix == ".pt"
    assert load_checkpoint(path)["test_accuracy"] >= 98.0
    # Independently of the stored number: the uint8 RGB path torch-fidelity uses, on the whole test split.
    test = build_dataset(MNIST, "test", mnist_workdir)
    images = torch.stack([test.uint8_image(i) for i in range(len(test))])
    predicted = load_domain_extractor(MNIST, mnist_workdir).classify(images.expand(-1, 3, -1, -1))
    assert 100.0 * (predicted == test.labels).float().mean().item() >= 98.0


def test_cached_classifier_is_reused_not_retrained(mnist_workdir: Path) -> None:
    path = classifier_path(MNIST, mnist_workdir)
    mtime = path.stat().st_mtime_ns
    assert train_classifier(MNIST, mnist_workdir) == path
    assert path.stat().st_mtime_ns == mtime
    assert list(path.parent.glob(".*.tmp")) == []


def test_train_cap_does_not_change_the_classifier_but_resolution_does(tmp_path: Path) -> None:
    capped = MNIST.model_copy(update={"max_train_items": 100})
    assert classifier_path(capped, tmp_path) == classifier_path(MNIST, tmp_path)
    other = classifier_path(MNIST.model_copy(update={"resolution": 28}), tmp_path)
    assert other.name.startswith("mnist-28-1-") and other != classifier_path(MNIST, tmp_path)


def test_root_names_a_folder_dataset_but_not_mnist(tmp_path: Path) -> None:
    moved = MNIST.model_copy(update={"root": tmp_path / "elsewhere"})
    assert classifier_path(moved, tmp_path) == classifier_path(MNIST, tmp_path)
    folder_a = DataConfig(name="folder", root=tmp_path / "a", channels=3)
    folder_b = DataConfig(name="folder", root=tmp_path / "b", channels=3)
    assert classifier_path(folder_a, tmp_path) != classifier_path(folder_b, tmp_path)


def test_resolved_extractor_reports_weights_and_allows_is(mnist_workdir: Path) -> None:
    extractor = resolve_domain(MNIST, mnist_workdir)
    accuracy = load_checkpoint(extractor.weights_path)["test_accuracy"]
    assert extractor.fidelity_name == FIDELITY_NAME and extractor.isc_unavailable is None
    assert extractor.weights == f"domain-cnn:{extractor.weights_path.stem} test_accuracy={accuracy:.2f}%"
    assert extractor.cache_tag in extractor.weights_path.stem


def test_features_follow_requested_order_and_accept_other_sizes(mnist_workdir: Path) -> None:
    path = str(classifier_path(MNIST, mnist_workdir))
    both = DomainFeatureExtractor(FIDELITY_NAME, [LOGITS, FEATURES], feature_extractor_weights_path=path)
    test = build_dataset(MNIST, "test", mnist_workdir)
    images = to_uint8_rgb(torch.stack([test[i]["image"] for i in range(8)]))
    logits, features = both(images)
    assert logits.shape == (8, 10) and features.shape == (8, 128)
    # Logits are the head applied to the features: the two outputs belong together.
    torch.testing.assert_close(both.model.head(features), logits)
    # 64x64 input is resized to the classifier's 32x32; digits stay recognisable.
    upscaled = torch.nn.functional.interpolate(images.float(), size=64, mode="nearest").to(torch.uint8)
    assert (both.classify(upscaled) == test.labels[:8]).float().mean() >= 0.75


def test_dataset_without_labels_is_refused(tmp_path: Path) -> None:
    message = "extractor 'domain' needs labels; dataset 'celeba' provides none; use inception"
    with pytest.raises(UserError, match=message):
        resolve_domain(DataConfig(name="celeba", channels=3, resolution=64), tmp_path)


def test_extractor_refuses_float_input(mnist_workdir: Path) -> None:
    extractor = load_domain_extractor(MNIST, mnist_workdir)
    with pytest.raises(UserError, match="must be uint8 \\(N, 3, H, W\\); got torch.float32"):
        extractor(torch.zeros(2, 3, 32, 32))


def test_classifier_trains_when_first_needed_inside_no_grad(tmp_path: Path) -> None:
    # The first intermediate FID of a sweep trial runs under no_grad and may be what trains the classifier.
    shapes = DataConfig(name="shapes", resolution=16, channels=1, shapes_count=300)
    with torch.no_grad():
        path = train_classifier(shapes, tmp_path)
    assert load_checkpoint(path)["test_accuracy"] > 40.0  # five shape classes: chance is 20%
