"""reports/figures.py: Pareto fronts, sweep-variant aggregation, and the figure files of built reports."""

from __future__ import annotations

import dataclasses
import html
import itertools

import numpy as np
import pytest
from scipy.stats import t
from PIL import Image

from reports.figures import (
    FIGURES,
    PNG_DPI,
    MissingData,
    factor_figures,
    fid_vs_step,
    fid_vs_throughput,
    metric_vs_factor,
    pareto_mask,
    rate_distortion,
    sample_grids,
    schedule_comparison,
    variant_points,
)
from reports.tables import metric_header
from reports.runs import load_study


@pytest.fixture(scope="module")
def study(synthetic_store):
    return load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)


def brute_force_front(points: list[tuple[float, float]], minimize_x: bool, minimize_y: bool) -> list[bool]:
    sign_x, sign_y = (1 if minimize_x else -1), (1 if minimize_y else -1)

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        ax, ay, bx, by = sign_x * a[0], sign_y * a[1], sign_x * b[0], sign_y * b[1]
        return ax <= bx and ay <= by and (ax < bx or ay < by)

    return [not any(dominates(q, p) for q in points) for p in points]


def test_pareto_mask_on_a_known_front() -> None:
    x, y = np.array([1, 2, 0.5, 2, 3, 1]), np.array([1, 0.5, 3, 2, 3, 1])
    assert pareto_mask(x, y, True, True).tolist() == [True, True, True, False, False, True]  # ties both stay
    # rate (min) vs PSNR (max): the upper-left staircase
    bpp, psnr = np.array([0.5, 2, 32, 2, 32]), np.array([28, 32, 40, 30, 39])
    assert pareto_mask(bpp, psnr, True, False).tolist() == [True, True, True, False, False]


def test_pareto_mask_matches_brute_force_on_random_points() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 40).astype(float)
    for minimize_x, minimize_y in itertools.product((True, False), repeat=2):
        expected = brute_force_front(list(zip(x, y)), minimize_x, minimize_y)
        assert pareto_mask(x, y, minimize_x, minimize_y).tolist() == expected


CONFIGURATIONS = [f"f={f}, schedule={s}" for f in (1, 4, 8) for s in ("cosine", "linear")]  # table order


def configuration_means(synthetic_store, columns: list[str]):
    finished = synthetic_store.finished
    means = finished.groupby(["f", "schedule"])[columns].mean()
    means.index = [f"f={f}, schedule={s}" for f, s in means.index]
    return means


def test_variant_points_average_each_configuration_over_its_seeds(synthetic_store, study) -> None:
    guidance = variant_points(study, "g", {"fid_domain", "is_domain"})
    assert len(guidance) == len(CONFIGURATIONS) * len(synthetic_store.GUIDANCE_SCALES)
    assert list(dict.fromkeys(guidance["configuration"])) == CONFIGURATIONS
    for w in synthetic_store.GUIDANCE_SCALES:
        means = configuration_means(synthetic_store, [f"g{w}/fid_domain", f"g{w}/is_domain"])
        rows = guidance[guidance["variant"] == w].set_index("configuration")
        assert np.allclose(rows.loc[means.index, "fid_domain"], means[f"g{w}/fid_domain"])
        assert np.allclose(rows.loc[means.index, "is_domain"], means[f"g{w}/is_domain"])


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_colours_are_the_swept_configurations_in_table_order(study) -> None:
    drawn = fid_vs_step(study)
    ax = drawn.figure.axes[0]
    assert legend(ax) == CONFIGURATIONS
    assert ax.get_xlabel() == "diffusion training step" and ax.get_ylabel() == "FID (domain) ↓"
    assert "the 95% t-interval of the mean over the seeds" in drawn.caption and "n = 2" in drawn.caption
    throughput = fid_vs_throughput(study).figure.axes[0]
    assert legend(throughput) == CONFIGURATIONS
    assert throughput.get_xlabel() == metric_header("sample_images_per_s") and throughput.get_xscale() == "log"
    # The schedule is on the x axis; the colours are the other swept factor, f. The prediction target was not
    # swept, so it colours nothing; conditioning has one level, so it pools nothing.
    schedules = schedule_comparison(study).figure.axes[0]
    assert [t.get_text() for t in schedules.get_xticklabels()] == ["cosine", "linear"]
    assert legend(schedules) == ["f=1", "f=4", "f=8"]


def test_rate_distortion_leaves_out_the_identity_first_stage_and_marks_the_front(synthetic_store, study) -> None:
    drawn = rate_distortion(study)
    psnr_ax, fid_ax = drawn.figure.axes[:2]
    assert (psnr_ax.get_xlabel(), psnr_ax.get_ylabel()) == (metric_header("bpp"), metric_header("psnr"))
    assert "f = 1 (the identity first stage) is not drawn" in drawn.caption
    means = configuration_means(synthetic_store, ["bpp", "psnr", "fid_domain"]).drop(
        ["f=1, schedule=cosine", "f=1, schedule=linear"])
    for ax, metric, minimize in ((psnr_ax, "psnr", False), (fid_ax, "fid_domain", True)):
        drawn_points = sorted(tuple(p) for c in ax.collections for p in c.get_offsets())
        assert np.allclose(drawn_points, sorted(zip(means["bpp"], means[metric])))  # no f = 1 point
        points = list(zip(means["bpp"], means[metric]))
        front = sorted(p for p, keep in zip(points, brute_force_front(points, True, minimize)) if keep)
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
        assert np.allclose(sorted(zip(line.get_xdata(), line.get_ydata())), front)


