"""Shared by the evaluation tests: one MNIST 32x32 domain classifier per test process."""

from pathlib import Path

import pytest

from evaluation.extractors.domain import train_classifier
from ldm.config import DataConfig


@pytest.fixture(scope="session")
def mnist_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's base temp dir is shared by the evaluation test files, so the classifier trains once."""
    workdir = tmp_path_factory.getbasetemp() / "evaluation-mnist"
    train_classifier(DataConfig(name="mnist", resolution=32, channels=1), workdir)
    return workdir
