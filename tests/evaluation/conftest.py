"""Shared by the evaluation tests: one MNIST 32x32 domain classifier per test process, and a work folder with a
micro class-conditional model per test module."""

from pathlib import Path

import pytest

from evaluation.extractors.domain import train_classifier
from ldm.config import DataConfig, Override, load_config
from ldm.training.diffusion_stage import train_diffusion


@pytest.fixture(scope="session")
def mnist_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's base temp dir is shared by the evaluation test files, so the classifier trains once."""
    workdir = tmp_path_factory.getbasetemp() / "evaluation-mnist"
    train_classifier(DataConfig(name="mnist", resolution=32, channels=1), workdir)
    return workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def class_model(workdir: Path) -> Path:
    """A micro class-conditional diffusion checkpoint, trained in the module's work folder."""
    return train_diffusion(load_config(preset="micro", overrides=[Override("diffusion.conditioning", "class")]),
                           workdir)
