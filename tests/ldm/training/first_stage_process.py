"""`python first_stage_process.py WORKDIR RESULT OVERRIDE...`: a process that needs the micro first stage.

It meets the others at the `SWEEP_FAKE_MEET` barrier (`sweep_fakes.meet`, on PYTHONPATH), trains or reuses
the first stage, and writes its checkpoint path and whether it trained to RESULT as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sweep_fakes import meet

from ldm.config import load_config, parse_overrides
from ldm.tracking import NullTracker
from ldm.training.autoencoder_stage import train_autoencoder


class TrainingSeen(NullTracker):
    """Notes whether training steps were logged, which only a process that trains does."""

    trained = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.trained |= "ae/loss" in metrics


def main() -> None:
    workdir, result, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    cfg = load_config(preset="micro", overrides=parse_overrides(overrides))
    tracker = TrainingSeen()
    meet()
    path = train_autoencoder(cfg, workdir, tracker)
    result.write_text(json.dumps({"checkpoint": str(path), "trained": tracker.trained}))


if __name__ == "__main__":
    main()
