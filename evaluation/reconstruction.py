"""First-stage quality: rFID (reconstructions vs originals through the same extractors) and rate-distortion.

The originals are the generation metrics' reference set (same split, count and seeded order), so their
features come from the same cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evaluation.extractors import UInt8Images, to_uint8_rgb
from evaluation.generation import MIN_SAMPLES, fidelity_metrics, reference_set, resolve_extractor
from evaluation.report_card import META_KEY, MetricsReport
from ldm.config import DataConfig, EvaluationConfig
from ldm.errors import UserError
from ldm.first_stage import FirstStage, evaluate_rate_distortion, evaluating


def reconstruct(first_stage: FirstStage, batches: list[torch.Tensor]) -> torch.Tensor:
    """uint8 RGB reconstructions from the posterior mode, as `evaluate_rate_distortion` measures them."""
    outputs = []
    with evaluating(first_stage):
        for images in batches:
            x = first_stage.on_device(images)
            outputs.append(to_uint8_rgb(first_stage.decode(first_stage.encode(x).mode())))
    return torch.cat(outputs)


def compute_reconstruction_metrics(first_stage: FirstStage, data: DataConfig, evaluation: EvaluationConfig,
                                   workdir: Path) -> MetricsReport:
    """rfid_<extractor> for each extractor, plus PSNR/SSIM/MSE/bpp/latent ratio (and codebook stats for VQ)."""
    reference = reference_set(data, evaluation.reference_split, evaluation.num_samples, evaluation.seed, workdir)
    if len(reference) < MIN_SAMPLES:
        raise UserError(f"{len(reference)} reference images are too few for rFID; allowed: evaluation.num_samples "
                        f">= {MIN_SAMPLES} from a split at least that large")
    batches = list(reference.float_batches(evaluation.batch_size))
    reconstructions = UInt8Images(reconstruct(first_stage, batches))
    rate_distortion = evaluate_rate_distortion(first_stage, batches)
    report: MetricsReport = rate_distortion.as_metrics()
    weights: dict[str, str] = {}
    for name in evaluation.extractors:
        extractor = resolve_extractor(name, data, workdir, evaluation.inception_weights)
        fid = fidelity_metrics(reconstructions, reference, extractor, metrics={"fid"},
                               kid_subset_size=len(reference), seed=evaluation.seed,
                               batch_size=evaluation.batch_size, workdir=workdir)
        report[f"rfid_{name}"] = fid[f"fid_{name}"]
        weights[name] = extractor.weights
    report[META_KEY] = {
        "num_reference": len(reference), "reference": f"{data.name}/{evaluation.reference_split}",
        "seed": evaluation.seed, "extractor_weights": weights,
    }
    return report
