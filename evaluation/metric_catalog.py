"""Every final metric the suite logs, with its direction, so sweeps and reports agree on names.

Tag names have their own catalog, `ldm.tracking.Tag` (`ldm/tracking/tags.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    direction: Direction
    label: str
    unit: str = ""
    objective: bool = True
    """Whether a sweep may optimise it: not the spread of a number (`_std`) nor an interval's end (`_lo`/`_hi`)."""

    @property
    def arrow(self) -> str:
        return "↓" if self.direction == "minimize" else "↑"


def _interval(info: MetricInfo) -> list[MetricInfo]:
    """A metric and the ends of its 95% interval (`evaluation/intervals.py`), which share its direction."""
    return [info, *(MetricInfo(f"{info.name}_{end}", info.direction, f"{info.label} 95% {end}", info.unit,
                               objective=False) for end in ("lo", "hi"))]


def _generation(extractor: str) -> list[MetricInfo]:
    return [
        *_interval(MetricInfo(f"fid_{extractor}", "minimize", f"FID ({extractor})")),
        # FID extrapolated to infinitely many samples (Chong & Forsyth 2020): comparable across sample counts.
        *_interval(MetricInfo(f"fdinf_{extractor}", "minimize", f"FD∞ ({extractor})")),
        *_interval(MetricInfo(f"kid_{extractor}", "minimize", f"KID ({extractor})")),
        MetricInfo(f"kid_{extractor}_std", "minimize", f"KID std ({extractor})", objective=False),
        *_interval(MetricInfo(f"precision_{extractor}", "maximize", f"Precision ({extractor})")),
        *_interval(MetricInfo(f"recall_{extractor}", "maximize", f"Recall ({extractor})")),
        *_interval(MetricInfo(f"is_{extractor}", "maximize", f"IS ({extractor})")),
        MetricInfo(f"is_{extractor}_std", "minimize", f"IS std ({extractor})", objective=False),
        MetricInfo(f"rfid_{extractor}", "minimize", f"rFID ({extractor})"),
    ]


CATALOG: dict[str, MetricInfo] = {
    m.name: m
    for m in [
        *_generation("inception"),
        *_generation("domain"),
        MetricInfo("cond_accuracy", "maximize", "Cond. accuracy", "%"),
        MetricInfo("psnr", "maximize", "PSNR", "dB"),
        MetricInfo("ssim", "maximize", "SSIM"),
        MetricInfo("mse", "minimize", "MSE"),
        MetricInfo("bpp", "minimize", "Bits/pixel", "bit"),
        MetricInfo("latent_ratio", "minimize", "Latent size ratio"),
        MetricInfo("perplexity", "maximize", "Codebook perplexity"),
        MetricInfo("codebook_usage", "maximize", "Codebook usage", "%"),
        MetricInfo("params_first_stage", "minimize", "Params first stage", "M"),
        MetricInfo("params_unet", "minimize", "Params UNet", "M"),
        MetricInfo("params_cond", "minimize", "Params cond. encoder", "M"),
        MetricInfo("unet_gflops", "minimize", "UNet GFLOPs"),
        MetricInfo("sample_images_per_s", "maximize", "Sampling", "img/s"),
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
