"""Generation, reconstruction and cost metrics for trained latent diffusion models."""
