"""The AIS target and initial distributions of an :class:`iwae.models.VAE` (or :class:`iwae.models.HVAE`):
log p(x, z) over the whole latent chain, the encoder's q(z | x) and the prior p(z), both sampled
ancestrally with a generator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.distributions import Independent, MixtureSameFamily, Normal

from ..models.gaussian import diag_normal_log_prob
from ..models.vae import VAE
from .annealing import InitialDistribution, LogDensity

__all__ = ["vae_target"]


def _split(model: VAE, z: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(z, list(model.config.latent_dims), dim=-1))


def _log_prior_chain(model: VAE, zs: Sequence[torch.Tensor]) -> torch.Tensor:
    """log p(z_L) + sum_{l<L} log p(z_l | z_{l+1})."""
    log_p = model.prior_module.log_prob(zs[-1])
    for layer, z_above, z_below in zip(model.decoder[1:], zs[1:], zs[:-1]):
        loc, log_scale = layer.loc_log_scale(z_above)
        log_p = log_p + diag_normal_log_prob(z_below, loc, log_scale)
    return log_p


def _sample_prior_top(
    model: VAE, shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """z_L ~ p(z_L), shape ``shape + (D_L,)``, drawn with ``generator``.

    torch's distributions take no generator, so the two forms iwae's priors have are sampled by
    hand: a diagonal Normal, and a mixture of diagonal Normals (mog, VampPrior).
    """
    dist = model.prior_module()
    opts = dict(device=like.device, dtype=like.dtype)
    if isinstance(dist, MixtureSameFamily):
        probs = dist.mixture_distribution.probs.to(like.dtype)
        comp = dist.component_distribution.base_dist
        idx = torch.multinomial(probs, math.prod(shape), replacement=True, generator=generator).reshape(shape)
        loc, scale = comp.loc[idx], comp.scale[idx]
    elif isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        loc, scale = dist.base_dist.loc.expand(shape + dist.event_shape), dist.base_dist.scale
    else:
        raise ValueError(
            f"cannot sample the prior {type(model.prior_module).__name__} with a generator; "
            f"AIS knows diagonal Normal priors and mixtures of them"
        )
    return loc + scale * torch.randn(loc.shape, generator=generator, **opts)


def _sample_prior_chain(
    model: VAE, shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> list[torch.Tensor]:
    """z_L ~ p(z_L), then z_l ~ p(z_l | z_{l+1}) down to z_1 (ancestral sampling), bottom-up list."""
    zs = [_sample_prior_top(model, shape, generator, like)]
    for layer in reversed(model.decoder[1:]):
        loc, log_scale = layer.loc_log_scale(zs[0])
        zs.insert(
            0, loc + log_scale.exp() * torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        )
    return zs


class _EncoderInitial:
    """q(z | x) = q(z_1 | x) q(z_2 | z_1) ..., sampled ancestrally; log_prob is the exact chain density."""

    def __init__(self, model: VAE, x: torch.Tensor):
        self.model, self.x = model, x
        with torch.no_grad():
            self.loc, self.log_scale = model.encoder[0].loc_log_scale(x)  # (B, D_1), once per image

    def sample(self, num_chains: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(
            (num_chains,) + self.loc.shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype
        )
        zs = [self.loc + self.log_scale.exp() * eps]
        for layer in self.model.encoder[1:]:
            loc, log_scale = layer.loc_log_scale(zs[-1])
            zs.append(
                loc + log_scale.exp() * torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            )
        return torch.cat(zs, -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        zs = _split(self.model, z)
        log_q = diag_normal_log_prob(zs[0], self.loc, self.log_scale)
        for layer, z_below, z_above in zip(self.model.encoder[1:], zs[:-1], zs[1:]):
            loc, log_scale = layer.loc_log_scale(z_below)
            log_q = log_q + diag_normal_log_prob(z_above, loc, log_scale)
        return log_q


class _PriorInitial:
    """p(z) = p(z_L) p(z_{L-1} | z_L) ..., sampled ancestrally."""

    def __init__(self, model: VAE, x: torch.Tensor):
        self.model, self.x = model, x

    def sample(self, num_chains: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat(_sample_prior_chain(self.model, (num_chains, self.x.shape[0]), generator, self.x), -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return _log_prior_chain(self.model, _split(self.model, z))


class _ModelEncoderInitial:
    """q(z | x) of a model that samples and scores its own posterior (``sample_posterior``,
    ``posterior_log_prob``: the HVAE's q(z_2 | x) q(z_1 | x, z_2)); z concatenated bottom-up."""

    def __init__(self, model, x: torch.Tensor):
        self.model, self.x = model, x
        with torch.no_grad():
            self.first = model.encoder[0].loc_log_scale(x)  # q(z_2 | x), once per image

    def sample(self, num_chains: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat(self.model.sample_posterior(self.x, num_chains, generator, self.first).zs, -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.posterior_log_prob(self.x, _split(self.model, z), self.first)


def vae_target(model: VAE, x: torch.Tensor, initial: str = "encoder") -> tuple[LogDensity, InitialDistribution]:
    """``(log_joint, p_0)`` for AIS on the images ``x`` (``(B, D)``) under ``model``.

    The latent state is the whole chain concatenated bottom-up, z = (z_1, ..., z_L), shape
    ``(C, B, sum D_l)``; log_joint(z) = log p(z_L) + sum_l log p(z_l | z_{l+1}) + log p(x | z_1)
    with the model's own prior, Gaussian layers and likelihood (``model.likelihood``). ``initial`` is
    ``encoder`` (q(z | x)) or ``prior`` (p(z)).

    For the HVAE (:class:`iwae.models.HVAE`) z = (z_1, z_2) and log_joint(z) = log p(z_2) + log p(z_1 | z_2)
    + log p(x | z_1, z_2), its own :meth:`~iwae.models.HVAE.log_joint`; its ``decoder[1]`` is p(z_1 | z_2),
    so the prior chain is drawn as the VAE's; q(z | x) is q(z_2 | x) q(z_1 | x, z_2).
    """
    if initial not in ("encoder", "prior"):
        raise ValueError(f"unknown initial distribution {initial!r}; choose encoder or prior")
    coupled = hasattr(model, "posterior_log_prob")  # a posterior that is not a chain of layers (HVAE)

    def log_joint(z: torch.Tensor) -> torch.Tensor:
        zs = _split(model, z)
        if coupled:
            return model.log_joint(x, zs)[0]
        return _log_prior_chain(model, zs) + model.likelihood.log_prob(model.decoder_output(zs[0]), x)

    if initial == "prior":
        return log_joint, _PriorInitial(model, x)
    return log_joint, (_ModelEncoderInitial(model, x) if coupled else _EncoderInitial(model, x))
