"""The report index as a small document, rendered to Markdown and to self-contained HTML (figures inlined)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from evaluation.metric_catalog import CATALOG, metric_label
from ldm.tracking import Tag
from reports import tables as tbl
from reports.figures import FigureFiles, FigureResult, SkippedFigure
from reports.design import SEED_PARAM
from reports.verdict import FactorVerdict
from reports.runs import (
    DUPLICATE_OF,
    StudyRuns,
    TrialState,
    catalog_base,
    column_or_missing,
    configuration_label,
    factor_label,
    param_column,
    tag_column,
)

# Metrics computed from `ldm.num_samples` generated images (directly or in a g<scale>/ddim<K> variant).
_SAMPLE_BASED = re.compile(r"^(fid|fdinf|kid|is|precision|recall)_|^cond_accuracy$")
# Trials that ended without a result, listed with their reason: every state but finished, duplicate and running.
STOPPED_STATES: tuple[TrialState, ...] = ("failed", "pruned", "interrupted", "worker_died", "killed")


@dataclass(frozen=True)
class Link:
    text: str
    href: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Grid:
    """A plain-text table (escaped by each renderer)."""

    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class TableView:
    table: tbl.Table
    links: tuple[Link, ...]


@dataclass(frozen=True)
class FigureView:
    figure: FigureFiles
    links: tuple[Link, ...]


Block = Paragraph | Bullets | Code | Grid | TableView | FigureView


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Document:
    title: str
    sections: tuple[Section, ...]


# ---------------------------------------------------------------- content


def _joined(values: Sequence[str]) -> str:
    return ", ".join(values) or "not recorded"


def _file_links(root: Path, paths: Sequence[Path]) -> tuple[Link, ...]:
    return tuple(Link(p.suffix.lstrip("."), p.relative_to(root).as_posix()) for p in paths)


def _overview(study: StudyRuns, generated: datetime) -> Section:
    counts = study.state_counts()
    started = study.parent["start_time"]
    factors = [f"{factor_label(f)} ({f}): {', '.join(study.levels[f])}" for f in study.factors]
    return Section("Overview", (Bullets((
        f"Study: {study.name} (parent run {study.parent['run_id']}, status {study.parent['status']})",
        f"Report generated: {generated:%Y-%m-%d %H:%M} UTC; study started: {started:%Y-%m-%d %H:%M} UTC",
        f"Code commit: {_joined(study.tag_values(Tag.GIT_COMMIT))}",
        f"Hardware: {_joined(study.tag_values(Tag.DEVICE))}; torch {_joined(study.tag_values(Tag.TORCH_VERSION))}",
        f"{', '.join(f'{n} {state}' for state, n in counts.items() if n or state == 'finished')} trials; "
        "only finished trials enter tables and figures, one per configuration and seed",
        f"Swept factors: {'; '.join(factors) or 'none (one configuration)'}",
        tbl.study_design_note(study),
    )),))


def _spec(study: StudyRuns) -> Section:
    params = study.parent_params()
    blocks: list[Block] = [Grid(("parameter", "value"), tuple(sorted(params.items())))] if params else []
    if study.spec_yaml is not None:
        blocks += [Paragraph("spec.yaml of the parent run:"), Code(study.spec_yaml)]
    return Section("Study spec", tuple(blocks) or (Paragraph("The parent run records no spec."),))


def _distinct(values: pd.Series) -> str:
    return _joined(list(dict.fromkeys(values.dropna().astype(str))))


def _sample_counts(study: StudyRuns) -> Section:
    finished = study.finished
    samples_tag = column_or_missing(finished, tag_column(Tag.NUM_SAMPLES))
    rows = []
    for name in study.metric_names():
        base = catalog_base(name)
        if base is None:  # training curves (diffusion/loss, ae/lr, ...) are not report metrics
            continue
        logged = study.metric(name).notna()
        samples = _distinct(samples_tag[logged]) if _SAMPLE_BASED.match(base) else "not sample-based"
        rows.append((name, CATALOG[base].label, samples, str(int(logged.sum()))))
    def params(name: str) -> str:
        return _distinct(column_or_missing(finished, param_column(name)))

    notes = (f"Generated samples per run behind each final metric (tag {Tag.NUM_SAMPLES}); feature extractor: "
             f"{_joined(study.tag_values(Tag.EXTRACTOR_WEIGHTS))}; reference split: "
             f"{params('evaluation.reference_split')}; intermediate FID curves use "
             f"{params('evaluation.fid_every_samples')} samples per point.")
    return Section("Sample counts", (Paragraph(notes),
                                     Grid(("metric", "label", "samples per run", "finished runs"), tuple(rows))))


def _text(trial: pd.Series, column: str, missing: str) -> str:
    value = trial.get(column)
    return value if isinstance(value, str) else missing


def _config(study: StudyRuns, trial: pd.Series) -> str:
    return configuration_label({f: trial[param_column(f)] for f in study.factors})


def _trial_row(study: StudyRuns, trial: pd.Series) -> tuple[str, ...]:
    return (_text(trial, tag_column(Tag.TRIAL_NUMBER), "?"), trial["state"], _config(study, trial),
            _text(trial, param_column(SEED_PARAM), "?"), _text(trial, tag_column(Tag.FAIL_REASON), "not recorded"))


def _trials(study: StudyRuns) -> Section:
    head = ("trial", "state", "configuration", "seed", "reason")
    stopped = tuple(_trial_row(study, t) for _, t in study.trials.iterrows() if t["state"] in STOPPED_STATES)
    running = tuple(_trial_row(study, t)[:4] for _, t in study.in_state("running").iterrows())
    return Section("Trials without a result", (
        Grid(head, stopped) if stopped else Paragraph("No failed, pruned, interrupted or killed trials."),
        Grid(head[:4], running) if running else Paragraph("No trials running."),
    ))


def _point_label(point: dict[str, str]) -> str:
    seed = point[SEED_PARAM]
    config = {f: v for f, v in point.items() if f != SEED_PARAM}
    return f"{configuration_label(config)}, seed {seed}" if config else f"seed {seed}"


def _coverage(study: StudyRuns) -> Section:
    """Which grid points have a result, and which finished trials repeat one (kept out of the aggregates)."""
    points, missing = study.grid_points(), study.missing_points()
    if not points:
        grid: Block = Paragraph("Not a grid study: there is no fixed set of points to cover.")
    elif missing:
        grid = Paragraph(f"{len(missing)} of {len(points)} grid points missing (no finished trial): "
                         + "; ".join(map(_point_label, missing)))
    else:
        grid = Paragraph(f"All {len(points)} grid points have a finished trial.")
    duplicates = tuple((_text(t, tag_column(Tag.TRIAL_NUMBER), "?"), _text(t, DUPLICATE_OF, "?"), _config(study, t),
                        _text(t, param_column(SEED_PARAM), "?")) for _, t in study.in_state("duplicate").iterrows())
    listed: tuple[Block, ...] = (Paragraph(
        f"Duplicates ({len(duplicates)}) repeat a configuration and seed that finished earlier; only the "
        "earliest finished trial enters tables and figures, so a duplicate never counts as a seed replicate:"),
        Grid(("trial", "duplicate of", "configuration", "seed"), duplicates)) if duplicates else (
        Paragraph("No duplicate trials."),)
    return Section("Grid coverage and duplicates", (grid, *listed))


def _figures(root: Path, figures: Sequence[FigureResult]) -> Section:
    drawn: list[Block] = [FigureView(f, _file_links(root, (f.png, f.pdf))) for f in figures
                          if isinstance(f, FigureFiles)]
    skipped = tuple(f"{f.title} ({f.name}): skipped, {f.reason}" for f in figures if isinstance(f, SkippedFigure))
    return Section("Figures", (*drawn, *([Bullets(skipped)] if skipped else [])))


def _verdict(found: Sequence[FactorVerdict]) -> Section:
    if not found:
        return Section("Verdict", (Paragraph("No factor has two levels with finished runs to compare."),))
    how = ("Each swept factor's levels against its baseline (the spec's report.baseline, else the best mean) on "
           f"{metric_label(found[0].metric)}: paired bootstrap of the difference over seeds and shared samples, "
           "95% intervals, p Holm-adjusted over the factor's comparisons.")
    return Section("Verdict", (Bullets(tuple(v.sentence for v in found)), Paragraph(how)))


def index_document(study: StudyRuns, tables: Sequence[tuple[tbl.Table, Sequence[Path]]],
                   figures: Sequence[FigureResult], root: Path, generated: datetime,
                   verdicts: Sequence[FactorVerdict] = ()) -> Document:
    """Everything a reader needs to trust the numbers, with links to every table and figure file under `root`."""
    table_views = tuple(TableView(t, _file_links(root, files)) for t, files in tables)
    return Document(f"Report: {study.name}", (
        _verdict(verdicts),
        _overview(study, generated),
        _spec(study),
        _sample_counts(study),
        Section("Tables", table_views),
        _figures(root, figures),
        _coverage(study),
        _trials(study),
    ))


# ---------------------------------------------------------------- Markdown


def _md_links(links: Sequence[Link]) -> str:
    return " · ".join(f"[{link.text}]({link.href})" for link in links)


def _md_block(block: Block) -> str:
    match block:
        case Paragraph(text):
            return tbl.MARKDOWN.escape(text)
        case Bullets(items):
            return "\n".join(f"- {tbl.MARKDOWN.escape(item)}" for item in items)
        case Code(text):
            return f"```yaml\n{text.rstrip()}\n```"
        case Grid(head, rows):
            esc = tbl.MARKDOWN.escape
            return tbl.markdown_grid([esc(h) for h in head], [[esc(c) for c in r] for r in rows])
        case TableView(table, links):
            return f"### {table.title}\n\n{_md_links(links)}\n\n{tbl.to_markdown(table)}"
        case FigureView(figure, links):
            return (f"### {figure.title}\n\n![{figure.title}]({links[0].href})\n\n"
                    f"*{tbl.MARKDOWN.escape(figure.caption)}*\n\n{_md_links(links)}")
    raise TypeError(block)


def render_markdown(doc: Document) -> str:
    parts = [f"# {doc.title}"]
    for section in doc.sections:
        parts.append(f"## {section.title}")
        parts += [_md_block(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- HTML

_STYLE = """
body { font-family: sans-serif; max-width: 80em; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-top: 1px solid #bbb; border-bottom: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { caption-side: bottom; font-style: italic; text-align: left; padding-top: 0.4em; }
img { max-width: 100%; }
pre { background: #f4f4f4; padding: 0.8em; overflow-x: auto; }
"""


def _html_links(links: Sequence[Link]) -> str:
    anchors = (f'<a href="{html.escape(link.href)}">{html.escape(link.text)}</a>' for link in links)
    return "<p>" + " · ".join(anchors) + "</p>"


def _html_block(block: Block) -> str:
    match block:
        case Paragraph(text):
            return f"<p>{html.escape(text)}</p>"
        case Bullets(items):
            return "<ul>\n" + "\n".join(f"<li>{html.escape(item)}</li>" for item in items) + "\n</ul>"
        case Code(text):
            return f"<pre><code>{html.escape(text)}</code></pre>"
        case Grid(head, rows):
            esc = tbl.HTML.escape
            return tbl.html_grid([esc(h) for h in head], [[esc(c) for c in r] for r in rows])
        case TableView(table, links):
            return f"<h3>{html.escape(table.title)}</h3>\n{_html_links(links)}\n{tbl.to_html(table)}"
        case FigureView(figure, links):
            png = base64.b64encode(figure.png.read_bytes()).decode("ascii")
            return (f"<h3>{html.escape(figure.title)}</h3>\n<img alt=\"{html.escape(figure.title)}\" "
                    f"src=\"data:image/png;base64,{png}\">\n<p><i>{html.escape(figure.caption)}</i></p>\n"
                    f"{_html_links(links)}")
    raise TypeError(block)


def render_html(doc: Document) -> str:
    """One HTML file that shows everything on its own: figures are inlined as base64 PNG."""
    body = [f"<h1>{html.escape(doc.title)}</h1>"]
    for section in doc.sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(b) for b in section.blocks]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(doc.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
