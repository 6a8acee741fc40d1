"""Hard-concrete L0 gates (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0").

One learnable ``log_alpha`` per gate. With beta = 2/3, gamma = -0.1, zeta = 1.1:

Training (a reparameterised sample, differentiable in log_alpha)::

    u ~ U(0, 1)
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta)      # binary concrete in (0, 1)
    z = clamp((zeta - gamma) * s + gamma, 0, 1)                 # stretched to (gamma, zeta), then rectified

so z is exactly 0 or exactly 1 with non-zero probability.

Evaluation (deterministic)::

    z = clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)

which is exactly 0 when sigmoid(log_alpha) <= -gamma / (zeta - gamma) = 1/12 and exactly 1 when
sigmoid(log_alpha) >= (1 - gamma) / (zeta - gamma) = 11/12.

Expected L0 norm (the regulariser, as a mean over gates in [0, 1])::

    P(z > 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))
    expected_l0 = mean over gates of P(z > 0)

Density = fraction of deterministic gates > 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
EPS = 1e-6  # keeps u away from 0 and 1 so log u and log(1 - u) stay finite


class HardConcreteGate(nn.Module):
    """A tensor of hard-concrete gates of the given ``shape``.

    ``init_keep``: sigmoid(log_alpha) at initialisation (Louizos et al.'s ``1 - droprate_init``), the same for
    every gate; 0.9 gives deterministic gates of 0.98 and P(z > 0) ~ 0.99.
    """

    def __init__(self, shape: int | tuple[int, ...] | torch.Size, init_keep: float = 0.9):
        super().__init__()
        if not 0.0 < init_keep < 1.0:
            raise ValueError(f"init_keep must be in (0, 1), got {init_keep}")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_alpha = nn.Parameter(torch.full(shape, math.log(init_keep) - math.log1p(-init_keep)))

    def forward(self) -> torch.Tensor:
        """A sample of the gates in training mode, the deterministic gates in eval mode. Shape = ``shape``."""
        if not self.training:
            return self.deterministic()
        u = torch.rand_like(self.log_alpha).clamp_(EPS, 1.0 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
        return ((ZETA - GAMMA) * s + GAMMA).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def expected_l0(self) -> torch.Tensor:
        """Mean over gates of P(z > 0): a differentiable scalar in [0, 1]."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA)).mean()

    @torch.no_grad()
    def density(self) -> float:
        """Fraction of deterministic gates that are > 0."""
        return (self.deterministic() > 0).float().mean().item()

    def extra_repr(self) -> str:
        return f"shape={tuple(self.log_alpha.shape)}"
