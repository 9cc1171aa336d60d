"""Sample quality: generated images against a fixed, seeded reference set, every number computed by torch-fidelity.

Conventions (stated in every result's `meta`): the reference set is the first N images of the reference split
in an order seeded by `evaluation.seed`, N = number of generated images (more than the split holds is an error);
`kid_subset_size` is clamped to min(requested, N, N_ref); reference features are cached under a name that
fixes dataset, split, resolution, channels, count, seed and extractor weights; generated images never are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch_fidelity
from torch.utils.data import Dataset

from evaluation.extractors import FidelityExtractor, UInt8Images, check_uint8_rgb
from evaluation.extractors.domain import DomainFeatureExtractor, resolve_domain
from evaluation.extractors.inception import resolve_inception
from evaluation.report_card import META_KEY, MetricsReport
from ldm.config import DataConfig, EvaluationConfig, ExtractorName, Split
from ldm.data.base import ImageDataset
from ldm.data.registry import build_dataset
from ldm.errors import UserError
from ldm.paths import cache_dir

FidelityMetric = Literal["fid", "kid", "prc", "isc"]
GENERATION_METRICS: frozenset[FidelityMetric] = frozenset({"fid", "kid", "prc", "isc"})
PRC_NEIGHBORHOOD = 3
ISC_SPLITS = 10
# Every IS split needs an image, and precision/recall each point's PRC_NEIGHBORHOOD-th neighbour besides itself.
MIN_SAMPLES = max(ISC_SPLITS, PRC_NEIGHBORHOOD + 1)

# torch-fidelity result key -> catalog name pattern (f_score is not logged).
CATALOG_NAMES: dict[str, str] = {
    torch_fidelity.KEY_METRIC_FID: "fid_{}",
    torch_fidelity.KEY_METRIC_KID_MEAN: "kid_{}",
    torch_fidelity.KEY_METRIC_KID_STD: "kid_{}_std",
    torch_fidelity.KEY_METRIC_PRECISION: "precision_{}",
    torch_fidelity.KEY_METRIC_RECALL: "recall_{}",
    torch_fidelity.KEY_METRIC_ISC_MEAN: "is_{}",
    torch_fidelity.KEY_METRIC_ISC_STD: "is_{}_std",
}


def resolve_extractor(name: ExtractorName, data: DataConfig, workdir: Path,
                      inception_weights: Path | None = None) -> FidelityExtractor:
    """The one place an extractor name becomes weights (the domain classifier is trained here on first use)."""
    match name:
        case "inception":
            return resolve_inception(inception_weights)
        case "domain":
            return resolve_domain(data, workdir)
        case _:
            raise UserError(f"unknown extractor '{name}'; allowed: inception, domain")


class _SplitAsUInt8(Dataset):
    """Chosen items of an ImageDataset as the uint8 3xHxW tensors torch-fidelity reads."""

    def __init__(self, dataset: ImageDataset, indices: torch.Tensor) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset.uint8_image(int(self.indices[index])).expand(3, -1, -1)


@dataclass(frozen=True)
class ReferenceSet:
    """The first `len(indices)` images of a split in a seeded order, and the stem of their feature cache names."""

    dataset: ImageDataset
    indices: torch.Tensor
    cache_stem: str

    def __len__(self) -> int:
        return len(self.indices)

    def uint8_images(self) -> Dataset:
        return _SplitAsUInt8(self.dataset, self.indices)

    def float_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The same images as float (B, C, H, W) in [-1, 1], for models that take data-space input."""
        for chunk in self.indices.split(batch_size):
            yield torch.stack([self.dataset[int(i)]["image"] for i in chunk])

    def cache_name(self, extractor: FidelityExtractor) -> str:
        return f"{self.cache_stem}-{extractor.name}-{extractor.cache_tag}"


def reference_set(data: DataConfig, split: Split, size: int, seed: int, workdir: Path,
                  size_field: str = "evaluation.num_samples") -> ReferenceSet:
    """The first `size` images of `split`, in an order seeded by `seed`.

    A `size` beyond the split is a UserError naming `size_field`, the setting that asked for it: build the set
    before generating, so that the error comes before the expensive work.
    """
    dataset = build_dataset(data, split, workdir)
    if size > len(dataset):
        raise UserError(f"{size_field}={size} exceeds the {len(dataset)} images of reference split '{split}'; "
                        f"allowed: <= {len(dataset)}, or another evaluation.reference_split")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    indices = order[:size]
    digest = hashlib.sha256(json.dumps(data.identity(), sort_keys=True).encode()).hexdigest()[:8]
    stem = f"ref-{data.name}-{split}-{data.resolution}px-{data.channels}ch-n{len(indices)}-seed{seed}-{digest}"
    return ReferenceSet(dataset, indices, stem)


