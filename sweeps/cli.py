"""`ldm sweep` (run, status, stop, delete, list, validate) and `ldm ui`.

The study, MLflow and worker modules load inside the commands that need them: they pull in torch
and MLflow, which would slow every `ldm` invocation down by seconds.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from ldm.errors import UserError
from ldm.paths import resolve_workdir
from sweeps.spec import load_spec, short_param_names, shipped_spec_names

app = typer.Typer(help="Optuna studies over config fields; every trial is an MLflow run.", no_args_is_help=True)

SpecArgument = Annotated[str, typer.Argument(help="Spec YAML file, or a shipped spec by name (`ldm sweep list`).")]
StorageOption = Annotated[Optional[str], typer.Option(
    "--storage", help="Optuna storage URL or journal file (default: <workdir>/sweeps/<study>/journal.log).")]
TrackingOption = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking URI (default: SQLite under <workdir>/mlflow).")]


@app.command("run")
def run(
    spec: SpecArgument,
    n_trials: Annotated[Optional[int], typer.Option(
        "--n-trials", min=1, help="Finished trials the study should reach, earlier runs' included "
        "(default: the spec's n_trials; a grid: every point).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Local worker processes (one GPU each "
                                         "when several are visible).")] = 1,
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Run a study, or resume it: rerunning the same command finishes what is left."""
    from sweeps.runs import mlflow_ui_command
    from sweeps.workers import run_sweep

    sweep = load_spec(spec)
    workdir = resolve_workdir()
    objectives = ", ".join(f"{o.metric} ({o.direction})" for o in sweep.objectives)
    typer.echo(f"study {sweep.name}: sampler {sweep.sampler}, objectives {objectives}")
    summary = run_sweep(sweep, workdir, n_trials, workers, storage, tracking_uri, log=typer.echo)
    states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.states.items()))
    typer.echo(f"study {summary.study}: {states} trials; wall time {summary.wall_s:.1f} s")
    label = "Pareto front" if len(summary.objectives) > 1 else "best"
    for t in summary.best_trials:
        values = "  ".join(f"{name}={v:.4g}" for name, v in zip(summary.objectives, t.values))
        typer.echo(f"{label}: trial {t.number}  {values}")
    served = summary.tracking_uri.startswith(("http://", "https://"))  # a tracking server is its own UI
    ui = summary.tracking_uri if served else shlex.join(mlflow_ui_command(summary.tracking_uri, workdir))
    typer.echo(f"MLflow UI: {ui}")
    if summary.interrupted:
        typer.echo("interrupted: run the same command again to resume", err=True)
    elif summary.stopped_early:
        typer.echo(f"stopped early: {summary.stopped_early}; resume with: ldm sweep run {shlex.quote(spec)}", err=True)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


