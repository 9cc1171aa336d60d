"""tests/servers.py: the real PostgreSQL and `mlflow server` the scale-out tests run against."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import optuna
import psycopg
import pytest
import servers
from mlflow.tracking import MlflowClient

from ldm.db_drivers import check_driver


def test_optuna_study_on_postgres_is_seen_by_a_second_storage(postgres_db: str) -> None:
    check_driver(postgres_db)  # a bare postgresql:// URL goes to psycopg 3
    study = optuna.create_study(study_name="smoke", storage=optuna.storages.RDBStorage(postgres_db))
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0) ** 2, n_trials=1)
    # Another machine opens the same storage by URL and sees the finished trial.
    again = optuna.load_study(study_name="smoke", storage=optuna.storages.RDBStorage(postgres_db))
    assert [t.state for t in again.trials] == [optuna.trial.TrialState.COMPLETE]
    assert again.trials[0].value == study.trials[0].value


def test_each_test_gets_its_own_database(postgres_url: str, postgres_db: str) -> None:
    with psycopg.connect(postgres_db) as connection:
        assert connection.execute("SELECT current_database()").fetchone()[0] == postgres_db.rsplit("/", 1)[1]
        assert connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    assert postgres_db != postgres_url


def test_artifact_goes_to_the_server_and_comes_back_through_runs_uri(mlflow_server: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.create_experiment(f"smoke-{uuid.uuid4().hex[:8]}")  # CI shares one server
    run = client.create_run(experiment)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the server owns the files
    sent = tmp_path / "sent" / "hello.txt"
    sent.parent.mkdir()
    sent.write_text("from a worker on another machine")
    client.log_artifact(run.info.run_id, str(sent))
    client.set_terminated(run.info.run_id, "FINISHED")
    sent.unlink()
    got = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/hello.txt", dst_path=str(tmp_path / "got"),
                                              tracking_uri=mlflow_server)
    assert Path(got).read_text() == "from a worker on another machine"


def test_a_missing_postgres_binary_is_an_error_naming_the_package(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no initdb on PATH
    monkeypatch.setattr(servers, "DEBIAN_POSTGRES_BINS", str(tmp_path / "postgresql" / "*" / "bin"))
    with pytest.raises(servers.ServerError, match=r"initdb is neither on PATH nor in .*apt-get install -y postgresql"):
        servers.start_postgres()
    versions = [tmp_path / "postgresql" / v / "bin" for v in ("9", "15")]
    for folder in versions:
        folder.mkdir(parents=True)
        (folder / "initdb").touch()
    assert servers.postgres_binary("initdb") == str(versions[1] / "initdb")  # the newest major, not "9" > "15"
