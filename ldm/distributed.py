"""The ranks of one job under `torchrun` (or one process without it), and the collectives the suite uses.

torchrun's environment contract: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Without them
a process is rank 0 of 1 and every collective is the identity, so single-process code needs no branches.
The backend is NCCL on CUDA and gloo on the CPU, which is how the distributed paths are tested in CI.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ldm.errors import UserError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: `rank` of `world_size`, `local_rank` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, writes checkpoints and draws previews."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_mean_(self, tensor: Tensor) -> Tensor:
        """Average `tensor` over ranks in place (every rank gets the same bits)."""
        if self.distributed:
            dist.all_reduce(tensor)
            tensor.div_(self.world_size)
        return tensor

    def all_gather_rows(self, tensor: Tensor) -> Tensor:
        """Concatenate every rank's rows in rank order; the row counts may differ between ranks."""
        if not self.distributed:
            return tensor
        counts = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor([len(tensor)], device=tensor.device))
        sizes = [int(c) for c in counts]
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    def broadcast_module_(self, module: torch.nn.Module) -> None:
        """Overwrite every rank's parameters and buffers with rank 0's."""
        if self.distributed:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def broadcast_object(self, value: object) -> object:
        """Rank 0's `value` on every rank (e.g. a decision only rank 0 can take)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_objects(self, value: object) -> list[object]:
        """Every rank's `value`, in rank order."""
        if not self.distributed:
            return [value]
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def current_ranks() -> Ranks:
    """The ranks of the initialised process group, else rank 0 of 1."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Ranks()


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed() -> Ranks:
    """Join the job torchrun started (once per process; left at exit); a single process stays rank 0 of 1."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return current_ranks()
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset; "
                        "start distributed runs with torchrun, which sets them all")
    # One group serves both devices, so joining needs no config: CPU tensors go through gloo, CUDA ones NCCL.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    atexit.register(dist.destroy_process_group)
    return current_ranks()
