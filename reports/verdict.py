"""The report's opening sentences: for each swept factor, what the paired tests say about its levels.

"f = 2 beats f = 4 on FID by 11.9 (95% CI 8.0 to 15.8, p = 0.002, 3 seeds)" or "schedule: no significant
difference on FID (p = 0.41, 3 seeds)". A factor's levels are compared on the study's first objective (else
the first table column), each with the baseline level (the spec's `report.baseline`, else the best mean), over
the cells every level has (`reports.balance`); p-values are Holm-adjusted over the factor's comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evaluation.metric_catalog import metric_info, metric_label
from reports.balance import layout
from reports.rows import ALPHA, RunNumbers, arm, compare_to, row_labels
from reports.runs import StudyRuns, factor_label
from reports.statistics import Comparison


@dataclass(frozen=True)
class FactorVerdict:
    factor: str
    metric: str
    baseline: str
    comparisons: tuple[Comparison, ...]
    sentence: str


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def seeds_text(a: int, b: int) -> str:
    return f"{a} seeds" if a == b else f"{a} and {b} seeds"


def clause(c: Comparison, factor: str, metric: str, fmt: str) -> str:
    """One significant comparison as "<winner> beats <loser> on <metric> by <gap> (95% CI ..., p, seeds)"."""
    info = metric_info(metric)
    name = factor_label(factor)
    arm_better = (c.difference < 0) == (info.direction == "minimize")
    winner, loser = (c.arm, c.baseline) if arm_better else (c.baseline, c.arm)
    sign = -1.0 if c.difference < 0 else 1.0  # the gap is positive; its interval turns with it
    gap, (lo, hi) = sign * c.difference, sorted((sign * c.lo, sign * c.hi))
    return (f"{name} = {winner} beats {name} = {loser} on {metric_label(metric)} by {gap:{fmt}} "
            f"(95% CI {lo:{fmt}} to {hi:{fmt}}, {p_text(c.p_holm)}, {seeds_text(c.n_arm, c.n_base)})")


def factor_verdict(study: StudyRuns, factor: str, metric: str, numbers: RunNumbers) -> FactorVerdict | None:
    """The factor's levels against its baseline on `metric`; None with fewer than two levels measured."""
    rows = layout(study.finished, study.factors, (factor,))
    labels = row_labels(rows)
    masked = study.identity_run_ids() if metric_info(metric).fixed_at_identity else frozenset()
    arms = {i: a for i, row in enumerate(rows.rows) if (a := arm(row, metric, numbers, masked)) is not None}
    if len(arms) < 2:
        return None
    wanted = study.report.baseline.get(factor)
    if wanted is not None and str(wanted) in labels and labels.index(str(wanted)) in arms:
        baseline = labels.index(str(wanted))
    else:
        sign = 1 if metric_info(metric).direction == "minimize" else -1
        baseline = min(arms, key=lambda i: sign * arms[i].values.mean())
    comparisons = compare_to(arms, baseline, metric, labels)
    fmt = f".{max(metric_info(metric).decimals, 1)}f"
    significant = [clause(c, factor, metric, fmt) for c in comparisons if c.p_holm < ALPHA]
    name = factor_label(factor)
    if significant:
        sentence = "; ".join([*significant, *(
            f"{name} = {c.arm} and {name} = {c.baseline}: no significant difference ({p_text(c.p_holm)})"
            for c in comparisons if c.p_holm >= ALPHA)])
    else:
        smallest = min(comparisons, key=lambda c: c.p_holm)
        sentence = (f"{factor_label(factor)}: no significant difference on {metric_label(metric)} "
                    f"({p_text(smallest.p_holm)}, {seeds_text(smallest.n_arm, smallest.n_base)})")
    if rows.cells_left_out:
        sentence += f" (over the {rows.cells_used} cell(s) every level has)"
    return FactorVerdict(factor, metric, labels[baseline], tuple(comparisons), sentence + ".")


def verdict_metric(study: StudyRuns, columns: Sequence[str]) -> str | None:
    logged = set(study.metric_names())
    return next((m for m in (*study.objectives, *columns) if m in logged), None)


def verdicts(study: StudyRuns, columns: Sequence[str], numbers: RunNumbers | None = None) -> list[FactorVerdict]:
    metric = verdict_metric(study, columns)
    if metric is None:
        return []
    numbers = numbers or RunNumbers(study)
    found = (factor_verdict(study, f, metric, numbers) for f in study.factors)
    return [v for v in found if v is not None]
