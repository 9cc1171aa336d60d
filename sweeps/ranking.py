"""Configurations ranked by their mean over seeds, with its 95% t-interval: what `ldm sweep status` calls best.

One trial is one seed; the best single trial of a study is partly its lucky seed. A configuration (the swept
values without the seed) is ranked by the mean of its complete trials' first objective, and every objective
gets its mean and the half-width of its t-interval over those seeds (none for one seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from evaluation.metric_catalog import metric_info
from reports.statistics import t_interval


def rank_configurations(trials: pd.DataFrame, params: Sequence[str], objectives: Sequence[str]) -> pd.DataFrame:
    """One row per configuration of `trials` (`sweep_status`'s frame): its params, `n` complete seeds, and per
    objective `<o>` (the mean) and `<o>_ci95`; best first by the first objective's catalog direction."""
    complete = trials[trials["state"] == "COMPLETE"] if len(trials) else trials
    columns = [*params, "n", *(f"{o}{end}" for o in objectives for end in ("", "_ci95"))]
    if complete.empty or not objectives:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in complete.groupby(list(params), dropna=False, sort=False) if params else [((), complete)]:
        row: dict[str, object] = dict(zip(params, key if isinstance(key, tuple) else (key,)))
        row["n"] = len(group)
        for o in objectives:
            interval = t_interval(group[o].astype(float).to_numpy())
            row[o], row[f"{o}_ci95"] = interval.mean, interval.half_width
        rows.append(row)
    ranked = pd.DataFrame(rows, columns=columns)
    first = objectives[0]
    return ranked.sort_values(first, ascending=metric_info(first).direction == "minimize", ignore_index=True)
