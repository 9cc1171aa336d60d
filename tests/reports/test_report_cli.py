"""reports/cli.py: the `report` command as the lead mounts it (`ldm report`)."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from ldm.errors import UserError
from reports.cli import report


def invoke(args: list[str]):
    app = typer.Typer()
    app.command()(report)
    return CliRunner().invoke(app, args)


def test_report_prints_the_index_and_the_overall_table(synthetic_store, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LDM_WORKDIR", str(tmp_path))
    result = invoke([synthetic_store.SPARSE_STUDY, "--tracking-uri", synthetic_store.tracking_uri,
                     "--format", "md, html"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "reports" / synthetic_store.SPARSE_STUDY  # the default: <workdir>/reports/<study>
    assert f"Report index: {folder / 'index.md'}" in result.output
    assert f"HTML index: {folder / 'index.html'}" in result.output
    assert "figures: 1 drawn, 7 skipped for lack of data" in result.output
    assert "| c | FID ↓ | PSNR [dB] ↑ | n |" in result.output
    assert sorted(p.name for p in (folder / "tables").iterdir()) == ["ablation_c.md", "overall.md"]


def test_report_rejects_an_unknown_format(synthetic_store, tmp_path) -> None:
    result = invoke([synthetic_store.SPARSE_STUDY, "--tracking-uri", synthetic_store.tracking_uri,
                     "--out", str(tmp_path / "r"), "--format", "md,docx"])
    assert isinstance(result.exception, UserError)
    assert "'docx'" in str(result.exception) and "allowed: md, tex, csv, html" in str(result.exception)


def test_report_without_a_store_says_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LDM_WORKDIR", str(tmp_path))
    result = invoke(["any-study"])
    assert isinstance(result.exception, UserError)
    assert f"no MLflow store at sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}" in str(result.exception)
    assert not (tmp_path / "mlflow").exists() and not (tmp_path / "reports").exists()


def test_metrics_choose_the_columns(synthetic_store, tmp_path) -> None:
    result = invoke([synthetic_store.SPARSE_STUDY, "--tracking-uri", synthetic_store.tracking_uri,
                     "--out", str(tmp_path / "r"), "--format", "md", "--metrics", "val_loss, psnr"])
    assert result.exit_code == 0, result.output
    assert "| c | Val. loss ↓ | PSNR [dB] ↑ | n |" in result.output


def test_a_metric_the_study_did_not_log_is_one_line_naming_what_it_logged(synthetic_store, tmp_path) -> None:
    result = invoke([synthetic_store.SPARSE_STUDY, "--tracking-uri", synthetic_store.tracking_uri,
                     "--out", str(tmp_path / "r"), "--metrics", "fid_domain,kid_domain"])
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == (f"--metrics: 'kid_domain' not logged by study '{synthetic_store.SPARSE_STUDY}'; "
                                     "allowed: fid_domain, psnr, val_loss")
    assert not (tmp_path / "r").exists()


def test_an_unknown_table_style_names_the_allowed_ones(synthetic_store, tmp_path) -> None:
    result = invoke([synthetic_store.SPARSE_STUDY, "--tracking-uri", synthetic_store.tracking_uri,
                     "--out", str(tmp_path / "r"), "--table-style", "wide"])
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == "unknown table style 'wide'; allowed: plain, resized, landscape"
