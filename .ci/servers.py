"""Start or stop the one PostgreSQL and `mlflow server` that all test sessions of a CI run share (tests/servers.py).

    python .ci/servers.py start STATE_DIR   prints the `export LDM_TEST_...=...` lines for the shell to eval
    python .ci/servers.py stop STATE_DIR    stops what `start` recorded in STATE_DIR/servers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import (  # noqa: E402  (tests/ is not a package)
    MLFLOW_URI_ENV,
    POSTGRES_URL_ENV,
    MlflowServer,
    PostgresServer,
    start_mlflow,
    start_postgres,
)

STATE_FILE = "servers.json"
MLFLOW_WORKERS = 2  # one per xdist worker of `make test`


def _save(state_dir: Path, state: dict[str, dict[str, object]]) -> None:
    (state_dir / STATE_FILE).write_text(json.dumps(state, default=str))


def start(state_dir: Path) -> None:
    """Start both servers, recording each as soon as it runs, so that `stop` finds it even if the next fails."""
    state: dict[str, dict[str, object]] = {}
    began = time.monotonic()
    postgres = start_postgres()
    state["postgres"] = asdict(postgres)
    _save(state_dir, state)
    print(f"# PostgreSQL up in {time.monotonic() - began:.1f} s at {postgres.url}", file=sys.stderr)
    began = time.monotonic()
    mlflow = start_mlflow(workers=MLFLOW_WORKERS)
    state["mlflow"] = asdict(mlflow)
    _save(state_dir, state)
    print(f"# mlflow server up in {time.monotonic() - began:.1f} s at {mlflow.uri}", file=sys.stderr)
    print(f"export {POSTGRES_URL_ENV}={postgres.url}\nexport {MLFLOW_URI_ENV}={mlflow.uri}")


def stop(state_dir: Path) -> None:
    path = state_dir / STATE_FILE
    state = json.loads(path.read_text()) if path.is_file() else {}
    if "mlflow" in state:
        MlflowServer(**{**state["mlflow"], "root": Path(state["mlflow"]["root"])}).stop()
    if "postgres" in state:
        PostgresServer(**{**state["postgres"], "root": Path(state["postgres"]["root"])}).stop()
    path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("state_dir", type=Path)
    args = parser.parse_args()
    (start if args.action == "start" else stop)(args.state_dir)


if __name__ == "__main__":
    main()
