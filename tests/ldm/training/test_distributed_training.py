"""Training under torchrun: 2 gloo processes on the CPU against 1 process with the same global batch and seed.

Every run goes through the real `ldm train` command; `ddp_worker.py` records what each rank trained and wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from ldm.paths import default_tracking_uri
from servers import free_port  # tests/servers.py, on the path through conftest

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).parents[3]
STEPS = 20
# micro preset with EMA in both stages, a 20-step diffusion stage logged at every step and checkpointed at step 10
DIFFUSION = ["-p", "micro", "-o", f"training.diffusion.steps={STEPS}", "-o", "training.diffusion.log_every=1",
             "-o", "training.diffusion.checkpoint_every=10", "-o", "training.diffusion.batch_size=8",
             "-o", "training.autoencoder.steps=8", "-o", "training.autoencoder.log_every=1",
             "-o", "training.autoencoder.ema_decay=0.9", "-o", "training.autoencoder.checkpoint_every=8"]


def launch(workdir: Path, out: Path, ranks: int, *args: str, stop_after_checkpoint: bool = False) -> None:
    """`ldm train` on `ranks` processes under torchrun (1: a plain process); fails the test on a non-zero exit."""
    env = {**os.environ, "LDM_WORKDIR": str(workdir), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "LDM_TEST_STOP_AFTER_CHECKPOINT": "1" if stop_after_checkpoint else "0"}
    prefix = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}"] if ranks > 1 else [sys.executable])
    result = subprocess.run([*prefix, str(WORKER), str(out), "train", *args], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def curve(workdir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` in the one run of the work folder's MLflow store."""
    client = MlflowClient(tracking_uri=default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, f"{len(runs)} runs: one job must make one run, rank 0's"
    return sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, metric))


def weights(out: Path, stage: str, rank: int) -> dict[str, Any]:
    return torch.load(out / f"{stage}-rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted 1-process run, one 2-rank run, and one 2-rank run stopped at step 10 then resumed."""
    base = tmp_path_factory.mktemp("ddp")
    folders = {name: base / name for name in ("single", "pair", "resumed")}
    launch(folders["single"], folders["single"] / "out", 1, *DIFFUSION)
    launch(folders["pair"], folders["pair"] / "out", 2, *DIFFUSION)
    launch(folders["resumed"], folders["resumed"] / "first", 2, *DIFFUSION, stop_after_checkpoint=True)
    launch(folders["resumed"], folders["resumed"] / "out", 2, "--stage", "diffusion", "--resume", *DIFFUSION)
    return folders


def test_two_ranks_follow_the_single_process_loss_curve(runs: dict[str, Path]) -> None:
    single, pair = curve(runs["single"], "diffusion/loss"), curve(runs["pair"], "diffusion/loss")
    assert [s for s, _ in pair] == [s for s, _ in single] == list(range(1, STEPS + 1))
    assert len({round(v, 4) for _, v in single}) > STEPS // 2  # a curve that moves, not a constant
    torch.testing.assert_close(torch.tensor([v for _, v in pair]), torch.tensor([v for _, v in single]),
                               rtol=1e-4, atol=1e-6)


def test_the_first_stage_on_two_ranks_matches_one_process(runs: dict[str, Path]) -> None:
    single, pair = curve(runs["single"], "ae/loss"), curve(runs["pair"], "ae/loss")
    assert [s for s, _ in pair] == [s for s, _ in single]
    torch.testing.assert_close(torch.tensor([v for _, v in pair]), torch.tensor([v for _, v in single]),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_weights_and_ema_are_bitwise_equal_across_ranks(runs: dict[str, Path], stage: str) -> None:
    out = runs["pair"] / "out"
    rank0, rank1 = weights(out, stage, 0), weights(out, stage, 1)
    for name, a, b in (("weights", rank0["model"], rank1["model"]),
                       ("EMA", rank0["ema"]["shadow"], rank1["ema"]["shadow"])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{stage} {name} differ"


def test_resume_under_two_ranks_is_exact(runs: dict[str, Path]) -> None:
    assert (runs["resumed"] / "first" / "saved-rank0-step10").is_file()
    assert not (runs["resumed"] / "first" / "diffusion-rank0.pt").exists()  # it really stopped at step 10
    resumed, uninterrupted = weights(runs["resumed"] / "out", "diffusion", 0), weights(runs["pair"] / "out",
                                                                                        "diffusion", 0)
    assert all(torch.equal(resumed["model"][k], v) for k, v in uninterrupted["model"].items())
    assert all(torch.equal(resumed["ema"]["shadow"][k], v) for k, v in uninterrupted["ema"]["shadow"].items())


def test_only_rank_zero_writes_checkpoints_and_logs(runs: dict[str, Path]) -> None:
    written = sorted(p.name for p in (runs["pair"] / "out").glob("saved-*"))
    assert written == ["saved-rank0-step10", "saved-rank0-step20", "saved-rank0-step8"]
    # one run (asserted by `curve`) holding every step once
    assert [s for s, _ in curve(runs["pair"], "diffusion/loss")] == list(range(1, STEPS + 1))
