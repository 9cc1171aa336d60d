"""Instant trial functions with closed-form metrics, importable by sweep worker processes.

Environment switches (read at call time, so worker processes see the test's settings):
SWEEP_FAKE_LOG      append one JSON line per executed trial (pid, f, latent channels, seed)
SWEEP_FAKE_SLEEP    seconds each trial takes
SWEEP_FAKE_MEET     "<folder>:<n>": trials wait until n different processes have started one (up to 120 s)
SWEEP_FAKE_DIE      "kill": the first trial with f = 2 SIGKILLs its own process;
                    "wait": it waits up to 120 s to be signalled by the test
SWEEP_FAKE_MARKER   file created (with the pid) just before dying or waiting; only once per marker
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from ldm.config import ExperimentConfig
from ldm.paths import default_tracking_uri
from ldm.tracking import Tracker

HELPERS_DIR = str(Path(__file__).resolve().parent)


def closed_form_metrics(f: int, latent_channels: int, seed: int) -> dict[str, float]:
    """Quality improves with f and worsens with channels; speed is the opposite: a real trade-off."""
    return {"fid_domain": 100.0 / f + latent_channels + seed, "sample_images_per_s": 10.0 * latent_channels / f}


def quick_trial(cfg: ExperimentConfig, workdir: Path, tracker: Tracker, report, resume: bool = False) -> dict[str, float]:
    _record(cfg)
    meet()
    time.sleep(float(os.environ.get("SWEEP_FAKE_SLEEP", "0")))
    _maybe_die(cfg)
    metrics = closed_form_metrics(cfg.autoencoder.f, cfg.autoencoder.latent_channels, cfg.training.seed)
    tracker.log_metrics(metrics, step=cfg.training.diffusion.steps)
    return metrics


def diverging_trial(cfg: ExperimentConfig, workdir: Path, tracker: Tracker, report, resume: bool = False) -> dict[str, float]:
    """Like training that goes NaN: f = 4 raises, the others finish."""
    if cfg.autoencoder.f == 4:
        raise FloatingPointError("diffusion loss is nan at step 3")
    return quick_trial(cfg, workdir, tracker, report)


def pruned_trial(cfg: ExperimentConfig, workdir: Path, tracker: Tracker, report, resume: bool = False) -> dict[str, float]:
    """Reports a validation loss proportional to the learning rate at steps 0..2."""
    loss = cfg.training.diffusion.lr * 1e4
    for step in range(3):
        report("val_loss", loss, step)
    return {"fid_domain": loss}


def _record(cfg: ExperimentConfig) -> None:
    log = os.environ.get("SWEEP_FAKE_LOG")
    if log:
        line = json.dumps({"pid": os.getpid(), "f": cfg.autoencoder.f,
                           "c": cfg.autoencoder.latent_channels, "seed": cfg.training.seed})
        with open(log, "a") as out:  # one short O_APPEND write per line: safe across processes
            out.write(line + "\n")


def meet() -> None:
    """A rendezvous that proves several processes run at the same time (`SWEEP_FAKE_MEET`)."""
    setting = os.environ.get("SWEEP_FAKE_MEET")
    if not setting:
        return
    folder, count = setting.rsplit(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(folder).iterdir())) < int(count):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(Path(folder).iterdir()))} of {count} workers arrived")
        time.sleep(0.05)


def _maybe_die(cfg: ExperimentConfig) -> None:
    mode, marker = os.environ.get("SWEEP_FAKE_DIE"), os.environ.get("SWEEP_FAKE_MARKER")
    if not mode or not marker or cfg.autoencoder.f != 2 or Path(marker).exists():
        return
    Path(marker).write_text(str(os.getpid()))
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)


def executions(log: Path) -> list[tuple[int, int, int]]:
    """(f, latent channels, seed) of every trial execution recorded in `log`."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [(d["f"], d["c"], d["seed"]) for d in map(json.loads, lines)]


def workdir_with_tracking_store(template_root: Path, workdir: Path) -> Path:
    """A work folder whose MLflow SQLite store is copied from a template (creating one takes seconds)."""
    template = Path(default_tracking_uri(template_root).removeprefix("sqlite:///"))
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        MlflowClient(tracking_uri=default_tracking_uri(template_root)).search_experiments()
    target = Path(default_tracking_uri(workdir).removeprefix("sqlite:///"))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, target)
    return workdir


def main() -> None:
    """`python -m sweep_fakes SPEC_JSON WORKDIR`: a whole sweep (one in-process worker) in its own process."""
    from sweeps.spec import parse_spec
    from sweeps.workers import run_sweep

    summary = run_sweep(parse_spec(json.loads(sys.argv[1])), Path(sys.argv[2]), trial_fn=quick_trial)
    sys.exit(summary.exit_code)


if __name__ == "__main__":
    main()
