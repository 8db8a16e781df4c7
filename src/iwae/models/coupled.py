"""The networks with two inputs of the two-level VAE of Tomczak & Welling (2018): q(z_1 | x, z_2) and p(x | z_1, z_2).

Each reads its two inputs a and b through a branch of its own, joins the branches and maps the result
to a distribution's parameters:

    h_a = block(a),  h_b = block(b)                       (one block of ``widths[0]`` units each)
    h   = join(h_a, h_b) = block([h_a, h_b])              (a block of ``widths[1]`` units on the concatenation)
    h   = block(h) ...                                    (``widths[2:]``, none in the paper)

then a Gaussian head (:class:`CoupledGaussian`) or a linear layer of raw likelihood parameters
(:class:`CoupledDecoder`). A block is the paper's GatedDense, (W h + b) * sigmoid(V h + c), for
``network="gated"`` (weights He-normal, biases PyTorch's default, the log-variance head bounded by
Hardtanh(-6, 2), as the paper's code), or one of Burda et al.'s tanh layers for ``network="mlp"``
(Glorot-uniform weights, zero biases, the log-sigma head unbounded, as :class:`~.networks.GaussianMLP`).

The join's linear maps read the concatenation [h_a, h_b] with one weight matrix W = [W_a, W_b], computed
as W_a h_a + W_b h_b without building the concatenation, so that in q(z_1 | x, z_2) the x branch and
its share of the join run once per input while the z_2 branch runs on the K samples ``(K, B, .)``; the
two parts broadcast.

Reference: J. M. Tomczak, M. Welling. VAE with a VampPrior. AISTATS 2018 (its code: models/HVAE_2level.py
of github.com/jmtomczak/vae_vampprior).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal

from .gated import LOGVAR_MAX, LOGVAR_MIN, GatedDense, _he_linear
from .networks import Tanh, float32_out, glorot_linear

__all__ = ["CoupledGaussian", "CoupledDecoder", "GaussianHead"]

_NETWORKS = ("mlp", "gated")


def _check(network: str, widths: Sequence[int]) -> None:
    if network not in _NETWORKS:
        raise ValueError(f"the coupled networks are mlp or gated, not {network!r}")
    if len(widths) < 2:
        raise ValueError(
            f"a coupled network needs at least 2 widths (each branch's, then the join's), got {tuple(widths)}"
        )


def _block(network: str, in_features: int, out_features: int) -> nn.Module:
    """One hidden layer: GatedDense (gated) or a Glorot linear layer and tanh (mlp)."""
    if network == "gated":
        return GatedDense(in_features, out_features)
    return nn.Sequential(glorot_linear(in_features, out_features), Tanh())


def _split_linear(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor, width_a: int) -> torch.Tensor:
    """``layer`` applied to the concatenation [a, b] (last dim), as W_a a + W_b b + bias: a's product has
    a's leading dims, b's has b's, and the sum broadcasts them (a ``(B, .)`` against b ``(K, B, .)``)."""
    w = layer.weight
    return F.linear(a, w[:, :width_a]) + F.linear(b, w[:, width_a:], layer.bias)


class _Join(nn.Module):
    """A block on [h_a, h_b]: gated, (W [h_a, h_b] + b) * sigmoid(V [h_a, h_b] + c); mlp, tanh(W [h_a, h_b] + b)."""

    def __init__(self, network: str, width_a: int, width_b: int, out_features: int):
        super().__init__()
        self.width_a, self.gated = width_a, network == "gated"
        make = _he_linear if self.gated else glorot_linear
        self.h = make(width_a + width_b, out_features)
        if self.gated:
            self.g = make(width_a + width_b, out_features)
        else:
            self.act = Tanh()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = _split_linear(self.h, a, b, self.width_a)
        if self.gated:
            return h * torch.sigmoid(_split_linear(self.g, a, b, self.width_a))
        return self.act(h)


