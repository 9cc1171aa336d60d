"""The report built from a real `mlflow server` alone: a fresh empty work folder and `--tracking-uri`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from reports.cli import report


def test_report_builds_from_the_tracking_server_alone(served_coverage_study, mlflow_server: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    study = served_coverage_study
    monkeypatch.delenv("LDM_WORKDIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing here: no trial folders, no Optuna storage, no local MLflow store
    report(study.name, out=None, format="md,csv", tracking_uri=mlflow_server)

    folder = tmp_path / "outputs" / "reports" / study.name
    written = {p.relative_to(tmp_path).parts[:3] for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {("outputs", "reports", study.name)}  # the report folder, nothing else appeared
    md = (folder / "index.md").read_text()
    assert "2 of 6 grid points missing (no finished trial): f=8, seed 0; f=4, seed 1" in md
    assert "| 2 | 3 | f=4 | 0 |" in md and "| 4 | worker_died | f=4 | 1 |" in md
    assert pd.read_csv(folder / "tables" / "overall.csv").set_index("f")["n"].to_dict() == {1: 2, 4: 1, 8: 1}
    logged = {a.path for a in MlflowClient(tracking_uri=mlflow_server).list_artifacts(study.parent_run_id, "report")}
    assert "report/index.md" in logged  # and the report went back to the server
