"""Paper figures drawn with seaborn and saved as PNG and PDF; a figure the study has no data for is skipped."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from PIL import Image

from evaluation.metric_catalog import metric_info
from ldm.io import atomic_path
from reports.compute import COMPUTE_AXES, compute_curves, equal_compute
from reports.runs import (
    MISSING_VALUE,
    SWEEP_VARIANT,
    StudyRuns,
    column_or_missing,
    configuration_label,
    factor_label,
    ordered_values,
    param_column,
)
from reports.statistics import t_interval
from reports.tables import EXTRACTORS, aggregate, metric_header

SCHEDULE_PARAM = "diffusion.schedule"
PREDICTION_PARAM = "diffusion.prediction"
SAMPLES_ARTIFACT = "samples.png"
PNG_DPI = 120


class MissingData(Exception):
    """The study lacks what a figure shows; the message says what and how to get it."""


@dataclass(frozen=True)
class FigureFiles:
    name: str
    title: str
    png: Path
    pdf: Path
    caption: str


@dataclass(frozen=True)
class SkippedFigure:
    name: str
    title: str
    reason: str


FigureResult = FigureFiles | SkippedFigure


# ---------------------------------------------------------------- data helpers


@dataclass(frozen=True)
class Drawn:
    """A figure and its caption: what each mark is and what its error bars are."""

    figure: Figure
    caption: str


def logged_fid(study: StudyRuns) -> str | None:
    """The FID the study logged, `fid_<extractor>`, preferring the extractors in `EXTRACTORS` order."""
    logged = set(study.metric_names())
    return next((f"fid_{ext}" for ext in EXTRACTORS if f"fid_{ext}" in logged), None)


def fid_metric(study: StudyRuns) -> str:
    fid = logged_fid(study)
    if fid is None:
        raise MissingData("no finished trial logged an FID (fid_<extractor>)")
    return fid


def param_values(runs: pd.DataFrame, param: str) -> pd.Series:
    return column_or_missing(runs, param_column(param)).fillna(MISSING_VALUE).astype(str)


def configuration_of(runs: pd.DataFrame, factors: Sequence[str]) -> pd.Series:
    """Each run's values of `factors` as one label (`f=4, schedule=cosine`), an ordered categorical in table order:
    the colours of a figure."""
    if not factors:
        return pd.Series(pd.Categorical(["all runs"] * len(runs)), index=runs.index)
    columns = [param_values(runs, f) for f in factors]
    keys = list(zip(*columns))
    ranks = [{v: i for i, v in enumerate(ordered_values(column))} for column in columns]
    order = sorted(set(keys), key=lambda key: [rank[v] for rank, v in zip(ranks, key)])

    def label(key: tuple[str, ...]) -> str:
        return configuration_label(dict(zip(factors, key)))

    return pd.Series(pd.Categorical([label(k) for k in keys], categories=[label(k) for k in order], ordered=True),
                     index=runs.index)


def hue_order(labels: pd.Series) -> list[str]:
    """The labels present, in their categorical (table) order, else in first-seen order."""
    present = set(labels)
    if isinstance(labels.dtype, pd.CategoricalDtype):
        return [c for c in labels.cat.categories if c in present]
    return list(dict.fromkeys(labels))


def spread_note(study: StudyRuns) -> str:
    """What an error bar is, and over how many seeds."""
    columns = [param_column(f) for f in study.factors]
    finished = study.finished
    seeds = finished.groupby(columns, dropna=False).size() if columns else pd.Series([len(finished)])
    n = f"n = {seeds.min()}" if seeds.min() == seeds.max() else f"n = {seeds.min()} to {seeds.max()}"
    return (f"error bars: the 95% t-interval of the mean over the seeds of a configuration ({n}; none where n = 1), "
            f"as in the tables"
            if seeds.max() > 1 else "one seed per configuration: no error bars")


def t_errorbar(values: pd.Series) -> tuple[float, float]:
    """seaborn's error bar of a group of seed values: the tables' 95% t-interval of their mean (none for one)."""
    interval = t_interval(values.dropna().to_numpy())
    half = interval.half_width if interval.half_width is not None else np.nan
    return interval.mean - half, interval.mean + half


def variant_points(study: StudyRuns, kind: str, metrics: set[str]) -> pd.DataFrame:
    """Mean over finished runs per (configuration, variant value) of the `<kind><value>/<metric>` metrics."""
    finished = study.finished
    configuration = configuration_of(finished, study.factors)
    parts = []
    for name in study.metric_names():
        match = SWEEP_VARIANT.match(name)
        if match and match["kind"] == kind and match["metric"] in metrics:
            parts.append(pd.DataFrame({"configuration": configuration, "variant": float(match["value"]),
                                       "metric": match["metric"], "value": study.metric(name)}))
    if not parts:
        return pd.DataFrame(columns=["configuration", "variant"])
    points = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
    wide = points.pivot_table(index=["configuration", "variant"], columns="metric", values="value", aggfunc="mean",
                              observed=True)
    return wide.reset_index().rename_axis(columns=None)


def pareto_mask(x: np.ndarray, y: np.ndarray, minimize_x: bool, minimize_y: bool) -> np.ndarray:
    """True for the points no other point dominates (at least as good on both axes, better on one)."""
    sx = np.asarray(x, float) * (1 if minimize_x else -1)
    sy = np.asarray(y, float) * (1 if minimize_y else -1)
    # dominates[i, j]: point j dominates point i
    no_worse = (sx[None, :] <= sx[:, None]) & (sy[None, :] <= sy[:, None])
    better = (sx[None, :] < sx[:, None]) | (sy[None, :] < sy[:, None])
    return ~(no_worse & better).any(axis=1)


def _panels(count: int, width: float = 4.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * count, 3.8), layout="constrained")
    return fig, list(fig.subplots(1, count, squeeze=False)[0])


def _label_points(ax: Axes, data: pd.DataFrame, x: str, y: str, text: Callable[[float], str]) -> None:
    for _, row in data.iterrows():
        ax.annotate(text(row["variant"]), (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)


def _require_swept(study: StudyRuns, params: Sequence[str]) -> list[str]:
    swept = [p for p in params if p in study.factors]
    if not swept:
        raise MissingData(f"none of {', '.join(params)} was swept")
    return swept


# ---------------------------------------------------------------- figures


def fid_vs_step(study: StudyRuns) -> Drawn:
    """FID during diffusion training, one line per configuration (mean and spread over its seeds)."""
    fid = fid_metric(study)
    finished = study.finished
    labels = configuration_of(finished, study.factors)
    curves = [study.history(run_id, fid).assign(configuration=label)
              for run_id, label in zip(finished["run_id"], labels)]
    points = (pd.concat(curves, ignore_index=True) if curves
              else pd.DataFrame(columns=["step", "value", "configuration"]))
    if points["step"].nunique() < 2:
        raise MissingData(f"{fid} was logged at fewer than two steps (set evaluation.fid_every)")
    fig, (ax,) = _panels(1, width=6.0)
    sns.lineplot(points, x="step", y="value", hue="configuration", hue_order=hue_order(labels), marker="o",
                 errorbar=t_errorbar, ax=ax)
    ax.set(xlabel="diffusion training step", ylabel=metric_header(fid))
    ax.legend(title=None, fontsize=7)
    bands = spread_note(study).removeprefix("error bars: ")
    return Drawn(fig, f"Lines: mean over seeds per configuration; bands: {bands}.")


def fid_vs_compute(study: StudyRuns) -> Drawn:
    """Each run's FID curve against training compute (images, UNet FLOPs, device-hours), equal compute marked."""
    fid = fid_metric(study)
    labels = configuration_of(study.finished, study.factors)
    curves = compute_curves(study, fid, labels)
    if curves.empty or curves.groupby("run_id")["step"].nunique().max() < 2:
        raise MissingData(f"{fid} was logged at fewer than two steps (set evaluation.fid_every)")
    axes_drawn = [a for a in COMPUTE_AXES if curves[a.column].notna().any()]
    # Per axis: the most compute every configuration reached, where each has a run to read there.
    matched = {a.column: found for a in axes_drawn
               if np.isfinite((found := equal_compute(curves, a.column, hue_order(labels)))[0])
               and found[1]["n"].gt(0).all()}
    fig, axes = _panels(len(axes_drawn))
    for ax, axis in zip(axes, axes_drawn):
        sns.lineplot(curves, x=axis.column, y="fid", hue="configuration", hue_order=hue_order(labels),
                     units="run_id", estimator=None, marker="o", ax=ax)
        if axis.column in matched:
            ax.axvline(matched[axis.column][0], color="k", linestyle=":", linewidth=1)
        ax.set(xscale="log", xlabel=axis.label, ylabel=metric_header(fid))
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-scale minor labels collide
        ax.legend(title=None, fontsize=7)
    equal = "The configurations share no range of compute, so none is compared at equal compute."
    # FLOPs first (what a device-hour buys varies), images seen last (the same for every configuration)
    for axis in sorted(axes_drawn, key=lambda a: ("pflops", "device_hours", "images").index(a.column)):
        if axis.column in matched:
            budget, at_budget = matched[axis.column]
            compared = "; ".join(f"{r.configuration}: {r.fid:.3g}" + (f" ± {r.sd:.2g}" if r.n > 1 else "")
                                 + f" (n = {r.n})" for r in at_budget.itertuples())
            equal = (f"At equal compute, {budget:.3g} {axis.label} (dotted: the most every configuration "
                     f"reached), {metric_info(fid).label} is {compared}.")
            break
    return Drawn(fig, f"One line per run (intermediate FIDs); training FLOPs = 3 x UNet forward FLOPs x images "
                      f"seen; device-hours spread the run's training time evenly over its steps. {equal}")


