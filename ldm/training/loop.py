"""The one training loop both stages share; what differs between them is a `TrainingStep` passed in.

Learning rate: linear warm-up from lr/warmup_steps at step 1 to lr at `warmup_steps`, then constant
(the LDM paper trains both stages at a constant rate; a constant tail also keeps a run's early
checkpoints independent of its total length).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ldm import progress
from ldm.artifacts import log_periodic_checkpoint
from ldm.config import ExperimentConfig, StageTrainingConfig
from ldm.data.base import loader_workers
from ldm.distributed import Ranks, current_ranks
from ldm.errors import DataError
from ldm.tracking import Tracker
from ldm.training import DivergedError
from ldm.training.checkpoint import capture_rng, read_checkpoint, restore_rng, save_checkpoint
from ldm.training.device import Batch, autocast, batch_to
from ldm.training.ema import EMA
from ldm.training.sharding import BatchLayout, ShardedBatches, StepNoise

OnEval = Callable[[str, float, int], None]


@dataclass(frozen=True)
class PeriodicEval:
    """Metrics measured every `every` steps on the EMA weights (e.g. intermediate FID), logged and sent to on_eval."""

    every: int
    measure: Callable[[int], dict[str, float]]


@dataclass(frozen=True)
class StepLosses:
    """The losses of one batch, one scalar per parameter group (the first is the reported loss)."""

    losses: dict[str, Tensor]
    stats: dict[str, float] = field(default_factory=dict)


class TrainingStep(Protocol):
    """The stage-specific part of training."""

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters per optimiser, e.g. {"model": ...} or {"model": ..., "discriminator": ...}."""
        ...

    def losses(self, batch: Batch, step: int, noise: StepNoise) -> StepLosses:
        """The losses of a micro-batch; every per-sample random number comes from `noise`."""
        ...

    def val_loss(self, batch: Batch, noise: StepNoise) -> Tensor: ...

    def preview(self, batch: Batch) -> Image.Image:
        """An image grid showing progress (reconstructions, samples)."""
        ...


StageName = Literal["autoencoder", "diffusion"]  # the stage's section of `training`


@dataclass(frozen=True)
class Stage:
    """Everything the loop needs to train one stage, its own settings and metric names included."""

    name: StageName
    settings: StageTrainingConfig  # `training.<name>`
    metric_prefix: str  # of its step metrics, e.g. `ae/loss`
    val_metric: str  # the logged name of its validation loss
    model: nn.Module  # what is checkpointed and averaged: every trainable module of the stage
    step: TrainingStep
    train_data: Dataset
    val_data: Dataset
    checkpoint: Path
    extras: dict[str, Any]  # stored in every checkpoint (dataset info, tokenizer, ...)
    preview_key: str  # image name of the periodic grids


@dataclass(frozen=True)
class TrainedStage:
    """What a finished stage hands back: its EMA (to swap in for use) and its throughput."""

    ema: EMA | None
    images_per_s: float  # over all steps of the run, resumed parts included
    train_seconds: float


def lr_at(step: int, settings: StageTrainingConfig) -> float:
    """Learning rate of 1-based `step`: linear warm-up, then constant."""
    if settings.warmup_steps == 0:
        return settings.lr
    return settings.lr * min(1.0, step / settings.warmup_steps)


class ResumableBatches(Sampler[list[int]]):
    """An endless stream of batches: epoch e is a permutation drawn from `seed + e`, incomplete tails dropped.

    The position after b batches is recomputable from b alone, so a resumed run sees the same data order.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_batch: int = 0) -> None:
        self.size, self.batch_size, self.seed, self.start_batch = size, batch_size, seed, start_batch
        self.batches_per_epoch = size // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        epoch, index = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            for i in range(index, self.batches_per_epoch):
                yield order[i * self.batch_size : (i + 1) * self.batch_size].tolist()
            epoch, index = epoch + 1, 0

    def state(self, batches_done: int) -> dict[str, int]:
        return {"size": self.size, "batch_size": self.batch_size, "seed": self.seed, "next_batch": batches_done}


STAGE_TITLES = {"autoencoder": "first stage", "diffusion": "diffusion"}


def _show(bar: progress.StageBar | None, step: int, metrics: dict[str, float] | None = None) -> None:
    """Advance to `step`; with metrics (a log step) show them too."""
    if bar is None:
        return
    if metrics:
        bar.report(step, "  ".join(f"{name.rsplit('/', 1)[-1]} {value:.4g}" for name, value in metrics.items()))
    else:
        bar.advance(step)


@contextlib.contextmanager
def _evaluation(model: nn.Module, device: torch.device, seed: int) -> Iterator[None]:
    """Eval mode, no grad, and a private seeded RNG: evaluations are comparable and leave training's RNG alone."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), autocast(device):
        torch.manual_seed(seed)
        model.eval()
        try:
            yield
        finally:
            model.train()


