"""The reference side of FID: a seeded reference set, its features cached once per protocol, statistics files.

A reference-statistics file is an npz that other tools read too: `mu` and `sigma` (float64), optionally
`features` (the rows KID and precision/recall need) and `protocol`, a JSON string saying what made it (dataset,
split, resolution, channels, N, seed, extractor and weights tag, suite version). The shared cache holds the same
files, with features, under `cache_dir/reference/`, keyed by everything that fixes the features; each is built by
one process under a lock. Files researchers bring (pytorch-fid, clean-fid, the ADM evaluator's reference batches:
`mu`, `sigma`, perhaps `arr_0`, `mu_s`, `sigma_s`) are read for `mu` and `sigma` only.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.extractors import FidelityExtractor
from evaluation.extractors.resolve import resolve_extractor
from evaluation.features import LoadedExtractor, ReferenceFeatures
from ldm import __version__, progress
from ldm.config import DataConfig, EvaluationConfig, Split
from ldm.data.base import ImageDataset
from ldm.data.registry import build_dataset
from ldm.errors import UserError
from ldm.io import atomic_path
from ldm.locks import exclusive, lock_file
from ldm.paths import cache_dir


@dataclass(frozen=True)
class ReferenceSet:
    """The first `len(indices)` images of a split in a seeded order, and the protocol that names them."""

    dataset: ImageDataset
    indices: torch.Tensor
    protocol: dict[str, Any]

    def __len__(self) -> int:
        return len(self.indices)

    def uint8_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images as uint8 (B, 3, H, W), as torch-fidelity reads a dataset of them."""
        for chunk in self.indices.split(batch_size):
            yield torch.stack([self.dataset.uint8_image(int(i)).expand(3, -1, -1) for i in chunk])

    def float_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The same images as float (B, C, H, W) in [-1, 1], for models that take data-space input."""
        for chunk in self.indices.split(batch_size):
            yield torch.stack([self.dataset[int(i)]["image"] for i in chunk])

    def protocol_for(self, extractor: FidelityExtractor) -> dict[str, Any]:
        """Everything that fixes this set's features through `extractor`."""
        return {**self.protocol, "extractor": extractor.name, "extractor_tag": extractor.cache_tag,
                "extractor_weights": extractor.weights, "feature_dim": extractor.feature_dim,
                "suite_version": __version__}

    def cache_path(self, extractor: FidelityExtractor, workdir: Path) -> Path:
        p = self.protocol
        return cache_dir(workdir) / "reference" / (
            f"{p['dataset']}-{p['split']}-{p['resolution']}px-{p['channels']}ch-n{p['num_reference']}-"
            f"seed{p['seed']}-{p['data_digest']}-{extractor.name}-{extractor.cache_tag}.npz")


def reference_set(data: DataConfig, split: Split, size: int, seed: int, workdir: Path,
                  size_field: str = "evaluation.num_samples") -> ReferenceSet:
    """The first `size` images of `split`, in an order seeded by `seed`.

    A `size` beyond the split is a UserError naming `size_field`, the setting that asked for it: build the set
    before generating, so that the error comes before the expensive work.
    """
    dataset = build_dataset(data, split, workdir)
    if size > len(dataset):
        raise UserError(f"{size_field}={size} exceeds the {len(dataset)} images of reference split '{split}'; "
                        f"allowed: <= {len(dataset)}, or another evaluation.reference_split")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    digest = hashlib.sha256(json.dumps(data.identity(), sort_keys=True).encode()).hexdigest()[:8]
    protocol = {"dataset": data.name, "split": split, "resolution": data.resolution, "channels": data.channels,
                "num_reference": size, "seed": seed, "data_digest": digest}
    return ReferenceSet(dataset, order[:size], protocol)


def evaluation_reference(data: DataConfig, evaluation: EvaluationConfig, workdir: Path, num_samples: int,
                         size_field: str = "evaluation.num_samples") -> ReferenceSet:
    """The reference set of an evaluation of `num_samples` samples: `evaluation.num_reference` images, else as many."""
    if evaluation.num_reference is not None:
        num_samples, size_field = evaluation.num_reference, "evaluation.num_reference"
    return reference_set(data, evaluation.reference_split, num_samples, evaluation.seed, workdir, size_field)


def extract(reference: ReferenceSet, extractor: LoadedExtractor, batch_size: int) -> torch.Tensor:
    """The FID/KID/PRC features of every reference image, batch by batch."""
    parts = []
    title = f"evaluation: reference features ({extractor.spec.name})"
    with progress.board().stage(title, len(reference), unit="img") as bar:
        for batch in reference.uint8_batches(batch_size):
            parts.append(extractor(batch)[extractor.layer])
            bar.add(len(batch))
    return torch.cat(parts)


