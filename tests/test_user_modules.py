"""Tests for models built from user modules: ``VAE(config, encoder=..., decoder=..., prior=..., likelihood=...)``.

Plain ``nn.Sequential`` encoder and decoder modules that replicate the built-in tanh MLPs, with the
built-in model's weights copied in, must give the built-in model's log-weights, its gradients for
every estimator (with the normal prior and with a VampPrior whose pseudo-inputs go through the
user encoder), and its numbers after training through the public API (``iwae.train.train(config,
model=...)``, ``iwae.evaluate.evaluate(model=...)``). Data-free: a tiny synthetic ``.npz``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from iwae import rundir
from iwae.checkpoint import CheckpointError, load_tensors
from iwae.estimators import ObjectiveSpec, accumulate_gradients
from iwae.evaluate import evaluate
from iwae.models import VAE, Likelihood, ModelConfig
from iwae.models.gaussian import diag_normal_log_prob
from iwae.train import TrainConfig, train

PIXELS, LATENT, HIDDEN = 12, 3, 8


class MLPEncoder(nn.Module):
    """x -> (loc, log_scale) by tanh layers and one linear head of 2 * LATENT outputs."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(PIXELS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2 * LATENT))

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)


class MLPDecoder(nn.Module):
    """z -> raw parameters of p(x | z) (out_features of them), with ``output_bias`` for the likelihood's init."""

    def __init__(self, out_features: int = PIXELS):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, out_features))

    @property
    def output_bias(self) -> nn.Parameter:
        return self.net[2].bias

    def forward(self, z):
        return self.net(z)


def _config(**changes) -> ModelConfig:
    return ModelConfig(PIXELS, (LATENT,), ((HIDDEN,),), **changes)


def _pair(prior: str = "normal", likelihood: str = "bernoulli", dtype=torch.float64) -> tuple[VAE, VAE]:
    """A built-in model with nonzero biases and a user-module model holding the same weights."""
    cfg = _config(prior=prior, prior_components=1 if prior == "normal" else 3, likelihood=likelihood)
    torch.manual_seed(0)
    builtin = VAE(cfg).to(dtype)
    with torch.no_grad():
        for p in builtin.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
    out = builtin.likelihood.params_per_pixel * PIXELS
    user = VAE(cfg, encoder=MLPEncoder(), decoder=MLPDecoder(out)).to(dtype)
    _copy(builtin, user)
    return builtin, user


def _copy(source: VAE, target: VAE) -> None:
    """Copies the parameters in registration order (encoder, decoder, prior): the same tensors by shape."""
    src, dst = list(source.parameters()), list(target.parameters())
    assert len(src) == len(dst)
    with torch.no_grad():
        for a, b in zip(src, dst):
            assert a.shape == b.shape
            b.copy_(a)


def _x(n: int = 4, likelihood: str = "bernoulli") -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.full((n, PIXELS), 0.4, dtype=torch.float64), generator=g)
    return (torch.randint(0, 256, (n, PIXELS), generator=g) / 255).double()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "logistic256"])
