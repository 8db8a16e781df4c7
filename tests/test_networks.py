"""Tests for the built-in networks (iwae.models.networks, .gated, .conv) and the VAE built from them.

- mlp: the factories build today's Burda MLPs, with the same weights seed for seed as the code
  before the factories (a digest of the state_dict stored from it) and the same architecture digest;
- gated: the GatedDense block against the formula (W1 h + b1) * sigmoid(W2 h + b2) in float64, the
  encoder's log sigma = Hardtanh(-6, 2)(linear) / 2 within [-3, 1], the paper's widths 300, 300;
- conv: the shapes for 28 x 28, 28 x 20 and 3-channel images, the parameter-major output layout,
  a clear refusal of sizes the stride-2 layers cannot halve;
- any leading dims, one stochastic layer only, and DReG / STL unbiased with gated and conv
  (paired z-test against the reparameterised gradient, with a negative control).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from iwae.errors import ConfigError
from iwae.estimators import ObjectiveSpec, accumulate_gradients
from iwae.models import VAE, GaussianMLP, MLPDecoder, ModelConfig, make_decoder, make_encoder_layer
from iwae.models.conv import ConvDecoder, ConvEncoder
from iwae.models.gated import GatedDecoder, GatedDense, GatedEncoder
from iwae.rundir import model_digest
from iwae.train import TrainConfig

F64 = torch.float64

# Computed from the code before the factories existed (commit e1c33b0): torch.manual_seed(0);
# VAE(ModelConfig.burda(L)); SHA-256 over each state_dict entry's name, shape and bytes, in order.
MAIN_WEIGHTS_SHA256 = {
    1: "a9a78914af990f9095ea32836d04f673ef79766608430f61e5b6f44f229eb8e3",
    2: "f36448b43535b4c16193c7d8c7677268f6081ba64e11e53e500291a5a5119217",
}
# rundir.model_digest(ModelConfig.burda(L)) of the same commit
MAIN_MODEL_DIGEST = {
    1: "861a57e363420c500733212dbfbf57ad43f3efe23be2601f44fb6d3ff6aa8c23",
    2: "10743adfa5e27d1cbe5ee819044cd2b96a83d541042e99873ffccd1169158b0e",
}


def _weights_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, v in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- mlp
@pytest.mark.parametrize("layers", [1, 2])
def test_mlp_weights_and_digest_are_mains_seed_for_seed(layers):
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(layers))
    assert _weights_sha256(model) == MAIN_WEIGHTS_SHA256[layers]
    assert model_digest(ModelConfig.burda(layers)) == MAIN_MODEL_DIGEST[layers]
    # negative control: another seed gives other weights
    torch.manual_seed(1)
    assert _weights_sha256(VAE(ModelConfig.burda(layers))) != MAIN_WEIGHTS_SHA256[layers]


def test_mlp_factories_build_burdas_networks():
    enc = make_encoder_layer("mlp", 12, (8, 7), 3)
    dec = make_decoder("mlp", 3, (7, 8), 24)
    assert isinstance(enc, GaussianMLP) and type(dec) is MLPDecoder
    assert dec.output_bias is dec.head.bias and dec.output_bias.shape == (24,)
    assert [n for n, _ in dec.named_parameters()] == [
        "body.0.weight",
        "body.0.bias",
        "body.2.weight",
        "body.2.bias",
        "head.weight",
        "head.bias",
    ]
    z = torch.randn(5, 2, 3)
    with torch.no_grad():
        dec.output_bias.normal_()
        want = (
            torch.tanh(
                torch.tanh(z @ dec.body[0].weight.T + dec.body[0].bias) @ dec.body[2].weight.T + dec.body[2].bias
            )
            @ dec.head.weight.T
            + dec.head.bias
        )
    torch.testing.assert_close(dec(z), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown network 'resnet'; choose one of mlp, gated, conv"):
        make_decoder("resnet", 3, (7,), 24)


# ----------------------------------------------------------------------------- gated
def test_gated_dense_is_the_papers_formula():
    torch.manual_seed(0)
    block = GatedDense(6, 4).double()
    h = torch.randn(3, 5, 6, dtype=F64)
    w1, b1, w2, b2 = (t.detach().numpy() for t in (block.h.weight, block.h.bias, block.g.weight, block.g.bias))
    hn = h.numpy()
    want = (hn @ w1.T + b1) * (1.0 / (1.0 + np.exp(-(hn @ w2.T + b2))))
    np.testing.assert_allclose(block(h).detach().numpy(), want, rtol=1e-12, atol=1e-12)
    # He initialisation, N(0, 2 / fan_in): the sample std of a large layer is close to sqrt(2 / 400)
    big = GatedDense(400, 300)
    assert abs(big.h.weight.std().item() / math.sqrt(2 / 400) - 1) < 0.02


def test_gated_encoder_log_scale_is_half_a_hardtanh_log_variance():
    torch.manual_seed(0)
    enc = GatedEncoder(10, (7, 6), 3).double()
    with torch.no_grad():
        enc.logvar.weight.mul_(40.0)  # drive the log-variance head far past both bounds
    h = torch.randn(200, 10, dtype=F64)
    loc, log_scale = enc.loc_log_scale(h)
    body = enc.body(h)
    raw = body @ enc.logvar.weight.T + enc.logvar.bias
    torch.testing.assert_close(log_scale, raw.clamp(-6.0, 2.0) / 2)
    torch.testing.assert_close(loc, body @ enc.mean.weight.T + enc.mean.bias)
    assert log_scale.min().item() == -3.0 and log_scale.max().item() == 1.0  # both bounds are reached
    assert (raw < -6).any() and (raw > 2).any()


def test_gated_defaults_are_the_papers_300_300():
    config = TrainConfig(network="gated", out="x")
    mc = config.model_config(784)
    assert mc.hidden_dims == ((300, 300),) and mc.network == "gated"
    model = VAE(mc)
    assert isinstance(model.encoder[0], GatedEncoder) and isinstance(model.decoder[0], GatedDecoder)
    # encoder: 2 blocks (2 linears each) + mean + logvar heads; decoder: 2 blocks + the output layer
    lin = lambda i, o: i * o + o  # noqa: E731
    assert sum(p.numel() for p in model.encoder_parameters()) == 2 * lin(784, 300) + 2 * lin(300, 300) + 2 * lin(
        300, 50
    )
    assert sum(p.numel() for p in model.decoder.parameters()) == 2 * lin(50, 300) + 2 * lin(300, 300) + lin(300, 784)
    assert model.decoder[0].output_bias.shape == (784,)


# ----------------------------------------------------------------------------- conv
@pytest.mark.parametrize("shape", [(28, 28), (28, 20), (3, 16, 12)])
def test_conv_shapes_for_any_divisible_image(shape):
    d = math.prod(shape)
    enc = ConvEncoder(d, (8, 16), 5, shape)
    dec = ConvDecoder(5, (16, 8), 2 * d, shape)  # P = 2 parameters per pixel
    x = torch.rand(4, 3, d)  # leading dims (K, B)
    loc, log_scale = enc.loc_log_scale(x)
    assert loc.shape == log_scale.shape == (4, 3, 5)
    raw = dec(loc)
    assert raw.shape == (4, 3, 2 * d) and dec.output_bias.shape == (2 * d,)
    # leading dims are only flattened: each slice alone gives the same numbers
    torch.testing.assert_close(enc.loc_log_scale(x[1, 2])[0], loc[1, 2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dec(loc[1, 2]), raw[1, 2], rtol=1e-5, atol=1e-6)
    # parameter-major layout: parameter p of pixel (c, y, x) is raw[p*D + c*H*W + y*W + x]
    c, h, w = (1,) + shape if len(shape) == 2 else shape
    z = loc[0]
    conv_out = dec.body(dec.fc(z).reshape(-1, *dec.start))  # (N, P*C, H, W)
    assert conv_out.shape == (3, 2 * c, h, w)
    want = conv_out.reshape(3, 2, c, h, w) + dec.output_bias.reshape(2, c, h, w)
    torch.testing.assert_close(dec(z)[:, d:].reshape(3, c, h, w), want[:, 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((30, 30), r"needs H and W divisible by 4, got 30 x 30; pad or crop"),
        ((28, 26), r"divisible by 4, got 28 x 26"),
        (None, r"needs the image shape of inputs of 500 pixels \(not a square\)"),
    ],
)
def test_conv_refuses_sizes_it_cannot_handle(shape, message):
    d = 500 if shape is None else math.prod(shape)
    with pytest.raises(ValueError, match=message) as e:
        VAE(ModelConfig(d, (4,), ((8, 16),), network="conv", image_shape=shape))
    assert "\n" not in str(e.value)


def test_conv_is_one_stochastic_layer_and_gated_too():
    for net in ("gated", "conv"):
        with pytest.raises(ValueError, match=f"the {net} network has one stochastic layer, got 2"):
            ModelConfig(784, (10, 5), ((8,), (8,)), network=net)
        with pytest.raises(ConfigError, match=f"network {net} has one stochastic layer") as e:
            TrainConfig(network=net, layers=2, out="x")
        assert "network" in e.value.fields
    assert ModelConfig.burda(2).network == "mlp"  # mlp keeps 2 layers


def test_new_fields_stay_out_of_a_default_models_digest():
    assert "network" not in ModelConfig().to_dict() and "image_shape" not in ModelConfig().to_dict()
    assert ModelConfig(image_shape=(28, 28)).image_shape is None  # square: the default, the same digest
    assert model_digest(ModelConfig(image_shape=(28, 28))) == MAIN_MODEL_DIGEST[1]
    assert model_digest(ModelConfig(network="gated")) != MAIN_MODEL_DIGEST[1]
    assert model_digest(ModelConfig(560, image_shape=(28, 20))) != model_digest(ModelConfig(560))
    with pytest.raises(ValueError, match=r"image_shape \(28, 21\) is not \(H, W\) or \(C, H, W\) of 560 pixels"):
        ModelConfig(560, image_shape=(28, 21))


# ----------------------------------------------------------------------------- estimators on the new networks
GATED = ModelConfig(input_dim=16, latent_dims=(3,), hidden_dims=((8,),), network="gated")
CONV = ModelConfig(input_dim=16, latent_dims=(3,), hidden_dims=((4,),), network="conv")  # 4 x 4 images
Z_MAX = 5.0
N_DRAWS, REPS = 200, 10


def _setup(config: ModelConfig):
    torch.manual_seed(0)
    model = VAE(config).double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
    x = torch.bernoulli(torch.full((3, config.input_dim), 0.4, dtype=F64), generator=torch.Generator().manual_seed(1))
    return model, x


def _draws(model: VAE, x: torch.Tensor, spec: ObjectiveSpec, seed: int) -> torch.Tensor:
    """N_DRAWS encoder-gradient estimates, each the mean of REPS independent ones, (N_DRAWS, P)."""
    xr = x.repeat(REPS, 1)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(N_DRAWS):
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, xr, spec, g)
        out.append(torch.cat([p.grad.reshape(-1) for p in model.encoder_parameters()]) / REPS)
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def _z_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over the random components of |mean(a - b)| / se, from paired draws (same eps)."""
    d = a - b
    mean, se = d.mean(0), d.std(0) / math.sqrt(d.shape[0])
    live = se > 1e-12 * (a.abs().mean() + 1e-300)
    assert (mean[~live].abs() < 1e-10).all()
    assert live.sum() >= 10
    return (mean[live] / se[live]).abs().max().item()


