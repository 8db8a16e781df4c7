"""Exact-likelihood tests with the project's Gaussian likelihood: a linear-Gaussian model
(p(z) = N(0, I), p(x | z) = N(W z + b, sigma^2 I), sigma fixed) has

    log p(x) = log N(x; b, W W^T + sigma^2 I)

in closed form (computed here with torch.distributions.MultivariateNormal in float64), and the
exact posterior p(z | x) = N(S W^T (x - b) / sigma^2, S), S = (I + W^T W / sigma^2)^{-1}, which is
diagonal when W's columns are orthogonal. So:

- L_1 <= L_k <= log p(x), L_k increasing in k, and the gap at k = 5000 within Monte Carlo error;
- with the encoder at the exact posterior every log-weight equals log p(x) (positive control);
- the closed form with a wrong sigma fails the same check (negative control);
- probabilistic PCA: the model trained briefly on the IWAE objective moves toward Tipping &
  Bishop's maximum-likelihood solution, W_ML = U (Lambda - sigma^2 I)^{1/2}, sigma^2_ML = the mean
  of the discarded eigenvalues of the sample covariance.

The numbers measured here are printed with ``-s`` (README, "Exact likelihood").
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from iwae.estimators import ObjectiveSpec, accumulate_gradients
from iwae.evaluate import log_likelihood
from iwae.models import VAE, Likelihood, ModelConfig
from iwae.models.gaussian import diag_normal_log_prob

D, DZ, SIGMA, N = 6, 2, 0.5, 400


class LinearEncoder(nn.Module):
    """q(z | x) = N(A x + c, diag(exp(2 s))): the family that holds this model's exact posterior."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Linear(D, DZ)
        self.log_scale = nn.Parameter(torch.zeros(DZ))

    def forward(self, x):
        return self.loc(x), self.log_scale.expand(x.shape[:-1] + (DZ,))


def _model(W: torch.Tensor, b: torch.Tensor, sigma: float = SIGMA) -> VAE:
    decoder = nn.Linear(DZ, D).double()
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
    cfg = ModelConfig(input_dim=D, latent_dims=(DZ,), likelihood="gaussian", sigma=sigma)
    return VAE(cfg, encoder=LinearEncoder(), decoder=decoder).double()


def _exact_log_px(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    cov = W @ W.T + sigma**2 * torch.eye(D, dtype=torch.float64)
    return MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def _set_encoder(
    model: VAE, W: torch.Tensor, b: torch.Tensor, sigma: float, shrink: float = 1.0, scale_shift: float = 0.0
) -> None:
    """The exact posterior (shrink 1, shift 0), or a worse Gaussian: loc scaled by ``shrink``, log sigma shifted."""
    S = torch.linalg.inv(torch.eye(DZ, dtype=torch.float64) + W.T @ W / sigma**2)
    assert torch.allclose(S, torch.diag(torch.diag(S)), atol=1e-12), "W's columns must be orthogonal"
    A = S @ W.T / sigma**2  # loc = A (x - b)
    enc = model.encoder[0].module
    with torch.no_grad():
        enc.loc.weight.copy_(shrink * A)
        enc.loc.bias.copy_(-shrink * A @ b)
        enc.log_scale.copy_(0.5 * torch.log(torch.diag(S)) + scale_shift)


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, DZ, generator=g, dtype=torch.float64))
    W = q * torch.tensor([1.5, 0.8], dtype=torch.float64)  # orthogonal columns: diagonal exact posterior
    b = torch.randn(D, generator=g, dtype=torch.float64) * 0.5
    z = torch.randn(N, DZ, generator=g, dtype=torch.float64)
    x = z @ W.T + b + SIGMA * torch.randn(N, D, generator=g, dtype=torch.float64)
    return W, b, x


def test_log_weights_at_the_exact_posterior_are_log_px(setup):
    """Positive control: with q = p(z | x), log w = log p(x, z) - log p(z | x) = log p(x) for every draw."""
    W, b, x = setup
    model = _model(W, b)
    _set_encoder(model, W, b, SIGMA)
    log_w = model.log_weights(x[:50], 20, torch.Generator().manual_seed(1)).detach()  # (20, 50)
    torch.testing.assert_close(log_w, _exact_log_px(x[:50], W, b, SIGMA).expand(20, 50), rtol=0, atol=1e-10)


