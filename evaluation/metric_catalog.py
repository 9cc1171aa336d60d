"""Every final metric the suite logs, with its direction, so sweeps and reports agree on names.

Tag names have their own catalog, `ldm.tracking.Tag` (`ldm/tracking/tags.py`).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, replace
from typing import Any, Literal

Direction = Literal["minimize", "maximize"]
# What a run must have for the metric to exist: conditions with target labels, or a VQ codebook.
Requirement = Literal["labels", "codebook"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    direction: Direction
    label: str
    unit: str = ""
    _: KW_ONLY
    objective: bool = True
    """Whether a sweep may optimise it: not the spread of a number (`_std`) nor an interval's end (`_lo`/`_hi`)."""
    extractor: str | None = None
    """The feature extractor it is measured with; a run has it only with that extractor in evaluation.extractors
    (and its label names it in parentheses)."""
    sampled: bool = False
    """Measured on the generated samples, so each sampling variant (`g<scale>/`, `ddim<K>/`) has it too."""
    requires: Requirement | None = None
    """What else a run needs to have it (`sweeps.objective.unproduced` checks objectives against it)."""
    # How a table shows the value: `value * scale` with `decimals` digits (the header states a scale other than 1).
    decimals: int = 2
    scale: float = 1.0
    # False for costs (parameters, FLOPs, speed, time): a table never marks their best, which is no finding.
    result: bool = True
    # The identity first stage (f = 1) logs a value fixed by construction (PSNR's 100 dB cap, the raw 8 bits
    # per channel, rFID of the images themselves), not a measurement: tables withhold it.
    fixed_at_identity: bool = False

    @property
    def plain_label(self) -> str:
        """The label without its extractor (`FID`), for a table whose caption names its one extractor."""
        return self.label.removesuffix(f" ({self.extractor})") if self.extractor else self.label

    @property
    def arrow(self) -> str:
        return "↓" if self.direction == "minimize" else "↑"


# KID is logged raw (torch-fidelity). On Inception features it is about 1e-3 to 1e-1, and papers print it x10^3;
# the domain classifier's features are larger, so its KID is of order 1 and is shown as logged.
KID_SCALE = {"inception": 1e3, "domain": 1.0}


def _interval(info: MetricInfo) -> list[MetricInfo]:
    """A metric and the ends of its 95% interval (`evaluation/intervals.py`), which share its direction."""
    return [info, *(replace(info, name=f"{info.name}_{end}", label=f"{info.label} 95% {end}", objective=False)
                    for end in ("lo", "hi"))]


def _generation(extractor: str) -> list[MetricInfo]:
    def sampled(name: str, direction: Direction, label: str, **fields: Any) -> MetricInfo:
        """`name` with `{}` for the extractor; the label names it in parentheses."""
        return MetricInfo(name.format(extractor), direction, f"{label} ({extractor})", extractor=extractor,
                          sampled=True, **fields)

    kid_format = {"decimals": 2, "scale": KID_SCALE[extractor]}
    return [
        # One decimal, as most papers print FID: a mean ± interval cell stays narrow enough for a column.
        *_interval(sampled("fid_{}", "minimize", "FID", decimals=1)),
        # FID extrapolated to infinitely many samples (Chong & Forsyth 2020): comparable across sample counts.
        *_interval(sampled("fdinf_{}", "minimize", "FD∞", decimals=1)),
        *_interval(sampled("kid_{}", "minimize", "KID", **kid_format)),
        sampled("kid_{}_std", "minimize", "KID std", objective=False, **kid_format),
        *_interval(sampled("precision_{}", "maximize", "Precision", decimals=3)),
        *_interval(sampled("recall_{}", "maximize", "Recall", decimals=3)),
        *_interval(sampled("is_{}", "maximize", "IS")),
        sampled("is_{}_std", "minimize", "IS std", objective=False),
        MetricInfo(f"rfid_{extractor}", "minimize", f"rFID ({extractor})", extractor=extractor,
                   fixed_at_identity=True),
    ]


CATALOG: dict[str, MetricInfo] = {
    m.name: m
    for m in [
        *_generation("inception"),
        *_generation("domain"),
        MetricInfo("cond_accuracy", "maximize", "Cond. accuracy", "%", sampled=True, requires="labels", decimals=1),
        MetricInfo("psnr", "maximize", "PSNR", "dB", fixed_at_identity=True),
        MetricInfo("ssim", "maximize", "SSIM", decimals=3, fixed_at_identity=True),
        MetricInfo("mse", "minimize", "MSE", decimals=2, scale=1e3, fixed_at_identity=True),
        MetricInfo("bpp", "minimize", "Rate", "bpp", decimals=3, fixed_at_identity=True),
        MetricInfo("latent_ratio", "minimize", "Latent size ratio", decimals=3, fixed_at_identity=True),
        MetricInfo("perplexity", "maximize", "Codebook perplexity", requires="codebook", decimals=1),
        MetricInfo("codebook_usage", "maximize", "Codebook usage", "%", requires="codebook", decimals=1),
        # Logged in millions (evaluation.cost).
        MetricInfo("params_first_stage", "minimize", "Params first stage", "M", decimals=3, result=False),
        MetricInfo("params_unet", "minimize", "Params UNet", "M", decimals=3, result=False),
        MetricInfo("params_cond", "minimize", "Params cond. encoder", "M", decimals=3, result=False),
        MetricInfo("unet_gflops", "minimize", "UNet GFLOPs", decimals=3, result=False),
        MetricInfo("sample_images_per_s", "maximize", "Sampling", "img/s", sampled=True, decimals=1, result=False),
        MetricInfo("train_images_per_s", "maximize", "Training", "img/s", decimals=1, result=False),
        # Of the evaluation alone, model included: peak CUDA tensor memory, or on a Linux CPU the peak resident
        # set, both reset at its start (evaluation.cost.PeakMemory); absent on a CPU whose peak cannot reset.
        MetricInfo("peak_memory_mb", "minimize", "Peak memory", "MB", decimals=0, result=False),
        MetricInfo("train_hours", "minimize", "Training time", "device-h", decimals=3, result=False),
        MetricInfo("val_loss", "minimize", "Val. loss", decimals=4),
    ]
}


def metric_info(name: str) -> MetricInfo:
    """Look up a metric; sweep variants `g<scale>/<metric>` and `ddim<K>/<metric>` share the base's info."""
    base = name.rsplit("/", 1)[-1]
    if base not in CATALOG:
        raise KeyError(name)
    return CATALOG[base]


def metric_label(name: str, with_extractor: bool = True) -> str:
    """The catalog label; a sweep variant's prefix goes before it (`ddim10/fid_domain` -> `ddim10 FID (domain)`)."""
    prefix = name.rpartition("/")[0]
    info = metric_info(name)
    label = info.label if with_extractor else info.plain_label
    return f"{prefix} {label}" if prefix else label
