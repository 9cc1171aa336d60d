"""Every final metric the suite logs, with its direction, so sweeps and reports agree on names.

Tag names have their own catalog, `ldm.tracking.Tag` (`ldm/tracking/tags.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Direction = Literal["minimize", "maximize"]
# What a run must have for the metric to exist: conditions with target labels, or a VQ codebook.
Requirement = Literal["labels", "codebook"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    direction: Direction
    label: str
    unit: str = ""
    objective: bool = True
    """Whether a sweep may optimise it: not the spread of a number (`_std`) nor an interval's end (`_lo`/`_hi`)."""
    extractor: str | None = None
    """The feature extractor it is measured with; a run has it only with that extractor in evaluation.extractors."""
    sampled: bool = False
    """Measured on the generated samples, so each sampling variant (`g<scale>/`, `ddim<K>/`) has it too."""
    requires: Requirement | None = None
    """What else a run needs to have it (`sweeps.objective.unproduced` checks objectives against it)."""

    @property
    def arrow(self) -> str:
        return "↓" if self.direction == "minimize" else "↑"


def _interval(info: MetricInfo) -> list[MetricInfo]:
    """A metric and the ends of its 95% interval (`evaluation/intervals.py`), which share its direction."""
    return [info, *(replace(info, name=f"{info.name}_{end}", label=f"{info.label} 95% {end}", objective=False)
                    for end in ("lo", "hi"))]


def _generation(extractor: str) -> list[MetricInfo]:
    def sampled(name: str, direction: Direction, label: str, objective: bool = True) -> MetricInfo:
        return MetricInfo(f"{name}_{extractor}", direction, f"{label} ({extractor})", objective=objective,
                          extractor=extractor, sampled=True)

    return [
        *_interval(sampled("fid", "minimize", "FID")),
        # FID extrapolated to infinitely many samples (Chong & Forsyth 2020): comparable across sample counts.
        *_interval(sampled("fdinf", "minimize", "FD∞")),
        *_interval(sampled("kid", "minimize", "KID")),
        replace(sampled("kid", "minimize", "KID std", objective=False), name=f"kid_{extractor}_std"),
        *_interval(sampled("precision", "maximize", "Precision")),
        *_interval(sampled("recall", "maximize", "Recall")),
        *_interval(sampled("is", "maximize", "IS")),
        replace(sampled("is", "minimize", "IS std", objective=False), name=f"is_{extractor}_std"),
        MetricInfo(f"rfid_{extractor}", "minimize", f"rFID ({extractor})", extractor=extractor),
    ]


CATALOG: dict[str, MetricInfo] = {
    m.name: m
    for m in [
        *_generation("inception"),
        *_generation("domain"),
        MetricInfo("cond_accuracy", "maximize", "Cond. accuracy", "%", sampled=True, requires="labels"),
        MetricInfo("psnr", "maximize", "PSNR", "dB"),
        MetricInfo("ssim", "maximize", "SSIM"),
        MetricInfo("mse", "minimize", "MSE"),
        MetricInfo("bpp", "minimize", "Bits/pixel", "bit"),
        MetricInfo("latent_ratio", "minimize", "Latent size ratio"),
        MetricInfo("perplexity", "maximize", "Codebook perplexity", requires="codebook"),
        MetricInfo("codebook_usage", "maximize", "Codebook usage", "%", requires="codebook"),
        MetricInfo("params_first_stage", "minimize", "Params first stage", "M"),
        MetricInfo("params_unet", "minimize", "Params UNet", "M"),
        MetricInfo("params_cond", "minimize", "Params cond. encoder", "M"),
        MetricInfo("unet_gflops", "minimize", "UNet GFLOPs"),
        MetricInfo("sample_images_per_s", "maximize", "Sampling", "img/s", sampled=True),
        MetricInfo("train_images_per_s", "maximize", "Training", "img/s"),
        # Of the evaluation alone, model included: peak CUDA tensor memory, or on a Linux CPU the peak resident
        # set, both reset at its start (evaluation.cost.PeakMemory); absent on a CPU whose peak cannot reset.
        MetricInfo("peak_memory_mb", "minimize", "Peak memory", "MB"),
        MetricInfo("train_hours", "minimize", "Training time", "device-h"),
        MetricInfo("val_loss", "minimize", "Val. loss"),
    ]
}


def metric_info(name: str) -> MetricInfo:
    """Look up a metric; sweep variants `g<scale>/<metric>` and `ddim<K>/<metric>` share the base's info."""
    base = name.rsplit("/", 1)[-1]
    if base not in CATALOG:
        raise KeyError(name)
    return CATALOG[base]
