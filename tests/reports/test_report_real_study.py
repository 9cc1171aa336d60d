"""A real (tiny) study end to end: train and evaluate two configurations, then build the report from MLflow."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from ldm.paths import default_tracking_uri
from reports.build import build_report
from sweeps.spec import parse_spec
from sweeps.workers import run_sweep

# The micro preset with fewer samples and one extra DDIM step count (for the FID-vs-throughput figure).
MICRO = ["evaluation.num_samples=16", "evaluation.kid_subset_size=8", "evaluation.ddim_steps=[1]"]


def test_tiny_real_study_reports_one_row_per_configuration(tmp_path: Path) -> None:
    spec = parse_spec({"name": "tiny-real", "base": {"preset": "micro", "overrides": MICRO}, "sampler": "grid",
                       "objectives": [{"metric": "fid_domain"}],
                       "space": {"autoencoder.f": {"type": "categorical", "choices": [1, 2]}}})
    summary = run_sweep(spec, tmp_path, log=print)
    assert summary.states == {"COMPLETE": 2}

    report = build_report("tiny-real", tmp_path / "report", tracking_uri=default_tracking_uri(tmp_path))
    with open(report.folder / "tables" / "overall.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["f"] for row in rows) == ["1", "2"]
    for row in rows:
        assert float(row["fid_domain_mean"]) >= 0 and float(row["psnr_mean"]) > 0 and row["n"] == "1"
    assert report.figures, "a real study has at least the sample grids and FID-vs-throughput figures"
    for figure in report.figures:
        with Image.open(figure.png) as image:
            assert image.width > 100 and image.height > 100
        assert figure.pdf.read_bytes().startswith(b"%PDF")
    index = report.index.read_text()
    assert "tiny-real" in index and "overall" in index