def test_same_log_weights_as_the_builtin_model(likelihood):
    """The same draws (one seeded generator) give the same log-weights, decoder means and q(z|x)."""
    builtin, user = _pair(likelihood=likelihood)
    x = _x(likelihood=likelihood)
    a = builtin.log_weights(x, 7, torch.Generator().manual_seed(1))
    b = user.log_weights(x, 7, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)
    z = torch.randn(5, 4, LATENT, dtype=torch.float64)
    torch.testing.assert_close(builtin.decode(z).mean, user.decode(z).mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(builtin.encode(x).mean, user.encode(x).mean, rtol=1e-12, atol=1e-12)
    assert user.user_modules and not builtin.user_modules


ESTIMATOR_SPECS = [
    ("iwae", "reparam"),
    ("iwae", "stl"),
    ("iwae", "dreg"),
    ("iwae", "rws"),
    ("iwae", "rws-dreg"),
    ("vae", "stl"),
    ("miwae", "dreg"),
    ("piwae", "dreg"),
]


@pytest.mark.parametrize("prior", ["normal", "vamp"])
@pytest.mark.parametrize("objective,estimator", ESTIMATOR_SPECS, ids=[f"{o}-{e}" for o, e in ESTIMATOR_SPECS])
def test_same_gradients_for_every_estimator(objective, estimator, prior):
    """accumulate_gradients gives every parameter the same gradient in both models, for every estimator
    (including the VampPrior, whose pseudo-inputs go through the user encoder, with DReG's direct term);
    and the gradient is not zero (a check that could not pass by both being empty)."""
    builtin, user = _pair(prior=prior)
    x = _x()
    spec = ObjectiveSpec(objective, k=6, m=2 if objective in ("miwae", "piwae") else 1, estimator=estimator)
    for model in (builtin, user):
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, x, spec, torch.Generator().manual_seed(3))
    grads_b = [p.grad for p in builtin.parameters()]
    grads_u = [p.grad for p in user.parameters()]
    assert all(g is not None for g in grads_b) and sum(g.abs().sum() for g in grads_b) > 0
    for gb, gu in zip(grads_b, grads_u):
        torch.testing.assert_close(gb, gu, rtol=1e-10, atol=1e-12)


def test_user_prior_and_likelihood_modules():
    """A prior module and a Likelihood subclass given as objects are used: log w = log p(x|z) + log p(z)
    - log q(z|x) with them, by hand; the likelihood's own parameter is a decoder (theta) parameter."""

    class ScaledNormalPrior(nn.Module):
        depends_on_encoder = False

        def __init__(self):
            super().__init__()
            self.log_scale = nn.Parameter(torch.tensor(0.3))

        def forward(self):
            return torch.distributions.Independent(
                torch.distributions.Normal(torch.zeros(LATENT), self.log_scale.exp()), 1
            )

        def log_prob(self, z):
            return diag_normal_log_prob(z, torch.zeros_like(z), self.log_scale.expand(z.shape[-1]))

    class OneSigmaGaussian(Likelihood):
        name = "one-sigma"

        def __init__(self, input_dim):
            super().__init__(input_dim)
            self.log_sigma = nn.Parameter(torch.tensor(-1.0))

        def log_prob(self, raw, x):
            return diag_normal_log_prob(x, raw, self.log_sigma.expand(raw.shape[-1]))

        def mean(self, raw):
            return raw

    torch.manual_seed(0)
    prior, lik = ScaledNormalPrior(), OneSigmaGaussian(PIXELS)
    model = VAE(_config(), encoder=MLPEncoder(), decoder=MLPDecoder(), prior=prior, likelihood=lik)
    assert model.prior_module is prior and model.likelihood is lik
    assert any(p is lik.log_sigma for p in model.decoder_parameters())
    assert not any(p is lik.log_sigma for p in model.encoder_parameters())
    x = _x().float()
    log_w, (z,) = model.log_weights_with_samples(x, 4, torch.Generator().manual_seed(0))
    q = model.encode(x)
    by_hand = (
        torch.distributions.Normal(model.decoder[0](z), lik.log_sigma.exp()).log_prob(x).sum(-1)
        + torch.distributions.Normal(0.0, prior.log_scale.exp()).log_prob(z).sum(-1)
        - q.log_prob(z)
    )
    torch.testing.assert_close(log_w, by_hand, rtol=1e-5, atol=1e-4)


def test_user_modules_refuse_what_they_cannot_be():
    """Two stochastic layers with user modules, an encoder returning one tensor, and a likelihood of the
    wrong size are one-line ValueErrors."""
    with pytest.raises(ValueError, match="one stochastic layer"):
        VAE(ModelConfig(PIXELS, (4, 2), ((8,), (4,))), encoder=MLPEncoder(), decoder=MLPDecoder())
    bad = VAE(_config(), encoder=nn.Linear(PIXELS, LATENT), decoder=MLPDecoder())
    with pytest.raises(ValueError, match=r"must return \(loc, log_scale\)"):
        bad.log_weights(_x().float(), 2)
    with pytest.raises(ValueError, match="pixels"):
        VAE(_config(), likelihood=Likelihood(PIXELS + 1))


