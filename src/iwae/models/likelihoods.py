"""Observation models p(x | z_1) as small units: Bernoulli, Gaussian, discretized logistic.

The decoder maps z_1 to ``raw`` parameters, shape ``(..., P * D)`` with ``P = params_per_pixel``
and a parameter-major layout (``raw[..., p*D:(p+1)*D]`` is parameter p of every pixel); a
likelihood turns them into log p(x | z_1) summed over the D pixels, a mean and samples. The model
asks its likelihood and knows no names:

    bernoulli    P = 1: logits l;                 log p = sum_d x_d l_d - softplus(l_d)  (the fused kernel)
    gaussian     P = 1 (sigma fixed): mu;         log p = sum_d log N(x_d; mu_d, sigma^2)
                 P = 2 (sigma learned): mu and a log-variance head v, bounded to
                 [LOG_VAR_MIN, LOG_VAR_MAX] by hardtanh as in the released VampPrior code [1], so
                 that sigma >= exp(LOG_VAR_MIN / 2) ~ 0.105 and the density cannot collapse onto a pixel
    logistic256  P = 2: mu and log s (hardtanh to [LOG_SCALE_MIN, LOG_SCALE_MAX]); the mass of the
                 8-bit value x = k/255 under a logistic(mu, s) discretized into 256 bins of width
                 1/255 centred on the grid, edge bins open [1, 2]:

                   P(k) = sigmoid((x + 1/510 - mu)/s) - sigmoid((x - 1/510 - mu)/s),   0 < k < 255
                   P(0) = sigmoid((1/510 - mu)/s),   P(255) = 1 - sigmoid((1 - 1/510 - mu)/s)

A Gaussian is a *density* on the pixel values: its NLL on data in [0, 1] is not comparable with a
discrete likelihood's (Bernoulli, logistic256), whose NLL is a code length, unless the data are
dequantised, x = (k + u)/256 with u ~ U(0, 1); then the discrete-equivalent NLL is the density's
plus D log 256 (:func:`discrete_nll`). :func:`bits_per_dim` converts nats to bits per dimension.

References:
    [1] J. M. Tomczak, M. Welling. VAE with a VampPrior. AISTATS 2018 (code: jmtomczak/vae_vampprior).
    [2] T. Salimans, A. Karpathy, X. Chen, D. P. Kingma. PixelCNN++. ICLR 2017.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import LIKELIHOODS
from .gaussian import diag_normal_log_prob
from .likelihood import bernoulli_log_prob_from_logits

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "Bernoulli",
    "Gaussian",
    "DiscretizedLogistic256",
    "make_likelihood",
    "bits_per_dim",
    "discrete_nll",
    "on_8bit_grid",
]


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Bits per dimension of a negative log-likelihood in nats: nll / (D ln 2)."""
    return nll_nats / (dims * math.log(2))


def discrete_nll(nll_nats: float, dims: int, dequantised: bool = False) -> float:
    """The NLL of the 8-bit values that a likelihood's NLL stands for: a discrete likelihood's as it
    is; a density's on data dequantised as (k + u)/256 plus D ln 256 (the density times the bin
    volume 256^-D bounds the mass of the bin from below, in expectation over u)."""
    return nll_nats + dims * math.log(256) if dequantised else nll_nats


