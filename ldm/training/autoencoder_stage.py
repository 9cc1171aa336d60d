"""Stage 1: train the first stage once per `first_stage_hash()`, measure it, and store it for reuse."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ldm.artifacts import publish_checkpoint, upload_of
from ldm.config import ExperimentConfig
from ldm.data.grid import make_grid_image, save_image_atomic
from ldm.data.registry import build_dataset
from ldm.errors import UserError
from ldm.first_stage import (
    AutoencoderLoss,
    FirstStage,
    build_first_stage,
    evaluate_rate_distortion,
    evaluating,
)
from ldm.distributed import Ranks, current_ranks
from ldm.io import atomic_write_text
from ldm.locks import exclusive, lock_file
from ldm.paths import first_stage_dir
from ldm.tracking import NullTracker, Tracker, main_rank_tracker
from ldm.training.checkpoint import (
    Checkpoint,
    capture_rng,
    checkpoint_config,
    model_weights,
    read_checkpoint,
    save_checkpoint,
    update_extras,
)
from ldm.training.device import Batch, prepare_module, resolve_device
from ldm.training.loop import Stage, StepLosses, train_stage
from ldm.training.sharding import StepNoise, check_layouts

CHECKPOINT_NAME = "autoencoder.pt"
METRICS_NAME = "metrics.json"
RECONSTRUCTIONS_NAME = "reconstructions.png"
# Images whose latents give the scale factor (LDM App. D.1 uses one batch; more makes it steadier).
SCALE_SAMPLE_IMAGES = 512
RECONSTRUCTION_GRID_IMAGES = 8
# Validation images behind metrics.json: a fixed count, as the file belongs to the first stage whatever
# evaluation settings later runs that reuse it have.
RATE_DISTORTION_IMAGES = 1000


class AutoencoderTrainee(nn.Module):
    """What stage 1 trains and checkpoints: the first stage and its loss (which owns the discriminator)."""

    def __init__(self, first_stage: FirstStage, loss: AutoencoderLoss) -> None:
        super().__init__()
        self.first_stage = first_stage
        self.loss = loss


class AutoencoderStep:
    """Reconstruction + regulariser (+ adaptive GAN) loss for the autoencoder; hinge loss for the discriminator."""

    def __init__(self, trainee: AutoencoderTrainee) -> None:
        self.first_stage, self.loss = trainee.first_stage, trainee.loss

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"model": list(self.first_stage.parameters())}
        if self.loss.discriminator is not None:
            groups["discriminator"] = list(self.loss.discriminator.parameters())
        return groups

    def losses(self, batch: Batch, step: int, noise: StepNoise) -> StepLosses:
        images = batch["image"]
        output = self.first_stage(images, noise=noise.randn(*self.first_stage.latent_shape(images.shape[-1])))
        loss, stats = self.loss.generator_loss(images, output, step, self.first_stage.decoder_last_layer)
        losses = {"model": loss}
        if self.loss.discriminator_active(step):
            losses["discriminator"], d_stats = self.loss.discriminator_loss(images, output.reconstruction)
            stats |= d_stats
        stats.pop("loss")  # the loop reports the model group's loss itself
        return StepLosses(losses, stats)

    def val_loss(self, batch: Batch, noise: StepNoise) -> Tensor:
        images = batch["image"]
        loss, _ = self.loss.generator_loss(images, self.first_stage(images, sample_posterior=False), 0,
                                           self.first_stage.decoder_last_layer)
        return loss

    def preview(self, batch: Batch) -> Image.Image:
        return reconstruction_grid(self.first_stage, batch["image"])


def reconstruction_grid(first_stage: FirstStage, images: Tensor) -> Image.Image:
    """Originals in the top row, their reconstructions (posterior mode) below."""
    originals = images[:RECONSTRUCTION_GRID_IMAGES]
    with evaluating(first_stage):
        reconstructions = first_stage.decode(first_stage.encode(originals).mode()).clamp(-1, 1)
    return make_grid_image(torch.cat([originals, reconstructions]).cpu(), None, ncol=len(originals))


def first_stage_checkpoint(cfg: ExperimentConfig, workdir: Path) -> Path:
    """Where the first stage of this config lives: shared by every config with the same first-stage hash."""
    return first_stage_dir(workdir, cfg.first_stage_hash()) / CHECKPOINT_NAME


def is_finished(path: Path) -> bool:
    """A first stage is finished once its scale factor is stored, the last thing written."""
    return path.is_file() and "scale_factor" in read_checkpoint(path)["extras"]


def train_autoencoder(cfg: ExperimentConfig, workdir: Path, tracker: Tracker = NullTracker(),
                      retrain: bool = False) -> Path:
    """Train (or reuse) the first stage of `cfg`; returns its checkpoint, which holds the scale factor.

    One process trains it, under a lock beside its folder; others that need it wait, then reuse it. An
    unfinished one (a killed run) continues exactly from its last checkpoint; `retrain` starts it afresh.
    The run that trains it uploads it (`tracking.log_checkpoints`) and records its URI beside it; a run that
    reuses one not uploaded to its own tracking store uploads it there.
    """
    ranks = current_ranks()
    check_layouts(cfg.training, ranks)
    tracker = main_rank_tracker(tracker, ranks)
    path = first_stage_checkpoint(cfg, workdir)
    step = cfg.training.autoencoder.steps

    def needed() -> bool:  # rank 0's view, so that every rank takes the same branch
        return bool(ranks.broadcast_object(ranks.is_main and (retrain or not is_finished(path))))

    if needed():
        # Rank 0 holds the lock for the job; the other ranks wait for it in the next collective.
        with exclusive(lock_file(path.parent)) if ranks.is_main else contextlib.nullcontext():
            if needed():  # a process we waited for may have finished it
                step = _train_and_measure(cfg, workdir, path, tracker, resume=not retrain, ranks=ranks)
                # Under the lock, so a waiter of the same store finds the URI and does not upload a second copy.
                publish_checkpoint(tracker, path, cfg.tracking.log_checkpoints, replaces=True)
        ranks.barrier()
    if ranks.is_main:
        if upload_of(path, tracker) is None:
            publish_checkpoint(tracker, path, cfg.tracking.log_checkpoints, replaces=False)
        _log_results(tracker, path, step)
    return path


def _train_and_measure(cfg: ExperimentConfig, workdir: Path, path: Path, tracker: Tracker, resume: bool,
                       ranks: Ranks) -> int:
    """Train the first stage into `path` (on every rank), then store its metrics and scale factor (rank 0)."""
    device = resolve_device(cfg.training.device)
    torch.manual_seed(cfg.training.seed)
    train, val = build_dataset(cfg.data, "train", workdir), build_dataset(cfg.data, "val", workdir)
    first_stage = build_first_stage(cfg.autoencoder, cfg.data.channels)
    loss = AutoencoderLoss(cfg.autoencoder, cfg.data.channels)
    if ranks.distributed and device.type == "cuda":
        # The discriminator's BatchNorm over the global batch, as on one process (SyncBatchNorm has no CPU kernel:
        # gloo ranks normalise over their own share).
        loss = nn.SyncBatchNorm.convert_sync_batchnorm(loss)
    trainee = prepare_module(AutoencoderTrainee(first_stage, loss), device)
    if not first_stage.trainable:  # a checkpoint of its (empty) state
        if ranks.is_main:
            save_checkpoint(path, step=0, model=trainee, optimizers={}, ema=None, data_order={}, config=cfg,
                            rng=[capture_rng()], extras={})
        step = 0
    else:
        stage = Stage(name="autoencoder", settings=cfg.training.autoencoder, metric_prefix="ae",
                      val_metric="ae/val_loss", model=trainee, step=AutoencoderStep(trainee), train_data=train,
                      val_data=val, checkpoint=path, extras={}, preview_key="ae_reconstructions")
        trained = train_stage(stage, cfg, device, tracker, resume=resume)
        if trained.ema is not None:  # what later stages load (`load_first_stage` prefers the EMA weights)
            trained.ema.copy_to(trainee)
        step = cfg.training.autoencoder.steps
    if not ranks.is_main:
        return step

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.training.seed)
        scale_factor = first_stage.scale_factor(_first_images(train, SCALE_SAMPLE_IMAGES))
    metrics = rate_distortion(first_stage, val, cfg, RATE_DISTORTION_IMAGES)
    atomic_write_text(path.with_name(METRICS_NAME), json.dumps(metrics, indent=2))
    save_image_atomic(reconstruction_grid(first_stage, _first_images(val, RECONSTRUCTION_GRID_IMAGES).to(device)),
                      path.with_name(RECONSTRUCTIONS_NAME))
    update_extras(path, {"scale_factor": scale_factor})
    return step


def _log_results(tracker: Tracker, path: Path, step: int) -> None:
    """Log a finished first stage's metrics and reconstructions (again for each run that reuses it)."""
    tracker.log_metrics(json.loads(path.with_name(METRICS_NAME).read_text()), step=step)
    tracker.log_artifact(path.with_name(RECONSTRUCTIONS_NAME))


