"""reports/tables.py: aggregates against numpy on the synthetic values, column choice, number formats, the identity
first stage's fixed values, bold cells, and each output format."""

from __future__ import annotations

import dataclasses
import io
import itertools
import re

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t

from evaluation.metric_catalog import CATALOG, metric_info
from ldm.errors import UserError
from reports.runs import StudyRuns, load_study
from reports.tables import (
    EMPTY_CELL,
    NumberFormat,
    WITHHELD_CELL,
    Table,
    build_tables,
    metric_header,
    shared_extractor,
    table_metrics,
    to_csv,
    to_latex,
    to_markdown,
)
from sweeps.spec import MetricFormat, ReportSpec

# Table name -> the fixture columns its rows group by (the other factors and the seeds are pooled).
GROUPING = {"overall": ["f", "schedule"], "ablation_f": ["f"], "ablation_schedule": ["schedule"]}
NUMBER = r"-?\d+(?:\.\d+)?"
CELL = re.compile(rf"^(?P<bold>\*\*)?(?P<mean>{NUMBER})(?: ± (?P<half>{NUMBER}))?(?P<one_run>†)?(?:\*\*)?"
                  r"(?P<tie> ≈)?$")
COSTS = ("params_unet", "unet_gflops", "train_images_per_s", "sample_images_per_s", "train_hours")


@pytest.fixture(scope="module")
def study(synthetic_store) -> StudyRuns:
    return load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)


@pytest.fixture(scope="module")
def every_metric(synthetic_store) -> tuple[str, ...]:
    """Every catalog metric FULL logged: the columns of the tables that check all values."""
    return tuple(m for m in CATALOG if m in synthetic_store.finished)


@pytest.fixture(scope="module")
def tables(study: StudyRuns, every_metric: tuple[str, ...]) -> dict[str, Table]:
    return {t.name: t for t in build_tables(study, every_metric)}


def expected_rows(store, table: str) -> dict[tuple[str, ...], dict[str, float]]:
    """Per row key, straight from the values the fixture logged: per seed the mean over the row's cells (the other
    factors; FULL is balanced), then numpy's mean, sample std and the 95% t half-width over the seeds, and the seed
    count; the values the identity first stage (f = 1) fixes by construction left out."""
    finished = store.finished.assign(f=store.finished["f"].astype(str))
    rows = {}
    for key, group in finished.groupby(GROUPING[table]):
        stats: dict[str, float] = {"n": group["seed"].nunique()}
        for metric in CATALOG:
            if metric in group:
                kept = group[group["f"] != "1"] if metric_info(metric).fixed_at_identity else group
                values = kept.groupby("seed")[metric].mean().to_numpy(float)
                stats[f"{metric}_mean"] = float(np.mean(values)) if len(values) else np.nan
                stats[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
                stats[f"{metric}_ci95"] = (float(t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1)
                                                 / np.sqrt(len(values))) if len(values) > 1 else np.nan)
        rows[tuple(key)] = stats
    return rows


def markdown_cells(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return split[0], split[2:]


def latex_body(tex: str) -> list[list[str]]:
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0]
    return [[cell.strip() for cell in line.removesuffix("\\\\").split(" & ")] for line in body.strip().splitlines()]


def seed_values(store, table: str, metric: str) -> dict[tuple[str, ...], np.ndarray]:
    finished = store.finished.assign(f=store.finished["f"].astype(str))
    if metric_info(metric).fixed_at_identity:
        finished = finished[finished["f"] != "1"]
    return {tuple(key): group.groupby("seed")[metric].mean().to_numpy(float)
            for key, group in finished.groupby(GROUPING[table])}


def separated_best(store, table: str, metric: str) -> tuple[str, ...] | None:
    """The best row when every seed value of every other row is worse than every seed value of it, else None.

    With two seeds per row and no sample replicates, that is what a significant paired bootstrap needs: any
    overlap lets a quarter of the draws of a difference cross zero.
    """
    info = metric_info(metric)
    rows = seed_values(store, table, metric)
    sign = 1 if info.direction == "minimize" else -1
    best = min(rows, key=lambda k: sign * rows[k].mean())
    others = [k for k in rows if k != best]
    worst_of_best = max(sign * rows[best])
    return best if others and all(min(sign * rows[k]) > worst_of_best for k in others) else None


def column(rows: list[list[str]], table: Table, metric: str) -> list[str]:
    j = len(table.factors) + table.metrics.index(metric)
    return [row[j] for row in rows]


