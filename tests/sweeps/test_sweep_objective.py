"""The real trial function on the tiny preset: both stages train, the first stage is shared, pruning sees val_loss."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from sweep_fakes import workdir_with_tracking_store

import evaluation.experiment
import ldm.training.autoencoder_stage
from ldm.config import ExperimentConfig, Override, load_config
from ldm.errors import UserError
from ldm.paths import default_tracking_uri
from ldm.tracking import NullTracker, Tracker
from sweeps.objective import run_trial
from sweeps.spec import parse_spec
from sweeps.study import open_storage, storage_location
from sweeps.workers import run_sweep

FAST = ["training.device=cpu", "data.max_train_items=100", "autoencoder.f=1",
        "diffusion.unet.base_channels=16", "diffusion.sampling.steps=2",
        *(f"training.{stage}.{key}" for stage in ("autoencoder", "diffusion")
          for key in ("steps=4", "batch_size=8", "log_every=2", "image_every=100", "checkpoint_every=100"))]


def test_run_trial_trains_both_stages_shares_the_first_stage_and_reports_val_loss(tmp_path_factory, tmp_path,
                                                                                  monkeypatch):
    evaluated: list[Path] = []

    def evaluate_experiment(cfg: ExperimentConfig, diffusion_ckpt: Path, workdir: Path,
                            tracker: Tracker) -> dict[str, float]:
        # Evaluation has its own tests; here it only has to receive each trial's trained checkpoint.
        evaluated.append(diffusion_ckpt)
        return {"fid_domain": float(len(evaluated))}

    monkeypatch.setattr(evaluation.experiment, "evaluate_experiment", evaluate_experiment)
    workdir = workdir_with_tracking_store(tmp_path_factory.getbasetemp() / "mlflow-template", tmp_path / "work")
    spec = parse_spec({"name": "real", "base": {"preset": "tiny", "overrides": FAST}, "sampler": "grid",
                       "pruner": "median", "prune_on": "val_loss", "objectives": [{"metric": "fid_domain"}],
                       "space": {"diffusion.prediction": {"type": "categorical",
                                                          "choices": ["epsilon", "v_prediction"]}}})
    summary = run_sweep(spec, workdir, trial_fn=run_trial, log=print)

    assert summary.states == {"COMPLETE": 2}
    assert len(set(evaluated)) == 2 and all(p.is_file() for p in evaluated)
    assert len(list((workdir / "first_stages").iterdir())) == 1  # both configurations share one first stage
    client = MlflowClient(tracking_uri=default_tracking_uri(workdir))
    storage = open_storage(storage_location("real", workdir, None))
    for trial in optuna.load_study(study_name="real", storage=storage).trials:
        assert trial.state == TrialState.COMPLETE
        history = client.get_metric_history(trial.user_attrs["mlflow_run_id"], "val_loss")
        assert trial.intermediate_values == {m.step: m.value for m in history} and set(trial.intermediate_values) \
            == {2, 4}
        assert client.get_metric_history(trial.user_attrs["mlflow_run_id"], "diffusion/loss")


def test_val_loss_is_an_objective_a_trial_returns_its_last_logged_value(tmp_path_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation.experiment, "evaluate_experiment", lambda *args: {"fid_domain": 1.0})
    workdir = workdir_with_tracking_store(tmp_path_factory.getbasetemp() / "mlflow-template", tmp_path / "work")
    spec = parse_spec({"name": "by-loss", "base": {"preset": "tiny", "overrides": FAST}, "sampler": "grid",
                       "objectives": [{"metric": "val_loss"}],
                       "space": {"diffusion.prediction": {"type": "categorical", "choices": ["epsilon"]}}})
    assert run_sweep(spec, workdir, trial_fn=run_trial, log=print).states == {"COMPLETE": 1}
    [trial] = optuna.load_study(study_name="by-loss", storage=open_storage(storage_location("by-loss", workdir,
                                                                                             None))).trials
    history = MlflowClient(tracking_uri=default_tracking_uri(workdir)).get_metric_history(
        trial.user_attrs["mlflow_run_id"], "val_loss")
    assert trial.values == [max(history, key=lambda m: m.step).value]


def test_run_trial_refuses_more_intermediate_fid_samples_than_the_reference_holds_before_training(tmp_path,
                                                                                                monkeypatch):
    def train_autoencoder(*args, **kwargs):
        raise AssertionError("training started before the sample count was checked")

    monkeypatch.setattr(ldm.training.autoencoder_stage, "train_autoencoder", train_autoencoder)
    cfg = load_config(preset="micro", overrides=[Override("evaluation.fid_every", 2),
                                                 Override("evaluation.fid_every_samples", 10**6)])
    with pytest.raises(UserError, match="^evaluation.fid_every_samples=1000000 exceeds the"):
        run_trial(cfg, tmp_path, NullTracker(), lambda metric, value, step: None)
