"""The `ldm` command's output is the suite's own: MLflow's INFO lines (a new store's tables) stay out of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_training_in_a_fresh_work_folder_prints_no_mlflow_info_lines(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_LOGGING_LEVEL"}
    result = subprocess.run([str(Path(sys.executable).parent / "ldm"), "train", "-p", "micro"],
                            env={**env, "LDM_WORKDIR": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "diffusion checkpoint: " in output
    assert [line for line in output.splitlines() if " INFO mlflow" in line] == []
