"""Latent Diffusion Models with every ablation factor as a config field."""

__version__ = "0.1.0"
