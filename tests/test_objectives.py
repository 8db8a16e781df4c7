"""Tests for iwae.objectives: the bounds as functions of log importance weights.

Identities between the bounds, an independent float64 reference for MIWAE, numerical stability in
log space, Jensen orderings on fixed samples, argument validation, and the ordering
L_1 < L_5 < L_50 <= log p(x) against a linear-Gaussian model whose log p(x) is known exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from iwae import objectives
from iwae.objectives import ciwae, elbo, iwae, miwae, piwae

F64 = torch.float64


def _lw(*shape: int, seed: int = 0, scale: float = 3.0, loc: float = -50.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return loc + scale * torch.randn(shape, generator=g, dtype=F64)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- identities
def test_miwae_with_one_group_is_iwae():
    """MIWAE(1, K) equals IWAE(K) on the same K samples."""
    lw = _lw(7, 5)
    _close(miwae(lw.unsqueeze(0)), iwae(lw))


def test_miwae_with_one_sample_per_group_is_elbo():
    """MIWAE(M, 1) equals the M-sample ELBO (the mean of the log-weights)."""
    lw = _lw(6, 4, seed=1)
    _close(miwae(lw.unsqueeze(1)), elbo(lw))
    _close(elbo(lw), lw.mean(0))


def test_ciwae_endpoints():
    """CIWAE(beta=0) is IWAE and CIWAE(beta=1) is the ELBO on the same samples."""
    lw = _lw(9, 3, seed=2)
    _close(ciwae(lw, 0.0), iwae(lw))
    _close(ciwae(lw, 1.0), elbo(lw))
    # and in between it is the stated convex combination
    _close(ciwae(lw, 0.3), 0.3 * elbo(lw) + 0.7 * iwae(lw))


def test_iwae_with_one_sample_is_elbo():
    """With K = 1, IWAE(1) equals the ELBO (and both equal the single log-weight)."""
    lw = _lw(1, 8, seed=3)
    _close(iwae(lw), elbo(lw))
    _close(iwae(lw), lw[0])


def test_iwae_against_float64_python_loop():
    """IWAE(K) equals log((1/K) sum_k exp(w_k)) computed with math.log/math.exp per example."""
    lw = _lw(6, 4, seed=4, scale=1.5, loc=-2.0)
    out = iwae(lw)
    for b in range(lw.shape[1]):
        ref = math.log(sum(math.exp(v) for v in lw[:, b].tolist()) / lw.shape[0])
        assert out[b].item() == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_miwae_against_python_loop_m_ne_k():
    """MIWAE(M=3, K=4) on (M, K, B) = (3, 4, 5) equals (1/M) sum_m log((1/K) sum_k exp(w_mk)),
    computed with an explicit float64 Python loop; M != K, so swapping the roles of M and K
    (averaging over the wrong dimension) fails this test."""
    M, K, B = 3, 4, 5
    lw = _lw(M, K, B, seed=5, scale=2.0, loc=-1.0)
    out = miwae(lw)
    assert out.shape == (B,)
    vals = lw.tolist()
    for b in range(B):
        ref = 0.0
        for m in range(M):
            ref += math.log(sum(math.exp(vals[m][k][b]) for k in range(K)) / K)
        ref /= M
        assert out[b].item() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # the transposed layout gives a different answer on these samples (the test can tell them apart)
    swapped = (torch.logsumexp(lw, dim=0) - math.log(M)).mean(dim=0)
    assert not torch.allclose(out, swapped, rtol=1e-6, atol=1e-6)


def test_output_shapes_and_dtype():
    """Every bound returns one value per example, shape (B,), in the input's dtype."""
    lw3 = _lw(2, 3, 4, seed=6).float()
    lw2 = lw3.reshape(6, 4)
    for out in (elbo(lw2), iwae(lw2), ciwae(lw2, 0.5), miwae(lw3), *piwae(lw3)):
        assert out.shape == (4,)
        assert out.dtype == torch.float32


