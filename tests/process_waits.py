"""Waiting on a subprocess's progress through files it writes: no sleeps against the clock of a busy machine."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    """Return once `path` exists; fail if `process` ends first or `timeout` seconds pass (a hang, not a race)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"process ended early with code {process.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
