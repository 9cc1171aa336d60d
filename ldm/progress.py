"""Live progress of one process: the study's trial line and a bar with throughput for the running stage.

On a terminal this is one rich display ("trial 2/6 (f=2 s0)  elapsed 0:03:10 / ETA 0:09:30" above the bars of
the first stage, diffusion or an evaluation step); anywhere else (CI logs, files, sweep worker processes) it is
plain lines on stderr: a stage's start, its log points and its end with the throughput, each naming the trial.
The current `Board` is process-wide, so the training loop and the evaluation report to it without being handed it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def rate_text(rate: float, unit: str) -> str:
    """`1,160 img/s`, `42.1 img/s`, `0.513 img/s`: whole numbers from 100 on, three significant digits below."""
    return f"{rate:,.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s"


def clock_text(seconds: float) -> str:
    """`H:MM:SS`, as rich's time columns write it."""
    whole = max(int(seconds), 0)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


@dataclass(frozen=True)
class TrialLine:
    """Where a study stands while trial `k` of `total` runs: its swept values and how long the rest should take.

    `mean_trial_s` is the mean duration of the study's finished trials (None before the first one), `workers`
    how many trials run at once.
    """

    k: int
    total: int | None
    label: str
    study_started: float
    trial_started: float
    mean_trial_s: float | None = None
    workers: int = 1

    def eta_s(self, now: float) -> float | None:
        if self.total is None or self.mean_trial_s is None:
            return None
        this_one = max(self.mean_trial_s - (now - self.trial_started), 0.0)
        return this_one + self.mean_trial_s * max(self.total - self.k, 0) / self.workers

    def text(self, now: float) -> str:
        eta = self.eta_s(now)
        of = f"/{self.total}" if self.total is not None else ""
        return (f"trial {self.k}{of} ({self.label})  elapsed {clock_text(now - self.study_started)} / "
                f"ETA {clock_text(eta) if eta is not None else 'after the first trial'}")

    def prefix(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        return f"trial {self.k}{of} ({self.label}) "


class _Throughput(ProgressColumn):
    """Units per second since the stage started (steps times the units of one step)."""

    def render(self, task: Task) -> Text:
        rate = task.fields["rate"]()
        return Text(rate_text(rate, task.fields["unit"]) if rate else "", style="progress.data.speed")


class _BoardProgress(Progress):
    """rich's Progress with the trial line above the bars, re-rendered (so its clock ticks) at every refresh."""

    def __init__(self, header: Callable[[], str | None], console: Console) -> None:
        self.header = header  # before rich's own set-up, which renders once
        super().__init__(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Throughput(),
                         TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                         console=console)

    def get_renderables(self) -> Iterator[RenderableType]:
        text = self.header()
        if text is not None:
            yield Text(text, style="bold")
        yield self.make_tasks_table(self.tasks)


class StageBar:
    """One stage's progress: `advance` at every step, `report` at a log point (plain mode prints those)."""

    def __init__(self, board: Board, name: str, total: int, unit: str, per_step: float, start: int) -> None:
        self.board, self.name, self.total, self.unit = board, name, total, unit
        self.per_step, self.start, self.completed = per_step, start, start
        self.started = time.monotonic()
        self.task: TaskID | None = None

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.completed - self.start) * self.per_step / elapsed if elapsed > 0 else 0.0

    def advance(self, completed: int) -> None:
        self.completed = completed
        if self.task is not None and self.board.bars is not None:
            self.board.bars.update(self.task, completed=completed)

    def add(self, count: int = 1) -> None:
        """Advance by `count` steps (or images, for a stage counted in images)."""
        self.advance(self.completed + count)

    def report(self, completed: int, status: str) -> None:
        self.advance(completed)
        if self.task is not None and self.board.bars is not None:
            self.board.bars.update(self.task, status=status)
        else:
            self.board.line(f"{self.name} {completed}/{self.total}  {self.rate_text()}  {status}".rstrip())

    def rate_text(self) -> str:
        rate = self.rate()
        return rate_text(rate, self.unit) if rate else ""

    def count_text(self, steps: int) -> str:
        return f"{steps} {self.unit}" if self.per_step == 1 else f"{steps} steps"


class Board:
    """The progress display of a process: rich bars on a terminal console, plain lines on any other."""

    def __init__(self, console: Console | None = None, prefix: str = "") -> None:
        self.console = console or Console(stderr=True)
        self.prefix = prefix
        self.trial_line: TrialLine | None = None
        self.bars: _BoardProgress | None = None

    @property
    def live(self) -> bool:
        return self.console.is_terminal

    def line(self, text: str) -> None:
        """A line naming the running trial: above the bars on a terminal, a plain line otherwise."""
        trial = self.trial_line.prefix() if self.trial_line is not None else ""
        self.console.print(f"{self.prefix}{trial}{text}", markup=False, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def trial(self, line: TrialLine) -> Iterator[None]:
        self.trial_line = line
        if not self.live:
            self.line("started")
        try:
            with self._showing():
                yield
        finally:
            self.trial_line = None

    @contextlib.contextmanager
    def stage(self, name: str, total: int, *, unit: str = "step", per_step: float = 1.0,
              start: int = 0) -> Iterator[StageBar]:
        """A bar for `total` steps of `per_step` `unit`s each (e.g. steps of 64 img), from `start` on."""
        bar = StageBar(self, name, total, unit, per_step, start)
        with self._showing():
            if self.bars is not None:
                bar.task = self.bars.add_task(name, total=total, completed=start, status="", unit=unit, rate=bar.rate)
            else:
                each = f" ({per_step:g} {unit} each)" if per_step != 1 else f" {unit}"
                self.line(f"{name}: {start}/{total}{each}")
            try:
                yield bar
            finally:
                if bar.task is not None and self.bars is not None:
                    self.bars.refresh()  # the stage's last state is drawn once, however short it was
                    self.bars.remove_task(bar.task)
                else:
                    self.line(f"{name} done: {bar.count_text(bar.completed - start)} in "
                              f"{clock_text(time.monotonic() - bar.started)}  {bar.rate_text()}".rstrip())

    @contextlib.contextmanager
    def _showing(self) -> Iterator[None]:
        """The live display runs while a trial or a stage is open (the outermost one starts and stops it)."""
        if not self.live or self.bars is not None:
            yield
            return
        self.bars = _BoardProgress(lambda: self.trial_line.text(time.monotonic()) if self.trial_line else None,
                                   self.console)
        self.bars.start()
        try:
            yield
        finally:
            self.bars.stop()
            self.bars = None


_current: Board | None = None


def board() -> Board:
    """The process's board: the one `using` installed, else one on stderr."""
    global _current
    if _current is None:
        _current = Board()
    return _current


def stage(name: str, total: int, *, unit: str = "step", per_step: float = 1.0, start: int = 0,
          shown: bool = True) -> contextlib.AbstractContextManager[StageBar | None]:
    """A bar on the process's board; none where not `shown` (e.g. off rank 0 under torchrun)."""
    if not shown:
        return contextlib.nullcontext(None)
    return board().stage(name, total, unit=unit, per_step=per_step, start=start)


@contextlib.contextmanager
def using(installed: Board) -> Iterator[Board]:
    """Make `installed` the process's board for the duration (the CLI, worker processes and tests do this)."""
    global _current
    previous, _current = _current, installed
    try:
        yield installed
    finally:
        _current = previous
