"""Priors p(z) over the top stochastic layer.

A prior is a module whose ``forward()`` returns a ``torch.distributions.Distribution`` with event
shape ``(D,)`` and whose ``log_prob(z)`` sums over the last dimension. Parameters of a prior are
generative parameters: they train with the decoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

__all__ = ["StandardNormalPrior", "make_prior", "PRIORS"]


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) in ``dim`` dimensions."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        # buffers, so that the prior follows the model across devices and dtypes
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale), 1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) = -|z|^2 / 2 - (D / 2) log(2 pi), summed over the last dim."""
        return -0.5 * z.square().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)


PRIORS = {"normal": StandardNormalPrior}


def make_prior(name: str, dim: int) -> nn.Module:
    """Builds the prior called ``name`` (one of ``PRIORS``) over ``dim`` latent units."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {', '.join(PRIORS)}")
    return PRIORS[name](dim)
