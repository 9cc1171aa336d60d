"""Studies run in this process with instant fake trials: queue, failures, pruning, Pareto front, MLflow runs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from sweep_fakes import (
    closed_form_metrics,
    diverging_trial,
    executions,
    pruned_trial,
    quick_trial,
    workdir_with_tracking_store,
)

from ldm.config import ExperimentConfig
from ldm.errors import UserError
from ldm.paths import default_tracking_uri
from sweeps.spec import TrialPoint, parse_spec
from sweeps.liveness import HOST_ENV, worker_identity
from sweeps.study import (
    STALE_REASON,
    claim_trial,
    counts_toward_budget,
    fail_reason,
    open_storage,
    open_study,
    storage_location,
    study_dir,
    sweep_status,
    worker_liveness,
)
from sweeps.workers import run_sweep, worker_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SWEEP_FAKE_LOG", str(tmp_path / "executions.jsonl"))
    return workdir_with_tracking_store(tmp_path_factory.getbasetemp() / "mlflow-template", tmp_path / "work")


def make_spec(name: str, f=(1, 2), channels=(2,), seeds=(0,), objectives=("fid_domain",), **extra):
    return parse_spec({
        "name": name, "base": {"preset": "tiny", "overrides": ["training.device=cpu", "data.resolution=32"]},
        "space": {"autoencoder.f": {"type": "categorical", "choices": list(f)},
                  "autoencoder.latent_channels": {"type": "categorical", "choices": list(channels)}},
        "objectives": [{"metric": m} for m in objectives], "sampler": "grid", "seeds": list(seeds), **extra})


def quiet(line: str) -> None:
    pass


def load(spec, workdir) -> optuna.Study:
    return optuna.load_study(study_name=spec.name, storage=open_storage(storage_location(spec.name, workdir, None)))


def client(workdir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=default_tracking_uri(workdir))


def test_grid_study_runs_every_point_once_with_a_parent_run_and_a_child_run_per_trial(workdir, tmp_path):
    spec = make_spec("grid", f=(2, 4), channels=(1, 3), seeds=(0, 5))
    summary = run_sweep(spec, workdir, trial_fn=quick_trial, log=quiet)
    assert summary.states == {"COMPLETE": 8} and not summary.interrupted
    assert sorted(executions(tmp_path / "executions.jsonl")) == sorted(
        (f, c, s) for f in (2, 4) for c in (1, 3) for s in (0, 5))

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(default_tracking_uri(workdir))
    try:
        found = mlflow.search_runs(experiment_names=["grid"])
    finally:
        mlflow.set_tracking_uri(previous)
    parent = found[found["tags.ldm.role"] == "study"]
    children = found[found["tags.ldm.role"] == "trial"]
    assert len(parent) == 1 and len(children) == 8
    assert parent["status"].item() == "FINISHED" and parent["run_id"].item() == summary.parent_run_id
    assert parent["tags.ldm.best_trials"].item() == ",".join(str(t.number) for t in summary.best_trials)
    assert parent[[f"tags.ldm.trials_{state}" for state in ("complete", "failed", "pruned", "running", "waiting")]] \
        .iloc[0].tolist() == ["8", "0", "0", "0", "0"]
    assert set(children["tags.mlflow.parentRunId"]) == {summary.parent_run_id}
    assert set(children["status"]) == {"FINISHED"}

    # One configuration tag per configuration, shared by its seeds.
    assert children.groupby("tags.ldm.configuration")["params.seed"].apply(sorted).tolist() == [["0", "5"]] * 4
    experiment = client(workdir).get_experiment_by_name("grid")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    assert load(spec, workdir).metric_names == ["fid_domain"]

    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    runs_by_trial = {int(r["tags.ldm.trial_number"]): r for _, r in children.iterrows()}
    for trial in load(spec, workdir).trials:
        run = runs_by_trial[trial.number]
        assert trial.user_attrs["mlflow_run_id"] == run["run_id"]
        point = TrialPoint({k: trial.params[k] for k in spec.space}, trial.user_attrs["ldm.seed"])
        cfg = spec.trial_config(point)
        assert run["params.autoencoder.f"] == str(point.params["autoencoder.f"])
        assert run["params.training.seed"] == run["params.seed"] == str(point.seed)
        assert run["params.diffusion.unet.channel_mult"] == str(cfg.diffusion.unet.channel_mult)
        assert run["tags.ldm.study"] == "grid"
        f, c = point.params["autoencoder.f"], point.params["autoencoder.latent_channels"]
        assert run["tags.mlflow.runName"] == f"f={f} latent_channels={c} s{point.seed}"
        assert run["params._swept.autoencoder.f"] == str(f)
        assert run["tags.ldm.trial_outcome"] == "complete"
        assert run["tags.ldm.config_hash"] == cfg.config_hash()
        assert run["tags.ldm.first_stage_hash"] == cfg.first_stage_hash()
        assert run["tags.ldm.git_commit"] == (git or "unknown")
        assert run["tags.ldm.torch_version"] == torch.__version__
        assert run["tags.ldm.device"] == "cpu"
        assert run["metrics.fid_domain"] == closed_form_metrics(cfg.autoencoder.f, cfg.autoencoder.latent_channels,
                                                                point.seed)["fid_domain"]
        files = {a.path for a in client(workdir).list_artifacts(run["run_id"])}
        assert files == {"config.yaml", "metrics.json"}
        logged = client(workdir).download_artifacts(run["run_id"], "config.yaml", str(tmp_path / f"c{trial.number}"))
        assert ExperimentConfig.model_validate(yaml.safe_load(Path(logged).read_text())).config_hash() \
            == cfg.config_hash()
        metrics = json.loads(Path(client(workdir).download_artifacts(
            run["run_id"], "metrics.json", str(tmp_path / f"m{trial.number}"))).read_text())
        assert metrics == closed_form_metrics(cfg.autoencoder.f, cfg.autoencoder.latent_channels, point.seed)
        assert trial.values == [metrics["fid_domain"]]


def test_diverging_trial_fails_with_its_reason_and_traceback_and_the_study_goes_on(workdir, tmp_path):
    spec = make_spec("nan", f=(1, 4, 2))
    summary = run_sweep(spec, workdir, trial_fn=diverging_trial, log=quiet)
    assert summary.states == {"COMPLETE": 2, "FAIL": 1}
    failed = next(t for t in load(spec, workdir).trials if t.state == TrialState.FAIL)
    assert failed.params["autoencoder.f"] == 4
    assert failed.user_attrs["ldm.fail_reason"] == "FloatingPointError: diffusion loss is nan at step 3"
    run = client(workdir).get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["ldm.fail_reason"] == "FloatingPointError: diffusion loss is nan at step 3"
    assert {a.path for a in client(workdir).list_artifacts(run.info.run_id)} == {"config.yaml", "traceback.txt"}
    text = Path(client(workdir).download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert "Traceback" in text and "diverging_trial" in text
    # A failure that is not a dead worker is final: rerunning does not repeat it.
    assert run_sweep(spec, workdir, trial_fn=diverging_trial, log=quiet).states == {"COMPLETE": 2, "FAIL": 1}


def test_study_where_every_trial_failed_ends_its_parent_run_failed_with_the_counts(workdir):
    spec = make_spec("all-nan", f=(4,), channels=(1, 2))  # `diverging_trial` fails every f = 4 trial
    summary = run_sweep(spec, workdir, trial_fn=diverging_trial, log=quiet)
    assert summary.states == {"FAIL": 2}
    parent = client(workdir).get_run(summary.parent_run_id)
    assert parent.info.status == "FAILED"
    counts = {tag: parent.data.tags[f"ldm.trials_{tag}"] for tag in ("complete", "failed", "pruned", "running",
                                                                     "waiting")}
    assert counts == {"complete": "0", "failed": "2", "pruned": "0", "running": "0", "waiting": "0"}
    assert parent.data.tags["ldm.best_trials"] == ""


def test_multi_objective_study_exposes_its_pareto_front(workdir):
    spec = make_spec("pareto", f=(2, 4, 8), channels=(1, 2, 4), objectives=("fid_domain", "sample_images_per_s"))
    summary = run_sweep(spec, workdir, trial_fn=quick_trial, log=quiet)
    points = [(f, c) for f in (2, 4, 8) for c in (1, 2, 4)]
    scores = {p: closed_form_metrics(*p, seed=0) for p in points}

    def dominated(p):
        return any(scores[q]["fid_domain"] <= scores[p]["fid_domain"]
                   and scores[q]["sample_images_per_s"] >= scores[p]["sample_images_per_s"]
                   and scores[q] != scores[p] for q in points)

    expected = {p for p in points if not dominated(p)}
    front = {(t.params["autoencoder.f"], t.params["autoencoder.latent_channels"]) for t in summary.best_trials}
    assert front == expected and 1 < len(front) < len(points)
    frame = sweep_status("pareto", workdir)
    assert frame.attrs["objectives"] == ["fid_domain", "sample_images_per_s"]
    on_front = frame[frame["pareto"]]
    assert set(zip(on_front["autoencoder.f"], on_front["autoencoder.latent_channels"])) == expected
    assert set(frame["state"]) == {"COMPLETE"} and (frame["duration_s"] >= 0).all()


def test_median_pruner_prunes_trials_worse_than_the_median(workdir):
    lrs = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4]
    spec = parse_spec({"name": "prune", "base": {"preset": "tiny"}, "sampler": "grid", "pruner": "median",
                       "space": {"training.diffusion.lr": {"type": "categorical", "choices": lrs}},
                       "objectives": [{"metric": "fid_domain"}]})
    run_sweep(spec, workdir, trial_fn=pruned_trial, log=quiet)
    trials = sorted(load(spec, workdir).trials, key=lambda t: t.params["training.diffusion.lr"])
    # MedianPruner waits for 5 finished trials; later ones above the median loss are pruned at step 0.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5 + [TrialState.PRUNED] * 2
    run = client(workdir).get_run(trials[-1].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["ldm.fail_reason"] == "pruned at step 0: val_loss=7"


def test_random_sampler_runs_each_sampled_configuration_with_every_seed(workdir):
    spec = parse_spec({"name": "rand", "base": {"preset": "tiny"}, "sampler": "random", "n_trials": 6,
                       "seeds": [0, 1, 2], "objectives": [{"metric": "fid_domain"}],
                       "space": {"autoencoder.latent_channels": {"type": "int", "low": 1, "high": 64, "log": True},
                                 "autoencoder.kl_weight": {"type": "float", "low": 1e-7, "high": 1e-3}}})
    assert run_sweep(spec, workdir, trial_fn=quick_trial, log=quiet).states == {"COMPLETE": 6}
    by_config: dict[str, list[int]] = {}
    for t in load(spec, workdir).trials:
        by_config.setdefault(json.dumps(t.params, sort_keys=True), []).append(t.user_attrs["ldm.seed"])
    assert len(by_config) == 2 and all(sorted(seeds) == [0, 1, 2] for seeds in by_config.values())


def test_rerun_resumes_without_repeating_and_refuses_a_changed_search(workdir, tmp_path):
    spec = make_spec("resume", f=(1, 2, 4))
    assert run_sweep(spec, workdir, n_trials=2, trial_fn=quick_trial, log=quiet).states == \
        {"COMPLETE": 2, "WAITING": 1}
    assert run_sweep(spec, workdir, trial_fn=quick_trial, log=quiet).states == {"COMPLETE": 3}
    assert run_sweep(spec, workdir, trial_fn=quick_trial, log=quiet).states == {"COMPLETE": 3}
    assert len(executions(tmp_path / "executions.jsonl")) == 3
    with pytest.raises(UserError, match="study 'resume' exists with a different spec \\(changed: space\\)"):
        run_sweep(make_spec("resume", f=(1, 2)), workdir, trial_fn=quick_trial, log=quiet)
    with pytest.raises(UserError, match="trial function .*<lambda> cannot run in worker processes"):
        run_sweep(spec, workdir, workers=2, trial_fn=lambda *a: {}, log=quiet)


POINT = {"autoencoder.f": 1, "autoencoder.latent_channels": 2}


def test_running_trial_is_stale_at_once_when_its_worker_on_this_host_is_gone(workdir):
    spec = make_spec("stale", f=(1,))
    location = storage_location(spec.name, workdir, None)
    liveness = worker_liveness(location, spec)
    study, _ = open_study(spec, open_storage(location, liveness))
    study.enqueue_trial(POINT, user_attrs={"ldm.seed": 0})
    directory = study_dir(workdir, spec.name)
    with worker_identity(directory) as owner:
        trial = claim_trial(study, spec, budget=2, owner=owner)
        assert trial is not None and liveness.fail_dead_trials(study) == []
    dead = liveness.fail_dead_trials(study)
    assert [t.number for t in dead] == [trial.number]
    first, retry = study.get_trials()
    assert first.state == TrialState.FAIL and fail_reason(first) == STALE_REASON and not counts_toward_budget(first)
    assert retry.state == TrialState.WAITING and retry.user_attrs["ldm.seed"] == 0  # queued again by the callback
    assert retry.system_attrs["fixed_params"] == POINT


@pytest.mark.parametrize("storage", ["journal", "rdb"])
def test_trial_of_another_host_is_failed_after_its_heartbeat_stops_for_the_grace_period(workdir, monkeypatch,
                                                                                       storage):
    spec = make_spec(f"beat-{storage}", f=(1,), heartbeat_s=1, grace_s=2)
    location = (f"sqlite:///{workdir / 'optuna.db'}" if storage == "rdb"
                else storage_location(spec.name, workdir, None))
    liveness = worker_liveness(location, spec)
    study, _ = open_study(spec, open_storage(location, liveness))
    study.enqueue_trial(POINT, user_attrs={"ldm.seed": 0})
    monkeypatch.setenv(HOST_ENV, "node-a")
    with worker_identity(study_dir(workdir, spec.name)) as owner:
        trial = claim_trial(study, spec, budget=None, owner=owner)
    assert trial is not None
    monkeypatch.setenv(HOST_ENV, "node-b")  # its lock file is free, but node-b cannot see node-a's files
    with liveness.beating(study._storage, trial._trial_id):
        time.sleep(3.5)  # past the grace period, while node-a still beats
        assert liveness.fail_dead_trials(study) == []
    time.sleep(1.0)
    assert liveness.fail_dead_trials(study) == []  # silent for 1 s: within the grace period
    time.sleep(2.0)
    dead = liveness.fail_dead_trials(study)
    assert [t.number for t in dead] == [trial.number] and liveness.fail_dead_trials(study) == []
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_a_point_queued_twice_runs_once_and_the_duplicate_never_counts(workdir):
    spec = make_spec("twice", f=(1, 2))
    study, _ = open_study(spec, open_storage(storage_location(spec.name, workdir, None)))
    for _ in range(2):  # as two workers that start together each queue the grid
        study.enqueue_trial(POINT, user_attrs={"ldm.seed": 0})
    other = {"autoencoder.f": 2, "autoencoder.latent_channels": 2}
    study.enqueue_trial(other, user_attrs={"ldm.seed": 0})
    with worker_identity(study_dir(workdir, spec.name)) as owner:
        first = claim_trial(study, spec, budget=2, owner=owner)
        second = claim_trial(study, spec, budget=2, owner=owner)
        assert claim_trial(study, spec, budget=2, owner=owner) is None
    assert (first.number, second.number) == (0, 2)
    duplicate = study.get_trials()[1]
    assert duplicate.state == TrialState.FAIL and duplicate.user_attrs["ldm.duplicate_of"] == 0
    assert fail_reason(duplicate) == "duplicate of trial 0" and not counts_toward_budget(duplicate)


def test_each_worker_gets_its_own_gpu_when_several_are_visible(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert [worker_env(i, ["3", "5"])["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["3", "5", "3"]
    assert worker_env(1, ["0"])["CUDA_VISIBLE_DEVICES"] == "0"


def test_worker_processes_share_the_cores_unless_told_a_thread_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [worker_env(i, [], workers=4)["OMP_NUM_THREADS"] for i in range(4)] == ["2"] * 4
    assert worker_env(0, [], workers=16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_env(0, [], workers=4)["OMP_NUM_THREADS"] == "3"


def test_timeout_stops_claiming_new_trials(workdir):
    spec = parse_spec({"name": "timed", "base": {"preset": "tiny"}, "sampler": "random", "timeout_s": 60,
                       "n_trials": 3, "objectives": [{"metric": "fid_domain"}],
                       "space": {"autoencoder.latent_channels": {"type": "int", "low": 1, "high": 8}}})
    now = [1_000_000.0]  # the sweep's clock, advanced by the trial alone: machine speed cannot matter

    def outlasting_trial(cfg, workdir, tracker, report, resume=False):
        now[0] += spec.timeout_s + 1
        return quick_trial(cfg, workdir, tracker, report)

    # The deadline passes during the first trial, which finishes; no second trial starts.
    summary = run_sweep(spec, workdir, trial_fn=outlasting_trial, log=quiet, clock=lambda: now[0])
    assert summary.states == {"COMPLETE": 1}
    assert summary.stopped_early == "timeout_s=60 reached with 2 of 3 trials left" and summary.exit_code == 3
    parent = client(workdir).get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ldm.study_outcome"] == "stopped early"


def test_unusable_tracking_uri_is_a_user_error_before_any_trial(workdir, tmp_path):
    with pytest.raises(UserError, match="cannot use MLflow tracking URI 'nosuch://x'"):
        run_sweep(make_spec("uri"), workdir, tracking_uri="nosuch://x", trial_fn=quick_trial, log=quiet)
    assert not (tmp_path / "executions.jsonl").exists()
