"""Tests for the encoder gradient estimators of iwae.estimators (reparam, stl, dreg, rws, rws-dreg).

What each estimator must do (Roeder et al. 2017; Tucker et al. 2019; Bornschein & Bengio 2015):

- the decoder (theta) always gets its objective's own reparameterised gradient, whatever the
  estimator, and the value reported is the true bound, not a surrogate;
- the encoder (phi) gets the estimator's surrogate: STL sum_i w~_i log w_i with q's parameters
  detached, DReG sum_i w~_i^2 log w_i (per group for MIWAE / PIWAE), RWS sum_i w~_i log q(stop(z_i)),
  RWS-DReG sum_i (w~_i - w~_i^2) log w_i;
- DReG is unbiased for the IWAE / MIWAE gradient and STL for the ELBO gradient (K = 1);
- with the VampPrior, log p(z) depends on phi directly: that term keeps the weight w~ in DReG
  and gets none in RWS-DReG (the identity of Tucker et al. rewrites only q's score term), so
  E[DReG] = E[reparam] and E[RWS-DReG] = E[RWS] for every prior and 1 or 2 stochastic layers.

Exact checks run in float64 against gradients computed here by hand from the model's networks and
torch.distributions, with the same seeded generator; the unbiasedness checks are statistical with
fixed seeds and each comes with a negative control that the same statistic must flag.
"""

from __future__ import annotations

import copy
import csv
import functools
import math
import re

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch.distributions import Bernoulli, Independent, Normal

from iwae import objectives
from iwae.cli import main
from iwae.data import Splits
from iwae.estimators import ESTIMATORS, ObjectiveSpec, accumulate_gradients, add_views, gradient_terms
from iwae.models import VAE, ModelConfig, VampPrior
from iwae.train import TrainConfig, train

F64 = torch.float64
SEED = 4321
CFG1 = ModelConfig(input_dim=12, latent_dims=(3,), hidden_dims=((8,),))
CFG2 = ModelConfig(input_dim=12, latent_dims=(4, 2), hidden_dims=((8,), (6,)))
CONFIGS = pytest.mark.parametrize("config", [CFG1, CFG2], ids=["1layer", "2layer"])


def _with_prior(config: ModelConfig, prior: str, components: int = 3) -> ModelConfig:
    return ModelConfig(
        config.input_dim,
        config.latent_dims,
        config.hidden_dims,
        prior=prior,
        prior_components=1 if prior == "normal" else components,
    )


# the exact checks also run with the priors that learn (mog) and that depend on the encoder (vamp)
PRIOR_CONFIGS = pytest.mark.parametrize(
    "config",
    [CFG1, CFG2, _with_prior(CFG1, "mog"), _with_prior(CFG1, "vamp"), _with_prior(CFG2, "vamp")],
    ids=["1layer", "2layer", "mog-1layer", "vamp-1layer", "vamp-2layer"],
)

# every (objective, estimator) pair ObjectiveSpec accepts, with small sample layouts
OBJECTIVE_SPECS = {
    "vae": dict(name="vae", k=4),
    "iwae": dict(name="iwae", k=4),
    "miwae": dict(name="miwae", k=6, m=2),
    "ciwae": dict(name="ciwae", k=4, beta=0.3),
    "piwae": dict(name="piwae", k=6, m=2),
}
SUPPORTED = [
    (obj, est) for est in ESTIMATORS for obj in objectives.OBJECTIVES if est not in ("rws", "rws-dreg") or obj == "iwae"
]


# ----------------------------------------------------------------------------- helpers
def _setup(config: ModelConfig = CFG1, B: int = 4, seed: int = 0):
    """A float64 model with nonzero biases (so every parameter matters) and a binary batch; a
    VampPrior's pseudo-inputs spread over (0, 1), a mixture's components apart."""
    torch.manual_seed(seed)
    model = VAE(config).double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
        if config.prior == "vamp":
            model.prior_module.raw.normal_(0.0, 1.5)
        if config.prior == "mog":
            model.prior_module.log_var.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.bernoulli(torch.full((B, config.input_dim), 0.4, dtype=F64), generator=g)
    return model, x


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _step(model: VAE, x: torch.Tensor, spec: ObjectiveSpec, seed: int = SEED):
    """accumulate_gradients from zeroed grads: returns (bound, decoder grads, encoder grads)."""
    model.zero_grad(set_to_none=True)
    bound = accumulate_gradients(model, x, spec, _gen(seed))
    dec = [None if p.grad is None else p.grad.detach().clone() for p in model.decoder_parameters()]
    enc = [None if p.grad is None else p.grad.detach().clone() for p in model.encoder_parameters()]
    model.zero_grad(set_to_none=True)
    return bound, dec, enc


