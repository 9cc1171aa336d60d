"""`ldm report`: build a study's report and print where it is, plus its overall table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ldm.paths import resolve_workdir


def report(
    study: Annotated[str, typer.Argument(help="Study name (its MLflow experiment).")],
    out: Annotated[Path | None, typer.Option(help="Report folder; default <workdir>/reports/<study>.")] = None,
    format: Annotated[str, typer.Option("--format", help="Comma-separated: md, tex, csv, html.")] = "md,tex,csv,html",
    metrics: Annotated[str | None, typer.Option(
        "--metrics", help="Comma-separated table columns (metric names the study logged); default: the spec's "
        "report.metrics, else the objectives and a short set for the factors swept.")] = None,
    table_style: Annotated[str | None, typer.Option(
        "--table-style", help="LaTeX tables: plain, resized (shrunk to the line width; graphicx) or landscape "
        "(sidewaystable; rotating); default: the spec's report.table_style, else plain.")] = None,
    mixed_protocols: Annotated[bool, typer.Option(
        "--mixed-protocols", help="Tabulate runs of different evaluation protocols (tag ldm.eval_protocol) "
        "together, each row marked with its protocol; default: refused.")] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI; default the sqlite store under <workdir>/mlflow.")
    ] = None,
) -> None:
    """Paper-style tables, figures and an index (Markdown and HTML) from a study's MLflow runs."""
    from ldm.tracking.runs import resolve_tracking_uri
    from reports.build import build_report, comma_separated

    workdir = resolve_workdir()
    summary = build_report(
        study,
        out or workdir / "reports" / study,
        set(comma_separated(format)),
        tracking_uri=resolve_tracking_uri(workdir, tracking_uri),
        metrics=comma_separated(metrics) if metrics is not None else None,
        table_style=table_style,
        mixed_protocols=mixed_protocols,
    )
    typer.echo(f"Report index: {summary.index}")
    if summary.html_index is not None:
        typer.echo(f"HTML index: {summary.html_index}")
    typer.echo(f"figures: {len(summary.figures)} drawn, {len(summary.skipped)} skipped for lack of data "
               "(see the index)\n")
    for sentence in summary.verdicts:
        typer.echo(sentence)
    typer.echo("")
    typer.echo(summary.overall_markdown)


def quickstart(
    workers: Annotated[int, typer.Option("--workers", min=1, help="Local worker processes (default: one per "
                                         "core, at most 2).")] = min(2, os.cpu_count() or 1),
) -> None:
    """The main job: run the shipped `quickstart` sweep (or resume it), then build its report."""
    from sweeps import cli as sweep_cli

    sweep_cli.run("quickstart", workers=workers)
    typer.echo("")
    report("quickstart")
    typer.echo("\nOpen the runs in the MLflow UI with: ldm ui")
