"""The `ldm` command line: the one place that knows every package."""
