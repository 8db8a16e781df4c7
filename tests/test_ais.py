"""Tests for iwae.ais: HMC invariance, AIS against closed forms and quadrature, BDMC's sandwich.

Every reference value here is computed independently of iwae.ais: the linear-Gaussian model's
log p(x) = log N(x; b, W W^T + s^2 I) by torch's MultivariateNormal, the Bernoulli model's by
quadrature on a grid, importance sampling by a logsumexp written here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal

from iwae.ais import (
    GaussianInitial,
    ais,
    ais_cost,
    ais_log_likelihood,
    bdmc,
    hmc_step,
    leapfrog,
    log_mean_exp_stats,
    sandwich,
    schedule_betas,
    vae_target,
)
from iwae.ais import likelihood as ais_likelihood
from iwae.ais import vae as ais_vae
from iwae.evaluate import log_likelihood
from iwae.models import VAE, ModelConfig

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ linear Gaussian
class LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_m); log p(x) and p(z | x) in closed form."""

    def __init__(self, d: int = 2, m: int = 3, s: float = 0.6, seed: int = 0):
        g = gen(seed)
        self.d, self.m, self.s = d, m, s
        self.W = torch.randn(m, d, generator=g, dtype=F64)
        self.b = torch.randn(m, generator=g, dtype=F64)

    def simulate(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(n, self.d, generator=g, dtype=F64)
        return z, z @ self.W.T + self.b + self.s * torch.randn(n, self.m, generator=g, dtype=F64)

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.m, dtype=F64)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, d) and covariance (d, d) of p(z | x)."""
        prec = torch.eye(self.d, dtype=F64) + self.W.T @ self.W / self.s**2
        cov = torch.linalg.inv(prec)
        return (x - self.b) @ self.W @ cov / self.s**2, cov

    def log_joint(self, x: torch.Tensor):
        def f(z: torch.Tensor) -> torch.Tensor:
            log_prior = -0.5 * z.square().sum(-1) - 0.5 * self.d * LOG_2PI
            r = (x - (z @ self.W.T + self.b)) / self.s
            return log_prior - 0.5 * r.square().sum(-1) - self.m * (math.log(self.s) + 0.5 * LOG_2PI)

        return f

    def encoder_like(self, x: torch.Tensor) -> GaussianInitial:
        """A deliberately imperfect q(z | x): the posterior mean shifted, the scales inflated by 1.3."""
        mean, cov = self.posterior(x)
        return GaussianInitial(mean + 0.15, 1.3 * cov.diagonal().sqrt().expand_as(mean))

    def prior(self, n: int) -> GaussianInitial:
        return GaussianInitial(torch.zeros(n, self.d, dtype=F64), torch.ones(n, self.d, dtype=F64))


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian()


def test_ais_matches_linear_gaussian_log_px(lg):
    _, x = lg.simulate(6, gen(1))
    run = ais(lg.log_joint(x), lg.encoder_like(x), chains=256, steps=300, leapfrog_steps=5, generator=gen(2))
    estimate, stderr, ess = log_mean_exp_stats(run.log_weights)
    exact = lg.exact_log_px(x)
    assert (estimate - exact).abs().max() < 0.05, estimate - exact
    assert stderr.max() < 0.025 and (ess > 128).all() and (ess <= 256 + 1e-9).all()
    assert 0.55 < run.acceptance.mean() < 0.75  # adapted toward 0.65
    # negative control: the same check catches plain importance sampling from the prior with as many
    # samples (T = 1), and AIS on a model whose noise scale is 5% off
    plain = ais(lg.log_joint(x), lg.prior(len(x)), chains=256, steps=1, generator=gen(2))
    assert (log_mean_exp_stats(plain.log_weights)[0] - exact).abs().max() > 0.05
    other = LinearGaussian(s=lg.s * 1.05)
    bad = ais(other.log_joint(x), lg.encoder_like(x), chains=256, steps=300, leapfrog_steps=5, generator=gen(2))
    assert (log_mean_exp_stats(bad.log_weights)[0] - exact).abs().max() > 0.05


def test_ais_with_one_step_is_importance_sampling(lg):
    _, x = lg.simulate(5, gen(3))
    q = lg.encoder_like(x)
    run = ais(lg.log_joint(x), q, chains=7, steps=1, generator=gen(4))
    # the same draws, by hand: z = loc + scale * eps with eps the generator's first numbers
    eps = torch.randn((7,) + q.loc.shape, generator=gen(4), dtype=F64)
    z = q.loc + q.scale * eps
    log_q = Independent(Normal(q.loc, q.scale), 1).log_prob(z)
    log_w = lg.log_joint(x)(z) - log_q
    torch.testing.assert_close(run.log_weights, log_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_mean_exp_stats(run.log_weights)[0], torch.logsumexp(log_w, 0) - math.log(7))
    assert run.gradient_evaluations == 1


def test_log_mean_exp_stats_against_numpy():
    log_w = torch.randn(9, 4, generator=gen(5), dtype=F64) * 2 - 300  # far below exp's range: log space
    estimate, stderr, ess = log_mean_exp_stats(log_w)
    w = np.exp(log_w.numpy() + 300)  # shifted into range for the direct formulas
    c = w.shape[0]
    np.testing.assert_allclose(estimate.numpy(), np.log(w.mean(0)) - 300, rtol=1e-12)
    np.testing.assert_allclose(ess.numpy(), w.sum(0) ** 2 / (w**2).sum(0), rtol=1e-10)
    np.testing.assert_allclose(stderr.numpy(), w.std(0, ddof=1) / math.sqrt(c) / w.mean(0), rtol=1e-10)


def test_schedules():
    for name in ("sigmoid", "linear"):
        b = schedule_betas(50, name)
        assert b[0] == 0 and b[-1] == 1 and (b.diff() > 0).all()
    sig = schedule_betas(100, "sigmoid")
    assert sig[1] < 0.01 / 2  # the sigmoid schedule crawls near b = 0, where linear takes 0.01 steps
    with pytest.raises(ValueError, match="sigmoid or linear"):
        schedule_betas(10, "cosine")
    with pytest.raises(ValueError, match="steps >= 1"):
        schedule_betas(0)


# ------------------------------------------------------------------------------- HMC
COV = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=F64)  # correlated: eigenvalues 1.9 and 0.1
MEAN = torch.tensor([1.0, -2.0], dtype=F64)


def _gaussian_grad_fn():
    target = MultivariateNormal(MEAN, COV)
    prec = torch.linalg.inv(COV)

    def grad_fn(z):
        log_f = target.log_prob(z)
        grad = -(z - MEAN) @ prec  # written out, not autograd: an independent gradient
        return grad, (log_f, grad)

    return target, grad_fn


def _moments_match(z: torch.Tensor, n: int) -> bool:
    """Mean within 4 standard errors, covariance entries within 4 of their standard errors."""
    z = z.reshape(-1, 2)
    mean_ok = ((z.mean(0) - MEAN).abs() < 4 * COV.diagonal().sqrt() / math.sqrt(n)).all()
    cov = torch.cov(z.T)
    # Var of a sample covariance entry (Gaussian): (S_ii S_jj + S_ij^2) / n
    se = ((COV.diagonal()[:, None] * COV.diagonal()[None, :] + COV**2) / n).sqrt()
    return bool(mean_ok and ((cov - COV).abs() < 4 * se).all())


@pytest.mark.parametrize("control", [None, "no_metropolis", "wrong_kinetic"])
def test_hmc_leaves_a_correlated_gaussian_invariant(control):
    n = 4000
    target, grad_fn = _gaussian_grad_fn()
    g = gen(6)
    z = MEAN + (torch.randn(n, 1, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(COV).T)
    step = torch.full((n, 1, 1), 0.55, dtype=F64)  # step * sqrt(1 / 0.1) = 1.74: large leapfrog error
    for _ in range(30):
        grad, (log_f, _) = grad_fn(z)
        if control == "no_metropolis":  # leapfrog alone: the discretisation error goes uncorrected
            z, _, _ = leapfrog(z, torch.randn(z.shape, generator=g, dtype=F64), grad, grad_fn, step, 5)
            continue
        if control == "wrong_kinetic":  # momenta of the wrong scale for the energy the test uses
            z = _hmc_wrong_momentum(z, log_f, grad, grad_fn, step, g)
            continue
        z, _, accepted = hmc_step(z, log_f, grad, grad_fn, step, 5, g)
    matched = _moments_match(z, n)
    assert matched if control is None else not matched


def _hmc_wrong_momentum(z, log_f, grad, grad_fn, step, g):
    """An HMC step whose momenta are drawn with scale 2 while its energy assumes scale 1: a broken sampler."""
    p = 2 * torch.randn(z.shape, generator=g, dtype=F64)
    z_new, p_new, (log_f_new, _) = leapfrog(z, p, grad, grad_fn, step, 5)
    log_accept = (log_f_new - 0.5 * p_new.square().sum(-1)) - (log_f - 0.5 * p.square().sum(-1))
    accept = torch.rand(log_accept.shape, generator=g, dtype=F64).log() < log_accept
    return torch.where(accept.unsqueeze(-1), z_new, z)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_hmc_rejects_non_finite_proposals(value):
    z = torch.zeros(3, 1, 2, dtype=F64)

    def grad_fn(z_new):
        return torch.zeros_like(z_new), (torch.full(z_new.shape[:-1], value, dtype=F64), torch.zeros_like(z_new))

    z_out, _, accepted = hmc_step(
        z, torch.zeros(3, 1, dtype=F64), torch.zeros_like(z), grad_fn, torch.full((3, 1, 1), 0.1, dtype=F64), 3, gen(0)
    )
    assert not accepted.any() and torch.equal(z_out, z)


# ----------------------------------------------------------------------------------- BDMC
def test_bdmc_sandwiches_the_exact_value_and_tightens(lg):
    n = 24
    z, x = lg.simulate(n, gen(7))
    exact = lg.exact_log_px(x)
    gaps = []
    for steps in (2, 20, 200):
        lower, _, upper, _ = sandwich(
            lg.log_joint(x), lg.prior(n), z, chains=4, steps=steps, leapfrog_steps=5, generator=gen(8)
        )
        # stochastic bounds: on average over images, with a margin of 3 standard errors
        d_up, d_low = upper - exact, exact - lower
        assert d_up.mean() > -3 * d_up.std() / math.sqrt(n), steps
        assert d_low.mean() > -3 * d_low.std() / math.sqrt(n), steps
        gaps.append((upper - lower).mean().item())
    assert gaps[0] > gaps[1] > gaps[2] > 0, gaps
    assert gaps[0] > 1.0 and gaps[2] < 0.25, gaps  # prior to posterior: loose at T = 2, tight at T = 200


def test_reverse_from_wrong_samples_breaks_the_upper_bound(lg):
    """Negative control: reverse AIS started at prior draws (not posterior samples) gives no upper bound."""
    n = 24
    _, x = lg.simulate(n, gen(7))
    wrong = torch.randn(n, lg.d, generator=gen(9), dtype=F64) * 3
    _, _, upper, _ = sandwich(
        lg.log_joint(x), lg.prior(n), wrong, chains=4, steps=2, leapfrog_steps=5, generator=gen(8)
    )
    assert (upper - lg.exact_log_px(x)).mean() < -1.0


# ------------------------------------------------------------------------- the iwae VAE
def _tiny_vae(latent_dims=(2,), hidden=((16,),), pixels=12, seed=0, scale=2.0) -> VAE:
    """A randomly initialised VAE with larger weights than Glorot's, so that the posterior is not the prior."""
    torch.manual_seed(seed)
    model = VAE(ModelConfig(pixels, latent_dims, hidden)).double()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(scale)
    return model.eval()


