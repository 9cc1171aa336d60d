"""Ablation and overall tables (mean ± std per configuration), rendered as LaTeX, Markdown, HTML and CSV."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np
import pandas as pd

from evaluation.metric_catalog import metric_info, metric_label
from ldm.config import ExtractorName
from ldm.errors import UserError
from ldm.tracking import Tag
from reports.balance import design_note, layout
from reports.protocols import check_protocols, protocol_note, row_protocols
from reports.rows import Mark, RunNumbers, arm, cell, column_marks, row_labels
from reports.runs import (
    StudyRuns,
    catalog_base,
    column_or_missing,
    factor_label,
    metric_column,
    ordered_values,
    param_column,
)
from sweeps.spec import MetricFormat, TableStyle

EXTRACTORS: tuple[str, ...] = get_args(ExtractorName)
# Factors whose effect the default columns show beyond FID and KID: the first stage's rate and distortion, the
# conditioning's accuracy.
FIRST_STAGE_PREFIX = "autoencoder."
FIRST_STAGE_METRICS = ("psnr", "bpp")
CONDITIONING_FACTORS = frozenset({"diffusion.conditioning", "diffusion.sampling.guidance_scale"})
EMPTY_CELL = "–"  # no finished run of the row logged the metric
PROTOCOL_COLUMN = "protocol"  # with --mixed-protocols: each row's evaluation protocol letters
ONE_RUN_MARK = "†"  # the interval of a row of one run: its bootstrap over samples
TIE_MARK = "≈"  # not significantly worse than the column's best
WITHHELD_CELL = "—"  # only identity-first-stage runs, whose value is fixed by construction
IDENTITY_NOTE = ("— identity first stage (f = 1): no reconstruction loss; its values of {metrics} are fixed by "
                 "construction, not results, and enter no mean and no best.")


@dataclass(frozen=True)
class NumberFormat:
    """A column's number format: `value * scale` with `decimals` digits, the same in every cell."""

    decimals: int
    scale: float

    def text(self, value: float) -> str:
        text = f"{value * self.scale:.{self.decimals}f}"
        return text.removeprefix("-") if float(text) == 0 else text  # no "-0.00"


def number_format(metric: str, overrides: Mapping[str, MetricFormat]) -> NumberFormat:
    """The catalog's format of a metric (a variant's is its base's), with the spec's `report.formats` over it."""
    info = metric_info(metric)
    override = overrides.get(info.name, MetricFormat())
    return NumberFormat(info.decimals if override.decimals is None else override.decimals,
                        info.scale if override.scale is None else override.scale)


@dataclass(frozen=True)
class Table:
    """`data` holds one row per table row: factor columns (param names), `<metric>_mean`, `<metric>_std` (over the
    row's units), `<metric>_ci95` (the half-width of its 95% interval) and `<metric>_interval` (`t` over seeds,
    `bootstrap` over one run's samples, or empty), and `n` (the row's units, seeds).

    `identity_rows` marks the rows all of whose runs had the identity first stage; `marks` per metric and row:
    `best` (bold), `tie` (not told apart from the best) or empty; `notes` go under the table.
    """

    name: str
    title: str
    caption: str
    factors: tuple[str, ...]
    metrics: tuple[str, ...]
    data: pd.DataFrame
    formats: Mapping[str, NumberFormat]
    identity_rows: pd.Series
    marks: Mapping[str, Sequence[Mark]]
    notes: tuple[str, ...]


