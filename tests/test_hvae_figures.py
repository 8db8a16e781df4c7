"""The figures per stochastic layer, for the HVAE (and Burda et al.'s two-layer chain), on non-square images.

- sample_layer_grid holds z_L fixed along a row: with a decoder that ignores z_1 a row is one image repeated,
  with the real decoder it is not (the negative control);
- reconstruct(x, layer=2) decodes q(z_2 | x)'s mean with z_1 at p(z_1 | z_2)'s mean, computed here from the
  modules; layer 1 is another image;
- posterior_means of each layer are the HVAE's own (z_2's exact, z_1's averaged over z_2) and their variances
  are active_units' A_u, layer by layer, with the same seed;
- every figure of a 28 x 20 (Frey-shaped) HVAE draws 28 x 20 tiles, a row of panels per layer, at the
  promised pixel size; ``iwae plot``, ``iwae sample`` and their q_EW refusal work on an HVAE run of
  synthetic Frey faces trained from the command line.
"""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from test_data_vampprior import write_frey

from iwae import analysis, figures
from iwae.data import registry
from iwae.models import HVAE, VAE, ModelConfig

FREY = (28, 20)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hvae(shape=FREY, **fields) -> HVAE:
    torch.manual_seed(0)
    d = shape[0] * shape[1]
    config = ModelConfig.hvae(d, latent_dims=(3, 2), hidden_dims=((8, 8), (8,)), image_shape=shape, **fields)
    return HVAE(config).eval()


def x_of(n: int, d: int = 560) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, d), 0.4), generator=gen(1))


def image_size(path) -> tuple[int, int]:
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0, f"{path} is blank"
    return img.shape[:2]


# ----------------------------------------------------------------------------- what the figures draw
def test_a_row_of_the_layer_grid_shares_its_z2():
    model = hvae()
    grid = analysis.sample_layer_grid(model, rows=3, cols=4, seed=2).reshape(3, 4, -1)
    assert not torch.allclose(grid[:, 0], grid[:, 1])  # z_1 changes along a row: so do the images
    with torch.no_grad():  # a decoder that ignores z_1: its branch's output and the join's share of it zeroed
        for p in model.decoder[0].trunk.branch_a.parameters():
            p.zero_()
    grid = analysis.sample_layer_grid(model, rows=3, cols=4, seed=2).reshape(3, 4, -1)
    torch.testing.assert_close(grid, grid[:, :1].expand_as(grid), rtol=0, atol=1e-6)  # one image per row
    assert not torch.allclose(grid[0, 0], grid[1, 0])  # and the rows differ: each has its own z_2
    flat = analysis.sample_layer_grid(VAE(ModelConfig(560, (2,), ((8,),))), rows=2, cols=3)
    assert flat.shape == (6, 560) and not torch.allclose(flat[0], flat[1])  # one layer: every image its own z


def test_reconstruction_from_the_top_layer_alone():
    model, x = hvae(), x_of(5)
    with torch.no_grad():
        loc2, _ = model.encoder[0].loc_log_scale(x)  # q(z_2 | x)'s mean
        loc1, _ = model.decoder[1].loc_log_scale(loc2)  # p(z_1 | z_2)'s mean
        want = torch.sigmoid(model.decoder[0](loc1, loc2))  # the Bernoulli mean of p(x | z_1, z_2)
        q1, _ = model.encoder[1].loc_log_scale(x, loc2)  # q(z_1 | x, z_2)'s mean
        both = torch.sigmoid(model.decoder[0](q1, loc2))
    torch.testing.assert_close(analysis.reconstruct(model, x, layer=2), want)
    torch.testing.assert_close(analysis.reconstruct(model, x, layer=1), both)
    assert not torch.allclose(want, both, atol=1e-4)
    chain = VAE(ModelConfig(560, (3, 2), ((8,), (8,)))).eval()
    with torch.no_grad():
        z1 = chain.encoder[0].loc_log_scale(x)[0]
        z2 = chain.encoder[1].loc_log_scale(z1)[0]
        want = chain.decode(chain.decoder[1].loc_log_scale(z2)[0]).mean
    torch.testing.assert_close(analysis.reconstruct(chain, x, layer=2), want)
    with pytest.raises(ValueError, match="layer must be one of 1..2"):
        analysis.reconstruct(model, x, layer=3)


