"""The whole evaluation of one trained model: samples, then generation, conditioning, reconstruction and cost metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from evaluation.cost import PeakMemory, forward_gflops, parameters_m
from evaluation.extractors import FidelityExtractor, UInt8Images, to_uint8_rgb
from evaluation.extractors.domain import load_domain_extractor
from evaluation.generation import (ReferenceSet, compute_generation_metrics, conditioning_accuracy,
                                   fidelity_metrics, reference_set, resolve_extractor)
from evaluation.reconstruction import compute_reconstruction_metrics
from evaluation.report_card import META_KEY, MetricsReport, metric_values, write_metrics_json
from ldm.config import EvaluationConfig, ExperimentConfig, Override, SamplingConfig, build_config
from ldm.data.registry import build_dataset
from ldm.diffusion.conditioning import ConditionInputs, EvaluationConditions
from ldm.tracking import NullTracker, Tag, Tracker
from ldm.training.device import resolve_device
from ldm.training.pipeline import LatentDiffusionPipeline


def draw_conditions(pipeline: LatentDiffusionPipeline, evaluation: EvaluationConfig,
                    workdir: Path) -> EvaluationConditions:
    """The model's conditioner draws `evaluation.num_samples` conditions like the data, seeded by `evaluation.seed`."""
    data = pipeline.config.data
    return pipeline.conditioner.evaluation_conditions(
        evaluation.num_samples, lambda split: build_dataset(data, split, workdir), evaluation.reference_split,
        torch.Generator().manual_seed(evaluation.seed))


def generate_timed(pipeline: LatentDiffusionPipeline, conditions: ConditionInputs, n: int, sampling: SamplingConfig,
                   seed: int, batch_size: int) -> tuple[torch.Tensor, float]:
    """uint8 RGB samples (decoding included) and the images per second it took."""
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images = pipeline.generate(n, conditions=conditions, sampling=sampling, generator=generator,
                               batch_size=batch_size)
    return to_uint8_rgb(images), n / (time.perf_counter() - start)


def _sample_metrics(pipeline: LatentDiffusionPipeline, conditions: EvaluationConditions, reference: ReferenceSet,
                    sampling: SamplingConfig, evaluation: EvaluationConfig, workdir: Path) -> MetricsReport:
    images, images_per_s = generate_timed(pipeline, conditions.inputs, evaluation.num_samples, sampling,
                                          evaluation.seed, evaluation.batch_size)
    report = compute_generation_metrics(images, pipeline.config.data, evaluation, workdir, reference)
    report["sample_images_per_s"] = images_per_s
    if conditions.target_labels is not None:
        classifier = load_domain_extractor(pipeline.config.data, workdir)
        report["cond_accuracy"] = conditioning_accuracy(images, conditions.target_labels, classifier)
    return report


IntermediateFid = Callable[[LatentDiffusionPipeline], dict[str, float]]


def intermediate_fid(cfg: ExperimentConfig, workdir: Path) -> IntermediateFid | None:
    """FID per extractor on `evaluation.fid_every_samples` samples: the FID-against-step curve and its pruner.

    None when `evaluation.fid_every` is unset. The reference set is built here, before training, so that more
    samples than the reference split holds fail at once; conditions and extractors are built at the first call
    (they need the model) and reused at every later step.
    """
    evaluation = cfg.evaluation.model_copy(update={"num_samples": cfg.evaluation.fid_every_samples})
    if evaluation.fid_every is None:
        return None
    reference = reference_set(cfg.data, evaluation.reference_split, evaluation.num_samples, evaluation.seed, workdir,
                              size_field="evaluation.fid_every_samples")
    fixed: list[tuple[ConditionInputs, list[FidelityExtractor]]] = []

    def measure(pipeline: LatentDiffusionPipeline) -> dict[str, float]:
        if not fixed:
            fixed.append((draw_conditions(pipeline, evaluation, workdir).inputs,
                          [resolve_extractor(name, cfg.data, workdir, evaluation.inception_weights)
                           for name in evaluation.extractors]))
        conditions, extractors = fixed[0]
        images, _ = generate_timed(pipeline, conditions, evaluation.num_samples, pipeline.config.diffusion.sampling,
                                   evaluation.seed, evaluation.batch_size)
        measured: dict[str, float] = {}
        for extractor in extractors:
            measured.update(fidelity_metrics(UInt8Images(images), reference, extractor, metrics={"fid"},
                                             kid_subset_size=len(images), seed=evaluation.seed,
                                             batch_size=evaluation.batch_size, workdir=workdir))
        return measured

    return measure


