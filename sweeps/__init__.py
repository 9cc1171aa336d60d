"""Optuna sweeps over ExperimentConfig fields: specs, studies, workers, and one MLflow run per trial.

The public names load on first use (PEP 562), so `import sweeps.cli` stays free of torch and MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SweepSpec": "sweeps.spec", "load_spec": "sweeps.spec", "SpecError": "sweeps.spec",
    "run_sweep": "sweeps.workers", "StudySummary": "sweeps.workers",
    "sweep_status": "sweeps.study", "pareto_front": "sweeps.study",
    "run_trial": "sweeps.objective",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sweeps' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
