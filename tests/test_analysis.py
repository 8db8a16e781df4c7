"""Tests for iwae.analysis: ELBO surgery against cases with known terms and a quadrature, q_EW
against q (k = 1) and the exact grid posterior of a 2-D latent model, and `iwae analyze`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.distributions import Independent, Normal

from iwae.analysis import (
    elbo_surgery,
    histogram_on_grid,
    posterior_grid,
    qew_density_on_grid,
    sample_qew,
    total_variation,
)
from iwae.cli import main
from iwae.models import VAE, ModelConfig


class GaussianStub:
    """q(z|x_n) = N(locs[n], diag(scales[n]^2)) for x_n = [n]; p(z) = N(0, I); p(x|z) = N(x; 0, 1)."""

    def __init__(self, locs, scales):
        self.locs = torch.as_tensor(locs, dtype=torch.float64)
        self.scales = torch.as_tensor(scales, dtype=torch.float64)

    def encode(self, x):
        i = x[:, 0].long()
        return Independent(Normal(self.locs[i], self.scales[i]), 1)

    def decode(self, z):
        return Independent(Normal(torch.zeros_like(z[..., :1]), 1.0), 1)

    @property
    def prior(self):
        d = self.locs.shape[1]
        return Independent(Normal(torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)), 1)

    def inputs(self):
        return torch.arange(len(self.locs), dtype=torch.float64)[:, None]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_far_apart_posteriors_carry_log_n_nats():
    n, d = 6, 2
    locs = torch.zeros(n, d)
    locs[:, 0] = 100.0 * torch.arange(n)  # no overlap: q(z) = q(z|x_n) / N wherever z ~ q(z|x_n)
    stub = GaussianStub(locs, torch.full((n, d), 0.7))
    r = elbo_surgery(stub, stub.inputs(), num_samples=200, generator=gen(0))
    assert r["mutual_info"] == pytest.approx(math.log(n), abs=1e-9)
    assert r["log_n"] == pytest.approx(math.log(n))
    assert r["marginal_kl"] == pytest.approx(r["avg_kl"] - math.log(n), abs=1e-9)
    assert abs(r["identity_residual"]) < 1e-9
    assert r["avg_kl"] == pytest.approx(r["avg_kl_analytic"], rel=0.02)


def test_identical_posteriors_carry_no_information():
    n, d = 5, 3
    stub = GaussianStub(torch.full((n, d), 0.3), torch.full((n, d), 0.5))
    r = elbo_surgery(stub, stub.inputs(), num_samples=100, generator=gen(1))
    assert r["mutual_info"] == pytest.approx(0.0, abs=1e-9)
    assert r["marginal_kl"] == pytest.approx(r["avg_kl"], abs=1e-9)
    # the stub's p(x|z) = N(x; 0, 1) at x = 0..n-1, whatever z
    assert r["reconstruction"] == pytest.approx(
        float(np.mean([-0.5 * i**2 for i in range(n)])) - 0.5 * math.log(2 * math.pi)
    )


def _quadrature_terms(locs, scales):
    """avg KL, I[n; z] and KL(q(z) || p(z)) for 1-D Gaussians q(z|x_n), p(z) = N(0, 1), by a fine grid."""
    z = np.linspace(-15, 15, 300_001)
    dz = z[1] - z[0]

    def log_normal(z, m, s):
        return -0.5 * ((z - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)

    log_qn = np.stack([log_normal(z, m, s) for m, s in zip(locs, scales)])  # (N, Z)
    log_q = np.logaddexp.reduce(log_qn, axis=0) - np.log(len(locs))
    log_p = log_normal(z, 0.0, 1.0)
    q_n = np.exp(log_qn)
    avg_kl = np.mean((q_n * (log_qn - log_p)).sum(1) * dz)
    mi = np.mean((q_n * (log_qn - log_q)).sum(1) * dz)
    marginal = (np.exp(log_q) * (log_q - log_p)).sum() * dz
    return avg_kl, mi, marginal


def test_overlapping_posteriors_match_quadrature():
    locs, scales = [-1.0, 0.5, 2.0], [0.5, 1.0, 0.8]
    avg_kl, mi, marginal = _quadrature_terms(locs, scales)
    assert avg_kl == pytest.approx(mi + marginal, abs=1e-8)
    assert 0.1 < mi < math.log(3) - 0.1  # a middle case
    stub = GaussianStub(torch.tensor(locs)[:, None], torch.tensor(scales)[:, None])
    r = elbo_surgery(stub, stub.inputs(), num_samples=40_000, chunk=1000, generator=gen(2))
    assert r["mutual_info"] == pytest.approx(mi, abs=0.015)
    assert r["marginal_kl"] == pytest.approx(marginal, abs=0.015)
    assert r["avg_kl"] == pytest.approx(avg_kl, abs=0.015)
    assert r["avg_kl_analytic"] == pytest.approx(avg_kl, abs=1e-6)
    assert abs(r["identity_residual"]) < 1e-9


def small_vae(latent: int = 3, input_dim: int = 20, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(ModelConfig(input_dim=input_dim, latent_dims=(latent,), hidden_dims=((16,),))).eval()


def test_real_vae_identity_and_bounds():
    model = small_vae()
    x = torch.bernoulli(torch.full((40, 20), 0.3), generator=gen(3))
    r = elbo_surgery(model, x, num_samples=8, generator=gen(4))
    assert abs(r["identity_residual"]) < 1e-9
    assert 0 < r["mutual_info"] <= math.log(40) + 1e-9
    assert r["avg_kl"] == pytest.approx(r["avg_kl_analytic"], abs=5 * r["avg_kl_stderr"] + 0.05)
    for key in ("reconstruction", "avg_kl", "mutual_info", "marginal_kl"):
        assert r[f"{key}_stderr"] > 0
    # the chunked logsumexp does not depend on the block size
    small_blocks = elbo_surgery(model, x, num_samples=8, chunk=7, generator=gen(4))
    for key in ("mutual_info", "marginal_kl", "reconstruction"):
        assert small_blocks[key] == pytest.approx(r[key], abs=1e-9)


def test_two_layer_model_is_refused():
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_dim=10, latent_dims=(4, 2), hidden_dims=((8,), (8,))))
    x = torch.ones(3, 10)
    with pytest.raises(ValueError, match="one stochastic layer"):
        elbo_surgery(model, x)
    with pytest.raises(ValueError, match="one stochastic layer"):
        sample_qew(model, x, k=2, n=3)


def test_bad_arguments():
    stub = GaussianStub(torch.zeros(2, 1), torch.ones(2, 1))
    with pytest.raises(ValueError, match="num_samples"):
        elbo_surgery(stub, stub.inputs(), num_samples=0)
    with pytest.raises(ValueError, match="k and n"):
        sample_qew(stub, stub.inputs(), k=0, n=1)


# ----------------------------------------------------------------------------- q_EW
def test_qew_with_one_sample_is_q():
    model = small_vae(latent=2)
    x = torch.bernoulli(torch.full((2, 20), 0.4), generator=gen(5))
    z = sample_qew(model, x, k=1, n=20_000, generator=gen(6))
    assert z.shape == (20_000, 2, 2)
    q = model.encode(x)
    se = q.stddev / math.sqrt(20_000)
    assert ((z.mean(0) - q.mean).abs() < 5 * se).all()
    assert torch.allclose(z.std(0), q.stddev, rtol=0.03)


def test_qew_resamples_the_models_own_log_weights():
    """sample_qew keeps, for each of n draws, one of k proposals with probabilities softmax(log w): the
    proposals and log w are those of model.log_weights_with_samples (one call, n k proposals, for a
    small n), and the choice the next draws of the same generator; a model whose log w favours one
    proposal gets that proposal every time."""
    model = small_vae(latent=2)
    x = torch.bernoulli(torch.full((3, 20), 0.4), generator=gen(5))
    n, k = 7, 4
    got = sample_qew(model, x, k=k, n=n, generator=gen(8))
    g = gen(8)
    log_w, (z,) = model.log_weights_with_samples(x, n * k, g)
    probs = torch.softmax(log_w.reshape(n, k, 3), dim=1).permute(0, 2, 1).reshape(n * 3, k)
    pick = torch.multinomial(probs, 1, generator=g).reshape(n, 3)
    want = z.reshape(n, k, 3, 2)[torch.arange(n)[:, None], pick, torch.arange(3)[None, :]]  # (n, 3, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    class Favours:  # the model's samples, with log w = 0 for proposal 2 of each draw and -inf elsewhere
        num_layers = 1

        def log_weights_with_samples(self, x, num_samples, generator=None):
            log_w, zs = model.log_weights_with_samples(x, num_samples, generator)
            mask = torch.full((num_samples // k, k, 1), float("-inf"))
            mask[:, 2] = 0.0
            return mask.expand(-1, -1, x.shape[0]).reshape(num_samples, -1), zs

    got = sample_qew(Favours(), x, k=k, n=n, generator=gen(8))
    torch.testing.assert_close(got, z.reshape(n, k, 3, 2)[:, 2], rtol=0, atol=0)


def posterior_test_model() -> VAE:
    """A 2-D latent model whose q(z|x) is shifted and too narrow, and whose posterior is peaked."""
    model = small_vae(latent=2, input_dim=8, seed=1)
    with torch.no_grad():
        model.decoder[0].head.weight.mul_(3.0)
        model.encoder[0].head.bias[:2] += 0.5
        model.encoder[0].head.bias[2:] = math.log(0.5)
    return model


def test_exact_posterior_grid_normalises():
    model = posterior_test_model()
    x = torch.bernoulli(torch.full((3, 8), 0.5), generator=gen(7))
    grid = torch.linspace(-5, 5, 101)
    p = posterior_grid(model, x, grid)
    assert p.shape == (3, 101, 101)
    # p(z|x) dA = p(x|z) p(z) dA / p(x): at the most probable cell, the normaliser this implies is
    # log p(x), which L_k with k = 20,000 importance samples (Burda et al.) estimates independently
    dz = (grid[1] - grid[0]).item()
    with torch.no_grad():
        lw = model.log_weights(x, 20_000, gen(11)).double()  # (k, 3)
    log_px = torch.logsumexp(lw, 0) - math.log(20_000)
    for b in range(3):
        i, j = divmod(int(p[b].argmax()), 101)
        z = torch.tensor([[grid[i].item(), grid[j].item()]])
        with torch.no_grad():
            log_joint = (model.decode(z).log_prob(x[b]) + model.prior.log_prob(z)).double().item()
        implied = log_joint + 2 * math.log(dz) - math.log(p[b, i, j].item())
        assert implied == pytest.approx(log_px[b].item(), abs=0.05), (b, implied, log_px[b].item())
    # the grid holds the mass: the edge cells carry almost none
    edge = p[:, [0, -1], :].sum((-2, -1)) + p[:, :, [0, -1]].sum((-2, -1))
    assert (edge < 1e-3).all()


def test_qew_approaches_the_posterior_as_k_grows():
    model = posterior_test_model()
    x = torch.bernoulli(torch.full((2, 8), 0.5), generator=gen(8))
    grid = torch.linspace(-5, 5, 41)
    p = posterior_grid(model, x, grid)
    tv = {k: total_variation(p, qew_density_on_grid(model, x, grid, k, 20_000, generator=gen(9))) for k in (1, 5, 50)}
    assert (tv[1] > 0.3).all(), tv  # the test model's q is poor
    assert (tv[5] < tv[1]).all() and (tv[50] < tv[5]).all(), tv
    assert (tv[50] < 0.15).all(), tv  # histogram noise of 20,000 draws on 41 x 41 cells is about 0.05


def test_histogram_on_grid_counts_cells():
    grid = torch.tensor([0.0, 1.0, 2.0])
    samples = torch.tensor([[[0.1, 0.2]], [[0.9, 2.4]], [[5.0, 0.0]], [[1.0, 1.2]]])  # (4, 1, 2)
    h = histogram_on_grid(samples, grid)
    expected = torch.zeros(1, 3, 3, dtype=h.dtype)
    expected[0, 0, 0] = expected[0, 1, 2] = expected[0, 1, 1] = 0.25  # the third is outside
    assert torch.equal(h, expected)
    assert total_variation(h, h).item() == 0


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_data_dir):
    from iwae.train import TrainConfig, train

    out = tmp_path_factory.mktemp("analysis") / "run"
    config = TrainConfig(
        epochs=1, train_subset=60, data_dir=str(shared_data_dir), out=str(out), latent_dims=[4], hidden_dims=[[16]], k=2
    )
    return train(config, progress=False)


def test_analyze_cli(tiny_run, shared_data_dir):
    runner = CliRunner()
    result = runner.invoke(
        main, ["analyze", str(tiny_run), "--subset", "200", "--samples", "2", "--data-dir", str(shared_data_dir)]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    for phrase in ("reconstruction", "average KL", "I[n;z]", "log N = 5.30", "marginal KL", "residual"):
        assert phrase in result.output, result.output
    saved = json.loads((tiny_run / "surgery_n200.json").read_text())
    assert abs(saved["identity_residual"]) < 1e-9
    assert 0 <= saved["mutual_info"] <= math.log(200) + 1e-9
    assert saved["n"] == 200 and saved["num_samples"] == 2

    as_json = runner.invoke(
        main,
        ["analyze", str(tiny_run), "--subset", "200", "--samples", "2", "--json", "--data-dir", str(shared_data_dir)],
    )
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["mutual_info"] == pytest.approx(saved["mutual_info"])  # same seed


def test_analyze_cli_bad_input(tmp_path, tiny_run):
    result = CliRunner().invoke(main, ["analyze", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["analyze", str(tiny_run), "--subset", "0"])
    assert result.exit_code == 2 and "--subset" in result.output


def test_run_surgery_is_what_analyze_writes(tiny_run, shared_data_dir):
    """The library call writes surgery_n{N}.json; the CLI's file is the same, and both are elbo_surgery
    on the first N training images binarized once with the seed."""
    from iwae.analysis import run_surgery, surgery_text
    from iwae.data import fixed_binarization, load_dataset
    from iwae.errors import ConfigError
    from iwae.rundir import load_trained

    model, weights = load_trained(tiny_run)
    splits = load_dataset("mnist", shared_data_dir, download=False)
    result = run_surgery(model, splits, tiny_run, weights=weights, subset=100, num_samples=2, seed=3)
    written = (tiny_run / "surgery_n100.json").read_text()
    assert json.loads(written) == result
    x = torch.from_numpy(fixed_binarization(splits.train[:100].numpy(), 3))
    direct = elbo_surgery(model, x, num_samples=2, generator=torch.Generator().manual_seed(3))
    assert result == {**direct, "seed": 3, "model": weights}
    other = run_surgery(model, splits, tiny_run, weights=weights, subset=100, num_samples=2, seed=4)
    assert other["mutual_info"] != result["mutual_info"]  # the seed matters: the check above can fail

    cli = CliRunner().invoke(
        main,
        [
            "analyze",
            str(tiny_run),
            "--subset",
            "100",
            "--samples",
            "2",
            "--seed",
            "3",
            "--data-dir",
            str(shared_data_dir),
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert (tiny_run / "surgery_n100.json").read_text() == written
    assert cli.output.strip() == surgery_text(result)
    with pytest.raises(ConfigError, match="subset must be >= 1") as e:
        run_surgery(model, splits, tiny_run, weights=weights, subset=0)
    assert e.value.fields == ("subset",)
