"""`python forked_cli.py`: runs `ldm` command lines, each in a process of its own, without paying for imports each time.

The CLI's modules (torch, MLflow and Optuna included) are imported once; then, for every JSON line
`{"args": [...], "cwd": DIR, "out": DIR}` read from stdin, a forked child runs the command line with its stdout
and stderr in `out/stdout` and `out/stderr`, and the line `{"code": EXIT_STATUS}` is written back; a child
still running after TIMEOUT_S is killed by SIGALRM (status -14), since a bad input must fail fast. A child
starts from the parent's state, which never ran a command, so each command line runs as in a fresh `ldm` process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import evaluation.experiment  # noqa: F401  imported by `ldm eval`
import ldm.training.autoencoder_stage  # noqa: F401  imported by `ldm train`, `ldm eval-ae`
import ldm.training.pipeline  # noqa: F401  imported by `ldm sample`
import sweeps.workers  # noqa: F401  imported by `ldm sweep run`
from ldm_cli.main import app

TIMEOUT_S = 60


def _run_child(args: list[str], out: str) -> int:
    """The exit status `ldm ARGS` would have; an exception that escapes prints its traceback, as Python would."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(os.path.join(out, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = ["ldm", *args]
    try:
        app(args=args, prog_name="ldm")
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - what a real process would show
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(TIMEOUT_S)
            os.chdir(case["cwd"])
            os._exit(_run_child(case["args"], case["out"]))
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
