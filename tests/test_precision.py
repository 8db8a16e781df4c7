"""Tests for --precision bf16-mixed (iwae.precision): what runs in bfloat16 and what must not.

The training step's matrix products run in bfloat16 under autocast; the distribution parameters,
log-weights, reductions, parameters and gradients stay float32, and evaluation (the validation
bound, L_k, active units) never runs under autocast. The test NLL parity on the 13-epoch protocol
is a measurement (README, Speed), too long for a test; here a short run's parameters must stay
close to the float32 run's.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import iwae.models.networks as networks
from iwae import rundir
from iwae.data import Splits
from iwae.errors import ConfigError
from iwae.estimators import ObjectiveSpec, accumulate_gradients, forward_terms
from iwae.evaluate import evaluate, log_likelihood
from iwae.models import VAE, ModelConfig
from iwae.models.likelihood import bernoulli_log_prob_from_logits
from iwae.precision import PRECISIONS, training_autocast
from iwae.train import TrainConfig, resume_config, train

BF16_EPS = 2.0**-8  # bfloat16's relative spacing: 8 bits of mantissa


def _model(seed: int = 0, layers: int = 1) -> VAE:
    torch.manual_seed(seed)
    return VAE(ModelConfig.burda(layers))


def _batch(seed: int = 1, n: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 784), 0.3), generator=g)


def _synthetic_splits(n_train: int = 60, seed: int = 3) -> Splits:
    g = torch.Generator().manual_seed(seed)
    images = lambda n: torch.bernoulli(torch.rand(n, 784, generator=g) * 0.6, generator=g)  # noqa: E731
    return Splits("mnist", torch.rand(n_train, 784, generator=g), images(20), images(20), True)


def test_precisions_are_the_lightning_names_and_32_is_the_default():
    assert PRECISIONS == ("32", "bf16-mixed")
    assert TrainConfig().precision == "32"


def test_an_unknown_precision_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="precision") as e:
        TrainConfig(precision="bf16")
    assert "bf16-mixed" in str(e.value) and e.value.fields == ("precision",)


def test_autocast_runs_the_products_in_bfloat16_and_keeps_the_log_weights_float32():
    model, x = _model(), _batch()
    seen = {}

    def record(module, args, out):
        seen[type(module).__name__ + str(len(seen))] = out.dtype

    for layer in model.encoder[0].body:
        layer.register_forward_hook(record)
    with training_autocast("bf16-mixed", "cpu"):
        loc, log_scale = model.encoder[0].loc_log_scale(x)
        parts = model.log_weight_parts(x, 5, torch.Generator().manual_seed(0))
    assert torch.bfloat16 in seen.values()  # the hidden products and tanh really are bfloat16
    assert loc.dtype == log_scale.dtype == torch.float32
    assert parts.log_weights.dtype == parts.log_q.dtype == parts.log_likelihood.dtype == torch.float32
    assert all(z.dtype == torch.float32 for z in parts.posterior.zs)


def test_bf16_log_weights_are_close_to_float32_and_not_equal_to_them():
    """Same generator, same samples eps: the bounds differ by bfloat16 rounding of loc, log sigma and
    logits only (relative 2^-9 each), not by a bfloat16 sum over the 784 pixels."""
    model, x = _model(), _batch()
    exact = model.log_weights(x, 5, torch.Generator().manual_seed(0))
    with training_autocast("bf16-mixed", "cpu"):
        mixed = model.log_weights(x, 5, torch.Generator().manual_seed(0))
    diff = (mixed - exact).abs()
    assert diff.max() > 0  # the products did run in bfloat16 (a negative control of the autocast)
    # ~545 nats; a bfloat16 sum over 784 pixels would be off by ~545 * 2^-9 ~ 1 nat, rounding error
    # in each logit averages out over the pixels
    assert diff.max() < 0.5, diff.max()


def test_bf16_gradients_are_float32_and_point_where_the_float32_ones_do():
    spec = ObjectiveSpec("iwae", 5, 1, 0.5, "reparam")
    grads = {}
    for precision in PRECISIONS:
        model, x = _model(), _batch()
        accumulate_gradients(model, x, spec, torch.Generator().manual_seed(0), precision=precision)
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert all(p.grad.dtype == torch.float32 and p.dtype == torch.float32 for p in model.parameters())
    a, b = grads["32"], grads["bf16-mixed"]
    cosine = torch.dot(a, b) / (a.norm() * b.norm())
    assert cosine > 0.995, cosine
    assert (a.norm() - b.norm()).abs() / a.norm() < 0.02
    assert not torch.equal(a, b)


def test_the_backward_pass_runs_outside_autocast(monkeypatch):
    """PyTorch's advice: forward under autocast, backward outside. accumulate_gradients splits them."""
    states = []
    original = networks._TanhFunction.backward

    def spy(ctx, grad):
        states.append(torch.is_autocast_enabled("cpu"))
        return original(ctx, grad)

    monkeypatch.setattr(networks._TanhFunction, "backward", staticmethod(spy))
    forward_states = []
    real_forward = forward_terms

    def forward(*args):
        forward_states.append(torch.is_autocast_enabled("cpu"))
        return real_forward(*args)

    accumulate_gradients(
        _model(),
        _batch(),
        ObjectiveSpec("iwae", 5, 1, 0.5, "reparam"),
        torch.Generator().manual_seed(0),
        precision="bf16-mixed",
        forward=forward,
    )
    assert forward_states == [True]
    assert states and not any(states)