def test_one_row_per_configuration(synthetic_store, tables: dict[str, Table]) -> None:
    F_VALUES, SCHEDULES = synthetic_store.F_VALUES, synthetic_store.SCHEDULES
    overall = tables["overall"].data
    assert len(overall) == len(F_VALUES) * len(SCHEDULES)
    keys = list(zip(overall["autoencoder.f"], overall["diffusion.schedule"]))
    assert keys == list(itertools.product(map(str, F_VALUES), sorted(SCHEDULES)))
    assert tables["ablation_f"].data["autoencoder.f"].tolist() == ["1", "4", "8"]
    assert tables["ablation_schedule"].data["diffusion.schedule"].tolist() == ["cosine", "linear"]
    assert overall["n"].tolist() == [2] * 6
    # n counts the seeds a row stands on (each averaging its cells), not pooled runs: the failed f=8 trial is not
    # counted, and f = 8 still has both seeds in both schedules.
    assert tables["ablation_f"].data["n"].tolist() == [2] * 3


def test_mean_std_and_interval_match_numpy(synthetic_store, tables: dict[str, Table]) -> None:
    for name, table in tables.items():
        expected = expected_rows(synthetic_store, name)
        assert len(table.data) == len(expected)
        for _, row in table.data.iterrows():
            want = expected[tuple(row[list(table.factors)])]
            assert row["n"] == want["n"]
            for metric in table.metrics:
                assert row[f"{metric}_mean"] == pytest.approx(want[f"{metric}_mean"], rel=1e-12, abs=1e-15,
                                                              nan_ok=True)
                assert row[f"{metric}_std"] == pytest.approx(want[f"{metric}_std"], rel=1e-9, abs=1e-12, nan_ok=True)
                assert row[f"{metric}_ci95"] == pytest.approx(want[f"{metric}_ci95"], rel=1e-9, abs=1e-12,
                                                              nan_ok=True)


def test_failed_pruned_and_running_trials_stay_out(synthetic_store, tables: dict[str, Table]) -> None:
    for table in tables.values():
        for column_name in ("fid_domain_mean", "psnr_mean", "bpp_mean"):
            assert table.data[column_name].max() < synthetic_store.LEAKED / 10


def test_default_columns_are_fid_and_kid_plus_rate_and_distortion_where_a_first_stage_field_is_swept(
        synthetic_store, study: StudyRuns) -> None:
    # FULL sweeps f (and logs every metric): its spec names no objectives.
    assert [t.metrics for t in build_tables(study)] == [("fid_domain", "kid_domain", "psnr", "bpp")] * 3
    with_objectives = dataclasses.replace(study, objectives=("sample_images_per_s", "fid_domain"))
    assert table_metrics(with_objectives) == ("sample_images_per_s", "fid_domain", "kid_domain", "psnr", "bpp")
    # A schedule sweep alone: no first-stage columns; a conditioning sweep adds the conditioning accuracy.
    assert table_metrics(dataclasses.replace(study, factors=("diffusion.schedule",))) == ("fid_domain", "kid_domain")
    assert table_metrics(dataclasses.replace(study, factors=("diffusion.conditioning",))) == (
        "fid_domain", "kid_domain", "cond_accuracy")
    sparse = build_tables(load_study(synthetic_store.SPARSE_STUDY, synthetic_store.tracking_uri))
    assert [t.name for t in sparse] == ["overall", "ablation_c"]
    assert all(t.metrics == ("fid_domain", "psnr") for t in sparse)  # only what the study logged
    assert markdown_cells(to_markdown(sparse[1]))[0] == ["c", "FID ↓", "PSNR [dB] ↑", "n"]


def test_the_spec_report_metrics_choose_the_columns_and_an_explicit_list_overrides_them(study: StudyRuns) -> None:
    specified = dataclasses.replace(study, report=ReportSpec(metrics=["ddim10/fid_domain", "psnr", "fid_inception"]))
    assert table_metrics(specified) == ("ddim10/fid_domain", "psnr")  # fid_inception was not logged
    assert table_metrics(specified, ["val_loss", "fid_domain"]) == ("val_loss", "fid_domain")
    head, _ = markdown_cells(to_markdown(build_tables(specified)[0]))
    assert head[2:4] == ["ddim10 FID ↓", "PSNR [dB] ↑"]


