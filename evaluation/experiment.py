"""The whole evaluation of one trained model: samples, then generation, conditioning, reconstruction and cost metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from evaluation.cost import PeakMemory, forward_gflops, parameters_m
from evaluation.extractors.domain import load_domain_extractor
from evaluation.generation import BOOTSTRAP_KEY, ConditioningAccuracy, GenerationScorer, prepare_scorer
from evaluation.intervals import BOOTSTRAP_ARTIFACT_DIR, BOOTSTRAP_FILE
from evaluation.protocol import PROTOCOL_ARTIFACT_DIR, PROTOCOL_FILE, evaluation_protocol, protocol_fingerprint
from evaluation.reference import evaluation_reference
from evaluation.reconstruction import compute_reconstruction_metrics
from evaluation.report_card import META_KEY, MetricsReport, metric_values, write_metrics_json
from evaluation.samples_npz import samples_npz
from evaluation.sampling import Stopwatch, sample_batches
from ldm.config import EvaluationConfig, ExperimentConfig, Override, SamplingConfig, build_config
from ldm.data.registry import build_dataset
from ldm.diffusion.conditioning import EvaluationConditions
from ldm.distributed import current_ranks, init_distributed
from ldm.tracking import NullTracker, Tag, Tracker
from ldm.training.device import resolve_device
from ldm.training.loop import images_per_second
from ldm.training.pipeline import LatentDiffusionPipeline


def draw_conditions(pipeline: LatentDiffusionPipeline, evaluation: EvaluationConfig,
                    workdir: Path) -> EvaluationConditions:
    """The model's conditioner draws `evaluation.num_samples` conditions like the data, seeded by `evaluation.seed`."""
    data = pipeline.config.data
    return pipeline.conditioner.evaluation_conditions(
        evaluation.num_samples, lambda split: build_dataset(data, split, workdir), evaluation.reference_split,
        torch.Generator().manual_seed(evaluation.seed))


def sample_metrics(pipeline: LatentDiffusionPipeline, conditions: EvaluationConditions, scorer: GenerationScorer,
                   sampling: SamplingConfig, workdir: Path, npz: Path | None = None) -> MetricsReport:
    """Samples stream batch by batch into the scorer (and the conditioning accuracy, and `npz`), on every rank."""
    evaluation, ranks = scorer.evaluation, current_ranks()
    stream, stopwatch = scorer.stream(), Stopwatch()
    accuracy = (ConditioningAccuracy(load_domain_extractor(pipeline.config.data, workdir), conditions.target_labels)
                if conditions.target_labels is not None else None)
    with contextlib.ExitStack() as stack:
        writer = (stack.enter_context(samples_npz(npz, evaluation.num_samples, pipeline.config.data.resolution, ranks))
                  if npz is not None else None)
        for batch in sample_batches(pipeline, conditions.inputs, evaluation.num_samples, sampling, evaluation.seed,
                                    evaluation.batch_size, ranks, stopwatch, evaluation.sobol_noise):
            stream.add(batch)
            if accuracy is not None:
                accuracy.add(batch)
            if writer is not None:
                writer.add(batch)
    report = stream.report(ranks)
    report["sample_images_per_s"] = stopwatch.images_per_s(ranks)
    if accuracy is not None:
        report["cond_accuracy"] = accuracy.percent(ranks)
    if npz is not None:
        report[META_KEY]["samples_npz"] = str(npz)
    return report


IntermediateFid = Callable[[LatentDiffusionPipeline], dict[str, float]]


def intermediate_fid(cfg: ExperimentConfig, workdir: Path) -> IntermediateFid | None:
    """FID per extractor on `evaluation.fid_every_samples` samples: the FID-against-step curve and its pruner.

    None when `evaluation.fid_every` is unset. The reference set is built here, before training, so that more
    samples than the reference split holds fail at once; conditions and the scorer are built at the first call
    (they need the model and the extractors) and reused at every later step. Under torchrun every rank calls it.
    """
    evaluation = cfg.evaluation.model_copy(update={"num_samples": cfg.evaluation.fid_every_samples})
    if evaluation.fid_every is None:
        return None
    reference = (None if evaluation.reference_stats is not None else evaluation_reference(
        cfg.data, evaluation, workdir, evaluation.num_samples, size_field="evaluation.fid_every_samples"))
    fixed: list[tuple[EvaluationConditions, GenerationScorer]] = []

    def measure(pipeline: LatentDiffusionPipeline) -> dict[str, float]:
        if not fixed:
            fixed.append((draw_conditions(pipeline, evaluation, workdir),
                          prepare_scorer(cfg.data, evaluation, workdir, evaluation.num_samples, reference=reference,
                                         metrics={"fid"})))
        conditions, scorer = fixed[0]
        # The FID alone: no conditioning accuracy for the curve.
        report = sample_metrics(pipeline, EvaluationConditions(conditions.inputs), scorer,
                                pipeline.config.diffusion.sampling, workdir)
        return {name: value for name, value in metric_values(report).items() if name.startswith("fid_")}

    return measure


