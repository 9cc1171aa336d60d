"""Stage 2: train the denoiser (UNet + conditioner) on scaled latents of the frozen first stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ldm.artifacts import RECORD_NAME, CheckpointRecord, log_checkpoint, upload_of
from ldm.config import ExperimentConfig
from ldm.data.grid import make_grid_image, save_image_atomic
from ldm.data.base import ImageDataset
from ldm.data.registry import build_dataset
from ldm.diffusion.conditioning import DatasetInfo, DatasetSummary
from ldm.diffusion.process import GaussianDiffusion
from ldm.distributed import current_ranks
from ldm.errors import UserError
from ldm.io import atomic_write_text
from ldm.paths import runs_dir
from ldm.tracking import NullTracker, Tracker, flatten, main_rank_tracker
from ldm.training.autoencoder_stage import load_first_stage, train_autoencoder
from ldm.training.device import Batch, maybe_compile, prepare_module, resolve_device
from ldm.training.latent_cache import MEAN_KEY, cached_latents, cached_posterior
from ldm.training.loop import OnEval, PeriodicEval, Stage, StepLosses, TrainedStage, train_stage
from ldm.training.pipeline import LatentDiffusionPipeline, build_denoiser, encode_latents
from ldm.training.sharding import StepNoise, check_layouts

CHECKPOINT_NAME = "diffusion.pt"
PREVIEW_IMAGES = 16
SAMPLE_GRID_IMAGES = 64


def run_dir(cfg: ExperimentConfig, workdir: Path) -> Path:
    """The run folder of a config: `<runs>/<name>-<config hash>`."""
    return runs_dir(workdir) / f"{cfg.name}-{cfg.config_hash()}"


def sample_grid(pipeline: LatentDiffusionPipeline, batch: Batch, count: int, seed: int) -> Image.Image:
    """Samples under the conditions of a batch's first `count` items, labelled by class name or prompt."""
    count = min(count, len(batch["image"]))
    conditions = pipeline.conditioner.inputs_from_batch(batch, count)
    images = pipeline.to_float(count, conditions=conditions, generator=torch.Generator().manual_seed(seed))
    return make_grid_image(images, pipeline.grid_captions(conditions), ncol=min(8, count))


class DiffusionStep:
    """The weighted denoising loss on scaled posterior samples, with condition dropout for guidance."""

    def __init__(self, pipeline: LatentDiffusionPipeline, model_fn: Callable[..., Tensor], p_uncond: float,
                 seed: int) -> None:
        self.pipeline, self.model_fn, self.p_uncond, self.seed = pipeline, model_fn, p_uncond, seed

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.pipeline.denoiser.parameters())}

    def _loss(self, batch: Batch, noise: StepNoise, drop_conditions: bool) -> Tensor:
        pipeline = self.pipeline
        shape = pipeline.first_stage.latent_shape(pipeline.config.data.resolution)
        posterior_noise = noise.randn(*shape)
        if MEAN_KEY in batch:  # a cached posterior (`training.diffusion.cache_latents`)
            x0 = cached_posterior(batch).sample(noise=posterior_noise) * pipeline.scale_factor
        else:
            x0 = encode_latents(pipeline.first_stage, batch["image"], pipeline.scale_factor, posterior_noise)
        cond = pipeline.condition(pipeline.conditioner.inputs_from_batch(batch))
        dropped = noise.rand() < self.p_uncond
        if drop_conditions and cond is not None:
            cond = pipeline.conditioner.drop_where(cond, dropped)
        t = noise.randint(pipeline.diffusion.num_timesteps)
        return pipeline.diffusion.training_loss(self.model_fn, x0, t, noise.randn(*shape), {"cond": cond}).mean()

    def losses(self, batch: Batch, step: int, noise: StepNoise) -> StepLosses:
        return StepLosses({"model": self._loss(batch, noise, drop_conditions=True)})

    def val_loss(self, batch: Batch, noise: StepNoise) -> Tensor:
        return self._loss(batch, noise, drop_conditions=False)

    def preview(self, batch: Batch) -> Image.Image:
        return sample_grid(self.pipeline, batch, PREVIEW_IMAGES, self.seed)