def test_each_layer_s_means_are_the_model_s_and_give_active_units():
    model, x = hvae(), x_of(40)
    top = analysis.posterior_means(model, x)
    torch.testing.assert_close(top, model.top_posterior(x).mean.detach(), rtol=0, atol=0)  # z_2: exact
    torch.testing.assert_close(analysis.posterior_means(model, x, layer=2), top, rtol=0, atol=0)
    z1 = analysis.posterior_means(model, x, layer=1, seed=3)
    torch.testing.assert_close(z1, model.posterior_means(x, 100, gen(3))[0].detach(), rtol=0, atol=0)
    units = analysis.active_units(model, x, generator=gen(3))
    for layer, means in ((1, z1), (2, top)):
        torch.testing.assert_close(means.var(0, unbiased=False), units.variances[layer - 1], rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- the figures, non-square
def test_every_figure_of_a_frey_shaped_hvae_draws_28_by_20_tiles(tmp_path, monkeypatch):
    from iwae.figures import images, latent

    drawn = []
    for module in (images, latent):
        real = module.save
        monkeypatch.setattr(module, "save", lambda fig, path, real=real: (drawn.append(fig), real(fig, path))[1])
    model, x = hvae(prior="vamp", prior_components=6), x_of(30)
    assert image_size(figures.plot_samples(model, tmp_path / "s.png", n=16)) == (1100, 500)
    top, per_layer = (ax.images[0].get_array().shape for ax in drawn[-1].axes[:2])
    assert top == (4 * 29 + 1, 4 * 21 + 1) and per_layer == (8 * 29 + 1, 8 * 21 + 1)  # 28 x 20, padded by 1
    assert "each row one z_2 ~ p(z_2)" in drawn[-1].axes[1].get_title()
    assert image_size(figures.plot_reconstructions(model, x, tmp_path / "r.png", n=6)) == (450, 800)
    rows = [ax for ax in drawn[-1].axes if ax.images]
    assert [ax.images[0].get_array().shape for ax in rows] == [(29 + 1, 6 * 21 + 1)] * 3
    assert rows[2].get_ylabel() == "from z_2"
    assert image_size(figures.plot_latent(model, x, tmp_path / "l.png")) == (1000, 600)
    titles = [ax.get_title() for ax in drawn[-1].axes]
    assert "averaged" not in titles[0] and "averaged over 100 draws of z_2" in titles[1]
    assert drawn[-1].axes[0].get_xlabel().startswith("E[z_2[") and drawn[-1].axes[1].get_xlabel().startswith("E[z_1[")
    assert image_size(figures.plot_activity(model, x, tmp_path / "a.png")) == (400, 1000)
    assert image_size(figures.plot_pseudo_inputs(model, tmp_path / "u.png")) == (550, 500)
    assert drawn[-1].axes[0].images[0].get_array().shape == (
        2 * 29 + 1,
        3 * 21 + 1,
    )  # 6 pseudo-inputs, 28 x 20, 3 a row
    # negative control: drawn square, 560 pixels are no image
    with pytest.raises(ValueError, match="cannot draw inputs of 560 pixels as square images"):
        figures.plot_samples(HVAE(ModelConfig.hvae(560, latent_dims=(3, 2), hidden_dims=((8, 8), (8,)))), tmp_path)


def test_the_commands_on_an_hvae_run_of_frey_faces(tmp_path, monkeypatch):
    """Synthetic Frey faces (28 x 20) from the data directory, an HVAE trained from the command line with the
    discretized logistic, then iwae plot and iwae sample; the q_EW figure is refused in one line."""
    monkeypatch.setenv("IWAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "FREY_URLS", ())
    write_frey(tmp_path / "data" / "frey" / registry.FREY_FILE, n=40, monkeypatch=monkeypatch)
    monkeypatch.setattr(registry, "FREY_SPLIT", (24, 8, 8))
    run = tmp_path / "run"
    args = ("--dataset", "frey", "--data-dir", tmp_path / "data", "--model", "hvae", "--likelihood", "logistic256")
    sizes = ("--latent-dims", "3,2", "--hidden-dims", "8,8/8", "--network", "gated", "--prior", "vamp")
    more = ("--components", 4, "--epochs", 2, "--batch-size", 8, "--early-stopping", 1, "--quiet", "--out", run)
    result = invoke("train", *args, *sizes, *more)
    assert result.exit_code == 0, result.output
    result = invoke("plot", run, "--what", "all", "--points", 8, "--out", tmp_path / "fig")
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "fig" / "samples.png") == (1100, 500)
    assert image_size(tmp_path / "fig" / "reconstructions.png") == (450, 800)
    assert image_size(tmp_path / "fig" / "latent.png") == (1000, 600)  # a row per layer
    assert invoke("sample", run, "--pseudo-inputs").exit_code == 0
    assert_one_line_error(invoke("qew", run), "the q_EW figure needs a model with one stochastic layer")
