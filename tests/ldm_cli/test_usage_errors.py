"""Bad options from the CLI parser come out as the suite's single `Error:` line naming option, value and bounds."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ldm_cli.main import app
from ldm_cli.usage_errors import given_value


@pytest.mark.parametrize(("args", "line"), [
    (["sample", "--checkpoint", "x.pt", "--n", "0"], "Error: --n=0 is not allowed; allowed: >= 1"),
    (["sample", "--checkpoint", "x.pt", "--steps=0"], "Error: --steps=0 is not allowed; allowed: >= 1"),
    (["sample", "--checkpoint", "x.pt", "--n", "many"], "Error: --n=many is not allowed; allowed: an integer"),
    (["sample", "--checkpoint", "x.pt", "--eta", "-0.5"], "Error: --eta=-0.5 is not allowed; allowed: >= 0"),
    (["sample", "--checkpoint", "x.pt", "--sampler", "euler"],
     "Error: --sampler=euler is not allowed; allowed: 'ddim', 'ddpm'"),
    (["sweep", "run", "quickstart", "--workers", "0"], "Error: --workers=0 is not allowed; allowed: >= 1"),
    (["train", "--stage", "both"], "Error: --stage=both is not allowed; allowed: 'all', 'autoencoder', 'diffusion'"),
    (["sample"], "Error: Missing option '--checkpoint'."),
])
def test_parser_errors_are_one_line_with_the_value_and_what_is_allowed(args: list[str], line: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [line]


def test_a_real_process_prints_no_box_and_no_traceback() -> None:
    done = subprocess.run([sys.executable, "-c", "from ldm_cli.main import app; app()", "sample", "--checkpoint",
                           "x.pt", "--n", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["Error: --n=0 is not allowed; allowed: >= 1"]


def test_the_last_value_of_an_option_is_the_one_quoted() -> None:
    assert given_value(["--n"], ["sample", "--n", "3", "--n=0"]) == "0"
    assert given_value(["--n", "-n"], ["-n", "5"]) == "5"
    assert given_value(["--n"], ["sample", "--steps", "2"]) is None
