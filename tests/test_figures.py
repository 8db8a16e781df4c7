"""Tests for the figures (iwae.plots) and the ``iwae sample`` / ``iwae plot`` commands: pixel sizes,
file formats, one-line errors, and the exact bias of the toy figure against Monte Carlo."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from iwae import plots
from iwae.models import VAE, ModelConfig
from iwae.train import TrainConfig, train

from cli_helpers import assert_one_line_error, invoke


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) in pixels of a non-blank PNG."""
    assert path.is_file() and path.stat().st_size > 0
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0, f"{path} is blank"
    return img.shape[:2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data_dir) -> dict[str, Path]:
    """Tiny 1-epoch runs: VAE and IWAE with a 2-D latent, a 2-layer VampPrior run."""
    root = tmp_path_factory.mktemp("runs")
    common = dict(epochs=1, train_subset=60, data_dir=str(shared_data_dir), valid_k=2, schedule="constant")
    settings = {
        "vae2d": dict(objective="vae", k=1, latent_dims=[2], hidden_dims=[[20]]),
        "iwae2d": dict(objective="iwae", k=5, latent_dims=[2], hidden_dims=[[20]]),
        "vamp2l": dict(objective="iwae", k=2, layers=2, latent_dims=[6, 4], hidden_dims=[[20], [10]],
                       prior="vamp", components=9),
    }
    return {name: train(TrainConfig(**common, **s, out=str(root / name)), progress=False)
            for name, s in settings.items()}


# ----------------------------------------------------------------------------- toy bias
@pytest.mark.parametrize("a, b, p", [(0.1, 2.0, 0.9), (0.1, 2.0, 0.5), (1.0, 3.0, 0.2)])
def test_toy_bias_matches_monte_carlo(a, b, p):
    rng = np.random.default_rng(0)
    for k in (1, 2, 5):
        x = np.where(rng.random((400_000, k)) < p, a, b)
        log_mean = np.log(x.mean(1))
        mc = log_mean.mean() - math.log(p * a + (1 - p) * b)
        stderr = log_mean.std() / math.sqrt(len(log_mean))
        assert abs(plots.toy_bias(k, a, b, p) - mc) < 5 * stderr + 1e-9, (k, plots.toy_bias(k, a, b, p), mc)


def test_toy_bias_is_negative_and_rises_to_zero():
    for a, b, p in plots.TOY_SETTINGS:
        biases = [plots.toy_bias(k, a, b, p) for k in plots.TOY_KS]
        assert all(v <= 1e-12 for v in biases)
        assert all(x < y for x, y in zip(biases, biases[1:])), biases
        assert abs(biases[-1]) < 0.01
    assert plots.toy_bias(1, 0.1, 2.0, 0.9) == pytest.approx(
        0.9 * math.log(0.1) + 0.1 * math.log(2.0) - math.log(0.9 * 0.1 + 0.1 * 2.0))
    assert plots.toy_bias(7, 0.1, 2.0, 1.0) == pytest.approx(0.0, abs=1e-12)  # a constant has no bias


def test_toy_bias_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be >= 1"):
        plots.toy_bias(0)
    with pytest.raises(ValueError, match="must be > 0"):
        plots.toy_bias(3, a=0.0)


# ----------------------------------------------------------------------------- figure functions
def test_sample_images_shapes_and_binary():
    model = VAE(ModelConfig(latent_dims=(6, 4), hidden_dims=((20,), (10,))))
    means = plots.sample_images(model, 8, seed=1)
    assert means.shape == (8, 784) and ((means > 0) & (means < 1)).all()
    assert torch.equal(means, plots.sample_images(model, 8, seed=1))
    binary = plots.sample_images(model, 8, seed=1, probabilities=False)
    assert set(binary.unique().tolist()) <= {0.0, 1.0}


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
    a = plots.sample_images(model, 8, seed=1, probabilities=False)
    b = plots.sample_images(model, 8, seed=1, probabilities=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert cuda_calls == []
    assert torch.equal(a, b)  # same seed, same samples
    assert not torch.equal(plots.sample_images(model, 8, seed=1), plots.sample_images(model, 8, seed=2))


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
        z = plots._sample_prior(dist, 200_000, torch.Generator().manual_seed(0))
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


@pytest.mark.parametrize("ext, magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_vector_formats_by_extension(tmp_path, ext, magic):
    path = plots.plot_toy(tmp_path / f"toy.{ext}")
    assert path.read_bytes().startswith(magic)
    assert plots.plot_toy(tmp_path / "toy").suffix == ".png"
    with pytest.raises(ValueError, match="unknown figure format"):
        plots.plot_toy(tmp_path / "toy.bmp")


def test_pseudo_inputs_need_a_vamp_prior(tmp_path):
    with pytest.raises(ValueError, match="no pseudo-inputs"):
        plots.plot_pseudo_inputs(VAE(ModelConfig(latent_dims=(2,), hidden_dims=((10,),))), tmp_path / "u.png")


# ----------------------------------------------------------------------------- commands
def test_sample_command(runs, tmp_path):
    result = invoke("sample", runs["iwae2d"], "--n", 16, "--out", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "s.png") == (550, 500)
    result = invoke("sample", runs["vamp2l"], "--binary")  # 2 layers, top-down
    assert result.exit_code == 0, result.output
    assert image_size(runs["vamp2l"] / "samples.png") == (550, 500)
    result = invoke("sample", runs["vamp2l"], "--pseudo-inputs", "--out", tmp_path / "u.pdf")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "u.pdf").read_bytes().startswith(b"%PDF")


def test_plot_all_two_runs_side_by_side(runs, tmp_path):
    result = invoke("plot", runs["vae2d"], runs["iwae2d"], "--what", "all", "--points", 300, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    sizes = {name: image_size(tmp_path / f"{name}.png")
             for name in ("samples", "reconstructions", "latent", "activity", "curves")}
    assert sizes == {"samples": (550, 1000), "reconstructions": (300, 1600), "latent": (500, 1100),
                     "activity": (400, 500), "curves": (450, 700)}


def test_plot_one_run_latent_and_activity_of_two_layers(runs, tmp_path):
    result = invoke("plot", runs["vamp2l"], "--what", "latent", "--points", 200, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "latent.png") == (500, 600)
    result = invoke("plot", runs["vamp2l"], "--what", "activity", "--format", "svg", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "activity.svg").read_bytes().startswith(b"<?xml")


def test_plot_toy_command(tmp_path):
    result = invoke("plot", "toy", "--out", tmp_path / "toy.png")
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "toy.png") == (450, 700)


def test_command_errors_are_one_line(runs, tmp_path):
    assert_one_line_error(invoke("sample", tmp_path / "missing"), "not found")
    assert_one_line_error(invoke("plot", tmp_path / "missing", "--out", tmp_path), "not found")
    assert_one_line_error(invoke("sample", runs["vae2d"], "--pseudo-inputs", "--out", tmp_path / "u.png"),
                          "no pseudo-inputs")
    assert_one_line_error(invoke("plot", runs["vae2d"], "--what", "everything", "--out", tmp_path), "--what")
    assert_one_line_error(invoke("plot", "toy", runs["vae2d"], "--out", tmp_path / "t.png"), "toy")
