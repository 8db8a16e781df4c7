"""Tests for iwae.estimators: which objective's gradient reaches which parameters, ObjectiveSpec's
validation, the estimator table as the single source, and the views of log q (add_views).

PIWAE must give the decoder the IWAE(M*K) gradient and the encoder the MIWAE(M, K) gradient of
the same samples; the other objectives must give every parameter the gradient of their own bound.
Gradients are compared in float64 against plain autograd of the bounds from iwae.objectives,
recomputing the log-weights from an identically seeded generator. The estimators' behaviour
(hand formulas, unbiasedness) is tested in tests/test_gradient_estimators.py.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from iwae import estimators, objectives
from iwae.choices import ESTIMATOR_OBJECTIVES
from iwae.estimators import (
    ESTIMATOR_TABLE,
    ESTIMATORS,
    Estimator,
    ObjectiveSpec,
    accumulate_gradients,
    add_views,
    backward,
    gradient_terms,
)
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
    [
        ModelConfig(input_dim=20, latent_dims=(3,), hidden_dims=((16,),)),
        ModelConfig(input_dim=20, latent_dims=(4, 2), hidden_dims=((12,), (8,))),
    ],
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
    ],
)
def test_objective_spec_validation(kwargs, pattern):
    """Invalid specs (k < 1, m < 1, m not dividing k, m != 1 outside miwae/piwae, beta outside
    [0, 1], unknown objective) raise ValueError naming the problem (estimators: the next test)."""
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


@pytest.mark.parametrize(
    "estimator,objective",
    [("dreg", "iwae"), ("dreg", "miwae"), ("dreg", "ciwae"), ("dreg", "piwae"), ("rws-dreg", "iwae")],
)
def test_gradient_terms_refuses_vamp_parts_without_the_prior_view(estimator, objective):
    """With the VampPrior, DReG (other than for the ELBO) and RWS-DReG need log p(stop_grad(z_L)):
    parts from log_weight_parts(...) without prior_direct=True are refused with a
    ValueError that names the missing option (they would give the prior's direct term the path's
    weights: a biased gradient). The same parts with a normal prior, or with the view, are accepted."""
    m = 2 if objective in ("miwae", "piwae") else 1
    spec = ObjectiveSpec(objective, k=4, m=m, estimator=estimator)
    model, x = _setup(
        ModelConfig(input_dim=20, latent_dims=(3,), hidden_dims=((16,),), prior="vamp", prior_components=3)
    )
    parts = model.log_weight_parts(x, 4, torch.Generator().manual_seed(0))
    assert parts.log_prior_direct is None
    with pytest.raises(ValueError, match=r"prior_direct=True") as info:
        gradient_terms(model, parts, spec)
    assert estimator in str(info.value) and "VampPrior" in str(info.value)
    with_view = model.log_weight_parts(x, 4, torch.Generator().manual_seed(0), prior_direct=True)
    assert with_view.log_prior_direct is not None
    gradient_terms(model, with_view, spec)
    normal, x = _setup()
    parts = normal.log_weight_parts(x, 4, torch.Generator().manual_seed(0), prior_direct=True)
    assert parts.log_prior_direct is None  # N(0, I) has no direct dependence on the encoder
    gradient_terms(normal, parts, spec)


# ----------------------------------------------------------------------------- refusals (merged here)
@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(name="ciwae", k=5, estimator="rws"), ("rws", "ciwae", "iwae", "reparam", "stl", "dreg")),
        (dict(name="miwae", k=4, m=2, estimator="rws-dreg"), ("rws-dreg", "miwae", "iwae", "reparam", "stl", "dreg")),
        (dict(name="vae", k=5, estimator="rws"), ("rws", "vae", "reparam", "stl", "dreg")),
        (dict(name="piwae", k=4, m=2, estimator="rws-dreg"), ("rws-dreg", "piwae", "reparam", "stl", "dreg")),
        (dict(name="iwae", k=5, estimator="vimco"), ("vimco", "reparam", "stl", "dreg", "rws", "rws-dreg")),
        (dict(name="iwae", k=5, estimator="DReG"), ("DReG", "reparam", "stl", "dreg")),
        (dict(name="iwae", k=5, estimator="score"), ("score", "reparam", "stl", "dreg", "rws", "rws-dreg")),
    ],
)
def test_objective_spec_refuses_unsupported_estimators(kwargs, names):
    """rws and rws-dreg with an objective other than iwae, and unknown estimators, raise ValueError
    whose message names the estimator, the objective where relevant, and what to use instead."""
    with pytest.raises(ValueError) as info:
        ObjectiveSpec(**kwargs)
    message = str(info.value)
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message), (name, message)


# ----------------------------------------------------------------------------- the estimator table
# what the papers define, written here independently of the table: RWS and RWS-DReG (Bornschein &
# Bengio 2015; Tucker et al. 2019) are the IWAE's wake-phi updates, the other three apply to every bound
PAPERS = {
    "reparam": set(objectives.OBJECTIVES),
    "stl": set(objectives.OBJECTIVES),
    "dreg": set(objectives.OBJECTIVES),
    "rws": {"iwae"},
    "rws-dreg": {"iwae"},
}


def _spec_accepted(objective: str, estimator: str) -> bool:
    layout = dict(k=4, m=2) if objective in ("miwae", "piwae") else dict(k=4)
    try:
        ObjectiveSpec(objective, estimator=estimator, **layout)
    except ValueError:
        return False
    return True


def test_objective_spec_accepts_exactly_the_tables_pairs():
    """ObjectiveSpec accepts an (objective, estimator) pair iff the estimator's table entry lists the
    objective; the table's pairs are those the papers define; an unknown name is refused."""
    for estimator in list(ESTIMATOR_TABLE) + ["vimco"]:
        for objective in objectives.OBJECTIVES:
            want = estimator in ESTIMATOR_TABLE and objective in ESTIMATOR_TABLE[estimator].objectives
            assert _spec_accepted(objective, estimator) == want, (objective, estimator)
    assert {name: set(e.objectives) for name, e in ESTIMATOR_TABLE.items()} == PAPERS