def train_stage(stage: Stage, cfg: ExperimentConfig, device: torch.device, tracker: Tracker,
                resume: bool = False, on_eval: OnEval | None = None,
                periodic: PeriodicEval | None = None) -> TrainedStage:
    """Train `stage.model` for the stage's steps, continuing from `stage.checkpoint` when resuming and it exists.

    Under torchrun every rank trains on its rows of each global batch (`ldm.training.sharding`) and the
    gradients are averaged over ranks; rank 0 alone validates, logs, draws previews and writes checkpoints.
    """
    settings, seed, prefix = stage.settings, cfg.training.seed, stage.metric_prefix
    ranks = current_ranks()
    layout = BatchLayout.of(settings, ranks, stage.name)
    if len(stage.train_data) < settings.batch_size:
        raise DataError(f"the train split has {len(stage.train_data)} images, fewer than "
                        f"training.{stage.name}.batch_size={settings.batch_size}; lower the batch size")
    groups = stage.step.parameter_groups()
    # fused: one kernel for the whole update, about 3x faster than the per-tensor loop on a CPU
    optimizers = {name: torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay,
                                          fused=True)
                  for name, params in groups.items()}
    ranks.broadcast_module_(stage.model)  # as DDP does: every rank starts from rank 0's weights
    ema = EMA(stage.model, settings.ema_decay) if settings.ema_decay is not None else None
    start, timing = 0, {"seconds": 0.0, "images": 0.0}
    torch.manual_seed(seed + ranks.rank)  # the per-rank stream (dropout); per-sample noise is the step's own
    if resume and stage.checkpoint.is_file():
        start, timing = _restore(stage, settings, optimizers, ema, ranks, seed)

    global_batches = ResumableBatches(len(stage.train_data), settings.batch_size, seed, start)
    # Private generators: a DataLoader otherwise draws its worker seed from the global stream the steps use,
    # which would shift a resumed run's random numbers. Workers return batches in the sampler's order, and the
    # endless sampler is iterated once, so workers (kept for the whole stage) change nothing a resume sees.
    workers = loader_workers(cfg.training.num_workers, stage.train_data)
    batches = iter(DataLoader(stage.train_data, batch_sampler=ShardedBatches(global_batches, layout),
                              num_workers=workers, generator=torch.Generator().manual_seed(seed + ranks.rank),
                              pin_memory=device.type == "cuda"))
    val_batches = _validation_batches(stage, settings, device) if ranks.is_main else []
    window = _Window()
    stage.model.train()
    with progress.stage(STAGE_TITLES.get(stage.name, stage.name), settings.steps, unit="img",
                        per_step=layout.global_size, start=start, shown=ranks.is_main) as bar:
        for step in range(start + 1, settings.steps + 1):
            tic = time.perf_counter()
            loss, stats = _optimise(stage.step, batches, layout, step, seed, settings, optimizers, groups, device)
            if ema is not None:
                ema.update(stage.model)
            elapsed = time.perf_counter() - tic
            window.add(loss, stats, elapsed, layout.global_size)
            timing["seconds"] += elapsed
            timing["images"] += layout.global_size

            last = step == settings.steps
            if step % settings.checkpoint_every == 0 or last:
                rng = ranks.all_gather_objects(capture_rng())
                if ranks.is_main:
                    save_checkpoint(stage.checkpoint, step=step, model=stage.model, optimizers=optimizers, ema=ema,
                                    data_order=global_batches.state(step), config=cfg, rng=rng,
                                    extras={**stage.extras, "timing": dict(timing)})
                # The finished checkpoint is the stage's to upload, once it is complete (scale factor and all).
                if not last:
                    log_periodic_checkpoint(tracker, stage.checkpoint, cfg.tracking.log_checkpoints)
            if step % settings.log_every == 0 or last:
                metrics = {f"{prefix}/{k}": v for k, v in window.means().items()}
                metrics[f"{prefix}/lr"] = lr_at(step, settings)
                if val_batches:
                    with _evaluation(stage.model, device, seed):
                        metrics[stage.val_metric] = _mean_val_loss(stage.step, val_batches, seed)
                tracker.log_metrics(metrics, step=step)
                _show(bar, step, metrics)
                if on_eval is not None:
                    _decided_on_main(ranks, lambda: stage.val_metric in metrics
                                     and on_eval("val_loss", metrics[stage.val_metric], step))
                window = _Window()
            else:
                _show(bar, step)
            if step % settings.image_every == 0 and val_batches:
                with _averaged(stage.model, ema), _evaluation(stage.model, device, seed):
                    tracker.log_image(stage.step.preview(val_batches[0]), key=stage.preview_key, step=step)
            if periodic is not None and step % periodic.every == 0:
                with _averaged(stage.model, ema), _evaluation(stage.model, device, seed):
                    measured = periodic.measure(step)  # on every rank: generation is sharded
                tracker.log_metrics(measured, step=step)
                if on_eval is not None:
                    _decided_on_main(ranks, lambda: [on_eval(name, value, step) for name, value in measured.items()])
    ranks.barrier()  # rank 0's last checkpoint is complete before any rank reads it
    return TrainedStage(ema=ema, images_per_s=images_per_second(timing), train_seconds=timing["seconds"])


