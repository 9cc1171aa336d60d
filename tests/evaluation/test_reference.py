"""Reference statistics files: ours (`ldm eval ref`) and the layouts other tools write, and every bad file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from typer.testing import CliRunner

from evaluation.extractors import UInt8Images
from evaluation.extractors.resolve import resolve_extractor
from evaluation.features import LoadedExtractor
from evaluation.generation import compute_generation_metrics, prepare_scorer
from evaluation.reference import extract, reference_set, write_reference_stats
from evaluation.report_card import META_KEY
from ldm import __version__
from ldm.config import DataConfig, EvaluationConfig, build_config
from ldm.data.registry import build_dataset
from ldm.errors import ConfigError, UserError
from ldm.paths import WORKDIR_ENV
from ldm_cli.main import app

MNIST = DataConfig(name="mnist", resolution=32, channels=1)
N_REF = 60
BY_FILE = EvaluationConfig(extractors=["domain"], num_samples=40, num_reference=N_REF, kid_subset_size=30,
                           batch_size=16)


def digits(workdir: Path, n: int = 40) -> torch.Tensor:
    train = build_dataset(MNIST, "train", workdir)
    return torch.stack([train.uint8_image(i) for i in range(n)]).expand(-1, 3, -1, -1).contiguous()


def reference_features(workdir: Path) -> np.ndarray:
    """The reference set's features straight from the extractor, as pytorch-fid would compute its statistics from."""
    spec = resolve_extractor("domain", MNIST, workdir)
    return extract(reference_set(MNIST, "test", N_REF, 0, workdir), LoadedExtractor(spec), 16).numpy()


def calculate_fid(workdir: Path) -> float:
    spec = resolve_extractor("domain", MNIST, workdir)
    reference = torch.cat(list(reference_set(MNIST, "test", N_REF, 0, workdir).uint8_batches(N_REF)))
    return torch_fidelity.calculate_metrics(
        input1=UInt8Images(digits(workdir)), input2=UInt8Images(reference), cache=False, cuda=False, batch_size=16,
        fid=True, verbose=False, save_cpu_ram=True, **spec.fidelity_kwargs())[torch_fidelity.KEY_METRIC_FID]


def with_file(path: Path) -> EvaluationConfig:
    return BY_FILE.model_copy(update={"reference_stats": path, "num_reference": None})


def test_fid_against_our_statistics_file_equals_fid_against_the_raw_reference(mnist_workdir: Path,
                                                                              tmp_path: Path) -> None:
    path = tmp_path / "ref.npz"
    protocol = write_reference_stats(MNIST, BY_FILE, path, mnist_workdir, with_features=False)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["mu", "protocol", "sigma"]
        assert npz["mu"].dtype == npz["sigma"].dtype == np.float64 and npz["sigma"].shape == (128, 128)
        assert json.loads(str(npz["protocol"])) == protocol
    assert {k: protocol[k] for k in ("dataset", "split", "resolution", "channels", "num_reference", "seed",
                                     "extractor", "suite_version")} == {
        "dataset": "mnist", "split": "test", "resolution": 32, "channels": 1, "num_reference": N_REF, "seed": 0,
        "extractor": "domain", "suite_version": __version__}
    report = compute_generation_metrics(digits(mnist_workdir), MNIST, with_file(path), mnist_workdir)
    assert report["fid_domain"] == pytest.approx(calculate_fid(mnist_workdir), rel=1e-6)
    # Without features there is no KID or precision/recall, and the report says so.
    assert report["kid_domain"] is None and report["precision_domain"] is None and report["recall_domain"] is None
    assert any("hold no features" in note for note in report[META_KEY]["notes"])
    assert report[META_KEY]["num_reference"] == N_REF and report[META_KEY]["reference"] == str(path)


def test_statistics_file_with_features_gives_every_metric_of_the_raw_reference(mnist_workdir: Path,
                                                                               tmp_path: Path) -> None:
    path = tmp_path / "ref.npz"
    write_reference_stats(MNIST, BY_FILE, path, mnist_workdir, with_features=True)
    by_file = compute_generation_metrics(digits(mnist_workdir), MNIST, with_file(path), mnist_workdir)
    raw = compute_generation_metrics(digits(mnist_workdir), MNIST, BY_FILE, mnist_workdir)
    assert {k: v for k, v in by_file.items() if k != META_KEY} == {k: v for k, v in raw.items() if k != META_KEY}