def _assert_close(got, want, what: str, tol: float = 1e-10) -> None:
    assert len(got) == len(want) and len(got) > 0, what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a is not None, f"{what}: parameter {i} got no gradient"
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{what}: parameter {i}: {m}")


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def _hand_parts(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator) -> dict:
    """log p(x, z_i), log q(z_i|x) and its two stopped views, written independently of
    VAE.log_weight_parts and iwae.estimators.add_views: z = loc + scale * eps with the same draws, densities from
    torch.distributions, q's parameters "detached" through a frozen deep copy of the encoder."""
    frozen = copy.deepcopy(model.encoder).requires_grad_(False)
    loc, log_scale = model.encoder[0].loc_log_scale(x)
    eps = torch.randn((k,) + loc.shape, generator=generator, dtype=F64)
    z = loc + log_scale.exp() * eps
    f_loc, f_log_scale = frozen[0].loc_log_scale(x)
    log_q = Normal(loc, log_scale.exp()).log_prob(z).sum(-1)
    log_q_sp = Normal(f_loc, f_log_scale.exp()).log_prob(z).sum(-1)  # gradient through z only
    log_q_ss = Normal(loc, log_scale.exp()).log_prob(z.detach()).sum(-1)  # gradient through phi only
    log_q_sp_cut = log_q_sp  # a wrong variant for negative controls: layers l > 1 without gradient
    zs = [z]
    for layer, f_layer in zip(model.encoder[1:], frozen[1:]):
        below = zs[-1]
        loc, log_scale = layer.loc_log_scale(below)
        eps = torch.randn(loc.shape, generator=generator, dtype=F64)
        z = loc + log_scale.exp() * eps
        log_q = log_q + Normal(loc, log_scale.exp()).log_prob(z).sum(-1)
        f_loc, f_log_scale = f_layer.loc_log_scale(below)  # frozen weights, input still attached
        log_q_sp = log_q_sp + Normal(f_loc, f_log_scale.exp()).log_prob(z).sum(-1)
        s_loc, s_log_scale = layer.loc_log_scale(below.detach())
        log_q_ss = log_q_ss + Normal(s_loc, s_log_scale.exp()).log_prob(z.detach()).sum(-1)
        log_q_sp_cut = log_q_sp_cut + Normal(f_loc, f_log_scale.exp()).log_prob(z).sum(-1).detach()
        zs.append(z)
    if isinstance(model.prior_module, VampPrior):
        # (1/C) sum_c q(z_L | u_c) written out; the frozen encoder gives the prior without its
        # direct dependence on phi, the detached z the direct dependence alone
        log_prior = _hand_vamp(model, zs[-1], model.encoder)
        log_prior_path = _hand_vamp(model, zs[-1], frozen)
        direct = _hand_vamp(model, zs[-1].detach(), model.encoder)
    else:
        log_prior = log_prior_path = model.prior.log_prob(zs[-1])
        direct = torch.zeros_like(log_prior)
    log_dec = 0.0
    for layer, above, below in zip(model.decoder[1:], zs[1:], zs[:-1]):
        loc, log_scale = layer.loc_log_scale(above)
        log_dec = log_dec + Normal(loc, log_scale.exp()).log_prob(below).sum(-1)
    log_dec = log_dec + Bernoulli(logits=model.decoder[0].logits(zs[0])).log_prob(x).sum(-1)
    log_p = log_prior + log_dec
    return dict(
        log_p=log_p,
        log_q=log_q,
        log_q_sp=log_q_sp,
        log_q_ss=log_q_ss,
        log_w=log_p - log_q,
        path=log_p - log_q_sp,
        path_cut=log_p - log_q_sp_cut,
        zs=zs,
        path_only=log_prior_path + log_dec - log_q_sp,
        direct=direct,
    )


def _hand_vamp(model: VAE, z: torch.Tensor, encoder) -> torch.Tensor:
    """log (1/C) sum_c q(z | u_c) with q(z_L | u) the chain of ``encoder`` at the means of the layers below."""
    h = model.prior_module.pseudo_inputs
    for layer in encoder:
        loc, log_scale = layer.loc_log_scale(h)
        h = loc
    components = Independent(Normal(loc, log_scale.exp()), 1)  # batch (C,)
    return torch.logsumexp(components.log_prob(z.unsqueeze(-2)), -1) - math.log(loc.shape[0])