def on_8bit_grid(x: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether every value of ``x`` is k/255 for an integer k in [0, 255] (within ``atol`` of a grid point)."""
    k = x * 255
    return bool(((k - k.round()).abs() <= atol * 255).all() and (x >= 0).all() and (x <= 1).all())


class Likelihood(nn.Module):
    """The contract of an observation model p(x | z_1) given the decoder's raw output.

    Attributes:
        params_per_pixel: P, the decoder's raw output has P * D entries per sample.
        discrete: whether log_prob is a log-mass (a code length) rather than a log-density.
        floats_per_pixel: temporary floats per pixel of a no-grad log_prob, for evaluation's memory budget.
    """

    name = ""
    params_per_pixel = 1
    discrete = False
    floats_per_pixel = 2

    def __init__(self, input_dim: int):
        super().__init__()
        self.input_dim = input_dim

    def split(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The P parameters of every pixel, each ``(..., D)``, from the parameter-major ``(..., P * D)``."""
        if raw.shape[-1] != self.params_per_pixel * self.input_dim:
            raise ValueError(
                f"the {self.name} likelihood needs {self.params_per_pixel} x {self.input_dim} decoder "
                f"outputs per sample, got {raw.shape[-1]}"
            )
        return raw.split(self.input_dim, dim=-1)

    def log_prob(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over pixels: raw ``(..., P * D)``, x ``(B, D)`` broadcast -> ``(...)``."""
        raise NotImplementedError

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        """E[x | z], shape ``(..., D)``."""
        raise NotImplementedError

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x | z), shape ``(..., D)``."""
        raise NotImplementedError

    def init_output_bias(self, bias: torch.Tensor, train_mean: torch.Tensor) -> None:
        """Sets the decoder's output bias ``(P * D,)`` in place so that p(x | z) starts near the data."""
        raise NotImplementedError

    def check_data(self, x: torch.Tensor, what: str = "the data") -> None:
        """Raises ValueError where ``x`` is not in this likelihood's support (default: [0, 1])."""
        if not bool(((x >= 0) & (x <= 1)).all()):
            raise ValueError(f"{what} has values outside [0, 1]; the {self.name} likelihood models pixels in [0, 1]")

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}"


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with logits ``raw``, log p by the fused kernel of :mod:`.likelihood`."""

    name = "bernoulli"
    discrete = True

    def log_prob(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if raw.dim() < x.dim() or raw.shape[-x.dim() :] != x.shape:  # the kernel broadcasts x, not the logits
            raw = raw.expand(torch.broadcast_shapes(raw.shape, x.shape))
        return bernoulli_log_prob_from_logits(raw, x)

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw)

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(raw), generator=generator)

    @torch.no_grad()
    def init_output_bias(self, bias: torch.Tensor, train_mean: torch.Tensor) -> None:
        """logit(clip(mean training pixel, 1e-3, 1 - 1e-3)), as Burda et al.'s code."""
        p = train_mean.to(bias).clamp(1e-3, 1 - 1e-3)
        bias.copy_(torch.log(p) - torch.log1p(-p))

    def check_data(self, x: torch.Tensor, what: str = "the data") -> None:
        """Binary pixels only: on x in (0, 1), x l - softplus(l) is neither a probability nor a density,
        so its NLL would be reported as a code length that means nothing."""
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                f"{what} is not binary (it has values other than 0 and 1), and the bernoulli likelihood is a "
                f"probability of binary pixels only; set binarize dynamic or static, or use "
                f"likelihood logistic256 (8-bit grey levels) or gaussian"
            )


def _pixel_variance(train_mean: torch.Tensor) -> torch.Tensor:
    """m (1 - m), the largest variance a pixel in [0, 1] with mean m can have: a starting scale."""
    return train_mean * (1 - train_mean)