def _binary_images(model: VAE, n: int, seed: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, model.config.input_dim), 0.4, dtype=F64), generator=gen(seed))


def _quadrature_log_px(model: VAE, x: torch.Tensor, half_width: float = 7.0, cells: int = 701) -> torch.Tensor:
    """log p(x) = log sum_cells p(z_cell) p(x | z_cell) * area, on a grid of the 2-D latent (midpoints)."""
    edges = torch.linspace(-half_width, half_width, cells + 1, dtype=F64)
    mids = (edges[1:] + edges[:-1]) / 2
    area = (edges[1] - edges[0]) ** 2
    z = torch.cartesian_prod(mids, mids)  # (G, 2)
    with torch.no_grad():
        log_prior = Independent(Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)), 1).log_prob(z)
        logits = model.decoder[0](z)  # raw outputs, the Bernoulli logits: (G, D)
        log_lik = torch.stack([Independent(Bernoulli(logits=logits), 1).log_prob(xi) for xi in x], 1)  # (G, B)
    return torch.logsumexp(log_prior[:, None] + log_lik, 0) + area.log()


def test_ais_on_a_2d_bernoulli_vae_matches_quadrature_and_bounds_l_k():
    model = _tiny_vae()
    with torch.no_grad():  # a poor encoder, too narrow (sigma = e^-1.5 times its own): L_k has a real gap
        model.encoder[0].head.bias[2:] -= 1.5
    x = _binary_images(model, 5, seed=10)
    quad = _quadrature_log_px(model, x)
    # the grid is fine enough: halving the cells moves the answer by far less than the tolerance
    assert (quad - _quadrature_log_px(model, x, cells=351)).abs().max() < 1e-3
    result = ais_log_likelihood(model, x, steps=300, chains=128, leapfrog=5, generator=gen(11))
    assert (result.log_likelihood - quad).abs().max() < 0.05, result.log_likelihood - quad
    assert all(p.grad is None for p in model.parameters())  # gradients w.r.t. z only
    # L_5000, a lower bound in expectation: below quadrature beyond its own noise (4 repeats)
    # L_5000, a lower bound in expectation: on average over the images below quadrature and AIS,
    # beyond its own noise (8 repeats give its standard error)
    l_k = torch.stack([log_likelihood(model, x, 5000, generator=gen(s)).double() for s in range(8)])
    se_mean = (l_k.var(0) / 8).sum().sqrt() / len(x)  # of the mean over images of the 8-repeat mean
    assert l_k.mean() <= quad.mean() + 3 * se_mean
    assert l_k.mean() <= result.log_likelihood.mean() + 3 * (se_mean**2 + (result.stderr**2).sum() / len(x) ** 2).sqrt()
    assert (quad - l_k.mean(0)).mean() > 0.05  # this untrained encoder leaves a real gap


