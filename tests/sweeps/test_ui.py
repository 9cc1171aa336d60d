"""`ldm ui --optuna` as a user runs it: SIGTERM stops both servers and every worker they started, and frees
the ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend


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


def test_sigterm_stops_both_servers_and_their_workers_and_frees_the_ports(tmp_path: Path) -> None:
    journal = tmp_path / "sweeps" / "seen" / "journal.log"
    journal.parent.mkdir(parents=True)
    optuna.create_study(study_name="seen", storage=JournalStorage(JournalFileBackend(str(journal))))
    port, dashboard_port = _free_port(), _free_port()
    ui = subprocess.Popen([str(Path(sys.executable).parent / "ldm"), "ui", "--port", str(port), "--optuna",
                           "--optuna-port", str(dashboard_port)],
                          env={**os.environ, "LDM_WORKDIR": str(tmp_path)}, stdout=subprocess.PIPE, text=True)
    assert ui.stdout is not None
    dashboard_line, mlflow_line = ui.stdout.readline(), ui.stdout.readline()
    assert dashboard_line.startswith(f"optuna-dashboard on http://127.0.0.1:{dashboard_port} (")
    assert f" {journal} --host 127.0.0.1" in dashboard_line  # the study's journal, on loopback
    assert mlflow_line.startswith(f"MLflow UI on http://127.0.0.1:{port} (")
    deadline = time.monotonic() + 120
    while not (_listening(port) and _listening(dashboard_port)):
        assert ui.poll() is None and time.monotonic() < deadline, "a server never listened"
        time.sleep(0.2)
    server_processes = _descendants(ui.pid)
    assert len(server_processes) >= 3  # optuna-dashboard, mlflow and the web server's workers

    ui.send_signal(signal.SIGTERM)
    assert ui.wait(timeout=60) in (0, 143)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in server_processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in server_processes if _alive(pid)]
    assert not _listening(port) and not _listening(dashboard_port)