def fid_vs_throughput(study: StudyRuns) -> Drawn:
    """FID against sampling throughput, one line per configuration, one point per DDIM step count K."""
    fid = fid_metric(study)
    points = variant_points(study, "ddim", {fid, "sample_images_per_s"})
    if not {fid, "sample_images_per_s"} <= set(points.columns):
        raise MissingData(f"no ddim<K>/{fid} with ddim<K>/sample_images_per_s (set evaluation.ddim_steps)")
    points = points.dropna(subset=[fid, "sample_images_per_s"])
    fig, (ax,) = _panels(1, width=6.0)
    sns.lineplot(points, x="sample_images_per_s", y=fid, hue="configuration",
                 hue_order=hue_order(points["configuration"]), marker="o", sort=False, estimator=None, ax=ax)
    _label_points(ax, points, "sample_images_per_s", fid, lambda k: f"K={k:g}")
    ax.set(xscale="log", xlabel=metric_header("sample_images_per_s"), ylabel=metric_header(fid))
    ax.legend(title=None, fontsize=7)
    return Drawn(fig, "Points: means over seeds per configuration and DDIM step count K (labelled).")


RATE_FACTORS = ("autoencoder.f", "autoencoder.latent_channels", "autoencoder.regularizer")


def rate_distortion(study: StudyRuns) -> Drawn:
    """bpp vs PSNR and FID vs bpp per configuration, Pareto front marked; the identity first stage left out."""
    _require_swept(study, RATE_FACTORS)
    fid = logged_fid(study)
    pairs = [("bpp", "psnr"), *([("bpp", fid)] if fid else [])]
    measured = study.finished[~study.identity_first_stage()]
    data = aggregate(measured, study.factors, sorted({m for pair in pairs for m in pair}))
    data["configuration"] = [configuration_label({f: str(row[f]) for f in study.factors}) for _, row in data.iterrows()]
    drawable = [(x, y) for x, y in pairs if data[[f"{x}_mean", f"{y}_mean"]].notna().all(axis=1).any()]
    if not drawable:
        raise MissingData("no finished trial with a first stage other than the identity (f = 1) logged bpp "
                          "together with psnr or an FID")
    fig, axes = _panels(len(drawable))
    for ax, (x, y) in zip(axes, drawable):
        xm, ym = f"{x}_mean", f"{y}_mean"
        points = data.dropna(subset=[xm, ym])
        sns.scatterplot(points, x=xm, y=ym, hue="configuration", hue_order=hue_order(points["configuration"]),
                        s=50, ax=ax)
        front = points[pareto_mask(points[xm].to_numpy(), points[ym].to_numpy(),
                                   metric_info(x).direction == "minimize", metric_info(y).direction == "minimize")]
        front = front.sort_values(xm)
        ax.plot(front[xm], front[ym], "k--", marker="o", markerfacecolor="none", markersize=11, label="Pareto front")
        ax.legend(fontsize=7)
        ax.set(xlabel=metric_header(x), ylabel=metric_header(y), title=f"{metric_info(y).label} vs rate")
    left_out = " f = 1 (the identity first stage) is not drawn: it has no rate or distortion to measure." \
        if study.identity_first_stage().any() else ""
    return Drawn(fig, f"Points: means over seeds per configuration; dashed: the Pareto front.{left_out}")


