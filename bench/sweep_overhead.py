"""What the sweep machinery adds to a trial: `sweeps.run_sweep` (Optuna study, MLflow parent and child runs, trial
files, the trial objective with MLflow logging and the pruning reporter) against the same trial function,
`sweeps.objective.run_trial`, called directly with tracking off, on the same configurations in the same order.

Every measured run gets a fresh work folder, so both paths train their first stages from scratch; the dataset,
the domain classifier and the reference features are shared (linked in), filled by an untimed warm-up run. The
sweep's folder starts with an MLflow store that exists (created untimed, as after the first study in a work
folder); what creating a store costs the first study is timed on its own, in a new process. With --repeats 2 or
more the order alternates (direct, sweep, sweep, direct, ...) so load drift cancels.

    python -m bench.sweep_overhead                         # the quickstart spec's 6 trials, one pair of runs
    python -m bench.sweep_overhead --trials 1 --repeats 2  # its first trial (f = 1) only, two pairs
    python -m bench.sweep_overhead --spec my_spec.yaml -o training.diffusion.steps=200
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import Report, Row, add_common_arguments, run_script, setup
from ldm.config import ExperimentConfig
from ldm.errors import UserError
from ldm.paths import cache_dir, data_dir, resolve_workdir
from ldm.tracking import NullTracker, Tracker
from ldm.tracking.runs import create_store_folder, resolve_tracking_uri
from sweeps.objective import Reporter, run_trial
from sweeps.spec import SweepSpec, TrialPoint, load_spec, parse_spec
from sweeps.workers import run_sweep

# Opens (and on first use creates) an MLflow store in a new process; prints the seconds that took.
OPEN_STORE = ("import sys, time; from mlflow.tracking import MlflowClient; start = time.perf_counter(); "
              "MlflowClient(tracking_uri=sys.argv[1]).search_experiments(); print(time.perf_counter() - start)")


def bench_spec(spec: SweepSpec, overrides: list[str]) -> SweepSpec:
    """The spec with extra base overrides (applied after its own, before the swept values), validated again."""
    raw = spec.model_dump(mode="json", exclude_none=True)
    raw["base"]["overrides"] = [*spec.base.overrides, *overrides]
    return parse_spec(raw, source=f"spec '{spec.name}' with the benchmark's overrides")


def fresh_workdir(root: Path, name: str, shared: Path) -> Path:
    """An empty work folder whose data and caches are the shared, warm ones."""
    workdir = root / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    for folder in (data_dir(shared), cache_dir(shared)):
        folder.mkdir(parents=True, exist_ok=True)
        (workdir / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    return workdir


def open_store_seconds(tracking_uri: str) -> float:
    """Seconds to open the MLflow store at `tracking_uri` in a new process (creating it when it does not exist)."""
    create_store_folder(tracking_uri)
    out = subprocess.run([sys.executable, "-c", OPEN_STORE, tracking_uri], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def no_pruning(metric: str, value: float, step: int) -> None:
    pass


def run_direct(spec: SweepSpec, points: list[TrialPoint], workdir: Path) -> dict[str, float]:
    """Seconds of the trial function on each point, tracking off, as a script calling it would run it."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for i, point in enumerate(points):
        trial_start = time.perf_counter()
        run_trial(spec.trial_config(point), workdir, NullTracker(), no_pruning)
        seconds[f"trial{i}_s"] = time.perf_counter() - trial_start
    return {"total_s": time.perf_counter() - start, **seconds}


class TimedTracker:
    """Forwards every call to a tracker and adds up the seconds spent in them."""

    def __init__(self, inner: Tracker) -> None:
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed


def run_through_sweep(spec: SweepSpec, n_trials: int, workdir: Path) -> dict[str, float]:
    """Seconds of run_sweep for `n_trials` trials, of the trial function inside each, and of its MLflow calls."""
    inside: list[float] = []
    trackers: list[TimedTracker] = []

    def timed_trial(cfg: ExperimentConfig, trial_workdir: Path, tracker: Tracker,
                    report: Reporter) -> dict[str, float]:
        trackers.append(TimedTracker(tracker))
        start = time.perf_counter()
        try:
            return run_trial(cfg, trial_workdir, trackers[-1], report)
        finally:
            inside.append(time.perf_counter() - start)

    start = time.perf_counter()
    summary = run_sweep(spec, workdir, n_trials=n_trials, trial_fn=timed_trial,
                        log=lambda line: print(line, file=sys.stderr))
    total = time.perf_counter() - start
    if summary.states.get("COMPLETE") != n_trials:  # the grid's other points stay WAITING with --trials
        raise RuntimeError(f"the benchmark trials did not all complete: trial states {summary.states}; see "
                           f"{workdir / 'sweeps' / spec.name / 'trials'}")
    return {"total_s": total, **{f"trial{i}_s": s for i, s in enumerate(inside)}, "inside_s": sum(inside),
            "logging_s": sum(t.seconds for t in trackers), "logging_calls": sum(t.calls for t in trackers)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=1)
    parser.add_argument("--spec", default="quickstart", help="sweep spec file or shipped name (default: quickstart)")
    parser.add_argument("--trials", type=int, default=None,
                        help="run the spec's first N grid points (default: all of them)")
    parser.add_argument("-o", "--override", action="append", default=[], dest="overrides",
                        help="dotted config override added to the spec's base, repeatable "
                             "(e.g. -o training.diffusion.steps=200)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    spec = bench_spec(load_spec(args.spec), [f"training.device={args.device}", *args.overrides])
    points = spec.grid_points()
    n_trials = len(points) if args.trials is None else args.trials
    if spec.sampler != "grid" or not 1 <= n_trials <= len(points):
        raise UserError(f"--spec {args.spec} --trials {args.trials}: allowed: a grid spec and 1 <= trials <= "
                        f"{len(points)} (its grid points)")
    points = points[:n_trials]
    report = Report("sweep_overhead", args, device)
    root = resolve_workdir(args.workdir) / "bench" / "sweep_overhead"
    shared = root / "shared"
    for _ in range(args.warmup):
        print("warm-up: a direct trial fills the shared data and caches (untimed) ...", file=sys.stderr, flush=True)
        run_direct(spec, points[:1], shared)

    runs: list[Row] = []
    for repeat in range(args.repeats):
        order = ("direct", "sweep") if repeat % 2 == 0 else ("sweep", "direct")
        for path in order:
            print(f"repeat {repeat + 1}: {path} ...", file=sys.stderr, flush=True)
            workdir = fresh_workdir(root, f"{path}-{repeat}", shared)
            if path == "direct":
                seconds = run_direct(spec, points, workdir)
            else:
                open_store_seconds(resolve_tracking_uri(workdir, None))
                seconds = run_through_sweep(spec, len(points), workdir)
            runs.append({"repeat": repeat + 1, "path": path, **{k: round(v, 2) for k, v in seconds.items()}})
    params = ", ".join(f"{k}={v}" for p in points for k, v in p.params.items())
    report.table(f"{len(points)} trial(s) of spec '{spec.name}' ({params}), seconds", runs)

    def median(path: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["path"] == path)

    direct, sweep, inside = median("direct", "total_s"), median("sweep", "total_s"), median("sweep", "inside_s")
    logging, calls = median("sweep", "logging_s"), median("sweep", "logging_calls")
    store_uri = resolve_tracking_uri(fresh_workdir(root, "new-store", shared), None)
    new_store, existing_store = open_store_seconds(store_uri), open_store_seconds(store_uri)

    def row(part: str, seconds: float) -> Row:
        return {"part": part, "seconds": round(seconds, 2), "per_trial_s": round(seconds / len(points), 2),
                "overhead_%": round(100 * seconds / direct, 2)}

    report.table("Sweep overhead over the direct run", [
        row("whole sweep (run_sweep), MLflow store exists", sweep - direct),
        row("  around the trial function: Optuna, MLflow runs, params and tags, files", sweep - inside),
        row(f"  MLflow logging called by the trial function ({calls:.0f} calls)", logging),
        row("  rest: the trial function's run-to-run variation", inside - logging - direct),
        row("first study in a work folder: + creating the MLflow store", new_store),
        row("  (opening an existing store in a new process)", existing_store),
    ])
    report.note("each run starts in an empty work folder (new Optuna journal, MLflow store created untimed "
                "beforehand for the sweep); only the data, the domain classifier and the reference features are "
                "shared; store opening is timed in a new process, after mlflow is imported")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
