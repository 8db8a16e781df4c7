"""Tests of the two-level HVAE (iwae.models.HVAE) against hand computations from its formulas.

- log w = log p(z_2) + log N(z_1; p(z_1 | z_2)) + log p(x | z_1, z_2) - log N(z_2; q(z_2 | x))
  - log N(z_1; q(z_1 | x, z_2)),
  computed here from the networks' weights (GatedDense (W h + b) * sigmoid(V h + c) or tanh layers, the
  branches joined by concatenation, the heads with their Hardtanh(-6, 2) bound), Normal log-densities
  written out, the Bernoulli, Gaussian and discretized-logistic masses written out, the normal, mixture and
  VampPrior densities written out; eps_2 then eps_1 from one generator. Negative controls: the same hand
  computation with q(z_1 | .) blind to z_2, or with p(x | .) blind to z_2, or with the draws in the other
  order, differs.
- the paper's structure: the shapes and the parameter count of the paper's code (models/HVAE_2level.py),
  He-normal weights, the log-variance bounds; mlp the same structure with tanh layers.
- the latents' order (zs = [z_1, z_2], latent_dims (D_1, D_2), the prior on z_2), the views of log q
  (the path view keeps the gradient through z_2 into q(z_1 | x, z_2)), active units per layer, ELBO surgery
  on z_2, q_EW, samples and reconstructions, configs, the run folder and members.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from iwae.analysis import elbo_surgery, reconstruct, sample_images, sample_qew, surgery_text
from iwae.config import TrainConfig, configure
from iwae.estimators import add_views
from iwae.evaluate import active_units, log_likelihood
from iwae.members import stackable
from iwae.memory import bytes_per_row as _bytes_per_row
from iwae.models import HVAE, VAE, ModelConfig, make_model
from iwae.models.gated import GatedDense
from iwae.models.networks import Tanh
from iwae.rundir import model_digest

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)
D, D1, D2, B, K = 12, 3, 2, 4, 5
HIDDEN = ((7, 6), (5, 4))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def config(network: str = "gated", prior: str = "normal", likelihood: str = "bernoulli", **kw) -> ModelConfig:
    return ModelConfig(
        D,
        (D1, D2),
        HIDDEN,
        prior=prior,
        prior_components=1 if prior == "normal" else 3,
        likelihood=likelihood,
        network=network,
        model="hvae",
        **kw,
    )


def setup(cfg: ModelConfig, seed: int = 0):
    """A float64 HVAE with every bias nonzero, a spread VampPrior or mixture, and a batch of data in its support."""
    torch.manual_seed(seed)
    model = HVAE(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
        if cfg.prior == "vamp":
            model.prior_module.raw.normal_(0.0, 1.5)
        if cfg.prior == "mog":
            model.prior_module.log_var.normal_(0.0, 0.3)
    g = gen(seed + 1)
    if cfg.likelihood == "bernoulli":
        x = torch.bernoulli(torch.full((B, D), 0.4, dtype=F64), generator=g)
    else:
        x = torch.randint(0, 256, (B, D), generator=g).to(F64) / 255
    return model, x


# ----------------------------------------------------------------------------- the formulas, by hand
def lin(layer, h):
    return h @ layer.weight.T + layer.bias


def block(module, h, network):
    """A GatedDense block or a (Linear, tanh) pair, from the weights."""
    if network == "gated":
        return lin(module.h, h) * torch.sigmoid(lin(module.g, h))
    return torch.tanh(lin(module[0], h))


def gaussian_head(head, h, network):
    """(loc, log sigma): gated, mean and Hardtanh(-6, 2) log-variance halved; mlp, one linear layer split in two."""
    if network == "gated":
        return lin(head.mean, h), 0.5 * lin(head.logvar, h).clamp(-6.0, 2.0)
    out = lin(head.head, h)
    return out[..., : out.shape[-1] // 2], out[..., out.shape[-1] // 2 :]


def top_layer(layer, h, network):
    """q(z_2 | x) or p(z_1 | z_2): the blocks, then the head (GatedEncoder or GaussianMLP)."""
    if network == "gated":
        for blk in layer.body:
            h = blk.h(h) * torch.sigmoid(blk.g(h))
        return lin(layer.mean, h), 0.5 * lin(layer.logvar, h).clamp(-6.0, 2.0)
    for j in range(0, len(layer.body), 2):
        h = torch.tanh(lin(layer.body[j], h))
    out = lin(layer.head, h)
    return out[..., : out.shape[-1] // 2], out[..., out.shape[-1] // 2 :]


def trunk(tr, a, b, network, blind_b: bool = False):
    """Branches, the concatenation (a broadcast to b's leading dims), the join's block on it, further blocks."""
    ha, hb = block(tr.branch_a, a, network), block(tr.branch_b, b, network)
    if blind_b:
        hb = torch.zeros_like(hb)
    ha = ha.expand(hb.shape[:-1] + ha.shape[-1:])
    h = torch.cat([ha, hb], -1)
    if network == "gated":
        h = lin(tr.join.h, h) * torch.sigmoid(lin(tr.join.g, h))
    else:
        h = torch.tanh(lin(tr.join.h, h))
    for blk in tr.body:
        h = block(blk, h, network)
    return h


def log_normal(z, loc, log_scale):
    return (-0.5 * ((z - loc) / log_scale.exp()) ** 2 - log_scale - 0.5 * LOG_2PI).sum(-1)


def log_likelihood_by_hand(name, raw, x):
    if name == "bernoulli":
        return (x * raw - F.softplus(raw)).sum(-1)
    loc, second = raw[..., :D], raw[..., D:]
    if name == "gaussian":
        return log_normal(x, loc, 0.5 * second.clamp(-4.5, 0.0))
    # discretized logistic over k/255 with bins of width 1/255 and open edge bins
    # log(F(upper edge) - F(lower edge)) = log F(a) + log(1 - exp(log F(b) - log F(a))), F the logistic CDF
    s = second.clamp(-7.0 - math.log(2), 0.0).exp()
    log_fa = F.logsigmoid((x + 1 / 510 - loc) / s)
    log_fb = F.logsigmoid((x - 1 / 510 - loc) / s)
    inner = log_fa + torch.log(-torch.expm1(log_fb - log_fa))
    log_survival = F.logsigmoid(-(x - 1 / 510 - loc) / s)  # 1 - F(b), the open top bin
    return torch.where(x < 1 / 510, log_fa, torch.where(x > 1 - 1 / 510, log_survival, inner)).sum(-1)


def log_prior_by_hand(model, z2, network):
    prior = model.prior_module
    if model.config.prior == "normal":
        return (-0.5 * z2**2 - 0.5 * LOG_2PI).sum(-1)
    if model.config.prior == "mog":
        comps = log_normal(z2.unsqueeze(-2), prior.loc, 0.5 * prior.log_var)  # (..., C)
        return torch.logsumexp(comps + torch.log_softmax(prior.logits, -1), -1)
    u = torch.sigmoid(prior.raw)  # the pseudo-inputs through q(z_2 | x)
    loc, log_scale = top_layer(model.encoder[0], u, network)
    return torch.logsumexp(log_normal(z2.unsqueeze(-2), loc, log_scale), -1) - math.log(loc.shape[0])


def hand_log_weights(model, x, k, generator, *, q_blind=False, p_blind=False, swap_draws=False):
    """(log p(x, z), log q(z | x), log p(x | z_1, z_2)) with the draws eps_2 then eps_1 (or swapped)."""
    net = model.config.network
    loc2, ls2 = top_layer(model.encoder[0], x, net)
    if swap_draws:
        eps1 = torch.randn((k, x.shape[0], D1), generator=generator, dtype=F64)
        eps2 = torch.randn((k,) + loc2.shape, generator=generator, dtype=F64)
    else:
        eps2 = torch.randn((k,) + loc2.shape, generator=generator, dtype=F64)
    z2 = loc2 + ls2.exp() * eps2
    loc1, ls1 = gaussian_head(model.encoder[1].head, trunk(model.encoder[1].trunk, x, z2, net, blind_b=q_blind), net)
    if not swap_draws:
        eps1 = torch.randn(loc1.shape, generator=generator, dtype=F64)
    z1 = loc1 + ls1.exp() * eps1
    log_q = log_normal(z2, loc2, ls2) + log_normal(z1, loc1, ls1)
    p_loc, p_ls = top_layer(model.decoder[1], z2, net)
    raw = lin(model.decoder[0].head, trunk(model.decoder[0].trunk, z1, z2, net, blind_b=p_blind))
    lik = log_likelihood_by_hand(model.config.likelihood, raw, x)
    log_p = log_prior_by_hand(model, z2, net) + log_normal(z1, p_loc, p_ls) + lik
    return log_p, log_q, lik


CASES = [
    (n, p, lik)
    for n in ("gated", "mlp")
    for p in ("normal", "mog", "vamp")
    for lik in ("bernoulli", "gaussian", "logistic256")
]


@pytest.mark.parametrize("network,prior,likelihood", CASES, ids=["-".join(c) for c in CASES])
def test_log_weights_match_the_formulas(network, prior, likelihood):
    """log p, log q and log p(x | z_1, z_2) of model.log_weight_parts equal the hand computation (float64,
    1e-10) for both networks, the three priors and the three likelihoods; model.log_weights and
    log_weights_with_samples agree with them for the same generator. Negative controls: the hand
    computation with q(z_1 | .) or p(x | .) blind to z_2, or with eps_1 drawn before eps_2, differs."""
    model, x = setup(config(network, prior, likelihood))
    parts = model.log_weight_parts(x, K, gen(7))
    log_p, log_q, lik = hand_log_weights(model, x, K, gen(7))
    torch.testing.assert_close(parts.log_p, log_p, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts.log_q, log_q, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts.log_likelihood, lik, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.log_weights(x, K, gen(7)), log_p - log_q, rtol=1e-10, atol=1e-10)
    log_w, (z1, z2) = model.log_weights_with_samples(x, K, gen(7))
    assert z1.shape == (K, B, D1) and z2.shape == (K, B, D2)
    torch.testing.assert_close(log_w, log_p - log_q, rtol=1e-10, atol=1e-10)
    for wrong in (dict(q_blind=True), dict(p_blind=True), dict(swap_draws=True)):
        p_w, q_w, _ = hand_log_weights(model, x, K, gen(7), **wrong)
        assert ((p_w - q_w) - parts.log_weights).abs().max() > 1e-4, wrong


def test_log_joint_and_posterior_density_at_given_samples():
    """log_joint(x, [z_1, z_2]) and posterior_log_prob(x, [z_1, z_2]) at the model's own draws are log p and
    log q of log_weight_parts (the densities AIS evaluates at any z); log_joint's third output is the
    VampPrior's log p(stop_grad(z_2)), with the value of log p(z_2)."""
    model, x = setup(config(prior="vamp"))
    parts = model.log_weight_parts(x, K, gen(3), prior_direct=True)
    log_p, lik, direct = model.log_joint(x, parts.posterior.zs, prior_direct=True)
    torch.testing.assert_close(log_p, parts.log_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(lik, parts.log_likelihood, rtol=0, atol=1e-12)
    torch.testing.assert_close(direct, model.prior_module.log_prob(parts.posterior.zs[1]), rtol=0, atol=1e-12)
    assert not direct.requires_grad or direct.grad_fn is not None
    torch.testing.assert_close(model.posterior_log_prob(x, parts.posterior.zs), parts.log_q, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- the paper's structure
def _gated_dense(i, o):
    return 2 * (i * o + o)


def _linear(i, o):
    return i * o + o


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic256"])
def test_gated_hvae_is_the_papers_network(likelihood):
    """HVAE.paper_config(network="gated") has the paper's modules (models/HVAE_2level.py): q(z_2 | x) two
    GatedDense(300) and two heads of 40; q(z_1 | x, z_2) GatedDense(784 -> 300) and GatedDense(40 -> 300)
    joined by GatedDense(600 -> 300), heads of 40; p(z_1 | z_2) two GatedDense(300), heads of 40;
    p(x | z_1, z_2) GatedDense(40 -> 300) twice, GatedDense(600 -> 300), one output layer (784 Bernoulli
    logits, or 2 x 784 for the logistic's mean and log-scale: the paper's p_x_mean and p_x_logvar). The
    parameter count is the paper's, counted from its layers here, plus the 500 x 784 pseudo-inputs of
    the VampPrior (the paper's pseudo-input layer has the same count). Weights are He-normal."""
    cfg = HVAE.paper_config(network="gated", likelihood=likelihood, prior="vamp", prior_components=500)
    assert cfg.latent_dims == (40, 40) and cfg.hidden_dims == ((300, 300), (300, 300))
    torch.manual_seed(0)
    model = HVAE(cfg)
    heads = 2 * _linear(300, 40)
    q_z2 = _gated_dense(784, 300) + _gated_dense(300, 300) + heads
    q_z1 = _gated_dense(784, 300) + _gated_dense(40, 300) + _gated_dense(600, 300) + heads
    p_z1 = _gated_dense(40, 300) + _gated_dense(300, 300) + heads
    out = 784 if likelihood == "bernoulli" else 2 * 784
    p_x = 2 * _gated_dense(40, 300) + _gated_dense(600, 300) + _linear(300, out)
    counts = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (
            ("q_z2", model.encoder[0]),
            ("q_z1", model.encoder[1]),
            ("p_z1", model.decoder[1]),
            ("p_x", model.decoder[0]),
            ("prior", model.prior_module),
        )
    }
    assert counts == {"q_z2": q_z2, "q_z1": q_z1, "p_z1": p_z1, "p_x": p_x, "prior": 500 * 784}
    assert sum(p.numel() for p in model.parameters()) == q_z2 + q_z1 + p_z1 + p_x + 500 * 784
    join = model.encoder[1].trunk.join.h.weight  # (300, 600): He-normal, std sqrt(2 / 600)
    assert join.shape == (300, 600)
    assert abs(join.std().item() / math.sqrt(2 / 600) - 1) < 0.02 and abs(join.mean().item()) < 0.003
    assert isinstance(model.encoder[1].trunk.branch_a, GatedDense)
    mlp = HVAE(HVAE.paper_config(network="mlp"))
    assert isinstance(mlp.encoder[1].trunk.branch_a[1], Tanh) and mlp.encoder[1].trunk.join.h.weight.shape == (300, 600)
    assert (mlp.encoder[1].trunk.join.h.bias == 0).all()  # Burda's zero biases


def test_gated_log_variances_are_bounded_and_mlp_ones_are_not():
    """With heads whose outputs are pushed far out, the gated q(z_2 | x), q(z_1 | x, z_2) and p(z_1 | z_2)
    give log sigma in [-3, 1] (Hardtanh(-6, 2) of the log-variance, halved), reaching both ends; the mlp
    variant's log sigma (Burda's head) goes beyond."""
    x = torch.bernoulli(torch.full((50, D), 0.5, dtype=F64), generator=gen(0))
    for network, bounded in (("gated", True), ("mlp", False)):
        model, _ = setup(config(network))
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(30.0)
        loc2, ls2 = model.encoder[0].loc_log_scale(x)
        z2 = loc2.expand(3, *loc2.shape)
        scales = [ls2, model.encoder[1].loc_log_scale(x, z2)[1], model.decoder[1].loc_log_scale(z2)[1]]
        for s in scales:
            inside = bool(((s >= -3.0) & (s <= 1.0)).all())
            assert inside == bounded, (network, s.min().item(), s.max().item())
            if bounded:
                assert s.min().item() == -3.0 and s.max().item() == 1.0


# ----------------------------------------------------------------------------- the latents' order
def test_latents_are_bottom_up_and_the_prior_is_on_z2():
    """zs = [z_1, z_2] with latent_dims (D_1, D_2); the prior's event is D_2; encoder[0] reads x alone and
    its (loc, log_scale) are the PosteriorSample's; decoder[1] is p(z_1 | z_2); encode gives
    (q(z_1 | x, E[z_2 | x]), q(z_2 | x)); the view inputs are ((x,), z_2), ((x, z_2), z_1)."""
    model, x = setup(config(prior="mog"))
    post = model.sample_posterior(x, K, gen(1))
    z1, z2 = post.zs
    assert z1.shape == (K, B, D1) and z2.shape == (K, B, D2)
    assert model.prior.event_shape == (D2,) and model.num_layers == 2
    loc2, ls2 = model.encoder[0].loc_log_scale(x)
    assert torch.equal(post.loc, loc2) and torch.equal(post.log_scale, ls2)
    (a, za), (b, zb) = post.layer_inputs()
    assert a == (x,) and za is z2 and b[0] is x and b[1] is z2 and zb is z1
    q1, q2 = model.encode(x)
    torch.testing.assert_close(q2.mean, loc2)
    torch.testing.assert_close(q1.mean, model.encoder[1].loc_log_scale(x, loc2)[0])
    loc, _ = model.decoder[1].loc_log_scale(z2)
    assert loc.shape == (K, B, D1)


# ----------------------------------------------------------------------------- the views of log q
def test_views_keep_the_path_through_z2_into_q_z1():
    """add_views on the HVAE: log_q_stop_params (q's parameters detached, samples attached) and
    log_q_stop_samples (samples detached, parameters attached) have log q's value and the encoder gradients
    of a hand computation with a frozen deep copy of the encoder / detached z_2 and z_1. The path view's
    gradient reaches q(z_2 | x)'s parameters through z_2 inside q(z_1 | x, z_2): negative control, the view
    with z_2 detached inside q(z_1 | .) has another gradient."""
    model, x = setup(config(prior="vamp"))
    parts = model.log_weight_parts(x, K, gen(11))
    views = add_views(model, parts, stop_params=True, stop_samples=True)
    z1, z2 = parts.posterior.zs
    frozen = copy.deepcopy(model.encoder).requires_grad_(False)
    sp = log_normal(z2, *frozen[0].loc_log_scale(x)) + log_normal(z1, *frozen[1].loc_log_scale(x, z2))
    cut = log_normal(z2, *frozen[0].loc_log_scale(x)) + log_normal(z1, *frozen[1].loc_log_scale(x, z2.detach()))
    ss = log_normal(z2.detach(), *model.encoder[0].loc_log_scale(x)) + log_normal(
        z1.detach(), *model.encoder[1].loc_log_scale(x, z2.detach())
    )
    enc = model.encoder_parameters()

    def grad(t):
        gs = torch.autograd.grad(t.sum(), enc, retain_graph=True, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(gs, enc)])

    for got, want in ((views.log_q_stop_params, sp), (views.log_q_stop_samples, ss)):
        torch.testing.assert_close(got, parts.log_q, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grad(got), grad(want), rtol=1e-10, atol=1e-10)
    assert (grad(views.log_q_stop_params) - grad(cut)).abs().max() > 1e-6
    top = sum(p.numel() for p in model.encoder[0].parameters())
    assert grad(views.log_q_stop_params)[:top].abs().max() > 1e-6  # q(z_2 | x) gets the path gradient


# ----------------------------------------------------------------------------- active units, surgery, q_EW
def test_active_units_per_layer():
    """active_units gives [A(z_1), A(z_2)]: z_2's from q(z_2 | x)'s mean, z_1's from the mean of q(z_1 | x, z_2)
    averaged over 100 draws of z_2 (eps from the generator); both by hand with the same generator.
    Negative control: q(z_1 | .)'s mean at z_2 = E[z_2 | x] (encode's summary) gives other variances."""
    model, _ = setup(config())
    x = torch.bernoulli(torch.full((60, D), 0.4, dtype=F64), generator=gen(2))
    units = active_units(model, x, generator=gen(5))
    loc2, ls2 = model.encoder[0].loc_log_scale(x)
    eps = torch.randn((100,) + loc2.shape, generator=gen(5), dtype=F64)
    mean1 = model.encoder[1].loc_log_scale(x, loc2 + ls2.exp() * eps)[0].mean(0)
    want = [mean1.var(0, unbiased=False), loc2.var(0, unbiased=False)]
    assert [v.shape for v in units.variances] == [(D1,), (D2,)]
    for got, w in zip(units.variances, want):
        torch.testing.assert_close(got, w.detach(), rtol=1e-10, atol=1e-12)
    assert len(units.counts) == 2
    at_mean = model.encode(x)[0].mean.var(0, unbiased=False)
    assert (at_mean - units.variances[0]).abs().max() > 1e-6


def test_elbo_surgery_on_z2():
    """elbo_surgery splits KL(q(z_2 | x) || p(z_2)): avg_kl = I[n; z_2] + KL(q(z_2) || p(z_2)) to rounding,
    I <= log N, the Monte Carlo average KL within 4 s.e. of the closed form (normal prior), and its
    ``elbo`` (reconstruction = the rest of the ELBO, from elbo_given_top) within 4 s.e. of the mean of
    single log-weights E_q[log w]. Negative control: the decoder's log p(x | z_1, z_2) alone as the
    reconstruction (dropping z_1's KL term) is far from the ELBO."""
    model, _ = setup(config())
    x = torch.bernoulli(torch.full((40, D), 0.4, dtype=F64), generator=gen(3))
    with torch.no_grad():
        r = elbo_surgery(model, x, num_samples=200, generator=gen(4))
        log_w = model.log_weights(x, 4000, gen(5))
    assert abs(r["identity_residual"]) < 1e-9 and r["mutual_info"] <= r["log_n"] + 1e-12
    assert abs(r["avg_kl"] - r["avg_kl_analytic"]) < 4 * r["avg_kl_stderr"] / math.sqrt(200) + 1e-3
    elbo = log_w.mean().item()
    # the surgery's elbo is a mean of 40 x 200 single log-weights (reconstruction and KL at the same z_1, z_2),
    # log_w's of 40 x 4000: an upper estimate of the standard error of their difference (strata ignored)
    se = math.sqrt(log_w.var().item() * (1 / (40 * 200) + 1 / (40 * 4000)))
    assert abs(r["elbo"] - elbo) < 4 * se, (r["elbo"], elbo, se)
    with torch.no_grad():
        parts = model.log_weight_parts(x, 4000, gen(6))
        lik_only = parts.log_likelihood.mean().item() - r["avg_kl"]
    assert abs(lik_only - elbo) > 20 * se
    text = surgery_text(r)
    assert r["latent"] == "z_2" and "I[n;z_2]" in text and "KL(q(z_2) || p(z_2))" in text


def test_qew_draws_the_whole_latent():
    """sample_qew on the HVAE returns (n, B, D_1 + D_2): (z_1, z_2) of the resampled draws; with k = 1 the
    z_2 part is q(z_2 | x) (mean within 4 s.e. of q's); with k = 50 the draws move toward the posterior
    (their z_2 mean differs from q's)."""
    model, x = setup(config())
    with torch.no_grad():
        one = sample_qew(model, x, k=1, n=4000, generator=gen(1))
        many = sample_qew(model, x, k=50, n=4000, generator=gen(2))
        loc2, ls2 = model.encoder[0].loc_log_scale(x)
    assert one.shape == (4000, B, D1 + D2)
    z2 = one[..., D1:]
    se = ls2.exp() / math.sqrt(4000)
    assert ((z2.mean(0) - loc2) / se).abs().max() < 4.5
    assert ((many[..., D1:].mean(0) - loc2) / se).abs().max() > 4.5


def test_samples_and_reconstructions_go_through_both_latents():
    """sample_images: z_2 ~ p(z_2), z_1 ~ p(z_1 | z_2), the mean of p(x | z_1, z_2), by hand with the same
    seeded generator; reconstruct: p(x | z_1, z_2)'s mean at z_2 = E[z_2 | x], z_1 = mean of q(z_1 | x, z_2)."""
    model, x = setup(config())
    got = sample_images(model, 6, seed=3).double()
    g = gen(3)
    z2 = torch.randn(6, D2, generator=g, dtype=F64)
    loc, log_scale = model.decoder[1].loc_log_scale(z2)
    z1 = loc + log_scale.exp() * torch.randn(loc.shape, generator=g, dtype=F64)
    torch.testing.assert_close(got, torch.sigmoid(model.decoder_output(z1, z2)).detach(), rtol=1e-10, atol=1e-12)
    loc2 = model.encoder[0].loc_log_scale(x)[0]
    loc1 = model.encoder[1].loc_log_scale(x, loc2)[0]
    torch.testing.assert_close(reconstruct(model, x).double(), torch.sigmoid(model.decoder_output(loc1, loc2)).detach())


# ----------------------------------------------------------------------------- evaluation's memory budget
@pytest.mark.parametrize("network,prior", [("gated", "normal"), ("mlp", "normal"), ("gated", "vamp")])
def test_evaluation_peak_memory_stays_within_the_budget(network, prior):
    """log_likelihood(k=50) of the paper-sized HVAE (784 pixels, z 40 + 40, 300-unit networks; the VampPrior with
    500 pseudo-inputs) at test_memory_budget's budget (its tensors' share 8 MiB, the rest the C heap's,
    memory.CPU_HEAP_FACTOR): the peak tensor memory, measured by torch's profiler (tests/test_memory_budget.py),
    stays within the tensors' share, the chunks are set by the budget, and the per-row estimate is less than
    twice the measured peak per row (tight enough to mean something)."""
    from test_memory_budget import BUDGET, TENSORS, _peak_bytes

    from iwae import memory as memory_module

    torch.manual_seed(0)
    model = HVAE(HVAE.paper_config(network=network, prior=prior, prior_components=1 if prior == "normal" else 500))
    per_row = _bytes_per_row(model)
    rows = BUDGET // memory_module.row_budget(model, torch.device("cpu"))  # the C heap's share counted
    assert 50 < rows < memory_module.CPU_ROWS_PER_CALL, rows
    images = rows // 50
    x = torch.bernoulli(torch.full((3 * images, 784), 0.3), generator=gen(0))
    log_likelihood(model, x[:2], 50, memory_budget=BUDGET)  # lazy initialisations first
    assert memory_module.chunking(model, 50, x.shape[0], BUDGET, x.device) == (images, 50)
    peak = _peak_bytes(lambda: log_likelihood(model, x, 50, memory_budget=BUDGET, generator=gen(1)))
    assert peak <= TENSORS, f"peak {peak / 2**20:.2f} MiB over the tensors' {TENSORS / 2**20:.0f} MiB"
    assert per_row < 2 * peak / (images * 50), (per_row, peak / (images * 50))


# ----------------------------------------------------------------------------- configs
def test_configs_and_their_refusals():
    """model hvae needs 2 latent layers, network mlp or gated, and at least 2 coupled widths; VAE and HVAE
    refuse each other's configs, make_model builds either; a vae config's digest does not change
    (model stays out of to_dict at its default); TrainConfig(model hvae) needs layers 2, defaults to the
    paper's sizes; members train hvae runs one at a time."""
    with pytest.raises(ValueError, match="two stochastic layers"):
        ModelConfig(D, (4,), ((5, 5),), model="hvae")
    with pytest.raises(ValueError, match="mlp or gated"):
        ModelConfig(784, (4, 4), ((5, 5), (5,)), model="hvae", network="conv")
    with pytest.raises(ValueError, match="at least 2"):
        ModelConfig(D, (4, 4), ((5,), (5,)), model="hvae")
    with pytest.raises(ValueError, match="unknown model"):
        ModelConfig(model="ladder")
    with pytest.raises(ValueError, match="make_model"):
        VAE(config())
    with pytest.raises(ValueError, match="hvae"):
        HVAE(ModelConfig())
    assert isinstance(make_model(config()), HVAE) and isinstance(make_model(ModelConfig()), VAE)
    assert "model" not in ModelConfig().to_dict() and config().to_dict()["model"] == "hvae"
    assert model_digest(ModelConfig()) != model_digest(HVAE.paper_config())
    with pytest.raises(ValueError, match="use layers 2"):
        TrainConfig(model="hvae")
    cfg = TrainConfig(model="hvae", layers=2, network="gated", prior="vamp", components=500)
    mc = cfg.model_config(784)
    assert mc == HVAE.paper_config(network="gated", prior="vamp", prior_components=500)
    assert TrainConfig(model="hvae", layers=2, latent_dims=[8, 4]).model_config(784).latent_dims == (8, 4)
    assert stackable(cfg) == "the hvae model"
    # the command line's configure: --model hvae means two layers unless --layers says otherwise
    assert configure({"model": "hvae", "out": "run"}).layers == 2
    assert configure({"out": "run"}).layers == 1


def test_a_config_file_keeps_its_layers_under_model_vae(tmp_path):
    """``--config`` of a 2-layer run with ``--model vae`` keeps the file's 2 layers (only hvae sets them)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(TrainConfig(layers=2, out="run").to_dict()))
    assert configure({"model": "vae"}, base=path).layers == 2
    assert configure({"model": "hvae"}, base=path).model_config(784).model == "hvae"
