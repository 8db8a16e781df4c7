"""Priors p(z) over the top stochastic layer: standard Normal, mixture of Gaussians, VampPrior.

A prior is a module whose ``forward()`` returns a ``torch.distributions.Distribution`` with event
shape ``(D,)`` and whose ``log_prob(z)`` sums over the last dimension. Parameters of a prior are
generative parameters: they train with the decoder (``VAE.decoder_parameters()``).

Each prior also says whether log p(z) depends on the encoder's parameters directly
(``depends_on_encoder``: only the VampPrior's does) and gives, with
``log_prob_with_direct(z)``, the view that DReG-type estimators need to keep that dependence
apart from the path through z (see :mod:`iwae.estimators`); ``floats_per_row()`` is the
temporary memory of a no-grad ``log_prob`` per row of z, for evaluation's memory budget.

References:
    [1] J. M. Tomczak, M. Welling. VAE with a VampPrior. AISTATS 2018 (arXiv:1705.07120).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from ..choices import PRIORS
from .gaussian import diag_normal_log_prob

__all__ = ["StandardNormalPrior", "MixturePrior", "VampPrior", "make_prior", "mixture_floats_per_row", "PRIORS"]

# Components per slice in mixture log-densities: a slice's (rows, c, D) temporaries hold at most
# about this many floats per row, whatever C is. Without slicing, C = 500 components of D = 50 build
# 25,000 floats per row, several times the rest of an evaluation's per-row memory.
_COMPONENT_FLOATS = 1024


def _slices(components: int, dim: int) -> range:
    """Start indices of the component slices, ``_COMPONENT_FLOATS // dim`` components each."""
    return range(0, components, max(1, _COMPONENT_FLOATS // dim))


def _sliced_log_prob(z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    step = max(1, _COMPONENT_FLOATS // z.shape[-1])
    if loc.shape[0] <= step:
        return diag_normal_log_prob(z.unsqueeze(-2), loc, log_scale)  # (..., C)
    # each slice written into its place at once: slices kept in a list to concatenate would stay alive
    # between the next slices' large temporaries and fragment the C heap, whose resident size then grows
    # well past the tensors' (a process-level cost the memory budget does not see)
    out = None
    for start in _slices(loc.shape[0], z.shape[-1]):
        loc_c, log_scale_c = loc[start : start + step], log_scale[start : start + step]
        piece = diag_normal_log_prob(z.unsqueeze(-2), loc_c, log_scale_c)  # (..., c)
        if out is None:
            out = piece.new_empty(piece.shape[:-1] + (loc.shape[0],))  # (..., C)
        out[..., start : start + step] = piece
        del piece
    return out


class _DiagNormalLogProb(torch.autograd.Function):
    """The per-component log-densities with a backward pass that recomputes eps slice by slice.

    Autograd of the formula would keep two ``(rows, C, D)`` tensors per call for the backward
    pass (``z - loc`` and ``eps``), 200 MB for a training step of 1,000 rows with C = 500, D = 50;
    this keeps only z, loc and log_scale. With eps_c = (z - mu_c) / sigma_c and g_c the incoming
    gradient of log N(z; mu_c, sigma_c^2):

        d/dz = -sum_c g_c eps_c / sigma_c,   d/dmu_c = g_c eps_c / sigma_c,
        d/dlog sigma_c = g_c (eps_c^2 - 1),

    the last two summed over the rows. First derivatives only (no double backward).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z, loc, log_scale)
        return _sliced_log_prob(z, loc, log_scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        z, loc, log_scale = ctx.saved_tensors
        need_z, need_loc, need_scale = ctx.needs_input_grad[:3]
        dim = z.shape[-1]
        step = max(1, _COMPONENT_FLOATS // dim)
        zf, gf = z.reshape(-1, dim), grad.reshape(-1, grad.shape[-1])  # (R, D), (R, C)
        grad_z = torch.zeros_like(zf) if need_z else None
        grad_loc, grad_scale = [], []
        for start in _slices(loc.shape[0], dim):
            inv = torch.exp(-log_scale[start : start + step])  # (c, D)
            eps = (zf.unsqueeze(-2) - loc[start : start + step]) * inv  # (R, c, D)
            g = gf[:, start : start + step].unsqueeze(-1)  # (R, c, 1)
            if need_z or need_loc:
                g_eps = (g * eps).mul_(inv)  # g_c eps_c / sigma_c
                if need_z:
                    grad_z.sub_(g_eps.sum(-2))
                if need_loc:
                    grad_loc.append(g_eps.sum(0))
            if need_scale:
                grad_scale.append((g * eps.square_().sub_(1.0)).sum(0))
        return (
            grad_z.reshape(z.shape) if need_z else None,
            torch.cat(grad_loc).reshape(loc.shape) if need_loc else None,
            torch.cat(grad_scale).reshape(log_scale.shape) if need_scale else None,
        )


def _diag_normal_log_prob(z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(z_..., loc_c, exp(log_scale_c)^2) for every component c: z ``(..., D)``, loc ``(C, D)`` -> ``(..., C)``.

    Computed in slices of ``_COMPONENT_FLOATS // D`` components, so that the ``(..., c, D)``
    temporaries stay bounded per row (see :func:`mixture_floats_per_row`); the values are those of
    the unsliced formula, bit for bit. Where a gradient is needed, the backward pass recomputes
    the slices instead of keeping them (:class:`_DiagNormalLogProb`).
    """
    if torch.is_grad_enabled() and (z.requires_grad or loc.requires_grad or log_scale.requires_grad):
        return _DiagNormalLogProb.apply(z, loc, log_scale)
    return _sliced_log_prob(z, loc, log_scale)


def mixture_floats_per_row(components: int, dim: int) -> int:
    """Upper estimate of the temporary floats one row of z needs in a no-grad mixture log_prob.

    While a slice of c components is computed, up to three ``(c, D)`` temporaries live at once
    (``z - loc``, ``eps``, ``eps^2``; three is what torch's profiler measures) with the slices
    done so far (< C) and a few ``(c,)`` sums; afterwards the ``(C,)`` log-densities live at most
    three at a time (concatenation, ``log pi`` added, logsumexp's shifted copy and exponentials).
    """
    step = min(components, max(1, _COMPONENT_FLOATS // dim))
    return max(3 * step * dim + components, 3 * components) + step


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) in ``dim`` dimensions."""

    depends_on_encoder = False

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
        # diag_normal_log_prob_from_eps(z, 0) with its log sigma term, zero, left out: this is on
        # every training step's path, and summing a (D,) zero tensor is one more kernel and graph node
        return -0.5 * z.square().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def log_prob_with_direct(self, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        """``(log_prob(z), None)``: N(0, I) does not depend on the encoder."""
        return self.log_prob(z), None

    def floats_per_row(self) -> int:
        """Temporary floats per row of z in a no-grad :meth:`log_prob`: z^2 and its sum."""
        return self.dim + 1


class MixturePrior(nn.Module):
    """p(z) = sum_c pi_c N(z; mu_c, diag(sigma_c^2)), a learnable mixture of C diagonal Gaussians.

    ``loc`` (mu, shape ``(C, D)``) starts from N(0, I) draws, ``log_var`` (log sigma^2) at 0; the
    weights pi = softmax(``logits``) are uniform, and learnable only with ``learn_weights``.

    Args:
        dim: D, latent units.
        components: C >= 1.
        learn_weights: train the mixture weights (else a buffer of zeros: pi_c = 1 / C).
    """

    depends_on_encoder = False

    def __init__(self, dim: int, components: int, learn_weights: bool = False):
        super().__init__()
        if components < 1:
            raise ValueError(f"a mixture needs components >= 1, got {components}")
        self.dim, self.components = dim, components
        self.loc = nn.Parameter(torch.randn(components, dim))
        self.log_var = nn.Parameter(torch.zeros(components, dim))
        logits = torch.zeros(components)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def forward(self) -> Distribution:
        return MixtureSameFamily(
            Categorical(logits=self.logits), Independent(Normal(self.loc, torch.exp(0.5 * self.log_var)), 1)
        )

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log sum_c exp(log pi_c + log N(z; mu_c, sigma_c^2)), for z of shape ``(..., D)`` -> ``(...)``."""
        log_pi = torch.log_softmax(self.logits, -1)  # (C,)
        return torch.logsumexp(log_pi + _diag_normal_log_prob(z, self.loc, 0.5 * self.log_var), -1)

    def log_prob_with_direct(self, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        """``(log_prob(z), None)``: the mixture's parameters are generative, not the encoder's."""
        return self.log_prob(z), None

    def floats_per_row(self) -> int:
        """Temporary floats per row of z in a no-grad :meth:`log_prob` (see :func:`mixture_floats_per_row`)."""
        return mixture_floats_per_row(self.components, self.dim)


class VampPrior(nn.Module):
    """p(z_L) = (1/C) sum_c q(z_L | u_c), the VampPrior of [1] with C learnable pseudo-inputs u_c.

    The pseudo-inputs are ``u = sigmoid(raw)`` (``raw`` of shape ``(C, input_dim)`` is the
    parameter), so they stay in (0, 1) and, unlike the hardtanh of the released code of [1], never
    lose their gradient at the boundary. :meth:`init_from_data` starts them at training images plus
    N(0, 0.05^2) noise; without it they start near 0.5.

    q(z_L | u) is the model's own encoder, handed over at construction but not registered as a
    submodule: the encoder's weights remain encoder parameters (a generative-model optimiser, e.g.
    PIWAE's decoder step, updates only the pseudo-inputs), and the state dict holds them once. With
    L > 1 stochastic layers, q(z_L | u) is the chain evaluated at the means of the layers below,
    q(z_L | E[z_{L-1} | ... E[z_1 | u]]), one Gaussian per pseudo-input (a simplification of [1]).

    The C posteriors are computed once per :meth:`log_prob` call (one batched encoder pass) and,
    in eval mode without autograd, cached until the pseudo-inputs or the encoder change.

    Args:
        dim: D, units of the top layer.
        components: C >= 1, pseudo-inputs.
        encoder: the encoder layers, ``encoder[l]`` with ``loc_log_scale(h)`` giving q(z_{l+1} | z_l).
        input_dim: size of an input x.
    """

    # log p(z) = log (1/C) sum_c q_phi(z | u_c) depends on the encoder's parameters phi directly
    depends_on_encoder = True

    def __init__(self, dim: int, components: int, encoder: nn.ModuleList, input_dim: int):
        super().__init__()
        if components < 1:
            raise ValueError(f"the VampPrior needs components >= 1 pseudo-inputs, got {components}")
        self.dim, self.components = dim, components
        self._encoder = (encoder,)  # a tuple: not a submodule, see the class docstring
        self.raw = nn.Parameter(0.01 * torch.randn(components, input_dim))  # u = sigmoid(raw) ~ 0.5
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """u_c = sigmoid(raw_c), shape ``(C, input_dim)``, in (0, 1)."""
        return torch.sigmoid(self.raw)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, noise: float = 0.05, generator: torch.Generator | None = None) -> None:
        """Sets u_c to C random rows of ``x`` (values in [0, 1]) plus N(0, noise^2), clipped to [0.01, 0.99]."""
        idx = torch.randint(x.shape[0], (self.components,), generator=generator, device=x.device)
        u = x[idx] + noise * torch.randn(x[idx].shape, generator=generator, device=x.device, dtype=x.dtype)
        u = u.clamp(0.01, 0.99).to(self.raw)
        self.raw.copy_(torch.log(u) - torch.log1p(-u))

    def train(self, mode: bool = True) -> VampPrior:
        self._cache = None
        return super().train(mode)

    def _posteriors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and log_scale of q(z_L | u_c), each ``(C, D)``."""
        encoder = self._encoder[0]
        cacheable = not self.training and not torch.is_grad_enabled()
        if cacheable:
            # in-place updates (optimiser steps, load_state_dict, .to) change a version or a pointer
            key = tuple((p.data_ptr(), p._version, p.dtype) for p in (self.raw, *encoder.parameters()))
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]
        h = self.pseudo_inputs
        for layer in encoder:
            loc, log_scale = layer.loc_log_scale(h)
            h = loc  # the mean of z_l feeds the next layer
        if cacheable:
            self._cache = (key, (loc, log_scale))
        return loc, log_scale

    def forward(self) -> Distribution:
        loc, log_scale = self._posteriors()
        mix = Categorical(logits=torch.zeros(self.components, device=loc.device, dtype=loc.dtype))
        return MixtureSameFamily(mix, Independent(Normal(loc, log_scale.exp()), 1))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log (1/C) sum_c q(z | u_c), for z of shape ``(..., D)`` -> ``(...)``."""
        loc, log_scale = self._posteriors()
        return self._log_prob(z, loc, log_scale)

    def _log_prob(self, z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(_diag_normal_log_prob(z, loc, log_scale), -1) - math.log(self.components)

    def log_prob_with_direct(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(z), log p(stop_grad(z)))`` from one encoder pass over the pseudo-inputs.

        The second has the same value; its gradient reaches the encoder only through the
        pseudo-posteriors q_phi(z | u_c), not through z: the prior's direct dependence on phi,
        which DReG-type estimators weight apart from the path through z.
        """
        loc, log_scale = self._posteriors()
        return self._log_prob(z, loc, log_scale), self._log_prob(z.detach(), loc, log_scale)

    def floats_per_row(self) -> int:
        """Temporary floats per row of z in a no-grad :meth:`log_prob` (see :func:`mixture_floats_per_row`)."""
        return mixture_floats_per_row(self.components, self.dim)


def make_prior(
    name: str,
    dim: int,
    components: int = 1,
    *,
    learn_weights: bool = False,
    encoder: nn.ModuleList | None = None,
    input_dim: int | None = None,
) -> nn.Module:
    """Builds the prior called ``name`` (one of ``PRIORS``) over ``dim`` latent units.

    Args:
        name: ``normal`` (N(0, I)), ``mog`` (:class:`MixturePrior`) or ``vamp`` (:class:`VampPrior`).
        dim: latent units of the top layer.
        components: mixture components or pseudo-inputs; must be 1 for ``normal``.
        learn_weights: learnable mixture weights, ``mog`` only.
        encoder, input_dim: the encoder layers and the input size, ``vamp`` only.

    Raises:
        ValueError: for an unknown name or a setting the prior does not take.
    """
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {', '.join(PRIORS)}")
    if name == "normal" and components != 1:
        raise ValueError(f"the normal prior has no components (got {components}); use the mog or vamp prior")
    if learn_weights and name != "mog":
        raise ValueError(f"learnable mixture weights apply to the mog prior only, not {name}")
    if name == "normal":
        return StandardNormalPrior(dim)
    if name == "mog":
        return MixturePrior(dim, components, learn_weights)
    if encoder is None or input_dim is None:
        raise ValueError("the vamp prior needs the encoder and the input size")
    return VampPrior(dim, components, encoder, input_dim)
