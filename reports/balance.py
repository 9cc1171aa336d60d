"""Marginal (ablation) rows from cell means over a balanced subset, and the words for a study's balance.

Pooling runs per level lets an unbalanced study decide a comparison: a level with an extra seed, or with the
only runs of a good cell of another factor, wins by weight. Here a level's row is the mean of its cells' means
(a cell: one combination of the factors, its seeds averaged), over the cells of the other factors that every
level has, so each level is averaged over the same cells with equal weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from reports.runs import configuration_label, factor_label, ordered_values


@dataclass(frozen=True)
class Marginal:
    """`data`: one row per level (the factor's column, `<metric>_mean`, `<metric>_std` over cells, `n` runs,
    `cells`); `note` says what a row averages and which cells were left out."""

    data: pd.DataFrame
    note: str


def marginal(cells: pd.DataFrame, factor: str, factors: Sequence[str], metrics: Sequence[str]) -> Marginal:
    """Rows per level of `factor` from `cells` (one row per configuration: factor columns, `<metric>_mean`, `n`)."""
    others = [f for f in factors if f != factor]
    levels = ordered_values(cells[factor].astype(str))
    keys = cells[others].astype(str).apply(tuple, axis=1) if others else pd.Series([()] * len(cells), cells.index)
    by_level = {level: set(keys[cells[factor].astype(str) == level]) for level in levels}
    shared = set.intersection(*by_level.values()) if by_level else set()
    rows = []
    for level in levels:
        chosen = cells[(cells[factor].astype(str) == level) & keys.isin(shared)]
        row: dict[str, object] = {factor: level}
        for m in metrics:
            row[f"{m}_mean"] = chosen[f"{m}_mean"].mean()
            row[f"{m}_std"] = chosen[f"{m}_mean"].std(ddof=1)
        row["n"], row["cells"] = int(chosen["n"].sum()), len(chosen)
        rows.append(row)
    data = pd.DataFrame(rows, columns=[factor, *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), "n", "cells"])
    return Marginal(data, _note(factor, others, shared, by_level))


def _note(factor: str, others: Sequence[str], shared: set[tuple], by_level: dict[str, set[tuple]]) -> str:
    if not others:
        return "Each row: the mean over its runs (no other factor); ± the sample std over runs."
    names = ", ".join(factor_label(f) for f in others)
    every = set.union(*by_level.values())
    left_out = sorted(every - shared)
    text = (f"Each row: the mean of the {len(shared)} cell mean(s) of {names} that every level of "
            f"{factor_label(factor)} has (a cell's seeds averaged first, cells weighted equally); ± the sample std "
            f"over those cells.")
    if left_out:
        missing = "; ".join(configuration_label(dict(zip(others, key))) for key in left_out)
        text += f" Left out, for lack of a run at every level: {missing}."
    return text


def design_note(factors: Sequence[str], levels: dict[str, Sequence[str]], cells: pd.DataFrame,
                seeds: Sequence[str] | None) -> str:
    """`Design: f (1, 2, 4) x schedule (linear, cosine); seeds 0, 1; n = 2 per cell` and any imbalance."""
    design = " x ".join(f"{factor_label(f)} ({', '.join(levels.get(f) or ordered_values(cells[f].astype(str)))})"
                        for f in factors) or "one configuration"
    seeds_text = f"; seeds {', '.join(seeds)}" if seeds else ""
    counts = cells["n"].astype(int)
    if counts.empty:
        return f"Design: {design}{seeds_text}; no finished run."
    if counts.min() == counts.max():
        return f"Design: {design}{seeds_text}; n = {counts.min()} per cell."
    uneven = "; ".join(f"{configuration_label({f: str(row[f]) for f in factors})}: n = {int(row['n'])}"
                       for _, row in cells.iterrows() if int(row["n"]) != counts.max())
    return f"Design: {design}{seeds_text}; unbalanced: n = {counts.max()} per cell except {uneven}."