def images_per_second(timing: dict[str, float]) -> float:
    """Throughput of a stage's `timing` (seconds and images over every step, resumed parts included)."""
    return timing["images"] / max(timing["seconds"], 1e-9)


def _decided_on_main(ranks: Ranks, decide: Callable[[], object]) -> None:
    """Run `decide` (a pruner's report) on rank 0; an exception it raises (the trial pruned) is raised on every
    rank, so that no rank waits for the others in a collective that will not come."""
    raised: BaseException | None = None
    if ranks.is_main:
        try:
            decide()
        except Exception as e:
            raised = e
    raised = ranks.broadcast_object(raised)  # type: ignore[assignment]
    if raised is not None:
        raise raised


def _validation_batches(stage: Stage, settings: StageTrainingConfig, device: torch.device) -> list[Batch]:
    loader = DataLoader(stage.val_data, batch_size=settings.batch_size, generator=torch.Generator())
    return [batch_to(b, device) for b in itertools.islice(loader, settings.val_batches)]


def _averaged(model: nn.Module, ema: EMA | None) -> contextlib.AbstractContextManager[Any]:
    return ema.swapped_in(model) if ema is not None else contextlib.nullcontext()


def _mean_val_loss(step_fn: TrainingStep, batches: list[Batch], seed: int) -> float:
    """Mean loss over the validation batches, each with the same per-sample noise at every evaluation."""
    return sum(float(step_fn.val_loss(batch, StepNoise.whole(len(batch["image"]), seed + i, batch["image"].device)))
               for i, batch in enumerate(batches)) / len(batches)