# ----------------------------------------------------------------------------- stability
@pytest.mark.parametrize(
    "loc,scale",
    [(-1e4, 1.0), (1e3, 1.0), (0.0, 1e3), (-1e4, 300.0)],
    ids=["around-1e4", "around+1e3", "spread-1e3", "far-and-spread"],
)
def test_stability_under_large_log_weights(loc, scale):
    """Log-weights around -1e4, +1e3, or spread over ~1e3 give finite bounds equal to the
    shifted computation, bound(lw + c) == bound(lw) + c, and finite gradients; the IWAE gradient is
    the self-normalised weights (summing to 1 per example), never inf/nan."""
    g = torch.Generator().manual_seed(7)
    base = scale * torch.randn(3, 4, 5, generator=g, dtype=F64)
    shift = loc
    lw3 = (base + shift).requires_grad_(True)
    lw2 = lw3.reshape(12, 5)
    b2 = base.reshape(12, 5)
    for f, arg, ref_arg in (
        (elbo, lw2, b2),
        (iwae, lw2, b2),
        (lambda t: ciwae(t, 0.4), lw2, b2),
        (miwae, lw3, base),
        (lambda t: piwae(t)[0], lw3, base),
        (lambda t: piwae(t)[1], lw3, base),
    ):
        out = f(arg)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, f(ref_arg) + shift, rtol=1e-12, atol=1e-9)
    # IWAE(K) lies within [max - log K, max] however spread the weights are
    out = iwae(lw2)
    mx = lw2.max(0).values
    assert (out <= mx + 1e-9).all() and (out >= mx - math.log(12) - 1e-9).all()
    # gradients: finite, and d IWAE / d lw_k = softmax weights (sum to 1 over k)
    (grad,) = torch.autograd.grad(out.sum(), lw3)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad.reshape(12, 5).sum(0), torch.ones(5, dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad.reshape(12, 5), torch.softmax(lw2.detach(), 0), rtol=1e-10, atol=1e-14)
    (grad_m,) = torch.autograd.grad(miwae(lw3).sum(), lw3)
    assert torch.isfinite(grad_m).all()
    # each of the M = 3 groups carries total weight 1/M
    torch.testing.assert_close(grad_m.sum(1), torch.full((3, 5), 1 / 3, dtype=F64), rtol=1e-12, atol=1e-12)


def test_stability_float32_far_from_zero():
    """In float32 too, log-weights near -1e4 (where exp underflows to 0) give finite IWAE/MIWAE
    values near the true ones, and finite gradients."""
    g = torch.Generator().manual_seed(8)
    base = torch.randn(4, 5, 3, generator=g, dtype=F64)
    lw = (base - 1e4).float().requires_grad_(True)
    ref = miwae(base) - 1e4
    out = miwae(lw)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-2)
    out2 = iwae(lw.reshape(20, 3))
    torch.testing.assert_close(out2.double(), iwae(base.reshape(20, 3)) - 1e4, rtol=0, atol=2e-2)
    (grad,) = torch.autograd.grad(out.sum() + out2.sum(), lw)
    assert torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- Jensen
def test_jensen_orderings_on_fixed_samples():
    """On any fixed set of samples: elbo <= ciwae(beta) <= iwae (ciwae decreasing in beta) and,
    for M groups of K, elbo(all MK) <= MIWAE(M, K) <= IWAE(MK) (concavity of log: the log of the
    overall mean weight is >= the mean over groups of the log of the group means)."""
    M, K, B = 4, 6, 50
    lw3 = _lw(M, K, B, seed=9, scale=4.0, loc=0.0)
    flat = lw3.reshape(M * K, B)
    e, i, m = elbo(flat), iwae(flat), miwae(lw3)
    assert (e <= m + 1e-12).all() and (m <= i + 1e-12).all()
    # the gaps are strict for non-degenerate weights
    assert (m - e > 1e-3).all() and (i - m > 1e-3).all()
    prev = i
    for beta in (0.0, 0.25, 0.5, 0.75, 1.0):
        c = ciwae(flat, beta)
        assert (e - 1e-12 <= c).all() and (c <= i + 1e-12).all()
        assert (c <= prev + 1e-12).all()
        prev = c
    # elbo <= iwae for a single group too
    assert (elbo(lw3[0]) <= iwae(lw3[0])).all()


def test_piwae_returns_iwae_of_all_samples_and_miwae():
    """piwae(log_w) with log_w of shape (M, K, B) returns (IWAE(M*K) of the flattened samples,
    MIWAE(M, K))."""
    lw3 = _lw(3, 4, 5, seed=10)
    dec, enc = piwae(lw3)
    # independent reference for IWAE over all M*K samples per example
    ref_dec = torch.logsumexp(lw3.permute(2, 0, 1).reshape(5, -1), dim=1) - math.log(12)
    _close(dec, ref_dec)
    _close(dec, iwae(lw3.reshape(12, 5)))
    _close(enc, miwae(lw3))
    assert not torch.allclose(dec, enc)


