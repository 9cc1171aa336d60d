"""Training checkpoints: everything needed to continue a run exactly, in plain containers and tensors only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.optim import Optimizer

from ldm.config import ExperimentConfig, build_config
from ldm.distributed import Ranks
from ldm.errors import UserError
from ldm.io import atomic_torch_save, load_checkpoint
from ldm.training.ema import EMA

Checkpoint = dict[str, Any]


def capture_rng() -> dict[str, Any]:
    """The global torch generators (CPU and every CUDA device) as tensors."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(saved: list[dict[str, Any]] | dict[str, Any], ranks: Ranks, fallback_seed: int) -> None:
    """This rank's generators from the per-rank states of a checkpoint (a dict: one written by a single process).

    A run resumed on another number of ranks seeds the per-rank streams afresh from `fallback_seed + rank`:
    only rank-local randomness (dropout) is affected, the data order and per-sample noise are the steps' own.
    """
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != ranks.world_size:
        torch.manual_seed(fallback_seed + ranks.rank)
        return
    state = states[ranks.rank]
    torch.set_rng_state(state["torch"])
    # A run resumed on a machine without the GPU it was saved on continues with the CPU stream only.
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    *,
    step: int,
    model: nn.Module,
    optimizers: dict[str, Optimizer],
    ema: EMA | None,
    data_order: dict[str, int],
    config: ExperimentConfig,
    rng: list[dict[str, Any]],
    extras: dict[str, Any],
) -> None:
    """Write atomically: a crash during the write leaves the previous checkpoint intact. `rng`: each rank's
    `capture_rng()`, in rank order."""
    state: Checkpoint = {
        "step": step,
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng,
        "data_order": dict(data_order),
        "config": config.to_yaml(),
        "extras": extras,
    }
    atomic_torch_save(state, path)


def read_checkpoint(path: Path) -> Checkpoint:
    """Load with `weights_only=True`; a missing or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"model", "config", "extras"} <= ckpt.keys():
        raise UserError(f"'{path}' is not a checkpoint written by `ldm train`")
    return ckpt


def update_extras(path: Path, extras: dict[str, Any]) -> None:
    """Add stage results (scale factor, ...) to a finished checkpoint, atomically."""
    ckpt = read_checkpoint(path)
    ckpt["extras"] = {**ckpt["extras"], **extras}
    atomic_torch_save(ckpt, path)


def checkpoint_config(ckpt: Checkpoint) -> ExperimentConfig:
    return build_config(yaml.safe_load(ckpt["config"]))


def model_weights(ckpt: Checkpoint, use_ema: bool) -> dict[str, Tensor]:
    """The model's state dict, with the EMA weights in place of the trained ones when asked and present."""
    weights = dict(ckpt["model"])
    if use_ema and ckpt["ema"] is not None:
        weights.update(ckpt["ema"]["shadow"])
    return weights
