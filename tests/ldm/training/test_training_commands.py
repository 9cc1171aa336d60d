"""`ldm train`, `ldm sample` and `ldm eval-ae` through typer's CliRunner, mounted as the root app mounts them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from ldm.data.grid import make_grid_image
from ldm.paths import CACHE_ENV, WORKDIR_ENV
from ldm.training.pipeline import LatentDiffusionPipeline
from ldm_cli.main import app

REPO = Path(__file__).resolve().parents[3]

# The micro preset, class-conditional, on fewer images and steps.
MICRO = ["data.shapes_count=200", "diffusion.conditioning=class", "training.autoencoder.steps=3",
         "training.diffusion.steps=3"]


def ldm(workdir: Path, *args: str) -> Result:
    # The root callback exports --workdir as $LDM_WORKDIR; CliRunner restores the environment afterwards.
    return CliRunner().invoke(app, ["--workdir", str(workdir), *args], env={WORKDIR_ENV: str(workdir)})


def overrides(*extra: str) -> list[str]:
    return ["--preset", "micro", *(arg for override in (*MICRO, *extra) for arg in ("-o", override))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(workdir, first-stage checkpoint, diffusion checkpoint) of a class-conditional model trained by the CLI."""
    workdir = tmp_path_factory.mktemp("work")
    result = ldm(workdir, "train", "--no-track", *overrides())
    assert result.exit_code == 0, result.output
    first_stage = re.search(r"first-stage checkpoint: (\S+)", result.output)
    diffusion = re.search(r"diffusion checkpoint: (\S+)", result.output)
    assert first_stage and diffusion
    return workdir, Path(first_stage[1]), Path(diffusion[1])


def test_train_writes_both_stages_under_the_workdir(trained: tuple[Path, Path, Path]) -> None:
    workdir, first_stage, diffusion = trained
    assert first_stage.is_file() and first_stage.is_relative_to(workdir / "first_stages")
    assert diffusion.is_file() and diffusion.is_relative_to(workdir / "runs")
    assert not (workdir / "mlflow").exists()  # --no-track


def test_work_folders_sharing_a_cache_train_one_first_stage(tmp_path: Path) -> None:
    cache, args = tmp_path / "cache", ["train", "--no-track", "--stage", "autoencoder", *overrides()]
    # --cache on the command line, then $LDM_CACHE; CliRunner restores the variable the root callback sets.
    first = CliRunner().invoke(app, ["--workdir", str(tmp_path / "a"), "--cache", str(cache), *args],
                               env={WORKDIR_ENV: str(tmp_path / "a"), CACHE_ENV: None})
    assert first.exit_code == 0, first.output
    [path] = re.findall(r"first-stage checkpoint: (\S+)", first.output)
    assert Path(path).is_relative_to(cache / "first_stages")
    written = Path(path).stat().st_mtime_ns
    second = CliRunner().invoke(app, ["--workdir", str(tmp_path / "b"), *args],
                                env={WORKDIR_ENV: str(tmp_path / "b"), CACHE_ENV: str(cache)})
    assert second.exit_code == 0, second.output
    assert re.findall(r"first-stage checkpoint: (\S+)", second.output) == [path]
    assert Path(path).stat().st_mtime_ns == written  # reused, not trained again
    assert not (tmp_path / "a" / "first_stages").exists() and not (tmp_path / "b" / "first_stages").exists()


def test_train_diffusion_stage_with_a_given_first_stage(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, first_stage, _ = trained
    result = ldm(tmp_path, "train", "--no-track", "--stage", "diffusion", "--first-stage", str(first_stage),
                 *overrides())
    assert result.exit_code == 0, result.output
    assert "first-stage checkpoint" not in result.output
    assert not (tmp_path / "first_stages").exists()  # nothing retrained in the new workdir


def test_sample_writes_a_grid_and_single_images(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    workdir, _, diffusion = trained
    out, single = tmp_path / "grid.png", tmp_path / "single"
    result = ldm(workdir, "sample", "--checkpoint", str(diffusion), "--n", "3", "--steps", "2", "--label", "1",
                 "--guidance", "2.0", "--seed", "3", "--out", str(out), "--save-individual", str(single))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in single.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    tile = Image.open(single / "00000.png")
    assert tile.size == (16, 16) and tile.mode == "L"  # native size and channels, not a grid tile
    # The grid is exactly those three images, captioned with the class they were asked for.
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(single / f"0000{i}.png")))[None] for i in range(3)])
    class_name = LatentDiffusionPipeline.from_checkpoint(diffusion).dataset.class_names[1]
    expected = make_grid_image(pixels, [class_name] * 3, ncol=8)
    grid = Image.open(out).convert("RGB")
    assert grid.size == expected.size and grid.tobytes() == expected.tobytes()
    again = tmp_path / "again"
    ldm(workdir, "sample", "--checkpoint", str(diffusion), "--n", "3", "--steps", "2", "--label", "1",
        "--guidance", "2.0", "--seed", "3", "--out", str(tmp_path / "grid2.png"), "--save-individual", str(again))
    assert np.array_equal(np.asarray(Image.open(again / "00000.png")), np.asarray(tile))  # the seed fixes them


