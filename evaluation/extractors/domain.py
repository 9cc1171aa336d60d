"""Extractor `domain`: a small CNN trained on the dataset's own labels, at the experiment's resolution and channels.

Inception features describe ImageNet photos; for 32x32 digits a classifier of the domain itself gives FIDs that
track what a reader sees. It is trained once per (dataset, resolution, channels, recipe) on the full train split,
validated on the test split, and cached under `cache_dir(workdir)/domain/`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch_fidelity import FeatureExtractorBase

from evaluation.extractors import FidelityExtractor, check_uint8_rgb, register_once
from ldm import progress
from ldm.config import DataConfig
from ldm.data.catalog import dataset_provides
from ldm.data.registry import build_dataset
from ldm.errors import UserError
from ldm.io import atomic_torch_save, load_checkpoint
from ldm.locks import exclusive, lock_file
from ldm.paths import cache_dir

FIDELITY_NAME = "ldm-domain"
FEATURES = "feat"
LOGITS = "logits_unbiased"


@dataclass(frozen=True)
class DomainRecipe:
    """How the classifier is built and trained; every field is part of the cache hash."""

    width: int = 16
    feature_dim: int = 128
    epochs: int = 1
    min_steps: int = 400  # small datasets (a few hundred shapes) get more epochs, so their features mean something
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


DEFAULT_RECIPE = DomainRecipe()


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DomainClassifier(nn.Module):
    """Four conv blocks, global pooling, a `feature_dim` penultimate layer (the FID features) and class logits."""

    def __init__(self, channels: int, num_classes: int, width: int, feature_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_block(channels, width), nn.MaxPool2d(2),
            _conv_block(width, 2 * width), nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width), nn.MaxPool2d(2),
            _conv_block(4 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [-1, 1] -> (penultimate features, logits)."""
        features = self.body(images)
        return features, self.head(features)


