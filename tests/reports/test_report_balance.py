"""reports/balance.py: ablation rows from cell means over the cells every level has, and the design in words."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.balance import design_note, marginal

F, S = "autoencoder.f", "diffusion.schedule"


def cells(rows: list[tuple[str, str, float, int]]) -> pd.DataFrame:
    return pd.DataFrame([{F: f, S: s, "fid_mean": fid, "n": n} for f, s, fid, n in rows])


def test_levels_are_compared_over_the_same_cells_with_equal_weight():
    # f = 2 lacks the cosine cell, the good one: pooling its runs would compare f = 1's average over both
    # schedules with f = 2's linear runs alone.
    table = cells([("1", "linear", 30.0, 2), ("1", "cosine", 20.0, 3), ("2", "linear", 28.0, 2)])
    result = marginal(table, F, [F, S], ["fid"])
    rows = result.data.set_index(F)
    assert rows.loc["1", "fid_mean"] == 30.0 and rows.loc["2", "fid_mean"] == 28.0
    assert rows.loc["1", "cells"] == 1 and rows.loc["1", "n"] == 2
    assert math.isnan(rows.loc["1", "fid_std"])  # one cell: no spread over cells
    assert "Left out, for lack of a run at every level: schedule=cosine." in result.note
    balanced = marginal(cells([("1", "linear", 30.0, 2), ("1", "cosine", 20.0, 2), ("2", "linear", 28.0, 2),
                               ("2", "cosine", 26.0, 2)]), F, [F, S], ["fid"]).data.set_index(F)
    # The mean of cell means, whatever the seeds per cell; the std is over cells.
    assert balanced.loc["1", "fid_mean"] == 25.0 and balanced.loc["1", "fid_std"] == pytest.approx(50**0.5)
    assert balanced.loc["2", "cells"] == 2 and balanced.loc["2", "n"] == 4


def test_the_design_names_factors_levels_seeds_and_any_cell_with_fewer_runs():
    table = cells([("1", "linear", 30.0, 2), ("1", "cosine", 20.0, 1), ("2", "linear", 28.0, 2)])
    note = design_note([F, S], {F: ["1", "2"], S: ["linear", "cosine"]}, table, ["0", "1"])
    assert note == ("Design: f (1, 2) x schedule (linear, cosine); seeds 0, 1; unbalanced: n = 2 per cell "
                    "except f=1, schedule=cosine: n = 1.")
    even = design_note([F], {F: ["1", "2"]}, cells([("1", "x", 1.0, 3), ("2", "x", 2.0, 3)]), None)
    assert even == "Design: f (1, 2); n = 3 per cell."