def test_names_costs_and_views_are_read_from_the_table():
    """ESTIMATORS (the CLI's --estimator choices), reproduce's ESTIMATOR_COST and the need for the
    prior's direct view are the table's; every entry has a surrogate, a cost and a description."""
    from iwae.experiments.plan import ESTIMATOR_COST

    assert ESTIMATORS == tuple(ESTIMATOR_TABLE) == ("reparam", "stl", "dreg", "rws", "rws-dreg")
    assert {name: e.cost for name, e in ESTIMATOR_TABLE.items()} == ESTIMATOR_COST
    assert ESTIMATOR_COST["reparam"] == 1.0 and all(c >= 1.0 for c in ESTIMATOR_COST.values())
    for name, entry in ESTIMATOR_TABLE.items():
        assert (
            callable(entry.surrogate)
            and entry.description
            and entry.log_q_view in (None, "stop_params", "stop_samples")
        )
        assert set(entry.prior_direct) <= set(entry.objectives), name
    # DReG weights the prior's direct term apart except for the ELBO (where it is STL), RWS-DReG always
    needs = {
        (o, e)
        for e in ESTIMATOR_TABLE
        for o in ESTIMATOR_TABLE[e].objectives
        if estimators._needs_prior_direct(ObjectiveSpec(o, k=4, m=2 if o in ("miwae", "piwae") else 1, estimator=e))
    }
    assert needs == {(o, "dreg") for o in objectives.OBJECTIVES if o != "vae"} | {("iwae", "rws-dreg")}


def test_a_new_table_entry_is_a_working_estimator(monkeypatch):
    """Adding an estimator is one table entry, its surrogate and the objectives it is defined for
    (iwae.choices.ESTIMATOR_OBJECTIVES, which the configs read without PyTorch): a toy entry whose surrogate is
    0.5 * IWAE of the path view (log p - log q with q's parameters detached) is accepted by
    ObjectiveSpec for the objectives it lists only, receives the view it asks for, and its encoder
    gradient is half that of STL on the same draws while the decoder's is reparam's. Without the
    entry the same spec is refused."""
    with pytest.raises(ValueError, match="half-stl"):
        ObjectiveSpec("iwae", k=4, estimator="half-stl")
    seen = []

    def half_stl(spec, parts):
        seen.append(parts.log_q_stop_params is not None)
        return 0.5 * objectives.iwae(parts.log_p - parts.log_q_stop_params)

    monkeypatch.setitem(ESTIMATOR_TABLE, "half-stl", Estimator(half_stl, ("iwae",), "stop_params", (), 1.3, "test"))
    monkeypatch.setitem(ESTIMATOR_OBJECTIVES, "half-stl", ("iwae",))
    spec = ObjectiveSpec("iwae", k=4, estimator="half-stl")
    with pytest.raises(ValueError, match="half-stl"):
        ObjectiveSpec("vae", k=4, estimator="half-stl")
    model, x = _setup(ModelConfig(input_dim=20, latent_dims=(4, 2), hidden_dims=((12,), (8,))))

    def grads(spec):
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, x, spec, torch.Generator().manual_seed(SEED))
        return (
            [p.grad.clone() for p in model.decoder_parameters()],
            [p.grad.clone() for p in model.encoder_parameters()],
        )

    dec, enc = grads(spec)
    assert seen == [True]
    dec_ref, enc_stl = grads(ObjectiveSpec("iwae", k=4, estimator="stl"))
    _assert_grads_equal(dec, dec_ref, "decoder, half-stl vs stl")
    _assert_grads_equal(enc, [0.5 * g for g in enc_stl], "encoder, half-stl vs stl / 2")
    _, enc_reparam = grads(ObjectiveSpec("iwae", k=4))
    assert max((a - 0.5 * b).abs().max() for a, b in zip(enc, enc_reparam)) > 1e-6  # not reparam / 2


