"""The gated dense networks of the VampPrior paper (Tomczak & Welling 2018), one stochastic layer.

A GatedDense block maps ``h`` to

    GatedDense(h) = (W_1 h + b_1) * sigmoid(W_2 h + b_2)       (elementwise)

(no further activation). The encoder is two blocks of 300 units, then a linear head for the mean
of q(z | x) and a Hardtanh(min -6, max 2) linear head for its log-variance, so that
log sigma = logvar / 2 lies in [-3, 1]; the decoder is two blocks of 300 units and one linear layer
of ``P * D`` raw outputs for the likelihood. Weights are He-normal, N(0, 2 / fan_in), as in the
paper's released code (github.com/jmtomczak/vae_vampprior, models/VAE.py and utils/nn.py); biases
keep PyTorch's default initialisation, as there.

Reference: J. M. Tomczak, M. Welling. VAE with a VampPrior. AISTATS 2018.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .networks import float32_out

__all__ = ["GatedDense", "GatedEncoder", "GatedDecoder", "LOGVAR_MIN", "LOGVAR_MAX"]

LOGVAR_MIN, LOGVAR_MAX = -6.0, 2.0  # the paper's Hardtanh bounds on the encoder's log-variance


def _he_linear(in_features: int, out_features: int) -> nn.Linear:
    """nn.Linear with weights N(0, 2 / in_features) (the paper's he_init) and PyTorch's default bias."""
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.normal_(0.0, math.sqrt(2.0 / in_features))
    return layer


class GatedDense(nn.Module):
    """(W_1 h + b_1) * sigmoid(W_2 h + b_2): ``h`` of shape ``(..., in_features)`` -> ``(..., out_features)``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.h = _he_linear(in_features, out_features)
        self.g = _he_linear(in_features, out_features)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.h(h) * torch.sigmoid(self.g(h))


def _blocks(in_features: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    if len(hidden) < 1:
        raise ValueError("the gated network needs at least one GatedDense block (the paper's: 300, 300)")
    layers, width = [], in_features
    for units in hidden:
        layers.append(GatedDense(width, units))
        width = units
    return nn.Sequential(*layers), width


class GatedEncoder(nn.Module):
    """q(z | x) = N(mean(h), exp(logvar(h))), h = the GatedDense blocks of x, logvar = Hardtanh(-6, 2) of a linear head.

    :meth:`loc_log_scale` returns ``(mean, logvar / 2)``; inputs ``(..., in_features)`` with any leading dims.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        self.body, width = _blocks(in_features, hidden)
        self.mean = _he_linear(width, out_features)
        self.logvar = _he_linear(width, out_features)
        self.out_features = out_features

    def loc_log_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, log_scale)``, each ``h.shape[:-1] + (out_features,)``; log_scale in [-3, 1]."""
        h = self.body(h)
        logvar = nn.functional.hardtanh(self.logvar(h), LOGVAR_MIN, LOGVAR_MAX)
        return float32_out(self.mean(h)), 0.5 * float32_out(logvar)  # float32 also under bf16 autocast

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc_log_scale(h)


class GatedDecoder(nn.Module):
    """z -> raw parameters of p(x | z): the GatedDense blocks, then one linear layer of ``out_features``."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        self.body, width = _blocks(in_features, hidden)
        self.head = _he_linear(width, out_features)

    @property
    def output_bias(self) -> nn.Parameter:
        """The output layer's bias, ``(out_features,)``."""
        return self.head.bias

    @property
    def floats_per_row(self) -> int:
        """Temporary floats of one sample's forward pass (a block's two linears, the sigmoid and the
        product; the output and the likelihood's passes over it), for :mod:`iwae.evaluate`'s budget."""
        widest = max(block.h.out_features for block in self.body)
        return max(4 * widest, 2 * self.head.out_features + widest)  # a block's stage, or the output's

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``z.shape[:-1] + (out_features,)``, parameter-major."""
        return self.head(self.body(z))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The raw outputs (Bernoulli logits where there is one parameter per pixel)."""
        return self.forward(z)