def cost_metrics(pipeline: LatentDiffusionPipeline) -> dict[str, float]:
    """Parameters of each part and UNet GFLOPs for one image (batch 1) at one timestep."""
    cfg = pipeline.config
    denoiser = pipeline.denoiser
    shape = pipeline.first_stage.latent_shape(cfg.data.resolution)
    x = torch.zeros(1, *shape, device=pipeline.device)
    t = torch.zeros(1, dtype=torch.long, device=pipeline.device)
    cond = denoiser.conditioner.null(1)
    return {
        "params_first_stage": parameters_m(pipeline.first_stage),
        "params_unet": parameters_m(denoiser.unet),
        "params_cond": parameters_m(denoiser.conditioner),
        "unet_gflops": forward_gflops(denoiser, x, t, cond),
    }


def evaluate_experiment(cfg: ExperimentConfig | None, checkpoint: Path, workdir: Path,
                        tracker: Tracker | None = None, *, overrides: Sequence[Override] = (),
                        out: Path | None = None) -> MetricsReport:
    """Every metric of a trained `diffusion.pt`: written to `metrics.json` beside it (or `out`) and to the tracker.

    `cfg` defaults to the checkpoint's own config, with `overrides` (e.g. `Override("evaluation.num_samples", 1000)`).
    """
    tracker = tracker or NullTracker()
    device = resolve_device(cfg.training.device if cfg else "auto")
    memory = PeakMemory(device)  # from here: the peak of this evaluation, the model included, not of training
    pipeline = LatentDiffusionPipeline.from_checkpoint(checkpoint, device=device)
    cfg = build_config((cfg or pipeline.config).model_dump(mode="json"), overrides)
    evaluation, sampling = cfg.evaluation, cfg.diffusion.sampling
    reference = reference_set(pipeline.config.data, evaluation.reference_split, evaluation.num_samples,
                              evaluation.seed, workdir)
    conditions = draw_conditions(pipeline, evaluation, workdir)

    report = _sample_metrics(pipeline, conditions, reference, sampling, evaluation, workdir)
    meta = report.pop(META_KEY)
    meta.update(sampler=sampling.sampler, steps=sampling.steps, eta=sampling.eta,
                guidance_scale=sampling.guidance_scale, checkpoint=str(checkpoint))
    for scale in evaluation.guidance_scales:
        variant = _sample_metrics(pipeline, conditions, reference,
                                  sampling.model_copy(update={"guidance_scale": scale}), evaluation, workdir)
        report.update({f"g{scale:g}/{k}": v for k, v in metric_values(variant).items()})
    for steps in evaluation.ddim_steps:
        variant = _sample_metrics(pipeline, conditions, reference,
                                  sampling.model_copy(update={"sampler": "ddim", "steps": steps}), evaluation, workdir)
        report.update({f"ddim{steps}/{k}": v for k, v in metric_values(variant).items()})
    reconstruction = compute_reconstruction_metrics(pipeline.first_stage, cfg.data, evaluation, workdir)
    report.update(metric_values(reconstruction))
    report.update(cost_metrics(pipeline))
    report["peak_memory_mb"] = memory.peak_mb()
    report[META_KEY] = meta

    path = out or Path(checkpoint).parent / "metrics.json"
    write_metrics_json(report, path)
    values = {k: v for k, v in metric_values(report).items() if v is not None}
    tracker.log_metrics(values, step=cfg.training.diffusion.steps)
    tracker.set_tags({Tag.NUM_SAMPLES: str(meta["num_samples"]),
                      Tag.EXTRACTOR_WEIGHTS: "; ".join(f"{k}: {v}" for k, v in meta["extractor_weights"].items())})
    tracker.log_artifact(path)
    return report