@app.command("status")
def status(
    study: Annotated[str, typer.Argument(help="Study name (the spec's `name`).")],
    storage: StorageOption = None,
) -> None:
    """Every trial of a study: state, params, objectives, duration; the Pareto front of several objectives."""
    from rich.console import Console
    from rich.table import Table

    from sweeps.ranking import rank_configurations
    from sweeps.study import sweep_status

    frame = sweep_status(study, resolve_workdir(), storage)
    objectives = frame.attrs["objectives"]
    fixed = {"number", "state", "seed", *objectives, "duration_s", "fail_reason", "mlflow_run_id", "pareto"}
    params = [c for c in frame.columns if c not in fixed]
    table = Table(title=f"study {study}")
    # Whole headers, however narrow the terminal: rich wraps the cells instead of cutting `diffusion.…`.
    for column in ["#", "state", *short_param_names(params), "seed", *objectives, "seconds", "note"]:
        table.add_column(column, min_width=len(column), overflow="fold")
    for r in frame.to_dict("records"):
        table.add_row(
            f"{r['number']}{'*' if r['pareto'] else ''}", r["state"], *(_cell(r[p]) for p in params),
            _cell(r["seed"]), *(_cell(r[o]) for o in objectives), _cell(r["duration_s"], ".1f"),
            _cell(r["fail_reason"]))
    console = Console()
    console.print(table)
    front = frame.loc[frame["pareto"], "number"].tolist() if len(frame) else []
    label = "Pareto front" if len(objectives) > 1 else "best"
    typer.echo(f"{label} (*): trials {', '.join(map(str, front)) or 'none yet'}")
    ranked = rank_configurations(frame, params, objectives)
    if ranked.empty:
        return
    typer.echo(f"configurations by mean {objectives[0]} over seeds (± 95% t-interval):")
    configurations = Table()
    for column in ["rank", *short_param_names(params), "n", *objectives]:
        configurations.add_column(column, min_width=len(column), overflow="fold")
    for rank, r in enumerate(ranked.to_dict("records"), start=1):
        configurations.add_row(str(rank), *(_cell(r[p]) for p in params), str(r["n"]),
                               *(_mean_cell(r[o], r[f"{o}_ci95"]) for o in objectives))
    console.print(configurations)
    best = ranked.iloc[0]
    values = " ".join(f"{name}={_cell(best[p])}" for name, p in zip(short_param_names(params), params))
    typer.echo(f"best configuration: {values or 'the only one'}  {objectives[0]}="
               f"{_mean_cell(best[objectives[0]], best[f'{objectives[0]}_ci95'])} (n = {int(best['n'])})")


def _mean_cell(mean: float, half_width: float | None) -> str:
    return _cell(mean) if half_width is None or half_width != half_width else f"{mean:.4g} ± {half_width:.2g}"


def _cell(value: object, float_format: str = ".4g") -> str:
    if value is None or value != value:  # None, or NaN from an empty DataFrame cell
        return ""
    if isinstance(value, float):
        return format(value, float_format)
    return str(value)


@app.command("stop")
def stop(
    study: Annotated[str, typer.Argument(help="Study name (the spec's `name`).")],
    storage: StorageOption = None,
) -> None:
    """Stop every worker of a study, on every machine: running trials are marked interrupted and queued again.

    Workers see the request within the spec's heartbeat_s; `ldm sweep run` with the same spec resumes.
    """
    from sweeps.study import load_study, open_storage, request_stop, study_location

    request_stop(load_study(study, open_storage(study_location(study, resolve_workdir(), storage))))
    typer.echo(f"study {study}: stop requested; its workers finish within a heartbeat (their running trials are "
               "marked interrupted); `ldm sweep run` with its spec resumes it")


