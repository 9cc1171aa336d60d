"""`build_report`: one study's tables, figures and index, built in a temporary sibling, swapped into place, logged."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast, get_args

from ldm.errors import UserError
from ldm.io import atomic_write_text
from reports import index
from reports.figures import FigureFiles, SkippedFigure, make_figures
from reports.protocols import check_protocols
from reports.rows import RunNumbers
from reports.runs import StudyRuns, TrialState, load_study
from reports.tables import Table, build_tables, table_metrics, to_csv, to_latex, to_markdown
from reports.verdict import verdicts
from sweeps.spec import TableStyle

ReportFormat = Literal["md", "tex", "csv", "html"]
FORMATS: tuple[ReportFormat, ...] = get_args(ReportFormat)
REPORT_ARTIFACT_PATH = "report"


def table_writers(style: TableStyle) -> dict[ReportFormat, Callable[[Table], str]]:
    """Table files per format, LaTeX in `style`; HTML tables live inside index.html."""
    return {
        "md": lambda table: f"# {table.title}\n\n{to_markdown(table)}\n",
        "tex": functools.partial(to_latex, style=style),
        "csv": to_csv,
    }


@dataclass(frozen=True)
class ReportSummary:
    study: str
    folder: Path
    index: Path
    html_index: Path | None
    tables: tuple[Path, ...]
    figures: tuple[FigureFiles, ...]
    skipped: tuple[SkippedFigure, ...]
    trial_counts: dict[TrialState, int]
    overall_markdown: str
    verdicts: tuple[str, ...]


def comma_separated(text: str) -> list[str]:
    """`"md, tex"` -> ["md", "tex"] (the CLI's --format and --metrics)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def check_formats(formats: Collection[str]) -> frozenset[str]:
    allowed = ", ".join(FORMATS)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown report format(s) {', '.join(map(repr, unknown))}; allowed: {allowed}")
    if not formats:
        raise UserError(f"no report format given; allowed: {allowed}")
    return frozenset(formats)


def check_table_style(style: str | None) -> TableStyle | None:
    allowed = get_args(TableStyle)
    if style is not None and style not in allowed:
        raise UserError(f"unknown table style '{style}'; allowed: {', '.join(allowed)}")
    return cast(TableStyle | None, style)


def _write_report(study: StudyRuns, folder: Path, formats: frozenset[str], metrics: Sequence[str],
                  style: TableStyle, mixed_protocols: bool) -> ReportSummary:
    """Write every file of the report under `folder`; index.md always, index.html when asked for."""
    numbers = RunNumbers(study)  # each run's bootstrap replicates downloaded once, for the tables and the verdict
    tables = build_tables(study, metrics, mixed_protocols, numbers)
    written: list[tuple[Table, list[Path]]] = []
    for table in tables:
        paths = []
        for fmt, render in table_writers(style).items():
            if fmt in formats:
                paths.append(folder / "tables" / f"{table.name}.{fmt}")
                atomic_write_text(paths[-1], render(table))
        written.append((table, paths))
    figures = make_figures(study, folder / "figures")
    found = verdicts(study, tables[0].metrics, numbers)
    doc = index.index_document(study, written, figures, folder, datetime.now(UTC), found)
    atomic_write_text(folder / "index.md", index.render_markdown(doc))
    html_index = folder / "index.html" if "html" in formats else None
    if html_index is not None:
        atomic_write_text(html_index, index.render_html(doc))
    return ReportSummary(
        study=study.name,
        folder=folder,
        index=folder / "index.md",
        html_index=html_index,
        tables=tuple(p for _, paths in written for p in paths),
        figures=tuple(f for f in figures if isinstance(f, FigureFiles)),
        skipped=tuple(f for f in figures if isinstance(f, SkippedFigure)),
        trial_counts=study.state_counts(),
        overall_markdown=to_markdown(tables[0]),
        verdicts=tuple(v.sentence for v in found),
    )


def _relocated(summary: ReportSummary, folder: Path) -> ReportSummary:
    """The same summary with its paths under `folder` instead of the staging folder."""
    def move(path: Path) -> Path:
        return folder / path.relative_to(summary.folder)

    return dataclasses.replace(
        summary,
        folder=folder,
        index=move(summary.index),
        html_index=move(summary.html_index) if summary.html_index else None,
        tables=tuple(map(move, summary.tables)),
        figures=tuple(dataclasses.replace(f, png=move(f.png), pdf=move(f.pdf)) for f in summary.figures),
    )


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace `out` by `staging` with renames, so no reader ever sees a half-written report."""
    if not out.exists():
        staging.rename(out)
        return
    retired = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    out.rename(retired / out.name)
    staging.rename(out)
    shutil.rmtree(retired)


def build_report(study: str, out: Path, formats: Collection[str] = frozenset(FORMATS), *, tracking_uri: str,
                 metrics: Sequence[str] | None = None, table_style: str | None = None,
                 mixed_protocols: bool = False) -> ReportSummary:
    """Build the report of `study` into the folder `out` and log it to the study's parent run under `report/`.

    `metrics` (table columns) and `table_style` override the spec's `report:` section (`reports.tables`);
    `mixed_protocols` lets a table hold runs of several evaluation protocols (`reports.protocols`).
    """
    chosen = check_formats(formats)
    style = check_table_style(table_style)
    runs = load_study(study, tracking_uri)
    columns = table_metrics(runs, metrics)
    check_protocols(runs, mixed_protocols)  # before anything is written
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"report folder '{out}' is a file; give a folder path")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a report is meant to be read by others
    try:
        summary = _write_report(runs, staging, chosen, columns, style or runs.report.table_style, mixed_protocols)
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    runs.log_folder(out, REPORT_ARTIFACT_PATH)
    return _relocated(summary, out)
