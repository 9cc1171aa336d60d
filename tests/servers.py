"""Real PostgreSQL and `mlflow server` processes on free loopback ports, for the tests and CI (.ci/servers.py).

Set LDM_TEST_POSTGRES_URL / LDM_TEST_MLFLOW_URI to use servers started elsewhere (`.ci/run` does); otherwise
each test session (each xdist worker) starts its own and stops it at the end. A missing server binary is an
error naming what to install, never a skip: these tests are the proof that the shared servers work.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_URL_ENV = "LDM_TEST_POSTGRES_URL"
MLFLOW_URI_ENV = "LDM_TEST_MLFLOW_URI"
# Debian's postgresql package keeps its server binaries off PATH, one folder per major version.
DEBIAN_POSTGRES_BINS = "/usr/lib/postgresql/*/bin"
# PostgreSQL refuses to run as root; as root the cluster belongs to this (Debian's) user.
POSTGRES_USER = "postgres"
STARTUP_TIMEOUT_S = 120.0


class ServerError(RuntimeError):
    """A test server that cannot start; the message says why and what to install."""


def free_port() -> int:
    """A loopback port nobody listens on now (bound to port 0, then released for the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binary(name: str) -> str:
    """`initdb`, `pg_ctl`, ... on PATH, else from the newest Debian PostgreSQL."""
    found = shutil.which(name)
    debian = sorted(glob.glob(f"{DEBIAN_POSTGRES_BINS}/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if found is None and not debian:
        raise ServerError(f"PostgreSQL's {name} is neither on PATH nor in {DEBIAN_POSTGRES_BINS}; "
                          "install it with: apt-get install -y postgresql")
    return found or debian[-1]


def _as_postgres_user() -> list[str]:
    """The command prefix that runs a PostgreSQL tool as an unprivileged user (nothing unless we are root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise ServerError(f"running as root, but there is no '{POSTGRES_USER}' user to run PostgreSQL as; "
                          "install it with: apt-get install -y postgresql") from None
    return ["runuser", "-u", POSTGRES_USER, "--"]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL cluster in its own folder; `url` reaches its `postgres` database with trust auth."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        _run([*_as_postgres_user(), postgres_binary("pg_ctl"), "stop", "-D", str(self.root / "data"), "-m", "fast"],
             "pg_ctl stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb a cluster in a new temp folder and start it on 127.0.0.1 and a free port, waiting until it accepts."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    as_user = _as_postgres_user()
    # A short path in /tmp: the socket path must stay under 108 bytes, and root's pytest temp is private.
    root = Path(tempfile.mkdtemp(prefix="ldm-pg-"))
    if as_user:
        user = pwd.getpwnam(POSTGRES_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    try:
        _run([*as_user, initdb, "-D", str(root / "data"), "-A", "trust", "-U", POSTGRES_USER, "--no-sync",
              "-E", "UTF8"], "initdb")
        port = free_port()
        # Throwaway data: no fsync; the socket stays in our folder, not in /var/run/postgresql.
        options = f"-p {port} -k {root} -h 127.0.0.1 -c fsync=off -c full_page_writes=off"
        _run([*as_user, pg_ctl, "start", "-D", str(root / "data"), "-o", options, "-l", str(root / "log"),
              "-w", "-t", str(int(STARTUP_TIMEOUT_S))], "pg_ctl start")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return PostgresServer(root, port)


def create_database(server_url: str, name: str) -> str:
    """A new empty database on the server of `server_url`; its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class MlflowServer:
    """An `mlflow server` (SQLite backend, proxied artifacts) in its own process group."""

    root: Path
    port: int
    pid: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM to the whole group (the server forks its workers), SIGKILL after 10 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _group_alive(self.pid):
                if time.monotonic() > deadline:
                    os.killpg(self.pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap the leader when it is our child: a zombie would keep its group "alive"
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_mlflow(workers: int = 1) -> MlflowServer:
    """`mlflow server` from this venv on 127.0.0.1 and a free port, waiting until /health answers."""
    root = Path(tempfile.mkdtemp(prefix="ldm-mlflow-"))
    port = free_port()
    log = (root / "log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own group: stop() reaches its workers
        # Without this the server starts seven huey job consumers (GenAI jobs the suite never uses) on two cores.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    log.close()
    server = MlflowServer(root, port, process.pid)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _answers(server.uri):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (root / "log").read_text(errors="replace")[-2000:]
            server.stop()
            why = f"exited with {process.returncode}" if process.returncode is not None else "did not answer"
            raise ServerError(f"mlflow server {why} within {STARTUP_TIMEOUT_S:.0f} s: {tail}")
        time.sleep(0.2)
    return server


# ---------------------------------------------------------------- fixtures (registered in tests/conftest.py)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server's `postgres` database: $LDM_TEST_POSTGRES_URL, else one started for the session."""
    if os.environ.get(POSTGRES_URL_ENV):
        yield os.environ[POSTGRES_URL_ENV]
        return
    server = start_postgres()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """URL of a new empty database for one test, so that no two tests share an Optuna study; dropped after it."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_url, name)


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    """Tracking URI of a real `mlflow server` with proxied artifacts: $LDM_TEST_MLFLOW_URI, else one started here."""
    if os.environ.get(MLFLOW_URI_ENV):
        yield os.environ[MLFLOW_URI_ENV]
        return
    server = start_mlflow()
    try:
        yield server.uri
    finally:
        server.stop()
