"""Samples as the `.npz` sample batch the ADM evaluator (guided-diffusion evaluations/evaluator.py) reads.

`arr_0` holds uint8 (N, H, W, 3) images in global sample order. An npz is a zip of .npy files, so the array is
streamed into its zip entry (header first, then each batch as it comes): memory stays O(batch) for any N. Under
torchrun every rank passes its batch of each step; rank 0 receives them all and alone writes the file.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from evaluation.sampling import SampleBatch
from ldm.distributed import Ranks
from ldm.io import atomic_path


class SamplesNpz:
    """The open `arr_0.npy` entry on rank 0 (None elsewhere), and how many images it holds so far."""

    def __init__(self, entry: IO[bytes] | None, ranks: Ranks) -> None:
        self.entry, self.ranks, self.written = entry, ranks, 0

    def add(self, batch: SampleBatch) -> None:
        """A collective under torchrun: every rank calls it at every step, with its batch of that step."""
        images = self.ranks.all_gather_rows(batch.images.permute(0, 2, 3, 1).contiguous())
        if self.entry is not None:
            self.entry.write(images.numpy().tobytes())
            self.written += len(images)


@contextlib.contextmanager
def samples_npz(path: Path, n: int, side: int, ranks: Ranks) -> Iterator[SamplesNpz]:
    """Stream `n` uint8 RGB images of `side` x `side` into `path` (temp name, renamed once all `n` are in)."""
    if not ranks.is_main:
        yield SamplesNpz(None, ranks)
        return
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf, \
            zf.open("arr_0.npy", "w", force_zip64=True) as entry:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (n, side, side, 3)}
        np.lib.format.write_array_header_1_0(entry, header)
        sink = SamplesNpz(entry, ranks)
        yield sink
        if sink.written != n:
            raise RuntimeError(f"{sink.written} samples streamed into {path}, expected {n}")
