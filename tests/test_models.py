"""Tests for iwae.models: shapes and sizes of Burda et al.'s networks, log-weights against an
independent torch.distributions computation, the fused Bernoulli likelihood, bounds against an
exact log p(x) by quadrature, initialisation, no materialised copies of x, and gradient flow.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.overrides import TorchFunctionMode

from iwae.models import VAE, GaussianMLP, MLPDecoder, ModelConfig
from iwae.models.likelihood import bernoulli_log_prob_from_logits
from iwae.objectives import iwae

F64 = torch.float64


def _binary(b: int, d: int, seed: int = 0, p: float = 0.3, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((b, d), p, dtype=dtype), generator=g)


def _model(config: ModelConfig, seed: int = 0, dtype=torch.float32) -> VAE:
    torch.manual_seed(seed)
    return VAE(config).to(dtype)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# ----------------------------------------------------------------------------- shapes and sizes
@pytest.mark.parametrize(
    "config",
    [ModelConfig.burda(1), ModelConfig.burda(2), ModelConfig(784, (2,), ((64,),))],
    ids=["burda1", "burda2", "latent2d"],
)
def test_shapes(config):
    """log_weights(x, K) is (K, B); encode gives an Independent Normal with event shape (D_1,)
    for one layer and a tuple with one such distribution per layer otherwise; decode(z) has the
    mean and log_prob of an Independent Bernoulli over 784 pixels; the prior samples have the top latent's shape."""
    model = _model(config)
    B, K = 3, 4
    x = _binary(B, 784)
    lw = model.log_weights(x, K)
    assert lw.shape == (K, B)
    assert torch.isfinite(lw).all()

    q = model.encode(x)
    qs = (q,) if len(config.latent_dims) == 1 else q
    if len(config.latent_dims) > 1:
        assert isinstance(q, tuple) and len(q) == len(config.latent_dims)
    for dist, d in zip(qs, config.latent_dims):
        assert isinstance(dist, Independent) and isinstance(dist.base_dist, Normal)
        assert dist.event_shape == (d,)
        assert dist.batch_shape == (B,)

    z = torch.randn(K, B, config.latent_dims[0])
    p = model.decode(z)  # the Bernoulli likelihood reading the decoder's logits
    torch.testing.assert_close(p.mean, torch.sigmoid(model.decoder[0].logits(z)))
    torch.testing.assert_close(p.log_prob(x), Independent(Bernoulli(logits=p.raw), 1).log_prob(x))
    assert p.raw.shape == (K, B, 784) and p.log_prob(x).shape == (K, B)

    prior = model.prior
    assert isinstance(prior, Distribution)
    assert prior.sample().shape == (config.latent_dims[-1],)
    assert prior.sample((5,)).shape == (5, config.latent_dims[-1])
    assert prior.event_shape == (config.latent_dims[-1],)

    with pytest.raises(ValueError, match="num_samples"):
        model.log_weights(x, 0)


def _mlp_params(sizes: list[int]) -> int:
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def test_burda_one_layer_sizes():
    """1 stochastic layer: q 784-200-200 -> 50 (mean and log-sigma heads), p 50-200-200-784,
    as in Burda et al.; the weight shapes and parameter counts match."""
    model = VAE(ModelConfig.burda(1))
    assert [tuple(l.weight.shape) for l in _linears(model.encoder)] == [(200, 784), (200, 200), (100, 200)]
    assert [tuple(l.weight.shape) for l in _linears(model.decoder)] == [(200, 50), (200, 200), (784, 200)]
    n_enc = _mlp_params([784, 200, 200]) + 2 * (200 * 50 + 50)
    n_dec = _mlp_params([50, 200, 200, 784])
    assert sum(p.numel() for p in model.encoder_parameters()) == n_enc
    assert sum(p.numel() for p in model.decoder_parameters()) == n_dec
    assert sum(p.numel() for p in model.parameters()) == n_enc + n_dec