def _hand_surrogate(parts: dict, which: str, groups: int = 1) -> torch.Tensor:
    """The encoder surrogate (summed over the batch) of ``which``, built by hand; ``groups`` splits
    the K samples into consecutive groups with weights normalised within each group (MIWAE)."""
    log_w, path, path_only, direct = parts["log_w"], parts["path"], parts["path_only"], parts["direct"]
    k = log_w.shape[0]
    size = k // groups
    total = log_w.new_zeros(())
    for g in range(groups):
        rows = slice(g * size, (g + 1) * size)
        w = torch.softmax(log_w[rows].detach(), dim=0)  # w~, held constant
        if which == "stl":
            term = w * path[rows]
        elif which == "dreg":  # the path P with w~^2, the prior's direct term D with w~
            term = w.square() * path_only[rows] + w * direct[rows]
        elif which == "rws":
            term = w * parts["log_q_ss"][rows]
        elif which == "rws-dreg":  # the path P only
            term = (w - w.square()) * path_only[rows]
        elif which == "wrong: dreg, w~^2 on the prior's direct term":
            term = w.square() * path[rows]
        elif which == "wrong: rws-dreg, w~ - w~^2 on the prior's direct term":
            term = (w - w.square()) * path[rows]
        elif which == "wrong: log p only":  # drops log q's path term too
            term = w * parts["log_p"][rows]
        elif which == "wrong: stl, q(z_2|z_1) detached":
            term = w * parts["path_cut"][rows]
        else:
            raise AssertionError(which)
        total = total + term.sum() / groups
    return total


def _hand_encoder_grads(model: VAE, x: torch.Tensor, k: int, which: str, seed: int = SEED, groups: int = 1):
    """The gradient accumulate_gradients should leave in the encoder's .grad: that of the negated surrogate."""
    parts = _hand_parts(model, x, k, _gen(seed))
    grads = torch.autograd.grad(-_hand_surrogate(parts, which, groups), model.encoder_parameters())
    return list(grads)


# ----------------------------------------------------------------------------- 1, 2: decoder and bound
@PRIOR_CONFIGS
@pytest.mark.parametrize("objective,estimator", SUPPORTED, ids=[f"{o}-{e}" for o, e in SUPPORTED])
def test_decoder_gradient_does_not_depend_on_estimator(config, objective, estimator):
    """For every estimator and every objective it supports, the decoder's (and prior's) gradients
    equal those of estimator='reparam' on the same draws (float64, 1e-10); for PIWAE they are also
    the IWAE(M*K) gradient. The encoder's gradient, by contrast, does change with the estimator
    (so a spec whose estimator is ignored fails)."""
    model, x = _setup(config)
    spec = ObjectiveSpec(**OBJECTIVE_SPECS[objective], estimator=estimator)
    _, dec, enc = _step(model, x, spec)
    _, dec_ref, enc_ref = _step(model, x, ObjectiveSpec(**OBJECTIVE_SPECS[objective]))
    _assert_close(dec, dec_ref, f"decoder, {spec.label} {estimator} vs reparam")
    assert _flat(dec).abs().max() > 1e-3, "the decoder got a vanishing gradient"
    if objective == "piwae":
        _, dec_iwae, _ = _step(model, x, ObjectiveSpec("iwae", k=spec.k))
        _assert_close(dec, dec_iwae, f"decoder, {spec.label} {estimator} vs IWAE({spec.k})")
    assert all(g is not None for g in enc), "an encoder parameter got no gradient"
    if estimator != "reparam":
        assert (_flat(enc) - _flat(enc_ref)).abs().max() > 1e-6, f"{estimator} gave the reparam encoder gradient"


