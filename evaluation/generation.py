"""Sample quality: generated images against a fixed, seeded reference set, every number computed by torch-fidelity.

Conventions (stated in every result's `meta`): the reference set is the first N_ref images of the reference split
in an order seeded by `evaluation.seed`, N_ref = `evaluation.num_reference`, else the number of generated images
(more than the split holds is an error), or the statistics file `evaluation.reference_stats`; `kid_subset_size`
is clamped to min(requested, N, N_ref). Reference features are cached once per protocol (`evaluation.reference`);
generated images never are. Samples stream through the extractors (`evaluation.features`), so memory holds
one batch of images and the features of all of them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch.utils.data import Dataset

from evaluation.extractors import check_uint8_rgb
from evaluation.extractors.domain import DomainFeatureExtractor
from evaluation.extractors.resolve import resolve_extractor
from evaluation.features import (
    ISC_SPLITS,
    PRC_NEIGHBORHOOD,
    FeatureStream,
    FidelityMetric,
    LoadedExtractor,
    ReferenceFeatures,
    fidelity_scores,
)
from evaluation.frechet import FrechetReference
from evaluation.intervals import interval_scores
from evaluation.reference import ReferenceSet, cached_reference_features, evaluation_reference, read_statistics
from evaluation.report_card import META_KEY, MetricsReport
from evaluation.sampling import SampleBatch
from ldm import progress
from ldm.config import DataConfig, EvaluationConfig
from ldm.distributed import Ranks
from ldm.errors import UserError

GENERATION_METRICS: frozenset[FidelityMetric] = frozenset({"fid", "kid", "prc", "isc", "fdinf"})
# Every IS split needs an image, and precision/recall each point's PRC_NEIGHBORHOOD-th neighbour besides itself.
MIN_SAMPLES = max(ISC_SPLITS, PRC_NEIGHBORHOOD + 1)
BOOTSTRAP_KEY = "bootstrap"  # meta entry holding the replicates, which evaluate_experiment writes apart
NO_FEATURES = ("kid_{0}, precision_{0} and recall_{0} unavailable: the reference statistics '{1}' hold no "
               "features (write them with `ldm eval ref --features`)")


def check_sample_count(count: int) -> None:
    if count < MIN_SAMPLES:
        raise UserError(f"{count} generated images are too few; allowed: at least {MIN_SAMPLES} "
                        f"(IS uses {ISC_SPLITS} splits, precision/recall {PRC_NEIGHBORHOOD} nearest neighbours)")


@dataclass(frozen=True)
class Scored:
    """One extractor, loaded, with the reference its samples are compared with."""

    extractor: LoadedExtractor
    reference: ReferenceFeatures

    @cached_property
    def frechet(self) -> FrechetReference:
        """The reference factored for FD-infinity and the FID bootstrap, once for every variant of an evaluation."""
        return FrechetReference.of(self.reference)


@dataclass(frozen=True)
class GenerationScorer:
    """What an evaluation fixes before its first sample: extractors and reference features (or statistics)."""

    scored: list[Scored]
    evaluation: EvaluationConfig
    reference_name: str
    metrics: frozenset[FidelityMetric] = GENERATION_METRICS
    notes: list[str] = field(default_factory=list)
    replicates: int = 0
    """Bootstrap resamples behind each metric's `_lo`/`_hi` (`evaluation/intervals.py`); 0: no intervals."""

    def stream(self) -> GenerationStream:
        return GenerationStream(self, [FeatureStream(s.extractor) for s in self.scored])


def prepare_scorer(data: DataConfig, evaluation: EvaluationConfig, workdir: Path, num_samples: int, *,
                   reference: ReferenceSet | None = None, metrics: Collection[FidelityMetric] = GENERATION_METRICS,
                   replicates: int = 0) -> GenerationScorer:
    """Extractors and references for `num_samples` generated images; every bad setting fails here, before sampling.

    `reference` (default: `evaluation.reference_stats`, else `evaluation_reference` of `num_samples` samples) is
    built here when not given. `replicates`: bootstrap resamples for the intervals (an experiment's evaluation
    passes `evaluation.bootstrap_replicates`; intermediate FIDs and rFID take none).
    """
    stats = evaluation.reference_stats if reference is None else None
    if reference is None and stats is None:
        reference = evaluation_reference(data, evaluation, workdir, num_samples)
    scored, notes = [], []
    for name in evaluation.extractors:
        spec = resolve_extractor(name, data, workdir, evaluation.inception_weights)
        # Read before the network loads, so that a bad file fails at once.
        features = read_statistics(stats, spec) if stats is not None else None
        if features is not None and features.features is None and {"kid", "prc"} & set(metrics):
            notes.append(NO_FEATURES.format(name, stats))
        extractor = LoadedExtractor(spec)
        if features is None:
            assert reference is not None
            features = cached_reference_features(reference, extractor, evaluation.batch_size, workdir)
        scored.append(Scored(extractor, features))
        if "isc" in metrics and spec.isc_unavailable is not None:
            notes.append(f"is_{name} unavailable: {spec.isc_unavailable}")
    name = f"{data.name}/{evaluation.reference_split}" if stats is None else str(stats)
    return GenerationScorer(scored, evaluation, name, frozenset(metrics), notes, replicates)


