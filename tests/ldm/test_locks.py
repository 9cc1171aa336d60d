"""The build-once lock, through its user: processes that need one first stage at once, and a dead owner's lock."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_waits import wait_for

from ldm.config import load_config, parse_overrides
from ldm.locks import GRACE_S, exclusive, lock_file
from ldm.paths import CACHE_ENV
from ldm.training.autoencoder_stage import first_stage_checkpoint, is_finished, train_autoencoder

TESTS = Path(__file__).resolve().parents[1]
NEED_FIRST_STAGE = TESTS / "ldm" / "training" / "first_stage_process.py"
SWEEP_FAKES_DIR = TESTS / "sweeps"
OVERRIDES = ["data.shapes_count=200", "training.autoencoder.steps=6", "training.autoencoder.checkpoint_every=3"]
HOLD_LOCK = """
import sys, time
from pathlib import Path
from ldm.locks import exclusive
with exclusive(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("held")
    time.sleep(600)
"""



@pytest.mark.parametrize("shared", ["workdir", "cache"])
def test_processes_needing_one_first_stage_train_it_once_and_share_it(tmp_path: Path, shared: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Either one work folder, or a work folder each (as on several machines) and one $LDM_CACHE.
    count = 3
    workdirs = [tmp_path / ("work" if shared == "workdir" else f"work-{i}") for i in range(count)]
    if shared == "cache":
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    env = {**os.environ, "SWEEP_FAKE_MEET": f"{tmp_path / 'meet'}:{count}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SWEEP_FAKES_DIR), os.environ.get("PYTHONPATH")]))}
    results = [tmp_path / f"result-{i}.json" for i in range(count)]
    processes = [subprocess.Popen([sys.executable, str(NEED_FIRST_STAGE), str(workdir), str(result), *OVERRIDES],
                                  env=env) for workdir, result in zip(workdirs, results, strict=True)]
    assert [p.wait(timeout=600) for p in processes] == [0] * count
    outcomes = [json.loads(r.read_text()) for r in results]

    cfg = load_config(preset="micro", overrides=parse_overrides(OVERRIDES))
    path = first_stage_checkpoint(cfg, workdirs[0])
    if shared == "cache":
        assert path.is_relative_to(tmp_path / "cache")
        assert not any((workdir / "first_stages").exists() for workdir in workdirs)
    assert sorted(o["trained"] for o in outcomes) == [False] * (count - 1) + [True]
    assert {o["checkpoint"] for o in outcomes} == {str(path)} and is_finished(path)
    assert not lock_file(path.parent).exists()


def train_taking_over(cfg, workdir: Path, caplog: pytest.LogCaptureFixture) -> str:
    """Train the first stage, which has to take over its lock; returns the take-over warning."""
    with caplog.at_level(logging.WARNING, logger="ldm.locks"):
        path = train_autoencoder(cfg, workdir)
    assert is_finished(path) and not lock_file(path.parent).exists()
    [record] = [r for r in caplog.records if "taking over" in r.getMessage()]
    return record.getMessage()


def test_lock_of_a_killed_process_on_this_machine_is_taken_over_at_once(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(preset="micro", overrides=parse_overrides(OVERRIDES))
    workdir = tmp_path / "work"
    lock = lock_file(first_stage_checkpoint(cfg, workdir).parent)
    owner = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock), str(tmp_path / "held")])
    wait_for(tmp_path / "held", owner)
    assert json.loads(lock.read_text())["pid"] == owner.pid
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert time.time() - lock.stat().st_mtime < GRACE_S  # its heartbeat is recent: only the dead pid tells
    message = train_taking_over(cfg, workdir, caplog)
    assert f'"pid": {owner.pid}' in message and f"its process {owner.pid} on this machine has ended" in message


def test_silent_lock_of_another_machine_is_taken_over_after_the_grace_period(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(preset="micro", overrides=parse_overrides(OVERRIDES))
    workdir = tmp_path / "work"
    lock = lock_file(first_stage_checkpoint(cfg, workdir).parent)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "another-machine", "pid": 1}))  # a pid this machine cannot check
    # Its owner stopped heart-beating past the grace period; aged here rather than waited for.
    silent_since = time.time() - GRACE_S - 5
    os.utime(lock, (silent_since, silent_since))
    message = train_taking_over(cfg, workdir, caplog)
    assert '"host": "another-machine"' in message and f"(grace {GRACE_S:.0f} s)" in message


def test_heartbeat_keeps_a_held_lock_fresh(tmp_path: Path) -> None:
    lock = tmp_path / "build.lock"
    with exclusive(lock, heartbeat_s=0.01):
        os.utime(lock, (0, 0))  # as if the owner had stopped long ago: only a heartbeat brings it back
        deadline = time.monotonic() + 180
        while lock.stat().st_mtime == 0:
            assert time.monotonic() < deadline, "the heartbeat never touched the lock"
            time.sleep(0.01)
    assert not lock.exists()