def test_burda_two_layer_sizes():
    """2 stochastic layers (papers.md): q 784-200-200 -> h1(100), h1 100-100-100 -> h2(50);
    p h2 50-100-100 -> h1(100) Gaussian, h1 100-200-200-784."""
    model = VAE(ModelConfig.burda(2))
    enc0, enc1 = model.encoder
    dec0, dec1 = model.decoder
    assert isinstance(dec0, MLPDecoder) and isinstance(dec1, GaussianMLP)
    assert [tuple(l.weight.shape) for l in _linears(enc0)] == [(200, 784), (200, 200), (200, 200)]
    assert [tuple(l.weight.shape) for l in _linears(enc1)] == [(100, 100), (100, 100), (100, 100)]
    assert [tuple(l.weight.shape) for l in _linears(dec1)] == [(100, 50), (100, 100), (200, 100)]
    assert [tuple(l.weight.shape) for l in _linears(dec0)] == [(200, 100), (200, 200), (784, 200)]
    n_enc = (_mlp_params([784, 200, 200]) + 2 * (200 * 100 + 100)) + (
        _mlp_params([100, 100, 100]) + 2 * (100 * 50 + 50)
    )
    n_dec = _mlp_params([100, 200, 200, 784]) + (_mlp_params([50, 100, 100]) + 2 * (100 * 100 + 100))
    assert sum(p.numel() for p in model.encoder_parameters()) == n_enc
    assert sum(p.numel() for p in model.decoder_parameters()) == n_dec
    assert model.prior.event_shape == (50,)


# ----------------------------------------------------------------------------- log-weights by hand
def _log_weights_by_hand(model: VAE, x: torch.Tensor, K: int, g: torch.Generator, samples: bool = False):
    """log p(x, z) - log q(z | x) with torch.distributions, eps drawn layer by layer as (K, B, D_l)
    (with ``samples``, also the list of samples z_l)."""
    B = x.shape[0]
    h = x
    zs, log_q = [], 0.0
    for layer in model.encoder:
        base = layer(h).base_dist  # Normal(loc, scale) from the GaussianMLP
        loc, scale = base.loc, base.scale
        if loc.dim() == 2:  # first layer: (B, D) -> broadcast over K
            loc, scale = loc.expand(K, B, -1), scale.expand(K, B, -1)
        eps = torch.randn((K, B, loc.shape[-1]), generator=g, dtype=x.dtype)
        z = loc + scale * eps
        log_q = log_q + Normal(loc, scale).log_prob(z).sum(-1)
        zs.append(z)
        h = z
    log_p = Normal(torch.zeros((), dtype=x.dtype), 1.0).log_prob(zs[-1]).sum(-1)
    for l in range(1, len(zs)):
        base = model.decoder[l](zs[l]).base_dist
        log_p = log_p + Normal(base.loc, base.scale).log_prob(zs[l - 1]).sum(-1)
    log_p = log_p + Independent(Bernoulli(logits=model.decoder[0].logits(zs[0])), 1).log_prob(x)
    return (log_p - log_q, zs) if samples else log_p - log_q


