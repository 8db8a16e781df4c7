"""The diagonal Normal log-density, written once for every Gaussian in the package.

    log N(z; mu, diag(sigma^2)) = sum_d [-eps_d^2 / 2 - log sigma_d - log(2 pi) / 2],   eps = (z - mu) / sigma,

summed over the last dimension (the event), with the scale given as ``log_scale`` = log sigma (the
networks' output, so no exp/log round trip). Where z was drawn as mu + sigma * eps, pass eps itself
to :func:`diag_normal_log_prob_from_eps` (no subtraction, and the value of the draw exactly).

Used by the VAE's layers (vae.py), the priors (the sliced mixture keeps its own memory-saving
backward but takes each slice's density from here) and the posterior analysis. The formula rather
than ``torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)`` (the same value, tested): Normal
takes sigma, so it recomputes log sigma from exp(log sigma), and it checks its arguments at every
construction. Forward and backward on a training step's (K, B, D) = (50, 20, 50), one CPU thread:
this formula 0.26-0.46 ms, Normal 0.49-0.54 ms, Normal(validate_args=False) 0.36-0.42 ms.
"""

from __future__ import annotations

import math

import torch

__all__ = ["diag_normal_log_prob", "diag_normal_log_prob_from_eps", "HALF_LOG_2PI"]

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def diag_normal_log_prob_from_eps(eps: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(mu + sigma * eps; mu, diag(sigma^2)) = -|eps|^2 / 2 - sum_d log sigma_d - D log(2 pi) / 2.

    Args:
        eps: standardised values (z - mu) / sigma, shape ``(..., D)``.
        log_scale: log sigma, broadcastable to ``eps``.

    Returns:
        Shape ``eps.shape[:-1]`` (broadcast with ``log_scale.shape[:-1]``).
    """
    return -0.5 * eps.square().sum(-1) - log_scale.sum(-1) - eps.shape[-1] * HALF_LOG_2PI


def diag_normal_log_prob(z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(z; loc, diag(exp(log_scale)^2)), summed over the last dim (see the module docstring).

    Args:
        z: values, shape ``(..., D)``.
        loc, log_scale: mu and log sigma, broadcastable to ``z``.

    Returns:
        The broadcast shape without its last dim.
    """
    return diag_normal_log_prob_from_eps((z - loc) * torch.exp(-log_scale), log_scale)