def aggregate(finished: pd.DataFrame, factors: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and run count `n` per distinct combination of `factors`, rows in value order.

    A run that did not log a metric counts in `n` but not in that metric's mean.
    """
    keys = pd.DataFrame({f: finished[param_column(f)] for f in factors}, index=finished.index)
    values = pd.DataFrame({m: pd.to_numeric(column_or_missing(finished, metric_column(m)), errors="coerce")
                           for m in metrics}, index=finished.index)
    frame = pd.concat([keys, values], axis=1)
    if factors:
        groups = frame.groupby(list(factors), sort=False, dropna=False)
    else:
        groups = [((), frame)] if len(frame) else []
    rows = []
    for key, group in groups:
        row: dict[str, object] = dict(zip(factors, key))
        for m in metrics:
            row[f"{m}_mean"] = group[m].mean()
            row[f"{m}_std"] = group[m].std(ddof=1)
        row["n"] = len(group)
        rows.append(row)
    columns = [*factors, *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), "n"]
    data = pd.DataFrame(rows, columns=columns)
    if factors:
        rank = {f: {v: i for i, v in enumerate(ordered_values(data[f]))} for f in factors}
        data = data.sort_values(list(factors), key=lambda col: col.map(rank[col.name]), ignore_index=True)
    return data


def shared_extractor(metrics: Sequence[str]) -> str | None:
    """The one feature extractor of a table's sample-based columns, which the caption then names for all of them (so
    that headers stay short); None where they have several or none."""
    extractors = {metric_info(m).extractor for m in metrics} - {None}
    return extractors.pop() if len(extractors) == 1 else None


def evaluation_note(study: StudyRuns, metrics: Sequence[str]) -> str:
    """Where the numbers come from: what a cell is, the marks, sample count and feature extractor."""
    samples = ", ".join(study.tag_values(Tag.NUM_SAMPLES)) or "an unrecorded number of"
    weights = ", ".join(study.tag_values(Tag.EXTRACTOR_WEIGHTS)) or "not recorded"
    extractor = shared_extractor(metrics)
    features = f" on {extractor} features" if extractor else ""
    return (f"Mean ± the half-width of its 95% interval: a t-interval over the row's n seeds, or for a row of one "
            f"run (†) half its bootstrap interval over samples. Bold: a row significantly better than every other "
            f"(paired bootstrap of the differences, Holm-corrected over the column, p < 0.05); ≈: the best mean and "
            f"the rows it is not significantly better than, where no row is bold. Generation metrics{features} "
            f"from {samples} samples per run; feature extractor: {weights}.")


def default_metrics(study: StudyRuns) -> tuple[str, ...]:
    """The objectives, FID, FD∞ and KID of the first extractor logged, PSNR and rate where a first-stage field was
    swept and conditioning accuracy where the conditioning was: few enough columns for a table at text width."""
    logged = set(study.metric_names())
    wanted = list(study.objectives)
    extractor = next((e for e in EXTRACTORS if f"fid_{e}" in logged), None)
    if extractor is not None:
        wanted += [f"fid_{extractor}", f"fdinf_{extractor}", f"kid_{extractor}"]
    if any(f.startswith(FIRST_STAGE_PREFIX) for f in study.factors):
        wanted += FIRST_STAGE_METRICS
    if CONDITIONING_FACTORS & set(study.factors):
        wanted.append("cond_accuracy")
    return tuple(m for m in dict.fromkeys(wanted) if m in logged)


def table_metrics(study: StudyRuns, requested: Sequence[str] | None = None) -> tuple[str, ...]:
    """The columns: `requested` (`ldm report --metrics`), all of which the study must have logged; else the spec's
    `report.metrics` that it logged (a failed or running study may lack some); else `default_metrics`."""
    if requested is None:
        chosen = study.report.metrics
        return default_metrics(study) if chosen is None else tuple(m for m in chosen if m in study.metric_names())
    logged = [m for m in study.metric_names() if catalog_base(m) is not None]
    unknown = [m for m in requested if m not in logged]
    if unknown or not requested:
        named = f"{', '.join(map(repr, unknown))} not logged by study '{study.name}'" if unknown else "none given"
        raise UserError(f"--metrics: {named}; allowed: {', '.join(logged) or 'none (no finished trial logged any)'}")
    return tuple(dict.fromkeys(requested))


def identity_note(study: StudyRuns, metrics: Sequence[str]) -> tuple[str, ...]:
    """The footnote on the identity first stage, where the study has one and the table a value it fixes."""
    fixed = [metric_info(m).label for m in metrics if metric_info(m).fixed_at_identity]
    if not fixed or not study.identity_first_stage().any():
        return ()
    return (IDENTITY_NOTE.format(metrics=", ".join(dict.fromkeys(fixed))),)


def study_design_note(study: StudyRuns) -> str:
    """The design in words (`reports.balance.design_note`) from the study's finished runs per configuration."""
    return design_note(study.factors, study.levels, aggregate(study.finished, study.factors, ()), study.grid_seeds)


