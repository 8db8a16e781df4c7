"""Tests for iwae.estimators: which objective's gradient reaches which parameters.

PIWAE must give the decoder the IWAE(M*K) gradient and the encoder the MIWAE(M, K) gradient of
the same samples; the other objectives must give every parameter the gradient of their own bound.
Gradients are compared in float64 against plain autograd of the bounds from iwae.objectives,
recomputing the log-weights from an identically seeded generator.
"""

from __future__ import annotations

import pytest
import torch

from iwae import objectives
from iwae.estimators import ObjectiveSpec, backward, gradient_terms
from iwae.models import VAE, ModelConfig

F64 = torch.float64
SEED = 1234


def _setup(config: ModelConfig | None = None, B: int = 5):
    torch.manual_seed(0)
    model = VAE(config or ModelConfig(input_dim=20, latent_dims=(3,), hidden_dims=((16,),))).double()
    with torch.no_grad():  # nonzero biases so every parameter matters
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((B, model.config.input_dim), 0.4, dtype=F64), generator=g)
    return model, x


def _log_w(model: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    return model.log_weights(x, k, generator=torch.Generator().manual_seed(SEED))


def _grads_of(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


def _collect(model: VAE, spec: ObjectiveSpec, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    log_w = _log_w(model, x, spec.k)
    terms = gradient_terms(model, log_w, spec)
    backward(terms)
    grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return terms, grads


def _assert_grads_equal(got: list[torch.Tensor | None], want: list[torch.Tensor], what: str) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a is not None, f"{what}: parameter {i} got no gradient"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"{what}: parameter {i}")


def _names(model: VAE, params: list[torch.nn.Parameter]) -> list[str]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return [ids[id(p)] for p in params]


@pytest.mark.parametrize(
    "config",
    [ModelConfig(input_dim=20, latent_dims=(3,), hidden_dims=((16,),)),
     ModelConfig(input_dim=20, latent_dims=(4, 2), hidden_dims=((12,), (8,)))],
    ids=["1layer", "2layer"],
)
def test_piwae_gradient_routing(config):
    """PIWAE(3, 4): the decoder's gradients equal those of -IWAE(12).sum() and the encoder's those
    of -MIWAE(3, 4).sum(), on the same samples; the encoder's differ from the IWAE(12) encoder
    gradient and from the sum of both (so a mis-routed or summed gradient fails)."""
    model, x = _setup(config)
    spec = ObjectiveSpec("piwae", k=12, m=3)
    terms, grads = _collect(model, spec, x)
    dec_params, enc_params = model.decoder_parameters(), model.encoder_parameters()
    assert len(dec_params) and len(enc_params)
    dec_names, enc_names = _names(model, dec_params), _names(model, enc_params)
    assert set(dec_names).isdisjoint(enc_names)
    assert set(dec_names) | set(enc_names) == {n for n, _ in model.named_parameters()}

    log_w = _log_w(model, x, 12)
    iwae_dec = _grads_of(-objectives.iwae(log_w).sum(), dec_params)
    log_w = _log_w(model, x, 12)
    miwae_enc = _grads_of(-objectives.miwae(log_w.view(3, 4, -1)).sum(), enc_params)
    log_w = _log_w(model, x, 12)
    iwae_enc = _grads_of(-objectives.iwae(log_w).sum(), enc_params)

    _assert_grads_equal([grads[n] for n in dec_names], iwae_dec, "decoder vs IWAE(12)")
    _assert_grads_equal([grads[n] for n in enc_names], miwae_enc, "encoder vs MIWAE(3,4)")

    got_enc = torch.cat([grads[n].flatten() for n in enc_names])
    flat_iwae_enc = torch.cat([g.flatten() for g in iwae_enc])
    flat_miwae_enc = torch.cat([g.flatten() for g in miwae_enc])
    assert (got_enc - flat_iwae_enc).abs().max() > 1e-6
    assert (got_enc - (flat_iwae_enc + flat_miwae_enc)).abs().max() > 1e-6
    # the decoder's gradient is not MIWAE's either
    log_w = _log_w(model, x, 12)
    miwae_dec = _grads_of(-objectives.miwae(log_w.view(3, 4, -1)).sum(), dec_params)
    got_dec = torch.cat([grads[n].flatten() for n in dec_names])
    assert (got_dec - torch.cat([g.flatten() for g in miwae_dec])).abs().max() > 1e-6

    # the reported value is the IWAE(12) bound, detached
    log_w = _log_w(model, x, 12)
    torch.testing.assert_close(terms.bound, objectives.iwae(log_w).detach(), rtol=1e-12, atol=1e-12)
    assert not terms.bound.requires_grad and terms.bound.grad_fn is None


@pytest.mark.parametrize(
    "spec,bound_fn",
    [
        (ObjectiveSpec("vae", k=6), objectives.elbo),
        (ObjectiveSpec("vae", k=1), objectives.elbo),
        (ObjectiveSpec("iwae", k=6), objectives.iwae),
        (ObjectiveSpec("miwae", k=12, m=3), lambda lw: objectives.miwae(lw.view(3, 4, -1))),
        (ObjectiveSpec("miwae", k=12, m=4), lambda lw: objectives.miwae(lw.view(4, 3, -1))),
        (ObjectiveSpec("ciwae", k=6, beta=0.3), lambda lw: objectives.ciwae(lw, 0.3)),
    ],
    ids=lambda v: v.label if isinstance(v, ObjectiveSpec) else "",
)
def test_single_bound_gradients_match_autograd(spec, bound_fn):
    """For vae/iwae/miwae/ciwae, backward(gradient_terms(...)) leaves in .grad exactly the
    gradient of -bound.sum() for every parameter, and .bound is the bound's value, detached."""
    model, x = _setup()
    terms, grads = _collect(model, spec, x)
    params = list(model.parameters())
    log_w = _log_w(model, x, spec.k)
    bound = bound_fn(log_w)
    want = _grads_of(-bound.sum(), params)
    _assert_grads_equal([grads[n] for n, _ in model.named_parameters()], want, spec.label)
    torch.testing.assert_close(terms.bound, bound.detach(), rtol=1e-12, atol=1e-12)
    assert terms.bound.shape == (x.shape[0],)
    assert not terms.bound.requires_grad and terms.bound.grad_fn is None


def test_gradient_terms_rejects_wrong_sample_count():
    """gradient_terms raises ValueError when log_w's number of samples is not spec.k."""
    model, x = _setup()
    log_w = _log_w(model, x, 6)
    with pytest.raises(ValueError, match=r"k = 8"):
        gradient_terms(model, log_w, ObjectiveSpec("iwae", k=8))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(name="iwae", k=0), r"\bk\b.*0"),
        (dict(name="miwae", k=-3, m=1), r"\bk\b.*-3"),
        (dict(name="miwae", k=10, m=0), r"\bm\b.*0"),
        (dict(name="miwae", k=10, m=3), r"divide"),
        (dict(name="piwae", k=64, m=7), r"divide"),
        (dict(name="iwae", k=10, m=2), r"iwae"),
        (dict(name="vae", k=10, m=2), r"vae"),
        (dict(name="ciwae", k=10, m=2), r"ciwae"),
        (dict(name="ciwae", k=5, beta=-0.1), r"beta.*-0\.1"),
        (dict(name="ciwae", k=5, beta=1.01), r"beta.*1\.01"),
        (dict(name="dreg", k=5), r"unknown objective.*dreg"),
        (dict(name="iwae", k=5, estimator="score"), r"unknown estimator.*score"),
    ],
)
def test_objective_spec_validation(kwargs, pattern):
    """Invalid specs (k < 1, m < 1, m not dividing k, m != 1 outside miwae/piwae, beta outside
    [0, 1], unknown objective or estimator) raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=pattern):
        ObjectiveSpec(**kwargs)


def test_objective_spec_valid_and_labels():
    """Valid specs construct, and labels read as documented: MIWAE(8,8) / PIWAE(8,8) for k=64,
    m=8 (groups, then samples per group), IWAE(k=50), VAE(k=1), CIWAE(beta=0.5,k=5)."""
    assert ObjectiveSpec("miwae", k=64, m=8).label == "MIWAE(8,8)"
    assert ObjectiveSpec("piwae", k=64, m=8).label == "PIWAE(8,8)"
    assert ObjectiveSpec("miwae", k=12, m=3).label == "MIWAE(3,4)"
    assert ObjectiveSpec("miwae", k=64, m=1).label == "MIWAE(1,64)"
    assert ObjectiveSpec("iwae", k=50).label == "IWAE(k=50)"
    assert ObjectiveSpec("vae", k=1).label == "VAE(k=1)"
    assert ObjectiveSpec("ciwae", k=5, beta=0.5).label == "CIWAE(beta=0.5,k=5)"
    for beta in (0.0, 1.0):
        ObjectiveSpec("ciwae", k=5, beta=beta)
    ObjectiveSpec("miwae", k=7, m=7)


@pytest.mark.parametrize("estimator,objective", [("dreg", "iwae"), ("dreg", "miwae"), ("dreg", "ciwae"),
                                                 ("dreg", "piwae"), ("rws-dreg", "iwae")])
def test_gradient_terms_refuses_vamp_parts_without_the_prior_view(estimator, objective):
    """With the VampPrior, DReG (other than for the ELBO) and RWS-DReG need log p(stop_grad(z_L)):
    parts from log_weight_parts(..., stop_params=True) without prior_direct=True are refused with a
    ValueError that names the missing option (they would give the prior's direct term the path's
    weights: a biased gradient). The same parts with a normal prior, or with the view, are accepted."""
    m = 2 if objective in ("miwae", "piwae") else 1
    spec = ObjectiveSpec(objective, k=4, m=m, estimator=estimator)
    model, x = _setup(ModelConfig(input_dim=20, latent_dims=(3,), hidden_dims=((16,),), prior="vamp",
                                  prior_components=3))
    parts = model.log_weight_parts(x, 4, torch.Generator().manual_seed(0), stop_params=True)
    assert parts.log_prior_direct is None
    with pytest.raises(ValueError, match=r"prior_direct=True") as info:
        gradient_terms(model, parts, spec)
    assert estimator in str(info.value) and "VampPrior" in str(info.value)
    with_view = model.log_weight_parts(x, 4, torch.Generator().manual_seed(0), stop_params=True, prior_direct=True)
    assert with_view.log_prior_direct is not None
    gradient_terms(model, with_view, spec)
    normal, x = _setup()
    parts = normal.log_weight_parts(x, 4, torch.Generator().manual_seed(0), stop_params=True, prior_direct=True)
    assert parts.log_prior_direct is None  # N(0, I) has no direct dependence on the encoder
    gradient_terms(normal, parts, spec)
