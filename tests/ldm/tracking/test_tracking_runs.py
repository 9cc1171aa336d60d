"""ldm/tracking/runs.py against a real SQLite MLflow store: the URI, experiments, runs and their standard tags."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ldm.config import ExperimentConfig
from ldm.errors import UserError
from ldm.paths import default_artifact_root, default_tracking_uri
from ldm.tracking import MlflowTracker, NullTracker, Tag
from ldm.tracking.runs import (
    RUN_ID_ENV,
    TRACKING_URI_ENV,
    active_run_tracker,
    create_store_folder,
    describe_run,
    experiment_id,
    resolve_tracking_uri,
    start_run,
    tracked_run,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store, made once: creating one runs MLflow's migrations (seconds)."""
    root = tmp_path_factory.mktemp("store-template")
    uri = resolve_tracking_uri(root)
    create_store_folder(uri)
    MlflowClient(tracking_uri=uri).search_experiments()
    return Path(uri.removeprefix("sqlite:///"))


@pytest.fixture
def workdir(tmp_path: Path, template_store: Path) -> Path:
    """A work folder with its own copy of the empty store at the default URI."""
    db = Path(default_tracking_uri(tmp_path).removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    return tmp_path


def tiny_config(**tracking: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"name": "tiny-run", "training": {"device": "cpu"}, "tracking": tracking})


def test_explicit_uri_wins_over_the_embedded_store(tmp_path: Path) -> None:
    assert resolve_tracking_uri(tmp_path, "http://mlflow:5000") == "http://mlflow:5000"


def test_embedded_store_is_the_default_and_resolving_creates_nothing(tmp_path: Path) -> None:
    assert resolve_tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert resolve_tracking_uri(tmp_path, None) == resolve_tracking_uri(tmp_path, "")
    assert not (tmp_path / "mlflow").exists()  # `ldm report` reads; only writers create the store


