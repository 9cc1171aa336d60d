"""Live progress of a real sweep: the trial line with its ETA and the stage bars on a terminal, plain lines off one."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from sweep_fakes import workdir_with_tracking_store

from ldm import progress
from sweeps.objective import run_trial
from sweeps.spec import parse_spec
from sweeps.workers import run_sweep

ESCAPE = "\x1b["


def micro_sweep(tmp_path_factory, tmp_path, console: Console) -> str:
    """Two real micro trials (f = 1, f = 2) through `console`; what it showed."""
    workdir = workdir_with_tracking_store(tmp_path_factory.getbasetemp() / "mlflow-template", tmp_path / "work")
    spec = parse_spec({"name": "progress", "base": {"preset": "micro"}, "sampler": "grid",
                       "objectives": [{"metric": "fid_domain"}],
                       "space": {"autoencoder.f": {"type": "categorical", "choices": [1, 2]}}})
    with progress.using(progress.Board(console)):
        summary = run_sweep(spec, workdir, trial_fn=run_trial, log=console.print)
    assert summary.states == {"COMPLETE": 2}
    return console.file.getvalue()


def test_a_terminal_shows_trial_k_of_n_with_elapsed_and_eta_above_the_stage_bars(tmp_path_factory, tmp_path):
    shown = micro_sweep(tmp_path_factory, tmp_path,
                        Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None))
    assert ESCAPE in shown  # the live display redraws in place
    assert re.search(r"trial 1/2 \(f=1 s0\)  elapsed \d:\d\d:\d\d / ETA after the first trial", shown)
    # Trial 2's ETA comes from trial 1's duration, counting down.
    assert re.search(r"trial 2/2 \(f=2 s0\)  elapsed \d:\d\d:\d\d / ETA \d:\d\d:\d\d", shown)
    for stage in ("first stage", "diffusion", "evaluation: generation"):
        assert re.search(rf"{stage} .*\d+/\d+ .*img/s", shown), stage
    assert re.search(r"evaluation: metrics and intervals .*2/2 .*step/s", shown)


def test_off_a_terminal_every_line_is_plain_and_names_its_trial(tmp_path_factory, tmp_path):
    shown = micro_sweep(tmp_path_factory, tmp_path, Console(file=io.StringIO(), force_terminal=False, width=160))
    assert ESCAPE not in shown
    lines = shown.splitlines()
    assert "trial 1/2 (f=1 s0) started" in lines
    assert "trial 2/2 (f=2 s0) first stage: 0/4 (8 img each)" in lines
    assert any(re.fullmatch(r"trial 2/2 \(f=2 s0\) first stage 2/4  [\d.]+ img/s  .*loss .*", line) for line in lines)
    assert any(re.fullmatch(r"trial 2/2 \(f=2 s0\) diffusion done: 4 steps in \d:\d\d:\d\d  [\d.]+ img/s", line)
               for line in lines)
    assert "trial 2/2 (f=2 s0) evaluation: generation: 0/20 img" in lines
    assert "trial 2/2 (f=2 s0) evaluation: metrics and intervals: 0/2 step" in lines


def test_the_eta_counts_the_rest_of_this_trial_and_the_trials_after_it_over_the_workers():
    line = progress.TrialLine(k=2, total=5, label="f=2 s0", study_started=0.0, trial_started=100.0,
                              mean_trial_s=60.0, workers=2)
    assert line.eta_s(130.0) == 30.0 + 60.0 * 3 / 2
    assert line.eta_s(200.0) == 90.0  # past the mean: this trial counts as about to end
    assert line.text(130.0) == "trial 2/5 (f=2 s0)  elapsed 0:02:10 / ETA 0:02:00"
    assert progress.TrialLine(1, None, "f=1 s0", 0.0, 0.0, 60.0).eta_s(1.0) is None  # no budget: no end in sight


@pytest.mark.parametrize(("rate", "text"), [(1160.4, "1,160 img/s"), (42.14, "42.1 img/s"), (0.5134, "0.513 img/s")])
def test_rates_read_without_exponents(rate, text):
    assert progress.rate_text(rate, "img") == text
