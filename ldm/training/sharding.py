"""How one optimiser step's global batch is split over ranks and micro-batches, and its per-sample noise.

Micro-batch k of rank r holds rows [(k * ranks + r) * m, (k * ranks + r + 1) * m) of the global batch, m the
micro-batch size. The per-sample random numbers of a step (posterior noise, timesteps, diffusion noise,
condition dropout) are drawn for the whole global batch from a generator seeded by (seed, step), identical
on every rank, and each micro-batch takes its rows. A run is thus the same computation whatever the number
of ranks and accumulation passes, up to float rounding in the gradient sums.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ldm.config import StageTrainingConfig, TrainingConfig
from ldm.distributed import Ranks
from ldm.errors import UserError



@dataclass(frozen=True)
class BatchLayout:
    """A global batch of `global_size` images as `accumulation` micro-batches of `micro_size` on each rank."""

    global_size: int
    micro_size: int
    ranks: Ranks

    @classmethod
    def of(cls, settings: StageTrainingConfig, ranks: Ranks, section: str) -> BatchLayout:
        """The layout `training.<section>` asks for; a batch that does not divide evenly is a UserError."""
        micro = settings.micro_batch_size or settings.batch_size // ranks.world_size
        if micro == 0 or settings.batch_size % (micro * ranks.world_size):
            raise UserError(
                f"training.{section}.batch_size={settings.batch_size} does not split into micro-batches of "
                f"{settings.micro_batch_size or 'batch_size / ranks'} on {ranks.world_size} rank(s); allowed: "
                "a batch_size that is a multiple of micro_batch_size x ranks")
        return cls(settings.batch_size, micro, ranks)

    @property
    def accumulation(self) -> int:
        """Forward/backward passes per rank and optimiser step."""
        return self.global_size // (self.micro_size * self.ranks.world_size)

    def rows(self, micro: int) -> slice:
        """The global-batch rows of this rank's micro-batch `micro`."""
        start = (micro * self.ranks.world_size + self.ranks.rank) * self.micro_size
        return slice(start, start + self.micro_size)

    def noise(self, seed: int, step: int, micro: int, device: torch.device) -> StepNoise:
        """The per-sample random numbers of this rank's micro-batch `micro` of optimiser step `step`."""
        generator = torch.Generator(device).manual_seed(step_seed(seed, step))
        return StepNoise(generator, self.global_size, self.rows(micro))


def check_layouts(training: TrainingConfig, ranks: Ranks) -> None:
    """Both stages' batches split evenly over `ranks`: checked before either stage starts."""
    BatchLayout.of(training.autoencoder, ranks, "autoencoder")
    BatchLayout.of(training.diffusion, ranks, "diffusion")


def step_seed(seed: int, step: int) -> int:
    """A seed per (run seed, step), stable across processes and Python versions, apart from the run's other streams."""
    digest = hashlib.sha256(f"ldm step noise {seed} {step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class StepNoise:
    """Per-sample random numbers of a batch: its `rows` of draws made for all `global_size` items."""

    def __init__(self, generator: torch.Generator, global_size: int, rows: slice) -> None:
        self.generator, self.global_size, self.rows = generator, global_size, rows

    @classmethod
    def whole(cls, size: int, seed: int, device: torch.device) -> StepNoise:
        """Draws for a batch of its own (validation), seeded by `seed`."""
        return cls(torch.Generator(device).manual_seed(seed), size, slice(0, size))

    def randn(self, *item_shape: int) -> Tensor:
        """Standard normal draws of shape (items, *item_shape)."""
        return torch.randn((self.global_size, *item_shape), generator=self.generator,
                           device=self.generator.device)[self.rows]

    def rand(self) -> Tensor:
        """One uniform [0, 1) draw per item."""
        return torch.rand(self.global_size, generator=self.generator, device=self.generator.device)[self.rows]

    def randint(self, high: int) -> Tensor:
        """One integer in [0, high) per item."""
        return torch.randint(0, high, (self.global_size,), generator=self.generator,
                             device=self.generator.device)[self.rows]


class ShardedBatches(Sampler[list[int]]):
    """This rank's micro-batches, in pass order, of an endless stream of global batches of indices."""

    def __init__(self, global_batches: Sampler[list[int]], layout: BatchLayout) -> None:
        self.global_batches, self.layout = global_batches, layout

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches:
            for micro in range(self.layout.accumulation):
                yield batch[self.layout.rows(micro)]
