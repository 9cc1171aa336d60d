"""Which datasets exist, what each provides, and how to build a split of one."""

from __future__ import annotations

from pathlib import Path

from ldm.config import DataConfig, Split

# What each dataset's items carry besides `image` (used to validate the conditioning type).
PROVIDES: dict[str, frozenset[str]] = {
    "mnist": frozenset({"label", "caption"}),
    "fashion-mnist": frozenset({"label", "caption"}),
    "cifar10": frozenset({"label", "caption"}),
    "celeba": frozenset(),
    "shapes": frozenset({"label", "caption", "mask"}),
}


def dataset_provides(cfg: DataConfig) -> frozenset[str]:
    """The item keys a dataset gives; a folder gives labels from sub-folders and captions from captions.csv."""
    if cfg.name != "folder":
        return PROVIDES[cfg.name]
    root = Path(cfg.root) if cfg.root else None
    provides = {"label"}
    if root is not None and (root / "captions.csv").is_file():
        provides.add("caption")
    return frozenset(provides)
