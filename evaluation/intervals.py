"""FD-infinity and the 95% bootstrap intervals of one extractor's generation metrics, with their replicates.

Names (all in the metric catalog): `fdinf_<e>` with `fdinf_<e>_lo`/`_hi` (a +- t * sd over resamples, `fd_infinity.py`),
and `<metric>_lo`/`_hi` for fid, kid, precision, recall and is (bias-corrected percentile intervals
over `evaluation.bootstrap_replicates` resamples of the generated samples, the reference fixed, `bootstrap.py`).
The replicates themselves go to the run artifact `evaluation/bootstrap.json` ({metric: [B floats]}), where
`reports/statistics.py` pairs them across arms.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from evaluation.bootstrap import (
    IscReplicate,
    KidReplicate,
    PrcReplicates,
    percentile_interval,
    resample_indices,
    seeded_rng,
)
from evaluation.fd_infinity import fd_infinity_interval, samples_needed, subset_sizes, trustworthy
from evaluation.features import ISC_SPLITS, FidelityMetric, LoadedExtractor, ReferenceFeatures, metric_kwargs
from evaluation.frechet import FrechetReference, FrechetRows

BOOTSTRAP_ARTIFACT_DIR = "evaluation"
BOOTSTRAP_FILE = "bootstrap.json"


@dataclass(frozen=True)
class Intervals:
    values: dict[str, float | None] = field(default_factory=dict)
    replicates: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def interval_scores(generated: dict[str, Tensor], reference: ReferenceFeatures, frechet: FrechetReference,
                    extractor: LoadedExtractor, points: dict[str, float | None], *,
                    metrics: Collection[FidelityMetric], kid_subset_size: int, seed: int, replicates: int
                    ) -> Intervals:
    """FD-infinity (with "fdinf" in `metrics`) and the intervals of the requested metrics (none with 0 replicates).

    `points`: the metrics themselves (`fidelity_scores`), the centres of the bias-corrected intervals.
    KID and precision/recall need reference features, IS the extractor's class logits: where they are missing,
    as in `fidelity_scores`, their intervals are too.
    """
    features, name = generated[extractor.layer], extractor.spec.name
    n = len(features)
    resamples = resample_indices(seed, n, replicates)
    out = Intervals()
    rows = FrechetRows(features, frechet) if {"fid", "fdinf"} & set(metrics) else None
    if rows is not None and "fdinf" in metrics:
        estimate = fd_infinity_interval(rows, seeded_rng("fd-infinity", seed, n).permutation(n), resamples)
        out.values.update({f"fdinf_{name}": estimate.value, f"fdinf_{name}_lo": estimate.lo,
                           f"fdinf_{name}_hi": estimate.hi})
        if replicates:
            out.replicates[f"fdinf_{name}"] = estimate.replicates.tolist()
        dim = features.shape[1]
        if not trustworthy(n, dim):
            out.notes.append(f"fdinf_{name} extrapolates from subsets of {subset_sizes(n)[0]} samples, too few for "
                             f"{dim} feature dimensions: it may over- or under-correct (trustworthy from "
                             f"{samples_needed(dim)} samples)")
    if not replicates:
        return out
    largest = max(n, len(reference.features) if reference.features is not None else 0)
    kwargs = metric_kwargs(kid_subset_size=kid_subset_size, seed=seed, largest_set=largest)
    replicate: dict[str, Callable[[np.ndarray], float]] = {}
    if rows is not None and "fid" in metrics:
        replicate[f"fid_{name}"] = rows.fid
    if reference.features is not None and "kid" in metrics:
        replicate[f"kid_{name}"] = KidReplicate(features, reference.features, kid_subset_size, seed)
    if reference.features is not None and "prc" in metrics:
        prc = PrcReplicates(features, reference.features, kwargs["prc_neighborhood"], kwargs["prc_batch_size"])
        replicate[f"precision_{name}"], replicate[f"recall_{name}"] = prc.precision, prc.recall
    if extractor.has_isc and "isc" in metrics:
        assert extractor.isc_layer is not None
        replicate[f"is_{name}"] = IscReplicate(generated[extractor.isc_layer], ISC_SPLITS, seed)
    for metric, of in replicate.items():
        values = np.array([of(resample) for resample in resamples])
        point = points[metric]
        assert point is not None  # a metric with replicates is one its inputs allow
        out.values[f"{metric}_lo"], out.values[f"{metric}_hi"] = percentile_interval(point, values)
        out.replicates[metric] = values.tolist()
    return out