@pytest.mark.parametrize("config", [GATED, CONV], ids=["gated", "conv"])
def test_dreg_and_stl_unbiased_with_the_new_networks(config):
    """DReG has the expectation of the reparameterised IWAE(5) gradient and STL that of the ELBO
    gradient (k = 1), within Z_MAX paired standard errors on every encoder component. Negative
    control: the same statistic flags DReG of IWAE(5) against the ELBO(k = 5) gradient."""
    model, x = _setup(config)
    reparam = _draws(model, x, ObjectiveSpec("iwae", k=5), 7)
    dreg = _draws(model, x, ObjectiveSpec("iwae", k=5, estimator="dreg"), 7)
    assert (dreg - reparam).abs().max() > 1e-6
    assert _z_max(dreg, reparam) < Z_MAX
    elbo = _draws(model, x, ObjectiveSpec("vae", k=5), 7)
    assert _z_max(dreg, elbo) > Z_MAX, "the statistic missed another objective's gradient"
    reparam1 = _draws(model, x, ObjectiveSpec("vae", k=1), 3)
    stl = _draws(model, x, ObjectiveSpec("vae", k=1, estimator="stl"), 3)
    assert (stl - reparam1).abs().max() > 1e-6
    assert _z_max(stl, reparam1) < Z_MAX
