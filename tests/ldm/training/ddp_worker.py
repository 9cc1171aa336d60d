"""`torchrun ... ddp_worker.py OUT [ldm train arguments]`: `ldm train` as one rank, observed from outside.

Each rank writes, under OUT, the final weights and EMA shadow of every stage it trained
(`<stage>-rank<r>.pt`) and one `saved-rank<r>-step<s>` file per checkpoint it wrote. With
`LDM_TEST_STOP_AFTER_CHECKPOINT=1` every rank leaves right after the first periodic checkpoint, as a
job killed there would, to be resumed with `--resume`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

import ldm.training.autoencoder_stage as autoencoder_stage
import ldm.training.diffusion_stage as diffusion_stage
import ldm.training.loop as loop
from ldm.distributed import current_ranks
from ldm_cli.main import app

OUT = Path(sys.argv[1])
real_train_stage, real_save, real_log_periodic = loop.train_stage, loop.save_checkpoint, loop.log_periodic_checkpoint


def observed_train_stage(stage: loop.Stage, *args: Any, **kwargs: Any) -> loop.TrainedStage:
    trained = real_train_stage(stage, *args, **kwargs)
    rank = current_ranks().rank
    torch.save({"model": stage.model.state_dict(), "ema": trained.ema.state_dict() if trained.ema else None},
               OUT / f"{stage.name}-rank{rank}.pt")
    return trained


def observed_save(path: Path, **kwargs: Any) -> None:
    (OUT / f"saved-rank{current_ranks().rank}-step{kwargs['step']}").touch()
    real_save(path, **kwargs)


def stopping_log_periodic(*args: Any) -> None:
    real_log_periodic(*args)
    if os.environ.get("LDM_TEST_STOP_AFTER_CHECKPOINT") == "1":
        sys.exit(0)


autoencoder_stage.train_stage = diffusion_stage.train_stage = observed_train_stage
loop.save_checkpoint, loop.log_periodic_checkpoint = observed_save, stopping_log_periodic
OUT.mkdir(parents=True, exist_ok=True)
app(sys.argv[2:], standalone_mode=True)