def fidelity_metrics(generated: Dataset, reference: ReferenceSet, extractor: FidelityExtractor, *,
                     metrics: Collection[FidelityMetric], kid_subset_size: int, seed: int, batch_size: int,
                     workdir: Path) -> dict[str, float | None]:
    """One torch-fidelity call, results under catalog names; IS is None when the extractor has no logits."""
    isc = "isc" in metrics and extractor.isc_unavailable is None
    raw = torch_fidelity.calculate_metrics(
        input1=generated, input1_cache_name=None,
        input2=reference.uint8_images(), input2_cache_name=reference.cache_name(extractor),
        cache=True, cache_root=str(cache_dir(workdir) / "fidelity"),
        cuda=torch.cuda.is_available(), batch_size=batch_size,
        fid="fid" in metrics, kid="kid" in metrics, prc="prc" in metrics, isc=isc,
        kid_subset_size=kid_subset_size, prc_neighborhood=PRC_NEIGHBORHOOD, isc_splits=ISC_SPLITS, rng_seed=seed,
        # save_cpu_ram: no DataLoader worker processes (a tensor dataset gains nothing from them).
        save_cpu_ram=True, verbose=False,
        **extractor.fidelity_kwargs(),
    )
    out: dict[str, float | None] = {
        CATALOG_NAMES[key].format(extractor.name): float(value) for key, value in raw.items() if key in CATALOG_NAMES
    }
    if "isc" in metrics and not isc:
        out[f"is_{extractor.name}"] = out[f"is_{extractor.name}_std"] = None
    return out


def as_uint8_dataset(generated: torch.Tensor | Dataset) -> Dataset:
    """Accept a uint8 (N, 3, H, W) tensor or a Dataset of uint8 3xHxW tensors; check the latter's first item."""
    if isinstance(generated, torch.Tensor):
        return UInt8Images(generated)
    if len(generated) == 0:
        raise UserError("no generated images to evaluate")
    check_uint8_rgb(generated[0][None])
    return generated


def compute_generation_metrics(generated: torch.Tensor | Dataset, data: DataConfig, evaluation: EvaluationConfig,
                               workdir: Path, reference: ReferenceSet | None = None) -> MetricsReport:
    """FID/KID/precision/recall/IS of `generated` against the reference split, for each of `evaluation.extractors`.

    `reference` is `reference_set` of as many images as are generated; it is built here when not given.
    """
    images = as_uint8_dataset(generated)
    if len(images) < MIN_SAMPLES:
        raise UserError(f"{len(images)} generated images are too few; allowed: at least {MIN_SAMPLES} "
                        f"(IS uses {ISC_SPLITS} splits, precision/recall {PRC_NEIGHBORHOOD} nearest neighbours)")
    if reference is None:
        reference = reference_set(data, evaluation.reference_split, len(images), evaluation.seed, workdir)
    notes: list[str] = []
    kid_subset_size = min(evaluation.kid_subset_size, len(images), len(reference))
    if kid_subset_size < evaluation.kid_subset_size:
        notes.append(f"kid_subset_size={evaluation.kid_subset_size} clamped to {kid_subset_size} "
                     f"= min(requested, {len(images)} generated, {len(reference)} reference)")
    report: MetricsReport = {}
    weights: dict[str, str] = {}
    for name in evaluation.extractors:
        extractor = resolve_extractor(name, data, workdir, evaluation.inception_weights)
        report.update(fidelity_metrics(images, reference, extractor, metrics=GENERATION_METRICS,
                                       kid_subset_size=kid_subset_size, seed=evaluation.seed,
                                       batch_size=evaluation.batch_size, workdir=workdir))
        weights[name] = extractor.weights
        if extractor.isc_unavailable is not None:
            notes.append(f"is_{name} unavailable: {extractor.isc_unavailable}")
    report[META_KEY] = {
        "num_samples": len(images), "num_reference": len(reference),
        "reference": f"{data.name}/{evaluation.reference_split}", "seed": evaluation.seed,
        "kid_subset_size": kid_subset_size, "extractor_weights": weights, "notes": notes,
    }
    return report


def conditioning_accuracy(images: torch.Tensor, requested_labels: torch.Tensor,
                          classifier: DomainFeatureExtractor) -> float:
    """Percent of uint8 images the domain classifier assigns the label they were generated for."""
    if len(images) != len(requested_labels) or len(images) == 0:
        raise UserError(f"{len(images)} images for {len(requested_labels)} requested labels; "
                        f"allowed: the same non-zero number")
    predicted = classifier.classify(images)
    return 100.0 * (predicted == requested_labels.cpu()).float().mean().item()
