"""reports/tables.py: aggregates against numpy on the synthetic values, and each output format."""

from __future__ import annotations

import io
import itertools
import re

import numpy as np
import pandas as pd
import pytest

from evaluation.metric_catalog import metric_info
from reports.runs import load_study
from reports.tables import TABLE_METRICS, Table, build_tables, to_csv, to_latex, to_markdown

# Table name -> the fixture columns its rows group by (the other factors and the seeds are pooled).
GROUPING = {"overall": ["f", "schedule"], "ablation_f": ["f"], "ablation_schedule": ["schedule"]}
CELL = re.compile(r"^(?P<bold>\*\*)?(?P<mean>-?\d+(?:\.(?P<frac>\d+))?)(?: ± (?P<std>\d+(?:\.\d+)?))?(?:\*\*)?$")


@pytest.fixture(scope="module")
def tables(synthetic_store) -> dict[str, Table]:
    return {t.name: t for t in build_tables(load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri))}


def expected_rows(store, table: str) -> dict[tuple[str, ...], dict[str, float]]:
    """numpy mean, sample std and count per row key, straight from the values the fixture logged."""
    finished = store.finished.assign(f=store.finished["f"].astype(str))
    rows = {}
    for key, group in finished.groupby(GROUPING[table]):
        stats: dict[str, float] = {"n": len(group)}
        for metric in TABLE_METRICS:
            if metric in group:
                values = group[metric].to_numpy(float)
                stats[f"{metric}_mean"] = float(np.mean(values))
                stats[f"{metric}_std"] = float(np.std(values, ddof=1))
        rows[tuple(key)] = stats
    return rows


def markdown_cells(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return split[0], split[2:]


def latex_body(tex: str) -> list[list[str]]:
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0]
    return [[cell.strip() for cell in line.removesuffix("\\\\").split(" & ")] for line in body.strip().splitlines()]


def expected_best(means: list[float], direction: str) -> list[bool]:
    best = min(means) if direction == "minimize" else max(means)
    mask = [bool(np.isclose(m, best, rtol=1e-12, atol=0)) for m in means]
    return [False] * len(means) if all(mask) else mask


def test_one_row_per_configuration(synthetic_store, tables: dict[str, Table]) -> None:
    F_VALUES, SCHEDULES = synthetic_store.F_VALUES, synthetic_store.SCHEDULES
    overall = tables["overall"].data
    assert len(overall) == len(F_VALUES) * len(SCHEDULES)
    keys = list(zip(overall["autoencoder.f"], overall["diffusion.schedule"]))
    assert keys == list(itertools.product(map(str, F_VALUES), sorted(SCHEDULES)))
    assert tables["ablation_f"].data["autoencoder.f"].tolist() == ["1", "4", "8"]
    assert tables["ablation_schedule"].data["diffusion.schedule"].tolist() == ["cosine", "linear"]
    assert overall["n"].tolist() == [2] * 6
    assert tables["ablation_f"].data["n"].tolist() == [4] * 3  # the failed f=8 trial is not counted


def test_mean_and_std_match_numpy(synthetic_store, tables: dict[str, Table]) -> None:
    for name, table in tables.items():
        expected = expected_rows(synthetic_store, name)
        assert len(table.data) == len(expected)
        for _, row in table.data.iterrows():
            want = expected[tuple(row[list(table.factors)])]
            assert row["n"] == want["n"]
            for metric in table.metrics:
                assert row[f"{metric}_mean"] == pytest.approx(want[f"{metric}_mean"], rel=1e-12, abs=1e-15)
                assert row[f"{metric}_std"] == pytest.approx(want[f"{metric}_std"], rel=1e-9, abs=1e-12)


def test_failed_pruned_and_running_trials_stay_out(synthetic_store, tables: dict[str, Table]) -> None:
    for table in tables.values():
        for column in ("fid_domain_mean", "psnr_mean", "bpp_mean"):
            assert table.data[column].max() < synthetic_store.LEAKED / 10


def test_columns_only_for_logged_metrics(synthetic_store, tables: dict[str, Table]) -> None:
    logged = synthetic_store.final_metrics(4, 4, "cosine", 0)
    assert tables["overall"].metrics == tuple(m for m in TABLE_METRICS if m in logged)
    sparse = build_tables(load_study(synthetic_store.SPARSE_STUDY, synthetic_store.tracking_uri))
    assert [t.name for t in sparse] == ["overall", "ablation_c"]
    assert all(t.metrics == ("fid_domain", "psnr") for t in sparse)
    assert markdown_cells(to_markdown(sparse[1]))[0] == ["c", "FID (domain) ↓", "PSNR [dB] ↑", "n"]