def cached_reference_features(reference: ReferenceSet, extractor: LoadedExtractor, batch_size: int,
                              workdir: Path) -> ReferenceFeatures:
    """The reference set's features, extracted once per protocol into the shared cache and reused by every trial."""
    path = reference.cache_path(extractor.spec, workdir)
    if not path.is_file():
        # One process extracts, also across machines that share the cache; the others wait, then read it.
        with exclusive(lock_file(path)):
            if not path.is_file():
                features = ReferenceFeatures.of(extract(reference, extractor, batch_size))
                write_statistics(path, features, reference.protocol_for(extractor.spec), with_features=True)
    return read_statistics(path, extractor.spec, "the reference-feature cache")


def write_statistics(path: Path, reference: ReferenceFeatures, protocol: dict[str, Any], *,
                     with_features: bool) -> None:
    """An npz of float64 `mu` and `sigma`, the protocol, and the features if asked; written atomically."""
    arrays: dict[str, np.ndarray] = {
        "mu": np.asarray(reference.mu, dtype=np.float64), "sigma": np.asarray(reference.sigma, dtype=np.float64),
        "protocol": np.array(json.dumps(protocol, sort_keys=True)),
    }
    if with_features:
        if reference.features is None:
            raise ValueError("these statistics came without features")
        arrays["features"] = reference.features.numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, **arrays)


def read_statistics(path: Path, extractor: FidelityExtractor, field: str = "evaluation.reference_stats"
                    ) -> ReferenceFeatures:
    """A statistics file checked against `extractor`; each problem is one UserError naming `field` and the file.

    With features, FID takes the statistics torch-fidelity computes from them (so a cached reference gives exactly
    the numbers of `calculate_metrics`); without, the file's `mu` and `sigma`.
    """
    arrays = _load_npz(path, field)
    missing = [key for key in ("mu", "sigma") if key not in arrays]
    if missing:
        keys = ", ".join(sorted(arrays)) or "none"
        raise UserError(f"{field}='{path}' has no {' or '.join(missing)} (keys: {keys}); "
                        "allowed: an npz with 'mu' and 'sigma', as pytorch-fid, clean-fid, the ADM evaluator or "
                        "`ldm eval ref` write")
    mu, sigma, dim = arrays["mu"], arrays["sigma"], extractor.feature_dim
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise UserError(f"{field}='{path}' holds mu {mu.shape} and sigma {sigma.shape}; extractor "
                        f"'{extractor.name}' needs mu ({dim},) and sigma ({dim}, {dim})")
    protocol = json.loads(str(arrays["protocol"])) if "protocol" in arrays else {}
    made_for = (protocol.get("extractor"), protocol.get("extractor_tag"))
    if protocol and made_for != (extractor.name, extractor.cache_tag):
        raise UserError(f"{field}='{path}' was made for extractor '{made_for[0]}' with weights {made_for[1]}; "
                        f"this evaluation's is '{extractor.name}' with weights {extractor.cache_tag}; allowed: a file "
                        f"made for it (ldm eval ref --extractor {extractor.name})")
    if "features" in arrays:
        features = torch.from_numpy(arrays["features"])
        if features.ndim != 2 or features.shape[1] != dim:
            raise UserError(f"{field}='{path}' holds features {tuple(features.shape)}; extractor "
                            f"'{extractor.name}' needs (N, {dim})")
        return ReferenceFeatures.of(features)
    return ReferenceFeatures(mu, sigma, None, protocol.get("num_reference"))


def _load_npz(path: Path, field: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            # arr_0 of an ADM reference batch is its images: large, and not needed for statistics.
            return {key: npz[key] for key in npz.files if key != "arr_0"}
    except FileNotFoundError:
        raise UserError(f"{field}='{path}' does not exist; allowed: an npz of reference statistics") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{field}='{path}' is not a readable npz ({type(e).__name__}: {e}); allowed: an npz with "
                        "'mu' and 'sigma'") from None


def write_reference_stats(data: DataConfig, evaluation: EvaluationConfig, out: Path, workdir: Path, *,
                          with_features: bool) -> dict[str, Any]:
    """`ldm eval ref`: the statistics of `evaluation.num_reference` (else `num_samples`) images of the reference split
    through its one extractor, with their protocol, into `out`; the features come from (or go into) the cache."""
    if len(evaluation.extractors) != 1:
        raise UserError(f"evaluation.extractors={evaluation.extractors}; allowed: exactly one extractor per file")
    reference = evaluation_reference(data, evaluation, workdir, evaluation.num_samples)
    spec = resolve_extractor(evaluation.extractors[0], data, workdir, evaluation.inception_weights)
    features = cached_reference_features(reference, LoadedExtractor(spec), evaluation.batch_size, workdir)
    protocol = reference.protocol_for(spec)
    write_statistics(out, features, protocol, with_features=with_features)
    return protocol
