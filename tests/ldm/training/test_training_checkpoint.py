"""Checkpoints: safe loading, atomic writes, config round trip, readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ldm.config import Override, load_config
from ldm.errors import UserError
from ldm.training.checkpoint import capture_rng, checkpoint_config, model_weights, read_checkpoint, save_checkpoint
from ldm.training.ema import EMA


def write(path: Path, step: int, ema: EMA | None = None) -> nn.Module:
    torch.manual_seed(step)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    cfg = load_config(preset="tiny", overrides=[Override("autoencoder.f", 4)])
    save_checkpoint(path, step=step, model=model, optimizers={"model": optimizer}, ema=ema,
                    data_order={"size": 10, "batch_size": 2, "seed": 0, "next_batch": step}, config=cfg,
                    rng=[capture_rng()], extras={"scale_factor": 0.5, "class_names": ["a", "b"]})
    return model


def test_checkpoint_loads_with_weights_only_and_round_trips_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    model = write(path, step=3)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 3 and ckpt["extras"] == {"scale_factor": 0.5, "class_names": ["a", "b"]}
    assert [set(state) for state in ckpt["rng"]] == [{"torch", "cuda"}] and ckpt["optimizers"]["model"]["state"]
    assert checkpoint_config(read_checkpoint(path)) == load_config(preset="tiny", overrides=[Override("autoencoder.f", 4)])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ckpt["model"].items())
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_model_weights_prefer_ema_when_asked(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    ema.shadow["weight"].fill_(5.0)
    path = tmp_path / "c.pt"
    save_checkpoint(path, step=1, model=model, optimizers={}, ema=ema, data_order={}, extras={}, rng=[],
                    config=load_config(preset="tiny"))
    ckpt = read_checkpoint(path)
    assert torch.all(model_weights(ckpt, use_ema=True)["weight"] == 5.0)
    assert torch.equal(model_weights(ckpt, use_ema=False)["weight"], model.weight.detach())


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    write(path, step=1)

    def crash_midway(obj: object, f: Path) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        write(path, step=2)
    monkeypatch.undo()
    assert read_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_missing_and_foreign_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"checkpoint '.*nope.pt' does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"checkpoint '.*junk.pt' cannot be read"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"'.*other.pt' is not a checkpoint written by `ldm train`"):
        read_checkpoint(tmp_path / "other.pt")


class NotATensor:
    """Any class: unpickling it would run code, so a weights-only load refuses it."""


def test_empty_and_unsafe_files_say_why_they_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").touch()
    with pytest.raises(UserError, match=r"checkpoint '.*empty.pt' cannot be read: the file is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.pt")
    torch.save({"model": NotATensor()}, tmp_path / "unsafe.pt")
    with pytest.raises(UserError) as refused:
        read_checkpoint(tmp_path / "unsafe.pt")
    message = str(refused.value)
    assert message == (f"checkpoint '{tmp_path / 'unsafe.pt'}' holds objects other than tensors and plain "
                       f"containers ({__name__}.NotATensor), so it will not be loaded; allowed: checkpoints of "
                       "tensors only, such as `ldm train` writes")
    assert "weights_only" not in message and "\n" not in message
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"text.pt' cannot be read: it is not a PyTorch checkpoint \(not a pickle"):
        read_checkpoint(tmp_path / "text.pt")
    (tmp_path / "bytes.pt").write_bytes(b"hello world")
    with pytest.raises(UserError, match=r"bytes.pt' cannot be read: it is not a PyTorch checkpoint \(KeyError: .+\)"):
        read_checkpoint(tmp_path / "bytes.pt")
