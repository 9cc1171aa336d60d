"""Ablation and overall tables (mean ± std per configuration), rendered as LaTeX, Markdown, HTML and CSV."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

import pandas as pd

from evaluation.metric_catalog import metric_info
from ldm.config import ExtractorName
from ldm.tracking import Tag
from reports.runs import StudyRuns, column_or_missing, factor_label, metric_column, ordered_values, param_column

EXTRACTORS: tuple[str, ...] = get_args(ExtractorName)

# The columns a paper table may have, in order; a table shows those the study logged.
TABLE_METRICS: tuple[str, ...] = (
    *(f"{kind}_{ext}" for ext in EXTRACTORS for kind in ("fid", "is", "kid", "precision", "recall")),
    "cond_accuracy",
    "psnr",
    *(f"rfid_{ext}" for ext in EXTRACTORS),
    "bpp",
    "params_first_stage",
    "params_unet",
    "params_cond",
    "unet_gflops",
    "train_images_per_s",
    "sample_images_per_s",
    "train_hours",
)
EMPTY_CELL = "–"


@dataclass(frozen=True)
class Table:
    """`data` holds one row per table row: factor columns (param names), `<metric>_mean`, `<metric>_std`, `n`."""

    name: str
    title: str
    caption: str
    factors: tuple[str, ...]
    metrics: tuple[str, ...]
    data: pd.DataFrame


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


def evaluation_note(study: StudyRuns) -> str:
    """Where the numbers come from: seeds per row, sample count and feature extractor of the generation metrics."""
    samples = ", ".join(study.tag_values(Tag.NUM_SAMPLES)) or "an unrecorded number of"
    weights = ", ".join(study.tag_values(Tag.EXTRACTOR_WEIGHTS)) or "not recorded"
    return (f"Mean ± std (sample std) over the n finished runs of each row; best mean per column in bold. "
            f"Generation metrics from {samples} samples per run; feature extractor: {weights}.")


def build_tables(study: StudyRuns) -> list[Table]:
    """The overall table (rows = configurations) and one ablation table per swept factor."""
    logged = set(study.metric_names())
    metrics = tuple(m for m in TABLE_METRICS if m in logged)
    note = evaluation_note(study)
    overall = Table("overall", "All configurations", f"Study {study.name}: all configurations. {note}",
                    study.factors, metrics, aggregate(study.finished, study.factors, metrics))
    ablations = [
        Table(f"ablation_{re.sub(r'[^A-Za-z0-9]+', '_', factor_label(f))}", f"Ablation over {factor_label(f)}",
              f"Study {study.name}: ablation over {factor_label(f)}, each row pooling the other factors. {note}",
              (f,), metrics, aggregate(study.finished, (f,), metrics))
        for f in study.factors
    ]
    return [overall, *ablations]


# ---------------------------------------------------------------- cells


def metric_header(name: str) -> str:
    info = metric_info(name)
    unit = f" [{info.unit}]" if info.unit else ""
    return f"{info.label}{unit} {info.arrow}"


def best_rows(data: pd.DataFrame, metric: str) -> pd.Series:
    """Rows holding the best mean of a column (by the catalog's direction); none when all rows tie."""
    means = data[f"{metric}_mean"]
    best = means.min() if metric_info(metric).direction == "minimize" else means.max()
    is_best = means == best
    return is_best if is_best.sum() < means.notna().sum() else pd.Series(False, index=data.index)


def _decimals(means: pd.Series) -> int:
    """Three significant digits for the smallest magnitude in the column."""
    magnitudes = means.abs()[means.abs() > 0].dropna()
    if magnitudes.empty:
        return 2
    return min(max(2 - math.floor(math.log10(magnitudes.min())), 0), 6)


def _cell(mean: float, std: float, decimals: int) -> str:
    if pd.isna(mean):
        return EMPTY_CELL
    if pd.isna(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def plain_rows(table: Table) -> list[list[tuple[str, bool]]]:
    """Cell text and whether the cell is its column's best, row by row, in `headers` order."""
    data = table.data
    columns: list[list[tuple[str, bool]]] = [[(str(v), False) for v in data[f]] for f in table.factors]
    for m in table.metrics:
        decimals = _decimals(data[f"{m}_mean"])
        best = best_rows(data, m)
        columns.append([(_cell(mean, std, decimals), bool(b))
                        for mean, std, b in zip(data[f"{m}_mean"], data[f"{m}_std"], best)])
    columns.append([(str(n), False) for n in data["n"]])
    return [list(row) for row in zip(*columns)]


def headers(table: Table) -> list[str]:
    return [*(factor_label(f) for f in table.factors), *(metric_header(m) for m in table.metrics), "n"]


# ---------------------------------------------------------------- formats


@dataclass(frozen=True)
class Markup:
    """How one output format escapes text and marks the best value."""

    escape: Callable[[str], str]
    bold: Callable[[str], str]


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$",
    EMPTY_CELL: "--",
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
    return f"{markdown_grid(head, rows, len(table.factors))}\n\n*{MARKDOWN.escape(table.caption)}*"


def to_html(table: Table) -> str:
    head, rows = marked_up(table, HTML)
    return html_grid(head, rows, HTML.escape(table.caption))


def to_latex(table: Table) -> str:
    """A booktabs table float (`\\toprule`, `\\midrule`, `\\bottomrule`) via `Styler.to_latex`."""
    head, rows = marked_up(table, LATEX)
    styler = pd.DataFrame(rows, columns=head).style.hide(axis="index")
    return styler.to_latex(
        hrules=True,
        caption=latex_escape(table.caption),
        label=f"tab:{table.name}",
        position_float="centering",
        column_format="l" * len(table.factors) + "r" * (len(head) - len(table.factors)),
    )


def to_csv(table: Table) -> str:
    """Plain numbers: factor columns by their short name, `<metric>_mean`, `<metric>_std`, `n`."""
    return table.data.rename(columns={f: factor_label(f) for f in table.factors}).to_csv(index=False)
