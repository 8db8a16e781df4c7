"""Tests of the numbers the figures draw (iwae.analysis): ancestral samples, reconstructions, posterior
means E_q[z_L | x], and the exact bias of the toy figure, each against an independent computation.

With 2 layers, E_q[z_2 | x] = E_{z_1 ~ q(z_1 | x)}[mean of q(z_2 | z_1)], which is not the mean of
q(z_2 | E[z_1 | x]) when the encoder is nonlinear; the latent figure plots a Monte Carlo estimate of
the first and says so in its title (tests/test_figures.py checks the title).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from iwae.analysis import LATENT_SAMPLES, posterior_means, reconstruct, sample_images, toy_bias
from iwae.analysis.latent import _sample_prior
from iwae.evaluate import active_units
from iwae.figures import TOY_KS, TOY_SETTINGS
from iwae.models import VAE, ModelConfig


# ----------------------------------------------------------------------------- toy bias
@pytest.mark.parametrize("a, b, p", [(0.1, 2.0, 0.9), (0.1, 2.0, 0.5), (1.0, 3.0, 0.2)])
def test_toy_bias_matches_monte_carlo(a, b, p):
    rng = np.random.default_rng(0)
    for k in (1, 2, 5):
        x = np.where(rng.random((400_000, k)) < p, a, b)
        log_mean = np.log(x.mean(1))
        mc = log_mean.mean() - math.log(p * a + (1 - p) * b)
        stderr = log_mean.std() / math.sqrt(len(log_mean))
        assert abs(toy_bias(k, a, b, p) - mc) < 5 * stderr + 1e-9, (k, toy_bias(k, a, b, p), mc)


def test_toy_bias_is_negative_and_rises_to_zero():
    for a, b, p in TOY_SETTINGS:
        biases = [toy_bias(k, a, b, p) for k in TOY_KS]
        assert all(v <= 1e-12 for v in biases)
        assert all(x < y for x, y in zip(biases, biases[1:])), biases
        assert abs(biases[-1]) < 0.01
    assert toy_bias(1, 0.1, 2.0, 0.9) == pytest.approx(
        0.9 * math.log(0.1) + 0.1 * math.log(2.0) - math.log(0.9 * 0.1 + 0.1 * 2.0)
    )
    assert toy_bias(7, 0.1, 2.0, 1.0) == pytest.approx(0.0, abs=1e-12)  # a constant has no bias


def test_toy_bias_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be >= 1"):
        toy_bias(0)
    with pytest.raises(ValueError, match="must be > 0"):
        toy_bias(3, a=0.0)


# ----------------------------------------------------------------------------- figure functions
def _two_layer_mog_model() -> VAE:
    """2 stochastic layers under a well-separated mixture prior, with a wide p(z_1 | z_2) and a steep
    decoder: sampling z_2 from N(0, I) instead of the prior, or taking z_1 at the mean of p(z_1 | z_2),
    changes the average image by many standard errors."""
    torch.manual_seed(0)
    model = VAE(
        ModelConfig(input_dim=20, latent_dims=(3, 2), hidden_dims=((16,), (16,)), prior="mog", prior_components=3)
    ).eval()
    with torch.no_grad():
        model.prior_module.loc.mul_(3.0)
        model.decoder[1].head.bias[3:] = 0.5  # log-scale of p(z_1 | z_2)
        model.decoder[0].head.weight.mul_(3.0)
    return model


def test_sample_images_follow_the_ancestral_distribution():
    """The average of 20,000 sampled images (Bernoulli means, and binary draws) against an independent
    ancestral sampler written from the definition with torch.distributions (global stream):
    z_2 ~ p(z_2), z_1 ~ Normal(loc, scale) of p(z_1 | z_2), x ~ Bernoulli(decoder mean). Every pixel
    must agree within 5 standard errors of the difference; two wrong samplers (z_2 from N(0, I), z_1
    at the mean of p(z_1 | z_2)) must not."""
    model, n = _two_layer_mog_model(), 20_000

    def ancestral(z2, sample_z1=True):
        loc, log_scale = model.decoder[1].loc_log_scale(z2)
        z1 = Normal(loc, log_scale.exp()).sample() if sample_z1 else loc
        return model.decode(z1).mean  # (n, 20)

    torch.manual_seed(1)
    with torch.no_grad():
        want = ancestral(model.prior.sample((n,)))
        wrong_prior = ancestral(torch.randn(n, 2))
        z1_at_mean = ancestral(model.prior.sample((n,)), sample_z1=False)

    def worst_z(got):  # the largest |difference of pixel means| / its standard error
        se = (got.var(0) / n + want.var(0) / n).sqrt()
        return ((got.mean(0) - want.mean(0)).abs() / se).max().item()

    means = sample_images(model, n, seed=0)
    binary = sample_images(model, n, seed=0, probabilities=False)
    assert means.shape == binary.shape == (n, 20)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert worst_z(means) < 5 and worst_z(binary) < 5, (worst_z(means), worst_z(binary))
    assert worst_z(wrong_prior) > 5 and worst_z(z1_at_mean) > 5, (worst_z(wrong_prior), worst_z(z1_at_mean))
    assert torch.equal(means, sample_images(model, n, seed=0))  # seeded


def test_sample_images_leaves_the_global_random_state_alone(monkeypatch):
    """Sampling draws from a generator of its own: the CPU stream is unchanged and no CUDA device is
    reseeded (torch.manual_seed would call torch.cuda.manual_seed_all; recorded here by a mock)."""
    cuda_calls = []
    for name in ("manual_seed", "manual_seed_all", "set_rng_state", "set_rng_state_all", "seed", "seed_all"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _name=name, **k: cuda_calls.append(_name))
    model = VAE(ModelConfig(latent_dims=(6, 4), hidden_dims=((20,), (10,)), prior="mog", prior_components=3))
    torch.manual_seed(123)
    cuda_calls.clear()
    before = torch.get_rng_state()
    a = sample_images(model, 8, seed=1, probabilities=False)
    b = sample_images(model, 8, seed=1, probabilities=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert cuda_calls == []
    assert torch.equal(a, b)  # same seed, same samples
    assert not torch.equal(sample_images(model, 8, seed=1), sample_images(model, 8, seed=2))


@pytest.mark.parametrize("prior, components", [("normal", 1), ("mog", 3), ("vamp", 4)])
def test_prior_draws_from_a_generator_follow_the_prior(prior, components):
    """The generator-driven prior sampler against the prior's own mean and variance (mixture: sum_c pi_c
    mu_c and sum_c pi_c (sigma_c^2 + mu_c^2) - mean^2), 200,000 draws; a mixture sampled from one
    component only must fail the same check."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dims=(3,), hidden_dims=((10,),), prior=prior, prior_components=components))
    with torch.no_grad():
        if prior == "mog":
            model.prior_module.loc.mul_(3.0)
        dist = model.prior
        z = _sample_prior(dist, 200_000, torch.Generator().manual_seed(0))
    assert z.shape == (200_000, 3)
    if isinstance(dist, torch.distributions.MixtureSameFamily):
        pi = dist.mixture_distribution.probs[:, None]
        mu, sigma = dist.component_distribution.base_dist.loc, dist.component_distribution.base_dist.scale
        mean = (pi * mu).sum(0)
        var = (pi * (sigma.square() + mu.square())).sum(0) - mean.square()
        if prior == "mog":  # negative control: one component's draws are not the mixture's
            one = mu[0] + sigma[0] * torch.randn(200_000, 3, generator=torch.Generator().manual_seed(1))
            assert ((one.mean(0) - mean).abs() > 5 * (var / 200_000).sqrt()).any()
    else:
        mean, var = torch.zeros(3), torch.ones(3)
    assert ((z.mean(0) - mean).abs() < 5 * (var / 200_000).sqrt()).all(), (z.mean(0), mean)
    torch.testing.assert_close(z.var(0), var, rtol=0.03, atol=1e-3)


