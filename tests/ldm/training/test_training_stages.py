"""Both stages and the pipeline on tiny models over the procedural shapes dataset (no files needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from ldm.config import ExperimentConfig, load_config, parse_overrides
from ldm.data.registry import build_dataset
from ldm.diffusion.conditioning import ConditionInputs
from ldm.errors import UserError
from ldm.first_stage.autoencoder import IdentityFirstStage
from ldm.locks import lock_file
from ldm.tracking import NullTracker
from ldm.training import DivergedError
from ldm.training.autoencoder_stage import first_stage_checkpoint, load_first_stage, train_autoencoder
from ldm.training.diffusion_stage import run_dir, train_diffusion
from ldm.training.pipeline import LatentDiffusionPipeline

# The micro preset on fewer images, with enough steps for two checkpoints and logs at every step.
MICRO = [
    "data.shapes_count=200",
    *(f"training.{stage}.{key}" for stage in ("autoencoder", "diffusion") for key in (
        "steps=6", "log_every=1", "checkpoint_every=3", "image_every=3", "warmup_steps=2")),
]


def tiny(*overrides: str) -> ExperimentConfig:
    return load_config(preset="micro", overrides=parse_overrides([*MICRO, *overrides]))


class Recorder(NullTracker):
    """Keeps metrics and image keys; raises KeyboardInterrupt from `stop_at` on, like a killed run."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.images: list[str] = []
        self.artifacts: list[str] = []
        self.stop_at = stop_at

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        assert step is not None
        if self.stop_at is not None and step >= self.stop_at:
            raise KeyboardInterrupt
        for name, value in metrics.items():
            self.metrics.setdefault(name, []).append((step, value))

    def log_image(self, image: Image.Image, key: str, step: int | None = None) -> None:
        self.images.append(f"{key}@{step}")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        assert Path(path).is_file()
        self.artifacts.append(Path(path).name)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One first stage and a diffusion model per conditioning type, all in one work folder."""
    workdir = tmp_path_factory.mktemp("work")
    runs: dict[str, Any] = {"workdir": workdir, "trackers": {}}
    for conditioning in ("none", "class", "text", "concat"):
        tracker, evals = Recorder(), []
        cfg = tiny(f"diffusion.conditioning={conditioning}")
        runs[conditioning] = train_diffusion(cfg, workdir, tracker, on_eval=lambda *e, out=evals: out.append(e))
        runs["trackers"][conditioning] = (cfg, tracker, evals)
    runs["first_stage"] = first_stage_checkpoint(tiny(), workdir)
    return runs


# ------------------------------------------------------------------ first stage


def test_unfinished_first_stage_continues_from_its_checkpoint_to_the_same_weights(tmp_path: Path) -> None:
    # The discriminator starts at step 2: both optimisers and its BatchNorm statistics must resume too.
    cfg = tiny("autoencoder.disc_weight=0.5", "autoencoder.disc_start=2")
    straight = train_autoencoder(cfg, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(cfg, tmp_path / "resumed", Recorder(stop_at=5))
    interrupted = first_stage_checkpoint(cfg, tmp_path / "resumed")
    assert torch.load(interrupted, weights_only=True)["step"] == 3
    assert not lock_file(interrupted.parent).exists()  # released on the way out
    with pytest.raises(UserError, match=r"first-stage checkpoint '.*autoencoder.pt' is unfinished \(step 3\)"):
        load_first_stage(interrupted)
    # Needing the first stage again (a rerun, a trial) continues it without being asked to resume.
    rerun = Recorder()
    resumed = train_autoencoder(cfg, tmp_path / "resumed", rerun)
    assert [s for s, _ in rerun.metrics["ae/loss"]] == [4, 5, 6]

    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert_same_tensors(a["model"], b["model"])
    assert set(a["optimizers"]) == {"model", "discriminator"}
    assert a["extras"]["scale_factor"] == b["extras"]["scale_factor"]
    assert straight.with_name("metrics.json").read_text() == resumed.with_name("metrics.json").read_text()


def test_autoencoder_outputs_and_logged_metrics(tmp_path: Path) -> None:
    tracker = Recorder()
    path = train_autoencoder(tiny(), tmp_path, tracker)
    assert path == tmp_path / "first_stages" / tiny().first_stage_hash() / "autoencoder.pt"
    metrics = json.loads(path.with_name("metrics.json").read_text())
    assert set(metrics) == {"psnr", "ssim", "mse", "bpp", "latent_ratio"}
    assert metrics["latent_ratio"] == pytest.approx(2 * 8 * 8 / (16 * 16))  # c h w / (C H W), grayscale
    # 8 originals over their 8 reconstructions, 16 px tiles upscaled to 64 px, 2 px padding.
    assert Image.open(path.with_name("reconstructions.png")).size == (8 * (64 + 2) + 2, 2 * (64 + 2) + 2)
    logged = {"ae/loss", "ae/lr", "ae/images_per_s", "ae/val_loss", "ae/rec_loss", "ae/kl", "psnr"}
    assert logged <= tracker.metrics.keys()
    assert [s for s, _ in tracker.metrics["ae/loss"]] == [1, 2, 3, 4, 5, 6]
    assert tracker.images == ["ae_reconstructions@3", "ae_reconstructions@6"]
    first_stage, scale_factor, cfg = load_first_stage(path)
    assert not first_stage.training and cfg == tiny()
    assert scale_factor > 0 and torch.load(path, weights_only=True)["extras"]["scale_factor"] == scale_factor


def test_first_stage_is_reused_by_hash_unless_retrained(tmp_path: Path) -> None:
    cfg = tiny()
    path = train_autoencoder(cfg, tmp_path)
    written = path.stat().st_mtime_ns
    again = Recorder()
    assert train_autoencoder(tiny("diffusion.conditioning=text", "name=other"), tmp_path, again) == path
    assert path.stat().st_mtime_ns == written
    assert "ae/loss" not in again.metrics  # no training; its results are logged for this run too
    assert "psnr" in again.metrics and again.artifacts == ["reconstructions.png"]
    retrained = Recorder()
    assert train_autoencoder(cfg, tmp_path, retrained, retrain=True) == path
    assert path.stat().st_mtime_ns != written and "ae/loss" in retrained.metrics


def test_identity_first_stage_needs_no_training(tmp_path: Path) -> None:
    tracker = Recorder()
    path = train_autoencoder(tiny("autoencoder.f=1"), tmp_path, tracker)
    first_stage, scale_factor, _ = load_first_stage(path)
    assert isinstance(first_stage, IdentityFirstStage) and scale_factor == 1.0
    assert "ae/loss" not in tracker.metrics
    metrics = json.loads(path.with_name("metrics.json").read_text())
    assert metrics["psnr"] == pytest.approx(100.0) and metrics["bpp"] == 8.0  # lossless, raw 8-bit pixels


# ------------------------------------------------------------------ diffusion stage


def test_diffusion_resume_reaches_the_same_weights(tmp_path: Path, trained: dict[str, Any]) -> None:
    # Class conditioning with heavy condition dropout: the dropout draws must resume exactly as well.
    cfg = tiny("diffusion.conditioning=class", "diffusion.p_uncond=0.5")
    straight = train_diffusion(cfg, tmp_path / "straight", first_stage_ckpt=trained["first_stage"])

    def stop_at_five(name: str, value: float, step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cfg, tmp_path / "resumed", first_stage_ckpt=trained["first_stage"], on_eval=stop_at_five)
    resumed = train_diffusion(cfg, tmp_path / "resumed", first_stage_ckpt=trained["first_stage"], resume=True)

    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 6
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["ema"]["shadow"], b["ema"]["shadow"])


def test_diffusion_run_folder_and_metrics(trained: dict[str, Any]) -> None:
    cfg, tracker, evals = trained["trackers"]["class"]
    path = trained["class"]
    assert path == run_dir(cfg, trained["workdir"]) / "diffusion.pt"
    assert path.parent.name == f"micro-{cfg.config_hash()}"
    assert load_config(path.parent / "config.yaml") == cfg
    assert yaml.safe_load(torch.load(path, weights_only=True)["config"]) == cfg.model_dump(mode="json")
    assert Image.open(path.parent / "samples.png").width == 8 * (64 + 2) + 2  # 8 columns of 64 px tiles
    first_stage = trained["first_stage"]
    assert (path.parent / "checkpoints.txt").read_text() == f"first_stage: {first_stage}\ndiffusion: {path}\n"
    assert tracker.artifacts == ["reconstructions.png", "config.yaml", "samples.png", "checkpoints.txt"]
    assert {"diffusion/loss", "diffusion/lr", "diffusion/images_per_s", "val_loss", "train_images_per_s",
            "train_hours"} <= tracker.metrics.keys()
    assert [(name, step) for name, _, step in evals] == [("val_loss", s) for s in range(1, 7)]
    assert [value for _, value, _ in evals] == [value for _, value in tracker.metrics["val_loss"]]
    assert tracker.images == ["diffusion_samples@3", "diffusion_samples@6"]


def test_first_stage_that_does_not_fit_the_config_is_refused(tmp_path: Path, trained: dict[str, Any]) -> None:
    message = r"does not fit this config: it has autoencoder.latent_channels=2 \(config: 3\)"
    with pytest.raises(UserError, match=message):
        train_diffusion(tiny("autoencoder.latent_channels=3"), tmp_path, first_stage_ckpt=trained["first_stage"])


def test_diverging_diffusion_raises(tmp_path: Path, trained: dict[str, Any]) -> None:
    cfg = tiny("training.diffusion.lr=1e30", "training.diffusion.grad_clip=null", "training.diffusion.warmup_steps=0")
    with pytest.raises(DivergedError, match=r"training diverged at step \d: the loss is"):
        train_diffusion(cfg, tmp_path, first_stage_ckpt=trained["first_stage"])


# ------------------------------------------------------------------ pipeline


def inpainting_inputs(workdir: Path, n: int) -> ConditionInputs:
    val = build_dataset(tiny().data, "val", workdir)
    return ConditionInputs(masked_images=torch.stack([val[i]["image"] for i in range(n)]),
                           masks=torch.stack([val[i]["mask"] for i in range(n)]))


@pytest.mark.parametrize("conditioning", ["none", "class", "text", "concat"])
def test_generate_gives_uint8_images_fixed_by_the_seed(trained: dict[str, Any], conditioning: str) -> None:
    pipeline = LatentDiffusionPipeline.from_checkpoint(trained[conditioning])
    given = inpainting_inputs(trained["workdir"], 3) if conditioning == "concat" else ConditionInputs()

    def draw(seed: int) -> torch.Tensor:
        return pipeline.generate(3, conditions=given, generator=torch.Generator().manual_seed(seed), batch_size=2)

    images = draw(0)
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 16, 16)
    assert torch.equal(images, draw(0)) and not torch.equal(images, draw(1))
    floats = pipeline.to_float(3, conditions=given, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert floats.dtype == torch.float32 and floats.min() >= -1 and floats.max() <= 1
    assert torch.equal(((floats + 1) * 127.5).round().to(torch.uint8), images)


def test_given_conditions_are_used(trained: dict[str, Any]) -> None:
    classes = LatentDiffusionPipeline.from_checkpoint(trained["class"])
    zeros = classes.to_float(2, conditions=ConditionInputs(labels=torch.tensor([0, 0])),
                             generator=torch.Generator().manual_seed(0))
    fours = classes.to_float(2, conditions=ConditionInputs(labels=torch.tensor([4, 4])),
                             generator=torch.Generator().manual_seed(0))
    assert zeros.shape == fours.shape == (2, 1, 16, 16) and not torch.equal(zeros, fours)
    texts = LatentDiffusionPipeline.from_checkpoint(trained["text"])
    prompts = ConditionInputs(prompts=["a small red circle in the center"] * 2)
    assert texts.generate(2, conditions=prompts).shape == (2, 1, 16, 16)


def test_missing_conditions_are_drawn_from_the_data(trained: dict[str, Any]) -> None:
    pipeline = LatentDiffusionPipeline.from_checkpoint(trained["class"])
    counts = torch.tensor(pipeline.dataset.label_counts)
    drawn_inputs = pipeline.complete_conditions(500, ConditionInputs(), torch.Generator().manual_seed(0))
    labels = drawn_inputs.labels
    assert drawn_inputs.prompts is None and labels is not None and labels.shape == (500,)
    drawn = torch.bincount(labels, minlength=len(counts)).double() / 500
    torch.testing.assert_close(drawn, counts.double() / counts.sum(), atol=0.07, rtol=0)
    texts = LatentDiffusionPipeline.from_checkpoint(trained["text"])
    prompts = texts.complete_conditions(5, ConditionInputs(), torch.Generator().manual_seed(0)).prompts
    assert prompts is not None and set(prompts) <= set(texts.dataset.captions)


def test_wrong_conditions_are_user_errors(trained: dict[str, Any]) -> None:
    unconditional = LatentDiffusionPipeline.from_checkpoint(trained["none"])
    with pytest.raises(UserError, match=r"conditioning='none': labels cannot be given; allowed: no condition"):
        unconditional.generate(2, conditions=ConditionInputs(labels=torch.tensor([0, 1])))
    classes = LatentDiffusionPipeline.from_checkpoint(trained["class"])
    with pytest.raises(UserError, match=r"label 5 is out of range; allowed: 0..4"):
        classes.generate(2, conditions=ConditionInputs(labels=torch.tensor([0, 5])))
    with pytest.raises(UserError, match=r"conditioning='class': prompts cannot be given; allowed: labels"):
        classes.generate(1, conditions=ConditionInputs(prompts=["a circle"]))
    with pytest.raises(UserError, match=r"3 labels for n=2 images"):
        classes.generate(2, conditions=ConditionInputs(labels=torch.tensor([0, 1, 2])))
    inpainting = LatentDiffusionPipeline.from_checkpoint(trained["concat"])
    with pytest.raises(UserError, match=r"needs masked_images and masks"):
        inpainting.generate(2)
    with pytest.raises(UserError, match=r"'.*autoencoder.pt' is a first-stage checkpoint"):
        LatentDiffusionPipeline.from_checkpoint(trained["first_stage"])


def test_ema_weights_are_loaded_when_asked(trained: dict[str, Any]) -> None:
    averaged = LatentDiffusionPipeline.from_checkpoint(trained["none"], use_ema=True).denoiser.state_dict()
    raw = LatentDiffusionPipeline.from_checkpoint(trained["none"], use_ema=False).denoiser.state_dict()
    ckpt = torch.load(trained["none"], weights_only=True)
    name = "unet.input_conv.weight"
    assert torch.equal(averaged[name], ckpt["ema"]["shadow"][name]) and torch.equal(raw[name], ckpt["model"][name])
    assert not torch.equal(averaged[name], raw[name])