@pytest.mark.parametrize("requested, named", [
    (["fid_domain", "fid_inception"], "'fid_inception' not logged by study 'toy-ablation'"),
    (["diffusion/loss"], "'diffusion/loss' not logged by study 'toy-ablation'"),  # a training curve, not a final metric
    ([], "none given"),
])
def test_requested_columns_the_study_did_not_log_are_one_error_listing_what_it_logged(
        study: StudyRuns, requested: list[str], named: str) -> None:
    with pytest.raises(UserError) as e:
        table_metrics(study, requested)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"--metrics: {named}; allowed: ")
    assert ", fid_domain, " in message and "g5.0/fid_domain" in message and "diffusion/loss" not in message.split(
        "allowed: ")[1]


def test_markdown_cells_parse_match_numpy_and_bold_only_a_significant_best(synthetic_store,
                                                                          tables: dict[str, Table]) -> None:
    for name, table in tables.items():
        head, rows = markdown_cells(to_markdown(table))
        expected = expected_rows(synthetic_store, name)
        keys = [tuple(row[: len(table.factors)]) for row in rows]
        assert sorted(keys) == sorted(expected)
        for metric in table.metrics:
            info = metric_info(metric)
            j = len(table.factors) + table.metrics.index(metric)
            assert head[j].startswith(info.plain_label + " ") and head[j].endswith(info.arrow)
            cells = column(rows, table, metric)
            parsed = [CELL.match(c) for c in cells]
            withheld = [c == WITHHELD_CELL for c in cells]
            assert all(p or w for p, w in zip(parsed, withheld)), cells
            # Every cell of a column has the catalog's decimals, its mean and std rounded from numpy's.
            decimals = info.decimals
            for cell, key in zip(parsed, keys):
                if cell is None:
                    assert np.isnan(expected[key][f"{metric}_mean"])
                    continue
                assert all(len(x.partition(".")[2]) == decimals for x in (cell["mean"], cell["half"]))
                tolerance = 0.5 * 10**-decimals + 1e-12
                assert abs(float(cell["mean"]) - expected[key][f"{metric}_mean"]) <= tolerance
                assert abs(float(cell["half"]) - expected[key][f"{metric}_ci95"]) <= tolerance
            bold = [key for c, key in zip(parsed, keys) if c and c["bold"]]
            if not info.result:
                assert bold == [] and not any(c and c["tie"] for c in parsed), (name, metric)
                continue
            assert bold == ([best] if (best := separated_best(synthetic_store, name, metric)) else []), (name, metric)
            # Without a significant best, the best mean is marked as a tie (with any row it cannot be told from).
            ties = [key for c, key in zip(parsed, keys) if c and c["tie"]]
            means = {key: expected[key][f"{metric}_mean"] for key in keys if not np.isnan(expected[key][f"{metric}_mean"])}
            if not bold and len(means) > 1:
                pick = min if info.direction == "minimize" else max
                assert pick(means, key=means.get) in ties, (name, metric)
        assert [row[-1] for row in rows] == [str(expected[key]["n"]) for key in keys]


def test_the_identity_first_stage_fixed_values_are_withheld_footnoted_and_never_best(tables: dict[str, Table]) -> None:
    overall = tables["overall"]
    _, rows = markdown_cells(to_markdown(overall))
    f1 = [row[0] == "1" for row in rows]
    for metric in overall.metrics:
        cells = column(rows, overall, metric)
        fixed = metric_info(metric).fixed_at_identity
        assert [c == WITHHELD_CELL for c in cells] == [fixed and is_f1 for is_f1 in f1], metric
    # f = 1 logs PSNR 40 dB here, above every other f: it would be the best were it counted. Counted are the two
    # f = 4 rows, tied (their PSNR differs by seed noise alone), and the f = 8 rows, worse.
    psnr = column(rows, overall, "psnr")
    assert [c.endswith(" ≈") for c in psnr] == [False, False, True, True, False, False]
    assert not any(c.startswith("**") for c in psnr)
    assert overall.notes == ("— identity first stage (f = 1): no reconstruction loss; its values of rFID (domain), "
                             "PSNR, Rate are fixed by construction, not results, and enter no mean and no best.",)
    assert to_markdown(overall).endswith(f"*{overall.notes[0]}*")
    assert "\\footnotesize --- identity first stage (f = 1)" in to_latex(overall)
    assert pd.isna(overall.data.loc[0, "psnr_mean"])  # the CSV holds no made-up number either


def test_a_study_without_the_identity_first_stage_has_no_footnote(synthetic_store) -> None:
    sparse = build_tables(load_study(synthetic_store.SPARSE_STUDY, synthetic_store.tracking_uri))
    assert all(t.notes == () for t in sparse) and WITHHELD_CELL not in to_markdown(sparse[0])


