"""PatchGAN discriminator (pix2pix / VQGAN) sized for small images, and its hinge loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class NLayerDiscriminator(nn.Module):
    """`n_layers` stride-2 4x4 convolutions, then two 3x3 ones: one real/fake logit per patch.

    The stride-1 layers keep the patch grid at H / 2**n_layers (VQGAN's 4x4 ones shrink it further),
    so even 8x8 images get a 2x2 grid with the default two layers.
    """

    def __init__(self, in_channels: int, base_channels: int = 64, n_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        width = base_channels
        for n in range(1, n_layers):
            next_width = base_channels * min(2**n, 8)
            layers += [nn.Conv2d(width, next_width, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(next_width), nn.LeakyReLU(0.2)]
            width = next_width
        next_width = base_channels * min(2**n_layers, 8)
        layers += [nn.Conv2d(width, next_width, 3, padding=1, bias=False), nn.BatchNorm2d(next_width),
                   nn.LeakyReLU(0.2), nn.Conv2d(next_width, 1, 3, padding=1)]
        self.layers = nn.Sequential(*layers)
        self.apply(_pix2pix_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _pix2pix_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
