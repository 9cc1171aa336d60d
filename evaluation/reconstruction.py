"""First-stage quality: rFID (reconstructions vs originals through the same extractors) and rate-distortion.

The originals are the generation metrics' reference set of `evaluation.num_samples` images (same split and
seeded order), so their features come from the same cache; `num_reference` and `reference_stats` do not apply.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evaluation.extractors import to_uint8_rgb
from evaluation.generation import MIN_SAMPLES, prepare_scorer, score_images
from evaluation.reference import reference_set
from evaluation.report_card import META_KEY, MetricsReport
from ldm import progress
from ldm.config import DataConfig, EvaluationConfig
from ldm.errors import UserError
from ldm.first_stage import FirstStage, evaluate_rate_distortion, evaluating


def reconstruct(first_stage: FirstStage, batches: list[torch.Tensor]) -> torch.Tensor:
    """uint8 RGB reconstructions from the posterior mode, as `evaluate_rate_distortion` measures them."""
    outputs = []
    with evaluating(first_stage), progress.board().stage("evaluation: reconstructions", sum(map(len, batches)),
                                                         unit="img") as bar:
        for images in batches:
            x = first_stage.on_device(images)
            outputs.append(to_uint8_rgb(first_stage.decode(first_stage.encode(x).mode())))
            bar.add(len(images))
    return torch.cat(outputs)


def compute_reconstruction_metrics(first_stage: FirstStage, data: DataConfig, evaluation: EvaluationConfig,
                                   workdir: Path) -> MetricsReport:
    """rfid_<extractor> for each extractor, plus PSNR/SSIM/MSE/bpp/latent ratio (and codebook stats for VQ)."""
    reference = reference_set(data, evaluation.reference_split, evaluation.num_samples, evaluation.seed, workdir)
    if len(reference) < MIN_SAMPLES:
        raise UserError(f"{len(reference)} reference images are too few for rFID; allowed: evaluation.num_samples "
                        f">= {MIN_SAMPLES} from a split at least that large")
    batches = list(reference.float_batches(evaluation.batch_size))
    reconstructions = reconstruct(first_stage, batches)
    rate_distortion = evaluate_rate_distortion(first_stage, batches)
    report: MetricsReport = rate_distortion.as_metrics()
    scorer = prepare_scorer(data, evaluation, workdir, len(reference), reference=reference, metrics={"fid"})
    scored = score_images(reconstructions, scorer)
    meta = scored.pop(META_KEY)
    report.update({f"r{name}": value for name, value in scored.items()})
    report[META_KEY] = {
        "num_reference": len(reference), "reference": f"{data.name}/{evaluation.reference_split}",
        "seed": evaluation.seed, "extractor_weights": meta["extractor_weights"],
    }
    return report