def test_sample_default_grid_goes_to_the_workdir(trained: tuple[Path, Path, Path]) -> None:
    workdir, _, diffusion = trained
    result = ldm(workdir, "sample", "--checkpoint", str(diffusion), "--n", "2", "--steps", "1")
    assert result.exit_code == 0, result.output
    assert (workdir / "samples" / "grid.png").is_file()


def test_eval_ae_prints_and_writes_rate_distortion(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    workdir, first_stage, _ = trained
    out = tmp_path / "rd.json"
    result = ldm(workdir, "eval-ae", "--checkpoint", str(first_stage), "--split", "test", "--out", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"psnr", "ssim", "mse", "bpp", "latent_ratio"}
    assert f"psnr: {metrics['psnr']:.6g}" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["sample", "--checkpoint", "missing.pt"], "checkpoint 'missing.pt' does not exist"),
    (["sample", "--checkpoint", "{diffusion}", "--label", "7"], "label 7 is out of range; allowed: 0..4"),
    (["sample", "--checkpoint", "{diffusion}", "--prompt", "a red circle"],
     "conditioning='class': prompts cannot be given; allowed: labels"),
    (["sample", "--checkpoint", "{diffusion}", "--label", "1", "--prompt", "x"], "either --label or --prompt"),
    (["sample", "--checkpoint", "{diffusion}", "--mask-from", "nope.png"],
     "--mask-from image 'nope.png' does not exist"),
    (["sample", "--checkpoint", "{first_stage}"], "is a first-stage checkpoint"),
    (["eval-ae", "--checkpoint", "missing.pt"], "checkpoint 'missing.pt' does not exist"),
    (["train", "--first-stage", "{first_stage}"], "--first-stage is used with --stage diffusion only"),
    (["train", "--stage", "diffusion", "--first-stage", "missing.pt"], "checkpoint 'missing.pt' does not exist"),
    (["train", "--stage", "diffusion", "--retrain"], "--retrain retrains the first stage"),
    (["train", "-o", "autoencoder.f=3"], "autoencoder.f=3 is not a power of two"),
])
def test_user_errors_are_one_line_messages(trained: tuple[Path, Path, Path], args: list[str], message: str) -> None:
    workdir, first_stage, diffusion = trained
    args = [a.format(diffusion=diffusion, first_stage=first_stage) for a in args]
    result = ldm(workdir, *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def train_model(workdir: Path, conditioning: str) -> str:
    result = ldm(workdir, "train", "--no-track", *overrides(f"diffusion.conditioning={conditioning}"))
    assert result.exit_code == 0, result.output
    diffusion = re.search(r"diffusion checkpoint: (\S+)", result.output)
    assert diffusion
    return diffusion[1]


def test_label_on_an_unconditional_model_is_refused(tmp_path: Path) -> None:
    refused = ldm(tmp_path, "sample", "--checkpoint", train_model(tmp_path, "none"), "--label", "1")
    assert refused.exit_code == 1
    assert "conditioning='none': labels cannot be given; allowed: no condition" in refused.output


def test_inpainting_from_an_image_file(tmp_path: Path) -> None:
    checkpoint = train_model(tmp_path, "concat")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photo)
    out = tmp_path / "inpainted.png"
    result = ldm(tmp_path, "sample", "--checkpoint", checkpoint, "--n", "2", "--steps", "1", "--mask-from",
                 str(photo), "--mask-box", "0,0,0.5,0.5", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file()
    for box, message in [("0.5,0,0.2,1", "must satisfy 0 <= x0 < x1 <= 1"), ("1,2", "not four comma-separated")]:
        bad = ldm(tmp_path, "sample", "--checkpoint", checkpoint, "--mask-from", str(photo), "--mask-box", box)
        assert bad.exit_code == 1 and message in bad.output
    missing = ldm(tmp_path, "sample", "--checkpoint", checkpoint)
    assert missing.exit_code == 1 and "needs masked_images and masks" in missing.output


def test_tracked_training_logs_one_mlflow_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from ldm.paths import default_tracking_uri

    result = ldm(tmp_path, "train", "--stage", "autoencoder", *overrides("tracking.experiment=cli-test"))
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("cli-test")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert {"ae/loss", "ae/lr", "ae/images_per_s", "ae/val_loss", "psnr", "bpp"} <= run.data.metrics.keys()
    assert run.data.params["autoencoder.f"] == "2" and run.data.tags["ldm.config_hash"]
    # The same provenance tags as a sweep's trial runs (tests/sweeps/test_sweep_study.py).
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["ldm.git_commit"] == (git or "unknown")
    assert run.data.tags["ldm.torch_version"] == torch.__version__
    assert run.data.tags["ldm.device"] == "cpu"
    assert run.data.tags["ldm.first_stage_hash"]
    history = client.get_metric_history(run.info.run_id, "ae/loss")
    assert [m.step for m in history] == [2, 3]  # every log_every=2 steps, and at the last


def test_training_into_a_deleted_experiment_is_a_one_line_error(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from ldm.tracking.runs import create_store_folder, resolve_tracking_uri

    uri = resolve_tracking_uri(tmp_path)
    create_store_folder(uri)
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("binned"))
    result = ldm(tmp_path, "train", "--stage", "autoencoder", *overrides("tracking.experiment=binned"))
    assert result.exit_code == 1
    assert "MLflow experiment 'binned'" in result.output and "is deleted; restore it" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "first_stages").exists()  # refused before any training
