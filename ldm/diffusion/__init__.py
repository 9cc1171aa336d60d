"""The diffusion stage: noise schedules, the Gaussian process, samplers, the UNet denoiser and conditioners."""
