"""Tests for the learnable priors (mixture of Gaussians, VampPrior) and KL warm-up: log p(z)
against independent computations, gradients, save/load, training with every objective."""

from __future__ import annotations

import csv
import math

import by_hand
import pytest
import torch
from click.testing import CliRunner
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import iwae
from iwae.checkpoint import load_tensors
from iwae.cli import main
from iwae.data import Splits
from iwae.models import VAE, MixturePrior, ModelConfig
from iwae.objectives import iwae as iwae_bound
from iwae.train import TrainConfig, kl_weight, train

F64 = torch.float64
SMALL = dict(latent_dims=[3], hidden_dims=[[8]])
SMALL2 = dict(latent_dims=[4, 2], hidden_dims=[[8], [6]])


def _model(prior: str, components: int = 4, layers: int = 1, **kw) -> VAE:
    torch.manual_seed(0)
    sizes = ((3,), ((8,),)) if layers == 1 else ((4, 2), ((8,), (6,)))
    return VAE(ModelConfig(12, *sizes, prior=prior, prior_components=components, **kw)).double()


@pytest.fixture(scope="module")
def tiny_splits(mnist_splits) -> Splits:
    s = mnist_splits
    return Splits("mnist", s.train[:40], s.valid[:20], s.test[:20], True)


def test_mixture_log_prob_matches_mixture_same_family():
    torch.manual_seed(1)
    prior = MixturePrior(3, 5, learn_weights=True).double()
    with torch.no_grad():
        prior.log_var.normal_()
        prior.logits.normal_()
    z = torch.randn(7, 2, 3, dtype=F64)
    reference = MixtureSameFamily(
        Categorical(logits=prior.logits), Independent(Normal(prior.loc, torch.exp(0.5 * prior.log_var)), 1)
    )
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    torch.testing.assert_close(prior().log_prob(z), reference.log_prob(z))


def test_one_component_mixture_is_a_gaussian():
    torch.manual_seed(2)
    prior = MixturePrior(4, 1).double()
    with torch.no_grad():
        prior.log_var.normal_()
    z = torch.randn(6, 4, dtype=F64)
    gaussian = Independent(Normal(prior.loc[0], torch.exp(0.5 * prior.log_var[0])), 1)
    torch.testing.assert_close(prior.log_prob(z), gaussian.log_prob(z))


