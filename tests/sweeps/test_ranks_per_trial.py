"""`gpus_per_trial: k`: each trial under torchrun on k ranks (2 gloo processes here), GPUs handed out in blocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from ldm.errors import UserError
from ldm.paths import default_tracking_uri
from ldm.tracking import Role, Tag
from sweeps.study import open_storage, storage_location
from sweeps.workers import check_gpus, worker_env

STUDY = "two-ranks"
STEPS = 6


def test_workers_get_disjoint_blocks_of_gpus() -> None:
    gpus = ["0", "1", "2", "3", "4", "5"]
    blocks = [worker_env(i, gpus, per_trial=2)["CUDA_VISIBLE_DEVICES"] for i in range(3)]
    assert blocks == ["0,1", "2,3", "4,5"]
    check_gpus(gpus, workers=3, per_trial=2)
    check_gpus([], workers=4, per_trial=2)  # no GPUs: k CPU processes per trial
    with pytest.raises(UserError, match=r"--workers 4 x gpus_per_trial=2 needs 8 GPUs, 6 visible .*"
                                        r"allowed: --workers <= 3"):
        check_gpus(gpus, workers=4, per_trial=2)


def test_a_trial_on_two_ranks_logs_once_into_its_run(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": STUDY, "base": {"preset": "micro", "overrides": [
            "evaluation.num_samples=16", "evaluation.kid_subset_size=8", f"training.diffusion.steps={STEPS}",
            "training.diffusion.log_every=1"]},
        "sampler": "grid", "gpus_per_trial": 2, "objectives": [{"metric": "fid_domain"}, {"metric": "val_loss"}],
        "space": {"diffusion.schedule": {"type": "categorical", "choices": ["cosine"]}}}))
    env = {**os.environ, "LDM_WORKDIR": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    ldm = str(Path(sys.executable).parent / "ldm")
    result = subprocess.run([ldm, "sweep", "run", str(spec)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    study = optuna.load_study(study_name=STUDY,
                              storage=open_storage(storage_location(STUDY, tmp_path / "work", None)))
    [trial] = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.values[0] > 0
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path / "work"))
    runs = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id])
    [child] = [r for r in runs if r.data.tags.get(Tag.ROLE) == Role.TRIAL]
    assert child.info.status == "FINISHED" and child.data.metrics["fid_domain"] == pytest.approx(trial.values[0])
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "diffusion/loss")]
    assert steps == list(range(1, STEPS + 1))  # rank 0 alone logged each step
    assert trial.values[1] == pytest.approx(child.data.metrics["val_loss"])  # the objective came back from rank 0
