"""`ldm data list` and `ldm data show` through the root app."""

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ldm.paths import WORKDIR_ENV
from ldm_cli.main import app


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    # The root callback exports --workdir to the environment; monkeypatch restores it afterwards.
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path))

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, ["--workdir", str(tmp_path), "data", *args])

    return invoke


def test_list_shows_every_dataset_with_availability(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == {"mnist", "shapes", "fashion-mnist", "cifar10", "celeba", "folder", "webdataset"}
    assert "caption, label, mask" in lines["shapes"] and " offline " in lines["shapes"]
    assert "not offline" in lines["cifar10"] and str(tmp_path / "data") in lines["cifar10"]
    assert "images only" in lines["celeba"]


def test_show_writes_a_png_grid(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "grid.png"
    result = run("show", "shapes", "--split", "val", "--n", "4", "--resolution", "32", "--channels", "3",
                 "-o", "data.shapes_count=40", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 4 of 4 val images" in result.stdout
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        # 2 x 2 tiles of 32 px upscaled to 64, 2 px apart; captions add height below each tile.
        assert grid.width == 2 * (64 + 2) + 2
        assert grid.height > 2 * (64 + 2) + 2 and (grid.height - 2) % 2 == 0


def test_show_defaults_to_the_workdir_and_mnist_works(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("show", "mnist", "--split", "test", "--n", "9", "-o", "data.resolution=28")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "previews" / "mnist-test.png") as grid:
        assert grid.size[0] == 3 * (3 * 28 + 2) + 2


@pytest.mark.parametrize(("args", "message"), [
    (("show", "imagenet"), "Error: unknown dataset 'imagenet'; allowed: mnist, shapes, fashion-mnist, cifar10, "
                           "celeba, folder, webdataset"),
    (("show", "cifar10"), "Error: CIFAR-10 files not found in"),
    (("show", "shapes", "-o", "data.shapes_count=40", "--out", "x.gif2"), "Error: cannot write an image to"),
])
def test_errors_are_one_line(run, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    result = run(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_shards_writes_a_folder_as_webdataset_shards(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        (tmp_path / "images" / "c").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(tmp_path / "images" / "c" / f"{i}.png")
    dest = tmp_path / "shards"
    result = run("shards", str(tmp_path / "images"), str(dest), "--per-shard", "2")
    assert result.exit_code == 0, result.output
    assert f"wrote 2 shard(s) to {dest}; train on them with -o data.name=webdataset" in result.stdout
    assert sorted(p.name for p in dest.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    again = run("shards", str(tmp_path / "images"), str(dest))
    assert again.exit_code == 1 and again.stderr.startswith("Error: ") and again.stderr.count("\n") == 1
