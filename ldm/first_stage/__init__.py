"""First stage of an LDM: the autoencoder between images and latents (identity when f = 1)."""

from ldm.first_stage.autoencoder import (
    AutoencoderOutput,
    FirstStage,
    build_first_stage,
    evaluating,
)
from ldm.first_stage.losses import AutoencoderLoss
from ldm.first_stage.metrics import RateDistortion, evaluate_rate_distortion
from ldm.first_stage.regularizers import LatentPosterior

__all__ = [
    "AutoencoderLoss",
    "AutoencoderOutput",
    "FirstStage",
    "LatentPosterior",
    "RateDistortion",
    "build_first_stage",
    "evaluate_rate_distortion",
    "evaluating",
]
