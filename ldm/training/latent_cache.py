"""`training.diffusion.cache_latents`: the train split's first-stage posteriors, encoded once and reused.

Each image's posterior mean and, for a KL first stage, its log-variance are stored as float32 `.npy` files
(read as memory maps, so a cache larger than memory works) in `<cache>/cache/latents/<key>/`, the key a
hash of the first stage's weights and of the data config. Training still draws a posterior sample at every
step from the cached moments, with the same per-sample noise as the uncached path, so the training
distribution is unchanged; only the encoder's forward pass is saved. The cache is built once, by rank 0
under a lock, and shared by every run and machine that names the same cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ldm.config import DataConfig
from ldm.data.base import ImageDataset
from ldm.distributed import current_ranks
from ldm.first_stage import FirstStage, evaluating
from ldm.first_stage.regularizers import DiagonalGaussian, LatentPosterior, PointPosterior
from ldm.locks import exclusive, lock_file
from ldm.paths import cache_dir

MEAN_FILE, LOGVAR_FILE = "mean.npy", "logvar.npy"
MEAN_KEY, LOGVAR_KEY = "latent_mean", "latent_logvar"  # the batch keys of cached items


def cache_key(first_stage: FirstStage, data: DataConfig) -> str:
    """16 hex digits naming the posteriors of `data`'s train split under these first-stage weights."""
    digest = hashlib.sha256(json.dumps(data.identity(), sort_keys=True).encode())
    for name, tensor in sorted(first_stage.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class CachedLatents(Dataset[dict[str, Tensor | str]]):
    """The train split with each image replaced by its cached posterior moments (labels, captions kept)."""

    def __init__(self, split: ImageDataset, folder: Path) -> None:
        self.split, self.folder = split, folder
        self.has_logvar = (folder / LOGVAR_FILE).is_file()
        self._arrays: tuple[np.ndarray, np.ndarray | None] | None = None  # opened per process (loader workers)

    def __len__(self) -> int:
        return len(self.split)

    def _opened(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._arrays is None:
            logvar = np.load(self.folder / LOGVAR_FILE, mmap_mode="r") if self.has_logvar else None
            self._arrays = np.load(self.folder / MEAN_FILE, mmap_mode="r"), logvar
        return self._arrays

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        mean, logvar = self._opened()
        item: dict[str, Tensor | str] = {MEAN_KEY: torch.from_numpy(np.array(mean[index]))}
        if logvar is not None:
            item[LOGVAR_KEY] = torch.from_numpy(np.array(logvar[index]))
        if self.split.labels is not None:
            item["label"] = self.split.labels[index]
        if self.split.captions is not None:
            item["caption"] = self.split.captions[index]
        return item


def cached_posterior(batch: dict[str, Tensor]) -> LatentPosterior:
    """The posterior of a batch of cached items."""
    if LOGVAR_KEY in batch:
        return DiagonalGaussian(torch.cat([batch[MEAN_KEY], batch[LOGVAR_KEY]], dim=1))
    return PointPosterior(batch[MEAN_KEY])


def cached_latents(first_stage: FirstStage, split: ImageDataset, data: DataConfig, workdir: Path,
                   device: torch.device, batch_size: int) -> CachedLatents:
    """The cached posteriors of `split` (the train split of `data`), encoding them first if no run has."""
    folder = cache_dir(workdir) / "latents" / cache_key(first_stage, data)
    ranks = current_ranks()
    if ranks.is_main and not folder.is_dir():
        with exclusive(lock_file(folder)):
            if not folder.is_dir():  # a process we waited for may have built it
                _encode(first_stage, split, folder, device, batch_size)
    ranks.barrier()
    return CachedLatents(split, folder)


def _encode(first_stage: FirstStage, split: ImageDataset, folder: Path, device: torch.device,
            batch_size: int) -> None:
    """Write the moments into a temporary folder, renamed into place when complete."""
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    start = 0
    with evaluating(first_stage), torch.no_grad():
        for batch in DataLoader(split, batch_size=batch_size):
            posterior = first_stage.encode(batch["image"].to(device))
            parts = {MEAN_FILE: posterior.mode()}
            if isinstance(posterior, DiagonalGaussian):
                parts[LOGVAR_FILE] = posterior.logvar
            for name, part in parts.items():
                if name not in arrays:
                    arrays[name] = open_memmap(partial / name, mode="w+", dtype=np.float32,
                                               shape=(len(split), *part.shape[1:]))
                arrays[name][start:start + len(part)] = part.float().cpu().numpy()
            start += len(batch["image"])
    for array in arrays.values():
        array.flush()
    del arrays
    os.replace(partial, folder)
