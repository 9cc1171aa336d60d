"""metrics.json is strict JSON written atomically; the table names, orders and aligns the metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

from evaluation.report_card import META_KEY, format_metrics_table, metric_values, write_metrics_json

REPORT = {
    "psnr": 27.53123,
    "fid_domain": 1.2345678,
    "is_inception": None,
    "g3.0/fid_domain": 4.5,
    "custom_thing": float("nan"),
    META_KEY: {"num_samples": 100, "extractor_weights": {"domain": "domain-cnn:x"}, "notes": ["a", "b"],
               "workdir": Path("/tmp/w")},
}


def test_metrics_json_is_strict_json_with_nulls(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.json"
    write_metrics_json(REPORT, path)
    text = path.read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["fid_domain"] == 1.2345678 and loaded["is_inception"] is None and loaded["custom_thing"] is None
    assert loaded[META_KEY] == {"num_samples": 100, "extractor_weights": {"domain": "domain-cnn:x"},
                                "notes": ["a", "b"], "workdir": "/tmp/w"}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_metric_values_drop_meta() -> None:
    values = metric_values(REPORT)
    assert META_KEY not in values and values["psnr"] == 27.53123 and math.isnan(values["custom_thing"])


def test_table_orders_labels_and_aligns_values() -> None:
    lines = format_metrics_table(REPORT).splitlines()
    assert lines[0].split() == ["metric", "value", "unit"]
    rows = lines[1:6]
    # Catalog order (inception's metrics, then domain's, then PSNR), unknown names after, sweep variants last.
    assert rows[0].startswith("IS (inception) ↑") and rows[0].split()[-1] == "n/a"
    assert rows[1].startswith("FID (domain) ↓") and rows[1].split()[-1] == "1.235"
    assert rows[2].startswith("PSNR ↑") and rows[2].endswith("27.53  dB")
    assert rows[3].startswith("custom_thing") and rows[3].split()[-1] == "nan"
    assert rows[4].startswith("g3.0 FID (domain) ↓") and rows[4].split()[-1] == "4.5"
    value_ends = {len(row) for row in rows if not row.endswith("dB")}
    assert len(value_ends) == 1  # right-aligned value column
    assert lines[6:] == ["num_samples: 100", "extractor_weights: domain=domain-cnn:x", "notes: a; b",
                         "workdir: /tmp/w"]
