"""Screenshots of a study for the docs: its report index, its MLflow runs view and optuna-dashboard.

    python docs/screenshots/capture.py quickstart            # after `ldm quickstart` (or `ldm report <study>`)

Starts `ldm ui --optuna` on free loopback ports, photographs each page with headless Chromium (Debian's
`chromium`, a fresh profile per page) and stops the servers with SIGTERM. Writes docs/screenshots/*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna

from ldm.paths import resolve_workdir
from sweeps.study import JOURNAL_NAME, sweeps_root

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
RENDER_BUDGET_MS = 20000  # virtual time for the single-page apps to fetch and draw their data
SERVER_START_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = SERVER_START_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(1)


def screenshot(url: str, out: Path, width: int, height: int) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("headless Chromium is missing; install it with `apt-get install chromium`")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--virtual-time-budget={RENDER_BUDGET_MS}", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=180)
    print(f"wrote {out}")


@contextlib.contextmanager
def ui_servers(mlflow_port: int, optuna_port: int, storage: str) -> Iterator[list[str]]:
    """`ldm ui --optuna` running; yields its output lines once both servers answer."""
    command = [str(Path(sys.executable).parent / "ldm"), "ui", "--port", str(mlflow_port), "--optuna",
               "--optuna-port", str(optuna_port), "--storage", storage]
    log = tempfile.TemporaryFile(mode="w+")
    ui = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{mlflow_port}/")
        wait_for(f"http://127.0.0.1:{optuna_port}/")
        log.seek(0)
        yield log.read().splitlines()
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    workdir = resolve_workdir()
    index = workdir / "reports" / args.study / "index.html"
    if not index.is_file():
        raise SystemExit(f"{index} is missing; build it with `ldm report {args.study}`")
    journal = sweeps_root(workdir) / args.study / JOURNAL_NAME
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study_id = storage.get_study_id_from_name(args.study)
    args.out.mkdir(parents=True, exist_ok=True)
    screenshot(index.as_uri(), args.out / "report_index.png", 1280, 2000)
    mlflow_port, optuna_port = free_port(), free_port()
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with ui_servers(mlflow_port, optuna_port, str(journal)) as lines:
        view = next((m[1] for line in lines if (m := re.match(rf"runs of {re.escape(args.study)}: (\S+)", line))),
                    None)
        if view is None:
            raise SystemExit(f"`ldm ui` printed no runs view of {args.study}:\n" + "\n".join(lines))
        screenshot(view, args.out / "mlflow_runs.png", 1600, 900)
        screenshot(f"http://127.0.0.1:{optuna_port}/dashboard/studies/{study_id}", args.out / "optuna_dashboard.png",
                   1600, 1000)


if __name__ == "__main__":
    main()