# ----------------------------------------------------------------------------- validation
def test_bad_shapes_and_arguments_raise_value_error():
    """Wrong numbers of dimensions, zero samples and beta outside [0, 1] raise ValueError whose
    message names the function and the offending shape or value."""
    with pytest.raises(ValueError, match=r"elbo.*\(2, 3, 4\)"):
        elbo(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"iwae.*\(2, 3, 4\)"):
        iwae(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"iwae.*\(5,\)"):
        iwae(torch.zeros(5))
    with pytest.raises(ValueError, match=r"miwae.*\(6, 4\)"):
        miwae(torch.zeros(6, 4))
    with pytest.raises(ValueError, match=r"piwae.*\(6, 4\)"):
        piwae(torch.zeros(6, 4))
    with pytest.raises(ValueError, match=r"sample"):
        iwae(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"sample"):
        miwae(torch.zeros(2, 0, 3))
    for beta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"beta.*\[0, 1\]"):
            ciwae(torch.zeros(4, 3), beta)
    assert set(objectives.OBJECTIVES) == {"vae", "iwae", "miwae", "ciwae", "piwae"}


# ----------------------------------------------------------------------------- exact log p(x)
class _LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_n): p(x) = N(b, W W^T + s^2 I) and
    p(z | x) = N(mu, Sigma), Sigma = (I + W^T W / s^2)^-1, mu = Sigma W^T (x - b) / s^2."""

    def __init__(self, d: int = 2, n: int = 4, s: float = 0.6, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.d, self.s = d, s
        self.W = torch.randn(n, d, generator=g, dtype=F64)
        self.b = torch.randn(n, generator=g, dtype=F64)
        self.x = self.b + self.W @ torch.randn(d, generator=g, dtype=F64) + s * torch.randn(n, generator=g, dtype=F64)
        self.log_px = MultivariateNormal(self.b, self.W @ self.W.T + s**2 * torch.eye(n, dtype=F64)).log_prob(self.x)
        self.Sigma = torch.linalg.inv(torch.eye(d, dtype=F64) + self.W.T @ self.W / s**2)
        self.mu = self.Sigma @ self.W.T @ (self.x - self.b) / s**2

    def log_weights(self, q, shape: tuple[int, ...]) -> torch.Tensor:
        z = q.sample(shape)
        prior = Independent(Normal(torch.zeros(self.d, dtype=F64), 1.0), 1)
        lik = Independent(Normal(z @ self.W.T + self.b, self.s), 1)
        return prior.log_prob(z) + lik.log_prob(self.x) - q.log_prob(z)


def test_bounds_order_against_exact_linear_gaussian_log_likelihood():
    """With an imperfect Gaussian q, Monte Carlo means over 4000 replicates satisfy
    L_1 < L_5 < L_50 <= log p(x) with the exact log p(x) of a linear-Gaussian model: consecutive
    gaps beyond 3 standard errors, and L_50 no more than 3 s.e. above log p(x)."""
    lg = _LinearGaussian()
    sd = lg.Sigma.diagonal().sqrt()
    q = Independent(Normal(lg.mu + 0.8 * sd, 1.3 * sd), 1)
    torch.manual_seed(1234)
    R = 4000
    means, ses = {}, {}
    for k in (1, 5, 50):
        L = iwae(lg.log_weights(q, (k, R)))
        means[k], ses[k] = L.mean().item(), L.std().item() / math.sqrt(R)
    log_px = lg.log_px.item()
    for a, b in ((1, 5), (5, 50)):
        assert means[b] - means[a] > 3 * math.hypot(ses[a], ses[b]), (means, ses)
    assert means[50] <= log_px + 3 * ses[50], (means, ses, log_px)
    assert means[1] < log_px - 0.3  # the imperfect q leaves a real ELBO gap
    # MIWAE(5, 10) on 50 samples sits between L_10-like and L_50 on average, and below log p(x)
    Lm = miwae(lg.log_weights(q, (5, 10, R)))
    assert means[5] < Lm.mean().item() < means[50] + 3 * ses[50]


def test_exact_posterior_gives_constant_log_weights():
    """With q = p(z | x) exactly, every log-weight equals log p(x) (to 1e-9 in float64), so the
    ELBO, IWAE, MIWAE, CIWAE and PIWAE bounds all equal log p(x)."""
    lg = _LinearGaussian(d=3, n=5, s=0.4, seed=3)
    q = MultivariateNormal(lg.mu, lg.Sigma)
    torch.manual_seed(0)
    lw = lg.log_weights(q, (4, 6, 3))
    target = lg.log_px.expand(3)
    torch.testing.assert_close(lw, lg.log_px.expand_as(lw), rtol=0, atol=1e-9)
    flat = lw.reshape(24, 3)
    for out in (elbo(flat), iwae(flat), ciwae(flat, 0.5), miwae(lw), *piwae(lw)):
        torch.testing.assert_close(out, target, rtol=0, atol=1e-9)
