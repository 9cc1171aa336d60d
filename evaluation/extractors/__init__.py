"""What every feature extractor is to the suite: a torch-fidelity registry entry, its weights, and uint8 RGB input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ldm.config import DataConfig, ExtractorName
from ldm.errors import UserError


@dataclass(frozen=True)
class FidelityExtractor:
    """A suite extractor resolved to the torch-fidelity extractor and the exact weights file it will load."""

    name: ExtractorName
    fidelity_name: str
    weights_path: Path
    weights: str
    """Provenance of the weights, logged as the `ldm.extractor_weights` tag."""
    cache_tag: str
    """Short identity of the weights; part of reference-feature cache names so new weights never reuse old features."""
    feature_dim: int
    """Width of the features FID, KID and precision/recall use (what a reference-statistics file must match)."""
    isc_unavailable: str | None = None
    """Why these weights cannot give an Inception Score (no class logits); None when they can."""
    weights_sha256: str | None = None
    """The sha256 the weights file had when chosen; an extractor that takes it refuses a file changed since."""
    resize: str = ""
    """How uint8 images reach the network's input size: part of the evaluation protocol (`evaluation/protocol.py`)."""

    def fidelity_kwargs(self) -> dict[str, str]:
        kwargs = {"feature_extractor": self.fidelity_name, "feature_extractor_weights_path": str(self.weights_path)}
        if self.weights_sha256 is not None:
            kwargs["ldm_weights_sha256"] = self.weights_sha256
        return kwargs


def register_once(name: str, cls: type[FeatureExtractorBase]) -> None:
    """Register with torch-fidelity, whose registry refuses a name twice (re-imports, several test modules)."""
    existing = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if existing is None:
        register_feature_extractor(name, cls)
    elif (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise RuntimeError(f"torch-fidelity feature extractor '{name}' is already taken by {existing!r}")


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images, float in [-1, 1] or already uint8, C in {1, 3} -> uint8 (N, 3, H, W) for torch-fidelity."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"images of shape {tuple(images.shape)} are not (N, C, H, W) with C = 1 or 3")
    if images.dtype == torch.uint8:
        pixels = images.detach().cpu()
    else:
        pixels = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1).contiguous()


def check_uint8_rgb(images: torch.Tensor) -> None:
    """Refuse anything but uint8 (N, 3, H, W), naming what arrived and how to convert it."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise UserError(
            f"generated images must be uint8 (N, 3, H, W); got {images.dtype} {tuple(images.shape)}; "
            f"convert float images in [-1, 1] with evaluation.extractors.to_uint8_rgb"
        )


class UInt8Images(Dataset):
    """A uint8 (N, 3, H, W) tensor as the Dataset of 3xHxW images torch-fidelity reads."""

    def __init__(self, images: torch.Tensor) -> None:
        check_uint8_rgb(images)
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]