# ----------------------------------------------------------------------------- posterior means
def _model(layers: int) -> VAE:
    """A small model whose q(z_1 | x) is wide (scale e^1), so that q(z_2 | z_1)'s tanh layers see
    z_1 far from its mean and E[mean of q(z_2 | z_1)] differs from the mean at E[z_1]."""
    torch.manual_seed(0)
    sizes = ((3,), ((16,),)) if layers == 1 else ((3, 2), ((16,), (16,)))
    model = VAE(ModelConfig(20, *sizes))
    with torch.no_grad():
        head = model.encoder[0].head
        head.bias[head.bias.shape[0] // 2 :] = 1.0  # log-scale of q(z_1 | x)
        for layer in model.encoder[1:]:
            for p in layer.parameters():
                p.mul_(3.0)  # saturating tanh: a strongly nonlinear q(z_2 | z_1)
    return model


def _x(n: int = 6) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 20), 0.4), generator=torch.Generator().manual_seed(1))


def test_one_layer_means_are_q_means():
    """One layer: the plotted points are q(z_1 | x)'s mean, exactly."""
    model, x = _model(1), _x()
    torch.testing.assert_close(posterior_means(model, x), model.encode(x).mean, rtol=0, atol=0)


def test_two_layer_means_estimate_the_posterior_expectation():
    """Two layers: the plotted E_q[z_2 | x] (100 draws of z_1) agrees, within 5 of its Monte Carlo
    standard errors on every component, with an independent estimate from the definition,
    E_{z_1 ~ q(z_1|x)}[loc of q(z_2 | z_1)] over 20,000 draws from torch.distributions. Negative
    control: the mean of q(z_2 | E[z_1 | x]) (what the figure plotted before) is flagged by the
    same statistic."""
    model, x = _model(2), _x()
    got = posterior_means(model, x)  # (N, 2)
    with torch.no_grad():
        loc, log_scale = model.encoder[0].loc_log_scale(x)
        z1 = Normal(loc, log_scale.exp()).sample((20000,))  # (S, N, 3), torch's global generator
        loc2 = model.encoder[1].loc_log_scale(z1)[0]  # (S, N, 2)
        want = loc2.mean(0)
        se = loc2.std(0) / math.sqrt(LATENT_SAMPLES)  # of the plotted 100-draw average
        at_mean = model.encode(x)[1].mean
    assert got.shape == want.shape == (6, 2)
    z = ((got - want).abs() / se).max().item()
    assert z < 5, f"the plotted means differ from E_q[z_2 | x] by {z:.1f} standard errors"
    z_old = ((at_mean - want).abs() / se).max().item()
    assert z_old > 5, f"the model is too linear for the test: the mean at E[z_1] is within {z_old:.1f} se"


