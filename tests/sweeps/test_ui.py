"""`ldm ui` as a user runs it: SIGTERM stops the MLflow server and every worker it started, and frees the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """Running, not a zombie: a container's init may never reap what it inherits."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_sigterm_stops_the_server_and_its_workers_and_frees_the_port(tmp_path: Path) -> None:
    port = _free_port()
    ui = subprocess.Popen([str(Path(sys.executable).parent / "ldm"), "ui", "--port", str(port)],
                          env={**os.environ, "LDM_WORKDIR": str(tmp_path)}, stdout=subprocess.PIPE, text=True)
    assert ui.stdout is not None
    assert ui.stdout.readline().startswith(f"MLflow UI on http://127.0.0.1:{port} (")
    deadline = time.monotonic() + 120
    while not _listening(port):
        assert ui.poll() is None and time.monotonic() < deadline, "the MLflow UI never listened"
        time.sleep(0.2)
    server_processes = _descendants(ui.pid)
    assert len(server_processes) >= 2  # mlflow and the web server's workers

    ui.send_signal(signal.SIGTERM)
    assert ui.wait(timeout=60) in (0, 143)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in server_processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in server_processes if _alive(pid)]
    assert not _listening(port)
