"""`training.diffusion.cache_latents`: the same training, the same latent distribution, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ldm.config import ExperimentConfig, Override, load_config
from ldm.data.registry import build_dataset
from ldm.errors import ConfigError
from ldm.paths import CACHE_ENV
from ldm.tracking import NullTracker
from ldm.training.autoencoder_stage import load_first_stage, train_autoencoder
from ldm.training.diffusion_stage import train_diffusion
from ldm.training.latent_cache import MEAN_KEY, cache_key, cached_latents, cached_posterior
from ldm.training.pipeline import encode_latents

CPU = torch.device("cpu")
DRAWS = 4000


class LossCurve(NullTracker):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "diffusion/loss" in metrics:
            self.losses.append(metrics["diffusion/loss"])


def micro(**overrides: object) -> ExperimentConfig:
    return load_config(preset="micro", overrides=[Override("training.diffusion.steps", 8),
                                                  Override("training.diffusion.log_every", 1),
                                                  *(Override(k, v) for k, v in overrides.items())])


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_cached_training_follows_the_uncached_loss_curve(tmp_path: Path, shared_cache: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(shared_cache))  # one first stage for both runs
    curves = {}
    for cached in (False, True):
        curves[cached] = LossCurve()
        train_diffusion(micro(**{"training.diffusion.cache_latents": cached}), tmp_path / str(cached), curves[cached])
    assert len(curves[True].losses) == 8 and len(set(curves[True].losses)) > 4
    torch.testing.assert_close(torch.tensor(curves[True].losses), torch.tensor(curves[False].losses),
                               rtol=1e-4, atol=1e-6)
    assert len(list((shared_cache / "cache" / "latents").iterdir())) == 1


def test_cached_posterior_samples_have_the_encoded_distribution(tmp_path: Path) -> None:
    cfg = micro()
    first_stage, scale, _ = load_first_stage(train_autoencoder(cfg, tmp_path))
    train = build_dataset(cfg.data, "train", tmp_path)
    cache = cached_latents(first_stage, train, cfg.data, tmp_path, CPU, batch_size=64)
    cached_batch = next(iter(DataLoader(cache, batch_size=4)))
    images = next(iter(DataLoader(train, batch_size=4)))["image"]
    shape = first_stage.latent_shape(cfg.data.resolution)
    generator = torch.Generator().manual_seed(0)

    def draws(sample: object) -> torch.Tensor:
        return torch.stack([sample(torch.randn(4, *shape, generator=generator)) for _ in range(DRAWS)])  # type: ignore[operator]

    uncached = draws(lambda noise: encode_latents(first_stage, images, scale, posterior_noise=noise))
    cached = draws(lambda noise: cached_posterior(cached_batch).sample(noise=noise) * scale)
    std = uncached.std(dim=0)
    assert std.min() > 0  # a KL first stage: the samples really are random
    # means within 5 standard errors; stds within 5 standard errors of a normal sample's std (std / sqrt(2n))
    assert ((cached.mean(dim=0) - uncached.mean(dim=0)).abs() <= 5 * std * (2 / DRAWS) ** 0.5).all()
    assert ((cached.std(dim=0) - std).abs() <= 5 * std / (DRAWS ** 0.5)).all()


def test_the_cache_is_built_once_per_first_stage_and_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = micro()
    first_stage, _, _ = load_first_stage(train_autoencoder(cfg, tmp_path))
    train = build_dataset(cfg.data, "train", tmp_path)
    cached_latents(first_stage, train, cfg.data, tmp_path, CPU, batch_size=64)
    encoded: list[int] = []
    real_encode = first_stage.encode
    monkeypatch.setattr(first_stage, "encode", lambda x: encoded.append(len(x)) or real_encode(x))
    again = cached_latents(first_stage, train, cfg.data, tmp_path, CPU, batch_size=64)
    assert encoded == [] and len(again) == len(train) and MEAN_KEY in again[0]
    key = cache_key(first_stage, cfg.data)
    assert cache_key(first_stage, cfg.data.model_copy(update={"max_train_items": 100})) != key
    with torch.no_grad():
        next(first_stage.parameters()).add_(1e-3)
    assert cache_key(first_stage, cfg.data) != key


def test_cache_latents_refuses_a_condition_computed_from_the_image() -> None:
    with pytest.raises(ConfigError, match="cache_latents=true does not fit diffusion.conditioning='concat'.*"
                                          "allowed with: none, class, text"):
        micro(**{"training.diffusion.cache_latents": True, "diffusion.conditioning": "concat"})
