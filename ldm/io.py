"""Atomic file writes: write to a temporary sibling, then rename, so nothing is ever half-written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ldm.errors import UserError

# How torch's weights-only unpickler names the first class or function it refused.
UNSAFE_GLOBAL = re.compile(r"GLOBAL (?P<name>\S+) was not an allowed global")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates files 0600; give the result the permissions a plain open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: object, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain containers only); a file that cannot be is a UserError saying why."""
    import pickle

    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint '{path}' cannot be read: the file is empty (0 bytes), e.g. a copy that did not "
                        "finish; write or copy it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = UNSAFE_GLOBAL.search(str(e))
        if unsafe is None:
            raise UserError(f"checkpoint '{path}' cannot be read: it is not a PyTorch checkpoint (not a pickle of "
                            "tensors)") from None
        # torch's own message advises weights_only=False, which would run whatever code the file holds.
        raise UserError(f"checkpoint '{path}' holds objects other than tensors and plain containers "
                        f"({unsafe['name']}), so it will not be loaded; allowed: checkpoints of tensors only, such as "
                        "`ldm train` writes") from None
    except Exception as e:  # torch raises several unrelated types for a file that is not a checkpoint
        raise UserError(f"checkpoint '{path}' cannot be read: it is not a PyTorch checkpoint "
                        f"({type(e).__name__}: {e})") from None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
