"""A flawed study, reported honestly: a missing grid point, unequal seeds and no real difference between the arms."""

from __future__ import annotations

from reports.tables import TIE_MARK


def test_the_report_flags_the_missing_point_captions_the_imbalance_bolds_nothing_and_finds_no_difference(
        flawed_report) -> None:
    index = flawed_report.index.read_text()
    assert "1 of 6 grid points missing (no finished trial): f=4, seed 2" in index
    overall = (flawed_report.folder / "tables" / "overall.md").read_text()
    assert "Design: f (2, 4); seeds 0, 1, 2; unbalanced: n = 3 per cell except f=4: n = 2." in overall
    grid = overall.split("\n\n")[1]  # the table itself, under its title
    assert "**" not in grid and grid.count(TIE_MARK) == 2  # nothing bold; both arms marked as tied
    (sentence,) = flawed_report.verdicts
    assert sentence.startswith("f: no significant difference on FID (domain) (p = ")
    assert sentence.endswith(", 2 and 3 seeds).") or sentence.endswith(", 3 and 2 seeds).")
    assert index.index("## Verdict") < index.index("## Overview") and sentence.replace("<", "\\<") in index
    assert "- Design: f (2, 4); seeds 0, 1, 2; unbalanced: n = 3 per cell except f=4: n = 2." in index