def load_first_stage(path: Path) -> tuple[FirstStage, float, ExperimentConfig]:
    """The first stage of a stage-1 checkpoint or of a diffusion checkpoint (which embeds its own)."""
    return first_stage_of(read_checkpoint(path), path)


def first_stage_of(ckpt: Checkpoint, path: Path) -> tuple[FirstStage, float, ExperimentConfig]:
    """A finished first stage (EMA weights when it has them) on the CPU in eval mode, its scale factor and config."""
    extras = ckpt["extras"]
    if "scale_factor" not in extras:
        raise UserError(f"first-stage checkpoint '{path}' is unfinished (step {ckpt['step']}); finish it with "
                        "`ldm train --stage autoencoder` and the same config")
    cfg = checkpoint_config(ckpt)
    first_stage = build_first_stage(cfg.autoencoder, cfg.data.channels)
    if "first_stage" in extras:  # a diffusion checkpoint
        weights = extras["first_stage"]
    else:
        prefix = "first_stage."
        weights = {k.removeprefix(prefix): v for k, v in model_weights(ckpt, use_ema=True).items()
                   if k.startswith(prefix)}
    first_stage.load_state_dict(weights)
    first_stage.eval().requires_grad_(False)
    return first_stage, float(extras["scale_factor"]), cfg


def rate_distortion(first_stage: FirstStage, data: Dataset, cfg: ExperimentConfig,
                    limit: int | None = None) -> dict[str, float]:
    """Rate-distortion metrics over the first `limit` images of a split (all when None)."""
    if limit is not None and limit < len(data):
        data = Subset(data, range(limit))
    batches = (batch["image"] for batch in DataLoader(data, batch_size=cfg.training.autoencoder.batch_size))
    return evaluate_rate_distortion(first_stage, batches).as_metrics()


def _first_images(data: Dataset, count: int) -> Tensor:
    return torch.stack([data[i]["image"] for i in range(min(count, len(data)))])