def schedule_comparison(study: StudyRuns) -> Drawn:
    """Validation loss and FID per noise schedule or prediction target; colours: the other swept factors."""
    x_param, *_ = _require_swept(study, (SCHEDULE_PARAM, PREDICTION_PARAM))
    fid = logged_fid(study)
    metrics = [m for m in ("val_loss", *([fid] if fid else [])) if study.metric(m).notna().any()]
    if not metrics:
        raise MissingData("no finished trial logged val_loss or an FID")
    finished = study.finished
    others = [f for f in study.factors if f != x_param]
    data = pd.DataFrame({"x": param_values(finished, x_param), "configuration": configuration_of(finished, others),
                         **{m: study.metric(m) for m in metrics}})
    fig, axes = _panels(len(metrics))
    for ax, m in zip(axes, metrics):
        sns.barplot(data, x="x", y=m, hue="configuration", order=ordered_values(data["x"]),
                    hue_order=hue_order(data["configuration"]), errorbar=t_errorbar, ax=ax)
        ax.set(xlabel=factor_label(x_param), ylabel=metric_header(m))
        ax.legend(title=None, fontsize=7)
    return Drawn(fig, f"Bars: means over seeds per configuration; {spread_note(study)}.")


def guidance_sweep(study: StudyRuns) -> Drawn:
    """FID against IS and/or conditioning accuracy over guidance scales, one line per configuration."""
    fid = fid_metric(study)
    axes_metrics = [f"is_{fid.removeprefix('fid_')}", "cond_accuracy"]
    points = variant_points(study, "g", {fid, *axes_metrics})
    present = [m for m in axes_metrics if m in points.columns and fid in points.columns]
    if not present:
        raise MissingData(f"no g<scale>/{fid} with g<scale>/{axes_metrics[0]} or cond_accuracy "
                          "(set evaluation.guidance_scales)")
    fig, axes = _panels(len(present))
    for ax, x in zip(axes, present):
        line = points.dropna(subset=[x, fid])
        sns.lineplot(line, x=x, y=fid, hue="configuration", hue_order=hue_order(line["configuration"]),
                     marker="o", sort=False, estimator=None, ax=ax)
        _label_points(ax, line, x, fid, lambda w: f"w={w:g}")
        ax.set(xlabel=metric_header(x), ylabel=metric_header(fid))
        ax.legend(title=None, fontsize=7)
    return Drawn(fig, "Points: means over seeds per configuration and guidance scale w (labelled).")


