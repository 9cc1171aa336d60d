"""The evaluation protocol of a run and its fingerprint: what must agree for two runs' metrics to be compared.

Two runs' FIDs are comparable when the same extractor (same weights) saw images resized the same way, the same
number of samples was drawn with the same seed (initial noises, labels or prompts), against the same reference
images, through the same sampler. Training fields, the model and its seed are not part of it: they are what
an ablation varies. The fingerprint is the first 12 hex digits of the sha256 of the protocol's canonical JSON;
runs log it as the tag `ldm.eval_protocol` and the protocol itself as the artifact `evaluation/protocol.json`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from evaluation.extractors import FidelityExtractor
from ldm.config import ExperimentConfig

PROTOCOL_ARTIFACT_DIR = "evaluation"
PROTOCOL_FILE = "protocol.json"


def evaluation_protocol(cfg: ExperimentConfig, extractors: Sequence[FidelityExtractor],
                        num_reference: int | None) -> dict[str, Any]:
    """Everything that fixes how `cfg`'s samples are drawn and scored; `num_reference`: the reference images used."""
    evaluation, data = cfg.evaluation, cfg.data
    return {
        "extractors": [{"name": e.name, "fidelity_name": e.fidelity_name, "weights": e.weights,
                        "weights_tag": e.cache_tag, "feature_dim": e.feature_dim, "resize": e.resize}
                       for e in extractors],
        "images": {"dataset": data.name, "resolution": data.resolution, "channels": data.channels},
        "num_samples": evaluation.num_samples,
        "reference": {"split": evaluation.reference_split, "count": num_reference,
                      "order_seed": evaluation.seed,
                      "stats_file": None if evaluation.reference_stats is None else str(evaluation.reference_stats)},
        # Sample i's initial noise and its label or prompt come from (evaluation.seed, batch), drawn as the
        # conditioning type draws them from the reference split.
        "conditions": {"conditioning": cfg.diffusion.conditioning, "seed": evaluation.seed,
                       "sobol_noise": evaluation.sobol_noise},
        "sampling": cfg.diffusion.sampling.model_dump(mode="json"),
        "metrics": {"kid_subset_size": evaluation.kid_subset_size,
                    "bootstrap_replicates": evaluation.bootstrap_replicates},
    }


def protocol_fingerprint(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]
