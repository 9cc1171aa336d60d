"""One torch thread per test process (`pytest -n 2` runs two processes on two cores); shared test helpers importable;
the real-server fixtures (`tests/servers.py`)."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

HELPERS = str(Path(__file__).resolve().parent)
if HELPERS not in sys.path:
    sys.path.insert(0, HELPERS)

from servers import mlflow_server, postgres_db, postgres_url  # noqa: E402, F401  (fixtures, found by their names)
