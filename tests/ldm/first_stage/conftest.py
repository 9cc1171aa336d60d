"""The first-stage tests' shared tiny autoencoder config."""

from collections.abc import Callable

import pytest

from ldm.config import AutoencoderConfig


@pytest.fixture
def tiny() -> Callable[..., AutoencoderConfig]:
    """A factory of small autoencoder configs (8 channels, one level width, f = 2, c = 2) with fields replaced."""

    def build(**fields: object) -> AutoencoderConfig:
        return AutoencoderConfig(**{"f": 2, "latent_channels": 2, "base_channels": 8, "channel_mult": [1], **fields})

    return build
