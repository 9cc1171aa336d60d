from pathlib import Path

import pytest
import torch

from evaluation.sampling import sample_batches
from evaluation.sobol import sobol_normal
from ldm.diffusion.conditioning import ConditionInputs
from ldm.distributed import Ranks
from ldm.errors import UserError
from ldm.training.pipeline import LatentDiffusionPipeline


def test_each_coordinate_has_one_point_per_stratum() -> None:
    """2^k points of a scrambled Sobol sequence put exactly one value in each 1/2^k of every axis, so each
    coordinate's N(0, 1) values fall one per N-quantile bin."""
    noise = sobol_normal(seed=3, start=0, count=256, shape=(4, 2, 2)).reshape(256, 16).double()
    bins = (torch.special.ndtr(noise) * 256).floor().long()
    assert all(sorted(bins[:, j].tolist()) == list(range(256)) for j in range(16))


def test_point_i_does_not_depend_on_how_the_points_are_split() -> None:
    whole = sobol_normal(seed=1, start=0, count=10, shape=(2, 3))
    parts = torch.cat([sobol_normal(seed=1, start=0, count=4, shape=(2, 3)),
                       sobol_normal(seed=1, start=4, count=6, shape=(2, 3))])
    assert torch.equal(whole, parts) and whole.shape == (10, 2, 3)
    assert not torch.equal(whole, sobol_normal(seed=2, start=0, count=10, shape=(2, 3)))


def test_latents_beyond_the_engines_dimension_are_refused() -> None:
    with pytest.raises(UserError, match="sobol_noise needs latents of at most 21201"):
        sobol_normal(seed=0, start=0, count=1, shape=(3, 128, 128))


def test_sobol_noise_samples_do_not_depend_on_the_batch_size(class_model: Path) -> None:
    pipeline = LatentDiffusionPipeline.from_checkpoint(class_model)
    labels = ConditionInputs(labels=torch.tensor([0, 1, 2, 3, 4, 0]))

    def images(batch_size: int, sobol: bool) -> torch.Tensor:
        return torch.cat([batch.images for batch in sample_batches(
            pipeline, labels, 6, pipeline.config.diffusion.sampling, 0, batch_size, Ranks(), sobol_noise=sobol)])

    assert torch.equal(images(3, True), images(4, True))
    assert not torch.equal(images(3, True), images(3, False))