def test_cost_columns_are_never_bold(tables: dict[str, Table]) -> None:
    for table in tables.values():
        _, rows = markdown_cells(to_markdown(table))
        for metric in COSTS:
            assert not any(c.startswith("**") for c in column(rows, table, metric)), (table.name, metric)
    # they differ across f, so a result column with these values would have a best
    assert tables["ablation_f"].data["train_images_per_s_mean"].nunique() == 3


def test_rows_equal_by_design_are_a_tie_never_bold(study: StudyRuns) -> None:
    # The rate depends on f alone: the two schedules of ablation_schedule have the same, and neither is bold.
    table = build_tables(study, ["bpp"])[2]
    _, rows = markdown_cells(to_markdown(table))
    assert [row[1].endswith(" ≈") for row in rows] == [True, True] and not any(row[1].startswith("**") for row in rows)
    # The marks come from the tests on the values, not from how many decimals a table shows.
    rounded = dataclasses.replace(study, report=ReportSpec(formats={"fid_domain": MetricFormat(decimals=0)}))
    assert build_tables(rounded, ["fid_domain"])[0].marks == build_tables(study, ["fid_domain"])[0].marks


def test_scale_and_decimals_come_from_the_catalog_or_the_spec_and_the_header_states_the_scale(
        study: StudyRuns) -> None:
    assert metric_header("kid_inception", metric_info("kid_inception").scale) == "KID (inception) ×10³ ↓"
    assert metric_header("bpp") == "Rate [bpp] ↓"  # the unit once
    scaled = dataclasses.replace(study, report=ReportSpec(formats={"kid_domain": MetricFormat(decimals=1, scale=1e3)}))
    table = build_tables(scaled, ["kid_domain"])[0]
    head, rows = markdown_cells(to_markdown(table))
    assert head[2] == "KID ×10³ ↓"
    for cell, mean in zip(column(rows, table, "kid_domain"), table.data["kid_domain_mean"]):
        assert CELL.match(cell)["mean"] == f"{mean * 1e3:.1f}"
    assert r"KID $\times$10\textsuperscript{3} $\downarrow$" in to_latex(table)


def test_headers_name_the_extractor_unless_the_caption_names_the_one_all_columns_share(study: StudyRuns) -> None:
    shared = build_tables(study, ["fid_domain", "kid_domain", "psnr"])[0]
    assert markdown_cells(to_markdown(shared))[0][2:5] == ["FID ↓", "KID ↓", "PSNR [dB] ↑"]
    assert "Generation metrics on domain features from 500 samples per run" in shared.caption
    assert shared_extractor(["fid_domain", "rfid_domain", "bpp"]) == "domain"
    assert shared_extractor(["fid_domain", "fid_inception"]) is None and shared_extractor(["psnr"]) is None
    assert metric_header("fid_inception") == "FID (inception) ↓"  # as figures label their axes
    no_features = build_tables(study, ["psnr"])[0]
    assert "Generation metrics from 500 samples" in no_features.caption


def test_a_missing_value_is_a_dash(synthetic_store) -> None:
    coverage = build_tables(load_study(synthetic_store.coverage.name, synthetic_store.tracking_uri),
                            ["fid_domain"])[0]
    assert EMPTY_CELL not in to_markdown(coverage)  # every finished row logged it
    empty = dataclasses.replace(coverage, data=coverage.data.assign(fid_domain_mean=np.nan))
    assert column(markdown_cells(to_markdown(empty))[1], empty, "fid_domain") == [EMPTY_CELL] * 3


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
        assert tex.startswith("% ") and "\\usepackage{booktabs}" in tex.splitlines()[0]
        assert f"\\label{{tab:{table.name}}}" in tex and "\\begin{tabular}{" + "l" * len(table.factors) in tex
        # `&` separates cells; everywhere else specials are escaped (a bare % would comment out the rest).
        text = "\n".join(tex.splitlines()[1:]).replace("\\label{tab:" + table.name, "")
        assert re.search(r"(?<!\\)[%_#]", text) is None
        caption = re.search(r"\\caption\{(.*)\}\n", tex)[1]
        assert re.search(r"(?<!\\)&", caption) is None
        assert r"FID $\downarrow$" in tex and r"Cond. accuracy [\%] $\uparrow$" in tex
        assert "domain\\_classifier mnist (99\\% acc)" in tex and f"{synthetic_store.NUM_SAMPLES} samples" in tex
        body = latex_body(tex)
        assert len(body) == len(table.data)
        _, md_rows = markdown_cells(to_markdown(table))
        for tex_row, md_row in zip(body, md_rows):
            assert len(tex_row) == len(md_row)
            assert [c.startswith("\\textbf{") for c in tex_row] == [c.startswith("**") for c in md_row]
            for tex_cell, md_cell in zip(tex_row, md_row):
                plain = (re.sub(r"^\\textbf\{(.*)\}$", r"\1", tex_cell).replace(r"$\pm$", "±").replace("---", "—")
                         .replace(r"$^{\approx}$", "≈").replace(r"\textsuperscript{\dag}", "†"))
                assert plain == md_cell.strip("*")


