"""What the sweep machinery adds to one trial: `sweeps.run_sweep` (Optuna study, MLflow parent and child runs, trial
files, the trial objective with MLflow logging) against the same configuration trained and evaluated by calling
the stage functions directly (`train_autoencoder`, `train_diffusion`, `evaluate_experiment`, no tracking).

Every measured run gets a fresh work folder, so both paths train their first stage from scratch; the dataset,
the domain classifier and the reference features are shared (linked in), filled by an untimed warm-up run.
With --repeats 2 or more the order alternates (direct, sweep, sweep, direct, ...) so load drift cancels.

    python -m bench.sweep_overhead                         # the `tiny` preset, one pair of runs
    python -m bench.sweep_overhead --preset mnist -o training.diffusion.steps=200 --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.harness import Report, Row, add_common_arguments, run_script, setup
from evaluation.experiment import evaluate_experiment
from ldm.config import ExperimentConfig
from ldm.paths import cache_dir, data_dir, resolve_workdir
from ldm.tracking import NullTracker, Tracker
from ldm.training.autoencoder_stage import train_autoencoder
from ldm.training.diffusion_stage import train_diffusion
from sweeps.objective import Reporter, run_trial
from sweeps.spec import SweepSpec, parse_spec
from sweeps.workers import run_sweep

STUDY = "bench-sweep-overhead"
OBJECTIVE = "fid_domain"


def one_trial_spec(preset: str, overrides: list[str]) -> SweepSpec:
    """A grid over nothing with one seed: exactly one trial of the base configuration."""
    raw = {"name": STUDY, "description": "one trial, for bench.sweep_overhead",
           "base": {"preset": preset, "overrides": overrides}, "objectives": [{"metric": OBJECTIVE}],
           "sampler": "grid", "seeds": [0]}
    return parse_spec(raw, source="bench.sweep_overhead")


def fresh_workdir(root: Path, name: str, shared: Path) -> Path:
    """An empty work folder whose data and caches are the shared, warm ones."""
    workdir = root / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    for folder in (data_dir(shared), cache_dir(shared)):
        folder.mkdir(parents=True, exist_ok=True)
        (workdir / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    return workdir


def run_direct(cfg: ExperimentConfig, workdir: Path) -> dict[str, float]:
    """Seconds of each stage, called as a script would call them."""
    tracker = NullTracker()
    start = time.perf_counter()
    first_stage = train_autoencoder(cfg, workdir, tracker)
    trained_ae = time.perf_counter()
    diffusion = train_diffusion(cfg, workdir, tracker, first_stage)
    trained = time.perf_counter()
    evaluate_experiment(cfg, diffusion, workdir, tracker)
    end = time.perf_counter()
    return {"total_s": end - start, "trial_s": end - start, "autoencoder_s": trained_ae - start,
            "diffusion_s": trained - trained_ae, "evaluation_s": end - trained}


def run_through_sweep(spec: SweepSpec, workdir: Path) -> dict[str, float]:
    """Seconds of run_sweep for one trial, and of the trial function inside it."""
    inside: list[float] = []

    def timed_trial(cfg: ExperimentConfig, trial_workdir: Path, tracker: Tracker,
                    report: Reporter) -> dict[str, float]:
        start = time.perf_counter()
        try:
            return run_trial(cfg, trial_workdir, tracker, report)
        finally:
            inside.append(time.perf_counter() - start)

    start = time.perf_counter()
    summary = run_sweep(spec, workdir, n_trials=1, trial_fn=timed_trial, log=lambda line: print(line, file=sys.stderr))
    total = time.perf_counter() - start
    if summary.states != {"COMPLETE": 1}:
        raise RuntimeError(f"the benchmark trial did not complete: trial states {summary.states}; see "
                           f"{workdir / 'sweeps' / STUDY / 'trials'}")
    return {"total_s": total, "trial_s": inside[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=1)
    parser.add_argument("--preset", default="tiny", help="the base configuration (default: tiny)")
    parser.add_argument("-o", "--override", action="append", default=[], dest="overrides",
                        help="dotted config override, repeatable (e.g. -o training.diffusion.steps=200)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    report = Report("sweep_overhead", args, device)
    spec = one_trial_spec(args.preset, [f"training.device={args.device}", *args.overrides])
    cfg = spec.trial_config(spec.grid_points()[0])
    root = resolve_workdir(args.workdir) / "bench" / "sweep_overhead"
    shared = root / "shared"
    for _ in range(args.warmup):
        print("warm-up: a direct run fills the shared data and caches (untimed) ...", file=sys.stderr, flush=True)
        run_direct(cfg, shared)

    runs: list[Row] = []
    for repeat in range(args.repeats):
        order = ("direct", "sweep") if repeat % 2 == 0 else ("sweep", "direct")
        for path in order:
            print(f"repeat {repeat + 1}: {path} ...", file=sys.stderr, flush=True)
            workdir = fresh_workdir(root, f"{path}-{repeat}", shared)
            seconds = run_direct(cfg, workdir) if path == "direct" else run_through_sweep(spec, workdir)
            runs.append({"repeat": repeat + 1, "path": path, **{k: round(v, 1) for k, v in seconds.items()}})
    report.table(f"One trial of preset '{args.preset}' (seconds)", runs)

    def median(path: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["path"] == path)

    direct, sweep, inside = median("direct", "total_s"), median("sweep", "total_s"), median("sweep", "trial_s")
    report.table("Sweep overhead over the direct run", [
        {"part": "whole sweep (run_sweep)", "seconds": round(sweep - direct, 1),
         "overhead_%": round(100 * (sweep / direct - 1), 1)},
        {"part": "study: Optuna, MLflow store and runs, files", "seconds": round(sweep - inside, 1),
         "overhead_%": round(100 * (sweep - inside) / direct, 1)},
        {"part": "inside the trial: MLflow logging, reporter", "seconds": round(inside - direct, 1),
         "overhead_%": round(100 * (inside / direct - 1), 1)},
    ])
    report.note("each run starts in an empty work folder (new Optuna journal and MLflow SQLite store); only the "
                "data, the domain classifier and the reference features are shared")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