def test_lk_approaches_log_px_from_below(setup):
    """With a worse encoder (the exact posterior's scale, its mean halved): L_1 < L_5 < L_50 < L_5000 <= log p(x)
    on average over 400 inputs (each step by more than 4 paired standard errors), and the gap at
    k = 5000 is within Monte Carlo error: below 4 s.e. of the mean plus the delta-method bias
    Var(w) / (2 k E[w]^2), and above -4 s.e. Negative control: the closed form with sigma = 0.4 or
    0.6 instead of 0.5 fails the same check."""
    W, b, x = setup
    model = _model(W, b)
    _set_encoder(model, W, b, SIGMA, shrink=0.5)
    exact = _exact_log_px(x, W, b, SIGMA)
    g = torch.Generator().manual_seed(2)
    lk = {k: log_likelihood(model, x, k, generator=g).double() for k in (1, 5, 50, 5000)}
    gaps = {k: (exact - v).mean().item() for k, v in lk.items()}
    for lo, hi in ((1, 5), (5, 50), (50, 5000)):
        d = lk[hi] - lk[lo]
        assert d.mean() > 4 * d.std() / math.sqrt(N), (lo, hi, d.mean())
    # Monte Carlo error of L_5000 per input, by the delta method from 5000 fresh weights
    log_w = model.log_weights(x, 5000, torch.Generator().manual_seed(3)).detach()  # (5000, N)
    w = torch.exp(log_w - log_w.max(0).values)
    rel_var = w.var(0) / w.mean(0).square()  # Var(w) / E[w]^2 per input
    # s.e. of the mean gap: the larger of the delta-method one and the spread of the 400 gaps
    se_mean = max(
        (rel_var / 5000).mean().sqrt().item() / math.sqrt(N), ((exact - lk[5000]).std() / math.sqrt(N)).item()
    )
    bias = (rel_var / (2 * 5000)).mean().item()
    gap = gaps[5000]
    print(
        f"\nlinear-Gaussian D={D}, d={DZ}, sigma={SIGMA}, {N} inputs: gap log p(x) - L_k = "
        + ", ".join(f"k={k}: {v:.4f}" for k, v in gaps.items())
        + f"; s.e. of the k=5000 gap {se_mean:.4f}, delta-method bias {bias:.4f}"
    )
    assert gaps[1] > gaps[5] > gaps[50] > gaps[5000]
    assert -4 * se_mean < gap < 4 * se_mean + bias, (gap, se_mean, bias)
    for wrong_sigma in (0.4, 0.6):  # the same check refuses a closed form with a sigma 20% off
        wrong = (_exact_log_px(x, W, b, wrong_sigma) - lk[5000]).mean().item()
        assert not -4 * se_mean < wrong < 4 * se_mean + bias, (wrong_sigma, wrong)


class OneSigmaGaussian(Likelihood):
    """N(x; raw, sigma^2 I) with one learned sigma for all pixels: pPCA's observation noise."""

    name = "gaussian-one-sigma"

    def __init__(self, input_dim: int):
        super().__init__(input_dim)
        self.log_sigma = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))

    def log_prob(self, raw, x):
        return diag_normal_log_prob(x, raw, self.log_sigma.expand(raw.shape[-1]))

    def mean(self, raw):
        return raw


def test_ppca_moves_toward_the_maximum_likelihood_solution():
    """IWAE(5) training (300 full-batch Adam steps, about 2 s) of a linear decoder with one learned sigma on
    data from a pPCA model brings the exact log-likelihood of the data under the model's marginal
    N(b, W W^T + sigma^2 I) to within 1% of the way from its start to Tipping & Bishop's ML solution, and
    never past it (the ML marginal is the maximum)."""
    torch.manual_seed(0)
    d, dz, n = 12, 2, 500
    W_true = torch.randn(d, dz, dtype=torch.float64)
    x = torch.randn(n, dz, dtype=torch.float64) @ W_true.T + 0.3 + 0.3 * torch.randn(n, d, dtype=torch.float64)

    # Tipping & Bishop (1999): eigen-decomposition of the sample covariance
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / n
    eigval, eigvec = torch.linalg.eigh(cov)
    eigval, eigvec = eigval.flip(0), eigvec.flip(1)
    sigma2_ml = eigval[dz:].mean()
    W_ml = eigvec[:, :dz] * (eigval[:dz] - sigma2_ml).sqrt()

    def marginal(W, b, sigma2):
        return (
            MultivariateNormal(b, covariance_matrix=W @ W.T + sigma2 * torch.eye(d, dtype=torch.float64))
            .log_prob(x)
            .mean()
            .item()
        )

    best = marginal(W_ml, mean, sigma2_ml)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = nn.Linear(d, dz)
            self.log_scale = nn.Parameter(torch.zeros(dz))

        def forward(self, h):
            return self.loc(h), self.log_scale.expand(h.shape[:-1] + (dz,))

    lik = OneSigmaGaussian(d)
    model = VAE(
        ModelConfig(input_dim=d, latent_dims=(dz,)), encoder=Encoder(), decoder=nn.Linear(dz, d), likelihood=lik
    ).double()
    dec = model.decoder[0]

    def current():
        return marginal(dec.weight.detach(), dec.bias.detach(), torch.exp(2 * lik.log_sigma.detach()))

    start = current()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    g = torch.Generator().manual_seed(1)
    spec = ObjectiveSpec("iwae", k=5)
    for _ in range(300):
        opt.zero_grad(set_to_none=True)
        accumulate_gradients(model, x, spec, g)
        for p in model.parameters():
            p.grad /= n  # the mean over the batch, not the sum: one learning rate for any n
        opt.step()
    end = current()
    print(
        f"\npPCA d={d}, latent {dz}, {n} points: mean log p(x) at start {start:.4f}, after 300 IWAE(5) steps "
        f"{end:.4f}, ML (Tipping & Bishop) {best:.4f}; sigma^2 {math.exp(2 * lik.log_sigma.item()):.4f} vs "
        f"ML {sigma2_ml.item():.4f}"
    )
    assert end <= best + 1e-9
    assert best - end < 0.01 * (best - start), (start, end, best)
