"""Tests that the latent figure plots what its labels say: E_q[z_L | x], for 1 and 2 stochastic layers.

With 2 layers, E_q[z_2 | x] = E_{z_1 ~ q(z_1 | x)}[mean of q(z_2 | z_1)], which is not the mean of
q(z_2 | E[z_1 | x]) when the encoder is nonlinear; the figure plots a Monte Carlo estimate of the
first and says so in its title.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from iwae import plots
from iwae.evaluate import active_units
from iwae.models import VAE, ModelConfig


def _model(layers: int) -> VAE:
    """A small model whose q(z_1 | x) is wide (scale e^1), so that q(z_2 | z_1)'s tanh layers see
    z_1 far from its mean and E[mean of q(z_2 | z_1)] differs from the mean at E[z_1]."""
    torch.manual_seed(0)
    sizes = ((3,), ((16,),)) if layers == 1 else ((3, 2), ((16,), (16,)))
    model = VAE(ModelConfig(20, *sizes))
    with torch.no_grad():
        head = model.encoder[0].head
        head.bias[head.bias.shape[0] // 2:] = 1.0  # log-scale of q(z_1 | x)
        for layer in model.encoder[1:]:
            for p in layer.parameters():
                p.mul_(3.0)  # saturating tanh: a strongly nonlinear q(z_2 | z_1)
    return model


def _x(n: int = 6) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 20), 0.4), generator=torch.Generator().manual_seed(1))


def test_one_layer_means_are_q_means():
    """One layer: the plotted points are q(z_1 | x)'s mean, exactly."""
    model, x = _model(1), _x()
    torch.testing.assert_close(plots._posterior_means(model, x), model.encode(x).mean, rtol=0, atol=0)


def test_two_layer_means_estimate_the_posterior_expectation():
    """Two layers: the plotted E_q[z_2 | x] (100 draws of z_1) agrees, within 5 of its Monte Carlo
    standard errors on every component, with an independent estimate from the definition,
    E_{z_1 ~ q(z_1|x)}[loc of q(z_2 | z_1)] over 20,000 draws from torch.distributions. Negative
    control: the mean of q(z_2 | E[z_1 | x]) (what the figure plotted before) is flagged by the
    same statistic."""
    model, x = _model(2), _x()
    got = plots._posterior_means(model, x)  # (N, 2)
    with torch.no_grad():
        loc, log_scale = model.encoder[0].loc_log_scale(x)
        z1 = Normal(loc, log_scale.exp()).sample((20000,))  # (S, N, 3), torch's global generator
        loc2 = model.encoder[1].loc_log_scale(z1)[0]  # (S, N, 2)
        want = loc2.mean(0)
        se = loc2.std(0) / math.sqrt(plots.LATENT_SAMPLES)  # of the plotted 100-draw average
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
    means = plots._posterior_means(model, x)
    units = active_units(model, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(means.var(0, unbiased=False), units.variances[-1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("layers", [1, 2])
def test_latent_figure_plots_the_means_it_labels(tmp_path, monkeypatch, layers):
    """plot_latent's scatter holds exactly _posterior_means' points (the 2-D latent's two units);
    with 2 layers its title says the expectation is a Monte Carlo average over draws of z_1 and
    its axes name units of z_2; with 1 layer the title claims no such average."""
    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    model, x = _model(layers), _x(30)
    plots.plot_latent(model, x, tmp_path / "latent.png")
    assert (tmp_path / "latent.png").is_file()
    ax = figures[0].axes[0]
    points = ax.collections[0].get_offsets()
    means = plots._posterior_means(model, x)
    dims = [0, 1] if means.shape[1] == 2 else None
    if dims is None:  # three units: the two most active ones, sorted
        dims = sorted(torch.argsort(means.var(0, unbiased=False), descending=True)[:2].tolist())
    np.testing.assert_allclose(np.asarray(points), means[:, dims].numpy(), rtol=0, atol=1e-6)
    title = ax.get_title()
    if layers == 2:
        assert f"averaged over {plots.LATENT_SAMPLES} draws of z_1" in title, title
        assert ax.get_xlabel().startswith("E[z_2[") and ax.get_ylabel().startswith("E[z_2["), ax.get_xlabel()
    else:
        assert "averaged" not in title, title
        assert ax.get_xlabel().startswith("E[z_"), ax.get_xlabel()
