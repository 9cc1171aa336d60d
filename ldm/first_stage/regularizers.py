"""Latent regularisers: a diagonal Gaussian posterior (KL) and an EMA vector quantiser (VQ).

Each is one `Regularizer` subclass registered under its `autoencoder.regularizer` value; it owns what differs
between them: the encoder moments it takes, its loss, its rate (bits per pixel) and whether its latents are
rescaled to unit variance before diffusion.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

if TYPE_CHECKING:
    from ldm.config import AutoencoderConfig, Regularizer as RegularizerName

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class LatentPosterior(Protocol):
    """q(z|x) as the rest of the suite sees it."""

    def sample(self, generator: Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """A draw; `noise` is the standard normal draw to use (shaped like the latent), fresh when None."""
        ...

    def mode(self) -> Tensor: ...

    def kl(self) -> Tensor:
        """KL(q(z|x) || N(0, I)) in nats, summed over latent dimensions, shape (B,)."""
        ...


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) from encoder moments stacked on the channel axis (mean first)."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        # As CompVis: keeps exp(logvar) finite early in training.
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: Generator | None = None, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


@dataclass
class PointPosterior:
    """A deterministic latent: sample and mode are the latent itself, KL is zero."""

    latent: Tensor

    def sample(self, generator: Generator | None = None, noise: Tensor | None = None) -> Tensor:
        return self.latent

    def mode(self) -> Tensor:
        return self.latent

    def kl(self) -> Tensor:
        return self.latent.new_zeros(self.latent.shape[0])


@dataclass
class QuantizedPosterior(PointPosterior):
    """A VQ latent (straight-through quantised) and its code indices, shape (B, H, W)."""

    indices: Tensor = field(kw_only=True)


@dataclass
class RegularizedLatent:
    """What a regulariser makes of the encoder output: the posterior, its loss term and logged stats."""

    posterior: LatentPosterior
    loss: Tensor
    stats: dict[str, float]


REGULARIZERS: dict[str, type[Regularizer]] = {}


class Regularizer(nn.Module, ABC):
    """Base of the regularisers; a subclass names its type: `class VectorQuantizer(Regularizer, kind="vq")`.

    `moments_per_channel`: encoder output channels per latent channel; `rescales_latents`: whether the latents
    are scaled by 1/std before diffusion (LDM App. D.1 does it for KL, not for VQ).
    """

    kind: ClassVar[RegularizerName]
    moments_per_channel: ClassVar[int] = 1
    rescales_latents: ClassVar[bool] = False

    def __init_subclass__(cls, kind: RegularizerName | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.kind = kind
            REGULARIZERS[kind] = cls

    @classmethod
    @abstractmethod
    def build(cls, cfg: AutoencoderConfig) -> Self:
        """A new regulariser of this type from the first stage's config."""

    @abstractmethod
    def forward(self, moments: Tensor) -> RegularizedLatent: ...

    @abstractmethod
    def bits_per_pixel(self, resolution: int, latent_side: int, mean_kl_nats: float) -> float:
        """The rate of a latent of `latent_side`^2 positions for a `resolution`^2 image."""


def kl_bits_per_pixel(mean_kl_nats: float, resolution: int) -> float:
    """E[KL(q(z|x) || N(0, I))] / ln 2 / (H W): the KL term as an (idealised) code length."""
    return mean_kl_nats / math.log(2) / (resolution * resolution)


def vq_bits_per_pixel(resolution: int, latent_side: int, codebook_size: int) -> float:
    """(H/f)(W/f) log2 K / (H W): one code index per latent position."""
    return latent_side * latent_side * math.log2(codebook_size) / (resolution * resolution)


class GaussianRegularizer(Regularizer, kind="kl"):
    """KL regularisation: loss = kl_weight * mean over the batch of KL(q(z|x) || N(0, I)); rate = the KL."""

    moments_per_channel = 2  # mean and log-variance
    rescales_latents = True

    def __init__(self, kl_weight: float) -> None:
        super().__init__()
        self.kl_weight = kl_weight

    @classmethod
    def build(cls, cfg: AutoencoderConfig) -> Self:
        return cls(cfg.kl_weight)

    def bits_per_pixel(self, resolution: int, latent_side: int, mean_kl_nats: float) -> float:
        return kl_bits_per_pixel(mean_kl_nats, resolution)

    def forward(self, moments: Tensor) -> RegularizedLatent:
        posterior = DiagonalGaussian(moments)
        kl = posterior.kl().mean()
        return RegularizedLatent(posterior, self.kl_weight * kl, {"kl": kl.item()})


