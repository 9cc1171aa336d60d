"""Three machines on one real PostgreSQL and one real `mlflow server`: each grid point runs once, a worker
killed mid-trial is taken over from another host and resumed, and a fourth, empty machine reports and samples.

Each "machine" is a `ldm sweep run` process with its own work folder and host identity ($LDM_HOST); they
share only what a cluster shares: the Optuna storage, the tracking server and a cache folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from ldm.tracking import Role, Tag
from sweeps.study import OWNER_ATTR, RUN_ID_ATTR, STALE_REASON, fail_reason, trial_point

STUDY = "cluster"
HEARTBEAT_S, GRACE_S = 1, 4
# The micro preset with diffusion training long enough to be killed between two uploaded checkpoints.
BASE = ["evaluation.num_samples=16", "evaluation.kid_subset_size=8", "tracking.log_checkpoints=all",
        "training.diffusion.steps=60", "training.diffusion.checkpoint_every=10", "training.diffusion.log_every=10",
        "training.diffusion.image_every=1000"]
SCHEDULES, PREDICTIONS = ["linear", "cosine", "sigmoid"], ["epsilon", "v_prediction"]


def _spec(path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "name": STUDY, "base": {"preset": "micro", "overrides": BASE}, "sampler": "grid",
        "objectives": [{"metric": "fid_domain"}], "heartbeat_s": HEARTBEAT_S, "grace_s": GRACE_S,
        "space": {"diffusion.schedule": {"type": "categorical", "choices": SCHEDULES},
                  "diffusion.prediction": {"type": "categorical", "choices": PREDICTIONS}}}))
    return path


def _machine_env(tmp_path: Path, name: str, tracking_uri: str) -> dict[str, str]:
    # One thread each: three machines share these two cores, and oversubscribed torch threads crawl.
    return {**os.environ, "LDM_WORKDIR": str(tmp_path / name), "LDM_HOST": name,
            "LDM_CACHE": str(tmp_path / "shared-cache"), "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}


def _ldm(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "ldm"), *args]  # the console script a user runs


def _checkpointed_running_trial(study: optuna.Study, client: MlflowClient) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial whose run already holds an uploaded diffusion checkpoint."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id and any(a.path.endswith("diffusion.pt") for a in client.list_artifacts(run_id, "checkpoints")):
            return trial
    return None


def test_three_machines_run_each_point_once_and_recover_a_killed_worker(postgres_db, mlflow_server, tmp_path):
    started = time.monotonic()
    spec = _spec(tmp_path / "spec.yaml")
    machines = [f"machine-{i}" for i in range(3)]
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in machines}
    workers = {name: subprocess.Popen(
        _ldm("sweep", "run", str(spec), "--storage", postgres_db, "--tracking-uri", mlflow_server),
        env=_machine_env(tmp_path, name, mlflow_server), stdout=logs[name], stderr=subprocess.STDOUT,
        start_new_session=True) for name in machines}  # started together, as a job array does

    client = MlflowClient(tracking_uri=mlflow_server)
    study = None
    victim = None
    deadline = time.monotonic() + 600
    while victim is None:
        assert time.monotonic() < deadline, "no trial reached an uploaded checkpoint"
        assert all(p.poll() is None for p in workers.values()), "a worker ended before any was killed"
        try:
            study = study or optuna.load_study(study_name=STUDY, storage=postgres_db)
        except KeyError:
            time.sleep(0.2)
            continue
        victim = _checkpointed_running_trial(study, client)
        time.sleep(0.1)
    victim_host = victim.user_attrs[OWNER_ATTR]["host"]
    os.killpg(workers[victim_host].pid, signal.SIGKILL)  # the machine is gone: no clean-up of any kind
    killed_at = time.time()

    survivors = [name for name in machines if name != victim_host]
    for name in survivors:
        assert workers[name].wait(timeout=900) == 0, (tmp_path / f"{name}.log").read_text()
    workers[victim_host].wait()
    for log in logs.values():
        log.close()
    sweep_wall_s = time.monotonic() - started

    trials = study.get_trials(deepcopy=False)
    complete = [trial_point(t).key() for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(SCHEDULES) * len(PREDICTIONS) == len(set(complete))  # every point exactly once
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL and fail_reason(dead) == STALE_REASON
    # Recovered from another host within heartbeat + grace (plus an idle worker's poll and the server's lag).
    recovered_after = dead.datetime_complete.timestamp() - killed_at
    assert recovered_after <= HEARTBEAT_S + GRACE_S + 3, recovered_after
    retry = next(t for t in trials if t.state == TrialState.COMPLETE
                 and trial_point(t).key() == trial_point(dead).key())
    assert retry.user_attrs[OWNER_ATTR]["host"] in survivors
    survivor_logs = "".join((tmp_path / f"{name}.log").read_text() for name in survivors)
    assert f"trial {retry.number}: retry of trial {dead.number}, resuming at diffusion step" in survivor_logs
    assert "View run" not in survivor_logs and " INFO mlflow" not in survivor_logs  # the suite's lines only
    assert "Downloading artifacts" not in survivor_logs and f"MLflow UI: {mlflow_server}\n" in survivor_logs

    experiment = client.get_experiment_by_name(STUDY).experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(Tag.ROLE) == Role.STUDY]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    # One first stage (every point shares its hash): trained, and uploaded, by exactly one trial run.
    trained = [r for r in runs if any(a.path.endswith("autoencoder.pt")
                                      for a in client.list_artifacts(r.info.run_id, "checkpoints"))]
    assert len(trained) == 1, [r.info.run_id for r in trained]

    # A fourth machine with an empty work folder: the report and samples from the tracking server alone.
    env = _machine_env(tmp_path, "laptop", mlflow_server)
    env["LDM_CACHE"] = str(tmp_path / "laptop" / "cache")
    report = subprocess.run(_ldm("report", STUDY, "--tracking-uri", mlflow_server, "--out", str(tmp_path / "report")),
                            env=env, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    index = (tmp_path / "report" / "index.md").read_text()
    assert all(schedule in index for schedule in SCHEDULES)
    grid = tmp_path / "samples.png"
    uri = f"runs:/{retry.user_attrs[RUN_ID_ATTR]}/checkpoints/diffusion.pt"
    sample = subprocess.run(_ldm("sample", "--checkpoint", uri, "--n", "4", "--steps", "2", "--out", str(grid)),
                            env=env, capture_output=True, text=True, timeout=600)
    assert sample.returncode == 0, sample.stderr
    assert grid.read_bytes().startswith(b"\x89PNG")
    print(f"multi-machine sweep: {sweep_wall_s:.1f} s wall; killed trial {dead.number} on {victim_host} "
          f"recovered {recovered_after:.1f} s after the kill; {len(trials)} trials in the storage")