def build_tables(study: StudyRuns, metrics: Sequence[str] | None = None, mixed_protocols: bool = False,
                 numbers: RunNumbers | None = None) -> list[Table]:
    """The overall table (rows = configurations) and one ablation table per swept factor.

    `metrics` are the columns (default `table_metrics(study)`). Values the identity first stage fixes by
    construction are left out of the means: a row of only f = 1 runs shows them as withheld. `numbers` reads the
    runs' values and bootstrap replicates (one is made when not given; a report shares one with its verdict).
    """
    columns = table_metrics(study) if metrics is None else tuple(metrics)
    identity = study.identity_run_ids()
    formats = {m: number_format(m, study.report.formats) for m in columns}
    notes = identity_note(study, columns)
    numbers = numbers or RunNumbers(study)
    protocols = check_protocols(study, mixed_protocols)
    mixed = len(set(protocols.values())) > 1
    caption_note = f"{evaluation_note(study, columns)} {protocol_note(protocols)}".rstrip()
    design = study_design_note(study)

    def table(name: str, title: str, caption: str, row_factors: tuple[str, ...]) -> Table:
        rows = layout(study.finished, study.factors, row_factors)
        labels = row_labels(rows)
        data = pd.DataFrame({f: [row.key[i] for row in rows.rows] for i, f in enumerate(row_factors)})
        marks: dict[str, list[Mark]] = {}
        for m in columns:
            masked = identity if metric_info(m).fixed_at_identity else frozenset()
            arms = {i: a for i, row in enumerate(rows.rows) if (a := arm(row, m, numbers, masked)) is not None}
            cells = [cell(arms.get(i), row, m, numbers) for i, row in enumerate(rows.rows)]
            data[f"{m}_mean"] = [c.mean for c in cells]
            data[f"{m}_std"] = [float(np.std(arms[i].values, ddof=1)) if i in arms and len(arms[i].values) > 1
                                else np.nan for i in range(len(rows.rows))]
            data[f"{m}_ci95"] = [np.nan if c.half_width is None else c.half_width for c in cells]
            data[f"{m}_interval"] = [c.interval for c in cells]
            marks[m] = column_marks(arms, m, labels, len(rows.rows))
        data["n"] = [len(row.seeds) for row in rows.rows]
        labels_columns = row_factors
        if mixed:  # rows of different letters are not comparable: say which is which
            data.insert(len(row_factors), PROTOCOL_COLUMN,
                        row_protocols(protocols, [row.all_runs for row in rows.rows]))
            labels_columns = (*row_factors, PROTOCOL_COLUMN)
        identity_rows = pd.Series([bool(row.all_runs) and identity.issuperset(row.all_runs) for row in rows.rows])
        return Table(name, title, f"{caption} {design} {rows.note()}. {caption_note}", labels_columns, columns,
                     data, formats, identity_rows, marks, notes)

    overall = table("overall", "All configurations", f"Study {study.name}: all configurations.", study.factors)
    ablations = [
        table(f"ablation_{re.sub(r'[^A-Za-z0-9]+', '_', factor_label(f))}", f"Ablation over {factor_label(f)}",
              f"Study {study.name}: ablation over {factor_label(f)}.", (f,))
        for f in study.factors
    ]
    return [overall, *ablations]


# ---------------------------------------------------------------- cells

_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def scale_text(scale: float) -> str:
    """` ×10³` for a power of ten, ` ×2.5` for another factor, nothing for 1."""
    if scale == 1:
        return ""
    exponent = math.log10(scale)
    return f" ×10{str(round(exponent)).translate(_SUPERSCRIPTS)}" if exponent.is_integer() else f" ×{scale:g}"


def metric_header(name: str, scale: float = 1.0, with_extractor: bool = True) -> str:
    """`FID (domain) ↓`, `PSNR [dB] ↑`, `KID (inception) ×10³ ↓`; a sweep variant names itself (`ddim10 FID ...`)."""
    info = metric_info(name)
    unit = f" [{info.unit}]" if info.unit else ""
    return f"{metric_label(name, with_extractor)}{scale_text(scale)}{unit} {info.arrow}"


def _cell(mean: str | None, half_width: float, interval: str, withheld: bool, fmt: NumberFormat) -> str:
    if mean is None:
        return WITHHELD_CELL if withheld else EMPTY_CELL
    if pd.isna(half_width):
        return mean
    return f"{mean} ± {fmt.text(half_width)}{ONE_RUN_MARK if interval == 'bootstrap' else ''}"


def plain_rows(table: Table) -> list[list[tuple[str, bool]]]:
    """Cell text and whether the cell is bold (significantly its column's best), row by row, in `headers` order."""
    data = table.data
    columns: list[list[tuple[str, bool]]] = [[(str(v), False) for v in data[f]] for f in table.factors]
    for m in table.metrics:
        fmt, info = table.formats[m], metric_info(m)
        means = [None if pd.isna(v) else fmt.text(v) for v in data[f"{m}_mean"]]
        withheld = table.identity_rows & info.fixed_at_identity
        columns.append([(_cell(mean, half, kind, w, fmt) + (f" {TIE_MARK}" if mark == "tie" and mean else ""),
                         mark == "best" and mean is not None)
                        for mean, half, kind, w, mark in zip(means, data[f"{m}_ci95"], data[f"{m}_interval"],
                                                             withheld, table.marks[m])])
    columns.append([(str(n), False) for n in data["n"]])
    return [list(row) for row in zip(*columns)]


def headers(table: Table) -> list[str]:
    named = shared_extractor(table.metrics) is None  # else the caption names the one extractor
    return [*(factor_label(f) for f in table.factors),
            *(metric_header(m, table.formats[m].scale, with_extractor=named) for m in table.metrics), "n"]


# ---------------------------------------------------------------- formats


