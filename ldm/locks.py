"""Build-once locks: a lock file beside what is built, shared by processes of one machine or of several.

The file is created with `O_CREAT | O_EXCL` (atomic locally and on NFS v3+), names its owner's host and
pid, and has its mtime touched by a heartbeat thread while held. Waiters poll; one whose owner's heartbeat
is older than the grace period takes the lock over (the owner died) and logs that it does. Across machines
only mtimes are compared, so their clocks must agree to well within the grace period; an owner on the
waiter's own machine whose process has ended is taken over at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

HEARTBEAT_S = 5.0
# Long against the heartbeat: a busy or paused owner must not be mistaken for a dead one, and NFS clients
# may see an mtime up to a minute old (attribute caching, `acregmax`).
GRACE_S = 300.0
POLL_S = 0.5

log = logging.getLogger(__name__)


def lock_file(target: Path) -> Path:
    """The lock that guards building `target` (a file or folder): `<target>.lock` beside it."""
    return target.with_name(f"{target.name}.lock")


@contextlib.contextmanager
def exclusive(path: Path, *, heartbeat_s: float = HEARTBEAT_S, grace_s: float = GRACE_S,
              poll_s: float = POLL_S) -> Iterator[None]:
    """Hold the lock file `path` for the block: wait while a live owner holds it, take it over from a dead one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, grace_s, poll_s)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(fd, stop, heartbeat_s), name=f"heartbeat {path.name}",
                            daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        _release(path, fd)


def _owner_text() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid()})


def _acquire(path: Path, grace_s: float, poll_s: float) -> int:
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            os.write(fd, _owner_text().encode())
            return fd
        try:
            seen = os.stat(path)
        except FileNotFoundError:
            continue  # released between our two calls
        why = _why_dead(path, seen, grace_s)
        if why is not None:
            _take_over(path, seen, why)
            continue
        if not announced:
            log.info("waiting for %s, held by %s", path, _read(path))
            announced = True
        time.sleep(poll_s)


def _why_dead(path: Path, seen: os.stat_result, grace_s: float) -> str | None:
    """Why the owner of the lock `seen` is gone, or None while it may be alive."""
    age = time.time() - seen.st_mtime
    if age > grace_s:
        return f"its heartbeat is {age:.0f} s old (grace {grace_s:.0f} s)"
    # An owner on this machine can be asked directly, so a rerun after a kill need not wait out the grace.
    try:
        owner = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None  # released, or its owner has not written its name yet
    if owner.get("host") != socket.gethostname() or _process_exists(int(owner["pid"])):
        return None
    return f"its process {owner['pid']} on this machine has ended"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _take_over(path: Path, seen: os.stat_result, why: str) -> None:
    """Remove the stale lock `seen`, unless another waiter replaced it first; the caller then competes anew."""
    # Renaming to a name of our own picks exactly one file; checking its inode tells whether it was the stale one.
    tomb = path.with_name(f"{path.name}.stale-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return  # another waiter took it over first
    moved = os.stat(tomb)
    if (moved.st_dev, moved.st_ino) != (seen.st_dev, seen.st_ino):
        # A fresh lock, created by a waiter that took over just before us: put it back.
        with contextlib.suppress(FileExistsError):
            os.link(tomb, path)
    else:
        log.warning("taking over %s from %s: %s", path, _read(tomb), why)
    os.unlink(tomb)


def _heartbeat(fd: int, stop: threading.Event, every: float) -> None:
    # Through the descriptor: the touch reaches our own lock file even if it was renamed meanwhile.
    while not stop.wait(every):
        os.utime(fd)


def _release(path: Path, fd: int) -> None:
    mine = os.fstat(fd)
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        current = os.stat(path)
        if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):  # not a lock taken over from us
            os.unlink(path)


def _read(path: Path) -> str:
    try:
        return path.read_text() or "an owner that wrote nothing yet"
    except FileNotFoundError:
        return "an owner that has just released it"
