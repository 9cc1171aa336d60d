"""rFID and rate-distortion of first stages whose answers are known: the identity and an untrained autoencoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluation.reconstruction import compute_reconstruction_metrics, reconstruct
from evaluation.reference import reference_set
from evaluation.report_card import META_KEY
from ldm.config import AutoencoderConfig, DataConfig, EvaluationConfig
from ldm.errors import UserError
from ldm.first_stage import build_first_stage

MNIST = DataConfig(name="mnist", resolution=32, channels=1)
EVALUATION = EvaluationConfig(extractors=["domain"], num_samples=40, kid_subset_size=40, batch_size=16)


def test_identity_first_stage_reconstructs_exactly(mnist_workdir: Path) -> None:
    identity = build_first_stage(AutoencoderConfig(f=1), image_channels=1)
    report = compute_reconstruction_metrics(identity, MNIST, EVALUATION, mnist_workdir)
    assert abs(report["rfid_domain"]) < 1e-3
    assert report["psnr"] == pytest.approx(100.0)  # the MSE floor of 1e-10
    assert report["ssim"] == pytest.approx(1.0) and report["mse"] == 0.0
    assert report["bpp"] == 8.0 and report["latent_ratio"] == 1.0
    assert report[META_KEY]["num_reference"] == 40 and report[META_KEY]["reference"] == "mnist/test"


def test_untrained_autoencoder_scores_far_worse(mnist_workdir: Path) -> None:
    torch.manual_seed(0)
    config = AutoencoderConfig(f=4, latent_channels=2, base_channels=8, channel_mult=[1, 1, 1])
    untrained = build_first_stage(config, image_channels=1)
    report = compute_reconstruction_metrics(untrained, MNIST, EVALUATION, mnist_workdir)
    assert report["rfid_domain"] > 50.0
    assert report["psnr"] < 15.0 and report["ssim"] < 0.5
    assert report["latent_ratio"] == pytest.approx(8 * 8 * 2 / (32 * 32))


def test_reconstructions_are_uint8_rgb_of_the_reference_images(mnist_workdir: Path) -> None:
    reference = reference_set(MNIST, "test", 6, 0, mnist_workdir)
    identity = build_first_stage(AutoencoderConfig(f=1), image_channels=1)
    reconstructed = reconstruct(identity, list(reference.float_batches(4)))
    assert torch.equal(reconstructed, torch.cat(list(reference.uint8_batches(4))))


def test_too_few_reference_images_are_refused(mnist_workdir: Path) -> None:
    identity = build_first_stage(AutoencoderConfig(f=1), image_channels=1)
    message = "9 reference images are too few for rFID; allowed: evaluation.num_samples >= 10"
    with pytest.raises(UserError, match=message):
        compute_reconstruction_metrics(identity, MNIST, EVALUATION.model_copy(update={"num_samples": 9}), mnist_workdir)
