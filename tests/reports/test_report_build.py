"""reports/build.py and reports/index.py: the report folder, its index, atomic rebuilds and the logged artifacts."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from ldm.errors import UserError
from reports import build as build_module
from reports.build import build_report
from reports.figures import FIGURES
from reports.runs import TRIAL_STATES


def linked_files(summary) -> list[Path]:
    return [*summary.tables, *(p for f in summary.figures for p in (f.png, f.pdf))]


def test_index_states_study_spec_commit_hardware_and_sample_counts(synthetic_store, full_report) -> None:
    md = full_report.index.read_text()
    s = synthetic_store
    for text in (f"# Report: {s.FULL_STUDY}", f"Code commit: {s.GIT_COMMIT}", f"Hardware: {s.DEVICE}",
                 "| spec.sampler | grid |", s.SPEC_YAML.strip(), s.EXTRACTOR_WEIGHTS,
                 "12 finished, 1 failed, 1 pruned, 1 running trials",
                 "Swept factors: f (autoencoder.f): 1, 4, 8; schedule (diffusion.schedule): cosine, linear",
                 f"| fid_domain | FID (domain) | {s.NUM_SAMPLES} | 12 |",
                 f"| g3.0/cond_accuracy | Cond. accuracy | {s.NUM_SAMPLES} | 12 |",
                 "| psnr | PSNR | not sample-based | 12 |",
                 "reference split: test", "intermediate FID curves use 200 samples per point",
                 "All 12 grid points have a finished trial.", "No duplicate trials."):
        assert text in md, text
    assert re.search(r"Report generated: \d{4}-\d\d-\d\d \d\d:\d\d UTC", md)
    assert "diffusion/loss" not in md  # training curves are not report metrics


def test_failed_pruned_and_running_trials_are_listed(synthetic_store, full_report) -> None:
    md = full_report.index.read_text()
    page = full_report.html_index.read_text()
    s = synthetic_store
    md_reason = s.FAIL_REASON.replace("<", "\\<")  # escaped, or Markdown would read an HTML tag
    assert f"| 12 | failed | f=8, schedule=cosine | 2 | {md_reason} |" in md
    assert f"| 13 | pruned | f=1, schedule=linear | 2 | {s.PRUNE_REASON} |" in md
    assert "| 14 | running | f=4, schedule=linear | 2 |" in md
    assert html.escape(s.FAIL_REASON) in page and html.escape(s.PRUNE_REASON) in page
    assert full_report.trial_counts == {**dict.fromkeys(TRIAL_STATES, 0), "finished": 12, "failed": 1, "pruned": 1,
                                        "running": 1}


def test_report_works_while_the_study_runs(synthetic_store, full_report) -> None:
    client = MlflowClient(synthetic_store.tracking_uri)
    assert client.get_run(synthetic_store.parent_run_ids[synthetic_store.FULL_STUDY]).info.status == "RUNNING"
    assert client.get_run(synthetic_store.other_run_ids["running"]).info.status == "RUNNING"
    assert "status RUNNING" in full_report.index.read_text()
    overall = pd.read_csv(full_report.folder / "tables" / "overall.csv")
    assert overall["n"].sum() == 12  # the running (and failed, pruned) trials are not aggregated
    assert overall["fid_domain_mean"].max() < synthetic_store.LEAKED / 10


def test_index_links_every_table_and_figure(full_report) -> None:
    md = full_report.index.read_text()
    page = full_report.html_index.read_text()
    assert len(full_report.tables) == 3 * 3  # overall + two ablations, each as md, tex and csv
    for path in linked_files(full_report):
        assert path.is_file() and path.stat().st_size > 0
        relative = path.relative_to(full_report.folder).as_posix()
        assert f"]({relative})" in md and f'href="{relative}"' in page


def test_html_index_is_self_contained(full_report) -> None:
    page = full_report.html_index.read_text()
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) == len(full_report.figures)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            assert image.format == "PNG"
    assert "<script" not in page and "<link" not in page
    assert page.count("<table>") >= 3 and "<b>" in page  # the three metric tables, best cells in bold


def test_report_folder_is_logged_to_the_parent_run(synthetic_store, full_report) -> None:
    client = MlflowClient(synthetic_store.tracking_uri)
    parent = synthetic_store.parent_run_ids[synthetic_store.FULL_STUDY]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/index.md", "report/index.html", "report/tables", "report/figures"} <= logged
    tables = {Path(a.path).name for a in client.list_artifacts(parent, "report/tables")}
    assert tables == {p.name for p in full_report.tables}
    figures = {Path(a.path).name for a in client.list_artifacts(parent, "report/figures")}
    assert figures == {p.name for f in full_report.figures for p in (f.png, f.pdf)}


def test_rebuild_replaces_the_folder_and_leaves_no_temporaries(synthetic_store, tmp_path) -> None:
    out = tmp_path / "report"
    build_report(synthetic_store.SPARSE_STUDY, out, {"md", "html"}, tracking_uri=synthetic_store.tracking_uri)
    (out / "stale.txt").write_text("from an older build")
    summary = build_report(synthetic_store.SPARSE_STUDY, out, {"csv"}, tracking_uri=synthetic_store.tracking_uri)
    assert not (out / "stale.txt").exists() and not (out / "index.html").exists()
    assert summary.html_index is None and summary.index == out / "index.md" and summary.index.is_file()
    assert sorted(p.name for p in summary.tables) == ["ablation_c.csv", "overall.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_failed_build_keeps_the_previous_report(synthetic_store, tmp_path, monkeypatch) -> None:
    out = tmp_path / "report"
    build_report(synthetic_store.SPARSE_STUDY, out, {"md"}, tracking_uri=synthetic_store.tracking_uri)
    before = (out / "index.md").read_text()

    def broken_figures(*args: object) -> None:
        raise RuntimeError("figure backend exploded")

    monkeypatch.setattr(build_module, "make_figures", broken_figures)
    with pytest.raises(RuntimeError, match="exploded"):
        build_report(synthetic_store.SPARSE_STUDY, out, {"md"}, tracking_uri=synthetic_store.tracking_uri)
    assert (out / "index.md").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_study_without_trials_still_gets_an_index(synthetic_store, tmp_path) -> None:
    summary = build_report(synthetic_store.EMPTY_STUDY, tmp_path / "r", tracking_uri=synthetic_store.tracking_uri)
    md = summary.index.read_text()
    assert "- 0 finished trials;" in md and "No trials running." in md  # states without trials are left out
    assert "Not a grid study" in md
    assert summary.figures == () and len(summary.skipped) == len(FIGURES)


def test_study_where_every_trial_failed_reports_its_grid_and_each_failed_point(synthetic_store, tmp_path) -> None:
    s = synthetic_store
    summary = build_report(s.FAILED_STUDY, tmp_path / "r", tracking_uri=s.tracking_uri)
    md = summary.index.read_text()
    assert "Swept factors: f (autoencoder.f): 1, 4; c (autoencoder.latent_channels): 3, 4" in md
    reason = s.FAIL_REASON.replace("<", "\\<")
    points = [(f, c) for f in (1, 4) for c in (3, 4)]
    for number, (f, c) in enumerate(points):
        assert f"| {number} | failed | f={f}, c={c} | 0 | {reason} |" in md
    assert "all runs" not in md
    assert "4 of 4 grid points missing (no finished trial): f=1, c=3, seed 0; f=1, c=4, seed 0;" in md
    assert summary.trial_counts == {**dict.fromkeys(TRIAL_STATES, 0), "failed": 4}


def test_unknown_format_names_the_allowed_ones(synthetic_store, tmp_path) -> None:
    with pytest.raises(UserError) as err:
        build_report(synthetic_store.FULL_STUDY, tmp_path / "r", {"md", "pdf"},
                     tracking_uri=synthetic_store.tracking_uri)
    assert "unknown report format(s) 'pdf'; allowed: md, tex, csv, html" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_unknown_study_names_the_existing_ones(synthetic_store, tmp_path) -> None:
    with pytest.raises(UserError) as err:
        build_report("ghost", tmp_path / "r", tracking_uri=synthetic_store.tracking_uri)
    assert "unknown study 'ghost'" in str(err.value) and synthetic_store.FULL_STUDY in str(err.value)
    assert not list(tmp_path.iterdir())


def test_output_path_that_is_a_file_is_refused(synthetic_store, tmp_path) -> None:
    target = tmp_path / "report"
    target.write_text("not a folder")
    with pytest.raises(UserError, match="is a file"):
        build_report(synthetic_store.SPARSE_STUDY, target, tracking_uri=synthetic_store.tracking_uri)
    assert target.read_text() == "not a folder"


def test_index_lists_duplicates_missing_points_and_trials_stopped_by_their_worker(synthetic_store,
                                                                                   coverage_report) -> None:
    md = coverage_report.index.read_text()
    c = synthetic_store.coverage
    assert "4 finished, 1 duplicate, 1 interrupted, 1 worker_died, 1 killed trials" in md
    assert "2 of 6 grid points missing (no finished trial): f=8, seed 0; f=4, seed 1" in md
    assert "| trial | duplicate of | configuration | seed |\n| --- | --- | --- | --- |\n| 2 | 3 | f=4 | 0 |" in md
    assert f"| 4 | worker_died | f=4 | 1 | {c.WORKER_DIED_REASON} |" in md
    assert f"| 5 | interrupted | f=8 | 0 | {c.INTERRUPTED_REASON} |" in md
    assert "| 7 | killed | f=1 | 0 | not recorded |" in md
    assert "| pruned |" not in md  # no trial of this study was pruned, although four are KILLED


def test_a_duplicate_is_not_a_seed_replicate(synthetic_store, coverage_report) -> None:
    overall = pd.read_csv(coverage_report.folder / "tables" / "overall.csv").set_index("f")
    fids = {number: trial[3] for number, trial in synthetic_store.coverage.TRIALS.items()}
    assert overall["n"].to_dict() == {1: 2, 4: 1, 8: 1}
    assert overall.loc[4, "fid_domain_mean"] == fids[3]  # the earliest finished of the two, not their mean
    assert pd.isna(overall.loc[4, "fid_domain_std"])
    assert overall.loc[1, "fid_domain_mean"] == (fids[0] + fids[1]) / 2


def test_the_spec_report_section_styles_the_tables_and_the_table_style_option_overrides_it(
        synthetic_store, coverage_report, tmp_path) -> None:
    tex = (coverage_report.folder / "tables" / "overall.tex").read_text()
    assert "\\resizebox" in tex and "\\usepackage{booktabs,graphicx}" in tex  # report: {table_style: resized}
    assert "4 & \\textbf{20.0} & 1" in tex  # report: {formats: {fid_domain: {decimals: 1}}}
    plain = build_report(synthetic_store.coverage.name, tmp_path / "r", {"tex"}, table_style="plain",
                         tracking_uri=synthetic_store.tracking_uri)
    assert "\\resizebox" not in (plain.folder / "tables" / "overall.tex").read_text()
