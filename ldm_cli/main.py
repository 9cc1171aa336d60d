"""Root typer app: mounts each package's own commands and turns user errors into one-line messages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from evaluation import cli as eval_cli
from ldm.commands import config as config_cmd
from ldm.commands import data as data_cmd
from ldm.commands import train as train_cmd
from ldm.errors import UserError
from ldm.paths import CACHE_ENV, WORKDIR_ENV
from reports import cli as reports_cli
from ldm_cli.usage_errors import one_line
from sweeps import cli as sweep_cli

# MLflow's INFO lines (creating store tables, job executors), its "View run ... at" line after every run on a
# tracking server and its download progress bars would interleave with the suite's own output; MLflow reads these when it is first
# imported, which every command does lazily, after these lines.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# click's status for a usage error, kept so scripts can tell a bad command line from a failed run.
USAGE_EXIT = 2
ARGS_KEY = "ldm.args"


class _FriendlyErrors(TyperGroup):
    """A `UserError` anywhere below becomes `Error: <message>` on stderr and exit code 1, no traceback; a bad
    option or argument becomes the same one line with exit code 2."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        ctx.meta[ARGS_KEY] = list(args)  # the whole command line, to quote a bad value back
        return super().parse_args(ctx, args)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except UserError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(code=1) from None
        except TyperException as e:
            if not hasattr(e, "format_message"):
                raise
            typer.echo(f"Error: {one_line(e, ctx.meta.get(ARGS_KEY, []))}", err=True)
            raise typer.Exit(code=USAGE_EXIT) from None


app = typer.Typer(
    cls=_FriendlyErrors,
    help="Latent Diffusion Model ablations: configs, data, training, evaluation, sweeps and reports.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", envvar=WORKDIR_ENV, help="Output folder for everything generated (default ./outputs)."
    ),
    cache: Optional[Path] = typer.Option(
        None, "--cache", envvar=CACHE_ENV, help="Folder for first stages, derived data and downloaded checkpoints, "
        "shareable by several work folders and machines (default: the work folder)."
    ),
) -> None:
    if workdir is not None:
        os.environ[WORKDIR_ENV] = str(workdir)
    if cache is not None:
        os.environ[CACHE_ENV] = str(cache)


app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
app.command("train")(train_cmd.train)
app.command("sample")(train_cmd.sample)
app.command("eval-ae")(train_cmd.eval_ae)
app.add_typer(eval_cli.app, name="eval")
app.add_typer(sweep_cli.app, name="sweep")
app.command("ui")(sweep_cli.ui)
app.command("report")(reports_cli.report)
app.command("quickstart")(reports_cli.quickstart)