@pytest.mark.parametrize("layout", ["pytorch-fid", "adm"])
def test_mu_sigma_npz_of_other_tools_gives_the_same_fid(mnist_workdir: Path, tmp_path: Path, layout: str) -> None:
    features = reference_features(mnist_workdir)
    # pytorch-fid: np.mean and np.cov of the float32 activations, saved with np.savez.
    arrays = {"mu": np.mean(features, axis=0), "sigma": np.cov(features, rowvar=False)}
    if layout == "adm":
        arrays |= {"arr_0": np.zeros((3, 32, 32, 3), np.uint8), "mu_s": np.zeros(7), "sigma_s": np.eye(7)}
    path = tmp_path / "stats.npz"
    np.savez(path, **arrays)
    report = compute_generation_metrics(digits(mnist_workdir), MNIST, with_file(path), mnist_workdir)
    assert report["fid_domain"] == pytest.approx(calculate_fid(mnist_workdir), rel=1e-6)
    assert report["kid_domain"] is None and report[META_KEY]["num_reference"] is None


@pytest.mark.parametrize(("arrays", "message"), [
    ({"mu": np.zeros(128)}, r"has no sigma \(keys: mu\); allowed: an npz with 'mu' and 'sigma'"),
    ({"m": np.zeros(128), "s": np.eye(128)}, r"has no mu or sigma \(keys: m, s\)"),
    ({"mu": np.zeros(2048), "sigma": np.eye(2048)},
     r"holds mu \(2048,\) and sigma \(2048, 2048\); extractor 'domain' needs mu \(128,\) and sigma \(128, 128\)$"),
    ({"mu": np.zeros(128), "sigma": np.eye(128), "protocol": np.array(json.dumps(
        {"extractor": "inception", "extractor_tag": "ts7ff4a85c"}))},
     r"was made for extractor 'inception' with weights ts7ff4a85c; this evaluation's is 'domain'"),
    ({"mu": np.zeros(128), "sigma": np.eye(128), "features": np.zeros((5, 64), np.float32)},
     r"holds features \(5, 64\); extractor 'domain' needs \(N, 128\)"),
])
def test_bad_statistics_files_are_one_line_errors(mnist_workdir: Path, tmp_path: Path, arrays: dict,
                                                  message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=f"^evaluation.reference_stats='{path}' {message}"):
        prepare_scorer(MNIST, with_file(path), mnist_workdir, 40)


def test_missing_or_unreadable_files_and_several_extractors_are_refused(mnist_workdir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist; allowed: an npz of reference statistics"):
        prepare_scorer(MNIST, with_file(tmp_path / "missing.npz"), mnist_workdir, 40)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(UserError, match="is not a readable npz"):
        prepare_scorer(MNIST, with_file(tmp_path / "text.npz"), mnist_workdir, 40)
    with pytest.raises(ConfigError, match="allowed: exactly one extractor"):
        build_config({"evaluation": {"extractors": ["domain", "inception"], "reference_stats": "x.npz"}})


def test_eval_ref_cli_writes_statistics_and_features(mnist_workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.npz"
    result = CliRunner().invoke(app, ["--workdir", str(mnist_workdir), "eval", "ref", "-p", "mnist", "--extractor",
                                      "domain", "-n", "30", "--seed", "2", "--features", "--out", str(out)],
                                env={WORKDIR_ENV: str(mnist_workdir)})
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 30 images of mnist/test through domain" in result.output
    with np.load(out, allow_pickle=False) as npz:
        features, mu = npz["features"], npz["mu"]
        protocol = json.loads(str(npz["protocol"]))
    expected = extract(reference_set(MNIST, "test", 30, 2, mnist_workdir),
                       LoadedExtractor(resolve_extractor("domain", MNIST, mnist_workdir)), 100)
    assert np.array_equal(features, expected.numpy())
    assert np.allclose(mu, expected.double().mean(0).numpy(), rtol=1e-6, atol=1e-9)
    assert protocol["num_reference"] == 30 and protocol["seed"] == 2
    bad = CliRunner().invoke(app, ["--workdir", str(mnist_workdir), "eval", "ref", "-p", "mnist", "--extractor",
                                   "domain,inception", "--out", str(out)], env={WORKDIR_ENV: str(mnist_workdir)})
    assert bad.exit_code == 1 and "names 2 extractors; allowed: exactly one" in bad.output