def _prior_importance_sampling(model: VAE, x: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) by k draws from the 2-layer prior, z_2 ~ N(0, I), z_1 ~ p(z_1 | z_2), written with
    torch.distributions; returns the estimate and its delta-method standard error, per image."""
    g = gen(seed)
    log_w = []
    with torch.no_grad():
        for _ in range(k // 100_000):
            z2 = torch.randn(100_000, 1, model.config.latent_dims[1], generator=g, dtype=F64)
            loc, log_scale = model.decoder[1].loc_log_scale(z2)
            z1 = loc + log_scale.exp() * torch.randn(loc.shape, generator=g, dtype=F64)
            logits = model.decoder[0](z1)  # raw outputs, the Bernoulli logits: (k, 1, D)
            log_w.append(Independent(Bernoulli(logits=logits), 1).log_prob(x))  # (k, B)
    log_w = torch.cat(log_w)
    estimate = torch.logsumexp(log_w, 0) - math.log(len(log_w))
    w = torch.exp(log_w - estimate)  # w / p-hat
    return estimate, w.std(0) / math.sqrt(len(log_w))


def test_ais_on_two_stochastic_layers_agrees_with_importance_sampling_at_large_k():
    model = _tiny_vae(latent_dims=(2, 2), hidden=((12,), (8,)), pixels=10, seed=2, scale=1.5)
    x = _binary_images(model, 4, seed=15)
    result = ais_log_likelihood(model, x, steps=150, chains=128, leapfrog=5, initial="prior", generator=gen(16))
    reference, se = _prior_importance_sampling(model, x, 400_000, seed=17)
    assert se.max() < 0.01
    # within 3 standard errors of the two estimates combined (AIS's from its chains' weights)
    tolerance = 3 * (se**2 + result.stderr**2).sqrt()
    assert ((result.log_likelihood - reference).abs() < tolerance).all(), (result.log_likelihood - reference, tolerance)
    assert tolerance.max() < 0.25
    # L_5000 with the (untrained) encoder sits below
    assert (log_likelihood(model, x, 5000, generator=gen(18)).double() < reference + 3 * se).all()
    # the target really is the whole chain: a negative control that drops log p(z_1 | z_2) is far off
    log_joint, p0 = vae_target(model, x)

    def without_middle(z):
        from iwae.models.likelihood import bernoulli_log_prob

        return model.prior_module.log_prob(z[..., 2:]) + bernoulli_log_prob(model.decoder[0], z[..., :2], x)

    bad = ais(without_middle, p0, chains=128, steps=100, leapfrog_steps=5, generator=gen(17))
    assert (log_mean_exp_stats(bad.log_weights)[0] - reference).abs().max() > 0.5


def test_vae_target_log_joint_equals_the_models_log_weights():
    """log p(x, z) - log q(z | x) at the encoder's own draws equals VAE.log_weights with the same noise."""
    model = _tiny_vae(latent_dims=(2, 2), hidden=((12,), (8,)), pixels=10, seed=3)
    x = _binary_images(model, 4, seed=18)
    log_joint, q = vae_target(model, x)
    with torch.no_grad():
        z = q.sample(6, gen(19))
        mine = log_joint(z) - q.log_prob(z)
        theirs = model.log_weights(x, 6, generator=gen(19))
    torch.testing.assert_close(mine, theirs)


