"""ldm/artifacts.py against a real SQLite MLflow store: checkpoints uploaded, named by URI, fetched by other folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ldm.artifacts import RECORD_NAME, CheckpointRecord, latest_checkpoint, local_checkpoint, uploads
from ldm.config import ExperimentConfig, load_config, parse_overrides
from ldm.errors import UserError
from ldm.paths import CACHE_ENV, WORKDIR_ENV, artifact_cache_dir
from ldm.tracking import NullTracker
from ldm.tracking.runs import TRACKING_URI_ENV, resolve_tracking_uri, tracked_run
from ldm.training.autoencoder_stage import first_stage_checkpoint
from ldm.training.checkpoint import read_checkpoint
from ldm.training.diffusion_stage import run_dir, train_diffusion
from ldm_cli.main import app

# The micro preset on fewer images; the diffusion stage checkpoints at steps 3 and 6.
MICRO = ["data.shapes_count=200", "training.autoencoder.steps=2", "training.diffusion.steps=6",
         "training.diffusion.checkpoint_every=3", "training.diffusion.log_every=1"]


def micro(log_checkpoints: str, *overrides: str) -> ExperimentConfig:
    return load_config(preset="micro", overrides=parse_overrides(
        [*MICRO, f"tracking.log_checkpoints={log_checkpoints}", *overrides]))


def stop_after(step: int) -> Any:
    """An on_eval that kills training once `step` is done, like a worker that dies."""
    def on_eval(name: str, value: float, at: int) -> None:
        if at > step:
            raise KeyboardInterrupt
    return on_eval


def train_tracked(cfg: ExperimentConfig, workdir: Path, **kwargs: Any) -> str:
    """Train both stages inside one tracked run; its run id (a KeyboardInterrupt from kwargs' on_eval ends it)."""
    with tracked_run(cfg, workdir) as tracker:
        try:
            train_diffusion(cfg, workdir, tracker, **kwargs)
        except KeyboardInterrupt:
            pass
    return tracker.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tracked run of both stages with log_checkpoints=final, in a work folder of its own."""
    workdir = tmp_path_factory.mktemp("trainer")
    cfg = micro("final")
    run_id = train_tracked(cfg, workdir)
    return {"workdir": workdir, "uri": resolve_tracking_uri(workdir), "run_id": run_id, "cfg": cfg,
            "record": CheckpointRecord.read(run_dir(cfg, workdir) / RECORD_NAME)}


def cli(workdir: Path, tracking_uri: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["--workdir", str(workdir), *args],
                              env={WORKDIR_ENV: str(workdir), TRACKING_URI_ENV: tracking_uri, CACHE_ENV: None})


def test_final_logs_both_stages_and_the_record_names_them_by_uri(store: dict[str, Any]) -> None:
    client, run_id = MlflowClient(tracking_uri=store["uri"]), store["run_id"]
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {
        "checkpoints/autoencoder.pt", "checkpoints/diffusion.pt"}
    assert store["record"] == CheckpointRecord(first_stage=f"runs:/{run_id}/checkpoints/autoencoder.pt",
                                               diffusion=f"runs:/{run_id}/checkpoints/diffusion.pt")
    first_stage = first_stage_checkpoint(store["cfg"], store["workdir"])
    assert uploads(first_stage)[store["uri"]] == store["record"].first_stage
    logged = Path(client.download_artifacts(run_id, RECORD_NAME, str(store["workdir"] / "logged")))
    assert CheckpointRecord.read(logged) == store["record"]


def test_a_run_reusing_the_first_stage_names_the_uri_of_the_run_that_trained_it(store: dict[str, Any]) -> None:
    cfg = micro("final", "diffusion.conditioning=class")
    run_id = train_tracked(cfg, store["workdir"])
    record = CheckpointRecord.read(run_dir(cfg, store["workdir"]) / RECORD_NAME)
    assert record.first_stage == store["record"].first_stage
    assert record.diffusion == f"runs:/{run_id}/checkpoints/diffusion.pt"
    listed = MlflowClient(tracking_uri=store["uri"]).list_artifacts(run_id, "checkpoints")
    assert [a.path for a in listed] == ["checkpoints/diffusion.pt"]  # the shared first stage is not uploaded again


def test_a_run_in_another_store_uploads_the_shared_first_stage_there(store: dict[str, Any], tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    cfg = micro("final", "diffusion.conditioning=concat", f"tracking.tracking_uri={other}")
    run_id = train_tracked(cfg, store["workdir"])
    uri = f"runs:/{run_id}/checkpoints/autoencoder.pt"
    assert CheckpointRecord.read(run_dir(cfg, store["workdir"]) / RECORD_NAME).first_stage == uri
    first_stage = first_stage_checkpoint(cfg, store["workdir"])
    assert uploads(first_stage) == {store["uri"]: store["record"].first_stage, other: uri}
    assert local_checkpoint(uri, tmp_path, other).read_bytes() == first_stage.read_bytes()


def test_none_logs_no_checkpoint_and_records_local_paths(tmp_path: Path) -> None:
    cfg = micro("none")
    run_id = train_tracked(cfg, tmp_path)
    assert MlflowClient(tracking_uri=resolve_tracking_uri(tmp_path)).list_artifacts(run_id, "checkpoints") == []
    first_stage = first_stage_checkpoint(cfg, tmp_path)
    assert CheckpointRecord.read(run_dir(cfg, tmp_path) / RECORD_NAME) == CheckpointRecord(
        first_stage=str(first_stage), diffusion=str(run_dir(cfg, tmp_path) / "diffusion.pt"))
    assert uploads(first_stage) == {}


def test_untracked_training_records_local_paths(tmp_path: Path) -> None:
    cfg = micro("final")
    checkpoint = train_diffusion(cfg, tmp_path, NullTracker())
    record = CheckpointRecord.read(run_dir(cfg, tmp_path) / RECORD_NAME)
    assert record == CheckpointRecord(first_stage=str(first_stage_checkpoint(cfg, tmp_path)), diffusion=str(checkpoint))


def test_a_uri_is_downloaded_once_into_the_cache(store: dict[str, Any], tmp_path: Path) -> None:
    uri = store["record"].diffusion
    path = local_checkpoint(uri, tmp_path, store["uri"])
    assert path == artifact_cache_dir(tmp_path) / hashlib.sha256(uri.encode()).hexdigest() / "diffusion.pt"
    trained = run_dir(store["cfg"], store["workdir"]) / "diffusion.pt"
    assert path.read_bytes() == trained.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["diffusion.pt"]  # no temporary left beside it
    # A second call does not ask the store: one that cannot be opened still gets the cached file.
    assert local_checkpoint(uri, tmp_path, f"sqlite:///{tmp_path / 'missing' / 'no.db'}") == path


def test_a_local_path_is_used_as_it_is(tmp_path: Path) -> None:
    assert local_checkpoint(str(tmp_path / "diffusion.pt"), tmp_path) == tmp_path / "diffusion.pt"
    assert not artifact_cache_dir(tmp_path).exists()


@pytest.mark.parametrize("uri, why", [
    ("runs:/0123456789abcdef0123456789abcdef/checkpoints/diffusion.pt", "cannot download"),
    ("runs:/{run_id}/checkpoints/missing.pt", "cannot download"),
    ("runs:/{run_id}", "names no file"),
    ("runs:/{run_id}/checkpoints", "names a folder"),
])
def test_a_bad_uri_is_one_line_naming_it(store: dict[str, Any], tmp_path: Path, uri: str, why: str) -> None:
    uri = uri.format(run_id=store["run_id"])
    with pytest.raises(UserError, match=why) as raised:
        local_checkpoint(uri, tmp_path, store["uri"])
    assert f"'{uri}'" in str(raised.value) and "\n" not in str(raised.value)
    assert not any(p.is_file() for p in artifact_cache_dir(tmp_path).rglob("*"))


def test_sample_and_eval_ae_take_a_uri_through_the_tracking_uri_env(store: dict[str, Any], tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    result = cli(tmp_path, store["uri"], "sample", "--checkpoint", store["record"].diffusion, "--n", "4",
                 "--steps", "2", "--out", str(grid))
    assert result.exit_code == 0, result.output
    assert grid.is_file()
    rd = tmp_path / "rd.json"
    result = cli(tmp_path, store["uri"], "eval-ae", "--checkpoint", store["record"].first_stage, "--split", "val",
                 "--out", str(rd))
    assert result.exit_code == 0, result.output
    assert "psnr" in rd.read_text()
    assert len(list(artifact_cache_dir(tmp_path).glob("*/*.pt"))) == 2


def test_eval_takes_a_uri(store: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    result = cli(tmp_path, store["uri"], "eval", "--checkpoint", store["record"].diffusion, "--num-samples", "12",
                 "--steps", "1", "--extractor", "domain", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(out.read_text())["fid_domain"], float)


@pytest.mark.parametrize("command", ["sample", "eval", "eval-ae"])
def test_an_unknown_run_is_an_error_line_in_every_command(store: dict[str, Any], tmp_path: Path,
                                                          command: str) -> None:
    uri = "runs:/0123456789abcdef0123456789abcdef/checkpoints/diffusion.pt"
    result = cli(tmp_path, store["uri"], command, "--checkpoint", uri)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot download checkpoint '{uri}'")


def test_latest_checkpoint_resumes_a_killed_trial_in_another_folder(store: dict[str, Any], tmp_path: Path) -> None:
    cfg = micro("all", "diffusion.conditioning=text")
    run_id = train_tracked(cfg, store["workdir"], on_eval=stop_after(4))
    elsewhere = tmp_path / "elsewhere"
    path = latest_checkpoint(run_id, store["uri"], "diffusion.pt", run_dir(cfg, elsewhere))
    assert path == run_dir(cfg, elsewhere) / "diffusion.pt"
    assert read_checkpoint(path)["step"] == 3  # the periodic upload, not a later step

    steps: list[int] = []
    first_stage = first_stage_checkpoint(cfg, store["workdir"])
    train_diffusion(cfg, elsewhere, NullTracker(), first_stage_ckpt=first_stage, resume=True,
                    on_eval=lambda name, value, step: steps.append(step))
    assert steps == [4, 5, 6]
    assert read_checkpoint(path)["step"] == 6


def test_latest_checkpoint_is_none_without_periodic_uploads(store: dict[str, Any], tmp_path: Path) -> None:
    cfg = micro("final", "diffusion.conditioning=text")
    run_id = train_tracked(cfg, store["workdir"], on_eval=stop_after(4))
    assert latest_checkpoint(run_id, store["uri"], "diffusion.pt", tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_latest_checkpoint_of_an_unknown_run_is_a_user_error(store: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run '0123456789abcdef0123456789abcdef'"):
        latest_checkpoint("0123456789abcdef0123456789abcdef", store["uri"], "diffusion.pt", tmp_path)


def test_a_missing_record_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        CheckpointRecord.read(tmp_path / RECORD_NAME)


@pytest.mark.parametrize("text, why", [
    ("first_stage: a.pt\n", "no 'diffusion:' line"),
    ("first_stage: a.pt\ndiffusion: b.pt\nextra: c\n", "line 3 is 'extra: c'"),
    ("first_stage a.pt\ndiffusion: b.pt\n", "line 1"),
])
def test_a_malformed_record_is_a_user_error(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / RECORD_NAME).write_text(text)
    with pytest.raises(UserError, match=why):
        CheckpointRecord.read(tmp_path / RECORD_NAME)


def test_the_record_round_trips_uris_and_paths(tmp_path: Path) -> None:
    record = CheckpointRecord(first_stage="runs:/abc/checkpoints/autoencoder.pt", diffusion=str(tmp_path / "d.pt"))
    (tmp_path / RECORD_NAME).write_text(record.to_text())
    assert CheckpointRecord.read(tmp_path / RECORD_NAME) == record
    assert record.to_text().splitlines()[0] == "first_stage: runs:/abc/checkpoints/autoencoder.pt"
