"""What the diffusion stage feeds its denoiser and what sampling decodes: tests for bugs that pass silently.

Each test here was checked against a planted bug (latents decoded x scale factor, an unmasked inpainting
condition, timesteps from half the range): the bug made it fail.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ldm.config import Override, load_config
from ldm.data.registry import build_dataset
from ldm.diffusion.conditioning import ConditionInputs
from ldm.diffusion.process import GaussianDiffusion
from ldm.training import pipeline as pipeline_module
from ldm.training.diffusion_stage import DiffusionStep, train_diffusion
from ldm.training.pipeline import LatentDiffusionPipeline
from ldm.training.sharding import StepNoise

BATCHES = 300  # x 8 images: 2,400 timesteps per check


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("work")
    return {"workdir": workdir, **{
        kind: LatentDiffusionPipeline.from_checkpoint(train_diffusion(
            load_config(preset="micro", overrides=[Override("diffusion.conditioning", kind)]), workdir))
        for kind in ("none", "concat")}}


def shapes_batch(models: dict[str, Any], size: int = 8) -> dict[str, Any]:
    data = models["none"].config.data
    return next(iter(DataLoader(build_dataset(data, "val", models["workdir"]), batch_size=size)))


def test_sampling_decodes_latents_divided_by_the_scale_factor(models: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = models["none"]
    assert pipeline.scale_factor != pytest.approx(1.0, abs=0.05)  # a KL first stage: the division matters
    latents = torch.randn(3, *pipeline.first_stage.latent_shape(pipeline.config.data.resolution),
                          generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(pipeline_module, "sample", lambda *args, **kwargs: latents.clone())
    images = pipeline.to_float(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = pipeline.first_stage.decode(latents / pipeline.scale_factor).clamp(-1, 1)
    torch.testing.assert_close(images, expected)


def test_the_inpainting_condition_never_sees_the_region_to_fill(models: dict[str, Any]) -> None:
    pipeline = models["concat"]
    batch = shapes_batch(models)
    masks = batch["mask"]
    assert 0 < masks.mean() < 1
    inside = batch | {"image": torch.where(masks.bool(), torch.rand_like(batch["image"]) * 2 - 1, batch["image"])}
    outside = batch | {"image": torch.where(masks.bool(), batch["image"], -batch["image"])}

    def training_condition(b: dict[str, Any]) -> Tensor:
        cond = pipeline.condition(pipeline.conditioner.inputs_from_batch(b))
        assert cond is not None
        return cond["concat"]

    torch.testing.assert_close(training_condition(inside), training_condition(batch))
    assert not torch.allclose(training_condition(outside), training_condition(batch))


@pytest.mark.parametrize("min_snr_gamma", [None, 5.0])
def test_training_timesteps_cover_the_whole_range_uniformly(models: dict[str, Any],
                                                            min_snr_gamma: float | None) -> None:
    trained = models["none"]
    diffusion_cfg = trained.config.diffusion.model_copy(update={"min_snr_gamma": min_snr_gamma})
    pipeline = LatentDiffusionPipeline(
        first_stage=trained.first_stage, denoiser=trained.denoiser,
        diffusion=GaussianDiffusion.from_config(diffusion_cfg), scale_factor=trained.scale_factor,
        config=trained.config, dataset=trained.dataset, device=trained.device)
    drawn: list[Tensor] = []

    def recording_model(x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        drawn.append(t.clone())
        return torch.zeros_like(x)

    step = DiffusionStep(pipeline, recording_model, p_uncond=0.0, seed=0)
    batch = shapes_batch(models)
    for i in range(BATCHES):
        noise = StepNoise.whole(len(batch["image"]), seed=i, device=torch.device("cpu"))
        assert torch.isfinite(step.losses(batch, i, noise).losses["model"])
    t = torch.cat(drawn).double()
    total = pipeline.diffusion.num_timesteps
    # Uniform on {0, ..., T-1}: each quarter holds 1/4 of the draws (3 sigma of 2,400 draws is about 0.027).
    quarters = torch.histc(t, bins=4, min=0, max=total)
    torch.testing.assert_close(quarters / len(t), torch.full((4,), 0.25, dtype=torch.float64), atol=0.03, rtol=0)
    assert int(t.min()) < total // 100 and int(t.max()) >= total - total // 100
