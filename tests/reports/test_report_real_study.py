"""A real (tiny) study end to end: train and evaluate two configurations, then build the report from MLflow."""

from __future__ import annotations

import csv
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from reports.build import build_report
from reports.figures import fid_vs_step
from reports.runs import load_study


def test_tiny_real_study_reports_one_row_per_configuration(tiny_real_study, tmp_path: Path) -> None:
    assert tiny_real_study.sweep.states == {"COMPLETE": 2}
    uri = tiny_real_study.tracking_uri

    report = build_report(tiny_real_study.NAME, tmp_path / "report", tracking_uri=uri)
    with open(report.folder / "tables" / "overall.csv") as f:
        rows = {row["f"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == ["1", "2"] and {row["n"] for row in rows.values()} == {"1"}
    client = MlflowClient(tracking_uri=uri)
    study = load_study(tiny_real_study.NAME, uri)
    for run_id, f in zip(study.finished["run_id"], study.finished["params.autoencoder.f"], strict=True):
        logged = client.get_run(run_id).data.metrics
        for metric in ("fid_domain", "psnr", "bpp"):
            if f == "1" and metric != "fid_domain":
                # The identity first stage is lossless at the raw rate: it logs PSNR's 100 dB cap and 8 bits per
                # grey pixel, which the tables withhold (no number in the CSV, a dash in the others).
                assert (metric, logged[metric]) in {("psnr", 100.0), ("bpp", 8.0)}
                assert rows[f][f"{metric}_mean"] == ""
            else:
                assert float(rows[f][f"{metric}_mean"]) == logged[metric], (f, metric)
    assert float(rows["2"]["psnr_mean"]) < 100.0 and float(rows["2"]["bpp_mean"]) < 8.0
    overall_md = (report.folder / "tables" / "overall.md").read_text()
    assert "| 1 | " in overall_md and "— | — |" in overall_md and "identity first stage (f = 1)" in overall_md

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