def metric_vs_factor(study: StudyRuns, factor: str, metrics: Sequence[str]) -> Drawn:
    """Each headline metric against the levels of one swept factor; colours: the other swept factors."""
    finished = study.finished
    others = [f for f in study.factors if f != factor]
    data = pd.DataFrame({"level": param_values(finished, factor), "configuration": configuration_of(finished, others),
                         "identity": study.identity_first_stage(), **{m: study.metric(m) for m in metrics}})
    # The identity first stage's fixed values (PSNR 100, the raw rate, rFID 0) only mark it: not drawn for f = 1.
    shown = {m: data[~data["identity"]] if metric_info(m).fixed_at_identity else data for m in metrics}
    drawable = [m for m in metrics if shown[m][m].notna().any()]
    if not drawable:
        raise MissingData(f"no finished trial logged {', '.join(metrics)}")
    fig, axes = _panels(len(drawable), width=4.0)
    for ax, m in zip(axes, drawable):
        sns.pointplot(shown[m], x="level", y=m, hue="configuration", order=ordered_values(data["level"]),
                      hue_order=hue_order(data["configuration"]), errorbar=t_errorbar, dodge=0.3 if others else False,
                      capsize=0.1, ax=ax)
        ax.set(xlabel=factor_label(factor), ylabel=metric_header(m))
        if ax.get_legend() is not None:
            ax.legend(title=None, fontsize=7)
    return Drawn(fig, f"Points: means over seeds per configuration; {spread_note(study)}.")