def test_two_layer_means_are_those_of_active_units():
    """The plotted points' variance over x is active_units' A_u of the top layer with the same
    seed: the figure's axis labels (A_u) and its points use the same estimator and draws."""
    model, x = _model(2), _x(40)
    means = posterior_means(model, x)
    units = active_units(model, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(means.var(0, unbiased=False), units.variances[-1], rtol=1e-6, atol=1e-8)


def test_reconstructions_decode_the_posterior_mean():
    """reconstruct(x) is the Bernoulli mean of p(x | z_1 = E_q[z_1 | x]), from the public API: one layer,
    decode(encode(x).mean).mean; two layers, the decoder of x at the mean of encode(x)'s first layer,
    q(z_1 | x). A reconstruction through a sampled z_1 is not it."""
    x = _x()
    one = _model(1).eval()
    with torch.no_grad():
        want = one.decode(one.encode(x).mean).mean
        sampled = one.decode(one.encode(x).sample()).mean
    torch.testing.assert_close(reconstruct(one, x), want, rtol=0, atol=0)
    assert not torch.allclose(reconstruct(one, x), sampled, atol=1e-3)
    two = _model(2).eval()
    with torch.no_grad():
        want = two.decode(two.encode(x)[0].mean).mean
    torch.testing.assert_close(reconstruct(two, x), want, rtol=0, atol=0)