@app.command("delete")
def delete(
    study: Annotated[str, typer.Argument(help="Study name (the spec's `name`).")],
    yes: Annotated[bool, typer.Option("--yes", help="Delete without asking.")] = False,
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Delete a study: its Optuna study, and its MLflow experiment with every run (restorable with `mlflow
    experiments restore` until the tracking store is garbage-collected)."""
    from ldm.tracking.runs import resolve_tracking_uri
    from sweeps.study import delete_study

    workdir = resolve_workdir()
    if not yes and not typer.confirm(f"delete study {study}, its trials and its MLflow runs?"):
        raise typer.Exit(1)
    deleted = delete_study(study, workdir, storage, resolve_tracking_uri(workdir, tracking_uri))
    typer.echo(f"study {study}: deleted {deleted}")


@app.command("list")
def list_specs() -> None:
    """The shipped specs, runnable by name."""
    for name in shipped_spec_names():
        typer.echo(f"{name}: {load_spec(name).description}")


@app.command("validate")
def validate(spec: SpecArgument) -> None:
    """Check a spec (fields, dotted paths, every choice and grid point); exit 1 with the reason if invalid."""
    sweep = load_spec(spec)
    budget = sweep.trial_budget(None)
    trials = f"{budget} trials" if budget else f"until {sweep.timeout_s} s"
    typer.echo(f"{spec}: valid (study {sweep.name}, sampler {sweep.sampler}, {len(sweep.space)} params, {trials})")


def ui(
    host: Annotated[str, typer.Option(help="Interface to bind; keep loopback unless you mean to share it.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    tracking_uri: TrackingOption = None,
    optuna: Annotated[bool, typer.Option("--optuna", help="Also start optuna-dashboard (the `dashboard` extra) "
                                         "on a study's storage.")] = False,
    optuna_port: Annotated[int, typer.Option(help="Port of optuna-dashboard.")] = 8080,
    storage: Annotated[Optional[str], typer.Option(
        "--storage", help="Optuna storage for --optuna (default: the one study journal under <workdir>/sweeps).")
    ] = None,
) -> None:
    """Start the MLflow UI on the sweep runs (and optuna-dashboard with --optuna); print their URLs.

    SIGINT and SIGTERM go to every server and all their workers; `ldm ui` exits when a server does.
    """
    from ldm.tracking.runs import create_store_folder, resolve_tracking_uri
    from sweeps.runs import mlflow_ui_command, runs_view_urls
    from sweeps.study import JOURNAL_NAME, sweeps_root

    workdir = resolve_workdir()
    journals = sorted(sweeps_root(workdir).glob(f"*/{JOURNAL_NAME}"))
    servers = {}
    if optuna:
        servers[f"optuna-dashboard on http://{host}:{optuna_port}"] = _dashboard_command(
            storage, journals, host, optuna_port)
    else:
        for journal in journals:
            typer.echo(f"Optuna dashboard of {journal.parent.name}: optuna-dashboard {shlex.quote(str(journal))}")
    uri = resolve_tracking_uri(workdir, tracking_uri)
    create_store_folder(uri)  # the UI creates the store itself on first start
    servers[f"MLflow UI on http://{host}:{port}"] = mlflow_ui_command(uri, workdir, host, port)
    for name, command in servers.items():
        typer.echo(f"{name} ({shlex.join(command)})")
    for study, url in runs_view_urls(uri, f"http://{host}:{port}").items():
        typer.echo(f"runs of {study}: {url}")
    raise typer.Exit(run_servers(list(servers.values())))


def _dashboard_command(storage: str | None, journals: list[Path], host: str, port: int) -> list[str]:
    import shutil

    executable = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which(
        "optuna-dashboard")  # the venv's own first, as for `mlflow`
    if executable is None:
        raise UserError("--optuna needs optuna-dashboard; install it with `pip install 'ldm-suite[dashboard]'`")
    if storage is None:
        if len(journals) != 1:
            found = ", ".join(j.parent.name for j in journals) or "none"
            raise UserError(f"--optuna needs --storage: there is not exactly one study journal under the work "
                            f"folder (studies: {found})")
        storage = str(journals[0])
    return [executable, storage, "--host", host, "--port", str(port), "--quiet"]


def run_servers(commands: list[list[str]]) -> int:
    """Run servers, each in a process group of its own, until one exits; SIGINT/SIGTERM stop every group.

    `mlflow ui` starts gunicorn or uvicorn workers: a signal to the `mlflow` process alone would leave them
    listening on the port.
    """
    servers = [subprocess.Popen(command, start_new_session=True) for command in commands]
    ended = threading.Event()

    def stop_all(signum: int | None = None, frame: object = None) -> None:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
        ended.set()

    previous = {s: signal.signal(s, stop_all) for s in (signal.SIGINT, signal.SIGTERM)}
    waiters = [threading.Thread(target=lambda s=server: (s.wait(), ended.set()), daemon=True) for server in servers]
    for waiter in waiters:
        waiter.start()
    try:
        while not ended.wait(0.5):
            pass
    finally:
        stop_all()  # the others, and workers a server left behind
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [server.wait() for server in servers]
    code = next((c for c in codes if c != 0), 0)
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
