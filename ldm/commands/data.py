"""`ldm data`: list datasets and render labelled sample grids."""

from __future__ import annotations

import typer

app = typer.Typer(help="List datasets and look at them.", no_args_is_help=True)


@app.command("list")
def list_datasets() -> None:
    """List the datasets and what each provides."""
    from ldm.data.registry import PROVIDES

    for name, provides in PROVIDES.items():
        typer.echo(f"{name}: {', '.join(sorted(provides)) or 'images only'}")
