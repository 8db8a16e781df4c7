"""Hamiltonian Monte Carlo transitions with an identity mass matrix: the leapfrog integrator and one
Metropolis-corrected step per row of a batch, with per-row step sizes (see :mod:`iwae.ais`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["leapfrog", "hmc_step"]


def leapfrog(
    z: torch.Tensor, p: torch.Tensor, grad: torch.Tensor, grad_fn: Callable, step_size: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """``steps`` leapfrog steps of the dynamics dz/dt = p, dp/dt = grad log f(z) (identity mass).

    Args:
        z, p: position and momentum, shape ``(C, B, D)``.
        grad: grad log f at ``z``.
        grad_fn: ``z -> (grad log f(z), extra)``; ``extra`` (what the caller caches, e.g. log f) is
            returned for the final position.
        step_size: broadcastable to z, e.g. ``(C, B, 1)``.

    Returns:
        ``(z, p, extra)`` at the end of the trajectory. Each step costs one ``grad_fn`` call.
    """
    p = p + 0.5 * step_size * grad
    extra = None
    for i in range(steps):
        z = z + step_size * p
        grad, extra = grad_fn(z)
        p = p + (step_size if i < steps - 1 else 0.5 * step_size) * grad
    return z, p, extra


def hmc_step(
    z: torch.Tensor,
    log_f: torch.Tensor,
    grad: torch.Tensor,
    grad_fn: Callable,
    step_size: torch.Tensor,
    leapfrog_steps: int,
    generator: torch.Generator | None = None,
    cached: object = None,
) -> tuple[torch.Tensor, object, torch.Tensor]:
    """One HMC transition per row, leaving f invariant: momentum p ~ N(0, I), a leapfrog trajectory,
    then a Metropolis test accepting with probability min(1, exp(H(z, p) - H(z', p'))),
    H = -log f(z) + |p|^2 / 2.

    Args:
        z: current states, ``(C, B, D)``; ``log_f`` (``(C, B)``) and ``grad`` are f's there.
        grad_fn: ``z -> (grad log f(z), extra)`` where ``extra[0]`` is log f(z), shape ``(C, B)``.
        cached: the current state's ``extra`` (kept for rejected rows).

    Returns:
        ``(z, extra, accepted)``: the new states, their ``extra`` with rejected rows' old values, and
        the boolean ``(C, B)`` acceptances. A proposal whose log f is not finite is rejected.
    """
    p = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    z_new, p_new, extra_new = leapfrog(z, p, grad, grad_fn, step_size, leapfrog_steps)
    log_f_new = extra_new[0]
    log_accept = (log_f_new - 0.5 * p_new.square().sum(-1)) - (log_f - 0.5 * p.square().sum(-1))
    log_accept = torch.nan_to_num(log_accept, nan=-math.inf)
    log_u = torch.rand(log_accept.shape, generator=generator, device=z.device, dtype=z.dtype).log()
    accepted = (log_u < log_accept) & torch.isfinite(log_f_new)  # +inf is a numerical failure, too
    keep = accepted.unsqueeze(-1)
    z_out = torch.where(keep, z_new, z)
    old = cached if cached is not None else (log_f, grad)
    extra_out = tuple(torch.where(keep if a.dim() == z.dim() else accepted, a, b) for a, b in zip(extra_new, old))
    return z_out, extra_out, accepted
