"""The one way the suite reads YAML a person wrote: a repeated key is an error, and every error is one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ldm.errors import UserError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping may not give the same key twice (the last would win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # keys a `<<` merge brings in may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            try:
                first = first_lines.get(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}); allowed: each key once per mapping",
                    key_node.start_mark)
            first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _one_line(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as `line L, column C: context, problem`."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        what = ", ".join(filter(None, (error.context, error.problem)))
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    return " ".join(str(error).split())


def parse_yaml(text: str, source: str, error: type[UserError] = UserError) -> Any:
    """The YAML document in `text`; `source` names it in the `error` raised when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise error(f"{source} is not valid YAML: {_one_line(e)}") from None


def load_yaml_mapping(path: Path, source: str, expected: str, error: type[UserError] = UserError) -> dict[str, Any]:
    """The non-empty mapping in the YAML file `path`.

    `source` (e.g. "config file 'x.yaml'") names the file in errors, `expected` says what it should hold.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{source} {'is a folder; allowed: a YAML file' if path.is_dir() else 'does not exist'}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{source} cannot be read: {type(e).__name__}; allowed: a readable UTF-8 YAML file") from None
    raw = parse_yaml(text, source, error)
    if raw is None or raw == {}:
        raise error(f"{source} is empty; allowed: {expected}")
    if not isinstance(raw, dict):
        raise error(f"{source} must hold {expected}, not {type(raw).__name__}")
    return raw