@PRIOR_CONFIGS
@pytest.mark.parametrize("objective,estimator", SUPPORTED, ids=[f"{o}-{e}" for o, e in SUPPORTED])
def test_reported_bound_is_the_true_objective(config, objective, estimator):
    """accumulate_gradients returns, for every estimator, the objective's true value per example
    (IWAE(M*K) for PIWAE) on model.log_weights drawn with the same seed, detached, shape (B,):
    not the estimator's surrogate (which for DReG/RWS has another value)."""
    model, x = _setup(config)
    spec = ObjectiveSpec(**OBJECTIVE_SPECS[objective], estimator=estimator)
    bound, _, _ = _step(model, x, spec)
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
    assert bound.shape == (x.shape[0],)
    assert not bound.requires_grad and bound.grad_fn is None
    torch.testing.assert_close(bound, want, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(bound).all() and (bound < 0).all()


# ----------------------------------------------------------------------------- 3: K = 1 identities
@CONFIGS
def test_k1_identities(config):
    """With one sample w~ = 1: DReG's encoder gradient equals STL's (IWAE, k=1), RWS-DReG's
    (w~ - w~^2 = 0) is exactly zero; for the VAE objective DReG is STL for any k. STL's differs
    from reparam's (the dropped score term), so these comparisons are not vacuous."""
    model, x = _setup(config)
    _, _, dreg = _step(model, x, ObjectiveSpec("iwae", k=1, estimator="dreg"))
    _, _, stl = _step(model, x, ObjectiveSpec("iwae", k=1, estimator="stl"))
    _, _, reparam = _step(model, x, ObjectiveSpec("iwae", k=1))
    _assert_close(dreg, stl, "IWAE(k=1): dreg vs stl")
    assert (_flat(stl) - _flat(reparam)).abs().max() > 1e-6

    _, _, rws_dreg = _step(model, x, ObjectiveSpec("iwae", k=1, estimator="rws-dreg"))
    for i, g in enumerate(rws_dreg):
        assert g is None or torch.count_nonzero(g) == 0, f"rws-dreg, k=1: encoder parameter {i} got {g}"
    _, _, rws = _step(model, x, ObjectiveSpec("iwae", k=1, estimator="rws"))
    assert _flat(rws).abs().max() > 1e-6  # RWS at k=1 is the score function: zero only on average

    for k in (1, 4):
        _, _, dreg = _step(model, x, ObjectiveSpec("vae", k=k, estimator="dreg"))
        _, _, stl = _step(model, x, ObjectiveSpec("vae", k=k, estimator="stl"))
        _assert_close(dreg, stl, f"VAE(k={k}): dreg vs stl")


# ----------------------------------------------------------------------------- 4: the formulas by hand
@PRIOR_CONFIGS
@pytest.mark.parametrize("estimator", ["stl", "dreg", "rws", "rws-dreg"])
def test_encoder_gradient_matches_hand_formula(config, estimator):
    """The encoder gradient of IWAE(k=5) equals the gradient of a surrogate built here by hand
    with autograd.grad: STL sum_i w~_i [log p(x,z_i) - log q(z_i|x; phi detached)], DReG the same
    with w~_i^2, RWS sum_i w~_i log q(z_i.detach()|x), RWS-DReG with (w~_i - w~_i^2), z_i = loc +
    scale * eps_i from the model's own networks and torch.distributions (2 layers: z_2 from z_1,
    layer 2's weights frozen but its input z_1 attached). The hand formulas of the other estimators
    give different gradients, so a swapped formula fails."""
    model, x = _setup(config)
    k = 5
    _, _, got = _step(model, x, ObjectiveSpec("iwae", k=k, estimator=estimator))
    want = _hand_encoder_grads(model, x, k, estimator)
    _assert_close(got, want, f"{estimator} encoder gradient vs hand formula")
    for other in {"stl", "dreg", "rws", "rws-dreg"} - {estimator}:
        assert (_flat(got) - _flat(_hand_encoder_grads(model, x, k, other))).abs().max() > 1e-6, other


@PRIOR_CONFIGS
@pytest.mark.parametrize("objective", ["vae", "miwae", "ciwae"])
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_encoder_gradient_matches_hand_formula_other_objectives(config, objective, estimator):
    """STL and DReG for the other single-bound objectives, against hand surrogates: VAE(k=4) both
    mean_i log w_i (phi detached in q; DReG of an ELBO is STL); MIWAE(2,3) per group of 3 consecutive
    samples, w~ (STL) or w~^2 (DReG) normalised in the group, averaged over groups; CIWAE(beta=0.3,
    k=4) beta * mean_i log w_i + (1 - beta) * sum_i w~_i log w_i (STL) or w~_i^2 (DReG)."""
    model, x = _setup(config)
    spec = ObjectiveSpec(**OBJECTIVE_SPECS[objective], estimator=estimator)
    _, _, got = _step(model, x, spec)
    parts = _hand_parts(model, x, spec.k, _gen())
    if objective == "vae":
        surrogate = parts["path"].mean(0).sum()
    elif objective == "miwae":
        surrogate = _hand_surrogate(parts, estimator, groups=spec.m)
    else:
        surrogate = spec.beta * parts["path"].mean(0).sum() + (1 - spec.beta) * _hand_surrogate(parts, estimator)
    want = torch.autograd.grad(-surrogate, model.encoder_parameters())
    _assert_close(got, list(want), f"{spec.label} {estimator} encoder gradient vs hand formula")


@PRIOR_CONFIGS
def test_hand_log_weights_match_model(config):
    """Sanity of the hand computation the other tests rely on: its log-weights equal
    model.log_weights drawn with the same seed (same eps order, same densities)."""
    model, x = _setup(config)
    with torch.no_grad():
        want = model.log_weights(x, 5, _gen())
        parts = _hand_parts(model, x, 5, _gen())
    torch.testing.assert_close(parts["log_w"], want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["path"], want, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- 5, 6: unbiasedness
Z_MAX = 5.0  # |mean difference| / its standard error, on every component


def _draws(
    model: VAE,
    x: torch.Tensor,
    n: int,
    reps: int,
    seed: int,
    spec: ObjectiveSpec | None = None,
    hand: tuple[str, int, int] | None = None,
) -> torch.Tensor:
    """n i.i.d. encoder-gradient estimates, each averaging ``reps`` independent draws (x repeated
    ``reps`` times in one batch; gradients are summed over the batch, so divided by reps), shape
    (n, P). Either by accumulate_gradients(spec) or by the hand surrogate ``hand = (which, k, groups)``
    with the same generator, so the same seed gives the same eps for both (paired draws)."""
    xr = x.repeat(reps, 1)
    g = _gen(seed)
    out = []
    for _ in range(n):
        if spec is not None:
            model.zero_grad(set_to_none=True)
            accumulate_gradients(model, xr, spec, g)
            grads = [p.grad for p in model.encoder_parameters()]
        else:
            which, k, groups = hand
            parts = _hand_parts(model, xr, k, g)
            grads = torch.autograd.grad(-_hand_surrogate(parts, which, groups), model.encoder_parameters())
        out.append(_flat(grads).detach() / reps)
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def _z_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over components of |mean(a - b)| / se(mean(a - b)), from paired draws (common random
    numbers: a and b were computed on the same eps). Where the difference has no variance (it is
    deterministic) the means must agree exactly, else the answer is infinite."""
    d = a - b
    mean, se = d.mean(0), d.std(0) / math.sqrt(d.shape[0])
    flat = se <= 1e-12 * (a.abs().mean() + 1e-300)
    if (mean[flat].abs() > 1e-10).any():
        return math.inf
    assert (~flat).sum() >= 10, "too few random components to test"
    return (mean[~flat] / se[~flat]).abs().max().item()


N_DRAWS, REPS = 250, 10  # 2,500 draws per estimator


@CONFIGS
def test_dreg_unbiased_for_iwae_with_negative_control(config):
    """DReG is unbiased for the IWAE(k=5) encoder gradient: over 2,500 draws (250 means of 10) the
    mean DReG and the mean reparameterised IWAE gradients agree within Z_MAX standard errors of
    their (paired) difference on every encoder component. Negative control: the same statistic
    flags a wrong surrogate built by hand with w~ instead of w~^2 (biased for K > 1)."""
    model, x = _setup(config, B=3)
    spec = dict(name="iwae", k=5)
    reparam = _draws(model, x, N_DRAWS, REPS, 7, ObjectiveSpec(**spec))
    dreg = _draws(model, x, N_DRAWS, REPS, 7, ObjectiveSpec(**spec, estimator="dreg"))
    z = _z_max(dreg, reparam)
    assert z < Z_MAX, f"DReG's mean differs from the IWAE gradient's by {z:.1f} standard errors"
    # the hand DReG is the same estimator, the hand "w~ instead of w~^2" is not
    hand_dreg = _draws(model, x, N_DRAWS, REPS, 7, hand=("dreg", 5, 1))
    torch.testing.assert_close(hand_dreg, dreg, rtol=1e-9, atol=1e-10)
    wrong = _draws(model, x, N_DRAWS, REPS, 7, hand=("stl", 5, 1))
    z_wrong = _z_max(wrong, reparam)
    assert z_wrong > Z_MAX, f"the statistic missed a biased surrogate (z = {z_wrong:.1f})"


def test_dreg_unbiased_for_miwae_with_negative_control():
    """DReG is unbiased for the MIWAE(2,3) encoder gradient (weights normalised per group):
    same paired statistic against estimator='reparam'. Negative controls: DReG of IWAE(6) (one
    group of 6, the gradient of another objective) and a hand MIWAE surrogate with w~ instead of
    w~^2 are both flagged."""
    model, x = _setup(CFG1, B=3)
    reparam = _draws(model, x, N_DRAWS, REPS, 11, ObjectiveSpec("miwae", k=6, m=2))
    dreg = _draws(model, x, N_DRAWS, REPS, 11, ObjectiveSpec("miwae", k=6, m=2, estimator="dreg"))
    z = _z_max(dreg, reparam)
    assert z < Z_MAX, f"DReG's mean differs from the MIWAE(2,3) gradient's by {z:.1f} standard errors"
    one_group = _draws(model, x, N_DRAWS, REPS, 11, ObjectiveSpec("iwae", k=6, estimator="dreg"))
    assert _z_max(one_group, reparam) > Z_MAX, "the statistic missed DReG of IWAE(6) for MIWAE(2,3)"
    wrong = _draws(model, x, N_DRAWS, REPS, 11, hand=("stl", 6, 2))
    assert _z_max(wrong, reparam) > Z_MAX, "the statistic missed a biased MIWAE surrogate"


@CONFIGS
def test_stl_unbiased_for_k1(config):
    """STL is unbiased for K = 1: its mean encoder gradient equals the mean reparameterised ELBO
    gradient (VAE, k=1) within Z_MAX paired standard errors on every component; IWAE with k=1 and
    STL or DReG gives the same draws. Negative controls, flagged by the same statistic: a hand
    surrogate w~ log p(x, z) (log q's path term dropped as well) and, with 2 layers, STL with the
    whole log q(z_2 | z_1) term detached (the upper layer's path term lost). (Detaching only z_1
    inside q(z_2 | z_1) would not do: that drops a term of conditional mean zero, still unbiased.)"""
    model, x = _setup(config, B=3)
    reparam = _draws(model, x, N_DRAWS, REPS, 3, ObjectiveSpec("vae", k=1))
    stl = _draws(model, x, N_DRAWS, REPS, 3, ObjectiveSpec("vae", k=1, estimator="stl"))
    assert (stl - reparam).abs().max() > 1e-6  # not the same estimator
    z = _z_max(stl, reparam)
    assert z < Z_MAX, f"STL's mean differs from the ELBO gradient's by {z:.1f} standard errors"
    for estimator in ("stl", "dreg"):
        iw = _draws(model, x, N_DRAWS, REPS, 3, ObjectiveSpec("iwae", k=1, estimator=estimator))
        torch.testing.assert_close(iw, stl, rtol=1e-9, atol=1e-10)
    wrong = ["wrong: log p only"] + (["wrong: stl, q(z_2|z_1) detached"] if len(config.latent_dims) > 1 else [])
    for which in wrong:
        z_wrong = _z_max(_draws(model, x, N_DRAWS, REPS, 3, hand=(which, 1, 1)), reparam)
        assert z_wrong > Z_MAX, f"the statistic missed {which!r} (z = {z_wrong:.1f})"


# ----------------------------------------------------------------------------- 6b: every prior, 1 and 2 layers
# One sample size for every objective, so that one forward pass per draw serves all of them:
# VAE(k=6), IWAE(k=6), MIWAE(2,3), CIWAE(beta=0.3, k=6), PIWAE(2,3).
K_ALL = 6
ALL_SPECS = {
    "vae": dict(name="vae", k=K_ALL),
    "iwae": dict(name="iwae", k=K_ALL),
    "miwae": dict(name="miwae", k=K_ALL, m=2),
    "ciwae": dict(name="ciwae", k=K_ALL, beta=0.3),
    "piwae": dict(name="piwae", k=K_ALL, m=2),
}
# (objective, estimator, the estimator whose expectation it must have): DReG that of the
# reparameterised gradient of every objective, STL that of the ELBO's (any K), RWS-DReG that of RWS
UNBIASED = [(o, "dreg", "reparam") for o in ALL_SPECS] + [("vae", "stl", "reparam"), ("iwae", "rws-dreg", "rws")]
# 3,000 draws as 120 means of 25 independent replicas: one call per mean keeps the test fast,
# and the means are close to normal even where single draws (importance weights) are skewed
N_ALL, REPS_ALL = 120, 25
# Bonferroni over the whole family: 7 checks x 6 models x up to 220 components ~ 1e4 comparisons;
# a two-sided Student-t tail (119 degrees of freedom) beyond 5.5 standard errors has probability
# about 2e-7 each, so a family-wise false alarm of about 2e-3 (the seeds are fixed, so the outcome
# is deterministic; the margin is what makes it safe to change them).
Z_ALL = 5.5
WRONG_DREG = "wrong: dreg, w~^2 on the prior's direct term"
WRONG_RWS_DREG = "wrong: rws-dreg, w~ - w~^2 on the prior's direct term"


def _encoder_term(model: VAE, terms) -> torch.Tensor:
    """The surrogate of gradient_terms whose gradient goes to the encoder (params None: to all)."""
    encoder = {id(p) for p in model.encoder_parameters()}
    for surrogate, params in terms:
        if params is None or encoder <= {id(p) for p in params}:
            return surrogate
    raise AssertionError("no term trains the encoder")


@functools.cache
def _all_draws(prior: str, layers: int) -> dict:
    """Paired encoder-gradient draws of every (objective, estimator) in UNBIASED, their targets
    and the negative controls, on one tiny float64 model with ``prior``: per draw one call of
    model.log_weight_parts with every view added (so all estimators see the same eps), then one
    autograd.grad per surrogate from gradient_terms. Shape (N_ALL, P) per key (objective, estimator)."""
    model, x = _setup(_with_prior(CFG1 if layers == 1 else CFG2, prior), B=2, seed=3)
    xr = x.repeat(REPS_ALL, 1)
    enc = model.encoder_parameters()
    g = _gen(97)
    keys = sorted({(o, e) for o, e, _ in UNBIASED} | {(o, t) for o, _, t in UNBIASED} | {("iwae", "stl")})
    keys.remove(("piwae", "reparam"))  # PIWAE's reparam encoder term is MIWAE's: the same draws
    wrong = [("iwae", WRONG_DREG), ("iwae", WRONG_RWS_DREG)] if prior == "vamp" else []
    out: dict = {key: [] for key in keys + wrong}
    for _ in range(N_ALL):
        parts = add_views(
            model, model.log_weight_parts(xr, K_ALL, g, prior_direct=True), stop_params=True, stop_samples=True
        )
        surrogates = {
            (o, e): _encoder_term(model, gradient_terms(model, parts, ObjectiveSpec(**ALL_SPECS[o], estimator=e)).terms)
            for o, e in keys
        }
        # the surrogates as they were before the prior's direct term was weighted apart
        w = torch.softmax(parts.log_weights.detach(), 0)
        path = parts.log_p - parts.log_q_stop_params
        if wrong:
            surrogates[wrong[0]] = (w.square() * path).sum(0)
            surrogates[wrong[1]] = ((w - w.square()) * path).sum(0)
        else:  # no direct term: the old and the new surrogates are the same, so only check that once
            torch.testing.assert_close(surrogates[("iwae", "dreg")], (w.square() * path).sum(0), rtol=0, atol=0)
            torch.testing.assert_close(
                surrogates[("iwae", "rws-dreg")], ((w - w.square()) * path).sum(0), rtol=0, atol=0
            )
        for key, surrogate in surrogates.items():
            grads = torch.autograd.grad(surrogate.sum(), enc, retain_graph=True)
            out[key].append(_flat(grads) / REPS_ALL)
    draws = {key: torch.stack(v) for key, v in out.items()}
    draws[("piwae", "reparam")] = draws[("miwae", "reparam")]
    return draws


ALL_MODELS = [(p, n) for p in ("normal", "mog", "vamp") for n in (1, 2)]


@pytest.mark.parametrize("prior,layers", ALL_MODELS, ids=[f"{p}-{n}layer" for p, n in ALL_MODELS])
@pytest.mark.parametrize("objective,estimator,target", UNBIASED, ids=[f"{o}-{e}" for o, e, _ in UNBIASED])
def test_estimator_unbiased_for_every_prior(prior, layers, objective, estimator, target):
    """E[DReG] = E[reparam] for VAE(6), IWAE(6), MIWAE(2,3), CIWAE(0.3, 6) and PIWAE(2,3)'s encoder
    (MIWAE), E[STL] = E[reparam] for the ELBO, E[RWS-DReG] = E[RWS] for IWAE(6): with the normal,
    the mixture (3 components) and the VampPrior (3 pseudo-inputs, whose log p(z) depends on the
    encoder directly), 1 and 2 stochastic layers. Paired z-statistic over 3,000 draws on every
    encoder component, below the Bonferroni-safe Z_ALL. The negative controls in
    test_unbiasedness_statistic_flags_biased_estimators use the same draws and threshold."""
    draws = _all_draws(prior, layers)
    z = _z_max(draws[(objective, estimator)], draws[(objective, target)])
    assert z < Z_ALL, (
        f"{estimator} for {objective} with the {prior} prior, {layers} layer(s): its mean differs "
        f"from {target}'s by {z:.1f} standard errors"
    )


@pytest.mark.parametrize("prior,layers", ALL_MODELS, ids=[f"{p}-{n}layer" for p, n in ALL_MODELS])
def test_unbiasedness_statistic_flags_biased_estimators(prior, layers):
    """Negative controls for test_estimator_unbiased_for_every_prior, same draws and threshold:
    STL for IWAE(6) (biased for K > 1) is flagged with every prior; with the VampPrior so are the
    surrogates that weight its direct dependence on phi like the path (w~^2 for DReG, w~ - w~^2
    for RWS-DReG), which is what dreg and rws-dreg computed before; with the other priors those
    are the same estimators as dreg and rws-dreg (log p has no direct term)."""
    draws = _all_draws(prior, layers)
    z = _z_max(draws[("iwae", "stl")], draws[("iwae", "reparam")])
    assert z > Z_ALL, f"the statistic missed STL's bias for IWAE(6) (z = {z:.1f})"
    if prior != "vamp":  # _all_draws checked that the wrong surrogates equal dreg's and rws-dreg's
        return
    for wrong, target in [(WRONG_DREG, "reparam"), (WRONG_RWS_DREG, "rws")]:
        z = _z_max(draws[("iwae", wrong)], draws[("iwae", target)])
        assert z > Z_ALL, f"the statistic missed {wrong!r} (z = {z:.1f})"


# ----------------------------------------------------------------------------- 7: PIWAE with DReG
@PRIOR_CONFIGS
def test_piwae_dreg_routes_miwae_dreg_to_encoder_and_iwae_to_decoder(config):
    """PIWAE(3,2) with dreg: the encoder's gradient is DReG of MIWAE(3,2), computed here by hand as
    (1/M) sum_m sum_k w~_{m,k}^2 log w_{m,k} with w~ normalised within each group of 2 consecutive
    samples (not DReG of IWAE(6), which differs); the decoder's is the reparameterised IWAE(6)
    gradient (autograd of -IWAE(6).sum()), not MIWAE's."""
    model, x = _setup(config)
    m, k = 3, 6
    _, dec, enc = _step(model, x, ObjectiveSpec("piwae", k=k, m=m, estimator="dreg"))
    want_enc = _hand_encoder_grads(model, x, k, "dreg", groups=m)
    _assert_close(enc, want_enc, "PIWAE dreg encoder vs hand MIWAE(3,2) DReG")
    one_group = _hand_encoder_grads(model, x, k, "dreg", groups=1)
    assert (_flat(enc) - _flat(one_group)).abs().max() > 1e-6

    log_w = model.log_weights(x, k, _gen())
    want_dec = torch.autograd.grad(-objectives.iwae(log_w).sum(), model.decoder_parameters())
    _assert_close(dec, list(want_dec), "PIWAE dreg decoder vs IWAE(6)")
    log_w = model.log_weights(x, k, _gen())
    miwae_dec = torch.autograd.grad(-objectives.miwae(log_w.reshape(m, k // m, -1)).sum(), model.decoder_parameters())
    assert (_flat(dec) - _flat(miwae_dec)).abs().max() > 1e-6


# ----------------------------------------------------------------------------- 8: refusals
# (ObjectiveSpec's refusals are tested with the estimator table in tests/test_estimators.py)
def test_cli_refuses_rws_with_ciwae(tmp_path):
    """`iwae train --objective ciwae --estimator rws` exits with status 2 and exactly one 'Error:'
    line naming the estimator, without a traceback and without creating the run directory."""
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--objective", "ciwae", "--estimator", "rws", "--out", str(out)])
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith("Error: "), text
    for name in ("rws", "ciwae", "reparam"):
        assert re.search(rf"(?<![\w-]){name}(?![\w-])", errors[0]), (name, errors[0])
    assert not out.exists()


# ----------------------------------------------------------------------------- 9: one decoder pass
@PRIOR_CONFIGS
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_decoder_runs_once_per_step(config, estimator):
    """accumulate_gradients samples once and runs the decoder's first layer forward exactly once,
    whatever the estimator (the encoder's term back-propagates through the same graph)."""
    model, x = _setup(config)
    calls = []
    handle = model.decoder[0].body[0].register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    try:
        accumulate_gradients(model, x, ObjectiveSpec("iwae", k=5, estimator=estimator), _gen())
    finally:
        handle.remove()
    assert len(calls) == 1, calls
    assert calls[0][:2] == (5, x.shape[0])
    assert all(p.grad is not None for p in model.decoder_parameters())


# ----------------------------------------------------------------------------- 10: end to end
@pytest.fixture(scope="module")
def small_splits(mnist_splits) -> Splits:
    s = mnist_splits
    return Splits("mnist", s.train[:60].clone(), s.valid[:20].clone(), s.test[:20].clone(), True)


def _check_run(run_dir, estimator: str) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["estimator"] == estimator
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    bounds = {key: float(value) for key, value in rows[0].items() if key == "train_bound" or key.startswith("valid_L")}
    assert len(bounds) == 2, rows[0]
    for key, value in bounds.items():
        assert math.isfinite(value) and value < 0, (key, value)
    assert (run_dir / "model.safetensors").is_file()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_trains_from_the_api(tmp_path, small_splits, estimator):
    """iwae.train.train runs one epoch of IWAE(k=3) on 60 MNIST images with each estimator: finite
    (negative) training and validation bounds in metrics.csv, and config.yaml records the estimator."""
    config = TrainConfig(
        estimator=estimator,
        objective="iwae",
        k=3,
        epochs=1,
        latent_dims=[4],
        hidden_dims=[[16]],
        out=str(tmp_path / estimator),
        seed=0,
    )
    run_dir = train(config, progress=False, splits=small_splits)
    _check_run(run_dir, estimator)


def test_dreg_trains_from_the_cli(tmp_path, shared_data_dir):
    """`iwae train --estimator dreg --train-subset 100 --epochs 1` on the shared MNIST exits 0 and
    writes a run whose config.yaml says dreg and whose metrics.csv holds finite bounds."""
    out = tmp_path / "run"
    args = [
        "train",
        "--objective",
        "iwae",
        "--k",
        "3",
        "--estimator",
        "dreg",
        "--train-subset",
        "100",
        "--epochs",
        "1",
        "--latent-dims",
        "4",
        "--hidden-dims",
        "16",
        "--data-dir",
        str(shared_data_dir),
        "--quiet",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    _check_run(out, "dreg")