def test_tanh_under_autocast_keeps_small_activations_and_its_gradient():
    """2 sigmoid(2h) - 1 in bfloat16 rounds sigmoid(2h) near 1/2 to a ulp of 2^-8, so tanh(1e-3) would
    come out as 0 or 0.0039; the kernel computes in float32 and rounds tanh once."""
    h = torch.tensor([1e-3, -2e-3, 0.01, 0.5, -1.5, 4.0]).bfloat16().requires_grad_()
    y = networks._tanh_via_sigmoid(h)
    assert y.dtype == torch.bfloat16
    exact = torch.tanh(h.detach().double())
    assert torch.allclose(y.detach().double(), exact, rtol=BF16_EPS, atol=0)
    naive = (torch.sigmoid(h.detach() * 2.0) * 2.0 - 1.0).double()  # the negative control: bfloat16 inside
    assert not torch.allclose(naive, exact, rtol=0.5, atol=0)
    y.sum().backward()
    assert h.grad.dtype == torch.bfloat16
    assert torch.allclose(h.grad.double(), 1 - exact**2, rtol=0, atol=2 * BF16_EPS)  # 1 - y^2, y rounded


def test_the_bernoulli_kernel_sums_bfloat16_logits_in_float32():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 20, 784, generator=g) * 3).bfloat16()
    x = _batch()
    out = bernoulli_log_prob_from_logits(logits, x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, bernoulli_log_prob_from_logits(logits.float(), x), rtol=0, atol=1e-3)


def test_the_decoder_output_layer_adds_its_bias_in_float32():
    decoder = _model().decoder[0]
    z = torch.randn(5, 20, 50)
    with training_autocast("bf16-mixed", "cpu"):
        logits = decoder.logits(z)
        h = decoder.body(z)
    assert logits.dtype == torch.float32 and h.dtype == torch.bfloat16
    product = torch.matmul(h, decoder.head.weight.detach().bfloat16().t()).float()
    assert torch.equal(logits, product + decoder.head.bias.detach())


@pytest.mark.parametrize("layers", [1, 2])
def test_a_bf16_run_trains_close_to_the_float32_run(tmp_path, layers):
    """60 steps of the same run in both precisions (same data order, binarization and eps): the
    parameters move by about the same amount to about the same place."""
    splits = _synthetic_splits(n_train=300)
    models = {}
    for precision in PRECISIONS:
        config = TrainConfig(
            layers=layers, k=5, epochs=4, schedule="constant", precision=precision, out=str(tmp_path / precision)
        )
        train(config, progress=False, splits=splits)
        models[precision] = rundir.load_model(config.out)
        assert rundir.read_config(config.out).precision == precision
    start = dict(VAE(ModelConfig.burda(layers)).state_dict().items())
    for name, p32 in models["32"].state_dict().items():
        pbf = models["bf16-mixed"].state_dict()[name]
        assert pbf.dtype == torch.float32
        moved = (p32 - start[name]).norm() if name in start else p32.norm()
        assert (pbf - p32).norm() <= 0.2 * moved + 1e-6, name


