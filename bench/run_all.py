"""Run the four CPU benchmarks with their defaults, one after another, each in its own process.

    python -m bench.run_all                     # about 45 minutes on 2 cores (sweep_overhead: 25)
    python -m bench.run_all --threads 1 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = ("unet_vs_diffusers", "cost_vs_f", "eval_throughput", "sweep_overhead")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="default: $LDM_WORKDIR or ./outputs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    shared = ["--device", "cpu", "--threads", str(args.threads)]
    if args.workdir is not None:
        shared += ["--workdir", str(args.workdir)]
    outcomes = []
    for name in args.only:
        command = [sys.executable, "-m", f"bench.{name}", *shared]
        print(f"\n=== {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, check=False).returncode
        outcomes.append((name, code, time.perf_counter() - start))
    print("\n=== summary")
    for name, code, seconds in outcomes:
        print(f"{name:20s} {'ok' if code == 0 else f'FAILED (exit {code})':18s} {seconds:7.0f} s")
    return int(any(code != 0 for _, code, _ in outcomes))


if __name__ == "__main__":
    raise SystemExit(main())
