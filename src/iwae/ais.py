"""Annealed importance sampling (AIS) with HMC transitions, and bidirectional Monte Carlo (BDMC).

    from iwae.ais import ais_log_likelihood
    result = ais_log_likelihood(model, x_test[:50], steps=1000, chains=16, leapfrog=10)
    result.log_likelihood        # (N,) estimates of log p(x_n), in nats

AIS [1] estimates Z = int p_T(z) dz, here p_T(z) = p(x, z) (the whole latent chain: for two
stochastic layers log p(z_2) + log p(z_1 | z_2) + log p(x | z_1)), from a normalised initial
distribution p_0 (the encoder's q(z | x), sampled ancestrally, or the prior p(z)) through the
intermediate densities

    f_t(z) = p_0(z)^(1 - b_t) p_T(z)^(b_t),   0 = b_0 < b_1 < ... < b_T = 1.

Each chain starts at z_0 ~ p_0 and accumulates

    log w = sum_{t=1}^{T} (b_t - b_{t-1}) (log p_T(z_{t-1}) - log p_0(z_{t-1})),

where z_t follows z_{t-1} by an HMC transition that leaves f_t invariant. E[w] = Z, so
log (1/C) sum_c w_c is a stochastic lower bound on log p(x) (Jensen). With T = 1 no transition
runs and AIS is plain importance sampling with proposal p_0.

Run backwards (b from 1 to 0) from an exact sample of p_T / Z, the same recursion gives a weight
with E[w] = 1 / Z, whence a stochastic upper bound -log (1/C) sum_c w_c: on data simulated from
the model, where (z, x) ~ p(z) p(x | z) makes z an exact posterior sample, the forward and the
reverse bound sandwich log p(x) (BDMC, [2]); their gap bounds the error of AIS on such data [3].

HMC uses an identity mass matrix, L leapfrog steps and a per-chain step size that is multiplied
by 1.02 when the chain's acceptance rate so far exceeds the target (0.65) and by 0.98 otherwise,
clamped to [1e-4, 0.5], as in the released code of [3]. All images x chains run as one batch;
gradients are of log f_t with respect to z only (``torch.autograd.grad`` on z; the model's
parameters receive none).

The core (:func:`ais`) takes any ``log_joint(z)`` and initial distribution, so that tests can use
closed-form targets; :func:`vae_target` builds them from an :class:`iwae.models.VAE`.

References:
    [1] R. M. Neal. Annealed importance sampling. Statistics and Computing 11, 2001.
    [2] R. B. Grosse, Z. Ghahramani, R. P. Adams. Sandwiching the marginal likelihood using
        bidirectional Monte Carlo. arXiv:1511.02543, 2015.
    [3] Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. ICLR 2017.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.distributions import Independent, MixtureSameFamily, Normal

from .models.likelihood import bernoulli_log_prob
from .models.vae import VAE

__all__ = [
    "InitialDistribution", "GaussianInitial", "AISChains", "AISResult", "schedule_betas", "leapfrog",
    "hmc_step", "ais", "log_mean_exp_stats", "sandwich", "vae_target", "ais_log_likelihood", "ais_cost", "bdmc",
    "plot_bdmc", "ais_eval_name", "ais_evaluate", "DEFAULT_STEPS", "DEFAULT_CHAINS", "DEFAULT_LEAPFROG", "DEFAULT_STEP_SIZE",
]

DEFAULT_STEPS = 1000  # T, intermediate distributions (see the README's measurement)
DEFAULT_CHAINS = 16  # C, independent chains per image, as Wu et al.
DEFAULT_LEAPFROG = 10  # L, leapfrog steps per HMC transition, as Wu et al.
DEFAULT_STEP_SIZE = 0.05  # initial leapfrog step size, adapted per chain during the run
TARGET_ACCEPT = 0.65  # the acceptance rate the step sizes are adapted toward (Wu et al.)
STEP_SIZE_BOUNDS = (1e-4, 0.5)  # the adapted step size is clamped to these, as Wu et al.'s code
ADAPT_UP, ADAPT_DOWN = 1.02, 0.98
SIGMOID_DELTA = 4.0  # the sigmoid schedule's steepness, as Grosse et al. and Wu et al.
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

LogDensity = Callable[[torch.Tensor], torch.Tensor]


class InitialDistribution(Protocol):
    """p_0: a normalised distribution over z of shape ``(C, B, D)`` (chains, images, latent units)."""

    def sample(self, num_chains: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num_chains`` independent draws per image, shape ``(C, B, D)``."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_0(z), shape ``(C, B)``; differentiable in z."""


