"""Features of uint8 images through a torch-fidelity extractor, batch by batch, and torch-fidelity's metrics on them.

`torch_fidelity.calculate_metrics` needs every image at once; here images pass through the extractor as they are
made and only their features stay (O(N x D)). The metrics are torch-fidelity's own feature-level functions, given
the arguments `calculate_metrics` gives them, on features extracted as it extracts them (uint8 (B, 3, H, W)
batches into the extractor, features to the CPU), so the numbers are the ones it gives on the same images.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_featuresdict_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from evaluation.extractors import FidelityExtractor, check_uint8_rgb
from ldm.distributed import Ranks

# "fdinf" is FD-infinity (`evaluation/intervals.py`): not torch-fidelity's, but computed from the FID features.
FidelityMetric = Literal["fid", "kid", "prc", "isc", "fdinf"]
PRC_NEIGHBORHOOD = 3
ISC_SPLITS = 10
# Precision/recall hold blocks of b x N distances (about 40 bytes each with the k-th value search); torch-fidelity's
# default b = 10,000 grows the peak with N (167 MB above the rest at N = 4096 even with b = 1000). b is sized so
# that a block stays near 2^20 distances (about 40 MB); the result does not depend on b.
PRC_BLOCK_DISTANCES = 2**20
PRC_MIN_BATCH = 64

# torch-fidelity result key -> catalog name pattern (f_score is not logged).
CATALOG_NAMES: dict[str, str] = {
    KEY_METRIC_FID: "fid_{}",
    KEY_METRIC_KID_MEAN: "kid_{}",
    KEY_METRIC_KID_STD: "kid_{}_std",
    KEY_METRIC_PRECISION: "precision_{}",
    KEY_METRIC_RECALL: "recall_{}",
    KEY_METRIC_ISC_MEAN: "is_{}",
    KEY_METRIC_ISC_STD: "is_{}_std",
}


def metric_kwargs(*, kid_subset_size: int, seed: int, largest_set: int) -> dict[str, Any]:
    """What the suite passes `calculate_metrics`, as its feature-level functions read it (the rest: its defaults)."""
    # save_cpu_ram: calculate_metrics was called with it (no DataLoader workers); it also picks the batched PRC.
    return {"kid_subset_size": kid_subset_size, "prc_neighborhood": PRC_NEIGHBORHOOD,
            "prc_batch_size": max(PRC_MIN_BATCH, PRC_BLOCK_DISTANCES // largest_set), "isc_splits": ISC_SPLITS,
            "rng_seed": seed, "save_cpu_ram": True, "verbose": False}


class LoadedExtractor:
    """A resolved extractor's torch-fidelity network, loaded once, and the feature layer each metric reads."""

    def __init__(self, spec: FidelityExtractor) -> None:
        self.spec = spec
        cls = FEATURE_EXTRACTORS_REGISTRY[spec.fidelity_name]
        self.has_isc = spec.isc_unavailable is None
        self.layer = cls.get_default_feature_layer_for_metric("fid")
        if {cls.get_default_feature_layer_for_metric(m) for m in ("kid", "prc")} != {self.layer}:
            raise RuntimeError(f"extractor '{spec.fidelity_name}' reads FID, KID and PRC from different layers")
        self.isc_layer = cls.get_default_feature_layer_for_metric("isc") if self.has_isc else None
        kwargs = spec.fidelity_kwargs()
        del kwargs["feature_extractor"]
        layers = sorted({self.layer} | ({self.isc_layer} if self.isc_layer else set()))
        self.net: FeatureExtractorBase = create_feature_extractor(
            spec.fidelity_name, layers, cuda=torch.cuda.is_available(), verbose=False, **kwargs)
        self.device = next(self.net.parameters(), torch.zeros(0)).device

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 (B, 3, H, W) -> {layer: (B, D) features on the CPU}."""
        check_uint8_rgb(images)
        features = self.net.convert_features_tuple_to_dict(self.net(images.to(self.device)))
        return {layer: value.cpu() for layer, value in features.items()}


class FeatureStream:
    """The features of one extractor over a stream of sample batches, each row kept with its global sample index."""

    def __init__(self, extractor: LoadedExtractor) -> None:
        self.extractor = extractor
        self._parts: dict[str, list[Tensor]] = {}
        self._indices: list[Tensor] = []

    def add(self, indices: Tensor, images: Tensor) -> None:
        if len(indices) == 0:
            return
        for layer, value in self.extractor(images).items():
            self._parts.setdefault(layer, []).append(value)
        self._indices.append(indices)

    def gathered(self, ranks: Ranks) -> dict[str, Tensor]:
        """Every rank's features in global sample order (the same on every rank); a collective under torchrun."""
        # Rank 0 holds batch 0, so it always knows the widths; a rank left without a batch learns them from it.
        widths: dict[str, int] = ranks.broadcast_object(
            {layer: parts[0].shape[1] for layer, parts in self._parts.items()})  # type: ignore[assignment]
        indices = ranks.all_gather_rows(torch.cat(self._indices) if self._indices else torch.zeros(0, dtype=torch.long))
        order = indices.argsort()
        return {layer: ranks.all_gather_rows(torch.cat(self._parts[layer]) if layer in self._parts
                                             else torch.zeros(0, width))[order]
                for layer, width in sorted(widths.items())}