def test_evaluation_of_a_bf16_run_is_float32_and_never_under_autocast(tmp_path, monkeypatch):
    """Every decoder call in training steps is under autocast; every call of the validation bound
    and of evaluate (L_k, active units) is not, and evaluate's L_k equals an explicit float32
    recomputation on the loaded weights."""
    calls = []
    logits = networks.MLPDecoder.forward  # the decoder VAE builds (BernoulliMLP.logits calls it too)

    def spy(self, z):
        out = logits(self, z)
        calls.append((self.training, torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    monkeypatch.setattr(networks.MLPDecoder, "forward", spy)
    splits = _synthetic_splits()
    config = TrainConfig(k=3, epochs=2, schedule="constant", precision="bf16-mixed", out=str(tmp_path / "run"))
    train(config, progress=False, splits=splits)
    training = [c for c in calls if c[0]]
    assert training and all(autocast for _, autocast, _ in training)
    assert all(not autocast for train_mode, autocast, _ in calls if not train_mode)  # validation
    calls.clear()
    result = evaluate(config.out, splits=splits, k=50, save=False)
    assert calls and not any(autocast for _, autocast, _ in calls)
    assert all(dtype == torch.float32 for *_, dtype in calls)
    model = rundir.load_model(config.out)
    generator = torch.Generator().manual_seed(0)
    again = log_likelihood(model, splits.test, 50, generator=generator)  # evaluate's seed, outside any autocast
    assert again.dtype == torch.float32
    assert math.isclose(result["nll"], -again.mean().item(), rel_tol=1e-6)
    with training_autocast("bf16-mixed", "cpu"):  # the negative control: under autocast it would differ
        mixed = log_likelihood(model, splits.test, 50, generator=torch.Generator().manual_seed(0))
    assert not math.isclose(result["nll"], -mixed.mean().item(), rel_tol=1e-6)


def test_precision_is_part_of_the_run_and_cannot_change_on_resume(tmp_path):
    config = TrainConfig(k=2, epochs=1, schedule="constant", out=str(tmp_path / "run"))
    train(config, progress=False, splits=_synthetic_splits(n_train=20))
    with pytest.raises(ConfigError, match="precision"):
        resume_config(config.out, {"precision": "bf16-mixed"})
    # float32 is what every run before the setting was: at it the identity is theirs (rundir.ADDED_DEFAULTS)
    bf16 = dataclasses.replace(config, precision="bf16-mixed")
    assert "precision" not in rundir.run_identity(config) and rundir.run_identity(bf16)["precision"] == "bf16-mixed"
    old = rundir.read_config(config.out).to_dict()
    old.pop("precision")  # a config.yaml written before the setting existed reads as float32
    assert TrainConfig.from_dict(old).precision == "32"


def test_a_result_recorded_before_the_speed_settings_existed_is_not_stale():
    """result.json files of an older iwae record configs without precision and compile: their key
    must equal that of the same run recorded now (the defaults), and differ from a bf16-mixed run's."""
    now = TrainConfig(k=5, out="runs/a").to_dict()
    old = {k: v for k, v in now.items() if k not in ("precision", "compile")}
    assert rundir.run_key({"config": old}) == rundir.run_key({"config": now})
    assert rundir.run_key({"config": old}) != rundir.run_key({"config": {**now, "precision": "bf16-mixed"}})


@pytest.mark.parametrize("network,likelihood", [("gated", "logistic256"), ("conv", "gaussian"), ("mlp", "logistic256")])
def test_bf16_mixed_keeps_every_network_and_likelihood_float32(network, likelihood):
    """Under the training step's autocast, every encoder layer's (loc, log_scale) and the decoder's raw
    output leave the network in float32, so the log-weights and their reductions are float32 for the
    gated and conv networks and the continuous likelihoods too, and close to the float32 model's."""
    from iwae.models import VAE, ModelConfig
    from iwae.precision import training_autocast

    torch.manual_seed(0)
    model = VAE(
        ModelConfig(
            input_dim=64,
            latent_dims=(4,),
            hidden_dims=((8, 16) if network == "conv" else (16,),),
            network=network,
            likelihood=likelihood,
        )
    )
    x = torch.randint(0, 256, (5, 64)).float() / 255
    with torch.no_grad():
        exact = model.log_weights(x, 3, torch.Generator().manual_seed(1))
    with training_autocast("bf16-mixed", "cpu"):
        loc, log_scale = model.encoder[0].loc_log_scale(x)
        raw = model.decoder_output(loc)
        log_w = model.log_weights(x, 3, torch.Generator().manual_seed(1))
    assert loc.dtype == log_scale.dtype == raw.dtype == log_w.dtype == torch.float32
    # one bfloat16 rounding of the products: a few per cent of an untrained model's log-weights (logistic256 with
    # small scales amplifies it), not a different computation
    assert ((log_w - exact).abs().mean() / exact.abs().mean()).item() < 0.05