def train_diffusion(cfg: ExperimentConfig, workdir: Path, tracker: Tracker = NullTracker(),
                    first_stage_ckpt: Path | None = None, resume: bool = False,
                    on_eval: OnEval | None = None,
                    intermediate: Callable[[LatentDiffusionPipeline], dict[str, float]] | None = None) -> Path:
    """Train the diffusion stage of `cfg` (the first stage first, unless one is given or already trained).

    Writes `diffusion.pt`, `config.yaml`, `samples.png` (EMA weights) and `checkpoints.txt` (both stages'
    references, `ldm.artifacts.CheckpointRecord`) to the run folder and logs the last three, and the
    checkpoint per `tracking.log_checkpoints`; returns the checkpoint. With `intermediate` and
    `evaluation.fid_every`, `intermediate(pipeline)` is measured on the EMA weights every `fid_every` steps.
    """
    ranks = current_ranks()
    check_layouts(cfg.training, ranks)
    tracker = main_rank_tracker(tracker, ranks)
    if first_stage_ckpt is None:
        first_stage_ckpt = train_autoencoder(cfg, workdir, tracker)
    first_stage, scale_factor, first_cfg = load_first_stage(first_stage_ckpt)
    _check_first_stage_fits(cfg, first_cfg, first_stage_ckpt)
    device = resolve_device(cfg.training.device)
    torch.manual_seed(cfg.training.seed)
    train, val = build_dataset(cfg.data, "train", workdir), build_dataset(cfg.data, "val", workdir)
    info = DatasetInfo(num_classes=train.num_classes, captions=train.captions,
                       latent_shape=first_stage.latent_shape(cfg.data.resolution))
    summary = DatasetSummary.of(train)
    denoiser = prepare_module(build_denoiser(cfg, info), device)
    extras = {"scale_factor": scale_factor, "first_stage": first_stage.state_dict(),
              "first_stage_checkpoint": str(first_stage_ckpt), "dataset": summary.to_dict(),
              **denoiser.conditioner.saved_state()}
    pipeline = LatentDiffusionPipeline(first_stage=first_stage.to(device), denoiser=denoiser,
                                       diffusion=GaussianDiffusion.from_config(cfg.diffusion),
                                       scale_factor=scale_factor, config=cfg, dataset=summary, device=device)
    step = DiffusionStep(pipeline, maybe_compile(denoiser, device, cfg.training.compile), cfg.diffusion.p_uncond,
                         cfg.training.seed)

    folder = run_dir(cfg, workdir)
    if ranks.is_main:
        cfg.save(folder / "config.yaml")
    settings = cfg.training.diffusion
    train_data = (cached_latents(pipeline.first_stage, train, cfg.data, workdir, device,
                                 settings.micro_batch_size or settings.batch_size)
                  if settings.cache_latents else train)
    stage = Stage(name="diffusion", settings=settings, metric_prefix="diffusion",
                  val_metric="val_loss", model=denoiser, step=step, train_data=train_data, val_data=val,
                  checkpoint=folder / CHECKPOINT_NAME, extras=extras, preview_key="diffusion_samples")
    every = cfg.evaluation.fid_every
    periodic = (PeriodicEval(every, lambda _step: intermediate(pipeline))
                if intermediate is not None and every is not None else None)
    trained = train_stage(stage, cfg, device, tracker, resume=resume, on_eval=on_eval, periodic=periodic)
    if ranks.is_main:
        _finish(cfg, folder, pipeline, trained, val, first_stage_ckpt, stage.checkpoint, tracker)
    ranks.barrier()  # the run folder is complete on every rank's return
    return stage.checkpoint


def _finish(cfg: ExperimentConfig, folder: Path, pipeline: LatentDiffusionPipeline, trained: TrainedStage,
            val: ImageDataset, first_stage_ckpt: Path, checkpoint: Path, tracker: Tracker) -> None:
    """Rank 0's last writes: the sample grid on the EMA weights, the checkpoint record, throughput, uploads."""
    denoiser = pipeline.denoiser
    if trained.ema is not None:
        trained.ema.copy_to(denoiser)
    denoiser.eval()
    val_batch = next(iter(DataLoader(val, batch_size=SAMPLE_GRID_IMAGES)))
    save_image_atomic(sample_grid(pipeline, val_batch, SAMPLE_GRID_IMAGES, cfg.training.seed), folder / "samples.png")
    record = CheckpointRecord(first_stage=upload_of(first_stage_ckpt, tracker) or str(first_stage_ckpt),
                              diffusion=log_checkpoint(tracker, checkpoint, cfg.tracking.log_checkpoints))
    atomic_write_text(folder / RECORD_NAME, record.to_text())
    tracker.log_metrics({"train_images_per_s": trained.images_per_s, "train_hours": trained.train_seconds / 3600},
                        step=cfg.training.diffusion.steps)
    for artifact in ("config.yaml", "samples.png", RECORD_NAME):
        tracker.log_artifact(folder / artifact)


def _check_first_stage_fits(cfg: ExperimentConfig, first_cfg: ExperimentConfig, path: Path) -> None:
    """A given first stage must be the one the config describes (same autoencoder, image size and channels)."""
    ours, theirs = _first_stage_fields(cfg), _first_stage_fields(first_cfg)
    differing = [f"{key}={theirs[key]!r} (config: {value!r})" for key, value in ours.items() if theirs[key] != value]
    if differing:
        raise UserError(f"first-stage checkpoint '{path}' does not fit this config: it has {'; '.join(differing)}")


def _first_stage_fields(cfg: ExperimentConfig) -> dict[str, Any]:
    return flatten({"autoencoder": cfg.autoencoder.model_dump(mode="json"),
                    "data": {"resolution": cfg.data.resolution, "channels": cfg.data.channels}})
