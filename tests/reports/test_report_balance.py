"""reports/balance.py: the seeds a table row stands on, over the cells every row has, and the design in words."""

from __future__ import annotations

import pandas as pd

from reports.balance import design_note, layout

F, S = "autoencoder.f", "diffusion.schedule"


def runs(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    """Finished runs (f, schedule, seed), run ids f-schedule-seed."""
    return pd.DataFrame([{f"params.{F}": f, f"params.{S}": s, "params.training.seed": str(seed),
                          "run_id": f"{f}-{s}-{seed}"} for f, s, seed in rows])


def test_a_level_stands_on_the_cells_every_level_has_and_the_seeds_all_of_them_have():
    # f = 2 lacks the cosine cell, so both levels are read on linear alone; f = 1's seed 2 has no
    # linear run, so it is left out of f = 1's units rather than weighting one cell more.
    table = layout(runs([("1", "linear", 0), ("1", "linear", 1), ("1", "cosine", 0), ("1", "cosine", 1),
                         ("1", "cosine", 2), ("2", "linear", 0), ("2", "linear", 1)]), [F, S], [F])
    assert [(row.key, row.seeds, row.runs) for row in table.rows] == [
        (("1",), ("0", "1"), (("1-linear-0",), ("1-linear-1",))),
        (("2",), ("0", "1"), (("2-linear-0",), ("2-linear-1",)))]
    assert table.cells_left_out == (("cosine",),)
    assert table.note() == ("Each row: the mean over seeds of the mean over the 1 cell(s) of schedule that every row "
                            "has (cells weighted equally); left out for lack of a run in every row: schedule=cosine")


def test_balanced_cells_are_averaged_per_seed():
    table = layout(runs([(f, s, seed) for f in ("1", "2") for s in ("linear", "cosine") for seed in (0, 1)]),
                   [F, S], [F])
    assert table.rows[0].runs == (("1-linear-0", "1-cosine-0"), ("1-linear-1", "1-cosine-1"))
    assert table.cells_left_out == () and table.seeds_left_out == 0
    overall = layout(runs([("1", "linear", 0), ("1", "linear", 1), ("2", "linear", 0)]), [F, S], [F, S])
    assert [row.seeds for row in overall.rows] == [("0", "1"), ("0",)]
    assert overall.note() == "Each row: the mean over its seeds"


def test_the_design_names_factors_levels_seeds_and_any_cell_with_fewer_runs():
    counts = pd.DataFrame({F: ["1", "1", "2"], S: ["linear", "cosine", "linear"], "n": [2, 1, 2]})
    note = design_note([F, S], {F: ["1", "2"], S: ["linear", "cosine"]}, counts, ["0", "1"])
    assert note == ("Design: f (1, 2) x schedule (linear, cosine); seeds 0, 1; unbalanced: n = 2 per cell "
                    "except f=1, schedule=cosine: n = 1.")
    even = design_note([F], {F: ["1", "2"]}, pd.DataFrame({F: ["1", "2"], "n": [3, 3]}), None)
    assert even == "Design: f (1, 2); n = 3 per cell."