def classifier_path(data: DataConfig, workdir: Path, recipe: DomainRecipe = DEFAULT_RECIPE) -> Path:
    # The train cap is left out: the classifier always learns from the whole train split.
    identity = {field: value for field, value in data.identity().items() if field != "max_train_items"}
    key = json.dumps({"data": identity, "recipe": asdict(recipe)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return cache_dir(workdir) / "domain" / f"{data.name}-{data.resolution}-{data.channels}-{digest}.pt"


def require_labels(data: DataConfig) -> None:
    if "label" not in dataset_provides(data.name, data.root):
        raise UserError(f"extractor 'domain' needs labels; dataset '{data.name}' provides none; use inception")


def _batches(dataset: Dataset, batch_size: int, generator: torch.Generator | None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=generator is not None, generator=generator,
                      num_workers=0, collate_fn=_images_and_labels)


def _images_and_labels(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Only image and label: other keys (captions, masks) are not needed and may not collate."""
    return torch.stack([item["image"] for item in items]), torch.stack([item["label"] for item in items])


@torch.no_grad()
def accuracy_on(model: DomainClassifier, dataset: Dataset, batch_size: int = 500) -> float:
    """Percent of correctly classified items."""
    model.eval()
    correct = total = 0
    for images, labels in _batches(dataset, batch_size, generator=None):
        correct += (model(images)[1].argmax(1) == labels).sum().item()
        total += labels.numel()
    return 100.0 * correct / total


def train_classifier(data: DataConfig, workdir: Path, recipe: DomainRecipe = DEFAULT_RECIPE) -> Path:
    """Train on the full train split and cache the weights with their test accuracy; a cached one is reused."""
    require_labels(data)
    path = classifier_path(data, workdir, recipe)
    if not path.is_file():
        # One process trains it, also across machines that share the cache; the others wait, then reuse it.
        with exclusive(lock_file(path)):
            if not path.is_file():
                _train_into(path, data, workdir, recipe)
    return path


def _train_into(path: Path, data: DataConfig, workdir: Path, recipe: DomainRecipe) -> None:
    full = data.model_copy(update={"max_train_items": None})
    train, test = build_dataset(full, "train", workdir), build_dataset(full, "test", workdir)
    # A seeded initialisation that leaves the caller's random state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = DomainClassifier(data.channels, train.num_classes, recipe.width, recipe.feature_dim)
    loader = _batches(train, recipe.batch_size, torch.Generator().manual_seed(recipe.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    epochs = max(recipe.epochs, math.ceil(recipe.min_steps / len(loader)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=epochs * len(loader))
    model.train()
    # Training may be triggered from inside an evaluation (e.g. the first intermediate FID, under no_grad).
    with torch.enable_grad():
        _fit(model, loader, optimizer, schedule, epochs)
    checkpoint = {
        "state_dict": model.state_dict(), "channels": data.channels, "resolution": data.resolution,
        "num_classes": train.num_classes, "width": recipe.width, "feature_dim": recipe.feature_dim,
        "test_accuracy": accuracy_on(model, test), "dataset": data.name,
    }
    atomic_torch_save(checkpoint, path)


def _fit(model: DomainClassifier, loader: DataLoader, optimizer: torch.optim.Optimizer,
         schedule: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> None:
    with progress.board().stage("domain classifier (trained once per cache)", epochs * len(loader),
                        unit="img", per_step=loader.batch_size or 1) as bar:
        for _ in range(epochs):
            for images, labels in loader:
                loss = F.cross_entropy(model(images)[1], labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.add()


def resolve_domain(data: DataConfig, workdir: Path) -> FidelityExtractor:
    """The domain extractor for this data config, training its classifier on first use.

    A classifier no better than twice chance has features that say nothing about the data, and FIDs on them
    would look excellent for any model: that is refused rather than reported.
    """
    path = train_classifier(data, workdir)
    checkpoint = load_checkpoint(path)
    accuracy, chance = checkpoint["test_accuracy"], 100.0 / checkpoint["num_classes"]
    if accuracy < 2 * chance:
        raise UserError(f"the domain classifier for {data.name} at {data.resolution}px reached only {accuracy:.1f}% "
                        f"test accuracy (chance {chance:.1f}%): its features are meaningless; use more data "
                        f"(e.g. data.shapes_count) or extractor 'inception' ({path})")
    return FidelityExtractor(
        name="domain", fidelity_name=FIDELITY_NAME, weights_path=path,
        weights=f"domain-cnn:{path.stem} test_accuracy={accuracy:.2f}%", cache_tag=path.stem.rsplit("-", 1)[-1],
        feature_dim=checkpoint["feature_dim"], resize=f"bilinear-antialias to {data.resolution}px",
    )


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity view of a cached domain classifier: uint8 RGB in, ('feat', 'logits_unbiased') out."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise UserError("the 'domain' extractor needs its classifier file; build it with resolve_domain()")
        checkpoint = load_checkpoint(Path(feature_extractor_weights_path))
        self.channels: int = checkpoint["channels"]
        self.resolution: int = checkpoint["resolution"]
        self.test_accuracy: float = checkpoint["test_accuracy"]
        self.model = DomainClassifier(self.channels, checkpoint["num_classes"], checkpoint["width"],
                                      checkpoint["feature_dim"])
        self.model.load_state_dict(checkpoint["state_dict"])
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (FEATURES, LOGITS)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return LOGITS if metric == "isc" else FEATURES

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def _to_classifier_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> the float [-1, 1] images, channels and size the classifier was trained on."""
        check_uint8_rgb(images)
        x = images.float() / 127.5 - 1
        if self.channels == 1:
            x = x.mean(dim=1, keepdim=True)  # grayscale data reach us as three equal channels
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, logits = self.model(self._to_classifier_input(images))
        # Named after torch-fidelity's IS input; unlike Inception's, these logits keep the head's bias.
        named = {FEATURES: features, LOGITS: logits}
        return tuple(named[name] for name in self.features_list)

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> predicted labels (N,)."""
        device = next(self.parameters()).device
        return torch.cat([
            self.model(self._to_classifier_input(chunk.to(device)))[1].argmax(1).cpu()
            for chunk in images.split(batch_size)
        ])


def load_domain_extractor(data: DataConfig, workdir: Path) -> DomainFeatureExtractor:
    """The domain classifier for `data` (trained on first use), ready for `classify`."""
    extractor = resolve_domain(data, workdir)
    return DomainFeatureExtractor(FIDELITY_NAME, [FEATURES, LOGITS],
                                  feature_extractor_weights_path=str(extractor.weights_path))


register_once(FIDELITY_NAME, DomainFeatureExtractor)