def test_markdown_cells_parse_match_numpy_and_bold_the_best(synthetic_store,
                                                            tables: dict[str, Table]) -> None:
    for name, table in tables.items():
        head, rows = markdown_cells(to_markdown(table))
        expected = expected_rows(synthetic_store, name)
        keys = [tuple(row[: len(table.factors)]) for row in rows]
        assert sorted(keys) == sorted(expected)
        for j, metric in enumerate(table.metrics, start=len(table.factors)):
            info = metric_info(metric)
            assert head[j].startswith(info.label) and head[j].endswith(info.arrow)
            parsed = [CELL.match(row[j]) for row in rows]
            assert all(parsed), [row[j] for row in rows]
            for cell, key in zip(parsed, keys):
                decimals = len(cell["frac"] or "")
                tolerance = 0.5 * 10**-decimals + 1e-12
                assert abs(float(cell["mean"]) - expected[key][f"{metric}_mean"]) <= tolerance
                assert abs(float(cell["std"]) - expected[key][f"{metric}_std"]) <= tolerance
            means = [expected[key][f"{metric}_mean"] for key in keys]
            assert [bool(c["bold"]) for c in parsed] == expected_best(means, info.direction), (name, metric)
        assert [row[-1] for row in rows] == [str(expected[key]["n"]) for key in keys]


def test_some_columns_have_a_single_best_and_ties_are_not_bold(tables: dict[str, Table]) -> None:
    _, rows = markdown_cells(to_markdown(tables["overall"]))
    fid = tables["overall"].metrics.index("fid_domain") + 2
    assert sum(row[fid].startswith("**") for row in rows) == 1
    _, rows = markdown_cells(to_markdown(tables["ablation_schedule"]))
    bpp = tables["ablation_schedule"].metrics.index("bpp") + 1  # equal for both schedules by construction
    assert not any(row[bpp].startswith("**") for row in rows)


def test_latex_is_balanced_booktabs_with_escapes(synthetic_store, tables: dict[str, Table]) -> None:
    for table in tables.values():
        tex = to_latex(table)
        stack = []
        for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
            if kind == "begin":
                stack.append(env)
            else:
                assert stack.pop() == env
        assert not stack
        assert [line for line in tex.splitlines() if line.endswith("rule")] == ["\\toprule", "\\midrule",
                                                                                 "\\bottomrule"]
        # `&` separates cells; everywhere else specials are escaped (a bare % would comment out the rest).
        assert re.search(r"(?<!\\)[%_#]", tex.replace("\\label{tab:" + table.name, "")) is None
        caption = re.search(r"\\caption\{(.*)\}\n", tex)[1]
        assert re.search(r"(?<!\\)&", caption) is None
        assert r"FID (domain) $\downarrow$" in tex and r"Cond. accuracy [\%] $\uparrow$" in tex
        assert "domain\\_classifier mnist (99\\% acc)" in tex and f"{synthetic_store.NUM_SAMPLES} samples" in tex
        body = latex_body(tex)
        assert len(body) == len(table.data)
        _, md_rows = markdown_cells(to_markdown(table))
        for tex_row, md_row in zip(body, md_rows):
            assert len(tex_row) == len(md_row)
            assert [c.startswith("\\textbf{") for c in tex_row] == [c.startswith("**") for c in md_row]
            for tex_cell, md_cell in zip(tex_row, md_row):
                plain = re.sub(r"^\\textbf\{(.*)\}$", r"\1", tex_cell).replace(r"$\pm$", "±").replace("--", "–")
                assert plain == md_cell.strip("*")


def test_captions_name_extractor_and_sample_count(synthetic_store, tables: dict[str, Table]) -> None:
    for table in tables.values():
        assert synthetic_store.EXTRACTOR_WEIGHTS in table.caption
        assert f"{synthetic_store.NUM_SAMPLES} samples per run" in table.caption


def test_csv_has_plain_numeric_columns(synthetic_store, tables: dict[str, Table]) -> None:
    for name, table in tables.items():
        frame = pd.read_csv(io.StringIO(to_csv(table)), dtype={"f": str, "schedule": str})
        assert list(frame.columns[: len(GROUPING[name])]) == GROUPING[name]
        assert list(frame.columns[len(GROUPING[name]):]) == [
            *(f"{m}_{s}" for m in table.metrics for s in ("mean", "std")), "n"]
        numeric = frame.columns[len(GROUPING[name]):]
        assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in numeric)
        expected = expected_rows(synthetic_store, name)
        for _, row in frame.iterrows():
            want = expected[tuple(row[GROUPING[name]])]
            for column in numeric:
                assert row[column] == pytest.approx(want[column], rel=1e-9, abs=1e-12)
