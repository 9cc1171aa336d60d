"""Root typer app: mounts each package's own commands and turns user errors into one-line messages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from evaluation import cli as eval_cli
from ldm.commands import config as config_cmd
from ldm.commands import data as data_cmd
from ldm.commands import train as train_cmd
from ldm.errors import UserError
from ldm.paths import WORKDIR_ENV
from reports import cli as reports_cli
from sweeps import cli as sweep_cli


class _FriendlyErrors(TyperGroup):
    """A `UserError` anywhere below becomes `Error: <message>` on stderr and exit code 1, no traceback."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except UserError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(code=1) from None


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
) -> None:
    if workdir is not None:
        os.environ[WORKDIR_ENV] = str(workdir)


app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
app.command("train")(train_cmd.train)
app.command("sample")(train_cmd.sample)
app.command("eval-ae")(train_cmd.eval_ae)
app.command("eval")(eval_cli.eval_command)
app.add_typer(sweep_cli.app, name="sweep")
app.command("ui")(sweep_cli.ui)
app.command("report")(reports_cli.report)
app.command("quickstart")(reports_cli.quickstart)