def test_writers_get_the_sqlite_store_folder_made(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/elsewhere/runs.db"
    experiment_id(uri, "first", tmp_path)
    assert (tmp_path / "elsewhere" / "runs.db").is_file()
    create_store_folder("http://mlflow:5000")  # a server: nothing to make here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]


def test_active_run_reads_the_run_and_store_mlflow_exported(workdir: Path, tmp_path_factory, template_store,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    assert isinstance(active_run_tracker(workdir), NullTracker)

    # The run lives in another store than the work folder's: $MLFLOW_TRACKING_URI must win.
    other = tmp_path_factory.mktemp("other-store")
    shutil.copy(template_store, other / "mlflow.db")
    uri = f"sqlite:///{other}/mlflow.db"
    run = start_run(uri, experiment_id(uri, "outer", other), "outer-run")
    monkeypatch.setenv(RUN_ID_ENV, run.run_id)
    monkeypatch.setenv(TRACKING_URI_ENV, uri)
    tracker = active_run_tracker(workdir)
    assert isinstance(tracker, MlflowTracker)
    tracker.log_metrics({"fid_domain": 1.5})
    assert MlflowClient(tracking_uri=uri).get_run(run.run_id).data.metrics == {"fid_domain": 1.5}

    # Without $MLFLOW_TRACKING_URI the run is looked up in the work folder's store.
    local_uri = default_tracking_uri(workdir)
    local = start_run(local_uri, experiment_id(local_uri, "local", workdir), "local-run")
    monkeypatch.setenv(RUN_ID_ENV, local.run_id)
    monkeypatch.delenv(TRACKING_URI_ENV)
    active_run_tracker(workdir).log_metrics({"psnr": 30.0})
    assert MlflowClient(tracking_uri=local_uri).get_run(local.run_id).data.metrics == {"psnr": 30.0}


def test_experiment_is_created_once_with_its_own_artifact_folder(workdir: Path) -> None:
    uri = default_tracking_uri(workdir)
    first = experiment_id(uri, "ablation", workdir)
    assert experiment_id(uri, "ablation", workdir) == first
    experiment = MlflowClient(tracking_uri=uri).get_experiment(first)
    assert experiment.artifact_location == (default_artifact_root(workdir) / "ablation").as_uri()


def test_an_existing_experiment_is_used_as_it_is(workdir: Path) -> None:
    uri = default_tracking_uri(workdir)
    made = MlflowClient(tracking_uri=uri).create_experiment("made-elsewhere", artifact_location="file:///somewhere")
    assert experiment_id(uri, "made-elsewhere", workdir) == made


def test_a_deleted_experiment_is_a_one_line_user_error(workdir: Path) -> None:
    uri = default_tracking_uri(workdir)
    client = MlflowClient(tracking_uri=uri)
    deleted = client.create_experiment("gone")
    client.delete_experiment(deleted)
    with pytest.raises(UserError) as error:
        experiment_id(uri, "gone", workdir)
    message = str(error.value)
    assert "\n" not in message
    assert f"MLflow experiment 'gone' in {uri} is deleted" in message
    assert f"mlflow experiments restore --experiment-id {deleted}" in message


def test_an_unusable_store_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot use MLflow tracking URI 'nosuch://x'"):
        experiment_id("nosuch://x", "any", tmp_path)


def test_runs_nest_under_a_parent_only_when_given_one(workdir: Path) -> None:
    uri = default_tracking_uri(workdir)
    experiment = experiment_id(uri, "nesting", workdir)
    parent = start_run(uri, experiment, "parent", tags={Tag.ROLE: "study"})
    child = start_run(uri, experiment, "child", parent_run_id=parent.run_id, tags={Tag.TRIAL_NUMBER: "3"})
    client = MlflowClient(tracking_uri=uri)
    parent_run, child_run = client.get_run(parent.run_id), client.get_run(child.run_id)
    assert parent_run.info.run_name == "parent" and parent_run.info.status == "RUNNING"
    assert Tag.PARENT_RUN_ID not in parent_run.data.tags and parent_run.data.tags[Tag.ROLE] == "study"
    assert child_run.data.tags[Tag.PARENT_RUN_ID] == parent.run_id
    assert child_run.data.tags[Tag.TRIAL_NUMBER] == "3"


def test_describe_run_logs_every_field_and_the_standard_tags(workdir: Path) -> None:
    uri = default_tracking_uri(workdir)
    cfg = tiny_config()
    tracker = start_run(uri, experiment_id(uri, "described", workdir), cfg.name)
    describe_run(tracker, cfg, tags={Tag.NUM_SAMPLES: "64"})
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.params["autoencoder.f"] == str(cfg.autoencoder.f)
    assert run.data.params["seed"] == run.data.params["training.seed"] == str(cfg.training.seed)
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert {k: v for k, v in run.data.tags.items() if k.startswith("ldm.")} == {
        Tag.CONFIG_HASH: cfg.config_hash(),
        Tag.FIRST_STAGE_HASH: cfg.first_stage_hash(),
        Tag.GIT_COMMIT: git or "unknown",
        Tag.TORCH_VERSION: torch.__version__,
        Tag.DEVICE: "cpu",
        Tag.NUM_SAMPLES: "64",
    }


def test_tracked_run_finishes_or_fails_with_its_block(workdir: Path) -> None:
    cfg = tiny_config(experiment="blocks")
    with tracked_run(cfg, workdir) as finished:
        pass
    with pytest.raises(RuntimeError), tracked_run(cfg, workdir) as failed:
        raise RuntimeError("boom")
    client = MlflowClient(tracking_uri=default_tracking_uri(workdir))
    assert client.get_run(finished.run_id).info.status == "FINISHED"
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(finished.run_id).data.tags[Tag.CONFIG_HASH] == cfg.config_hash()


def test_images_are_logged_as_keyed_steps_that_the_ui_steps_through(workdir: Path) -> None:
    from PIL import Image

    uri = resolve_tracking_uri(workdir)
    tracker = start_run(uri, experiment_id(uri, "images", workdir), "grids")
    for step in (2, 4):
        tracker.log_image(Image.new("RGB", (8, 8)), key="diffusion_samples", step=step)
    names = [Path(a.path).name for a in MlflowClient(tracking_uri=uri).list_artifacts(tracker.run_id, "images")]
    pngs = sorted(n for n in names if n.endswith(".png"))
    assert [n.split("+")[:3] for n in pngs] == [["diffusion_samples", "step", "2"], ["diffusion_samples", "step", "4"]]