class _Window:
    """Running sums between two log steps."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.seconds, self.images = 0, 0.0, 0

    def add(self, loss: float, stats: dict[str, float], seconds: float, images: int) -> None:
        for k, v in {"loss": loss, **stats}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.seconds += seconds
        self.images += images

    def means(self) -> dict[str, float]:
        """Mean loss and stats over the window, and its throughput."""
        means = {k: v / self.steps for k, v in self.sums.items()}
        means["images_per_s"] = self.images / max(self.seconds, 1e-9)
        return means


def _optimise(step_fn: TrainingStep, batches: Iterator[Batch], layout: BatchLayout, step: int, seed: int,
              settings: StageTrainingConfig, optimizers: dict[str, torch.optim.Optimizer],
              groups: dict[str, list[nn.Parameter]], device: torch.device) -> tuple[float, dict[str, float]]:
    """One update of every parameter group from its own loss, its gradient summed over this rank's micro-batches
    and averaged over ranks; returns the first group's loss and the stats, both means over the global batch."""
    grads: dict[str, list[Tensor | None]] = {name: [None] * len(params) for name, params in groups.items()}
    values: dict[str, float] = {}
    for micro in range(layout.accumulation):
        batch = batch_to(next(batches), device)
        with autocast(device):
            out = step_fn.losses(batch, step, layout.noise(seed, step, micro, device))
        present = [name for name in groups if name in out.losses]
        for name in present:
            # Each group gets the gradient of its own loss only (a generator loss must not move the discriminator);
            # a group without a loss this step (a discriminator before it starts) is left as it is.
            new = torch.autograd.grad(out.losses[name], groups[name], retain_graph=name != present[-1],
                                      allow_unused=True)
            grads[name] = [_summed(old, g) for old, g in zip(grads[name], new, strict=True)]
        for key, value in ({name: out.losses[name].detach() for name in present} | out.stats).items():
            values[key] = values.get(key, 0.0) + float(value) / layout.accumulation
    means = _mean_over_ranks(values, layout.ranks)
    bad = next((means[name] for name in present if not math.isfinite(means[name])), None)
    if bad is not None:
        raise DivergedError(step, bad)
    for name, params in groups.items():
        for p, g in zip(params, _mean_gradients(grads[name], layout), strict=True):
            p.grad = g
        if settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        for group in optimizers[name].param_groups:
            group["lr"] = lr_at(step, settings)
    for opt in optimizers.values():
        opt.step()
    return means[present[0]], {key: means[key] for key in out.stats}


def _summed(total: Tensor | None, grad: Tensor | None) -> Tensor | None:
    """A gradient summed over passes; None (an unused parameter) adds nothing."""
    if total is None or grad is None:
        return grad if total is None else total
    return total + grad


def _mean_over_ranks(values: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """Per-rank means of equal-sized shares -> the global mean, the same on every rank."""
    names = sorted(values)
    reduced = ranks.all_reduce_mean_(torch.tensor([values[n] for n in names], dtype=torch.float64))
    return dict(zip(names, reduced.tolist(), strict=True))


def _mean_gradients(grads: list[Tensor | None], layout: BatchLayout) -> list[Tensor | None]:
    """Summed micro-batch gradients -> their mean over passes and ranks (one all-reduce of a flat copy)."""
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    flat = torch.cat([g.reshape(-1) for g in present]).div_(layout.accumulation)
    layout.ranks.all_reduce_mean_(flat)
    pieces = iter(flat.split([g.numel() for g in present]))
    return [None if g is None else next(pieces).view_as(g) for g in grads]


def _restore(stage: Stage, settings: StageTrainingConfig, optimizers: dict[str, torch.optim.Optimizer],
             ema: EMA | None, ranks: Ranks, seed: int) -> tuple[int, dict[str, float]]:
    """Load model, optimisers, EMA and this rank's RNG from the stage checkpoint; returns its step and timing."""
    ckpt = read_checkpoint(stage.checkpoint)
    order = ckpt["data_order"]
    if (order["size"], order["batch_size"]) != (len(stage.train_data), settings.batch_size):
        raise DataError(f"cannot resume from '{stage.checkpoint}': it was trained on {order['size']} images in "
                        f"batches of {order['batch_size']}, this run has {len(stage.train_data)} in batches of "
                        f"{settings.batch_size}")
    stage.model.load_state_dict(ckpt["model"])
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][name])
    if ema is not None and ckpt["ema"] is not None:
        ema.load_state_dict(ckpt["ema"])
    restore_rng(ckpt["rng"], ranks, seed + int(ckpt["step"]))
    return int(ckpt["step"]), dict(ckpt["extras"]["timing"])