# ----------------------------------------------------------------------------- the views of log q
class PlainLayer(nn.Module):
    """A user's Gaussian layer: loc and log-scale from one linear map and a softplus, with nothing
    but ``loc_log_scale(h)`` (no detach_params twin)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, 2 * d_out)

    def loc_log_scale(self, h):
        loc, raw = self.lin(h).chunk(2, -1)
        return loc, torch.nn.functional.softplus(raw) - 1.0

    def forward(self, h):
        loc, log_scale = self.loc_log_scale(h)
        return torch.distributions.Independent(torch.distributions.Normal(loc, log_scale.exp()), 1)


def _hand_views(model: VAE, posterior) -> tuple[torch.Tensor, torch.Tensor]:
    """log q with the encoder frozen (a deep copy without gradients) at the attached samples, and log q
    at the detached samples (layer l on detached z_{l-1}), from torch.distributions."""
    frozen = copy.deepcopy(model.encoder).requires_grad_(False)
    sp = ss = 0.0
    for layer, f_layer, h, z in zip(model.encoder, frozen, posterior.inputs, posterior.zs):
        loc, log_scale = f_layer.loc_log_scale(h)
        sp = sp + torch.distributions.Normal(loc, log_scale.exp()).log_prob(z).sum(-1)
        loc, log_scale = layer.loc_log_scale(h.detach())
        ss = ss + torch.distributions.Normal(loc, log_scale.exp()).log_prob(z.detach()).sum(-1)
    return sp, ss


@pytest.mark.parametrize("user_layer", [False, True], ids=["gaussian-mlp", "user-layer"])
def test_add_views_match_frozen_copies(user_layer):
    """add_views builds log q with q's parameters detached (samples attached) and at detached samples:
    both have log q's value, and their encoder gradients equal those of a hand computation with a
    frozen deep copy of the encoder / detached samples (float64, 1e-10), for a 2-layer model and for
    a user's layer that has only loc_log_scale. Negative control: log q's own gradient differs from
    both (it has the score and the path)."""
    model, x = _setup(ModelConfig(input_dim=20, latent_dims=(4, 3), hidden_dims=((12,), (8,))))
    if user_layer:
        torch.manual_seed(5)
        model.encoder[1] = PlainLayer(4, 3).double()
    parts = model.log_weight_parts(x, 5, torch.Generator().manual_seed(SEED))
    views = add_views(model, parts, stop_params=True, stop_samples=True)
    assert views.posterior is parts.posterior and views.log_p is parts.log_p
    sp, ss = _hand_views(model, parts.posterior)
    enc = model.encoder_parameters()
    for got, want in ((views.log_q_stop_params, sp), (views.log_q_stop_samples, ss)):
        torch.testing.assert_close(got, parts.log_q, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        g_got = torch.autograd.grad(got.sum(), enc, retain_graph=True, allow_unused=True)
        g_want = torch.autograd.grad(want.sum(), enc, retain_graph=True, allow_unused=True)
        g_own = torch.autograd.grad(parts.log_q.sum(), enc, retain_graph=True)
        zero = torch.zeros(())
        flat = lambda gs: torch.cat([(zero if g is None else g).flatten() for g in gs])  # noqa: E731
        torch.testing.assert_close(flat(g_got), flat(g_want), rtol=1e-10, atol=1e-10)
        assert (flat(g_got) - flat(g_own)).abs().max() > 1e-6
    # a view present is kept, not rebuilt
    assert add_views(model, views, stop_params=True).log_q_stop_params is views.log_q_stop_params


def test_add_views_needs_the_samples():
    """Parts without their draws (built by hand from log-weights) cannot give a view of log q: a
    ValueError says to pass the model's parts; gradient_terms refuses bare log-weights for stl."""
    model, x = _setup()
    log_w = model.log_weights(x, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="log_weight_parts"):
        add_views(model, estimators.LogWeightParts(log_w, torch.zeros_like(log_w)), stop_params=True)
    with pytest.raises(ValueError, match="stl.*log_weight_parts"):
        gradient_terms(model, log_w, ObjectiveSpec("iwae", k=4, estimator="stl"))
