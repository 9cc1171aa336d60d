"""`ldm config show/validate/presets` and the root app's one-line errors."""

from pathlib import Path

import yaml
from typer.testing import CliRunner

from ldm.config import load_config, parse_overrides
from ldm_cli.main import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_show_prints_resolved_yaml_and_hash() -> None:
    result = invoke("config", "show", "-p", "mnist", "-o", "autoencoder.f=8", "-o", "diffusion.schedule=cosine")
    assert result.exit_code == 0, result.output
    body, _, footer = result.output.rpartition("# config hash: ")
    shown = yaml.safe_load(body)
    assert shown["autoencoder"]["f"] == 8 and shown["diffusion"]["schedule"] == "cosine"
    expected = load_config(preset="mnist", overrides=parse_overrides(["autoencoder.f=8", "diffusion.schedule=cosine"]))
    assert footer.split()[0] == expected.config_hash()


def test_validate_good_and_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    load_config(preset="shapes").save(good)
    result = invoke("config", "validate", str(good))
    assert result.exit_code == 0 and "valid" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("autoencoder: {f: 6}\n")
    result = invoke("config", "validate", str(bad))
    assert result.exit_code == 1
    assert result.output.strip() == "Error: autoencoder.f=6 is not a power of two; allowed: 1, 2, 4, 8, 16, 32, ..."


def test_presets_lists_every_shipped_preset() -> None:
    result = invoke("config", "presets")
    assert result.exit_code == 0
    assert {"tiny", "mnist", "shapes", "paper-f4"} <= set(result.output.split())


def test_unknown_preset_is_one_line_without_traceback() -> None:
    result = invoke("config", "show", "-p", "imagenet")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: unknown preset 'imagenet'; allowed: micro, mnist, paper-f4, shapes, tiny"]
