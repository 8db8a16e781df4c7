"""The code that once assumed a Bernoulli decoder, with the gaussian and logistic256 likelihoods:
ELBO surgery's reconstruction term, the AIS target, BDMC's simulated data, ancestral samples and
reconstructions, and evaluate's bits per dimension. Each against the model's own log-weights or
the likelihood's support; the Bernoulli model is the negative control where one makes sense.

Data-free: tiny models on random 8-bit values."""

from __future__ import annotations

import math

import pytest
import torch

from iwae import analysis
from iwae.ais.bdmc import _simulate
from iwae.ais.vae import vae_target
from iwae.data import Splits
from iwae.evaluate import nll_in_bits
from iwae.models import VAE, ModelConfig
from iwae.models.likelihoods import on_8bit_grid

D = 10
NAMES = pytest.mark.parametrize("name", ["gaussian", "logistic256"])


def _model(name: str, latent: int = 2) -> VAE:
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_dim=D, latent_dims=(latent,), hidden_dims=((8,),), likelihood=name)).double()
    model.init_output_bias(torch.full((D,), 0.4))
    return model.eval()


def _x(n: int = 5) -> torch.Tensor:
    return (torch.randint(0, 256, (n, D), generator=torch.Generator().manual_seed(1)) / 255).double()


@NAMES
def test_elbo_surgery_reconstruction_is_the_likelihoods(name):
    """elbo_surgery's ELBO (reconstruction - average KL, on the same eps as log_weights with one seed) is the
    mean log-weight: its reconstruction term is the model's likelihood, not a Bernoulli's."""
    model, x = _model(name), _x()
    terms = analysis.elbo_surgery(model, x, num_samples=7, generator=torch.Generator().manual_seed(3))
    log_w = model.log_weights(x, 7, torch.Generator().manual_seed(3))
    assert terms["elbo"] == pytest.approx(log_w.mean().item(), rel=1e-9, abs=1e-9)


@NAMES
def test_ais_target_is_the_models_log_joint(name):
    """The AIS target log p(x, z) equals the model's log_joint at the same z (the likelihood's log_prob)."""
    model, x = _model(name), _x()
    log_joint, _ = vae_target(model, x)
    z = torch.randn(4, x.shape[0], 2, dtype=torch.float64)
    torch.testing.assert_close(log_joint(z), model.log_joint(x, [z])[0])


def test_bdmc_simulates_from_the_likelihood():
    """BDMC's simulated images come from the model's likelihood: 8-bit grey levels for logistic256 (not only
    0 and 1), binary for Bernoulli (the negative control)."""
    x = _simulate(_model("logistic256"), 50, torch.Generator().manual_seed(0))[1]
    assert on_8bit_grid(x) and ((x > 0) & (x < 1)).any()
    xb = _simulate(_model("bernoulli"), 50, torch.Generator().manual_seed(0))[1]
    assert set(xb.unique().tolist()) <= {0.0, 1.0}


@NAMES
def test_samples_and_reconstructions_are_the_likelihoods(name):
    """sample_images' probabilities are E[x | z] of the likelihood (in [0, 1] for logistic256), its draws are the
    likelihood's samples (on the 8-bit grid for logistic256); reconstruct is the likelihood's mean at E_q[z]."""
    model, x = _model(name), _x()
    draws = analysis.sample_images(model, 32, seed=0, probabilities=False).double()
    means = analysis.sample_images(model, 32, seed=0, probabilities=True).double()
    assert draws.shape == means.shape == (32, D)
    if name == "logistic256":
        assert on_8bit_grid(draws) and ((means >= 0) & (means <= 1)).all()
    assert not set(draws.unique().tolist()) <= {0.0, 1.0}
    loc = model.encode(x).mean
    torch.testing.assert_close(
        analysis.reconstruct(model, x).double(), model.likelihood.mean(model.decoder_output(loc))
    )


def test_bits_per_dim_only_where_the_nll_is_a_code_length():
    """nll_in_bits: logistic256 and Bernoulli give nll / (D ln 2); a Gaussian density gives None, unless the splits
    say they are dequantised, where the NLL gains D ln 256 first."""
    splits = Splits("test", torch.zeros(2, D), torch.zeros(2, D), torch.zeros(2, D), False)
    for name in ("bernoulli", "logistic256"):
        out = nll_in_bits(50.0, _model(name), splits)
        assert out["nll_discrete"] == 50.0 and out["bits_per_dim"] == pytest.approx(50.0 / (D * math.log(2)))
    assert nll_in_bits(50.0, _model("gaussian"), splits) == {"nll_discrete": None, "bits_per_dim": None}
    dequantised = Splits("test", torch.zeros(2, D), torch.zeros(2, D), torch.zeros(2, D), False, dequantize=True)
    out = nll_in_bits(-10.0, _model("gaussian"), dequantised)
    assert out["nll_discrete"] == pytest.approx(-10.0 + D * math.log(256))


def test_a_dequantised_gaussian_run_reports_bits_per_dim(tmp_path):
    """End to end: train with --likelihood gaussian --binarize none --dequantize on 8-bit user arrays, then
    evaluate: the test images are one seeded dequantisation (off the k/255 grid, inside their bins) and
    bits/dim = (NLL + D ln 256) / (D ln 2); the same run without dequantisation reports no bits/dim."""
    import numpy as np

    from iwae.evaluate import evaluate
    from iwae.train import TrainConfig, train

    rng = np.random.default_rng(0)
    path = tmp_path / "grey.npz"
    np.savez(
        path,
        **{s: rng.integers(0, 256, (n, D), dtype=np.uint8) for s, n in (("train", 40), ("valid", 10), ("test", 10))},
    )
    results = {}
    for deq in (True, False):
        config = TrainConfig(
            dataset=f"npz:{path}",
            likelihood="gaussian",
            binarize="none",
            dequantize=deq,
            latent_dims=[2],
            hidden_dims=[[8]],
            k=2,
            batch_size=10,
            epochs=1,
            out=str(tmp_path / f"run-{deq}"),
        )
        splits = config.load_data()
        if deq:
            grid = torch.from_numpy(np.load(path)["test"]).float()
            assert not on_8bit_grid(splits.test)
            assert torch.all(splits.test * 256 >= grid) and torch.all(splits.test * 256 < grid + 1)
        results[deq] = evaluate(train(config, progress=False), k=10, save=False)
    out = results[True]
    assert out["bits_per_dim"] == pytest.approx((out["nll"] + D * math.log(256)) / (D * math.log(2)))
    assert results[False]["bits_per_dim"] is None
