"""`ldm sweep run/status/list/validate` and `ldm ui`, driven through typer's test runner."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import yaml
from sweep_fakes import quick_trial, workdir_with_tracking_store
from typer.testing import CliRunner

import sweeps.workers
from ldm.errors import UserError
from ldm.paths import WORKDIR_ENV
from sweeps import cli
from sweeps.spec import SpecError, load_spec

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    path = workdir_with_tracking_store(tmp_path_factory.getbasetemp() / "mlflow-template", tmp_path / "work")
    monkeypatch.setenv(WORKDIR_ENV, str(path))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sweeps.workers, "run_sweep", functools.partial(sweeps.workers.run_sweep,
                                                                       trial_fn=quick_trial))
    return path


def write_spec(tmp_path: Path, name: str, objectives: list[str]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "base": {"preset": "tiny"}, "sampler": "grid", "objectives": [{"metric": m} for m in objectives],
        "space": {"autoencoder.f": {"type": "categorical", "choices": [1, 2, 4]}}}))
    return path


def test_run_prints_study_trials_wall_time_and_ui_command_then_status_shows_the_trials(workdir, tmp_path):
    spec = write_spec(tmp_path, "cli", ["fid_domain"])
    result = runner.invoke(cli.app, ["run", str(spec), "--n-trials", "2"])
    assert result.exit_code == 3, result.output  # stopped early, with work left
    assert result.output.splitlines()[-1] == (f"stopped early: the trial budget (n_trials=2) reached with 1 of 3 "
                                              f"grid points left; resume with: ldm sweep run {spec}")
    lines = result.output.splitlines()
    assert lines[0] == "study cli: sampler grid, objectives fid_domain (minimize)"
    assert [line.split()[:3] for line in lines if re.match(r"trial \d+ ", line)] == [
        ["trial", "0", "COMPLETE"], ["trial", "1", "COMPLETE"]]
    assert "trial 2/2 (f=2 s0) started" in lines  # progress (stderr, mixed in by the runner) counts from 1
    assert "study cli: 2 complete, 1 waiting trials; wall time" in result.output
    assert "best: trial 1  fid_domain=52" in result.output  # 100 / f + channels with f = 2, 2 channels
    assert f"--backend-store-uri sqlite:///{workdir}/mlflow/mlflow.db" in result.output
    assert "--host 127.0.0.1 --port 5000" in result.output

    status = runner.invoke(cli.app, ["status", "cli"])
    assert status.exit_code == 0, status.output
    rows = [line for line in status.output.splitlines() if "COMPLETE" in line or "WAITING" in line]
    assert len(rows) == 3 and "1*" in rows[1] and "52" in rows[1]
    assert "best (*): trials 1" in status.output


def test_status_of_a_multi_objective_study_shows_its_pareto_front(workdir, tmp_path):
    spec = write_spec(tmp_path, "two", ["fid_domain", "sample_images_per_s"])
    assert runner.invoke(cli.app, ["run", str(spec)]).exit_code == 0
    status = runner.invoke(cli.app, ["status", "two"])
    # fid = 100 / f + 2 falls and speed = 20 / f falls with f: every trial is on the front.
    assert "Pareto front (*): trials 0, 1, 2" in status.output
    assert "sample_images_per_s" in status.output


def test_status_of_an_unknown_study_names_it(workdir):
    result = runner.invoke(cli.app, ["status", "ghost"])
    assert isinstance(result.exception, UserError)
    assert str(result.exception).startswith("no study 'ghost' under")


def test_validate_and_list(tmp_path):
    ok = runner.invoke(cli.app, ["validate", "quickstart"])
    points = load_spec("quickstart").grid_size
    assert ok.exit_code == 0 and ok.output.strip() == \
        f"quickstart: valid (study quickstart, sampler grid, 1 params, {points} trials)"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "b", "objectives": [{"metric": "fid"}]}))
    result = runner.invoke(cli.app, ["validate", str(bad)])
    assert isinstance(result.exception, SpecError) and "unknown metric 'fid'" in str(result.exception)
    listed = runner.invoke(cli.app, ["list"])
    assert listed.exit_code == 0
    assert [line.split(":")[0] for line in listed.output.splitlines()] == \
        ["conditioning", "f_ablation", "quickstart", "rate_distortion", "schedules"]


def test_validate_names_every_error_of_a_spec_at_once(tmp_path):
    bad = tmp_path / "three.yaml"
    bad.write_text(yaml.safe_dump({
        "name": "three", "base": {"preset": "tiny"}, "sampler": "tpe", "prune_on": "psnr", "heartbeat_s": 30,
        "grace_s": 10, "objectives": [{"metric": "fid_domain"}],
        "space": {"autoencoder.nonsense": {"type": "categorical", "choices": [1, 2]}}}))
    result = runner.invoke(cli.app, ["validate", str(bad)])
    message = str(result.exception)
    assert isinstance(result.exception, SpecError) and "\n" not in message
    assert "grace_s=10 must exceed heartbeat_s=30" in message
    assert "sampler 'tpe' needs n_trials or timeout_s" in message
    assert "prune_on='psnr' is not allowed" in message
    assert "autoencoder.nonsense" in message


def test_ui_starts_mlflow_on_loopback_and_prints_the_optuna_dashboard_command(workdir, tmp_path, monkeypatch):
    assert runner.invoke(cli.app, ["run", str(write_spec(tmp_path, "seen", ["fid_domain"])), "--n-trials", "1"]) \
        .exit_code == 3  # one of three grid points: stopped early
    started: list[list[str]] = []
    monkeypatch.setattr(cli, "run_servers", lambda commands: started.extend(commands) or 0)
    ui_app = __import__("typer").Typer()
    ui_app.command()(cli.ui)
    result = runner.invoke(ui_app, [])
    assert result.exit_code == 0, result.output
    assert f"optuna-dashboard {workdir}/sweeps/seen/journal.log" in result.output
    [command] = started
    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert command[4:] == ["--backend-store-uri", f"sqlite:///{workdir}/mlflow/mlflow.db",
                           "--default-artifact-root", f"{workdir}/mlflow/artifacts", "--host", "127.0.0.1",
                           "--port", "5000"]
    # The study's saved runs view: its trials, its swept values and objectives as columns, the best first.
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(f"sqlite:///{workdir}/mlflow/mlflow.db").get_experiment_by_name("seen")
    assert (f"runs of seen: http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
            "?viewStateShareKey=ldm-trials") in result.output.splitlines()
    view = json.loads(experiment.tags["mlflow.sharedViewState.ldm-trials"])
    assert view["selectedColumns"] == ["params.`_swept.autoencoder.f`", "metrics.`fid_domain`"]
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`fid_domain`", True)
    assert view["searchFilter"] == "tags.`ldm.role` = 'trial'"


def test_delete_asks_then_removes_the_study_and_its_experiment_and_frees_the_name(workdir, tmp_path):
    from mlflow.tracking import MlflowClient

    from ldm.paths import default_tracking_uri

    spec = write_spec(tmp_path, "gone", ["fid_domain"])
    assert runner.invoke(cli.app, ["run", str(spec)]).exit_code == 0
    refused = runner.invoke(cli.app, ["delete", "gone"], input="n\n")
    assert refused.exit_code == 1 and runner.invoke(cli.app, ["status", "gone"]).exit_code == 0

    deleted = runner.invoke(cli.app, ["delete", "gone", "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert deleted.output.startswith("study gone: deleted the Optuna study in ")
    assert "and the MLflow experiment in sqlite:///" in deleted.output
    with pytest.raises(UserError, match="no study 'gone' under"):
        runner.invoke(cli.app, ["status", "gone"], catch_exceptions=False)
    assert MlflowClient(tracking_uri=default_tracking_uri(workdir)).get_experiment_by_name("gone") is None
    again = runner.invoke(cli.app, ["run", str(spec)])  # the name is free for a new study
    assert again.exit_code == 0 and "3 complete trials" in again.output


def test_ui_optuna_without_one_study_journal_asks_for_the_storage(workdir):
    ui_app = __import__("typer").Typer()
    ui_app.command()(cli.ui)
    result = runner.invoke(ui_app, ["--optuna"])
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == ("--optuna needs --storage: there is not exactly one study journal under the "
                                     "work folder (studies: none)")


def test_status_keeps_swept_headers_whole_at_80_columns(workdir, tmp_path, monkeypatch):
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "long", "base": {"preset": "tiny"}, "sampler": "grid", "objectives": [{"metric": "fid_domain"}],
        "space": {"diffusion.schedule": {"type": "categorical", "choices": ["linear", "cosine"]},
                  "diffusion.prediction": {"type": "categorical", "choices": ["v_prediction"]}}}))
    assert runner.invoke(cli.app, ["run", str(spec)]).exit_code == 0
    monkeypatch.setenv("COLUMNS", "80")
    status = runner.invoke(cli.app, ["status", "long"])
    assert status.exit_code == 0, status.output
    header = next(line for line in status.output.splitlines() if "state" in line)
    assert "schedule" in header and "prediction" in header and "…" not in header
    assert "cosine" in status.output and "v_predic" in status.output  # values fold, never vanish


def test_status_ranks_configurations_by_their_mean_over_seeds_with_its_interval(workdir, tmp_path):
    spec = tmp_path / "seeded.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "seeded", "base": {"preset": "tiny"}, "sampler": "grid", "seeds": [0, 1],
        "objectives": [{"metric": "fid_domain"}], "space": {"autoencoder.f": {"type": "categorical",
                                                                             "choices": [2, 4]}}}))
    assert runner.invoke(cli.app, ["run", str(spec)]).exit_code == 0
    status = runner.invoke(cli.app, ["status", "seeded"])
    assert status.exit_code == 0, status.output
    channels = load_spec(str(spec)).base.load().autoencoder.latent_channels
    # fid = 100 / f + channels + seed (sweep_fakes): seeds 0 and 1 differ by 1, so the t half-width is
    # t(0.975, 1) x 0.7071 / sqrt(2).
    half = 12.706204736174696 * 0.7071067811865476 / 2 ** 0.5
    assert f"best configuration: f=4  fid_domain={25.5 + channels:.4g} ± {half:.2g} (n = 2)" in status.output
    ranked = status.output.split("configurations by mean fid_domain over seeds (± 95% t-interval):\n")[1]
    assert re.search(rf"│ 1 +│ 4 +│ 2 +│ {25.5 + channels:.4g} ± {half:.2g} +│", ranked)
    assert re.search(rf"│ 2 +│ 2 +│ 2 +│ {50.5 + channels:.4g} ± {half:.2g} +│", ranked)