@pytest.mark.parametrize("layers", [1, 2])
def test_log_weights_match_independent_computation(layers):
    """model.log_weights(x, K, generator=g) equals the same computation written with
    torch.distributions from an identically seeded generator (float64, 1 and 2 stochastic layers)."""
    model = _model(ModelConfig.burda(layers), seed=layers).double()
    with torch.no_grad():  # nonzero biases so that they matter too
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
    x = _binary(4, 784, seed=11, dtype=F64)
    K = 6
    lw = model.log_weights(x, K, generator=torch.Generator().manual_seed(123))
    ref = _log_weights_by_hand(model, x, K, torch.Generator().manual_seed(123))
    assert lw.shape == ref.shape == (K, 4)
    torch.testing.assert_close(lw, ref, rtol=1e-10, atol=1e-8)
    # a different seed gives different samples (the comparison is not vacuous)
    other = model.log_weights(x, K, generator=torch.Generator().manual_seed(124))
    assert not torch.allclose(other, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_log_weights_with_samples_returns_the_draws(layers):
    """model.log_weights_with_samples(x, K, g) gives the log-weights of log_weights(x, K, g) (the same
    draws for the same seed) and the samples z_1..z_L they were computed at, both equal to the
    torch.distributions computation by hand (float64); another seed gives other samples."""
    model = _model(
        ModelConfig(input_dim=30, latent_dims=(5, 3)[:layers], hidden_dims=((16,), (8,))[:layers]), seed=layers
    ).double()
    x = _binary(3, 30, seed=2, dtype=F64)
    log_w, zs = model.log_weights_with_samples(x, 4, torch.Generator().manual_seed(9))
    ref, ref_zs = _log_weights_by_hand(model, x, 4, torch.Generator().manual_seed(9), samples=True)
    assert len(zs) == layers and [z.shape for z in zs] == [(4, 3, d) for d in (5, 3)[:layers]]
    torch.testing.assert_close(log_w, ref, rtol=1e-10, atol=1e-8)
    for z, want in zip(zs, ref_zs):
        torch.testing.assert_close(z, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_w, model.log_weights(x, 4, torch.Generator().manual_seed(9)), rtol=0, atol=0)
    _, other = model.log_weights_with_samples(x, 4, torch.Generator().manual_seed(10))
    assert not torch.allclose(other[0], zs[0])


def test_diag_normal_log_prob_is_the_normal_density():
    """diag_normal_log_prob(z, loc, log_scale) equals torch.distributions' Normal(loc, exp(log_scale))
    log-density summed over the last dim, with broadcasting (float64); the eps form at
    eps = (z - loc) / sigma gives the same; a density not summed over the event or with sigma in place
    of log sigma does not."""
    from iwae.models.gaussian import diag_normal_log_prob, diag_normal_log_prob_from_eps

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, 3, generator=g, dtype=F64)
    loc, log_scale = torch.randn(4, 3, generator=g, dtype=F64), 0.5 * torch.randn(4, 3, generator=g, dtype=F64)
    want = Normal(loc, log_scale.exp()).log_prob(z).sum(-1)
    got = diag_normal_log_prob(z, loc, log_scale)
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        diag_normal_log_prob_from_eps((z - loc) / log_scale.exp(), log_scale), want, rtol=1e-12, atol=1e-12
    )
    assert not torch.allclose(diag_normal_log_prob(z, loc, log_scale.exp()), want)
    assert not torch.allclose(diag_normal_log_prob(z, loc, log_scale), Normal(loc, 1.0).log_prob(z).sum(-1))


# ----------------------------------------------------------------------------- Bernoulli likelihood
def test_fused_bernoulli_matches_torch_value_and_grad():
    """bernoulli_log_prob_from_logits(logits, x) equals Independent(Bernoulli(logits), 1).log_prob(x)
    with x (B, D) broadcast over (K, B, D) logits, in value and in gradient w.r.t. the logits,
    including extreme logits of +-50."""
    g = torch.Generator().manual_seed(0)
    K, B, D = 3, 4, 40
    logits = 8.0 * torch.randn(K, B, D, generator=g, dtype=F64)
    logits[0, 0, :4] = torch.tensor([50.0, -50.0, 50.0, -50.0], dtype=F64)
    x = _binary(B, D, seed=1, p=0.5, dtype=F64)
    x[0, :4] = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64)
    l1 = logits.clone().requires_grad_(True)
    l2 = logits.clone().requires_grad_(True)
    out = bernoulli_log_prob_from_logits(l1, x)
    ref = Independent(Bernoulli(logits=l2), 1).log_prob(x)
    assert out.shape == (K, B)
    # tolerance: softplus is evaluated with a linear cut-off above 20 (error < 2e-9 per pixel in float64)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-7)
    # the two +-50 logits with the "wrong" label cost ~50 nats each, the right ones ~0
    w = torch.randn(K, B, generator=g, dtype=F64)
    (g1,) = torch.autograd.grad((out * w).sum(), l1)
    (g2,) = torch.autograd.grad((ref * w).sum(), l2)
    assert torch.isfinite(g1).all()
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_fused_bernoulli_extreme_logits_float32_finite():
    """In float32, logits of +-50 (and +-500) give finite log-probabilities near torch's and finite
    gradients x - sigmoid(l)."""
    logits = torch.tensor([[[50.0, -50.0, 50.0, -50.0, 500.0, -500.0]]], requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0]])
    out = bernoulli_log_prob_from_logits(logits, x)
    assert torch.isfinite(out).all()
    assert out.item() == pytest.approx(-(50 + 50 + 500 + 500), rel=1e-6)
    ref = Independent(Bernoulli(logits=logits.detach()), 1).log_prob(x)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-6, atol=1e-4)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, (x - torch.sigmoid(logits.detach())).expand_as(grad))