# ----------------------------------------------------------------------------- through the public API
@pytest.fixture(scope="module")
def grey_npz(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "grey.npz"
    split = {
        s: (np.round(rng.random((n, PIXELS)) ** 2 * 255) / 255).astype(np.float32)
        for s, n in (("train", 40), ("valid", 10), ("test", 10))
    }
    np.savez(path, **split)
    return f"npz:{path}"


@pytest.mark.parametrize("likelihood,estimator", [("bernoulli", "reparam"), ("logistic256", "dreg")])
def test_training_a_user_model_gives_the_builtin_numbers(tmp_path, grey_npz, likelihood, estimator):
    """train(config, model=user) with the built-in model's initial weights gives the built-in run's metrics
    and final weights (float32: to 1e-4), its checkpoint is safetensors that iwae.load refuses with a
    one-line message (the user rebuilds the modules and loads the weights), and evaluate(model=...) gives
    the built-in run's test NLL."""
    config = dict(
        dataset=grey_npz,
        latent_dims=[LATENT],
        hidden_dims=[[HIDDEN]],
        k=4,
        valid_k=4,
        batch_size=10,
        epochs=2,
        seed=3,
        likelihood=likelihood,
        estimator=estimator,
    )
    builtin_run = train(TrainConfig(**config, out=str(tmp_path / "builtin")), progress=False)

    cfg = TrainConfig(**config, out=str(tmp_path / "user"))
    torch.manual_seed(cfg.seed)  # the initial weights train() draws for the built-in model
    reference = VAE(cfg.model_config(PIXELS))
    user = VAE(
        cfg.model_config(PIXELS),
        encoder=MLPEncoder(),
        decoder=MLPDecoder(reference.likelihood.params_per_pixel * PIXELS),
    )
    _copy(reference, user)
    user_run = train(cfg, model=user, progress=False)

    a, b = rundir.read_metrics(builtin_run), rundir.read_metrics(user_run)
    for row_a, row_b in zip(a, b):
        for key in ("train_bound", "valid_L4"):
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-4, abs=1e-4), key
    weights_b = load_tensors(builtin_run / "model.safetensors")[0]
    weights_u, meta_u = load_tensors(user_run / "model.safetensors")
    assert meta_u.get("user_modules") is True and len(weights_b) == len(weights_u)
    by_order = dict(
        zip(reference.state_dict(), user.state_dict())
    )  # e.g. encoder.0.head.weight -> encoder.0.module.net.2.weight
    moved = 0.0
    for name, value in weights_b.items():
        torch.testing.assert_close(value, weights_u[by_order[name]], rtol=1e-4, atol=1e-5)
        moved += (value - reference.state_dict()[name]).abs().sum().item()
    assert moved > 1e-3  # training changed the weights: the comparison is not of two copies of the start
    with pytest.raises(CheckpointError, match="user modules") as e:
        rundir.load_model(user_run)
    assert "\n" not in str(e.value)
    # rebuilt by the user, loaded, evaluated: the built-in run's numbers
    rebuilt = VAE(
        cfg.model_config(PIXELS),
        encoder=MLPEncoder(),
        decoder=MLPDecoder(reference.likelihood.params_per_pixel * PIXELS),
    )
    rebuilt.load_state_dict(weights_u)
    splits = cfg.load_data()  # the data as training saw them (logistic256: grey levels, not binarized)
    ours = evaluate(model=rebuilt, splits=splits, k=50, seed=1)
    theirs = evaluate(builtin_run, k=50, seed=1, save=False)
    assert ours["nll"] == pytest.approx(theirs["nll"], rel=1e-4)
    if likelihood == "logistic256":
        assert ours["bits_per_dim"] == pytest.approx(ours["nll"] / (PIXELS * np.log(2)))
