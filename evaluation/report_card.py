"""A metrics report as `metrics.json` and as the aligned plain-text table CLI commands print.

A report maps metric names from `evaluation/metric_catalog.py` (or their `g<scale>/` and `ddim<K>/` variants)
to a float, or None when a metric is unavailable, plus one `meta` entry saying how they were measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from evaluation.metric_catalog import CATALOG, metric_info, metric_label
from ldm.io import atomic_write_text

META_KEY = "meta"
MetricsReport = dict[str, Any]

_CATALOG_ORDER = {name: position for position, name in enumerate(CATALOG)}


def metric_values(report: MetricsReport) -> dict[str, float | None]:
    """The metrics of a report without its meta entry."""
    return {name: value for name, value in report.items() if name != META_KEY}


def _strict_json(value: Any) -> Any:
    """JSON has no NaN/inf: a non-finite number is written as null, like an unavailable metric."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(item) for item in value]
    return value


def write_metrics_json(metrics: MetricsReport, path: Path) -> None:
    """Write the report atomically as strict JSON (paths become strings)."""
    text = json.dumps(_strict_json(metrics), indent=2, allow_nan=False, default=str)
    atomic_write_text(Path(path), text + "\n")


def _sort_key(name: str) -> tuple[str, int, str]:
    """Plain metrics first, then each sweep variant prefix; catalog order within each group."""
    prefix, _, base = name.rpartition("/")
    return prefix, _CATALOG_ORDER.get(base, len(_CATALOG_ORDER)), base


def _label(name: str) -> tuple[str, str]:
    """Readable label with its better-direction arrow, and the unit; unknown names are shown as they are."""
    try:
        info = metric_info(name)
    except KeyError:
        return name, ""
    return f"{metric_label(name)} {info.arrow}", info.unit


def _format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def format_metrics_table(metrics: MetricsReport) -> str:
    """Aligned columns metric / value / unit, then the meta entries as `key: value` lines."""
    rows = [("metric", "value", "unit")]
    for name in sorted(metric_values(metrics), key=_sort_key):
        label, unit = _label(name)
        rows.append((label, _format_value(metrics[name]), unit))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{label:<{widths[0]}}  {value:>{widths[1]}}  {unit}".rstrip() for label, value, unit in rows]
    for key, value in metrics.get(META_KEY, {}).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(map(str, value)) or "-"
        lines.append(f"{key}: {value}")
    return "\n".join(lines)