class Gaussian(Likelihood):
    """N(x_d; mu_d, sigma_d^2) per pixel: sigma fixed (``sigma``), or from a bounded log-variance head.

    Args:
        input_dim: D.
        sigma: the fixed standard deviation (> 0), or None for the learned head (P = 2).
    """

    name = "gaussian"
    LOG_VAR_MIN, LOG_VAR_MAX = -4.5, 0.0  # the hardtanh bounds of the VampPrior code: 0.105 <= sigma <= 1

    def __init__(self, input_dim: int, sigma: float | None = None):
        super().__init__(input_dim)
        if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma}")
        self.sigma = sigma
        self.params_per_pixel = 1 if sigma is not None else 2
        self.floats_per_pixel = 3 if sigma is not None else 6

    def loc_log_scale(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and log sigma, each ``(..., D)`` (log sigma a 0-dim tensor when fixed)."""
        if self.sigma is not None:
            (loc,) = self.split(raw)
            return loc, raw.new_tensor(math.log(self.sigma))
        loc, log_var = self.split(raw)
        return loc, 0.5 * F.hardtanh(log_var, self.LOG_VAR_MIN, self.LOG_VAR_MAX)

    def log_prob(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc, log_scale = self.loc_log_scale(raw)
        if log_scale.dim() == 0:
            log_scale = log_scale.expand(loc.shape[-1:])
        return diag_normal_log_prob(x, loc, log_scale)

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        return self.split(raw)[0]

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        loc, log_scale = self.loc_log_scale(raw)
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + log_scale.exp() * eps

    @torch.no_grad()
    def init_output_bias(self, bias: torch.Tensor, train_mean: torch.Tensor) -> None:
        """mu at the mean training pixel; a learned log-variance at log m (1 - m), within its bounds."""
        m = train_mean.to(bias)
        d = self.input_dim
        bias[:d].copy_(m)
        if self.sigma is None:
            bias[d:].copy_(_pixel_variance(m).clamp_min(1e-12).log().clamp(self.LOG_VAR_MIN, self.LOG_VAR_MAX))

    def check_data(self, x: torch.Tensor, what: str = "the data") -> None:
        """A density on the real line: any finite values (dequantised data, or data outside [0, 1])."""
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} has values that are not finite numbers")

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, sigma={'learned' if self.sigma is None else self.sigma}"


class DiscretizedLogistic256(Likelihood):
    """The discretized logistic over the 256 values k/255 of 8-bit pixels (module docstring), edge bins open.

    With a = (x + 1/510 - mu)/s and b = (x - 1/510 - mu)/s, a - b = 1/(255 s) > 0 and

        log(sigmoid(a) - sigmoid(b)) = -softplus(-a) - softplus(b) + log(1 - exp(-(a - b))),

    exact, and stable wherever the two CDFs round to the same float (deep in a tail, where the
    direct difference underflows and PixelCNN++ falls back to the mid-bin density): every term is
    a softplus or a log1p of a number away from 0, so no fallback is needed. The edge bins are
    log sigmoid(a) = -softplus(-a) (k = 0) and log(1 - sigmoid(b)) = -softplus(b) (k = 255).
    """

    name = "logistic256"
    params_per_pixel = 2
    discrete = True
    floats_per_pixel = 8
    # PixelCNN++'s lower clamp, log s >= -7 for data in [-1, 1], is -7 - ln 2 on [0, 1]: one bin can then
    # hold up to 97% of the mass (a discrete likelihood cannot collapse; the bound keeps 1/s finite);
    # s <= 1, the range of the data
    LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0 - math.log(2), 0.0
    HALF_BIN = 1 / 510

    def loc_log_scale(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and log s, each ``(..., D)``."""
        loc, log_scale = self.split(raw)
        return loc, F.hardtanh(log_scale, self.LOG_SCALE_MIN, self.LOG_SCALE_MAX)

    def log_mass(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log P(x_d) per pixel, shape ``(..., D)``."""
        loc, log_scale = self.loc_log_scale(raw)
        inv_s = torch.exp(-log_scale)
        centred = x - loc
        a = (centred + self.HALF_BIN) * inv_s  # upper edge of the bin
        b = (centred - self.HALF_BIN) * inv_s  # lower edge
        inner = -F.softplus(-a) - F.softplus(b) + torch.log(-torch.expm1(-inv_s / 255))
        # the edge bins, told apart by their value (x = 0 and x = 1 within half a bin)
        low, high = x < self.HALF_BIN, x > 1 - self.HALF_BIN
        return torch.where(low, -F.softplus(-a), torch.where(high, -F.softplus(b), inner))

    def log_prob(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.log_mass(raw, x).sum(-1)

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        """E[x] = sum_k (k/255) P(k) = (1/255) sum_{k=1}^{255} P(x >= k/255)
        = (1/255) sum_k sigmoid((mu - (k/255 - 1/510))/s), accumulated over k (memory of one ``(..., D)`` tensor)."""
        loc, log_scale = self.loc_log_scale(raw)
        inv_s = torch.exp(-log_scale)
        total = torch.zeros_like(loc)
        for k in range(1, 256):
            total += torch.sigmoid((loc - (k / 255 - self.HALF_BIN)) * inv_s)
        return total / 255

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A logistic draw mu + s log(u / (1 - u)) rounded to the nearest k/255 and clipped to [0, 1]:
        exactly the discretized distribution with open edge bins."""
        loc, log_scale = self.loc_log_scale(raw)
        u = torch.rand(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype).clamp(1e-7, 1 - 1e-7)
        y = loc + log_scale.exp() * (torch.log(u) - torch.log1p(-u))
        return (y * 255).round().clamp(0, 255) / 255

    @torch.no_grad()
    def init_output_bias(self, bias: torch.Tensor, train_mean: torch.Tensor) -> None:
        """mu at the mean training pixel; s where the logistic's variance s^2 pi^2 / 3 is m (1 - m)."""
        m = train_mean.to(bias)
        d = self.input_dim
        bias[:d].copy_(m)
        s = (3 * _pixel_variance(m)).sqrt() / math.pi
        bias[d:].copy_(s.clamp_min(1e-12).log().clamp(self.LOG_SCALE_MIN, self.LOG_SCALE_MAX))

    def check_data(self, x: torch.Tensor, what: str = "the data") -> None:
        if not on_8bit_grid(x):
            raise ValueError(
                f"{what} is not on the 8-bit grid k/255 that the logistic256 likelihood models; "
                f"use 8-bit grey levels (not dequantised), or likelihood gaussian"
            )


def make_likelihood(name: str, input_dim: int, sigma: float | None = None) -> Likelihood:
    """The likelihood called ``name`` (one of ``LIKELIHOODS``) over ``input_dim`` pixels.

    Raises:
        ValueError: an unknown name, or ``sigma`` with a likelihood other than gaussian.
    """
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    if sigma is not None and name != "gaussian":
        raise ValueError(f"sigma is the fixed standard deviation of the gaussian likelihood, not of {name}")
    if name == "gaussian":
        return Gaussian(input_dim, sigma)
    return {"bernoulli": Bernoulli, "logistic256": DiscretizedLogistic256}[name](input_dim)
