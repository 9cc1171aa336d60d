"""What every benchmark shares: its flags, the device and speed-up settings, interleaved timing, and the report.

Timing is interleaved: every case runs once per repeat, in an order rotated from repeat to repeat, so that a
change in the machine's load (it is shared) hits every case alike; comparisons use the median over repeats
of the paired ratio, and show the ratio of the fastest runs beside it. A report prints its tables and is saved
as JSON under `<workdir>/bench/`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.errors import UserError
from ldm.io import atomic_write_text
from ldm.paths import resolve_workdir

Row = dict[str, Any]


def positive_ints(text: str) -> list[int]:
    """argparse type of a comma-separated list of positive integers, e.g. `8,16`."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers, e.g. 8,16") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must list integers >= 1")
    return values


def add_common_arguments(parser: argparse.ArgumentParser, *, repeats: int, warmup: int = 1) -> None:
    """--device, --threads, --workdir, --repeats, --warmup."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (default 2: the cores of the shared development machine)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="results go to <workdir>/bench/ (default: $LDM_WORKDIR or ./outputs)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls per case (the median is kept)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls per case first")


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """The CUDA speed-ups, applied to every model alike; on the CPU they serve a smoke check."""
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around forward and loss")
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs")
    parser.add_argument("--compile", dest="compile_backend", nargs="?", const="inductor", default=None,
                        metavar="BACKEND", help="torch.compile every model (default backend inductor; 'eager' or "
                        "'aot_eager' trace without code generation, for a quick CPU check)")


def run_script(main: Callable[[], int]) -> int:
    """A benchmark's exit code; a UserError is printed as one line `Error: ...` with exit 1, as the CLI does."""
    try:
        return main()
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, seed and the device; asking for CUDA without one is an error, not a silent CPU run."""
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise UserError(f"--threads={args.threads}, --repeats={args.repeats}, --warmup={args.warmup}; allowed: "
                        "threads >= 1, repeats >= 1, warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; allowed here: cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class SpeedSettings:
    """bf16 autocast, channels_last and torch.compile, applied identically to every model of a comparison."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    compile_backend: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device) -> SpeedSettings:
        return cls(device, args.bf16, args.channels_last, args.compile_backend)

    def describe(self) -> str:
        parts = ["bf16 autocast" if self.bf16 else "fp32",
                 "channels_last" if self.channels_last else "contiguous",
                 f"compile={self.compile_backend}" if self.compile_backend else "eager"]
        return ", ".join(parts)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def module(self, module: nn.Module) -> nn.Module:
        module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def runner(self, module: nn.Module) -> Callable[..., Any]:
        """What to call: the compiled module (sharing its weights) or the module itself."""
        return torch.compile(module, backend=self.compile_backend) if self.compile_backend else module


def interleaved_times(cases: Mapping[str, Callable[[], object]], device: torch.device, repeats: int,
                      warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each case; each repeat runs every case once, starting one case later than the last."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            cases[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def speed_ratio(reference: Sequence[float], ours: Sequence[float]) -> float:
    """Median over repeats of reference seconds / our seconds (> 1: ours is faster); a pair shares one moment's load."""
    return statistics.median(r / o for r, o in zip(reference, ours, strict=True))


def best_ratio(reference: Sequence[float], ours: Sequence[float]) -> float:
    """Reference's fastest run over ours: the least load-sensitive estimate when other jobs only ever add time."""
    return min(reference) / min(ours)


def spread(times: Sequence[float]) -> str:
    """`median (min-max)` in milliseconds."""
    return f"{statistics.median(times) * 1e3:.1f} ({min(times) * 1e3:.1f}-{max(times) * 1e3:.1f})"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[Row]) -> str:
    """Rows (dicts sharing their keys) as aligned plain-text columns."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (the machine is shared, so every result records them)."""
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return names[0] if names else platform.processor() or "cpu"


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path | torch.device):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Report:
    """The tables and notes of one run, printed as they come and saved as `<workdir>/bench/<name>-<device>.json`."""

    name: str
    args: argparse.Namespace
    device: torch.device
    tables: dict[str, list[Row]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: str = field(default_factory=lambda: datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    load_at_start: list[float] = field(default_factory=load_average)

    def table(self, title: str, rows: list[Row]) -> None:
        self.tables[title] = rows
        print(f"\n{title}\n{format_table(rows)}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def save(self) -> Path:
        load_at_end = load_average()
        print(f"\nload average (1/5/15 min): {self.load_at_start} at start, {load_at_end} at end; "
              f"{torch.get_num_threads()} torch threads on {os.cpu_count()} cores")
        record = {
            "benchmark": self.name, "command": f"python -m bench.{self.name}", "args": vars(self.args),
            "started": self.started, "environment": environment(self.device),
            "load_average": {"start": self.load_at_start, "end": load_at_end},
            "tables": self.tables, "notes": self.notes, "details": self.details,
        }
        path = resolve_workdir(self.args.workdir) / "bench" / f"{self.name}-{self.device.type}.json"
        atomic_write_text(path, json.dumps(_jsonable(record), indent=2) + "\n")
        print(f"wrote {path}")
        return path
