"""First-stage training objective: L1/L2 reconstruction + regulariser + optional adaptive-weight PatchGAN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.config import AutoencoderConfig
from ldm.distributed import current_ranks
from ldm.first_stage.autoencoder import AutoencoderOutput
from ldm.first_stage.discriminator import NLayerDiscriminator, hinge_discriminator_loss

MAX_ADAPTIVE_WEIGHT = 1e4


def adaptive_disc_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, disc_weight: float) -> Tensor:
    """VQGAN's lambda: |grad rec| / (|grad g| + 1e-4) w.r.t. the decoder's last layer, clamped, times disc_weight.

    Under torchrun the gradients are averaged over ranks first: the weight is that of the global batch, the same
    on every rank and as on one process.
    """
    ranks = current_ranks()
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    ranks.all_reduce_mean_(rec_grad)
    ranks.all_reduce_mean_(g_grad)
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, MAX_ADAPTIVE_WEIGHT).detach() * disc_weight


class AutoencoderLoss(nn.Module):
    """Holds the discriminator (none when `disc_weight` is 0) and computes both players' losses."""

    def __init__(self, cfg: AutoencoderConfig, image_channels: int) -> None:
        super().__init__()
        self.recon_loss = cfg.recon_loss
        self.disc_weight, self.disc_start = cfg.disc_weight, cfg.disc_start
        self.discriminator = NLayerDiscriminator(image_channels) if cfg.disc_weight > 0 else None

    def discriminator_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start

    def reconstruction_loss(self, images: Tensor, reconstruction: Tensor) -> Tensor:
        if self.recon_loss == "l1":
            return F.l1_loss(reconstruction, images)
        return F.mse_loss(reconstruction, images)

    def generator_loss(self, images: Tensor, output: AutoencoderOutput, step: int,
                       last_layer: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Loss for the autoencoder's optimiser, and the floats to log (output.stats included)."""
        rec = self.reconstruction_loss(images, output.reconstruction)
        loss = rec + output.reg_loss
        logs = {"rec_loss": rec.item(), "reg_loss": output.reg_loss.item(), **output.stats}
        if self.discriminator_active(step):
            assert self.discriminator is not None
            g_loss = -self.discriminator(output.reconstruction).mean()
            # Validation runs without autograd, where the gradient ratio is undefined: leave the GAN term out.
            weight = (adaptive_disc_weight(rec, g_loss, last_layer, self.disc_weight)
                      if torch.is_grad_enabled() else g_loss.new_zeros(()))
            loss = loss + weight * g_loss
            logs |= {"g_loss": g_loss.item(), "disc_adaptive_weight": weight.item()}
        logs["loss"] = loss.item()
        return loss, logs

    def discriminator_loss(self, images: Tensor, reconstruction: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Hinge loss for the discriminator's optimiser; call only when `discriminator_active(step)`."""
        if self.discriminator is None:
            raise RuntimeError("discriminator_loss called but autoencoder.disc_weight=0 built no discriminator")
        logits_real = self.discriminator(images)
        logits_fake = self.discriminator(reconstruction.detach())
        d_loss = hinge_discriminator_loss(logits_real, logits_fake)
        return d_loss, {"d_loss": d_loss.item(), "logits_real": logits_real.mean().item(),
                        "logits_fake": logits_fake.mean().item()}
