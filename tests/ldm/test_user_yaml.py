"""The strict YAML reader: repeated keys at any depth are refused by name and line; every error is one line."""

from pathlib import Path

import pytest

from ldm.errors import UserError
from ldm.user_yaml import load_yaml_mapping, parse_yaml


@pytest.mark.parametrize("text, key, line, first", [
    ("lr: 1\nlr: 2\n", "lr", 2, 1),
    ("training:\n  diffusion:\n    lr: 1\n    steps: 3\n    lr: 2\n", "lr", 5, 3),
    ("space:\n  - {a: 1, a: 2}\n", "a", 2, 2),
    ("data: {}\nmodel: {}\ndata: {}\n", "data", 3, 1),
])
def test_a_repeated_key_is_refused_with_its_name_and_lines(text: str, key: str, line: int, first: int) -> None:
    with pytest.raises(UserError) as err:
        parse_yaml(text, "config file 'c.yaml'")
    message = str(err.value)
    assert message.startswith("config file 'c.yaml' is not valid YAML: ")
    assert f"line {line}," in message and f"duplicate key '{key}' (first at line {first})" in message
    assert "\n" not in message


def test_the_same_key_in_different_mappings_and_merge_overrides_are_allowed() -> None:
    text = "a: {lr: 1}\nb: {lr: 2}\nbase: &base {lr: 3, steps: 4}\nc:\n  <<: *base\n  lr: 5\n"
    assert parse_yaml(text, "x") == {"a": {"lr": 1}, "b": {"lr": 2}, "base": {"lr": 3, "steps": 4},
                                     "c": {"lr": 5, "steps": 4}}


@pytest.mark.parametrize("text, fragment", [
    ("a: [1\n", "line 2, column 1: while parsing a flow sequence"),
    ("---\na: 1\n---\nb: 2\n", "expected a single document in the stream, but found another document"),
    ("a: b: c\n", "line 1, column 5: mapping values are not allowed here"),
])
def test_syntax_errors_are_one_line_with_the_position(text: str, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        parse_yaml(text, "spec 's.yaml'")
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, fragment", [
    ("", "is empty; allowed: a mapping"),
    ("# only a comment\n", "is empty; allowed: a mapping"),
    ("{}\n", "is empty; allowed: a mapping"),
    ("- a\n", "must hold a mapping, not list"),
    ("3\n", "must hold a mapping, not int"),
])
def test_a_file_must_hold_a_non_empty_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"^file 'f.yaml' {fragment}"):
        load_yaml_mapping(path, "file 'f.yaml'", "a mapping")


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="^file 'x' does not exist$"):
        load_yaml_mapping(tmp_path / "x.yaml", "file 'x'", "a mapping")
    with pytest.raises(UserError, match="^file 't' is a folder; allowed: a YAML file$"):
        load_yaml_mapping(tmp_path, "file 't'", "a mapping")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="^file 'b' cannot be read: UnicodeDecodeError"):
        load_yaml_mapping(binary, "file 'b'", "a mapping")