def test_fused_bernoulli_gradcheck():
    """torch.autograd.gradcheck (float64) of the fused likelihood w.r.t. the logits and a
    broadcast continuous x (sum over the K copies), including logits of +-50."""
    g = torch.Generator().manual_seed(2)
    logits = 3.0 * torch.randn(3, 2, 5, generator=g, dtype=F64)
    logits[0, 0, 0], logits[1, 1, 1] = 50.0, -50.0
    x = torch.rand(2, 5, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(
        bernoulli_log_prob_from_logits, (logits.requires_grad_(True), x.requires_grad_(True)), eps=1e-6, atol=1e-5
    )
    # and against the plain formula sum_d x_d l_d - softplus(l_d) for continuous x
    ref = (x * logits - torch.nn.functional.softplus(logits)).sum(-1)
    torch.testing.assert_close(bernoulli_log_prob_from_logits(logits, x), ref, rtol=1e-12, atol=1e-9)


# ----------------------------------------------------------------------------- exact log p(x)
def test_bounds_against_quadrature_log_likelihood():
    """For a 1-D latent, log p(x) = log int p(x|z) N(z; 0, 1) dz by quadrature (20001 points on
    [-10, 10], float64); Monte Carlo means over replicates satisfy E[L_1] < E[L_10] < E[L_1000]
    <= log p(x) (gaps beyond 3 s.e.), and L_5000 is within 0.05 nats of log p(x)."""
    model = VAE(ModelConfig(input_dim=12, latent_dims=(1,), hidden_dims=((8,),))).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    x = torch.bernoulli(torch.full((2, 12), 0.5, dtype=F64), generator=g)

    zs = torch.linspace(-10.0, 10.0, 20001, dtype=F64)
    dz = (zs[1] - zs[0]).item()
    with torch.no_grad():
        logits = model.decoder[0].logits(zs[:, None, None].expand(-1, 2, 1))  # (N, 2, 12)
        log_lik = (x * logits - torch.nn.functional.softplus(logits)).sum(-1)
        log_joint = log_lik + (-0.5 * zs**2 - 0.5 * math.log(2 * math.pi))[:, None]
        log_px = torch.logsumexp(log_joint, 0) + math.log(dz)  # (2,)

        gen = torch.Generator().manual_seed(1)
        stats = {}
        for K, R in ((1, 20000), (10, 4000), (1000, 200), (5000, 4)):
            L = iwae(model.log_weights(x.repeat(R, 1), K, generator=gen)).view(R, 2)
            stats[K] = (L.mean(0), L.std(0) / math.sqrt(R))
    for b in range(2):
        m = {K: stats[K][0][b].item() for K in stats}
        se = {K: stats[K][1][b].item() for K in stats}
        lp = log_px[b].item()
        assert m[10] - m[1] > 3 * math.hypot(se[1], se[10]), (m, se, lp)
        assert m[1000] - m[10] > 3 * math.hypot(se[10], se[1000]), (m, se, lp)
        assert m[1000] <= lp + 3 * se[1000], (m, se, lp)
        assert abs(m[5000] - lp) < 0.05, (m, se, lp)


# ----------------------------------------------------------------------------- initialisation
def _check_glorot(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
    a = math.sqrt(6.0 / (fan_in + fan_out))
    assert w.abs().max().item() <= a + 1e-7
    assert w.abs().max().item() >= 0.9 * a
    assert w.std().item() == pytest.approx(a / math.sqrt(3.0), rel=0.05)
    assert abs(w.mean().item()) < 0.05 * a


@pytest.mark.parametrize("layers", [1, 2])
def test_glorot_uniform_init_and_zero_biases(layers):
    """Every weight matrix is Glorot-uniform U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (mean and
    log-sigma heads of a Gaussian layer initialised as two separate layers), with the uniform's
    std a / sqrt(3); every bias is zero."""
    model = _model(ModelConfig.burda(layers), seed=5)
    for net in list(model.encoder) + list(model.decoder):
        for lin in _linears(net.body):
            _check_glorot(lin.weight.detach(), lin.in_features, lin.out_features)
        head = net.head
        if isinstance(net, GaussianMLP):
            d = net.out_features
            assert head.out_features == 2 * d
            _check_glorot(head.weight.detach()[:d], head.in_features, d)
            _check_glorot(head.weight.detach()[d:], head.in_features, d)
        else:
            _check_glorot(head.weight.detach(), head.in_features, head.out_features)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name


def test_init_output_bias():
    """After init_output_bias(mean) the Bernoulli output bias is logit(clip(mean, 1e-3, 1 - 1e-3))
    and no other parameter changes."""
    model = _model(ModelConfig.burda(1), seed=6)
    g = torch.Generator().manual_seed(3)
    mean = torch.rand(784, generator=g)
    mean[:6] = torch.tensor([0.0, 1.0, 0.5, 1e-5, 0.99999, 0.25])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.init_output_bias(mean)
    bias = model.decoder[0].head.bias.detach()
    expected = []
    for v in mean.tolist():
        p = min(max(v, 1e-3), 1 - 1e-3)
        expected.append(math.log(p / (1 - p)))
    torch.testing.assert_close(bias, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert bias[0].item() == pytest.approx(math.log(1e-3 / (1 - 1e-3)), rel=1e-5)
    assert bias[1].item() == pytest.approx(-math.log(1e-3 / (1 - 1e-3)), rel=1e-5)
    assert bias[2].item() == pytest.approx(0.0, abs=1e-6)
    for n, p in model.named_parameters():
        if n != "decoder.0.head.bias":
            assert torch.equal(p.detach(), before[n]), n


# ----------------------------------------------------------------------------- no copies of x
class _RecordCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "config",
    [ModelConfig.burda(1), ModelConfig(784, (20, 10), ((64,), (32,)))],
    ids=["1layer", "2layer"],
)
def test_log_weights_does_not_repeat_x(config):
    """log_weights(x, K=50) runs the first encoder Linear once on B rows (not K * B), the decoder's
    first Linear exactly once on K * B rows, and calls neither repeat nor repeat_interleave."""
    model = _model(config, seed=7)
    B, K = 3, 50
    x = _binary(B, 784, seed=4)
    enc_rows, dec_rows = [], []

    def enc_hook(mod, inputs):
        enc_rows.append(inputs[0].shape[0] if inputs[0].dim() == 2 else inputs[0].reshape(-1, mod.in_features).shape[0])

    def dec_hook(mod, inputs):
        dec_rows.append(inputs[0].reshape(-1, mod.in_features).shape[0])

    h1 = model.encoder[0].body[0].register_forward_pre_hook(enc_hook)
    h2 = model.decoder[0].body[0].register_forward_pre_hook(dec_hook)
    try:
        with _RecordCalls() as rec:
            lw = model.log_weights(x, K)
    finally:
        h1.remove()
        h2.remove()
    assert lw.shape == (K, B)
    assert enc_rows == [B]
    assert dec_rows == [K * B]
    assert rec.names, "the function recorder saw no calls"
    assert "repeat" not in rec.names and "repeat_interleave" not in rec.names


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("layers", [1, 2])
def test_gradients_reach_every_parameter(layers):
    """-iwae(log_w).sum().backward() gives every parameter a finite, nonzero gradient."""
    model = _model(ModelConfig.burda(layers), seed=8)
    x = _binary(3, 784, seed=5)
    lw = model.log_weights(x, 4, generator=torch.Generator().manual_seed(0))
    (-iwae(lw).sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
