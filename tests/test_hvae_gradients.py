"""The gradient estimators (reparam, stl, dreg, rws, rws-dreg) on the two-level HVAE, with the normal, mixture
and VampPrior p(z_2): the suite of tests/test_gradient_estimators.py for the model whose q(z_1 | x, z_2) reads
a sample.

What must hold (derived in iwae.estimators' docstring, for any reparameterised q): the decoder always gets
its objective's own gradient; the encoder gets the estimator's surrogate, built from views of log q in which
q's parameters are detached but the samples are not, so that the path through z_2 into q(z_1 | x, z_2) is
kept; E[DReG] = E[reparam] for every objective, E[STL] = E[reparam] for the ELBO, E[RWS-DReG] = E[RWS];
the VampPrior's direct dependence on phi (its pseudo-inputs go through q(z_2 | x)) keeps the weight w~.

The surrogates are built by hand here (frozen deep copies of the encoder for "phi detached",
torch.distributions for the densities) and compared in float64; the unbiasedness checks are paired
z-statistics with fixed seeds, each with negative controls flagged by the same statistic: STL for IWAE,
the VampPrior's direct term weighted like the path, and the HVAE's own, a path view with z_2 detached
inside q(z_1 | x, z_2) (DReG) or without q(z_1 | x, z_2)'s path term (STL).
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from test_gradient_estimators import (
    ALL_SPECS,
    K_ALL,
    N_ALL,
    OBJECTIVE_SPECS,
    REPS_ALL,
    SUPPORTED,
    UNBIASED,
    WRONG_DREG,
    WRONG_RWS_DREG,
    Z_ALL,
    _encoder_term,
    _flat,
    _hand_surrogate,
    _z_max,
)
from torch.distributions import Bernoulli, Independent, Normal

from iwae import objectives
from iwae.estimators import ObjectiveSpec, accumulate_gradients, add_views, gradient_terms
from iwae.models import HVAE, ModelConfig

F64 = torch.float64
SEED = 4321
PRIORS = ["normal", "mog", "vamp"]


def _config(prior: str) -> ModelConfig:
    return ModelConfig(
        10,
        (3, 2),
        ((6, 5), (5,)),
        prior=prior,
        prior_components=1 if prior == "normal" else 3,
        network="gated",
        model="hvae",
    )


def _setup(prior: str, B: int = 4, seed: int = 0):
    """A float64 gated HVAE with nonzero biases, a spread VampPrior or mixture, and a binary batch."""
    torch.manual_seed(seed)
    model = HVAE(_config(prior)).double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
        if prior == "vamp":
            model.prior_module.raw.normal_(0.0, 1.5)
        if prior == "mog":
            model.prior_module.log_var.normal_(0.0, 0.3)
    x = torch.bernoulli(torch.full((B, 10), 0.4, dtype=F64), generator=torch.Generator().manual_seed(seed + 1))
    return model, x


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _step(model, x, spec, seed=SEED):
    """accumulate_gradients from zeroed grads: (bound, decoder grads, encoder grads)."""
    model.zero_grad(set_to_none=True)
    bound = accumulate_gradients(model, x, spec, _gen(seed))
    dec = [None if p.grad is None else p.grad.detach().clone() for p in model.decoder_parameters()]
    enc = [None if p.grad is None else p.grad.detach().clone() for p in model.encoder_parameters()]
    model.zero_grad(set_to_none=True)
    return bound, dec, enc


def _assert_close(got, want, what, tol=1e-10):
    assert len(got) == len(want) and len(got) > 0, what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a is not None, f"{what}: parameter {i} got no gradient"
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{what}: parameter {i}: {m}")


def _log_n(z, loc, log_scale):
    return Normal(loc, log_scale.exp()).log_prob(z).sum(-1)


def _hand_vamp(model, z2, top_layer):
    """log (1/C) sum_c q(z_2 | u_c) with q(z_2 | .) = ``top_layer``."""
    loc, log_scale = top_layer.loc_log_scale(model.prior_module.pseudo_inputs)
    components = Independent(Normal(loc, log_scale.exp()), 1)
    return torch.logsumexp(components.log_prob(z2.unsqueeze(-2)), -1) - math.log(loc.shape[0])


def _hand_parts(model, x, k, generator) -> dict:
    """log p, log q and the views, written independently of HVAE.log_weight_parts and add_views: z_2 then z_1
    drawn from the model's networks with the same eps, "phi detached" by a frozen deep copy of the encoder
    (the samples still attached: z_2 flows into the frozen q(z_1 | x, z_2)), densities from torch.distributions.
    Keys as tests/test_gradient_estimators._hand_parts, plus ``path_z2_cut`` (z_2 detached inside the frozen
    q(z_1 | x, z_2): a wrong view)."""
    frozen = copy.deepcopy(model.encoder).requires_grad_(False)
    loc2, ls2 = model.encoder[0].loc_log_scale(x)
    z2 = loc2 + ls2.exp() * torch.randn((k,) + loc2.shape, generator=generator, dtype=F64)
    loc1, ls1 = model.encoder[1].loc_log_scale(x, z2)
    z1 = loc1 + ls1.exp() * torch.randn(loc1.shape, generator=generator, dtype=F64)
    log_q = _log_n(z2, loc2, ls2) + _log_n(z1, loc1, ls1)
    q2_frozen = _log_n(z2, *frozen[0].loc_log_scale(x))
    q1_frozen = _log_n(z1, *frozen[1].loc_log_scale(x, z2))
    log_q_sp = q2_frozen + q1_frozen
    log_q_sp_cut = q2_frozen + q1_frozen.detach()  # q(z_1 | x, z_2)'s path term lost
    log_q_sp_z2_cut = q2_frozen + _log_n(z1, *frozen[1].loc_log_scale(x, z2.detach()))
    log_q_ss = _log_n(z2.detach(), loc2, ls2) + _log_n(z1.detach(), *model.encoder[1].loc_log_scale(x, z2.detach()))
    if model.config.prior == "vamp":
        log_prior = _hand_vamp(model, z2, model.encoder[0])
        log_prior_path = _hand_vamp(model, z2, frozen[0])
        direct = _hand_vamp(model, z2.detach(), model.encoder[0])
    else:
        log_prior = log_prior_path = model.prior.log_prob(z2)
        direct = torch.zeros_like(log_prior)
    log_dec = _log_n(z1, *model.decoder[1].loc_log_scale(z2)) + Bernoulli(logits=model.decoder_output(z1, z2)).log_prob(
        x
    ).sum(-1)
    log_p = log_prior + log_dec
    return dict(
        log_p=log_p,
        log_q=log_q,
        log_q_sp=log_q_sp,
        log_q_ss=log_q_ss,
        log_w=log_p - log_q,
        path=log_p - log_q_sp,
        path_cut=log_p - log_q_sp_cut,
        path_z2_cut=log_p - log_q_sp_z2_cut,
        path_only=log_prior_path + log_dec - log_q_sp,
        direct=direct,
        zs=[z1, z2],
    )


def _hand_encoder_grads(model, x, k, which, seed=SEED, groups=1):
    parts = _hand_parts(model, x, k, _gen(seed))
    return list(torch.autograd.grad(-_hand_surrogate(parts, which, groups), model.encoder_parameters()))


# ----------------------------------------------------------------------------- exact checks
@pytest.mark.parametrize("prior", PRIORS)
def test_hand_parts_match_the_model(prior):
    """Sanity of the hand computation: its log-weights equal model.log_weights for the same seed, and its
    views equal add_views' in value."""
    model, x = _setup(prior)
    parts = _hand_parts(model, x, 5, _gen())
    views = add_views(model, model.log_weight_parts(x, 5, _gen()), stop_params=True, stop_samples=True)
    torch.testing.assert_close(parts["log_w"], views.log_weights, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["log_q_sp"], views.log_q_stop_params, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["log_q_ss"], views.log_q_stop_samples, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("objective,estimator", SUPPORTED, ids=[f"{o}-{e}" for o, e in SUPPORTED])
def test_decoder_gets_its_objectives_gradient_and_the_bound_is_true(prior, objective, estimator):
    """For every (objective, estimator) and prior: the decoder's and prior's gradients equal estimator
    reparam's on the same draws (PIWAE: IWAE(M*K)'s); the reported bound is the objective's true value on
    model.log_weights with the same seed; the encoder's gradient changes with the estimator."""
    model, x = _setup(prior)
    spec = ObjectiveSpec(**OBJECTIVE_SPECS[objective], estimator=estimator)
    bound, dec, enc = _step(model, x, spec)
    _, dec_ref, enc_ref = _step(model, x, ObjectiveSpec(**OBJECTIVE_SPECS[objective]))
    _assert_close(dec, dec_ref, f"decoder, {spec.label} {estimator} vs reparam")
    assert _flat(dec).abs().max() > 1e-3
    if objective == "piwae":
        _, dec_iwae, _ = _step(model, x, ObjectiveSpec("iwae", k=spec.k))
        _assert_close(dec, dec_iwae, "PIWAE's decoder vs IWAE")
    assert all(g is not None for g in enc)
    if estimator != "reparam":
        assert (_flat(enc) - _flat(enc_ref)).abs().max() > 1e-6
    with torch.no_grad():
        log_w = model.log_weights(x, spec.k, _gen())
    grouped = log_w.reshape(spec.m, spec.k // spec.m, -1)
    want = {
        "vae": lambda: objectives.elbo(log_w),
        "iwae": lambda: objectives.iwae(log_w),
        "miwae": lambda: objectives.miwae(grouped),
        "ciwae": lambda: objectives.ciwae(log_w, spec.beta),
        "piwae": lambda: objectives.iwae(log_w),
    }[objective]()
    torch.testing.assert_close(bound, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("estimator", ["stl", "dreg", "rws", "rws-dreg"])
def test_encoder_gradient_of_iwae_matches_the_hand_surrogate(prior, estimator):
    """IWAE(k=5)'s encoder gradient is the hand surrogate's: STL sum w~ (log p - log q_frozen), DReG w~^2 on
    the path and w~ on the VampPrior's direct term, RWS sum w~ log q(stop(z)), RWS-DReG (w~ - w~^2) on the
    path; the others' formulas give other gradients, and so does DReG with z_2 cut inside q(z_1 | x, z_2)."""
    model, x = _setup(prior)
    _, _, got = _step(model, x, ObjectiveSpec("iwae", k=5, estimator=estimator))
    _assert_close(got, _hand_encoder_grads(model, x, 5, estimator), f"{estimator} vs hand")
    for other in {"stl", "dreg", "rws", "rws-dreg"} - {estimator}:
        assert (_flat(got) - _flat(_hand_encoder_grads(model, x, 5, other))).abs().max() > 1e-6, other
    if estimator == "dreg":
        parts = _hand_parts(model, x, 5, _gen())
        w = torch.softmax(parts["log_w"].detach(), 0)
        cut = (w.square() * (parts["path_z2_cut"] - parts["direct"]) + w * parts["direct"]).sum()
        wrong = torch.autograd.grad(-cut, model.encoder_parameters())
        assert (_flat(got) - _flat(wrong)).abs().max() > 1e-6


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("objective", ["vae", "miwae", "ciwae", "piwae"])
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_encoder_gradient_of_other_objectives_matches_the_hand_surrogate(prior, objective, estimator):
    """STL and DReG for VAE(k=4) (both the ELBO of log p - log q_frozen), MIWAE(2,3) and PIWAE(2,3)'s encoder
    (per group of 3), CIWAE(0.3, 4) (beta ELBO + (1 - beta) IWAE surrogate), against hand surrogates."""
    model, x = _setup(prior)
    spec = ObjectiveSpec(**OBJECTIVE_SPECS[objective], estimator=estimator)
    _, _, got = _step(model, x, spec)
    parts = _hand_parts(model, x, spec.k, _gen())
    if objective == "vae":
        surrogate = parts["path"].mean(0).sum()
    elif objective in ("miwae", "piwae"):
        surrogate = _hand_surrogate(parts, estimator, groups=spec.m)
    else:
        surrogate = spec.beta * parts["path"].mean(0).sum() + (1 - spec.beta) * _hand_surrogate(parts, estimator)
    _assert_close(got, list(torch.autograd.grad(-surrogate, model.encoder_parameters())), f"{spec.label} {estimator}")


def test_k1_identities():
    """One sample: DReG's encoder gradient is STL's, RWS-DReG's is exactly zero, and STL differs from reparam."""
    model, x = _setup("vamp")
    _, _, dreg = _step(model, x, ObjectiveSpec("iwae", k=1, estimator="dreg"))
    _, _, stl = _step(model, x, ObjectiveSpec("iwae", k=1, estimator="stl"))
    _, _, reparam = _step(model, x, ObjectiveSpec("iwae", k=1))
    _assert_close(dreg, stl, "k=1 dreg vs stl")
    assert (_flat(stl) - _flat(reparam)).abs().max() > 1e-6
    _, _, rws_dreg = _step(model, x, ObjectiveSpec("iwae", k=1, estimator="rws-dreg"))
    assert all(g is None or torch.count_nonzero(g) == 0 for g in rws_dreg)


@pytest.mark.parametrize("estimator", ["reparam", "stl", "dreg", "rws", "rws-dreg"])
def test_decoder_runs_once_per_step(estimator):
    """One sampling and one pass of p(x | z_1, z_2) per training step, whatever the estimator."""
    model, x = _setup("vamp")
    calls = []
    handle = model.decoder[0].trunk.branch_a.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        accumulate_gradients(model, x, ObjectiveSpec("iwae", k=5, estimator=estimator), _gen())
    finally:
        handle.remove()
    assert calls == [torch.Size([5, x.shape[0], 3])]


# ----------------------------------------------------------------------------- unbiasedness
WRONG_STL_Q1 = "wrong: stl, q(z_1 | x, z_2)'s path term lost"
WRONG_DREG_Z2 = "wrong: dreg, z_2 cut inside q(z_1 | x, z_2)"


@functools.cache
def _all_draws(prior: str) -> dict:
    """Paired encoder-gradient draws of every (objective, estimator) of the UNBIASED list, their targets and
    the negative controls, on one tiny float64 HVAE: per draw one model.log_weight_parts with every view
    (all estimators see the same eps), one autograd.grad per surrogate. The HVAE's own controls are built
    from the hand parts with the same generator state (so the same eps)."""
    model, x = _setup(prior, B=2, seed=3)
    xr = x.repeat(REPS_ALL, 1)
    enc = model.encoder_parameters()
    g = _gen(97)
    keys = sorted({(o, e) for o, e, _ in UNBIASED} | {(o, t) for o, _, t in UNBIASED} | {("iwae", "stl")})
    keys.remove(("piwae", "reparam"))  # PIWAE's reparam encoder term is MIWAE's
    wrong = [("iwae", WRONG_DREG), ("iwae", WRONG_RWS_DREG)] if prior == "vamp" else []
    own = [("vae", WRONG_STL_Q1)]
    out: dict = {key: [] for key in keys + wrong + own}
    for _ in range(N_ALL):
        state = g.get_state()
        parts = add_views(
            model, model.log_weight_parts(xr, K_ALL, g, prior_direct=True), stop_params=True, stop_samples=True
        )
        specs = {(o, e): ObjectiveSpec(**ALL_SPECS[o], estimator=e) for o, e in keys}
        surrogates = {
            key: _encoder_term(model, gradient_terms(model, parts, spec).terms) for key, spec in specs.items()
        }
        w = torch.softmax(parts.log_weights.detach(), 0)
        path = parts.log_p - parts.log_q_stop_params
        if wrong:
            surrogates[wrong[0]] = (w.square() * path).sum(0)
            surrogates[wrong[1]] = ((w - w.square()) * path).sum(0)
        after = g.get_state()
        g.set_state(state)
        hand = _hand_parts(model, xr, K_ALL, g)
        torch.testing.assert_close(hand["log_w"], parts.log_weights, rtol=1e-10, atol=1e-10)  # the same eps
        g.set_state(after)
        surrogates[own[0]] = hand["path_cut"].mean(0)
        for key, surrogate in surrogates.items():
            grads = torch.autograd.grad(surrogate.sum(), enc, retain_graph=True)
            out[key].append(_flat(grads) / REPS_ALL)
    draws = {key: torch.stack(v) for key, v in out.items()}
    draws[("piwae", "reparam")] = draws[("miwae", "reparam")]
    return draws


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("objective,estimator,target", UNBIASED, ids=[f"{o}-{e}" for o, e, _ in UNBIASED])
def test_estimator_unbiased_for_every_prior(prior, objective, estimator, target):
    """E[DReG] = E[reparam] for VAE(6), IWAE(6), MIWAE(2,3), CIWAE(0.3, 6) and PIWAE(2,3)'s encoder, E[STL] =
    E[reparam] for the ELBO, E[RWS-DReG] = E[RWS] for IWAE(6), on the HVAE with the normal, mixture and
    VampPrior p(z_2): paired z-statistic over 3,000 draws below Z_ALL on every encoder component."""
    draws = _all_draws(prior)
    z = _z_max(draws[(objective, estimator)], draws[(objective, target)])
    assert z < Z_ALL, f"{estimator} for {objective} with the {prior} prior differs from {target} by {z:.1f} s.e."


@pytest.mark.parametrize("prior", PRIORS)
def test_unbiasedness_statistic_flags_biased_estimators(prior):
    """Negative controls with the same draws and threshold: STL for IWAE(6); the ELBO's STL without
    q(z_1 | x, z_2)'s path term; with the VampPrior, its direct term weighted like the path (w~^2 for DReG,
    w~ - w~^2 for RWS-DReG)."""
    draws = _all_draws(prior)
    checks = [(("iwae", "stl"), ("iwae", "reparam")), (("vae", WRONG_STL_Q1), ("vae", "reparam"))]
    if prior == "vamp":
        checks += [(("iwae", WRONG_DREG), ("iwae", "reparam")), (("iwae", WRONG_RWS_DREG), ("iwae", "rws"))]
    for wrong, target in checks:
        z = _z_max(draws[wrong], draws[target])
        assert z > Z_ALL, f"the statistic missed {wrong} (z = {z:.1f})"


def test_dreg_needs_the_path_through_z2():
    """DReG of IWAE(3) on the HVAE is unbiased (paired z-statistic against reparam over 3,000 draws) only
    with the path through z_2 into q(z_1 | x, z_2): the view with z_2 detached there drops
    w~^2 d log q(z_1 | x, z_2) / d z_2 . dz_2 / dphi, whose conditional mean given z_2 is zero without the
    weights but not with them, and the same statistic flags it. (How large that bias is depends on the
    model: this one, seed 5, shows it clearly; tests/test_hvae.py checks the view's gradient exactly.)"""
    model, x = _setup("normal", B=2, seed=5)
    xr = x.repeat(REPS_ALL, 1)
    enc = model.encoder_parameters()
    g = _gen(97)
    draws: dict = {"reparam": [], "dreg": [], WRONG_DREG_Z2: []}
    for _ in range(N_ALL):
        state = g.get_state()
        parts = model.log_weight_parts(xr, 3, g)
        after = g.get_state()
        g.set_state(state)
        hand = _hand_parts(model, xr, 3, g)
        g.set_state(after)
        w = torch.softmax(hand["log_w"].detach(), 0)
        surrogates = {
            e: _encoder_term(model, gradient_terms(model, parts, ObjectiveSpec("iwae", 3, estimator=e)).terms)
            for e in ("reparam", "dreg")
        }
        surrogates[WRONG_DREG_Z2] = (w.square() * hand["path_z2_cut"]).sum(0)
        for key, surrogate in surrogates.items():
            draws[key].append(_flat(torch.autograd.grad(surrogate.sum(), enc, retain_graph=True)) / REPS_ALL)
    draws = {key: torch.stack(v) for key, v in draws.items()}
    assert _z_max(draws["dreg"], draws["reparam"]) < Z_ALL
    z = _z_max(draws[WRONG_DREG_Z2], draws["reparam"])
    assert z > Z_ALL, f"the statistic missed {WRONG_DREG_Z2!r} (z = {z:.1f})"