GRID_TITLE_PT = 10
MIN_GRID_INCHES = 3.0


def sample_grids(study: StudyRuns) -> Drawn:
    """Each configuration's `samples.png` (from its first finished run that has one), at its own pixel size."""
    finished = study.finished
    labels = configuration_of(finished, study.factors)
    grids: list[tuple[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in hue_order(labels):
            for run_id in finished.loc[labels == label, "run_id"]:
                path = study.download_artifact(run_id, SAMPLES_ARTIFACT, Path(tmp) / run_id)
                if path is not None:
                    with Image.open(path) as image:
                        grids.append((label, np.asarray(image.convert("RGB"))))
                    break
    if not grids:
        raise MissingData(f"no finished trial has a {SAMPLES_ARTIFACT} artifact")
    columns = min(len(grids), 2)
    rows = -(-len(grids) // columns)
    # At least one image pixel per PNG pixel, so the labels drawn under each sample read at 100% zoom.
    widest, tallest = max(g.shape[1] for _, g in grids), max(g.shape[0] for _, g in grids)
    scale = max(1.0, MIN_GRID_INCHES * PNG_DPI / widest)
    width = widest * scale / PNG_DPI
    height = tallest * scale / PNG_DPI + 3 * GRID_TITLE_PT / 72
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (label, pixels) in zip(axes, grids):
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(label, fontsize=GRID_TITLE_PT)
    return Drawn(fig, "Samples of the first seed of each configuration (EMA weights), captioned with their "
                      "class or prompt where the model is conditional.")


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    draw: Callable[[StudyRuns], Drawn]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fid_vs_step", "FID during training", fid_vs_step),
    FigureSpec("fid_vs_compute", "FID against training compute", fid_vs_compute),
    FigureSpec("fid_vs_throughput", "FID vs sampling throughput over DDIM steps", fid_vs_throughput),
    FigureSpec("rate_distortion", "Rate-distortion of the first stage", rate_distortion),
    FigureSpec("schedule_comparison", "Noise schedule and prediction target", schedule_comparison),
    FigureSpec("guidance_sweep", "Classifier-free guidance sweep", guidance_sweep),
    FigureSpec("sample_grids", "Samples per configuration", sample_grids),
)


def factor_figures(study: StudyRuns, metrics: Sequence[str]) -> list[FigureSpec]:
    """One "metric against factor level" figure per swept factor."""
    return [FigureSpec(f"metrics_vs_{re.sub(r'[^A-Za-z0-9]+', '_', factor_label(f))}",
                       f"Metrics against {factor_label(f)}",
                       lambda s, f=f: metric_vs_factor(s, f, metrics))
            for f in study.factors]


def headline_metrics(study: StudyRuns) -> list[str]:
    """The study's objectives (from its spec), else its FID: the metrics every factor figure shows."""
    objectives = []
    if study.spec_yaml:
        raw = yaml.safe_load(study.spec_yaml)
        objectives = [o["metric"] for o in raw.get("objectives", []) if isinstance(o, dict) and "metric" in o]
    fid = logged_fid(study)
    return list(dict.fromkeys(objectives or ([fid] if fid else [])))


def _save(drawn: Drawn, folder: Path, spec: FigureSpec) -> FigureFiles:
    files = FigureFiles(spec.name, spec.title, folder / f"{spec.name}.png", folder / f"{spec.name}.pdf",
                        drawn.caption)
    fig = drawn.figure
    # Lay out once, then freeze: constrained layout would run again for each of the two files.
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    for path, fmt in ((files.png, "png"), (files.pdf, "pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=PNG_DPI)
    return files


def make_figures(study: StudyRuns, folder: Path) -> list[FigureResult]:
    """Draw every figure of `FIGURES` and one per swept factor into `folder`; those without data come back as
    `SkippedFigure`."""
    results: list[FigureResult] = []
    with sns.axes_style("whitegrid"):
        for spec in (*FIGURES, *factor_figures(study, headline_metrics(study))):
            try:
                drawn = spec.draw(study)
            except MissingData as missing:
                results.append(SkippedFigure(spec.name, spec.title, str(missing)))
                continue
            drawn.figure.suptitle(spec.title)
            results.append(_save(drawn, folder, spec))
    return results
