"""Benchmarks of the suite (scripts, not a library): run each from the repository root as `python -m bench.<name>`."""