def nearest_code(vectors: Tensor, codebook: Tensor) -> Tensor:
    """Index of the closest codebook row (squared Euclidean) for each row of `vectors` (N, D)."""
    distances = (
        vectors.pow(2).sum(1, keepdim=True) - 2.0 * vectors @ codebook.t() + codebook.pow(2).sum(1)[None, :]
    )
    return distances.argmin(1)


def code_usage_stats(counts: Tensor) -> tuple[float, float]:
    """(perplexity, usage in % of the codebook) from per-code assignment counts."""
    probs = counts.double() / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum()
    return math.exp(entropy.item()), 100.0 * (counts > 0).double().mean().item()


class VectorQuantizer(Regularizer, kind="vq"):
    """Nearest-code quantiser with a straight-through gradient and an EMA-updated codebook; rate = log2 K per code.

    The codebook is not a parameter: in training mode it follows exponential moving averages of
    per-code cluster sizes and embedding sums (VQ-VAE, App. A.1), with Laplace smoothing, and codes
    unused for `restart_after_steps` training steps are re-initialised from random encoder outputs.
    """

    def __init__(self, codebook_size: int, dim: int, commitment_weight: float, ema_decay: float, *,
                 restart_after_steps: int = 50, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.commitment_weight, self.ema_decay = commitment_weight, ema_decay
        self.restart_after_steps, self.epsilon = restart_after_steps, epsilon
        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)
        # Start the averages as if each code had seen itself once, so the first update is a weighted mean.
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embedding_sum", codebook.clone())
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))

    @classmethod
    def build(cls, cfg: AutoencoderConfig) -> Self:
        return cls(cfg.codebook_size, cfg.latent_channels, cfg.commitment_weight, cfg.codebook_ema_decay)

    def bits_per_pixel(self, resolution: int, latent_side: int, mean_kl_nats: float) -> float:
        return vq_bits_per_pixel(resolution, latent_side, self.codebook_size)

    def forward(self, z_e: Tensor) -> RegularizedLatent:
        b, _, h, w = z_e.shape
        vectors = z_e.detach().permute(0, 2, 3, 1).reshape(-1, self.dim).to(self.codebook.dtype)
        indices = nearest_code(vectors, self.codebook)
        z_q = self.codebook[indices].reshape(b, h, w, self.dim).permute(0, 3, 1, 2).to(z_e.dtype)
        counts = torch.bincount(indices, minlength=self.codebook_size)
        if self.training:
            self._update_codebook(vectors, indices, counts)
        # With an EMA codebook the codebook loss term has no gradient; only commitment remains.
        commitment = F.mse_loss(z_e, z_q.detach())
        straight_through = z_e + (z_q - z_e).detach()
        perplexity, usage = code_usage_stats(counts)
        return RegularizedLatent(
            QuantizedPosterior(straight_through, indices=indices.reshape(b, h, w)),
            self.commitment_weight * commitment,
            {"commitment": commitment.item(), "perplexity": perplexity, "codebook_usage": usage},
        )

    @torch.no_grad()
    def _update_codebook(self, vectors: Tensor, indices: Tensor, counts: Tensor) -> None:
        decay = self.ema_decay
        sums = torch.zeros_like(self.embedding_sum).index_add_(0, indices, vectors)
        self.cluster_size.mul_(decay).add_(counts.to(self.cluster_size.dtype), alpha=1.0 - decay)
        self.embedding_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.codebook.copy_(self.embedding_sum / smoothed[:, None])
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        self._restart_dead_codes(vectors)

    def _restart_dead_codes(self, vectors: Tensor) -> None:
        dead = (self.steps_unused >= self.restart_after_steps).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        picks = torch.randint(vectors.shape[0], (dead.numel(),), device=vectors.device)
        fresh = vectors[picks]
        self.codebook[dead] = fresh
        self.embedding_sum[dead] = fresh
        self.cluster_size[dead] = 1.0
        self.steps_unused[dead] = 0