@pytest.mark.parametrize("style, environment, packages, resized", [
    ("plain", "table", "booktabs", False),
    ("resized", "table", "booktabs,graphicx", True),
    ("landscape", "sidewaystable", "booktabs,rotating", False),
])
def test_table_styles_set_the_float_and_name_their_packages(tables: dict[str, Table], style: str, environment: str,
                                                            packages: str, resized: bool) -> None:
    tex = to_latex(tables["overall"], style)
    assert tex.splitlines()[0].endswith(f"needs \\usepackage{{{packages}}}")
    assert tex.splitlines()[1] == f"\\begin{{{environment}}}" and tex.rstrip().endswith(f"\\end{{{environment}}}")
    assert ("\\resizebox" in tex) == resized


def test_captions_name_extractor_and_sample_count(synthetic_store, tables: dict[str, Table]) -> None:
    for table in tables.values():
        assert synthetic_store.EXTRACTOR_WEIGHTS in table.caption
        assert f"{synthetic_store.NUM_SAMPLES} samples per run" in table.caption
        assert "Mean ± the half-width of its 95% interval: a t-interval over the row's n seeds" in table.caption
        assert "Bold: a row significantly better than every other (paired bootstrap" in table.caption
        assert "Design: f (1, 4, 8) x schedule (cosine, linear); seeds 0, 1; n = 2 per cell." in table.caption


def test_csv_has_plain_numeric_columns(synthetic_store, tables: dict[str, Table]) -> None:
    for name, table in tables.items():
        frame = pd.read_csv(io.StringIO(to_csv(table)), dtype={"f": str, "schedule": str})
        assert list(frame.columns[: len(GROUPING[name])]) == GROUPING[name]
        assert list(frame.columns[len(GROUPING[name]):]) == [
            *(f"{m}_{s}" for m in table.metrics for s in ("mean", "std", "ci95")), "n"]
        numeric = frame.columns[len(GROUPING[name]):]
        assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in numeric)
        expected = expected_rows(synthetic_store, name)
        for _, row in frame.iterrows():
            want = expected[tuple(row[GROUPING[name]])]
            for column_name in numeric:
                assert row[column_name] == pytest.approx(want[column_name], rel=1e-9, abs=1e-12, nan_ok=True)


def test_a_value_that_rounds_to_zero_has_no_minus_sign() -> None:
    assert NumberFormat(2, 1.0).text(-0.0004) == "0.00" and NumberFormat(2, 1e3).text(-0.0004) == "-0.40"


def test_rows_of_different_evaluation_protocols_are_refused_unless_asked_for_and_then_marked(study) -> None:
    trials = study.trials.copy()
    finished = trials["state"] == "finished"
    trials.loc[finished, "tags.ldm.eval_protocol"] = np.where(trials.loc[finished, "params.autoencoder.f"] == "8",
                                                              "bbbbbbbbbbbb", "aaaaaaaaaaaa")
    mixed = dataclasses.replace(study, trials=trials)
    with pytest.raises(UserError, match=r"holds runs of 2 evaluation protocols \(aaaaaaaaaaaa, bbbbbbbbbbbb: tag "
                                        r"ldm.eval_protocol\).*allowed: one protocol, or --mixed-protocols"):
        build_tables(mixed, ["fid_domain"])
    overall = build_tables(mixed, ["fid_domain"], mixed_protocols=True)[0]
    assert overall.data["protocol"].tolist() == ["a", "a", "a", "a", "b", "b"]
    assert "Mixed evaluation protocols, not comparable across rows of different letters: a = aaaaaaaaaaaa; " \
           "b = bbbbbbbbbbbb" in overall.caption
    assert markdown_cells(to_markdown(overall))[0][:3] == ["f", "schedule", "protocol"]
    single = dataclasses.replace(study, trials=trials.assign(**{"tags.ldm.eval_protocol": "aaaaaaaaaaaa"}))
    assert "Evaluation protocol aaaaaaaaaaaa (ldm.eval_protocol)." in build_tables(single, ["fid_domain"])[0].caption
