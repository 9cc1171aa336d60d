"""How a global batch splits over ranks and micro-batches, and the noise each micro-batch gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldm.config import Override, StageTrainingConfig, load_config
from ldm.distributed import Ranks
from ldm.errors import UserError
from ldm.training.diffusion_stage import train_diffusion
from ldm.training.loop import ResumableBatches
from ldm.training.sharding import BatchLayout, ShardedBatches

CPU = torch.device("cpu")


@pytest.mark.parametrize(("world", "micro"), [(1, None), (1, 2), (2, None), (2, 1), (4, 1)])
def test_ranks_and_passes_cover_each_global_batch_once(world: int, micro: int | None) -> None:
    settings = StageTrainingConfig(batch_size=4, micro_batch_size=micro)
    layouts = [BatchLayout.of(settings, Ranks(rank, world), "diffusion") for rank in range(world)]
    assert all(layout.accumulation * layout.micro_size * world == 4 for layout in layouts)
    seen = [index for layout in layouts
            for batch in _first(ShardedBatches(ResumableBatches(12, 4, seed=3), layout), 3 * layout.accumulation)
            for index in batch]
    global_batches = [i for batch in _first(ResumableBatches(12, 4, seed=3), 3) for i in batch]
    assert sorted(seen) == sorted(global_batches)


def test_each_micro_batch_gets_its_rows_of_the_global_draw() -> None:
    settings = StageTrainingConfig(batch_size=4, micro_batch_size=1)
    whole = BatchLayout.of(StageTrainingConfig(batch_size=4), Ranks(), "diffusion").noise(7, 5, 0, CPU).randn(3)
    parts = [BatchLayout.of(settings, Ranks(rank, 2), "diffusion").noise(7, 5, micro, CPU).randn(3)
             for micro in range(2) for rank in range(2)]
    assert torch.equal(torch.cat(parts), whole)  # pass-major, then rank: rows 0, 1, 2, 3
    other_step = BatchLayout.of(settings, Ranks(), "diffusion").noise(7, 6, 0, CPU).randn(3)
    assert not torch.equal(other_step, whole[:1])


def test_a_batch_that_does_not_split_fails_before_any_training(tmp_path: Path) -> None:
    cfg = load_config(preset="micro", overrides=[Override("training.diffusion.batch_size", 8),
                                                 Override("training.diffusion.micro_batch_size", 3)])
    with pytest.raises(UserError, match=r"training.diffusion.batch_size=8 does not split into micro-batches of 3 "
                                        r"on 1 rank\(s\); allowed: a batch_size that is a multiple of"):
        train_diffusion(cfg, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def _first(batches: object, n: int) -> list[list[int]]:
    stream = iter(batches)  # type: ignore[call-overload]
    return [next(stream) for _ in range(n)]
