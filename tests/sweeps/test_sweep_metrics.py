"""Every metric `sweep validate` accepts as an objective is one the trial returns: one real micro trial that
produces every family at once (class labels, a VQ codebook, a guidance and a DDIM variant) against the validator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evaluation.metric_catalog import CATALOG
from ldm.config import load_config, parse_overrides
from ldm.errors import UserError
from ldm.tracking import NullTracker
from sweeps.objective import run_trial
from sweeps.spec import PRUNE_METRICS, parse_spec

OVERRIDES = ["diffusion.conditioning=class", "autoencoder.regularizer=vq", "evaluation.guidance_scales=[2]",
             "evaluation.ddim_steps=[1]", "evaluation.bootstrap_replicates=10", "evaluation.fid_every=4",
             "evaluation.fid_every_samples=10"]
VARIANTS = ("", "g2/", "ddim1/", "g3/")


def accepted(metric: str, overrides: list[str] = OVERRIDES, prune_on: str | None = None) -> bool:
    pruning = {"pruner": "median", "prune_on": prune_on} if prune_on else {}
    try:
        parse_spec({"name": "m", "base": {"preset": "micro", "overrides": overrides}, "sampler": "grid",
                    "space": {"diffusion.prediction": {"type": "categorical", "choices": ["epsilon"]}},
                    "objectives": [{"metric": metric}], **pruning})
    except UserError:
        return False
    return True


@pytest.fixture(scope="module")
def trial_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    cfg = load_config(preset="micro", overrides=parse_overrides(OVERRIDES))
    reported: list[str] = []
    metrics = run_trial(cfg, tmp_path_factory.mktemp("trial"), NullTracker(), lambda m, v, s: reported.append(m))
    return {**metrics, **dict.fromkeys(reported, 0.0)}


def test_every_accepted_objective_is_a_finite_number_the_trial_returns(trial_metrics: dict[str, float]) -> None:
    names = [variant + name for variant in VARIANTS for name in CATALOG]
    accepted_names = [name for name in names if accepted(name)]
    missing = [name for name in accepted_names
               if name not in trial_metrics or not math.isfinite(trial_metrics[name])]
    assert missing == []
    # Not vacuous: each family is accepted, and what the trial cannot make is refused.
    assert {"fid_domain", "fdinf_domain", "g2/fid_domain", "ddim1/cond_accuracy", "perplexity", "rfid_domain",
            "train_hours", "peak_memory_mb", "val_loss"} <= set(accepted_names)
    refused = set(names) - set(accepted_names)
    assert {"fid_inception", "fid_domain_lo", "kid_domain_std", "g3/fid_domain", "g2/psnr"} <= refused


def test_what_the_base_config_cannot_measure_is_refused() -> None:
    plain = [o for o in OVERRIDES if not o.startswith(("diffusion.conditioning", "autoencoder.regularizer"))]
    assert not accepted("cond_accuracy", plain) and not accepted("perplexity", plain)
    assert accepted("fid_domain", plain)


def test_every_accepted_pruning_metric_is_reported_during_training(trial_metrics: dict[str, float]) -> None:
    for metric in PRUNE_METRICS:
        if accepted("fid_domain", prune_on=metric):
            assert metric in trial_metrics, metric
