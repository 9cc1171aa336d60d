"""The replication units behind each table row, over a balanced subset, and the words for a study's design.

Pooling runs per level lets an unbalanced study decide a comparison: a level with an extra seed, or with the
only runs of a good cell of another factor, wins by weight. Here a row (a configuration, or a level of one
factor) stands on units, one per seed: a unit averages that seed's runs over the row's cells (combinations of
the other factors), taking only the cells every row has and only the seeds every one of those cells has. A row's
mean is the mean over its units, its interval a t-interval over them: the seeds are the replicates, the cells
fixed effects averaged with equal weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from reports.design import SEED_PARAM
from reports.runs import column_or_missing, configuration_label, factor_label, ordered_values, param_column

Key = tuple[str, ...]


@dataclass(frozen=True)
class RowUnits:
    """One table row: its factor values, and per unit (seed) the run ids it averages."""

    key: Key
    seeds: tuple[str, ...]
    runs: tuple[tuple[str, ...], ...]

    @property
    def all_runs(self) -> tuple[str, ...]:
        return tuple(r for unit in self.runs for r in unit)


@dataclass(frozen=True)
class Layout:
    """The rows of a table, in table order, and what their units leave out."""

    rows: tuple[RowUnits, ...]
    cells_used: int
    cells_left_out: tuple[Key, ...]
    others: tuple[str, ...]
    seeds_left_out: int

    def note(self) -> str:
        """What a row averages, for the caption."""
        if not self.others:
            return "Each row: the mean over its seeds"
        names = ", ".join(factor_label(f) for f in self.others)
        text = (f"Each row: the mean over seeds of the mean over the {self.cells_used} cell(s) of {names} that "
                f"every row has (cells weighted equally)")
        if self.cells_left_out:
            missing = "; ".join(configuration_label(dict(zip(self.others, key))) for key in self.cells_left_out)
            text += f"; left out for lack of a run in every row: {missing}"
        if self.seeds_left_out:
            text += f"; {self.seeds_left_out} run(s) left out whose seed not every cell of its row has"
        return text


def _param_values(finished: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({p: column_or_missing(finished, param_column(p)).astype(str) for p in params},
                        index=finished.index)


def layout(finished: pd.DataFrame, factors: Sequence[str], row_factors: Sequence[str]) -> Layout:
    """The units of every row over `row_factors` (all `factors` for the overall table, one for an ablation)."""
    others = tuple(f for f in factors if f not in row_factors)
    keys = _param_values(finished, [*row_factors, *others, SEED_PARAM]).assign(run_id=finished["run_id"])
    row_of = keys[list(row_factors)].apply(tuple, axis=1) if row_factors else pd.Series([()] * len(keys), keys.index)
    cell_of = keys[list(others)].apply(tuple, axis=1) if others else pd.Series([()] * len(keys), keys.index)
    order = sorted(set(row_of), key=lambda key: [ordered_values(keys[f]).index(v) for f, v in zip(row_factors, key)])
    cells_by_row = {row: set(cell_of[row_of == row]) for row in order}
    shared = set.intersection(*cells_by_row.values()) if cells_by_row else set()
    rows, used = [], 0
    for row in order:
        mine = keys[(row_of == row) & cell_of.isin(shared)]
        seeds = set.intersection(*(set(mine.loc[cell_of[mine.index] == c, SEED_PARAM]) for c in shared)) \
            if shared else set()
        seeds_sorted = tuple(ordered_values(seeds))
        runs = tuple(tuple(mine.loc[(mine[SEED_PARAM] == s), "run_id"]) for s in seeds_sorted)
        used += sum(map(len, runs))
        rows.append(RowUnits(row, seeds_sorted, runs))
    left_out = tuple(sorted(set.union(*cells_by_row.values()) - shared)) if cells_by_row else ()
    in_shared_cells = int(cell_of.isin(shared).sum())
    return Layout(tuple(rows), len(shared), left_out, others, in_shared_cells - used)


def design_note(factors: Sequence[str], levels: dict[str, Sequence[str]], counts: pd.DataFrame,
                seeds: Sequence[str] | None) -> str:
    """`Design: f (1, 2, 4) x schedule (linear, cosine); seeds 0, 1; n = 2 per cell` and any imbalance.

    `counts` has the factor columns and `n`, the finished runs of each configuration.
    """
    design = " x ".join(f"{factor_label(f)} ({', '.join(levels.get(f) or ordered_values(counts[f].astype(str)))})"
                        for f in factors) or "one configuration"
    seeds_text = f"; seeds {', '.join(seeds)}" if seeds else ""
    n = counts["n"].astype(int)
    if n.empty:
        return f"Design: {design}{seeds_text}; no finished run."
    if n.min() == n.max():
        return f"Design: {design}{seeds_text}; n = {n.min()} per cell."
    uneven = "; ".join(f"{configuration_label({f: str(row[f]) for f in factors})}: n = {int(row['n'])}"
                       for _, row in counts.iterrows() if int(row["n"]) != n.max())
    return f"Design: {design}{seeds_text}; unbalanced: n = {n.max()} per cell except {uneven}."
