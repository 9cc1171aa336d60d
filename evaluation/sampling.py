"""Evaluation samples as a stream of batches, the same samples on any number of ranks.

The batch is the unit: batch b holds global samples [b*B, (b+1)*B) with the conditions of those samples and a
generator seeded from (evaluation seed, b). Batches go round-robin over ranks (rank r makes b = r, r + W, ...),
so at step s the ranks hold batches s*W .. s*W + W - 1, consecutive in global order: gathered step by step they
stream into one file in order. Memory is O(batch) for images; whoever consumes a batch keeps what it needs.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from evaluation.extractors import to_uint8_rgb
from evaluation.sobol import sobol_normal
from ldm import progress
from ldm.config import SamplingConfig
from ldm.diffusion.conditioning import ConditionInputs
from ldm.distributed import Ranks
from ldm.training.pipeline import LatentDiffusionPipeline


@dataclass(frozen=True)
class SampleBatch:
    """One rank's batch at one step: global sample indices and uint8 (b, 3, H, W) images; empty past the end."""

    indices: Tensor
    images: Tensor


@dataclass
class Stopwatch:
    """Seconds spent sampling (decoding included), apart from what consumes the samples."""

    seconds: float = 0.0
    images: int = 0

    def images_per_s(self, ranks: Ranks) -> float:
        """All ranks' images over the slowest rank's sampling time."""
        both = ranks.all_gather_rows(torch.tensor([[self.seconds, float(self.images)]], dtype=torch.float64))
        return float(both[:, 1].sum() / both[:, 0].max())


def batch_generator(seed: int, batch: int) -> torch.Generator:
    """The generator of batch `batch`: a function of (seed, batch) only, so no sample depends on the rank count."""
    digest = hashlib.sha256(f"ldm-eval-batch:{seed}:{batch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def sample_batches(pipeline: LatentDiffusionPipeline, conditions: ConditionInputs, n: int, sampling: SamplingConfig,
                   seed: int, batch_size: int, ranks: Ranks, stopwatch: Stopwatch | None = None,
                   sobol_noise: bool = False) -> Iterator[SampleBatch]:
    """This rank's batches of the `n` samples for `conditions` (one per sample), one per step, every rank alike.

    `sobol_noise`: sample i starts from point i of the seed's scrambled Sobol sequence (`evaluation/sobol.py`).

    Every rank yields the same number of steps (an empty batch past its last one), so consumers may run
    collectives at each step.
    """
    conditions = pipeline.complete_conditions(n, conditions, torch.Generator().manual_seed(seed))
    num_batches = math.ceil(n / batch_size)
    side = pipeline.config.data.resolution
    with progress.stage("evaluation: generation", n, unit="img", shown=ranks.is_main) as bar:
        for step in range(math.ceil(num_batches / ranks.world_size)):
            batch = step * ranks.world_size + ranks.rank
            if batch >= num_batches:
                yield SampleBatch(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, side, side, dtype=torch.uint8))
                continue
            part = slice(batch * batch_size, min(n, (batch + 1) * batch_size))
            start = time.perf_counter()
            x_T = (sobol_normal(seed, part.start, part.stop - part.start, pipeline.first_stage.latent_shape(side))
                   if sobol_noise else None)
            images = to_uint8_rgb(pipeline.sample_batch(part.stop - part.start, conditions[part], sampling,
                                                        batch_generator(seed, batch), x_T))
            if stopwatch is not None:
                stopwatch.seconds += time.perf_counter() - start
                stopwatch.images += len(images)
            if bar is not None:  # rank 0's batch is the first of its step: all ranks have made about as many
                bar.advance(min(n, (batch + ranks.world_size) * batch_size))
            yield SampleBatch(torch.arange(part.start, part.stop), images)
