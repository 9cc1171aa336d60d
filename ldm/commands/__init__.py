"""Typer commands of the `ldm` package (mounted by `ldm_cli.main`)."""
