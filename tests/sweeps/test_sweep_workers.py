"""Worker processes on one study: no grid point twice, SIGKILL and SIGTERM, and resuming by rerunning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from process_waits import wait_for
from sweep_fakes import HELPERS_DIR, executions, quick_trial, workdir_with_tracking_store

from ldm.paths import default_tracking_uri
from sweeps.spec import parse_spec
from sweeps.study import STALE_REASON, fail_reason, open_storage, storage_location
from sweeps.workers import run_sweep


@pytest.fixture
def workdir(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SWEEP_FAKE_LOG", str(tmp_path / "executions.jsonl"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [HELPERS_DIR, os.environ.get("PYTHONPATH")])))
    return workdir_with_tracking_store(tmp_path_factory.getbasetemp() / "mlflow-template", tmp_path / "work")


def raw_spec(name: str, f=(1, 2, 4), channels=(2,), seeds=(0,)) -> dict:
    return {"name": name, "base": {"preset": "tiny", "overrides": ["training.device=cpu", "data.resolution=32"]},
            "sampler": "grid",
            "space": {"autoencoder.f": {"type": "categorical", "choices": list(f)},
                      "autoencoder.latent_channels": {"type": "categorical", "choices": list(channels)}},
            "objectives": [{"metric": "fid_domain"}], "seeds": list(seeds)}


def trials(name: str, workdir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(storage_location(name, workdir, None))
    return optuna.load_study(study_name=name, storage=storage).trials


def runs_by_status(name: str, workdir: Path) -> dict[str, list[str]]:
    client = MlflowClient(tracking_uri=default_tracking_uri(workdir))
    experiment = client.get_experiment_by_name(name)
    out: dict[str, list[str]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        out.setdefault(run.info.status, []).append(run.data.tags["ldm.role"])
    return out



def test_two_workers_run_every_grid_point_exactly_once(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_FAKE_MEET", f"{tmp_path / 'meet'}:2")
    monkeypatch.setenv("SWEEP_FAKE_SLEEP", "0.05")
    spec = parse_spec(raw_spec("two", f=(2, 4, 8), channels=(1, 2), seeds=(0, 1)))
    lines: list[str] = []
    summary = run_sweep(spec, workdir, workers=2, trial_fn=quick_trial, log=lines.append)
    assert summary.states == {"COMPLETE": 12}
    done = executions(tmp_path / "executions.jsonl")
    assert sorted(done) == sorted((f, c, s) for f in (2, 4, 8) for c in (1, 2) for s in (0, 1))
    assert len(list((tmp_path / "meet").iterdir())) == 2  # both worker processes ran trials
    statuses = runs_by_status("two", workdir)
    assert set(statuses) == {"FINISHED"} and sorted(statuses["FINISHED"]) == ["study"] + ["trial"] * 12


def test_two_coordinators_on_one_storage_run_every_grid_point_once(workdir, tmp_path, monkeypatch):
    # The second `run_sweep` queues the grid while the first holds a trial RUNNING (it waits at the barrier
    # for a trial of the second): that point is covered and must not be queued again.
    monkeypatch.setenv("SWEEP_FAKE_MEET", f"{tmp_path / 'meet'}:2")
    raw = raw_spec("shared", f=(2, 4, 8), channels=(1, 2))
    command = [sys.executable, "-m", "sweep_fakes", json.dumps(raw), str(workdir)]
    first = subprocess.Popen(command)
    wait_for(tmp_path / "meet" / str(first.pid), first)
    second = subprocess.Popen(command)
    assert (first.wait(timeout=300), second.wait(timeout=300)) == (0, 0)

    points = sorted((f, c, 0) for f in (2, 4, 8) for c in (1, 2))
    assert sorted(executions(tmp_path / "executions.jsonl")) == points
    done = trials("shared", workdir)
    assert [t.state for t in done] == [TrialState.COMPLETE] * len(points)
    assert sorted((t.params["autoencoder.f"], t.params["autoencoder.latent_channels"], 0) for t in done) == points
    assert len(list((tmp_path / "meet").iterdir())) == 2  # both coordinators ran trials


def test_worker_killed_mid_trial_is_taken_over_by_the_other_worker(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_FAKE_DIE", "kill")
    monkeypatch.setenv("SWEEP_FAKE_MARKER", str(tmp_path / "killed"))
    spec = parse_spec(raw_spec("killed"))
    lines: list[str] = []
    summary = run_sweep(spec, workdir, workers=2, trial_fn=quick_trial, log=lines.append)
    assert any(line.endswith(f"exited with code {-signal.SIGKILL}") for line in lines)
    # The surviving worker waits while its sibling's trial runs, finds it dead and runs its point itself.
    assert summary.states == {"COMPLETE": 3, "FAIL": 1}
    dead = next(t for t in trials("killed", workdir) if t.state == TrialState.FAIL)
    assert dead.params["autoencoder.f"] == 2 and fail_reason(dead) == STALE_REASON
    complete = sorted(t.params["autoencoder.f"] for t in trials("killed", workdir) if t.state == TrialState.COMPLETE)
    assert complete == [1, 2, 4]
    assert sorted(executions(tmp_path / "executions.jsonl")) == [(1, 2, 0), (2, 2, 0), (2, 2, 0), (4, 2, 0)]
    statuses = runs_by_status("killed", workdir)
    assert set(statuses) == {"FINISHED", "KILLED"} and statuses["KILLED"] == ["trial"]

    assert run_sweep(spec, workdir, workers=2, trial_fn=quick_trial, log=lines.append).states == \
        {"COMPLETE": 3, "FAIL": 1}  # nothing left to do
    assert len(executions(tmp_path / "executions.jsonl")) == 4


def test_sweep_process_killed_then_terminated_resumes_to_completion(workdir, tmp_path, monkeypatch):
    spec_json = json.dumps(raw_spec("resumed"))
    command = [sys.executable, "-m", "sweep_fakes", spec_json, str(workdir)]
    monkeypatch.setenv("SWEEP_FAKE_DIE", "wait")

    # Power loss: the sweep process (coordinator and worker) dies while f = 2 runs.
    monkeypatch.setenv("SWEEP_FAKE_MARKER", str(tmp_path / "first"))
    process = subprocess.Popen(command)
    wait_for(tmp_path / "first", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [t.state for t in trials("resumed", workdir)] == [TrialState.COMPLETE, TrialState.RUNNING,
                                                            TrialState.WAITING]
    assert sorted(runs_by_status("resumed", workdir)["RUNNING"]) == ["study", "trial"]

    # The rerun fails the stale trial, queues f = 2 again, and is stopped by SIGTERM while it runs.
    monkeypatch.setenv("SWEEP_FAKE_MARKER", str(tmp_path / "second"))
    process = subprocess.Popen(command)
    wait_for(tmp_path / "second", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143  # 128 + SIGTERM
    states = [(t.state, fail_reason(t)) for t in trials("resumed", workdir)]
    assert states == [(TrialState.COMPLETE, None), (TrialState.FAIL, STALE_REASON), (TrialState.COMPLETE, None),
                      (TrialState.FAIL, "interrupted")]
    statuses = runs_by_status("resumed", workdir)
    assert "RUNNING" not in statuses and sorted(statuses["KILLED"]) == ["study", "trial", "trial"]

    # The third run finishes the grid.
    monkeypatch.delenv("SWEEP_FAKE_DIE")
    summary = run_sweep(parse_spec(json.loads(spec_json)), workdir, trial_fn=quick_trial, log=print)
    assert summary.states == {"COMPLETE": 3, "FAIL": 2} and not summary.interrupted
    complete = sorted(t.params["autoencoder.f"] for t in trials("resumed", workdir) if t.state == TrialState.COMPLETE)
    assert complete == [1, 2, 4]
    statuses = runs_by_status("resumed", workdir)
    assert "RUNNING" not in statuses and statuses["FINISHED"].count("study") == 1


# `ldm` itself, with the instant fake trial in place of training (as tests/sweeps/test_sweep_cli.py does in-process).
LDM_WITH_FAKE_TRIAL = ("import functools, sweep_fakes, sweeps.workers as w; "
                       "w.run_sweep = functools.partial(w.run_sweep, trial_fn=sweep_fakes.quick_trial); "
                       "from ldm_cli.main import app; app()")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_ldm_sweep_run_exits_128_plus_the_signal_that_stopped_it(workdir, tmp_path, monkeypatch, signum, code):
    spec = tmp_path / "signalled.yaml"
    spec.write_text(json.dumps(raw_spec("signalled", f=(2,))))
    monkeypatch.setenv("SWEEP_FAKE_DIE", "wait")
    monkeypatch.setenv("SWEEP_FAKE_MARKER", str(tmp_path / "running"))
    process = subprocess.Popen([sys.executable, "-c", LDM_WITH_FAKE_TRIAL, "--workdir", str(workdir),
                                "sweep", "run", str(spec)], stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "running", process)
    process.send_signal(signum)
    assert process.wait(timeout=120) == code
    assert "interrupted: run the same command again to resume" in process.stderr.read()
    assert [(t.state, t.user_attrs.get("ldm.fail_reason")) for t in trials("signalled", workdir)] == [
        (TrialState.FAIL, "interrupted")]


def test_sweep_stop_interrupts_the_running_trial_and_the_next_run_resumes(workdir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ldm.paths import WORKDIR_ENV
    from sweeps import cli

    raw = {**raw_spec("stopped"), "heartbeat_s": 1, "grace_s": 5}
    monkeypatch.setenv("SWEEP_FAKE_DIE", "wait")  # the f = 2 trial waits 120 s
    monkeypatch.setenv("SWEEP_FAKE_MARKER", str(tmp_path / "waiting"))
    process = subprocess.Popen([sys.executable, "-m", "sweep_fakes", json.dumps(raw), str(workdir)])
    wait_for(tmp_path / "waiting", process)
    monkeypatch.setenv(WORKDIR_ENV, str(workdir))
    result = CliRunner().invoke(cli.app, ["stop", "stopped"])
    assert result.exit_code == 0 and result.output.startswith("study stopped: stop requested")
    assert process.wait(timeout=30) == 143  # as after SIGTERM
    states = [(t.state, fail_reason(t)) for t in trials("stopped", workdir)]
    assert states == [(TrialState.COMPLETE, None), (TrialState.FAIL, "interrupted"), (TrialState.WAITING, None)]

    summary = run_sweep(parse_spec(raw), workdir, trial_fn=quick_trial, log=print)  # the marker exists: no wait
    assert summary.states == {"COMPLETE": 3, "FAIL": 1} and not summary.interrupted