@dataclass(frozen=True)
class ReferenceFeatures:
    """What generated features are compared with: FID statistics, and the features themselves when known."""

    mu: np.ndarray
    sigma: np.ndarray
    features: Tensor | None
    count: int | None
    """Images behind the statistics; None when a file brought only `mu` and `sigma` without saying."""

    @classmethod
    def of(cls, features: Tensor) -> ReferenceFeatures:
        """Statistics as torch-fidelity computes them (float32 mean, float64 covariance)."""
        stats = fid_features_to_statistics(features)
        return cls(stats["mu"], stats["sigma"], features, len(features))


def fid(generated: Tensor, reference: ReferenceFeatures) -> float:
    """torch-fidelity's FID; statistics of differing precision (a float64 file) are compared in float64."""
    ours = fid_features_to_statistics(generated)
    theirs = {"mu": reference.mu, "sigma": reference.sigma}
    if ours["mu"].dtype != theirs["mu"].dtype or ours["sigma"].dtype != theirs["sigma"].dtype:
        ours, theirs = ({key: value.astype(np.float64) for key, value in s.items()} for s in (ours, theirs))
    return fid_statistics_to_metric(ours, theirs, False)[KEY_METRIC_FID]


def fidelity_scores(generated: dict[str, Tensor], reference: ReferenceFeatures, extractor: LoadedExtractor, *,
                    metrics: Collection[FidelityMetric], kid_subset_size: int, seed: int) -> dict[str, float | None]:
    """The requested metrics under catalog names; None where the extractor (IS) or reference (KID, PRC) lacks them."""
    features = generated[extractor.layer]
    largest = max(len(features), len(reference.features) if reference.features is not None else 0)
    kwargs = metric_kwargs(kid_subset_size=kid_subset_size, seed=seed, largest_set=largest)
    raw: dict[str, float | None] = {}
    if "fid" in metrics:
        raw[KEY_METRIC_FID] = fid(features, reference)
    if "kid" in metrics:
        raw.update(kid_features_to_metric(features, reference.features, **kwargs) if reference.features is not None
                   else dict.fromkeys((KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD)))
    if "prc" in metrics:
        raw.update(prc_features_to_metric(features, reference.features, **kwargs) if reference.features is not None
                   else dict.fromkeys((KEY_METRIC_PRECISION, KEY_METRIC_RECALL)))
    if "isc" in metrics:
        raw.update(isc_featuresdict_to_metric(generated, extractor.isc_layer, **kwargs) if extractor.has_isc
                   else dict.fromkeys((KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD)))
    name = extractor.spec.name
    return {CATALOG_NAMES[key].format(name): None if value is None else float(value)
            for key, value in raw.items() if key in CATALOG_NAMES}