@dataclass(frozen=True)
class Markup:
    """How one output format escapes text and marks the best value."""

    escape: Callable[[str], str]
    bold: Callable[[str], str]


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$",
    "×": r"$\times$", EMPTY_CELL: "--", WITHHELD_CELL: "---", ONE_RUN_MARK: r"\textsuperscript{\dag}",
    TIE_MARK: r"$^{\approx}$", "∞": r"$\infty$", "<": r"$<$", ">": r"$>$",  # OT1 fonts print < as ¡
    **{sup: rf"\textsuperscript{{{digit}}}" for digit, sup in zip("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")}, "⁻": r"$^{-}$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


# `<` would open an HTML tag in Markdown renderers (`ddim<K>/fid_domain`); `|` would split a table cell.
MARKDOWN = Markup(escape=lambda s: s.replace("|", r"\|").replace("<", r"\<"), bold=lambda s: f"**{s}**")
LATEX = Markup(escape=latex_escape, bold=lambda s: rf"\textbf{{{s}}}")
HTML = Markup(escape=html.escape, bold=lambda s: f"<b>{s}</b>")


def marked_up(table: Table, markup: Markup) -> tuple[list[str], list[list[str]]]:
    """Headers and cells escaped for one format, best cells in bold."""
    rows = [[markup.bold(markup.escape(text)) if best else markup.escape(text) for text, best in row]
            for row in plain_rows(table)]
    return [markup.escape(h) for h in headers(table)], rows


def markdown_grid(head: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int | None = None) -> str:
    """A pipe table; columns from `numeric_from` on are right-aligned."""
    first_numeric = len(head) if numeric_from is None else numeric_from
    rule = ["---" if i < first_numeric else "---:" for i in range(len(head))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, rule, *rows])


def html_grid(head: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> str:
    """An HTML table from already-escaped cells."""
    def line(tag: str, cells: Sequence[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"

    head_html = f"<caption>{caption}</caption>" if caption else ""
    body = "\n".join(line("td", r) for r in rows)
    return f"<table>\n{head_html}<thead>{line('th', head)}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def to_markdown(table: Table) -> str:
    head, rows = marked_up(table, MARKDOWN)
    notes = "".join(f"\n\n*{MARKDOWN.escape(note)}*" for note in table.notes)
    return f"{markdown_grid(head, rows, len(table.factors))}\n\n*{MARKDOWN.escape(table.caption)}*{notes}"


def to_html(table: Table) -> str:
    head, rows = marked_up(table, HTML)
    return html_grid(head, rows, "<br>".join(map(HTML.escape, [table.caption, *table.notes])))


@dataclass(frozen=True)
class LatexLayout:
    """Where a table's tabular goes: its float environment, whether it is shrunk to the line, the packages."""

    environment: str
    resized: bool
    packages: tuple[str, ...]


LATEX_LAYOUTS: dict[TableStyle, LatexLayout] = {
    "plain": LatexLayout("table", False, ("booktabs",)),
    "resized": LatexLayout("table", True, ("booktabs", "graphicx")),  # \resizebox
    "landscape": LatexLayout("sidewaystable", False, ("booktabs", "rotating")),
}


def to_latex(table: Table, style: TableStyle = "plain") -> str:
    """A booktabs table float with plain `l`/`r` columns, caption and `\\label{tab:<name>}`; notes under the tabular.

    `resized` shrinks the tabular to `\\linewidth` (never enlarges: a narrow table stays as it is), `landscape`
    sets it on a page of its own turned sideways. The first line names the packages the preamble needs.
    """
    layout = LATEX_LAYOUTS[style]
    head, rows = marked_up(table, LATEX)
    columns = "l" * len(table.factors) + "r" * (len(head) - len(table.factors))
    tabular = [rf"\begin{{tabular}}{{{columns}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule",
               *(" & ".join(row) + r" \\" for row in rows), r"\bottomrule", r"\end{tabular}"]
    if layout.resized:
        tabular = [r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", *tabular, "}"]
    notes = [rf"\par\smallskip{{\footnotesize {latex_escape(note)}\par}}" for note in table.notes]
    return "\n".join([
        f"% {table.title} (ldm report, table style {style}); needs \\usepackage{{{','.join(layout.packages)}}}",
        rf"\begin{{{layout.environment}}}",
        r"\centering",
        # As papers set tables: a size smaller and 4 pt, not 6 pt, beside each column, so that a table of a
        # two-factor study with mean ± std cells fits an article's text width (local to the float).
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.name}}}",
        *tabular,
        *notes,
        rf"\end{{{layout.environment}}}",
        "",
    ])


def to_csv(table: Table) -> str:
    """Plain numbers: factor columns by their short name, `<metric>_mean`, `_std`, `_ci95` (the caption says which
    interval), `n`."""
    numbers = table.data.drop(columns=[f"{m}_interval" for m in table.metrics])
    return numbers.rename(columns={f: factor_label(f) for f in table.factors}).to_csv(index=False)
