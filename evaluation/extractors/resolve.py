"""The one place an extractor name becomes weights."""

from __future__ import annotations

from pathlib import Path

from evaluation.extractors import FidelityExtractor
from evaluation.extractors.domain import resolve_domain
from evaluation.extractors.inception import resolve_inception
from ldm.config import DataConfig, ExtractorName
from ldm.errors import UserError


def resolve_extractor(name: ExtractorName, data: DataConfig, workdir: Path,
                      inception_weights: Path | None = None) -> FidelityExtractor:
    """The extractor `name` for `data` (the domain classifier is trained here on first use)."""
    match name:
        case "inception":
            return resolve_inception(inception_weights)
        case "domain":
            return resolve_domain(data, workdir)
        case _:
            raise UserError(f"unknown extractor '{name}'; allowed: inception, domain")
