"""The CLI parser's errors as the suite's one line: the option, the value given and what is allowed."""

from __future__ import annotations

import re
from collections.abc import Sequence

import typer
from typer.exceptions import TyperException

# typer's value errors, rewritten as "what is allowed".
_ALLOWED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Input should be greater than or equal to (?P<bound>\S+)"), ">= {bound}"),
    (re.compile(r"Input should be greater than (?P<bound>\S+)"), "> {bound}"),
    (re.compile(r"Input should be less than or equal to (?P<bound>\S+)"), "<= {bound}"),
    (re.compile(r"Input should be less than (?P<bound>\S+)"), "< {bound}"),
    (re.compile(r"Input should be a valid integer"), "an integer"),
    (re.compile(r"Input should be a valid number"), "a number"),
    (re.compile(r"is not one of (?P<choices>.+?)\.?$"), "{choices}"),
)


def given_value(option_names: Sequence[str], args: Sequence[str]) -> str | None:
    """The last value given on the command line for an option (`--n 0` or `--n=0`), if it is there."""
    value = None
    for i, token in enumerate(args):
        for name in option_names:
            if token == name and i + 1 < len(args):
                value = args[i + 1]
            elif token.startswith(f"{name}="):
                value = token.removeprefix(f"{name}=")
    return value


def one_line(error: TyperException, args: Sequence[str]) -> str:
    """`--n=0 is not allowed; allowed: >= 1` for a bad value, the parser's own message in one line otherwise."""
    message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
    param = getattr(error, "param", None)
    if not isinstance(error, typer.BadParameter) or param is None or not getattr(param, "opts", None):
        return message
    value = given_value(param.opts, args)
    if value is None:
        return message
    name = max(param.opts, key=len)
    reason = message.split(": ", 1)[-1].removeprefix("Value error, ")
    for pattern, allowed in _ALLOWED:
        found = pattern.search(reason)
        if found:
            return f"{name}={value} is not allowed; allowed: {allowed.format(**found.groupdict())}"
    return f"{name}={value} is not allowed: {reason}"
