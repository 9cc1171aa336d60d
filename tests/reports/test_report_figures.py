"""reports/figures.py: Pareto fronts, sweep-variant aggregation, and the figure files of built reports."""

from __future__ import annotations

import html
import itertools

import numpy as np
import pytest
from PIL import Image

from reports.figures import FIGURES, fid_vs_step, fid_vs_throughput, pareto_mask, rate_distortion, variant_points
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


def test_variant_points_average_runs_per_value(synthetic_store, study) -> None:
    finished = synthetic_store.finished
    guidance = variant_points(study, "g", {"fid_domain", "is_domain"}, "diffusion.conditioning")
    assert guidance["variant"].tolist() == list(synthetic_store.GUIDANCE_SCALES)
    assert set(guidance["diffusion.conditioning"]) == {"class"}
    for _, row in guidance.iterrows():
        w = row["variant"]
        assert row["fid_domain"] == pytest.approx(finished[f"g{w}/fid_domain"].mean())
        assert row["is_domain"] == pytest.approx(finished[f"g{w}/is_domain"].mean())
    ddim = variant_points(study, "ddim", {"fid_domain", "sample_images_per_s"}, "autoencoder.f")
    assert len(ddim) == len(synthetic_store.F_VALUES) * len(synthetic_store.DDIM_STEPS)
    for _, row in ddim.iterrows():
        runs = finished[finished["f"].astype(str) == row["autoencoder.f"]]
        k = int(row["variant"])
        assert row["sample_images_per_s"] == pytest.approx(runs[f"ddim{k}/sample_images_per_s"].mean())


def test_fid_curve_has_one_line_per_f_with_labelled_axes(study) -> None:
    fig = fid_vs_step(study)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1", "4", "8"]
    assert ax.get_xlabel() == "diffusion training step" and ax.get_ylabel() == "FID (domain) ↓"
    throughput = fid_vs_throughput(study).axes[0]
    assert throughput.get_xlabel() == "Sampling [img/s] ↑" and throughput.get_xscale() == "log"


def test_rate_distortion_marks_the_pareto_front_of_configuration_means(synthetic_store, study) -> None:
    fig = rate_distortion(study)
    psnr_ax, fid_ax = fig.axes[:2]
    assert (psnr_ax.get_xlabel(), psnr_ax.get_ylabel()) == ("Rate [bpp] ↓", "PSNR [dB] ↑")
    means = synthetic_store.finished.groupby(["f", "schedule"])[["bpp", "psnr", "fid_domain"]].mean()
    for ax, metric, minimize in ((psnr_ax, "psnr", False), (fid_ax, "fid_domain", True)):
        points = list(zip(means["bpp"], means[metric]))
        front = sorted(p for p, keep in zip(points, brute_force_front(points, True, minimize)) if keep)
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
        drawn = sorted(zip(line.get_xdata(), line.get_ydata()))
        assert np.allclose(drawn, front)


def test_every_figure_is_written_as_png_and_pdf(full_report) -> None:
    assert [f.name for f in full_report.figures] == [spec.name for spec in FIGURES]
    assert full_report.skipped == ()
    for figure in full_report.figures:
        with Image.open(figure.png) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            extrema = image.convert("L").getextrema()
            assert extrema[0] < extrema[1]  # not a blank canvas
        pdf = figure.pdf.read_bytes()
        assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:] and len(pdf) > 2000


def test_figures_without_data_are_skipped_and_noted(sparse_report) -> None:
    assert sparse_report.figures == ()
    assert [s.name for s in sparse_report.skipped] == [spec.name for spec in FIGURES]
    reasons = {s.name: s.reason for s in sparse_report.skipped}
    assert "evaluation.fid_every" in reasons["fid_vs_step"]
    assert "evaluation.ddim_steps" in reasons["fid_vs_throughput"]
    assert "evaluation.guidance_scales" in reasons["guidance_sweep"]
    assert "samples.png" in reasons["sample_grids"]
    md, page = sparse_report.index.read_text(), sparse_report.html_index.read_text()
    for skipped in sparse_report.skipped:
        note = f"{skipped.title} ({skipped.name}): skipped, {skipped.reason}"
        assert note.replace("<", "\\<") in md and html.escape(note) in page
    assert not list(sparse_report.folder.rglob("*.png")) and not list(sparse_report.folder.rglob("*.pdf"))