def cost_metrics(pipeline: LatentDiffusionPipeline) -> dict[str, float]:
    """Parameters of each part, UNet GFLOPs for one image (batch 1) at one timestep, and the checkpoint's training
    time and throughput (as the training stage logged them) when it records them."""
    cfg = pipeline.config
    denoiser = pipeline.denoiser
    shape = pipeline.first_stage.latent_shape(cfg.data.resolution)
    x = torch.zeros(1, *shape, device=pipeline.device)
    t = torch.zeros(1, dtype=torch.long, device=pipeline.device)
    cond = denoiser.conditioner.null(1)
    timing = pipeline.training_timing
    trained = ({"train_hours": timing["seconds"] / 3600,
                "train_images_per_s": images_per_second(timing)} if timing else {})
    return {
        **trained,
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
    Under torchrun every rank samples its share; rank 0 writes and logs.
    """
    tracker = tracker or NullTracker()
    ranks = init_distributed()  # joins the job when torchrun started this process
    device = resolve_device(cfg.training.device if cfg else "auto")  # each rank's own GPU
    memory = PeakMemory(device)  # from here: the peak of this evaluation, the model included, not of training
    pipeline = LatentDiffusionPipeline.from_checkpoint(checkpoint, device=device)
    cfg = build_config((cfg or pipeline.config).model_dump(mode="json"), overrides)
    evaluation, sampling = cfg.evaluation, cfg.diffusion.sampling
    scorer = prepare_scorer(pipeline.config.data, evaluation, workdir, evaluation.num_samples,
                            replicates=evaluation.bootstrap_replicates)
    conditions = draw_conditions(pipeline, evaluation, workdir)
    path = out or Path(checkpoint).parent / "metrics.json"

    def variant(prefix: str, sampling: SamplingConfig) -> MetricsReport:
        npz = path.with_name(f"samples{'-' + prefix if prefix else ''}.npz") if evaluation.samples_npz else None
        return sample_metrics(pipeline, conditions, scorer, sampling, workdir, npz)

    report = variant("", sampling)
    meta = report.pop(META_KEY)
    replicates: dict[str, list[float]] = meta.pop(BOOTSTRAP_KEY, {})
    protocol = evaluation_protocol(cfg, [s.extractor.spec for s in scorer.scored], meta["num_reference"])
    meta.update(sampler=sampling.sampler, steps=sampling.steps, eta=sampling.eta,
                guidance_scale=sampling.guidance_scale, checkpoint=str(checkpoint), ranks=ranks.world_size,
                eval_protocol=protocol_fingerprint(protocol))
    for scale in evaluation.guidance_scales:
        scaled = variant(f"g{scale:g}", sampling.model_copy(update={"guidance_scale": scale}))
        report.update({f"g{scale:g}/{k}": v for k, v in metric_values(scaled).items()})
        replicates.update({f"g{scale:g}/{k}": v for k, v in scaled[META_KEY].get(BOOTSTRAP_KEY, {}).items()})
    for steps in evaluation.ddim_steps:
        fewer = variant(f"ddim{steps}", sampling.model_copy(update={"sampler": "ddim", "steps": steps}))
        report.update({f"ddim{steps}/{k}": v for k, v in metric_values(fewer).items()})
        replicates.update({f"ddim{steps}/{k}": v for k, v in fewer[META_KEY].get(BOOTSTRAP_KEY, {}).items()})
    reconstruction = compute_reconstruction_metrics(pipeline.first_stage, cfg.data, evaluation, workdir)
    report.update(metric_values(reconstruction))
    report.update(cost_metrics(pipeline))
    report["peak_memory_mb"] = memory.peak_mb()
    report[META_KEY] = meta
    if not ranks.is_main:
        return report

    write_metrics_json(report, path)
    values = {k: v for k, v in metric_values(report).items() if v is not None}
    tracker.log_metrics(values, step=cfg.training.diffusion.steps)
    tracker.set_tags({Tag.NUM_SAMPLES: str(meta["num_samples"]),
                      Tag.EXTRACTOR_WEIGHTS: "; ".join(f"{k}: {v}" for k, v in meta["extractor_weights"].items()),
                      Tag.EVAL_PROTOCOL: meta["eval_protocol"]})
    tracker.log_artifact(path)
    protocol_path = path.with_name(PROTOCOL_FILE)
    write_metrics_json(protocol, protocol_path)
    tracker.log_artifact(protocol_path, PROTOCOL_ARTIFACT_DIR)
    if replicates:
        bootstrap = path.with_name(BOOTSTRAP_FILE)
        write_metrics_json(replicates, bootstrap)
        tracker.log_artifact(bootstrap, BOOTSTRAP_ARTIFACT_DIR)
    return report