def test_special_figures_need_their_factor_swept(study) -> None:
    unswept = dataclasses.replace(study, factors=("diffusion.conditioning",))
    with pytest.raises(MissingData, match="none of autoencoder.f, autoencoder.latent_channels, "
                                          "autoencoder.regularizer was swept"):
        rate_distortion(unswept)
    with pytest.raises(MissingData, match="none of diffusion.schedule, diffusion.prediction was swept"):
        schedule_comparison(dataclasses.replace(study, factors=("autoencoder.f",)))


def test_every_swept_factor_has_a_metric_against_level_figure(synthetic_store, study) -> None:
    specs = factor_figures(study, ["fid_domain", "psnr"])
    assert [s.name for s in specs] == ["metrics_vs_f", "metrics_vs_schedule"]
    fid_ax, psnr_ax = metric_vs_factor(study, "autoencoder.f", ["fid_domain", "psnr"]).figure.axes[:2]
    assert [t.get_text() for t in fid_ax.get_xticklabels()] == ["1", "4", "8"]
    assert legend(fid_ax) == ["schedule=cosine", "schedule=linear"]
    means = configuration_means(synthetic_store, ["fid_domain", "psnr"])

    def drawn_means(ax) -> tuple[list[float], list[float]]:
        """x and y of the mean lines (the error bars are NaN-separated segments)."""
        lines = [line for line in ax.get_lines() if len(line.get_ydata()) and not np.isnan(line.get_ydata()).any()]
        return [x for ln in lines for x in ln.get_xdata()], [y for ln in lines for y in ln.get_ydata()]

    assert np.allclose(sorted(drawn_means(fid_ax)[1]), sorted(means["fid_domain"]))
    # Each error bar is the 95% t-interval of its configuration's seeds, as in the tables.
    bars = sorted((np.nanmin(line.get_ydata()), np.nanmax(line.get_ydata())) for line in fid_ax.get_lines()
                  if len(line.get_ydata()) and np.isnan(line.get_ydata()).any())  # a bar and its caps
    seeds = synthetic_store.finished.groupby(["f", "schedule"])["fid_domain"]
    half = seeds.std(ddof=1) * t.ppf(0.975, 1) / np.sqrt(2)
    assert np.allclose(bars, sorted(zip(seeds.mean() - half, seeds.mean() + half)))
    # PSNR at f = 1 is the identity's sentinel: that level (x = 0) has no point.
    x, y = drawn_means(psnr_ax)
    assert min(x) > 0.5
    assert np.allclose(sorted(y), sorted(means["psnr"].drop(["f=1, schedule=cosine", "f=1, schedule=linear"])))


def test_sample_grids_keep_one_image_pixel_per_figure_pixel(study) -> None:
    drawn = sample_grids(study)
    grid = drawn.figure.axes[0].get_images()[0].get_array()
    width_px = drawn.figure.get_figwidth() * PNG_DPI
    assert width_px >= 2 * grid.shape[1]  # two grids side by side, neither shrunk


def test_every_figure_is_written_as_png_and_pdf(full_report) -> None:
    assert [f.name for f in full_report.figures] == [*(spec.name for spec in FIGURES), "metrics_vs_f",
                                                     "metrics_vs_schedule"]
    assert full_report.skipped == ()
    md = full_report.index.read_text()
    assert all(f"*{figure.caption}*" in md for figure in full_report.figures)
    for figure in full_report.figures:
        with Image.open(figure.png) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            extrema = image.convert("L").getextrema()
            assert extrema[0] < extrema[1]  # not a blank canvas
        pdf = figure.pdf.read_bytes()
        assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:] and len(pdf) > 2000


def test_figures_without_data_are_skipped_and_noted(sparse_report) -> None:
    # Only the generic figure of the one swept factor (c) has its data, the FID.
    assert [f.name for f in sparse_report.figures] == ["metrics_vs_c"]
    assert [s.name for s in sparse_report.skipped] == [spec.name for spec in FIGURES]
    reasons = {s.name: s.reason for s in sparse_report.skipped}
    assert "bpp" in reasons["rate_distortion"]
    assert reasons["schedule_comparison"] == "none of diffusion.schedule, diffusion.prediction was swept"
    assert "evaluation.fid_every" in reasons["fid_vs_step"]
    assert "evaluation.ddim_steps" in reasons["fid_vs_throughput"]
    assert "evaluation.guidance_scales" in reasons["guidance_sweep"]
    assert "samples.png" in reasons["sample_grids"]
    md, page = sparse_report.index.read_text(), sparse_report.html_index.read_text()
    for skipped in sparse_report.skipped:
        note = f"{skipped.title} ({skipped.name}): skipped, {skipped.reason}"
        assert note.replace("<", "\\<") in md and html.escape(note) in page
    drawn = {p.name for p in sparse_report.folder.rglob("*") if p.suffix in (".png", ".pdf")}
    assert drawn == {"metrics_vs_c.png", "metrics_vs_c.pdf"}


