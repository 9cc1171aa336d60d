"""Paper figures drawn with seaborn and saved as PNG and PDF; a figure the study has no data for is skipped."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from evaluation.metric_catalog import metric_info
from ldm.io import atomic_path
from reports.runs import (
    MISSING_VALUE,
    SWEEP_VARIANT,
    StudyRuns,
    column_or_missing,
    configuration_label,
    ordered_values,
    param_column,
)
from reports.tables import EXTRACTORS, aggregate, metric_header

F_PARAM = "autoencoder.f"
SCHEDULE_PARAM = "diffusion.schedule"
PREDICTION_PARAM = "diffusion.prediction"
CONDITIONING_PARAM = "diffusion.conditioning"
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


@dataclass(frozen=True)
class SkippedFigure:
    name: str
    title: str
    reason: str


FigureResult = FigureFiles | SkippedFigure


# ---------------------------------------------------------------- data helpers


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


def variant_points(study: StudyRuns, kind: str, metrics: set[str], by: str) -> pd.DataFrame:
    """Mean over finished runs per (`by` param value, variant value) of the `<kind><value>/<metric>` metrics."""
    finished = study.finished
    parts = []
    for name in study.metric_names():
        match = SWEEP_VARIANT.match(name)
        if match and match["kind"] == kind and match["metric"] in metrics:
            parts.append(pd.DataFrame({by: param_values(finished, by), "variant": float(match["value"]),
                                       "metric": match["metric"], "value": study.metric(name)}))
    if not parts:
        return pd.DataFrame(columns=[by, "variant"])
    points = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
    wide = points.pivot_table(index=[by, "variant"], columns="metric", values="value", aggfunc="mean")
    return wide.reset_index().rename_axis(columns=None).sort_values([by, "variant"], ignore_index=True)


def configurations(study: StudyRuns, metrics: Sequence[str]) -> pd.DataFrame:
    """Per-configuration means (and f, even when f is not swept), rows in table order."""
    data = aggregate(study.finished, study.factors, metrics)
    if F_PARAM not in data.columns:
        data[F_PARAM] = ", ".join(ordered_values(param_values(study.finished, F_PARAM))) or MISSING_VALUE
    return data


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


# ---------------------------------------------------------------- figures


def fid_vs_step(study: StudyRuns) -> Figure:
    """FID during diffusion training, one line per f (mean ± sd over runs)."""
    fid = fid_metric(study)
    finished = study.finished
    curves = [study.history(run_id, fid).assign(f=f)
              for run_id, f in zip(finished["run_id"], param_values(finished, F_PARAM))]
    points = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["step", "value", "f"])
    if points["step"].nunique() < 2:
        raise MissingData(f"{fid} was logged at fewer than two steps (set evaluation.fid_every)")
    fig, (ax,) = _panels(1, width=6.0)
    sns.lineplot(points, x="step", y="value", hue="f", hue_order=ordered_values(points["f"]),
                 marker="o", errorbar="sd", ax=ax)
    ax.set(xlabel="diffusion training step", ylabel=metric_header(fid))
    return fig


def fid_vs_throughput(study: StudyRuns) -> Figure:
    """FID against sampling throughput, one line per f, one point per DDIM step count K."""
    fid = fid_metric(study)
    points = variant_points(study, "ddim", {fid, "sample_images_per_s"}, F_PARAM)
    if not {fid, "sample_images_per_s"} <= set(points.columns):
        raise MissingData(f"no ddim<K>/{fid} with ddim<K>/sample_images_per_s (set evaluation.ddim_steps)")
    points = points.dropna(subset=[fid, "sample_images_per_s"]).rename(columns={F_PARAM: "f"})
    fig, (ax,) = _panels(1, width=6.0)
    sns.lineplot(points, x="sample_images_per_s", y=fid, hue="f", hue_order=ordered_values(points["f"]),
                 marker="o", sort=False, estimator=None, ax=ax)
    _label_points(ax, points, "sample_images_per_s", fid, lambda k: f"K={k:g}")
    ax.set(xscale="log", xlabel=metric_header("sample_images_per_s"), ylabel=metric_header(fid))
    return fig


def rate_distortion(study: StudyRuns) -> Figure:
    """bpp vs PSNR and FID vs bpp per configuration, Pareto front marked."""
    fid = logged_fid(study)
    pairs = [("bpp", "psnr"), *([("bpp", fid)] if fid else [])]
    data = configurations(study, sorted({m for pair in pairs for m in pair}))
    drawable = [(x, y) for x, y in pairs if data[[f"{x}_mean", f"{y}_mean"]].notna().all(axis=1).any()]
    if not drawable:
        raise MissingData("no finished trial logged bpp together with psnr or an FID")
    fig, axes = _panels(len(drawable))
    for ax, (x, y) in zip(axes, drawable):
        xm, ym = f"{x}_mean", f"{y}_mean"
        points = data.dropna(subset=[xm, ym]).rename(columns={F_PARAM: "f"})
        sns.scatterplot(points, x=xm, y=ym, hue="f", hue_order=ordered_values(points["f"]), s=50, ax=ax)
        front = points[pareto_mask(points[xm].to_numpy(), points[ym].to_numpy(),
                                   metric_info(x).direction == "minimize", metric_info(y).direction == "minimize")]
        front = front.sort_values(xm)
        ax.plot(front[xm], front[ym], "k--", marker="o", markerfacecolor="none", markersize=11, label="Pareto front")
        ax.legend(title="f", fontsize=7)
        ax.set(xlabel=metric_header(x), ylabel=metric_header(y), title=f"{metric_info(y).label} vs rate")
    return fig


def schedule_comparison(study: StudyRuns) -> Figure:
    """Validation loss and FID per noise schedule (x) and prediction target (colour)."""
    if SCHEDULE_PARAM not in study.factors and PREDICTION_PARAM not in study.factors:
        raise MissingData("neither diffusion.schedule nor diffusion.prediction varies across finished trials")
    fid = logged_fid(study)
    metrics = [m for m in ("val_loss", *([fid] if fid else [])) if study.metric(m).notna().any()]
    if not metrics:
        raise MissingData("no finished trial logged val_loss or an FID")
    finished = study.finished
    data = pd.DataFrame({"schedule": param_values(finished, SCHEDULE_PARAM),
                         "prediction": param_values(finished, PREDICTION_PARAM),
                         **{m: study.metric(m) for m in metrics}})
    fig, axes = _panels(len(metrics))
    for ax, m in zip(axes, metrics):
        sns.barplot(data, x="schedule", y=m, hue="prediction", order=ordered_values(data["schedule"]),
                    hue_order=ordered_values(data["prediction"]), errorbar="sd", ax=ax)
        ax.set(xlabel="noise schedule", ylabel=metric_header(m))
    return fig


def guidance_sweep(study: StudyRuns) -> Figure:
    """FID against IS and/or conditioning accuracy over guidance scales, one line per conditioning type."""
    fid = fid_metric(study)
    axes_metrics = [f"is_{fid.removeprefix('fid_')}", "cond_accuracy"]
    points = variant_points(study, "g", {fid, *axes_metrics}, CONDITIONING_PARAM)
    present = [m for m in axes_metrics if m in points.columns and fid in points.columns]
    if not present:
        raise MissingData(f"no g<scale>/{fid} with g<scale>/{axes_metrics[0]} or cond_accuracy "
                          "(set evaluation.guidance_scales)")
    points = points.rename(columns={CONDITIONING_PARAM: "conditioning"})
    fig, axes = _panels(len(present))
    for ax, x in zip(axes, present):
        line = points.dropna(subset=[x, fid])
        sns.lineplot(line, x=x, y=fid, hue="conditioning", hue_order=ordered_values(line["conditioning"]),
                     marker="o", sort=False, estimator=None, ax=ax)
        _label_points(ax, line, x, fid, lambda w: f"w={w:g}")
        ax.set(xlabel=metric_header(x), ylabel=metric_header(fid))
    return fig


def sample_grids(study: StudyRuns) -> Figure:
    """Each configuration's `samples.png` (from its first finished run that has one), side by side."""
    finished = study.finished
    grids: list[tuple[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _, config in configurations(study, ()).iterrows():
            values = {f: config[f] for f in study.factors}
            matches = pd.Series(True, index=finished.index)
            for f, v in values.items():
                matches &= finished[param_column(f)] == v
            for run_id in finished.loc[matches, "run_id"]:
                path = study.download_artifact(run_id, SAMPLES_ARTIFACT, Path(tmp) / run_id)
                if path is not None:
                    with Image.open(path) as image:
                        grids.append((configuration_label(values), np.asarray(image.convert("RGB"))))
                    break
    if not grids:
        raise MissingData(f"no finished trial has a {SAMPLES_ARTIFACT} artifact")
    columns = min(len(grids), 4)
    rows = -(-len(grids) // columns)
    fig = Figure(figsize=(3.0 * columns, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (label, pixels) in zip(axes, grids):
        ax.imshow(pixels)
        ax.set_title(label, fontsize=8)
    return fig


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    draw: Callable[[StudyRuns], Figure]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fid_vs_step", "FID during training, per downsampling factor f", fid_vs_step),
    FigureSpec("fid_vs_throughput", "FID vs sampling throughput over DDIM steps", fid_vs_throughput),
    FigureSpec("rate_distortion", "Rate-distortion of the first stage", rate_distortion),
    FigureSpec("schedule_comparison", "Noise schedule and prediction target", schedule_comparison),
    FigureSpec("guidance_sweep", "Classifier-free guidance sweep", guidance_sweep),
    FigureSpec("sample_grids", "Samples per configuration", sample_grids),
)


def _save(fig: Figure, folder: Path, spec: FigureSpec) -> FigureFiles:
    files = FigureFiles(spec.name, spec.title, folder / f"{spec.name}.png", folder / f"{spec.name}.pdf")
    # Lay out once, then freeze: constrained layout would run again for each of the two files.
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    for path, fmt in ((files.png, "png"), (files.pdf, "pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=PNG_DPI)
    return files


def make_figures(study: StudyRuns, folder: Path) -> list[FigureResult]:
    """Draw every figure of `FIGURES` into `folder`; those without data come back as `SkippedFigure`."""
    results: list[FigureResult] = []
    with sns.axes_style("whitegrid"):
        for spec in FIGURES:
            try:
                fig = spec.draw(study)
            except MissingData as missing:
                results.append(SkippedFigure(spec.name, spec.title, str(missing)))
                continue
            fig.suptitle(spec.title)
            results.append(_save(fig, folder, spec))
    return results