@pytest.mark.parametrize("layers", [1, 2])
def test_vamp_log_prob_matches_a_loop_over_pseudo_inputs(layers):
    model = _model("vamp", components=6, layers=layers)
    prior = model.prior_module
    z = torch.randn(5, 3, model.config.latent_dims[-1], dtype=F64)
    terms = []
    for u in prior.pseudo_inputs:  # q(z_L | u) with the layers below at their means
        h = u
        for layer in model.encoder:
            loc, log_scale = layer.loc_log_scale(h)
            h = loc
        terms.append(Independent(Normal(loc, log_scale.exp()), 1).log_prob(z))
    expected = torch.logsumexp(torch.stack(terms), 0) - math.log(6)
    torch.testing.assert_close(prior.log_prob(z), expected)
    torch.testing.assert_close(model.prior.log_prob(z), expected)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_gradients_reach_the_prior_parameters(prior):
    model = _model(prior, prior_learn_weights=True) if prior == "mog" else _model(prior)
    x = torch.bernoulli(torch.full((4, 12), 0.4, dtype=F64))
    (-iwae_bound(model.log_weights(x, 5)).sum()).backward()
    names = ["loc", "log_var", "logits"] if prior == "mog" else ["raw"]
    for name in names:
        grad = getattr(model.prior_module, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    decoder_ids = {id(p) for p in model.decoder_parameters()}
    assert all(id(p) in decoder_ids for p in model.prior_module.parameters())
    # the VampPrior's encoder stays an encoder parameter, counted once
    assert not decoder_ids & {id(p) for p in model.encoder_parameters()}
    assert len(list(model.parameters())) == len(model.encoder_parameters()) + len(model.decoder_parameters())


def test_pseudo_inputs_stay_in_the_unit_interval():
    model = _model("vamp", components=5)
    prior = model.prior_module
    prior.init_from_data(torch.rand(30, 12, dtype=F64))
    with torch.no_grad():
        prior.raw.mul_(100.0)  # as after a huge step
    u = prior.pseudo_inputs
    assert u.min() >= 0 and u.max() <= 1
    assert prior.raw.min() < 0 and prior.raw.max() > 1  # the raw values leave [0, 1], u does not
    optimizer = torch.optim.Adam(prior.parameters(), lr=5.0)  # large steps on the pseudo-inputs
    x = torch.bernoulli(torch.full((4, 12), 0.4, dtype=F64))
    for _ in range(3):
        optimizer.zero_grad()
        (-iwae_bound(model.log_weights(x, 5)).sum()).backward()
        optimizer.step()
    assert prior.pseudo_inputs.min() >= 0 and prior.pseudo_inputs.max() <= 1


def test_vamp_cache_is_used_in_eval_and_dropped_when_training():
    model = _model("vamp", components=3)
    prior = model.prior_module
    model.eval()
    with torch.no_grad():
        first = prior._posteriors()
        assert prior._posteriors()[0] is first[0]  # cached
        model.encoder[0].head.bias.add_(1.0)  # an in-place change of the encoder
        assert not torch.equal(prior._posteriors()[0], first[0])
    model.train()
    assert prior._cache is None


@pytest.mark.parametrize("objective", ["vae", "iwae", "miwae", "ciwae", "piwae"])
@pytest.mark.parametrize("prior", ["mog", "vamp"])
@pytest.mark.parametrize("sizes", [SMALL, SMALL2], ids=["1layer", "2layers"])
def test_each_prior_trains_with_each_objective(tiny_splits, tmp_path, objective, prior, sizes):
    m = 2 if objective in ("miwae", "piwae") else 1
    config = TrainConfig(
        objective=objective,
        k=4,
        m=m,
        prior=prior,
        components=3,
        layers=len(sizes["latent_dims"]),
        epochs=1,
        schedule="constant",
        batch_size=20,
        out=str(tmp_path / "run"),
        **sizes,
    )
    run_dir = train(config, progress=False, splits=tiny_splits)
    model = iwae.load(run_dir)
    assert model.config.prior == prior and model.config.prior_components == 3
    # the epoch's validation L_4, against L_4 of the saved model computed by hand from its log-weights
    with open(run_dir / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    lk, spread = by_hand.mean_lk(model, tiny_splits.valid, 4)
    assert abs(float(row["valid_L4"]) - lk) < max(0.5, 8 * spread), (row["valid_L4"], lk, spread)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_save_load_round_trip_gives_identical_log_weights(tiny_splits, tmp_path, prior):
    config = TrainConfig(
        objective="iwae",
        k=3,
        prior=prior,
        components=4,
        learn_mixture_weights=prior == "mog",
        epochs=1,
        schedule="constant",
        out=str(tmp_path / "run"),
        **SMALL2,
        layers=2,
    )
    run_dir = train(config, progress=False, splits=tiny_splits)
    loaded = iwae.load(run_dir)
    # the reference: the trained weights as the checkpoint (another file, written separately) holds
    # them, in a model built afresh, whose prior starts elsewhere until they are loaded
    tensors, _ = load_tensors(run_dir / "checkpoint.safetensors")
    reference = VAE(loaded.config)
    prior_keys = [k for k in reference.state_dict() if k.startswith("prior_module.")]
    assert prior_keys and any(not torch.equal(reference.state_dict()[k], tensors["model." + k]) for k in prior_keys)
    reference.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    x = tiny_splits.valid
    with torch.no_grad():
        a = loaded.log_weights(x, 5, torch.Generator().manual_seed(3))
        b = reference.eval().log_weights(x, 5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_saved_model_loads_with_identical_log_weights(tmp_path, prior):
    from iwae import rundir
    from iwae.train import TrainConfig

    torch.manual_seed(4)
    # the run's config.yaml records the architecture; model.safetensors the weights
    config = TrainConfig(
        layers=2,
        latent_dims=[4, 2],
        hidden_dims=[[8], [6]],
        prior=prior,
        components=3,
        learn_mixture_weights=prior == "mog",
    )
    model = VAE(config.model_config(12))
    assert model.config == ModelConfig(
        12, (4, 2), ((8,), (6,)), prior=prior, prior_components=3, prior_learn_weights=prior == "mog"
    )
    with torch.no_grad():  # move the prior away from its initialisation
        for p in model.prior_module.parameters():
            p.add_(torch.randn_like(p))
    rundir.write_config(tmp_path, config)
    rundir.save_model(tmp_path, model, 0)
    loaded = iwae.load(tmp_path)
    x = torch.bernoulli(torch.full((5, 12), 0.4))
    with torch.no_grad():
        expected = model.log_weights(x, 6, torch.Generator().manual_seed(5))
        got = loaded.log_weights(x, 6, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_old_model_configs_still_load():
    config = ModelConfig(input_dim=12, latent_dims=[3], hidden_dims=[[8]], prior="normal")
    assert config.prior_components == 1 and not config.prior_learn_weights


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(prior="normal", prior_components=3), "normal prior has no components"),
        (dict(prior="vamp", prior_components=0), "prior_components must be >= 1"),
        (dict(prior="vamp", prior_components=2, prior_learn_weights=True), "mog prior only"),
        (dict(prior="flat"), "unknown prior 'flat'"),
    ],
)
def test_bad_prior_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        VAE(ModelConfig(12, (3,), ((8,),), **bad))


def test_kl_warmup_refused_for_iwae_accepted_for_vae(tiny_splits, tmp_path):
    with pytest.raises(ValueError, match="kl_warmup applies to the vae objective .* not iwae"):
        TrainConfig(objective="iwae", kl_warmup=3)
    config = TrainConfig(
        objective="vae",
        k=2,
        kl_warmup=4,
        prior="mog",
        components=2,
        epochs=2,
        schedule="constant",
        out=str(tmp_path / "run"),
        **SMALL,
    )
    assert [kl_weight(config, e) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    train(config, progress=False, splits=tiny_splits)


def test_kl_warmup_weights_only_the_prior_and_posterior_terms():
    """gradient_terms with kl_weight b ascends log p(x|z) + b (log p(z) - log q); the bound stays the ELBO."""
    from iwae.estimators import ObjectiveSpec, gradient_terms

    model = _model("mog", layers=2)
    x = torch.bernoulli(torch.full((3, 12), 0.4, dtype=F64))
    parts = model.log_weight_parts(x, 4, torch.Generator().manual_seed(0))
    result = gradient_terms(model, parts, ObjectiveSpec("vae", 4), kl_weight=0.3)
    lik = parts.log_likelihood
    torch.testing.assert_close(result.terms[0][0], (lik + 0.3 * (parts.log_weights - lik)).mean(0))
    torch.testing.assert_close(result.bound, parts.log_weights.mean(0).detach())
    with pytest.raises(ValueError, match="vae objective .* only, not iwae"):
        gradient_terms(model, parts, ObjectiveSpec("iwae", 4), kl_weight=0.3)


def test_cli_trains_a_vamp_prior(shared_data_dir, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--prior",
            "vamp",
            "--components",
            "10",
            "--train-subset",
            "60",
            "--epochs",
            "1",
            "--data-dir",
            str(shared_data_dir),
            "--quiet",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    model = iwae.load(tmp_path / "run")
    assert model.config.prior == "vamp" and model.prior_module.pseudo_inputs.shape == (10, 784)


@pytest.mark.parametrize("layers", [1, 2])
def test_vamp_log_prob_with_direct_splits_the_gradient(layers):
    """VampPrior.log_prob_with_direct(z) gives log p(z) twice in value; the second's gradient is
    the prior's direct dependence on the encoder alone: none reaches z, and the encoder's gradient
    equals that of log p(stop_grad(z)), and is not zero. The normal and mixture priors have no
    such term (None)."""
    model = _model("vamp", components=4, layers=layers)
    prior = model.prior_module
    assert prior.depends_on_encoder
    z = torch.randn(5, 3, model.config.latent_dims[-1], dtype=F64, requires_grad=True)
    full, direct = prior.log_prob_with_direct(z)
    torch.testing.assert_close(full, prior.log_prob(z), rtol=0, atol=0)
    torch.testing.assert_close(direct, full, rtol=0, atol=0)
    enc = model.encoder_parameters()
    assert torch.autograd.grad(direct.sum(), z, allow_unused=True)[0] is None
    g_direct = torch.autograd.grad(direct.sum(), enc, retain_graph=True)
    g_want = torch.autograd.grad(prior.log_prob(z.detach()).sum(), enc)
    for a, b in zip(g_direct, g_want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert max(g.abs().max().item() for g in g_direct) > 1e-6  # the direct term is there
    for name in ("normal", "mog"):
        other = _model(name, components=1 if name == "normal" else 3, layers=layers).prior_module
        assert not other.depends_on_encoder
        value, none = other.log_prob_with_direct(z.detach())
        assert none is None
        torch.testing.assert_close(value, other.log_prob(z.detach()), rtol=0, atol=0)


@pytest.mark.parametrize(
    "shape,components,dim", [((4, 3), 45, 50), ((7,), 5, 3), ((2, 3), 1, 2000)], ids=["3-slices", "1-slice", "wide"]
)
def test_mixture_log_density_gradients(shape, components, dim):
    """The per-component log N(z; mu_c, sigma_c^2) of the mixture priors, whose backward pass
    recomputes slices of components instead of keeping them: the same gradients (1e-12, float64)
    as autograd of the unsliced formula written here, for z, mu and log sigma, with 3 slices (45
    components of 50 units), 1 slice, and a 2,000-unit latent; a detached z gets none."""
    from iwae.models import priors as priors_module

    torch.manual_seed(0)
    z = torch.randn(*shape, dim, dtype=F64, requires_grad=True)
    loc = torch.randn(components, dim, dtype=F64, requires_grad=True)
    log_scale = (0.3 * torch.randn(components, dim, dtype=F64)).requires_grad_()

    def formula(z, loc, log_scale):
        eps = (z.unsqueeze(-2) - loc) * torch.exp(-log_scale)
        return -0.5 * eps.square().sum(-1) - log_scale.sum(-1) - 0.5 * dim * math.log(2 * math.pi)

    g = torch.randn(*shape, components, dtype=F64)
    got = torch.autograd.grad(priors_module._diag_normal_log_prob(z, loc, log_scale), (z, loc, log_scale), g)
    want = torch.autograd.grad(formula(z, loc, log_scale), (z, loc, log_scale), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert (
        torch.autograd.grad(
            priors_module._diag_normal_log_prob(z.detach(), loc, log_scale).sum(), z, allow_unused=True
        )[0]
        is None
    )


def test_mixture_log_density_gradcheck(monkeypatch):
    """torch.autograd.gradcheck (float64) of the sliced per-component log-density, with slices
    made small (2 components of 4 units) so that 5 components take 3 slices."""
    from iwae.models import priors as priors_module

    monkeypatch.setattr(priors_module, "_COMPONENT_FLOATS", 8)
    torch.manual_seed(0)
    z = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
    loc = torch.randn(5, 4, dtype=F64, requires_grad=True)
    log_scale = (0.3 * torch.randn(5, 4, dtype=F64)).requires_grad_()
    assert len(priors_module._slices(5, 4)) == 3
    assert torch.autograd.gradcheck(priors_module._diag_normal_log_prob, (z, loc, log_scale))
