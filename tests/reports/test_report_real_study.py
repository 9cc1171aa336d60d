"""A real (tiny) study end to end: train and evaluate two configurations, then build the report from MLflow."""

from __future__ import annotations

import csv
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from ldm.paths import default_tracking_uri
from reports.build import build_report
from reports.figures import fid_vs_step
from reports.runs import load_study
from sweeps.spec import parse_spec
from sweeps.workers import run_sweep

# The micro preset with fewer samples, one extra DDIM step count (the FID-vs-throughput figure) and an
# intermediate FID at step 2 (the FID-vs-step figure).
MICRO = ["evaluation.num_samples=16", "evaluation.kid_subset_size=8", "evaluation.ddim_steps=[1]",
         "evaluation.fid_every=2", "evaluation.fid_every_samples=10"]


def test_tiny_real_study_reports_one_row_per_configuration(tmp_path: Path) -> None:
    spec = parse_spec({"name": "tiny-real", "base": {"preset": "micro", "overrides": MICRO}, "sampler": "grid",
                       "objectives": [{"metric": "fid_domain"}],
                       "space": {"autoencoder.f": {"type": "categorical", "choices": [1, 2]}}})
    summary = run_sweep(spec, tmp_path, log=print)
    assert summary.states == {"COMPLETE": 2}
    uri = default_tracking_uri(tmp_path)

    report = build_report("tiny-real", tmp_path / "report", tracking_uri=uri)
    with open(report.folder / "tables" / "overall.csv") as f:
        rows = {row["f"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == ["1", "2"] and {row["n"] for row in rows.values()} == {"1"}
    # The identity first stage is lossless at the raw rate: PSNR's 100 dB cap and 8 bits per grey pixel.
    assert (float(rows["1"]["psnr_mean"]), float(rows["1"]["bpp_mean"])) == (100.0, 8.0)
    assert float(rows["2"]["psnr_mean"]) < 100.0 and float(rows["2"]["bpp_mean"]) < 8.0
    client = MlflowClient(tracking_uri=uri)
    study = load_study("tiny-real", uri)
    for run_id, f in zip(study.finished["run_id"], study.finished["params.autoencoder.f"], strict=True):
        logged = client.get_run(run_id).data.metrics
        for metric in ("fid_domain", "psnr", "bpp", "sample_images_per_s"):
            assert float(rows[f][f"{metric}_mean"]) == logged[metric], (f, metric)

    assert {figure.name for figure in report.figures} == {"fid_vs_step", "fid_vs_throughput", "rate_distortion",
                                                          "sample_grids", "metrics_vs_f", "fid_vs_compute"}
    for figure in report.figures:
        with Image.open(figure.png) as image:
            assert image.format == "PNG"
        assert figure.pdf.read_bytes().startswith(b"%PDF")
    # The FID-against-step line of each f is its logged history; at step 4 the final FID, logged after the
    # intermediate one, is the value kept.
    # seaborn draws one data line per f in hue order (sorted f), then empty lines for the legend.
    drawn = [line for line in fid_vs_step(study).figure.axes[0].get_lines() if len(line.get_xdata())]
    lines = dict(zip(sorted(rows, key=int), drawn, strict=True))
    for run_id, f in zip(study.finished["run_id"], study.finished["params.autoencoder.f"], strict=True):
        logged_points = sorted(client.get_metric_history(run_id, "fid_domain"), key=lambda m: m.timestamp)
        assert [m.step for m in logged_points] == [2, 4, 4]
        history = {m.step: m.value for m in logged_points}
        x, y = lines[f].get_data()
        assert list(x) == list(history) and list(y) == list(history.values())
        assert history[4] == float(rows[f]["fid_domain_mean"])
    index = report.index.read_text()
    assert "tiny-real" in index and "overall" in index
