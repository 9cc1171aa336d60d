"""The shared loop on a toy regression stage: schedule, data order, exact resume, divergence, hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from ldm.config import ExperimentConfig, Override, StageTrainingConfig, load_config
from ldm.errors import DataError
from ldm.tracking import NullTracker, Tracker
from ldm.training import DivergedError
from ldm.training.loop import ResumableBatches, Stage, StepLosses, TrainedStage, lr_at, train_stage
from ldm.training.sharding import StepNoise

CPU = torch.device("cpu")


class Points(Dataset):
    """y = <w, x> + 0.5 on fixed random 4x4 'images'."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 4, 4, generator=g)
        self.y = self.x.flatten(1) @ torch.linspace(-1, 1, 16) + 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.x[i], "target": self.y[i]}


class RegressionStep:
    """MSE of a linear model on inputs with fresh global-RNG noise, so resume must restore the RNG too."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.model.parameters())}

    def _loss(self, batch: dict[str, Any]) -> Tensor:
        x = batch["image"].flatten(1)
        x = x + 0.01 * torch.randn_like(x)
        return (self.model(x).squeeze(1) - batch["target"]).pow(2).mean()

    def losses(self, batch: dict[str, Any], step: int, noise: StepNoise) -> StepLosses:
        return StepLosses({"model": self._loss(batch)}, {"weight_norm": float(self.model.weight.detach().norm())})

    def val_loss(self, batch: dict[str, Any], noise: StepNoise) -> Tensor:
        return self._loss(batch)

    def preview(self, batch: dict[str, Any]) -> Image.Image:
        return Image.new("L", (4, 4))


class RecordingTracker(NullTracker):
    def __init__(self, stop_at: int | None = None) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.images: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        assert step is not None
        if self.stop_at is not None and step >= self.stop_at:
            raise KeyboardInterrupt
        self.metrics.append((step, dict(metrics)))

    def log_image(self, image: Image.Image, key: str, step: int | None = None) -> None:
        assert step is not None
        self.images.append((key, step))


def toy_config(**diffusion: Any) -> ExperimentConfig:
    settings = {"steps": 12, "batch_size": 8, "lr": 0.05, "warmup_steps": 3, "checkpoint_every": 5,
                "log_every": 2, "image_every": 6, "val_batches": 2, "ema_decay": 0.9, **diffusion}
    return load_config(preset="tiny", overrides=[Override(f"training.diffusion.{k}", v) for k, v in settings.items()])


def toy_stage(path: Path, cfg: ExperimentConfig, train_size: int = 20) -> Stage:
    torch.manual_seed(0)
    model = nn.Linear(16, 1)
    return Stage(name="diffusion", settings=cfg.training.diffusion, metric_prefix="diffusion", val_metric="val_loss",
                 model=model, step=RegressionStep(model), train_data=Points(train_size), val_data=Points(16, seed=1),
                 checkpoint=path, extras={"note": "toy"}, preview_key="toy")


def train_toy(path: Path, cfg: ExperimentConfig, tracker: Tracker = NullTracker(), train_size: int = 20,
              **options: Any) -> TrainedStage:
    return train_stage(toy_stage(path, cfg, train_size), cfg, CPU, tracker, **options)


def test_lr_warms_up_linearly_then_stays_constant() -> None:
    settings = StageTrainingConfig(lr=1e-3, warmup_steps=4)
    assert [lr_at(s, settings) for s in range(1, 7)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert lr_at(1, StageTrainingConfig(lr=1e-3, warmup_steps=0)) == 1e-3


def test_batches_cover_each_epoch_once_and_resume_mid_stream() -> None:
    stream = iter(ResumableBatches(size=10, batch_size=3, seed=7))
    batches = [next(stream) for _ in range(9)]  # three epochs of three batches, one item dropped each
    for epoch in range(3):
        seen = [i for batch in batches[3 * epoch : 3 * epoch + 3] for i in batch]
        assert len(seen) == len(set(seen)) == 9 and set(seen) <= set(range(10))
    assert batches[:3] != batches[3:6]  # a fresh order per epoch
    resumed = iter(ResumableBatches(size=10, batch_size=3, seed=7, start_batch=4))
    assert [next(resumed) for _ in range(5)] == batches[4:]


def test_resume_after_interruption_reaches_the_same_weights(tmp_path: Path) -> None:
    cfg = toy_config()
    straight = toy_stage(tmp_path / "straight.pt", cfg)
    straight_result = train_stage(straight, cfg, CPU, NullTracker())

    interrupted = toy_stage(tmp_path / "resumed.pt", cfg)
    with pytest.raises(KeyboardInterrupt):  # stops at step 8; the last checkpoint is step 5
        train_stage(interrupted, cfg, CPU, RecordingTracker(stop_at=8))
    assert torch.load(tmp_path / "resumed.pt", weights_only=True)["step"] == 5
    resumed = toy_stage(tmp_path / "resumed.pt", cfg)
    resumed_result = train_stage(resumed, cfg, CPU, NullTracker(), resume=True)

    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert straight_result.ema is not None and resumed_result.ema is not None
    for name, value in straight_result.ema.shadow.items():
        assert torch.equal(value, resumed_result.ema.shadow[name])
    final = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert final["step"] == 12 and final["extras"]["note"] == "toy"
    assert final["data_order"] == {"size": 20, "batch_size": 8, "seed": 0, "next_batch": 12}


def test_resume_with_a_different_batch_size_is_refused(tmp_path: Path) -> None:
    train_toy(tmp_path / "c.pt", toy_config(steps=5))
    with pytest.raises(DataError, match="batches of 8, this run has 20 in batches of 4"):
        train_toy(tmp_path / "c.pt", toy_config(steps=10, batch_size=4), resume=True)


def test_metrics_images_and_eval_hook(tmp_path: Path) -> None:
    tracker, evals = RecordingTracker(), []
    train_toy(tmp_path / "c.pt", toy_config(), tracker,
              on_eval=lambda name, value, step: evals.append((name, step, value)))
    assert [s for s, _ in tracker.metrics] == [2, 4, 6, 8, 10, 12]
    _, metrics = tracker.metrics[0]
    assert set(metrics) == {"diffusion/loss", "diffusion/lr", "diffusion/images_per_s", "diffusion/weight_norm",
                            "val_loss"}
    assert metrics["diffusion/lr"] == pytest.approx(0.05 * 2 / 3)
    assert [(n, s) for n, s, _ in evals] == [("val_loss", s) for s in [2, 4, 6, 8, 10, 12]]
    assert [v for *_, v in evals] == [m["val_loss"] for _, m in tracker.metrics]
    assert evals[-1][2] < evals[0][2]  # it learns
    assert tracker.images == [("toy", 6), ("toy", 12)]


def test_non_finite_loss_raises_diverged_error(tmp_path: Path) -> None:
    with pytest.raises(DivergedError, match=r"training diverged at step \d+: the loss is (inf|NaN)") as info:
        train_toy(tmp_path / "c.pt", toy_config(lr=1e30, warmup_steps=0))
    assert 1 < info.value.step <= 12


def test_train_split_smaller_than_a_batch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train split has 5 images, fewer than training.diffusion.batch_size=8"):
        train_toy(tmp_path / "c.pt", toy_config(), train_size=5)


class GameStep:
    """Two players on one graph: each group must get the gradient of its own loss only."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": [self.model.a], "discriminator": [self.model.b]}

    def losses(self, batch: dict[str, Any], step: int, noise: StepNoise) -> StepLosses:
        product = (self.model.a * self.model.b).sum()
        return StepLosses({"generator": product, "discriminator": -product}, {"d_loss": -float(product.detach())})

    def val_loss(self, batch: dict[str, Any], noise: StepNoise) -> Tensor:
        return torch.zeros(())

    def preview(self, batch: dict[str, Any]) -> Image.Image:
        return Image.new("L", (4, 4))


def test_each_parameter_group_steps_on_its_own_loss(tmp_path: Path) -> None:
    model = nn.Module()
    model.a = nn.Parameter(torch.tensor([2.0]))
    model.b = nn.Parameter(torch.tensor([3.0]))
    cfg = toy_config(steps=1, ema_decay=None, grad_clip=None)
    stage = Stage(name="diffusion", settings=cfg.training.diffusion, metric_prefix="diffusion", val_metric="val_loss",
                  model=model, step=GameStep(model), train_data=Points(8), val_data=Points(8),
                  checkpoint=tmp_path / "c.pt", extras={}, preview_key="game")
    tracker = RecordingTracker()
    train_stage(stage, cfg, CPU, tracker)
    # d(a*b)/da = b = 3 for the generator; d(-a*b)/db = -a = -2 for the discriminator (not -2 + 2).
    assert model.a.grad.tolist() == [3.0] and model.b.grad.tolist() == [-2.0]
    assert tracker.metrics[0][1]["diffusion/loss"] == 6.0 and tracker.metrics[0][1]["diffusion/d_loss"] == -6.0
