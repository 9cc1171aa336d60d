"""The trial function of a sweep: train (or reuse) the first stage, train the diffusion model, evaluate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from evaluation.metric_catalog import metric_info
from ldm.config import ExperimentConfig
from ldm.tracking import Tracker

# `report(metric, value, step)`: an intermediate result (val_loss, fid_<extractor>) for the pruner.
Reporter = Callable[[str, float, int], None]
# (config, workdir, tracker, report, resume): `resume` continues the diffusion stage from the checkpoint that
# the worker placed in the run folder (a retried trial's dead attempt left it).
VAL_LOSS = "val_loss"  # the diffusion stage's validation loss: an intermediate result, and the last one an objective
TrialFn = Callable[[ExperimentConfig, Path, Tracker, Reporter, bool], dict[str, float]]


def unproduced(metric: str, cfg: ExperimentConfig) -> str | None:
    """Why `run_trial(cfg)` returns no `metric` (a catalog name or a sampling variant of one); None if it does."""
    # Imported here: the conditioner registry loads torch (config validation pays for it already).
    from ldm.diffusion.conditioning import conditioner_class

    prefix, _, _ = metric.rpartition("/")
    info, evaluation = metric_info(metric), cfg.evaluation
    variants = {f"g{scale:g}" for scale in evaluation.guidance_scales} | {f"ddim{k}" for k in evaluation.ddim_steps}
    if prefix and not info.sampled:
        return f"only metrics of the samples have sampling variants, and '{info.name}' is not one"
    if prefix and prefix not in variants:
        return (f"no sampling variant '{prefix}': evaluation.guidance_scales={evaluation.guidance_scales} and "
                f"evaluation.ddim_steps={evaluation.ddim_steps} make {', '.join(sorted(variants)) or 'none'}")
    if info.extractor is not None and info.extractor not in evaluation.extractors:
        return f"extractor '{info.extractor}' is not in evaluation.extractors={evaluation.extractors}"
    if info.requires == "labels" and not conditioner_class(cfg.diffusion.conditioning).labels_scored:
        return f"diffusion.conditioning='{cfg.diffusion.conditioning}' gives no labels to score samples against"
    if info.requires == "codebook" and cfg.autoencoder.regularizer != "vq":
        return f"autoencoder.regularizer='{cfg.autoencoder.regularizer}' has no codebook"
    return None


def run_trial(cfg: ExperimentConfig, workdir: Path, tracker: Tracker, report: Reporter,
              resume: bool = False) -> dict[str, float]:
    """Every metric of one configuration; a first stage with the same `first_stage_hash()` is reused."""
    # Imported here so that the study machinery (status, validation, the CLI) loads without the model code.
    from evaluation.experiment import evaluate_experiment, intermediate_fid
    from ldm.training.autoencoder_stage import train_autoencoder
    from ldm.training.diffusion_stage import train_diffusion

    intermediate = intermediate_fid(cfg, workdir)  # first: it refuses more samples than the reference split holds
    first_stage = train_autoencoder(cfg, workdir, tracker)
    final: dict[str, float] = {}

    def on_eval(metric: str, value: float, step: int) -> None:
        if metric == VAL_LOSS:
            final[metric] = value  # the last one is the trained model's, as MLflow's `val_loss` shows it
        report(metric, value, step)

    diffusion = train_diffusion(cfg, workdir, tracker, first_stage, resume=resume, on_eval=on_eval,
                                intermediate=intermediate)
    return {**evaluate_experiment(cfg, diffusion, workdir, tracker), **final}