def _diag_normal_log_prob(z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(z; loc, exp(log_scale)^2) summed over the last dim."""
    eps = (z - loc) * torch.exp(-log_scale)
    return -0.5 * eps.square().sum(-1) - log_scale.sum(-1) - z.shape[-1] * _HALF_LOG_2PI


@dataclass
class GaussianInitial:
    """A diagonal Gaussian N(loc_b, diag(scale_b^2)) per image; ``loc`` and ``scale`` of shape ``(B, D)``."""

    loc: torch.Tensor
    scale: torch.Tensor

    def sample(self, num_chains: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn((num_chains,) + self.loc.shape, generator=generator, device=self.loc.device,
                          dtype=self.loc.dtype)
        return self.loc + self.scale * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return _diag_normal_log_prob(z, self.loc, self.scale.log())


# ----------------------------------------------------------------------------------------- HMC
def schedule_betas(steps: int, schedule: str = "sigmoid", *, dtype=torch.float64) -> torch.Tensor:
    """b_0 = 0 < b_1 < ... < b_T = 1, shape ``(T + 1,)``.

    linear: b_t = t / T. sigmoid (Grosse et al. 2015): s_t = sigmoid(delta (2 t / T - 1)) with
    delta = 4, rescaled to b_t = (s_t - s_0) / (s_T - s_0); it spends more steps near both ends,
    where the intermediate densities change fastest.
    """
    if steps < 1:
        raise ValueError(f"AIS needs steps >= 1, got {steps}")
    t = torch.arange(steps + 1, dtype=dtype) / steps
    if schedule == "linear":
        return t
    if schedule == "sigmoid":
        s = torch.sigmoid(SIGMOID_DELTA * (2 * t - 1))
        betas = (s - s[0]) / (s[-1] - s[0])
        betas[0], betas[-1] = 0.0, 1.0  # exact ends, whatever the rounding
        return betas
    raise ValueError(f"unknown schedule {schedule!r}; choose sigmoid or linear")


def leapfrog(z: torch.Tensor, p: torch.Tensor, grad: torch.Tensor, grad_fn: Callable, step_size: torch.Tensor,
             steps: int) -> tuple[torch.Tensor, torch.Tensor, object]:
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


def hmc_step(z: torch.Tensor, log_f: torch.Tensor, grad: torch.Tensor, grad_fn: Callable,
             step_size: torch.Tensor, leapfrog_steps: int, generator: torch.Generator | None = None,
             cached: object = None) -> tuple[torch.Tensor, object, torch.Tensor]:
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


@dataclass
class AISChains:
    """What :func:`ais` returns for C chains of B images (each tensor ``(C, B)``)."""

    log_weights: torch.Tensor  # log w_c (forward: E[w] = Z; reverse: E[w] = 1 / Z)
    acceptance: torch.Tensor  # the chain's fraction of accepted HMC transitions (NaN for T = 1)
    step_sizes: torch.Tensor  # the chain's final leapfrog step size
    gradient_evaluations: int  # calls of the target's gradient per chain


def ais(
    log_joint: LogDensity,
    initial: InitialDistribution,
    *,
    chains: int,
    steps: int,
    leapfrog_steps: int = DEFAULT_LEAPFROG,
    schedule: str = "sigmoid",
    step_size: float = DEFAULT_STEP_SIZE,
    target_accept: float = TARGET_ACCEPT,
    adapt: bool = True,
    generator: torch.Generator | None = None,
    reverse_from: torch.Tensor | None = None,
    progress: bool = False,
) -> AISChains:
    """AIS from ``initial`` (p_0) to ``log_joint`` (p_T, unnormalised) along ``steps`` annealing steps.

    Forward (``reverse_from`` None): z_0 ~ p_0 (the generator's first draws), then for t = 1..T
    log w += (b_t - b_{t-1}) (log p_T - log p_0)(z_{t-1}) and, for t < T, an HMC transition that
    leaves f_t invariant (the one after the last increment would not change w).
    Reverse: the chains start at ``reverse_from`` (``(C, B, D)``, exact samples of p_T / Z) and run
    the schedule from b = 1 to b = 0, so that E[w] = 1 / Z.

    Args:
        log_joint: ``z (C, B, D) -> (C, B)``, log p_T(z) up to its normaliser, differentiable in z.
        initial: p_0 (see :class:`InitialDistribution`).
        chains, steps, leapfrog_steps: C, T and L.
        schedule: ``sigmoid`` or ``linear`` (:func:`schedule_betas`).
        step_size: the initial leapfrog step size of every chain.
        target_accept: the acceptance rate the step sizes are adapted toward.
        adapt: adapt the step sizes (x1.02 / x0.98 per transition, clamped to ``STEP_SIZE_BOUNDS``).
        generator: random numbers for the initial draws, the momenta and the Metropolis tests.
        progress: a tqdm bar over the annealing steps.
    """
    if chains < 1 or leapfrog_steps < 1:
        raise ValueError(f"AIS needs chains >= 1 and leapfrog steps >= 1, got {chains} and {leapfrog_steps}")
    if not step_size > 0:
        raise ValueError(f"the leapfrog step size must be > 0, got {step_size}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
    betas = schedule_betas(steps, schedule).tolist()
    if reverse_from is not None:
        betas = betas[::-1]
        z = reverse_from.detach()
        if z.shape[0] != chains:
            raise ValueError(f"reverse_from must hold {chains} chains in its first dim, got shape {tuple(z.shape)}")
    else:
        with torch.no_grad():
            z = initial.sample(chains, generator).detach()

    def parts(z: torch.Tensor):
        """(log p_0, log p_T) at z and their gradients, each from its own graph."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lp0 = initial.log_prob(z)
            (g0,) = torch.autograd.grad(lp0.sum(), z)
            lpt = log_joint(z)
            (gt,) = torch.autograd.grad(lpt.sum(), z)
        return lp0.detach(), lpt.detach(), g0, gt

    lp0, lpt, g0, gt = parts(z)
    evaluations = 1
    log_w = torch.zeros(lpt.shape, dtype=torch.float64, device=z.device)
    eps = torch.full(lpt.shape + (1,), float(step_size), dtype=z.dtype, device=z.device)
    accepted_count = torch.zeros(lpt.shape, dtype=torch.float64, device=z.device)
    transitions = 0
    from tqdm.auto import tqdm

    for t in tqdm(range(1, steps + 1), disable=None if progress else True, leave=False, unit="step", desc="AIS"):
        b_prev, b = betas[t - 1], betas[t]
        log_w += (b - b_prev) * (lpt - lp0).double()
        if t == steps:
            break

        def grad_fn(z_new, b=b):
            lp0_n, lpt_n, g0_n, gt_n = parts(z_new)
            grad_n = (1 - b) * g0_n + b * gt_n
            return grad_n, ((1 - b) * lp0_n + b * lpt_n, grad_n, lp0_n, lpt_n, g0_n, gt_n)

        log_f = (1 - b) * lp0 + b * lpt
        grad = (1 - b) * g0 + b * gt
        z, (_, _, lp0, lpt, g0, gt), accepted = hmc_step(
            z, log_f, grad, grad_fn, eps, leapfrog_steps, generator, cached=(log_f, grad, lp0, lpt, g0, gt))
        evaluations += leapfrog_steps
        transitions += 1
        accepted_count += accepted.double()
        if adapt:
            up = (accepted_count / transitions > target_accept).unsqueeze(-1)
            eps = torch.where(up, eps * ADAPT_UP, eps * ADAPT_DOWN).clamp(*STEP_SIZE_BOUNDS)
    acceptance = accepted_count / transitions if transitions else torch.full_like(accepted_count, math.nan)
    return AISChains(log_w, acceptance, eps.squeeze(-1), evaluations)


def log_mean_exp_stats(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column of ``log_w`` (``(C, B)``): the estimate, its standard error and the effective sample size.

        log p-hat = logsumexp_c(log w_c) - log C
        ESS = (sum_c w_c)^2 / sum_c w_c^2 = 1 / sum_c w~_c^2,  w~ = w / sum w
        s.e.(log p-hat) = s.e.(p-hat) / p-hat = sqrt((C / ESS - 1) / (C - 1))

    The standard error is the delta method applied to the chains' own weights: the sample standard
    deviation of w_c (ddof 1) over sqrt(C) p-hat, written with ESS so that it stays in log space.
    NaN for C = 1.
    """
    log_w = log_w.double()
    c = log_w.shape[0]
    estimate = torch.logsumexp(log_w, 0) - math.log(c)
    log_norm = torch.log_softmax(log_w, 0)
    ess = torch.exp(-torch.logsumexp(2 * log_norm, 0))
    if c < 2:
        return estimate, torch.full_like(estimate, math.nan), ess
    stderr = torch.sqrt(((c / ess - 1) / (c - 1)).clamp_min(0))
    return estimate, stderr, ess


# ------------------------------------------------------------------------------- the iwae VAE
def _split(model: VAE, z: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(z, list(model.config.latent_dims), dim=-1))


def _log_prior_chain(model: VAE, zs: Sequence[torch.Tensor]) -> torch.Tensor:
    """log p(z_L) + sum_{l<L} log p(z_l | z_{l+1})."""
    log_p = model.prior_module.log_prob(zs[-1])
    for layer, z_above, z_below in zip(model.decoder[1:], zs[1:], zs[:-1]):
        loc, log_scale = layer.loc_log_scale(z_above)
        log_p = log_p + _diag_normal_log_prob(z_below, loc, log_scale)
    return log_p


def _sample_prior_top(model: VAE, shape: tuple[int, ...], generator: torch.Generator | None,
                      like: torch.Tensor) -> torch.Tensor:
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
        raise ValueError(f"cannot sample the prior {type(model.prior_module).__name__} with a generator; "
                         f"AIS knows diagonal Normal priors and mixtures of them")
    return loc + scale * torch.randn(loc.shape, generator=generator, **opts)


def _sample_prior_chain(model: VAE, shape: tuple[int, ...], generator: torch.Generator | None,
                        like: torch.Tensor) -> list[torch.Tensor]:
    """z_L ~ p(z_L), then z_l ~ p(z_l | z_{l+1}) down to z_1 (ancestral sampling), bottom-up list."""
    zs = [_sample_prior_top(model, shape, generator, like)]
    for layer in reversed(model.decoder[1:]):
        loc, log_scale = layer.loc_log_scale(zs[0])
        zs.insert(0, loc + log_scale.exp() * torch.randn(loc.shape, generator=generator, device=loc.device,
                                                         dtype=loc.dtype))
    return zs


class _EncoderInitial:
    """q(z | x) = q(z_1 | x) q(z_2 | z_1) ..., sampled ancestrally; log_prob is the exact chain density."""

    def __init__(self, model: VAE, x: torch.Tensor):
        self.model, self.x = model, x
        with torch.no_grad():
            self.loc, self.log_scale = model.encoder[0].loc_log_scale(x)  # (B, D_1), once per image

    def sample(self, num_chains: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn((num_chains,) + self.loc.shape, generator=generator, device=self.loc.device,
                          dtype=self.loc.dtype)
        zs = [self.loc + self.log_scale.exp() * eps]
        for layer in self.model.encoder[1:]:
            loc, log_scale = layer.loc_log_scale(zs[-1])
            zs.append(loc + log_scale.exp() * torch.randn(loc.shape, generator=generator, device=loc.device,
                                                          dtype=loc.dtype))
        return torch.cat(zs, -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        zs = _split(self.model, z)
        log_q = _diag_normal_log_prob(zs[0], self.loc, self.log_scale)
        for layer, z_below, z_above in zip(self.model.encoder[1:], zs[:-1], zs[1:]):
            loc, log_scale = layer.loc_log_scale(z_below)
            log_q = log_q + _diag_normal_log_prob(z_above, loc, log_scale)
        return log_q


class _PriorInitial:
    """p(z) = p(z_L) p(z_{L-1} | z_L) ..., sampled ancestrally."""

    def __init__(self, model: VAE, x: torch.Tensor):
        self.model, self.x = model, x

    def sample(self, num_chains: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat(_sample_prior_chain(self.model, (num_chains, self.x.shape[0]), generator, self.x), -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return _log_prior_chain(self.model, _split(self.model, z))


def vae_target(model: VAE, x: torch.Tensor, initial: str = "encoder") -> tuple[LogDensity, InitialDistribution]:
    """``(log_joint, p_0)`` for AIS on the images ``x`` (``(B, D)``) under ``model``.

    The latent state is the whole chain concatenated bottom-up, z = (z_1, ..., z_L), shape
    ``(C, B, sum D_l)``; log_joint(z) = log p(z_L) + sum_l log p(z_l | z_{l+1}) + log p(x | z_1)
    with the model's own prior, Gaussian layers and Bernoulli likelihood. ``initial`` is
    ``encoder`` (q(z | x)) or ``prior`` (p(z)).
    """
    if initial not in ("encoder", "prior"):
        raise ValueError(f"unknown initial distribution {initial!r}; choose encoder or prior")

    def log_joint(z: torch.Tensor) -> torch.Tensor:
        zs = _split(model, z)
        return _log_prior_chain(model, zs) + bernoulli_log_prob(model.decoder[0], zs[0], x)

    return log_joint, (_EncoderInitial(model, x) if initial == "encoder" else _PriorInitial(model, x))


# ------------------------------------------------------------------------------ on a model
@contextlib.contextmanager
def _frozen(model: VAE):
    """The model's parameters without requires_grad for the block (restored after): AIS differentiates
    with respect to z only, and autograd then keeps no tensors for weight gradients."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@dataclass
class AISResult:
    """AIS estimates for N images (tensors on the CPU, float64)."""

    log_likelihood: torch.Tensor  # (N,) log p-hat(x_n) = logsumexp_c log w_c - log C
    stderr: torch.Tensor  # (N,) delta-method standard error from the chains' weights (log_mean_exp_stats)
    ess: torch.Tensor  # (N,) effective sample size (sum w)^2 / sum w^2, between 1 and C
    acceptance: torch.Tensor  # (N,) mean HMC acceptance rate over the image's chains
    step_sizes: torch.Tensor  # (N, C) final leapfrog step sizes
    seconds: float
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The dataset-level numbers: mean NLL with its standard error over images, and the diagnostics."""
        nll = -self.log_likelihood
        n = len(nll)
        return {
            "nll": nll.mean().item(),
            "nll_stderr": nll.std().item() / math.sqrt(n) if n > 1 else math.nan,
            "n_test": n,
            "mean_chain_stderr": self.stderr.mean().item(),
            "mean_ess": self.ess.mean().item(),
            "acceptance": self.acceptance.mean().item(),
            "mean_step_size": self.step_sizes.mean().item(),
            "seconds": self.seconds,
            "images_per_s": n / self.seconds if self.seconds > 0 else math.inf,
            **self.settings,
        }


def _ais_bytes_per_row(model: VAE) -> int:
    """Upper estimate of one chain's memory for one gradient of log p(x, z): the no-grad pass's
    (evaluate's estimate) three times over (the activations autograd keeps, the backward pass's
    gradients), plus the HMC state (z, p, the proposal and the cached gradients, about 8 D floats)."""
    from .evaluate import _bytes_per_row

    element_size = next(model.parameters()).element_size()
    return 3 * _bytes_per_row(model) + 8 * sum(model.config.latent_dims) * element_size


def _images_per_chunk(model: VAE, chains: int, n: int, memory_budget: int, device: torch.device) -> int:
    from .evaluate import CPU_ROWS_PER_CALL

    per_image = chains * _ais_bytes_per_row(model)
    if memory_budget < per_image:
        raise ValueError(f"memory_budget of {memory_budget} bytes is below one image's {chains} chains "
                         f"({per_image} bytes); raise it or use fewer chains")
    images = memory_budget // per_image
    if device.type == "cpu":  # as evaluate: calls of a few thousand rows stay in cache
        images = min(images, max(1, CPU_ROWS_PER_CALL // chains))
    return max(1, min(n, images))


def ais_log_likelihood(
    model: VAE,
    x: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    schedule: str = "sigmoid",
    initial: str = "encoder",
    step_size: float = DEFAULT_STEP_SIZE,
    target_accept: float = TARGET_ACCEPT,
    memory_budget: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> AISResult:
    """AIS estimates of log p(x_n) for each row of ``x`` (``(N, D)``, on the model's device).

    Images are processed in chunks of ``images x chains`` rows that fit ``memory_budget`` bytes
    (default: evaluate's, 1 GiB); the chunking does not change the estimator, only which random
    numbers each image gets. See the module docstring for the algorithm.
    """
    from .evaluate import DEFAULT_MEMORY_BUDGET

    memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if x.dim() != 2 or x.shape[1] != model.config.input_dim:
        raise ValueError(f"x must have shape (N, {model.config.input_dim}), got {tuple(x.shape)}")
    schedule_betas(steps, schedule)  # check the settings before any work
    if initial not in ("encoder", "prior"):
        raise ValueError(f"unknown initial distribution {initial!r}; choose encoder or prior")
    n = x.shape[0]
    images = _images_per_chunk(model, chains, n, memory_budget, x.device)
    out = {name: [] for name in ("log_likelihood", "stderr", "ess", "acceptance", "step_sizes")}
    t0 = time.perf_counter()
    with _frozen(model):
        for i in range(0, n, images):
            log_joint, p0 = vae_target(model, x[i: i + images], initial)
            run = ais(log_joint, p0, chains=chains, steps=steps, leapfrog_steps=leapfrog, schedule=schedule,
                      step_size=step_size, target_accept=target_accept, generator=generator, progress=progress)
            estimate, stderr, ess = log_mean_exp_stats(run.log_weights)
            for name, value in zip(out, (estimate, stderr, ess, run.acceptance.mean(0), run.step_sizes.t())):
                out[name].append(value.detach().double().cpu())
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - t0
    settings = dict(method="ais", steps=steps, chains=chains, leapfrog=leapfrog, schedule=schedule,
                    initial=initial, step_size=step_size, target_accept=target_accept,
                    chunking={"images": images, "memory_budget": memory_budget})
    return AISResult(**{k: torch.cat(v) for k, v in out.items()}, seconds=seconds, settings=settings)


def ais_cost(
    model: VAE,
    x: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    timing_steps: int = 3,
    memory_budget: int | None = None,
    k: int = 5000,
) -> dict:
    """What AIS on the images ``x`` will cost, before it runs (the CLI prints it).

    By formula: a chain makes (T - 1) L + 1 forward-and-backward passes of log p(x, z), so an image
    costs C ((T - 1) L + 1) of them where L_k costs k forward passes (``passes_per_image`` and
    ``l_k_passes_per_image``). Measured: a timing pass of ``timing_steps`` annealing steps on one
    chunk of at most that many images, scaled to T (``seconds_per_image``, ``seconds``).
    """
    from .evaluate import DEFAULT_MEMORY_BUDGET

    memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    n = x.shape[0]
    images = _images_per_chunk(model, chains, n, memory_budget, x.device)
    timing_steps = max(2, min(timing_steps, steps))
    sample = x[:images]
    generator = torch.Generator(device=x.device).manual_seed(0)
    result = ais_log_likelihood(model, sample, steps=timing_steps, chains=chains, leapfrog=leapfrog,
                                memory_budget=memory_budget, generator=generator)
    passes = chains * ((steps - 1) * leapfrog + 1)
    timed_passes = chains * ((timing_steps - 1) * leapfrog + 1)
    per_image = result.seconds / len(sample) * passes / timed_passes
    return {"passes_per_image": passes, "l_k_passes_per_image": k, "seconds_per_image": per_image,
            "seconds": per_image * n, "images": n}


# ------------------------------------------------------------------------------------- BDMC
@torch.no_grad()
def _simulate(model: VAE, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, x) ~ p(z) p(x | z): z the whole chain ``(n, sum D_l)``, x a Bernoulli sample ``(n, D)``."""
    like = next(model.parameters())
    zs = _sample_prior_chain(model, (n,), generator, like)
    probs = torch.sigmoid(model.decoder[0].logits(zs[0]))
    x = torch.bernoulli(probs, generator=generator)
    return torch.cat(zs, -1), x


def sandwich(
    log_joint: LogDensity,
    initial: InitialDistribution,
    z_exact: torch.Tensor,
    *,
    chains: int,
    steps: int,
    **ais_options,
) -> tuple[torch.Tensor, AISChains, torch.Tensor, AISChains]:
    """BDMC's two bounds per image: ``(lower, forward chains, upper, reverse chains)``.

    lower = logsumexp_c log w_c - log C of forward AIS from ``initial``;
    upper = -(logsumexp_c log w'_c - log C) of reverse AIS whose C chains all start at the image's
    exact posterior sample ``z_exact`` (``(B, D)``). E[lower] <= log Z <= E[upper].
    """
    fwd = ais(log_joint, initial, chains=chains, steps=steps, **ais_options)
    start = z_exact.detach().expand(chains, *z_exact.shape).clone()
    rev = ais(log_joint, initial, chains=chains, steps=steps, reverse_from=start, **ais_options)
    return log_mean_exp_stats(fwd.log_weights)[0], fwd, -log_mean_exp_stats(rev.log_weights)[0], rev


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
        se = (lambda v: v.std().item() / math.sqrt(n) if n > 1 else math.nan)
        for steps in steps_list:
            t0 = time.perf_counter()
            log_joint, p0 = vae_target(model, x, initial)
            lower, fwd, upper, rev = sandwich(
                log_joint, p0, z_true, chains=chains, steps=steps, leapfrog_steps=leapfrog, schedule=schedule,
                step_size=step_size, generator=generator, progress=progress)
            lower, upper = lower.cpu(), upper.cpu()
            rows.append({"steps": steps, "lower": lower.mean().item(), "upper": upper.mean().item(),
                         "gap": (upper - lower).mean().item(), "lower_stderr": se(lower),
                         "upper_stderr": se(upper), "gap_stderr": se(upper - lower),
                         "acceptance": [fwd.acceptance.mean().item(), rev.acceptance.mean().item()],
                         "seconds": time.perf_counter() - t0, "n": n, "chains": chains, "leapfrog": leapfrog,
                         "initial": initial})
    return rows


def plot_bdmc(rows: Sequence[dict], path: str | None = None, *, ax=None):
    """The BDMC sandwich against T: the lower (forward AIS) and upper (reverse AIS) bounds, log-scale T.

    Returns the matplotlib figure; saves it to ``path`` when given.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (as iwae.plots)
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.5, 3.2))
    steps = [r["steps"] for r in rows]
    ax.plot(steps, [r["upper"] for r in rows], "v-", label="upper (reverse AIS)")
    ax.plot(steps, [r["lower"] for r in rows], "^-", label="lower (forward AIS)")
    ax.fill_between(steps, [r["lower"] for r in rows], [r["upper"] for r in rows], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("annealing steps T")
    ax.set_ylabel("log p(x), nats (mean over simulated images)")
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


# ---------------------------------------------------------------------- on a run directory
def ais_eval_name(steps: int, chains: int, leapfrog: int, seed: int, test_subset: int | None = None) -> str:
    """File stem of an AIS evaluation in a run directory, beside evaluate's ``eval_k...`` files:
    ``ais_T{T}_C{C}_L{L}[_n{N}]_seed{S}`` (the JSON and the per-image ``.npy`` share it)."""
    return f"ais_T{steps}_C{chains}_L{leapfrog}" + (f"_n{test_subset}" if test_subset is not None else "") + \
        f"_seed{seed}"


def ais_evaluate(
    run_dir,
    *,
    steps: int = DEFAULT_STEPS,
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    schedule: str = "sigmoid",
    initial: str = "encoder",
    test_subset: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    memory_budget: int | None = None,
    data_dir: str | None = None,
    progress: bool = False,
    save: bool = True,
) -> dict:
    """Test NLL of a run by AIS, as :func:`iwae.evaluate.evaluate` by L_k (the same keys where they apply).

    Measures the weights of the run's last completed epoch on the first ``test_subset`` test images
    and, with ``save``, writes ``RUN_DIR/{ais_eval_name(...)}.json`` and the per-image log p-hat to
    the ``.npy`` beside it (float64, test-set order; the ``.npy`` first, both atomically), so that
    :func:`iwae.compare.compare_runs` can pair them (``evaluation=`` that stem).
    """
    import json
    from pathlib import Path

    import numpy as np

    from . import data as data_module
    from .checkpoint import atomic_write
    from .errors import ConfigError
    from .evaluate import load_trained
    from .runtime import check_device, describe
    from .train import TrainConfig

    for name, value in (("steps", steps), ("chains", chains), ("leapfrog", leapfrog)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}", [name])
    if test_subset is not None and test_subset < 1:
        raise ConfigError(f"test_subset must be >= 1, got {test_subset}", ["test_subset"])
    schedule_betas(steps, schedule)
    if initial not in ("encoder", "prior"):
        raise ConfigError(f"unknown initial distribution {initial!r}; choose encoder or prior", ["initial"])
    check_device(device)
    model, weights = load_trained(run_dir, device)
    config = TrainConfig.from_yaml(Path(run_dir) / "config.yaml")
    splits = data_module.load_dataset(config.dataset, data_dir or config.data_dir)
    dev = next(model.parameters()).device
    x = splits.first("test", test_subset, "test_subset").to(dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    result = ais_log_likelihood(model, x, steps=steps, chains=chains, leapfrog=leapfrog, schedule=schedule,
                                initial=initial, memory_budget=memory_budget, generator=generator, progress=progress)
    name = ais_eval_name(steps, chains, leapfrog, seed, test_subset)
    out = {**result.summary(), "seed": seed,
           "test_images": {"dataset": splits.name, "split": "test", "first": len(x), "of": splits.test.shape[0]},
           "model": {**weights, "run_dir": str(run_dir), "epochs_planned": config.total_epochs},
           "runtime": describe(dev), "files": {"json": f"{name}.json", "bounds": f"{name}.npy"} if save else None}
    if save:
        with atomic_write(Path(run_dir) / f"{name}.npy", "wb") as f:
            np.save(f, result.log_likelihood.numpy())
        with atomic_write(Path(run_dir) / f"{name}.json") as f:
            json.dump(out, f, indent=1)
    return out
