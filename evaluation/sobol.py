"""Initial noises from one scrambled Sobol sequence (`evaluation.sobol_noise`), instead of independent draws.

Sample i's x_T is point i of a scrambled Sobol sequence in [0, 1)^d, d = the latent's size, mapped through the
inverse normal CDF: each coordinate's N values are stratified (a low-discrepancy set has about one point per
1/N of each axis), so the sample set covers the noise distribution more evenly than N independent draws and
metrics over it vary less from seed to seed. The sequence is a function of (evaluation seed, d) only and
point i does not depend on the batch or rank that asks for it. Only x_T changes: the noise of stochastic
samplers (DDPM, DDIM with eta > 0) is still drawn from the batch's generator. torch's engine stops at
d = 21,201 (e.g. 4 x 64 x 64 latents; 3 x 128 x 128 pixels is beyond it).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor
from torch.quasirandom import SobolEngine

from ldm.errors import UserError

# ndtri(0) is -inf; a scrambled point can be exactly 0. Clamped at the float64 resolution of 2^-52 instead.
EDGE = 2.0**-52


def sobol_normal(seed: int, start: int, count: int, shape: tuple[int, ...]) -> Tensor:
    """Points start .. start + count - 1 of the seed's sequence as float32 N(0, I) noise of `shape` each."""
    dim = math.prod(shape)
    if dim > SobolEngine.MAXDIM:
        raise UserError(f"evaluation.sobol_noise needs latents of at most {SobolEngine.MAXDIM} values; "
                        f"this model's are {shape} = {dim}; allowed: sobol_noise false")
    digest = hashlib.sha256(f"ldm-eval-sobol:{seed}".encode()).digest()
    engine = SobolEngine(dim, scramble=True, seed=int.from_bytes(digest[:4], "little"))
    engine.fast_forward(start)
    uniform = engine.draw(count, dtype=torch.float64).clamp(EDGE, 1 - EDGE)
    return torch.special.ndtri(uniform).float().reshape(count, *shape)
