"""Exact-likelihood tests of the two-level HVAE (iwae.models.HVAE) on a linear-Gaussian model.

The generative model, with every network of the HVAE replaced by a linear map of the same interface:

    p(z_2) = N(0, I),   p(z_1 | z_2) = N(A z_2 + a, diag(s_1^2)),   p(x | z_1, z_2) = N(B z_1 + C z_2 + b, sigma^2 I).

x is jointly Gaussian with z: x = M z_2 + m + B e_1 + e, M = B A + C, m = B a + b, e_1 ~ N(0, diag(s_1^2)),
e ~ N(0, sigma^2 I), so

    log p(x) = log N(x; m, M M^T + R),   R = B diag(s_1^2) B^T + sigma^2 I        (derived by hand)

(computed here with torch's MultivariateNormal in float64). The exact posterior factorises as the HVAE's q:

    p(z_1 | x, z_2) = N(S_1 (diag(s_1^-2) (A z_2 + a) + B^T (x - C z_2 - b) / sigma^2), S_1),
                      S_1 = (diag(s_1^-2) + B^T B / sigma^2)^-1   (diagonal: B's columns are orthogonal)
    p(z_2 | x)      = N(S_2 M^T R^-1 (x - m), S_2),   S_2 = (I + M^T R^-1 M)^-1
                      (diagonal: M = R^(1/2) Q diag(g) with Q's columns orthonormal, so M^T R^-1 M = diag(g^2))

both linear in (x, z_2) with diagonal covariances, so a linear q(z_2 | x) q(z_1 | x, z_2) holds it. Then:

- at the exact posterior every log-weight is log p(x) (positive control);
- with a deliberately imperfect linear encoder, L_1 < L_5 < L_50 < L_5000 <= log p(x), the gap at
  k = 5000 within Monte Carlo error, and a closed form with a wrong sigma fails the same check;
- L_1 is the ELBO: its mean equals log p(x) - KL(q(z_1, z_2 | x) || p(z_1, z_2 | x)), the KL of the two
  joint Gaussians over (z_2, z_1) in closed form; the ELBO of a q without its z_1 shift fails;
- AIS on p(x, z_1, z_2) (iwae.ais) recovers log p(x), and refuses the closed form with a wrong sigma;
- BDMC's sandwich on images the HVAE simulates holds the closed form, and not the one with a wrong sigma.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from iwae.ais import ais_log_likelihood, bdmc, vae_target
from iwae.ais.bdmc import _simulate
from iwae.evaluate import log_likelihood
from iwae.models import HVAE, ModelConfig

F64 = torch.float64
D, D1, D2, SIGMA, N = 5, 2, 2, 0.5, 1000


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Truth:
    """The linear-Gaussian model's parameters and its closed forms (module docstring)."""

    def __init__(self, sigma: float = SIGMA, seed: int = 0):
        g = gen(seed)
        self.sigma = sigma
        self.A = torch.randn(D1, D2, generator=g, dtype=F64)
        self.a = 0.5 * torch.randn(D1, generator=g, dtype=F64)
        self.s1 = torch.tensor([0.7, 1.2], dtype=F64)
        q, _ = torch.linalg.qr(torch.randn(D, D1, generator=g, dtype=F64))
        self.B = q * torch.tensor([1.4, 0.9], dtype=F64)  # orthogonal columns: S_1 diagonal
        self.b = 0.5 * torch.randn(D, generator=g, dtype=F64)
        self.R = self.B @ torch.diag(self.s1**2) @ self.B.T + sigma**2 * torch.eye(D, dtype=F64)
        evals, evecs = torch.linalg.eigh(self.R)
        root = evecs @ torch.diag(evals.sqrt()) @ evecs.T  # R^(1/2)
        qm, _ = torch.linalg.qr(torch.randn(D, D2, generator=g, dtype=F64))
        self.M = root @ qm * torch.tensor([1.6, 0.8], dtype=F64)  # M^T R^-1 M = diag(g^2)
        self.C = self.M - self.B @ self.A
        self.m = self.B @ self.a + self.b

    def simulate(self, n: int, g: torch.Generator) -> torch.Tensor:
        z2 = torch.randn(n, D2, generator=g, dtype=F64)
        z1 = z2 @ self.A.T + self.a + self.s1 * torch.randn(n, D1, generator=g, dtype=F64)
        return z1 @ self.B.T + z2 @ self.C.T + self.b + self.sigma * torch.randn(n, D, generator=g, dtype=F64)

    def log_px(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """log N(x; m, M M^T + R); ``sigma`` replaces the noise scale in R (a wrong closed form)."""
        s = self.sigma if sigma is None else sigma
        R = self.B @ torch.diag(self.s1**2) @ self.B.T + s**2 * torch.eye(D, dtype=F64)
        return MultivariateNormal(self.m, covariance_matrix=self.M @ self.M.T + R).log_prob(x)

    def posterior(self):
        """p(z_2 | x) = N(P2 (x - m), S2) and p(z_1 | x, z_2) = N(Ux x + Uz z_2 + c1, S1): (P2, S2, Ux, Uz, c1, S1)."""
        prec1 = torch.diag(self.s1**-2) + self.B.T @ self.B / self.sigma**2
        S1 = torch.linalg.inv(prec1)
        Ux = S1 @ self.B.T / self.sigma**2
        Uz = S1 @ (torch.diag(self.s1**-2) @ self.A - self.B.T @ self.C / self.sigma**2)
        c1 = S1 @ (self.a / self.s1**2 - self.B.T @ self.b / self.sigma**2)
        Rinv = torch.linalg.inv(self.R)
        S2 = torch.linalg.inv(torch.eye(D2, dtype=F64) + self.M.T @ Rinv @ self.M)
        P2 = S2 @ self.M.T @ Rinv
        for S in (S1, S2):
            assert torch.allclose(S, torch.diag(torch.diag(S)), atol=1e-12), "the construction must make it diagonal"
        return P2, S2, Ux, Uz, c1, S1


# ----------------------------------------------------------------------------- linear networks, HVAE's interface
class LinearTop(nn.Module):
    """q(z_2 | x) = N(W x + c, diag(exp(2 s)))."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D2).double()
        self.log_scale = nn.Parameter(torch.zeros(D2, dtype=F64))

    def loc_log_scale(self, x):
        return self.lin(x), self.log_scale.expand(x.shape[:-1] + (D2,))


class LinearCoupled(nn.Module):
    """q(z_1 | x, z_2) = N(Ux x + Uz z_2 + c, diag(exp(2 s)))."""

    def __init__(self):
        super().__init__()
        self.ux = nn.Linear(D, D1).double()
        self.uz = nn.Linear(D2, D1, bias=False).double()
        self.log_scale = nn.Parameter(torch.zeros(D1, dtype=F64))

    def loc_log_scale(self, x, z2):
        loc = self.ux(x) + self.uz(z2)
        return loc, self.log_scale.expand(loc.shape)


class LinearConditional(nn.Module):
    """p(z_1 | z_2) = N(A z_2 + a, diag(s_1^2))."""

    def __init__(self, truth: Truth):
        super().__init__()
        self.lin = nn.Linear(D2, D1).double()
        self.log_scale = nn.Parameter(torch.log(truth.s1).clone())
        with torch.no_grad():
            self.lin.weight.copy_(truth.A)
            self.lin.bias.copy_(truth.a)

    def loc_log_scale(self, z2):
        loc = self.lin(z2)
        return loc, self.log_scale.expand(loc.shape)


class LinearDecoder(nn.Module):
    """The mean B z_1 + C z_2 + b of p(x | z_1, z_2), the Gaussian likelihood's raw output (sigma fixed)."""

    def __init__(self, truth: Truth):
        super().__init__()
        self.b1 = nn.Linear(D1, D, bias=False).double()
        self.b2 = nn.Linear(D2, D).double()
        with torch.no_grad():
            self.b1.weight.copy_(truth.B)
            self.b2.weight.copy_(truth.C)
            self.b2.bias.copy_(truth.b)

    def forward(self, z1, z2):
        return self.b1(z1) + self.b2(z2)


def linear_hvae(truth: Truth, sigma: float | None = None) -> HVAE:
    """An HVAE whose four networks are the linear maps above; likelihood N(x; mean, sigma^2 I)."""
    cfg = ModelConfig(
        input_dim=D,
        latent_dims=(D1, D2),
        hidden_dims=((3, 3), (3,)),
        model="hvae",
        likelihood="gaussian",
        sigma=truth.sigma if sigma is None else sigma,
    )
    model = HVAE(cfg).double()
    model.encoder[0], model.encoder[1] = LinearTop(), LinearCoupled()
    model.decoder[0], model.decoder[1] = LinearDecoder(truth), LinearConditional(truth)
    return model


def set_encoder(
    model: HVAE,
    truth: Truth,
    shrink: float = 1.0,
    shift: float = 0.0,
    scale_shift: float = 0.0,
    scale1_shift: float = 0.0,
) -> None:
    """The exact posterior, or a worse one: q(z_2 | x)'s mean scaled by ``shrink`` and its log sigma
    shifted by ``scale_shift``; q(z_1 | x, z_2)'s mean shifted by ``shift``, its log sigma by ``scale1_shift``."""
    P2, S2, Ux, Uz, c1, S1 = truth.posterior()
    top, coupled = model.encoder
    with torch.no_grad():
        top.lin.weight.copy_(shrink * P2)
        top.lin.bias.copy_(-shrink * P2 @ truth.m)
        top.log_scale.copy_(0.5 * torch.log(torch.diag(S2)) + scale_shift)
        coupled.ux.weight.copy_(Ux)
        coupled.ux.bias.copy_(c1 + shift)
        coupled.uz.weight.copy_(Uz)
        coupled.log_scale.copy_(0.5 * torch.log(torch.diag(S1)) + scale1_shift)


def joint_gaussian(mean2, S2, F, g, S1):
    """The Gaussian over (z_2, z_1) with z_2 ~ N(mean2, S2) and z_1 | z_2 ~ N(F z_2 + g, S1): mean and covariance."""
    mean = torch.cat([mean2, mean2 @ F.T + g], -1)
    cov = torch.cat([torch.cat([S2, S2 @ F.T], 1), torch.cat([F @ S2, F @ S2 @ F.T + S1], 1)], 0)
    return mean, cov


def exact_elbo(truth: Truth, model: HVAE, x: torch.Tensor, shift: float | None = None) -> torch.Tensor:
    """log p(x) - KL(q(z_2, z_1 | x) || p(z_2, z_1 | x)), both joint Gaussians written from their parameters;
    ``shift`` replaces q(z_1 | .)'s mean shift (a wrong ELBO for the negative control)."""
    P2, S2, Ux, Uz, c1, S1 = truth.posterior()
    top, coupled = model.encoder
    with torch.no_grad():
        qm2 = x @ top.lin.weight.T + top.lin.bias
        qS2 = torch.diag(torch.exp(2 * top.log_scale))
        bias = coupled.ux.bias if shift is None else c1 + shift
        qg = x @ coupled.ux.weight.T + bias
        q_mean, q_cov = joint_gaussian(qm2, qS2, coupled.uz.weight, qg, torch.diag(torch.exp(2 * coupled.log_scale)))
    p_mean, p_cov = joint_gaussian((x - truth.m) @ P2.T, S2, Uz, x @ Ux.T + c1, S1)
    kl = kl_divergence(MultivariateNormal(q_mean, q_cov), MultivariateNormal(p_mean, p_cov))
    return truth.log_px(x) - kl


# the imperfect encoder: q(z_2 | x)'s mean at 0.3 of the posterior's and its scale twice, q(z_1 | x, z_2)'s mean
# shifted by 0.5 and its scale 1.8 times (wider than the posterior: importance weights with light tails)
IMPERFECT = dict(shrink=0.3, shift=0.5, scale_shift=math.log(2.0), scale1_shift=math.log(1.8))


@pytest.fixture(scope="module")
def setup():
    truth = Truth()
    return truth, truth.simulate(N, gen(1))


def test_log_weights_at_the_exact_posterior_are_log_px(setup):
    """Positive control: with q(z_2 | x) q(z_1 | x, z_2) = p(z_1, z_2 | x), log w = log p(x) for every draw,
    through the HVAE's own sampling (z_2 first, then z_1 given x and z_2), log q and log p(x, z_1, z_2)."""
    truth, x = setup
    model = linear_hvae(truth)
    set_encoder(model, truth)
    log_w = model.log_weights(x[:50], 20, gen(2)).detach()  # (20, 50)
    torch.testing.assert_close(log_w, truth.log_px(x[:50]).expand(20, 50), rtol=0, atol=1e-10)
    # negative control: the same model with q(z_1 | .)'s mean moved is not exact
    set_encoder(model, truth, shift=0.1)
    assert (model.log_weights(x[:50], 20, gen(2)).detach() - truth.log_px(x[:50])).abs().max() > 1e-3


def test_lk_approaches_log_px_from_below(setup):
    """With an imperfect encoder (IMPERFECT: q(z_2 | x)'s mean shrunk and its scale doubled, q(z_1 | .)'s shifted):
    L_1 < L_5 < L_50 < L_5000 on average over 1,000 inputs (each step by more than 4 paired standard errors),
    and the gap log p(x) - L_5000 is within Monte Carlo error: below 4 s.e. plus the delta-method bias
    Var(w) / (2 k E[w]^2), above -4 s.e. Negative control: the closed form with sigma 0.4 or 0.6 fails it."""
    truth, x = setup
    model = linear_hvae(truth)
    set_encoder(model, truth, **IMPERFECT)
    exact = truth.log_px(x)
    g = gen(3)
    lk = {k: log_likelihood(model, x, k, generator=g).double() for k in (1, 5, 50, 5000)}
    gaps = {k: (exact - v).mean().item() for k, v in lk.items()}
    for lo, hi in ((1, 5), (5, 50), (50, 5000)):
        d = lk[hi] - lk[lo]
        assert d.mean() > 4 * d.std() / math.sqrt(N), (lo, hi, d.mean())
    log_w = model.log_weights(x, 5000, gen(4)).detach()  # (5000, N)
    w = torch.exp(log_w - log_w.max(0).values)
    rel_var = w.var(0) / w.mean(0).square()
    se_mean = max(
        (rel_var / 5000).mean().sqrt().item() / math.sqrt(N), ((exact - lk[5000]).std() / math.sqrt(N)).item()
    )
    bias = (rel_var / (2 * 5000)).mean().item()
    print(
        f"\nlinear-Gaussian HVAE D={D}, z1={D1}, z2={D2}: gap log p(x) - L_k = "
        + ", ".join(f"k={k}: {v:.4f}" for k, v in gaps.items())
        + f"; s.e. {se_mean:.4f}, bias {bias:.4f}"
    )
    assert gaps[1] > gaps[5] > gaps[50] > gaps[5000]
    assert gaps[1] > 0.1  # the encoder is imperfect enough for the test to mean something
    assert -4 * se_mean < gaps[5000] < 4 * se_mean + bias, (gaps[5000], se_mean, bias)
    for wrong_sigma in (0.4, 0.6):
        wrong = (truth.log_px(x, wrong_sigma) - lk[5000]).mean().item()
        assert not -4 * se_mean < wrong < 4 * se_mean + bias, (wrong_sigma, wrong)


def test_l1_is_the_elbo(setup):
    """L_1 (evaluate.log_likelihood with k = 1, and the mean of 2,000 single log-weights per input) equals
    the closed-form ELBO, log p(x) - KL(q || p(z | x)) of the joint Gaussians over (z_2, z_1), within 4
    standard errors. Negative control: the ELBO of q without its z_1 shift (the KL of the z_2 part only
    would be the same mistake) is refused by the same check."""
    truth, x = setup
    model = linear_hvae(truth)
    set_encoder(model, truth, **IMPERFECT)
    elbo = exact_elbo(truth, model, x)
    assert (truth.log_px(x) - elbo).min() > 0.05  # a real gap
    l1 = log_likelihood(model, x, 1, generator=gen(5)).double()
    d = l1 - elbo
    assert d.mean().abs() < 4 * d.std() / math.sqrt(N), d.mean()
    per_input = model.log_weights(x, 2000, gen(6)).detach().mean(0)  # (N,), each the mean of 2,000 draws
    se = model.log_weights(x, 2000, gen(7)).detach().std(0) / math.sqrt(2000)
    z = (per_input - elbo) / se
    assert z.abs().max() < 4.5, z.abs().max()  # every input, Bonferroni over 1,000
    wrong = exact_elbo(truth, model, x, shift=0.0)  # q(z_1 | .)'s mean where the posterior's is
    assert ((per_input - wrong) / se).abs().max() > 4.5
    assert (l1 - wrong).mean().abs() > 4 * (l1 - wrong).std() / math.sqrt(N)


def test_ais_recovers_log_px(setup):
    """AIS (iwae.ais.ais_log_likelihood on the HVAE's p(x, z_1, z_2)) with T = 300 and 256 chains, from the
    HVAE's q(z_2 | x) q(z_1 | x, z_2) (an imperfect one: means off, scales 1.3 times) and from the prior
    p(z_2) p(z_1 | z_2), recovers log p(x) on 6 inputs: each estimate within 4 of its own (delta-method)
    standard errors, and from the encoder within 0.05 nats on average. Its log_joint is the model's
    log p(x, z) at the model's own samples. Negative control: the closed form with sigma 10% off is
    more than 4 standard errors from some estimate, for both initial distributions."""
    truth, x = setup
    model = linear_hvae(truth)
    set_encoder(model, truth, shrink=0.8, shift=0.15, scale_shift=math.log(1.3), scale1_shift=math.log(1.3))
    x6 = x[:6]
    exact = truth.log_px(x6)
    for initial in ("encoder", "prior"):
        result = ais_log_likelihood(model, x6, steps=300, chains=256, leapfrog=5, initial=initial, generator=gen(8))
        z = (result.log_likelihood - exact) / result.stderr
        assert z.abs().max() < 4, (initial, z)
        if initial == "encoder":
            assert (result.log_likelihood - exact).abs().mean() < 0.05, result.log_likelihood - exact
        z_wrong = (result.log_likelihood - truth.log_px(x6, SIGMA * 1.1)) / result.stderr
        assert z_wrong.abs().max() > 4, (initial, z_wrong)
    # the target is p(x, z_1, z_2) and the initial q is the HVAE's, at z = (z_1, z_2) concatenated bottom-up
    log_joint, q0 = vae_target(model, x6)
    log_w, (z1, z2) = model.log_weights_with_samples(x6, 4, gen(9))
    z = torch.cat([z1, z2], -1)
    with torch.no_grad():
        torch.testing.assert_close(log_joint(z) - q0.log_prob(z), log_w.detach(), rtol=0, atol=1e-10)
        draws = q0.sample(3, gen(10))
        assert draws.shape == (3, 6, D1 + D2)


def test_bdmc_sandwiches_log_px(setup):
    """BDMC (iwae.ais.bdmc) on the linear HVAE: it simulates (z_1, z_2, x) from p(z_2) p(z_1 | z_2) p(x | z_1, z_2),
    and its forward (from the imperfect q) and reverse (from the simulated z) AIS bracket the mean closed-form
    log p(x) of those images at T = 5 and T = 200, within 4 standard errors of the per-image gap (the AIS noise;
    the bounds' own standard errors hold the spread of log p(x) over images, which the comparison pairs out);
    the gap tightens from over 0.1 nats to under 0.05 in size (a stochastic gap can dip below 0).
    Negative control: the closed form with twice the noise scale lies outside the T = 200 sandwich."""
    truth, _ = setup
    model = linear_hvae(truth)
    set_encoder(model, truth, shrink=0.8, shift=0.15, scale_shift=math.log(1.3), scale1_shift=math.log(1.3))
    n = 24
    _, x = _simulate(model, n, gen(11))  # bdmc's own first draw with the same generator: the images it simulates

    def inside(value: float, row: dict) -> bool:
        tol = 4 * row["gap_stderr"]
        return row["lower"] - tol < value < row["upper"] + tol

    exact = truth.log_px(x).mean().item()
    rows = bdmc(model, n, steps_list=(5, 200), chains=16, leapfrog=5, generator=gen(11))
    for row in rows:
        assert inside(exact, row), (row, exact)
    assert rows[0]["gap"] > 0.1 and abs(rows[1]["gap"]) < 0.05, [r["gap"] for r in rows]
    wrong = truth.log_px(x, SIGMA * 2).mean().item()
    assert not inside(wrong, rows[1]), (rows[1], wrong)