class _Trunk(nn.Module):
    """(a, b) -> the joined features ``(..., widths[-1])``: two branches, the join, further blocks."""

    def __init__(self, network: str, in_a: int, in_b: int, widths: Sequence[int]):
        super().__init__()
        _check(network, widths)
        widths = [int(w) for w in widths]
        self.branch_a = _block(network, in_a, widths[0])
        self.branch_b = _block(network, in_b, widths[0])
        self.join = _Join(network, widths[0], widths[0], widths[1])
        self.body = nn.Sequential(*[_block(network, widths[i], widths[i + 1]) for i in range(1, len(widths) - 1)])
        self.widest = max(widths)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.body(self.join(self.branch_a(a), self.branch_b(b)))


class GaussianHead(nn.Module):
    """Features h -> (loc, log sigma) of a diagonal Normal, each ``(..., out_features)``, in float32.

    gated: the paper's two linear heads, mean and a log-variance bounded by Hardtanh(-6, 2), so
    log sigma = logvar / 2 lies in [-3, 1]. mlp: Burda et al.'s one linear layer of 2 * out_features
    (its halves initialised as two Glorot layers, biases zero), log sigma unbounded.
    """

    def __init__(self, network: str, in_features: int, out_features: int):
        super().__init__()
        self.gated = network == "gated"
        if self.gated:
            self.mean = _he_linear(in_features, out_features)
            self.logvar = _he_linear(in_features, out_features)
        else:
            self.head = nn.Linear(in_features, 2 * out_features)
            with torch.no_grad():
                for half in (slice(0, out_features), slice(out_features, None)):
                    nn.init.xavier_uniform_(self.head.weight[half])
                self.head.bias.zero_()

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gated:
            logvar = F.hardtanh(self.logvar(h), LOGVAR_MIN, LOGVAR_MAX)
            return float32_out(self.mean(h)), 0.5 * float32_out(logvar)
        loc, log_scale = float32_out(self.head(h)).chunk(2, dim=-1)
        return loc, log_scale


class CoupledGaussian(nn.Module):
    """q(z | a, b) = N(loc(a, b), diag(sigma(a, b)^2)): the trunk (module docstring) and a :class:`GaussianHead`.

    As q(z_1 | x, z_2): ``loc_log_scale(x, z_2)`` with x ``(B, D)`` and z_2 ``(K, B, D_2)`` gives
    ``(K, B, D_1)``; the x branch runs once per input.
    """

    def __init__(self, network: str, in_a: int, in_b: int, widths: Sequence[int], out_features: int):
        super().__init__()
        self.trunk = _Trunk(network, in_a, in_b, widths)
        self.head = GaussianHead(network, widths[-1], out_features)
        self.out_features = out_features

    def loc_log_scale(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, log_scale)``, each of the broadcast leading dims of a and b plus ``(out_features,)``."""
        return self.head(self.trunk(a, b))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Independent:
        loc, log_scale = self.loc_log_scale(a, b)
        return Independent(Normal(loc, log_scale.exp()), 1)


class CoupledDecoder(nn.Module):
    """(z_1, z_2) -> the raw parameters ``(..., out_features)`` of p(x | z_1, z_2), ``out_features = P * D``
    parameter-major as the likelihoods read them: the trunk and one linear layer (He for gated, Glorot
    for mlp), in float32."""

    def __init__(self, network: str, in_a: int, in_b: int, widths: Sequence[int], out_features: int):
        super().__init__()
        self.trunk = _Trunk(network, in_a, in_b, widths)
        self.head = (_he_linear if network == "gated" else glorot_linear)(widths[-1], out_features)

    @property
    def output_bias(self) -> nn.Parameter:
        """The output layer's bias, ``(out_features,)`` (the likelihood initialises it)."""
        return self.head.bias

    @property
    def floats_per_row(self) -> int:
        """Temporary floats of one sample's no-grad forward pass, for :mod:`iwae.evaluate`'s budget: the two
        branches' outputs held while the join computes its two products, their sum, the gate and the
        product; or the output and the likelihood's passes over it. q(z_1 | x, z_2) of the same widths
        needs no more per sample."""
        w = self.trunk.widest
        return max(10 * w, 2 * self.head.out_features + w)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return float32_out(self.head(self.trunk(z1, z2)))