def test_ais_log_likelihood_chunks_and_reports():
    model = _tiny_vae(seed=4)
    x = _binary_images(model, 7, seed=20)
    per_image = 4 * ais_likelihood._ais_bytes_per_row(model)
    small = ais_log_likelihood(model, x, steps=20, chains=4, leapfrog=2, memory_budget=3 * per_image, generator=gen(21))
    assert small.settings["chunking"]["images"] == 3
    assert small.log_likelihood.shape == small.stderr.shape == small.ess.shape == (7,)
    assert small.step_sizes.shape == (7, 4)
    assert torch.isfinite(small.log_likelihood).all() and (small.log_likelihood < 0).all()
    summary = small.summary()
    assert summary["nll"] == pytest.approx(-small.log_likelihood.mean().item())
    assert summary["n_test"] == 7 and summary["chains"] == 4
    with pytest.raises(ValueError, match="memory_budget"):
        ais_log_likelihood(model, x, chains=4, memory_budget=per_image - 1)
    with pytest.raises(ValueError, match="encoder or prior"):
        ais_log_likelihood(model, x, initial="posterior")
    with pytest.raises(ValueError, match="shape"):
        ais_log_likelihood(model, x[:, :5])


def test_ais_cost_formula_and_timing():
    model = _tiny_vae(seed=5)
    x = _binary_images(model, 3, seed=22)
    cost = ais_cost(model, x, steps=100, chains=4, leapfrog=3)
    assert cost["passes_per_image"] == 4 * (99 * 3 + 1)
    assert cost["l_k_passes_per_image"] == 5000
    assert cost["seconds_per_image"] > 0 and cost["seconds"] == pytest.approx(3 * cost["seconds_per_image"])