class GenerationStream:
    """Generated batches in, one MetricsReport out (a collective under torchrun: every rank calls `report`)."""

    def __init__(self, scorer: GenerationScorer, streams: list[FeatureStream]) -> None:
        self.scorer, self.streams = scorer, streams

    def add(self, batch: SampleBatch) -> None:
        for stream in self.streams:
            stream.add(batch.indices, batch.images)

    def report(self, ranks: Ranks) -> MetricsReport:
        scorer, evaluation = self.scorer, self.scorer.evaluation
        gathered = [stream.gathered(ranks) for stream in self.streams]
        count = len(next(iter(gathered[0].values())))
        check_sample_count(count)
        counts = [s.reference.count for s in scorer.scored if s.reference.count is not None]
        num_reference = counts[0] if counts else None
        notes = list(scorer.notes)
        kid_subset_size = min(evaluation.kid_subset_size, count, *counts)
        if kid_subset_size < evaluation.kid_subset_size:
            notes.append(f"kid_subset_size={evaluation.kid_subset_size} clamped to {kid_subset_size} "
                         f"= min(requested, {count} generated, {num_reference} reference)")
        report: MetricsReport = {}
        replicates: dict[str, list[float]] = {}
        # Metrics, then their intervals (bootstrap, FD-infinity), per extractor: the part of an evaluation after the
        # samples that can take minutes at large N.
        with progress.stage("evaluation: metrics and intervals", 2 * len(scorer.scored), unit="step",
                            shown=ranks.is_main) as bar:
            for features, scored in zip(gathered, scorer.scored, strict=True):
                points = fidelity_scores(features, scored.reference, scored.extractor, metrics=scorer.metrics,
                                         kid_subset_size=kid_subset_size, seed=evaluation.seed)
                report.update(points)
                if bar is not None:
                    bar.add()
                intervals = interval_scores(features, scored.reference, scored.frechet, scored.extractor, points,
                                            metrics=scorer.metrics, kid_subset_size=kid_subset_size,
                                            seed=evaluation.seed, replicates=scorer.replicates)
                report.update(intervals.values)
                replicates.update(intervals.replicates)
                notes.extend(intervals.notes)
                if bar is not None:
                    bar.add()
        report[META_KEY] = {
            "num_samples": count, "num_reference": num_reference, "reference": scorer.reference_name,
            "seed": evaluation.seed, "kid_subset_size": kid_subset_size,
            "extractor_weights": {s.extractor.spec.name: s.extractor.spec.weights for s in scorer.scored},
            "bootstrap_replicates": scorer.replicates, "notes": notes,
        }
        if replicates:
            report[META_KEY][BOOTSTRAP_KEY] = replicates
        return report


def uint8_batches(generated: torch.Tensor | Dataset, batch_size: int) -> Iterable[SampleBatch]:
    """A uint8 (N, 3, H, W) tensor or a Dataset of uint8 3xHxW tensors as sample batches (each batch checked)."""
    for start in range(0, len(generated), batch_size):
        stop = min(len(generated), start + batch_size)
        images = (generated[start:stop] if isinstance(generated, torch.Tensor)
                  else torch.stack([generated[i] for i in range(start, stop)]))
        check_uint8_rgb(images)
        yield SampleBatch(torch.arange(start, stop), images)


def score_images(generated: torch.Tensor | Dataset, scorer: GenerationScorer) -> MetricsReport:
    """The scorer's metrics of images already in memory, in one process."""
    stream = scorer.stream()
    for batch in uint8_batches(generated, scorer.evaluation.batch_size):
        stream.add(batch)
    return stream.report(Ranks())


def compute_generation_metrics(generated: torch.Tensor | Dataset, data: DataConfig, evaluation: EvaluationConfig,
                               workdir: Path, reference: ReferenceSet | None = None) -> MetricsReport:
    """FID/KID/precision/recall/IS of `generated` against the reference, for each of `evaluation.extractors`."""
    if len(generated) == 0:
        raise UserError("no generated images to evaluate")
    check_uint8_rgb(generated if isinstance(generated, torch.Tensor) else generated[0][None])
    check_sample_count(len(generated))
    return score_images(generated, prepare_scorer(data, evaluation, workdir, len(generated), reference=reference))


class ConditioningAccuracy:
    """Percent of samples the domain classifier assigns the label they were generated for, batch by batch."""

    def __init__(self, classifier: DomainFeatureExtractor, requested_labels: torch.Tensor) -> None:
        self.classifier, self.requested = classifier, requested_labels.cpu()
        self._indices: list[torch.Tensor] = []
        self._predicted: list[torch.Tensor] = []

    def add(self, batch: SampleBatch) -> None:
        if len(batch.indices):
            self._indices.append(batch.indices)
            self._predicted.append(self.classifier.classify(batch.images))

    def percent(self, ranks: Ranks) -> float:
        """A collective under torchrun: every rank calls it."""
        indices = ranks.all_gather_rows(torch.cat(self._indices) if self._indices else torch.zeros(0, dtype=torch.long))
        predicted = ranks.all_gather_rows(torch.cat(self._predicted) if self._predicted
                                          else torch.zeros(0, dtype=torch.long))
        return 100.0 * (predicted == self.requested[indices]).float().mean().item()


def conditioning_accuracy(images: torch.Tensor, requested_labels: torch.Tensor,
                          classifier: DomainFeatureExtractor) -> float:
    """Percent of uint8 images the domain classifier assigns the label they were generated for."""
    if len(images) != len(requested_labels) or len(images) == 0:
        raise UserError(f"{len(images)} images for {len(requested_labels)} requested labels; "
                        f"allowed: the same non-zero number")
    accuracy = ConditioningAccuracy(classifier, requested_labels)
    for start in range(0, len(images), 500):
        accuracy.add(SampleBatch(torch.arange(start, min(len(images), start + 500)), images[start:start + 500]))
    return accuracy.percent(Ranks())
