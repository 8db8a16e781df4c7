"""Bidirectional Monte Carlo on data simulated from an iwae VAE: forward and reverse AIS sandwich log p(x)
(Grosse et al. 2015; Wu et al. 2017); the figure of the sandwich against T is
:func:`iwae.figures.plot_bdmc`."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from ..models.vae import VAE
from .annealing import DEFAULT_CHAINS, DEFAULT_LEAPFROG, DEFAULT_STEP_SIZE, sandwich, schedule_betas
from .likelihood import _frozen
from .vae import _sample_prior_chain, vae_target

__all__ = ["bdmc"]


@torch.no_grad()
def _simulate(model: VAE, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, x) ~ p(z) p(x | z): z the whole chain ``(n, sum D_l)``, x a sample of the model's likelihood ``(n, D)``."""
    like = next(model.parameters())
    zs = _sample_prior_chain(model, (n,), generator, like)
    x = model.decode_latents(zs).sample(generator)  # p(x | z_1), or the HVAE's p(x | z_1, z_2)
    return torch.cat(zs, -1), x


def bdmc(
    model: VAE,
    n: int,
    *,
    steps_list: Sequence[int] = (10, 100, 1000),
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    initial: str = "encoder",
    schedule: str = "sigmoid",
    step_size: float = DEFAULT_STEP_SIZE,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> list[dict]:
    """BDMC on ``n`` images simulated from ``model``: a sandwich of log p(x) for each T of ``steps_list``.

    (z, x) ~ p(z) p(x | z) once (the same images for every T); forward AIS from ``initial`` gives
    ``lower`` (mean over images of log p-hat, a stochastic lower bound), reverse AIS from the
    simulated z (all C chains of an image start at it) gives ``upper`` (a stochastic upper bound);
    ``gap`` = upper - lower, the mean over images of each image's gap.

    Returns:
        One dict per T: ``steps``, ``lower``, ``upper``, ``gap``, ``lower_stderr``, ``upper_stderr``
        and ``gap_stderr`` (over images), ``acceptance`` ([forward, reverse]), ``seconds``, ``n``,
        ``chains``, ``leapfrog``, ``initial``.
    """
    if n < 1:
        raise ValueError(f"bdmc needs n >= 1 simulated images, got {n}")
    if not steps_list:
        raise ValueError("bdmc needs at least one number of steps")
    for steps in steps_list:
        schedule_betas(steps, schedule)
    with _frozen(model):
        z_true, x = _simulate(model, n, generator)
        rows = []

        def se(v: torch.Tensor) -> float:
            return v.std().item() / math.sqrt(n) if n > 1 else math.nan

        for steps in steps_list:
            t0 = time.perf_counter()
            log_joint, p0 = vae_target(model, x, initial)
            lower, fwd, upper, rev = sandwich(
                log_joint,
                p0,
                z_true,
                chains=chains,
                steps=steps,
                leapfrog_steps=leapfrog,
                schedule=schedule,
                step_size=step_size,
                generator=generator,
                progress=progress,
            )
            lower, upper = lower.cpu(), upper.cpu()
            rows.append(
                {
                    "steps": steps,
                    "lower": lower.mean().item(),
                    "upper": upper.mean().item(),
                    "gap": (upper - lower).mean().item(),
                    "lower_stderr": se(lower),
                    "upper_stderr": se(upper),
                    "gap_stderr": se(upper - lower),
                    "acceptance": [fwd.acceptance.mean().item(), rev.acceptance.mean().item()],
                    "seconds": time.perf_counter() - t0,
                    "n": n,
                    "chains": chains,
                    "leapfrog": leapfrog,
                    "initial": initial,
                }
            )
    return rows