def test_bdmc_on_a_tiny_vae_and_its_figure(tmp_path):
    model = _tiny_vae(seed=6)
    rows = bdmc(model, 12, steps_list=(2, 100), chains=8, leapfrog=3, initial="prior", generator=gen(23))
    assert [r["steps"] for r in rows] == [2, 100]
    assert rows[0]["gap"] > rows[1]["gap"]
    for r in rows:
        assert r["gap"] == pytest.approx(r["upper"] - r["lower"])
        assert r["gap"] > -3 * r["gap_stderr"]
    from iwae.figures import plot_bdmc

    plot_bdmc(rows, tmp_path / "bdmc.png")
    assert (tmp_path / "bdmc.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="n >= 1"):
        bdmc(model, 0)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_mixture_priors_sample_their_own_density_and_run(prior):
    torch.manual_seed(7)
    model = VAE(ModelConfig(12, (2,), ((16,),), prior=prior, prior_components=3)).double().eval()
    draws = ais_vae._sample_prior_top(model, (20000,), gen(24), next(model.parameters()))
    dist = model.prior_module()  # torch's own mixture: mean and variance in closed form
    with torch.no_grad():
        se = (dist.variance / 20000).sqrt()
        assert ((draws.mean(0) - dist.mean).abs() < 4 * se).all()
        assert ((draws.var(0) - dist.variance).abs() < 0.05 * dist.variance + 4 * se).all()
    x = _binary_images(model, 3, seed=25)
    quad = _quadrature_log_px_with_prior(model, x)
    result = ais_log_likelihood(model, x, steps=60, chains=32, leapfrog=5, initial="prior", generator=gen(26))
    assert ((result.log_likelihood - quad).abs() < 0.05 + 3 * result.stderr).all()
    assert all(p.requires_grad for p in model.parameters())  # restored after the run


def _quadrature_log_px_with_prior(model: VAE, x: torch.Tensor, half_width: float = 7.0, cells: int = 401):
    edges = torch.linspace(-half_width, half_width, cells + 1, dtype=F64)
    mids = (edges[1:] + edges[:-1]) / 2
    z = torch.cartesian_prod(mids, mids)
    with torch.no_grad():
        log_prior = model.prior_module().log_prob(z)  # torch's MixtureSameFamily density
        logits = model.decoder[0](z)  # raw outputs: the Bernoulli logits
        log_lik = torch.stack([Independent(Bernoulli(logits=logits), 1).log_prob(xi) for xi in x], 1)
    return torch.logsumexp(log_prior[:, None] + log_lik, 0) + ((edges[1] - edges[0]) ** 2).log()
