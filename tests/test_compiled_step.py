"""Tests for iwae.compiled.step: the whole training step as one compiled program computes iwae.train's step.

Each check runs the compiled step and the eager step (``accumulate_gradients`` then fused Adam) from
the same weights and the same generator state and compares the bound, the gradient (Adam's first
moment after one step is (1 - beta1) g), the updated parameters, Adam's state and the generator's
state afterwards. Most checks run the traced graph itself (``compile=False``: the same ATen
operations without inductor, under a second each) in float64, where the two computations may
differ only by float64 rounding; two programs are compiled by inductor (tens of seconds each on
a 2-core CPU with an empty inductor cache), shared by the tests through module-scoped fixtures (and
iwae.compiled.step's per-process cache), one in float64 so that inductor's program is held to the
same sharp tolerance, one in float32 as training runs it. bf16-mixed is checked on the traced graph;
inductor's bf16 program (measured, not tested: a third compile) differs from eager bf16 by 0.13% of
the gradient's norm, against 0.7% for either one against float32.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

import pytest
import torch
from user_models import BranchingEncoder

import iwae.compiled.program as program_module
import iwae.compiled.step as step_module
import iwae.estimators as estimators_module
from iwae import rundir
from iwae.checkpoint import load_tensors
from iwae.choices import ESTIMATOR_OBJECTIVES, LIKELIHOODS, NETWORKS, PRECISIONS, PRIORS
from iwae.compiled.step import CompiledStep, NotCompilable, compiled_step
from iwae.config import TrainConfig
from iwae.data import Splits
from iwae.estimators import ObjectiveSpec, accumulate_gradients
from iwae.models import HVAE, VAE, ModelConfig
from iwae.train import train

SMALL = dict(input_dim=784, latent_dims=(4,), hidden_dims=((8,),))
BATCH = 5

OBJECTIVES_AND_ESTIMATORS = [
    ("vae", 1, "reparam"),
    ("vae", 1, "stl"),
    ("vae", 1, "dreg"),
    ("iwae", 1, "reparam"),
    ("iwae", 1, "stl"),
    ("iwae", 1, "dreg"),
    ("iwae", 1, "rws"),
    ("iwae", 1, "rws-dreg"),
    ("miwae", 2, "reparam"),
    ("miwae", 2, "stl"),
    ("miwae", 2, "dreg"),
    ("ciwae", 1, "reparam"),
    ("ciwae", 1, "stl"),
    ("ciwae", 1, "dreg"),
    ("piwae", 2, "reparam"),
    ("piwae", 2, "stl"),
    ("piwae", 2, "dreg"),
]


def _data(config: ModelConfig, rows: int, grey: bool = False, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if grey:  # 8-bit grey levels, for the gaussian and logistic256 likelihoods
        return torch.randint(0, 256, (rows, config.input_dim), generator=g).float() / 255
    return torch.bernoulli(torch.rand(rows, config.input_dim, generator=g), generator=g)


def _pair(config: ModelConfig, x: torch.Tensor, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Two copies of one initialised model (output bias and VampPrior from the data), each with iwae.train's Adam."""
    torch.manual_seed(seed)
    model = VAE(config)
    model.init_output_bias(x.mean(0))
    model.init_prior(x)
    model = model.to(dtype)
    twin = copy.deepcopy(model)
    return [
        (m, torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4, fused=True)) for m in (model, twin)
    ]


def _eager_step(model, optimizer, x, spec, generator, kl_weight=1.0, precision="32"):
    """iwae.train's eager step: zero_grad, accumulate_gradients, fused Adam."""
    optimizer.zero_grad(set_to_none=True)
    bound = accumulate_gradients(model, x, spec, generator, kl_weight, precision=precision)
    optimizer.step()
    return bound


def _assert_same_state(compiled, eager, rtol: float, atol: float = 0.0) -> None:
    """Parameters, Adam's exp_avg, exp_avg_sq and step of (model, optimizer) pairs agree."""
    (model, opt), (ref, opt_ref) = compiled, eager
    assert len(opt.state) == len(opt_ref.state)  # the same parameters have Adam state
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
        if q in opt_ref.state:
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(
                    opt.state[p][key], opt_ref.state[q][key], rtol=rtol, atol=atol, msg=lambda m: f"{name} {key}: {m}"
                )
            assert torch.equal(opt.state[p]["step"], opt_ref.state[q]["step"])
            assert opt.state[p]["step"].dtype == opt_ref.state[q]["step"].dtype == torch.float32


def _compare(
    config,
    spec,
    *,
    steps=2,
    rows=None,
    grey=False,
    precision="32",
    dtype=torch.float64,
    kl=None,
    compile=False,
    rtol=1e-10,
    step=None,
    pairs=None,
):
    """Runs ``steps`` compiled and eager steps side by side (the last on ``rows`` rows when given) and
    checks bounds, gradients (after the first step), parameters, Adam state and generator state."""
    x = _data(config, BATCH, grey).to(dtype)
    compiled, eager = pairs or _pair(config, x, dtype)
    step = step or CompiledStep(*compiled, spec, BATCH, precision=precision, kl_warmup=kl is not None, compile=compile)
    g, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    weight = {} if kl is None else {"kl_weight": kl}
    for i in range(steps):
        xb = x if rows is None or i < steps - 1 else x[:rows]
        bound, finite = step(xb, g, **weight)
        bound_ref = _eager_step(*eager, xb, spec, g_ref, 1.0 if kl is None else kl, precision)
        assert bool(finite) and bound.shape == bound_ref.shape
        torch.testing.assert_close(bound, bound_ref, rtol=rtol, atol=0.0)
        if i == 0:  # after one step Adam's first moment is (1 - beta1) * the gradient
            for (name, p), q in zip(compiled[0].named_parameters(), eager[0].parameters()):
                if q.grad is not None:
                    torch.testing.assert_close(
                        compiled[1].state[p]["exp_avg"] / 0.1,
                        q.grad.to(p.dtype),
                        rtol=max(rtol, 1e-12),
                        atol=rtol * float(q.grad.abs().max()),
                        msg=lambda m: f"gradient of {name}: {m}",
                    )
        assert torch.equal(g.get_state(), g_ref.get_state())  # the same random numbers were drawn
    _assert_same_state(compiled, eager, rtol=rtol, atol=rtol * 1e-2)
    return step


# ----------------------------------------------------------------------------- the traced step, every combination
@pytest.mark.parametrize(
    "objective, m, estimator", OBJECTIVES_AND_ESTIMATORS, ids=[f"{o}-{e}" for o, _, e in OBJECTIVES_AND_ESTIMATORS]
)
def test_every_objective_and_estimator_takes_the_eager_step(objective, m, estimator):
    _compare(ModelConfig(**SMALL), ObjectiveSpec(objective, 4, m, estimator=estimator))


def test_a_wrong_estimator_is_caught():
    """Negative control: the comparison fails when the compiled step's estimator is not the eager one's."""
    config = ModelConfig(**SMALL)
    x = _data(config, BATCH).double()
    compiled, eager = _pair(config, x)
    step = CompiledStep(*compiled, ObjectiveSpec("iwae", 4, estimator="dreg"), BATCH, compile=False)
    step(x, torch.Generator().manual_seed(7))
    _eager_step(*eager, x, ObjectiveSpec("iwae", 4, estimator="reparam"), torch.Generator().manual_seed(7))
    encoder = compiled[0].encoder[0].head.weight
    first_moment = compiled[1].state[encoder]["exp_avg"] / 0.1
    assert not torch.allclose(first_moment, eager[0].encoder[0].head.weight.grad, rtol=1e-3)
    decoder = compiled[0].decoder[0].head.weight  # the decoder follows the objective either way
    torch.testing.assert_close(compiled[1].state[decoder]["exp_avg"] / 0.1, eager[0].decoder[0].head.weight.grad)


MODELS = {
    "mog-learned-weights": (
        ModelConfig(**SMALL, prior="mog", prior_components=3, prior_learn_weights=True),
        ObjectiveSpec("iwae", 4, estimator="dreg"),
        False,
    ),
    "vamp-dreg": (
        ModelConfig(**SMALL, prior="vamp", prior_components=3),
        ObjectiveSpec("iwae", 4, estimator="dreg"),
        False,
    ),
    "vamp-rws-dreg": (
        ModelConfig(**SMALL, prior="vamp", prior_components=3),
        ObjectiveSpec("iwae", 4, estimator="rws-dreg"),
        False,
    ),
    "vamp-piwae": (
        ModelConfig(**SMALL, prior="vamp", prior_components=3),
        ObjectiveSpec("piwae", 4, 2, estimator="dreg"),
        False,
    ),
    "2-layers-stl": (ModelConfig(784, (4, 3), ((8,), (6,))), ObjectiveSpec("iwae", 4, estimator="stl"), False),
    "2-layers-rws": (ModelConfig(784, (4, 3), ((8,), (6,))), ObjectiveSpec("iwae", 4, estimator="rws"), False),
    "2-layers-vamp-dreg": (
        ModelConfig(784, (4, 3), ((8,), (6,)), prior="vamp", prior_components=2),
        ObjectiveSpec("miwae", 4, 2, estimator="dreg"),
        False,
    ),
    "gaussian-learned": (ModelConfig(**SMALL, likelihood="gaussian"), ObjectiveSpec("iwae", 4), True),
    "gaussian-fixed": (ModelConfig(**SMALL, likelihood="gaussian", sigma=0.3), ObjectiveSpec("vae", 4), True),
    "logistic256": (ModelConfig(**SMALL, likelihood="logistic256"), ObjectiveSpec("iwae", 4, estimator="stl"), True),
    "gated": (ModelConfig(784, (4,), ((8, 8),), network="gated"), ObjectiveSpec("iwae", 4, estimator="dreg"), False),
    "conv": (ModelConfig(784, (4,), ((2, 3),), network="conv"), ObjectiveSpec("ciwae", 4, estimator="stl"), False),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_priors_layers_likelihoods_and_networks_take_the_eager_step(name):
    config, spec, grey = MODELS[name]
    _compare(config, spec, grey=grey)


# ----------------------------------------------------------------------------- where it applies: the matrix
# The settings' values, as iwae.choices lists them (1 and 2 stochastic layers for the MLP; the gated and conv
# networks have one). Every combination compiles; what falls back to eager is listed in FALLS_BACK.
NETWORK_LAYERS = {
    "mlp-1": dict(latent_dims=(4,), hidden_dims=((8,),)),
    "mlp-2": dict(latent_dims=(4, 3), hidden_dims=((8,), (6,))),
    "gated": dict(latent_dims=(4,), hidden_dims=((8, 8),), network="gated"),
    "conv": dict(latent_dims=(4,), hidden_dims=((2, 3),), network="conv"),
}
# 12 cells in which every pair of values of two of (prior, network and layers, likelihood, precision) meets
# (a pairwise covering array: each axis's code and its interaction with each other axis is traced and
# compared with the eager step), each with one of the objective x estimator pairs, all of them tested above
MATRIX = [
    ("normal", "mlp-1", "bernoulli", "32", ("iwae", 1, "rws-dreg")),
    ("normal", "mlp-2", "logistic256", "bf16-mixed", ("piwae", 2, "dreg")),
    ("normal", "gated", "bernoulli", "bf16-mixed", ("miwae", 2, "stl")),
    ("normal", "conv", "gaussian", "32", ("vae", 1, "dreg")),
    ("mog", "mlp-1", "gaussian", "bf16-mixed", ("ciwae", 1, "reparam")),
    ("mog", "mlp-2", "bernoulli", "32", ("iwae", 1, "rws")),
    ("mog", "gated", "logistic256", "32", ("miwae", 2, "dreg")),
    ("mog", "conv", "logistic256", "bf16-mixed", ("iwae", 1, "stl")),
    ("vamp", "mlp-1", "logistic256", "bf16-mixed", ("vae", 1, "reparam")),
    ("vamp", "mlp-2", "gaussian", "bf16-mixed", ("iwae", 1, "dreg")),
    ("vamp", "gated", "gaussian", "32", ("ciwae", 1, "stl")),
    ("vamp", "conv", "bernoulli", "32", ("piwae", 2, "reparam")),
]
# where the compiled step does not apply, and what a run does instead (each has a test: see its name)
FALLS_BACK = {
    "another optimizer than iwae.train's Adam (API only)": "eager step, one-line note "
    "(test_where_the_compiled_step_does_not_apply_training_is_eager_with_a_one_line_note)",
    "a user module that make_fx cannot trace (API only)": "eager step, one-line note (the same test, and "
    "tests/test_compiled_training.py::test_a_model_the_compiled_step_cannot_trace_trains_eager_with_a_one_line_note)",
    "batched members (--seeds with --batch, or the CUDA default)": "the members train one after another, each "
    "with the compiled step, one-line note (tests/test_compiled_training.py::"
    "test_batched_members_with_the_compiled_step_train_one_after_another_with_a_one_line_note)",
    "--model hvae (Tomczak & Welling's two-level model draws its own noise)": "eager step, one-line note, "
    "bit for bit the eager run (test_compile_step_with_adam_normgrad_or_an_hvae_trains_eager_and_says_so)",
    "--optimizer adam-normgrad (the gradients are rescaled before Adam)": "eager step, one-line note, bit for "
    "bit the eager run (test_compile_step_with_adam_normgrad_or_an_hvae_trains_eager_and_says_so)",
}


def test_the_matrix_covers_every_setting_and_every_pair_of_settings():
    """A new prior, network, likelihood, precision, objective or estimator in iwae.choices fails here
    until it is put in the matrix (and traced by the test below)."""
    axes = (PRIORS, tuple(NETWORK_LAYERS), LIKELIHOODS, PRECISIONS)
    assert {n.split("-")[0] for n in NETWORK_LAYERS} == set(NETWORKS)
    for i, j in itertools.combinations(range(4), 2):
        met = {(cell[i], cell[j]) for cell in MATRIX}
        assert met == set(itertools.product(axes[i], axes[j])), (i, j)
    every_pair = {(o, e) for e, objectives in ESTIMATOR_OBJECTIVES.items() for o in objectives}
    assert {(o, e) for o, _, e in OBJECTIVES_AND_ESTIMATORS} == every_pair


def test_each_fallback_names_the_test_that_shows_it():
    here = Path(__file__).parent
    tests = "".join((here / name).read_text() for name in ("test_compiled_step.py", "test_compiled_training.py"))
    for what, instead in FALLS_BACK.items():
        names = re.findall(r"(?:\(|::)(test_\w+)", instead)
        assert names and all(f"def {name}(" in tests for name in names), what


@pytest.mark.parametrize(
    "prior, network, likelihood, precision, objective", MATRIX, ids=["-".join(c[:4]) for c in MATRIX]
)
def test_every_prior_network_likelihood_and_precision_compiles(
    prior, network, likelihood, precision, objective, monkeypatch
):
    """Each cell builds the compiled step (no fallback) and takes the eager step: float64 to its rounding;
    bf16-mixed in float32 with autocast's weight cache off (see test_bf16_mixed_matches_eager_...)."""
    components = {} if prior == "normal" else {"prior_components": 2}
    config = ModelConfig(784, **NETWORK_LAYERS[network], prior=prior, likelihood=likelihood, **components)
    spec = ObjectiveSpec(objective[0], 4, objective[1], estimator=objective[2])
    grey = likelihood != "bernoulli"
    if precision == "32":
        _compare(config, spec, steps=1, grey=grey)
        return
    monkeypatch.setattr(
        estimators_module,
        "training_autocast",
        lambda precision, device: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False),
    )
    _compare(config, spec, steps=1, grey=grey, precision=precision, dtype=torch.float32, rtol=2e-5)


def test_a_short_last_minibatch_is_padded_and_masked():
    """3 of 5 rows: the padding rows change neither the bound, the gradient, the update nor the draws."""
    _compare(ModelConfig(**SMALL), ObjectiveSpec("iwae", 4, estimator="dreg"), steps=3, rows=3)


def test_the_kl_warmup_weight_and_the_learning_rate_are_inputs():
    """One program for every KL weight and learning rate: the values change, the program does not."""
    config, spec = ModelConfig(**SMALL), ObjectiveSpec("vae", 4, estimator="stl")
    x = _data(config, BATCH).double()
    compiled, eager = _pair(config, x)
    step = CompiledStep(*compiled, spec, BATCH, kl_warmup=True, compile=False)
    program = step._program
    g, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for kl, lr in ((0.0, 1e-3), (0.25, 1e-3), (1.0, 3e-4)):
        for opt in (compiled[1], eager[1]):
            opt.param_groups[0]["lr"] = lr
        bound, _ = step(x, g, kl_weight=kl)
        torch.testing.assert_close(bound, _eager_step(*eager, x, spec, g_ref, kl), rtol=1e-12, atol=0.0)
    assert step._program is program
    _assert_same_state(compiled, eager, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="kl_weight must be 1"):
        CompiledStep(*_pair(config, x)[0], spec, BATCH, compile=False)(x, g, kl_weight=0.5)
    with pytest.raises(NotCompilable, match="vae objective only"):
        CompiledStep(*_pair(config, x)[0], ObjectiveSpec("iwae", 4), BATCH, kl_warmup=True, compile=False)


def test_bf16_mixed_matches_eager_without_autocast_s_weight_cache(monkeypatch):
    """bf16-mixed: eager sums the gradients of a weight used more than once in bfloat16 (autocast's cached
    copy), the traced step in float32; with the cache off they agree to float32 rounding, with it to
    one bfloat16 rounding (see the module docstring)."""
    config = ModelConfig(784, (4, 3), ((8,), (6,)), prior="vamp", prior_components=2)
    spec = ObjectiveSpec("iwae", 4, estimator="dreg")
    x = _data(config, BATCH)
    pairs = _pair(config, x, torch.float32)
    default_eager = copy.deepcopy(pairs[1])
    step = CompiledStep(*pairs[0], spec, BATCH, precision="bf16-mixed", compile=False)
    _eager_step(*default_eager, x, spec, torch.Generator().manual_seed(7), precision="bf16-mixed")
    monkeypatch.setattr(
        estimators_module,
        "training_autocast",
        lambda precision, device: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False),
    )
    _compare(config, spec, steps=1, precision="bf16-mixed", dtype=torch.float32, rtol=2e-5, step=step, pairs=pairs)
    for p, q in zip(pairs[0][0].parameters(), default_eager[0].parameters()):
        torch.testing.assert_close(
            pairs[0][1].state[p]["exp_avg"],
            default_eager[1].state[q]["exp_avg"],
            rtol=1e-2,
            atol=1e-2 * float(default_eager[1].state[q]["exp_avg"].abs().max()),
        )


# ----------------------------------------------------------------------------- non-finite steps
def _nonfinite_check(step, pair, config):
    x = _data(config, BATCH).to(pair[0].encoder[0].head.weight.dtype)
    g = torch.Generator().manual_seed(7)
    step(x, g)  # one good step: Adam's state exists
    before = copy.deepcopy((pair[0].state_dict(), pair[1].state_dict()))
    bad = x.clone()
    bad[2, 5] = float("nan")
    bound, finite = step(bad, g)
    assert not bool(finite) and torch.isnan(bound[2])
    after = (pair[0].state_dict(), pair[1].state_dict())
    for name, value in before[0].items():
        assert torch.equal(after[0][name], value), name  # the parameters did not take that step
    for index, state in before[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(after[1]["state"][index][key], value), (index, key)  # nor Adam's state
    _, finite = step(x[:3], g)  # a short batch: its padding rows never raise the flag
    assert bool(finite)
    assert int(pair[1].state[pair[0].decoder[0].head.bias]["step"]) == 2


def test_a_nonfinite_step_changes_nothing():
    config = ModelConfig(**SMALL)
    pair = _pair(config, _data(config, BATCH))[0]
    _nonfinite_check(
        CompiledStep(*pair, ObjectiveSpec("iwae", 4, estimator="dreg"), BATCH, compile=False), pair, config
    )


# ----------------------------------------------------------------------------- compiled by inductor
@pytest.fixture(scope="module")
def float64_program():
    """PIWAE with DReG (two surrogates, two parameter sets) on a mixture prior (its sliced density's own
    backward), compiled in float64."""
    config = ModelConfig(**SMALL, prior="mog", prior_components=3, prior_learn_weights=True)
    spec = ObjectiveSpec("piwae", 4, 2, estimator="dreg")
    x = _data(config, BATCH).double()
    pairs = _pair(config, x)
    return config, spec, pairs, CompiledStep(*pairs[0], spec, BATCH)


def test_the_compiled_program_takes_the_eager_step_to_float64_rounding(float64_program):
    config, spec, pairs, step = float64_program
    pairs = copy.deepcopy(pairs)  # fresh copies: the program takes any tensors of its shapes
    step = CompiledStep(*pairs[0], spec, BATCH)
    assert step._program is float64_program[3]._program  # the same program, compiled once per process
    _compare(config, spec, steps=3, rows=2, pairs=pairs, step=step, rtol=1e-9)


def test_a_nonfinite_compiled_step_changes_nothing(float64_program):
    config, spec, pairs, _ = float64_program
    pair = copy.deepcopy(pairs[0])
    _nonfinite_check(CompiledStep(*pair, spec, BATCH), pair, config)


# the float32 program: the shapes of tests/test_compiled_training.py and test_fault_injection.py's compiled
# runs (IWAE(k=3), 4 latent units, 16 hidden, B = 10), so that a pytest process compiles it once for all
FLOAT32_BATCH = 10


@pytest.fixture(scope="module")
def float32_program():
    config = ModelConfig(784, (4,), ((16,),))
    spec = ObjectiveSpec("iwae", 3)
    x = _data(config, FLOAT32_BATCH)
    pairs = _pair(config, x, torch.float32)
    return config, spec, pairs, CompiledStep(*copy.deepcopy(pairs[0]), spec, FLOAT32_BATCH)


def test_the_float32_program_takes_the_eager_step_to_float32_rounding(float32_program):
    """Inductor reorders float32 sums: bounds agree to 1e-5, a gradient to 1e-3 of its largest element
    (the eager step's own error against float64 is of that size: sums over the batch cancel)."""
    config, spec, pairs, _ = float32_program
    pairs = copy.deepcopy(pairs)
    step = CompiledStep(*pairs[0], spec, FLOAT32_BATCH)
    x = _data(config, FLOAT32_BATCH)
    g, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    bound, finite = step(x, g)
    torch.testing.assert_close(bound, _eager_step(*pairs[1], x, spec, g_ref), rtol=1e-5, atol=0.0)
    for p, q in zip(pairs[0][0].parameters(), pairs[1][0].parameters()):
        scale = float(q.grad.abs().max())
        torch.testing.assert_close(pairs[0][1].state[p]["exp_avg"] / 0.1, q.grad, rtol=1e-3, atol=1e-3 * scale)


def test_a_compiled_run_resumes_bit_exactly(float32_program, tmp_path):
    """Four compiled steps in a row, against two, a checkpoint through iwae.rundir, a fresh model, optimizer
    and generator restored from it, and two more: the same parameters and Adam state, bit for bit."""
    config, spec, pairs, _ = float32_program
    x = _data(config, 4 * FLOAT32_BATCH, seed=3)
    straight = copy.deepcopy(pairs[0])
    step = CompiledStep(*straight, spec, FLOAT32_BATCH)
    g = torch.Generator().manual_seed(11)
    for i in range(4):
        step(x[i * FLOAT32_BATCH : (i + 1) * FLOAT32_BATCH], g)
    first = copy.deepcopy(pairs[0])
    step = CompiledStep(*first, spec, FLOAT32_BATCH)
    g = torch.Generator().manual_seed(11)
    for i in range(2):
        step(x[i * FLOAT32_BATCH : (i + 1) * FLOAT32_BATCH], g)
    rundir.save_checkpoint(tmp_path, *first, g, epoch=0, step=2, metrics=[])
    resumed = copy.deepcopy(pairs[0])
    with torch.no_grad():
        for p in resumed[0].parameters():
            p.zero_()  # nothing of the old weights survives but what the checkpoint holds
    g = torch.Generator()
    rundir.restore(
        tmp_path / rundir.CHECKPOINT, *rundir.read_checkpoint(tmp_path), *resumed, g, n_train=4 * FLOAT32_BATCH
    )
    step = CompiledStep(*resumed, spec, FLOAT32_BATCH)
    for i in range(2, 4):
        step(x[i * FLOAT32_BATCH : (i + 1) * FLOAT32_BATCH], g)
    for p, q in zip(resumed[0].parameters(), straight[0].parameters()):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(resumed[1].state[p][key], straight[1].state[q][key])


# ----------------------------------------------------------------------------- the CUDA graph path, on the CPU
def test_the_cuda_graph_path_writes_each_step_into_one_capture(monkeypatch):
    """On CUDA the program is replayed as a CUDA graph: each step's minibatch, eps and mask are written
    into the captured tensors, the learning rate too, and the bias corrections are computed in the
    program from Adam's step tensor. Run here with a stand-in capture (the traced graph called on the
    captured tensors at every replay), it takes the eager steps: full and short minibatches, a new
    learning rate, and an optimizer whose state was loaded again (then captured again)."""
    captured = []

    def capture(program, args):
        captured.append([a.data_ptr() for a in args])
        return lambda: program(*args)

    monkeypatch.setattr(program_module, "capture_cuda_graph", capture)
    monkeypatch.setattr(step_module, "_bias_on_device", lambda device: True)
    config, spec = ModelConfig(**SMALL), ObjectiveSpec("iwae", 4, estimator="dreg")
    x = _data(config, BATCH).double()
    compiled, eager = _pair(config, x)
    step = CompiledStep(*compiled, spec, BATCH, compile=False, cuda_graph=True)
    g, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for i, (rows, lr) in enumerate([(5, 1e-3), (3, 1e-3), (5, 3e-4), (2, 3e-4), (5, 3e-4)]):
        for opt in (compiled[1], eager[1]):
            opt.param_groups[0]["lr"] = lr
        if i == 3:  # a resume loads the optimizer's state into new tensors: captured again
            compiled[1].load_state_dict(copy.deepcopy(compiled[1].state_dict()))
        bound, finite = step(x[:rows], g)
        torch.testing.assert_close(bound, _eager_step(*eager, x[:rows], spec, g_ref), rtol=1e-10, atol=0.0)
        assert bool(finite)
    assert len(captured) == 2 and captured[0][: len(step._params)] == captured[1][: len(step._params)]
    _assert_same_state(compiled, eager, rtol=1e-10, atol=1e-12)


class _FakeCuda:
    """Stand-ins for torch.cuda's streams and graphs that record what capture_cuda_graph does with them."""

    def __init__(self):
        self.events: list[str] = []
        fake = self

        class Stream:
            def __init__(self, device=None):
                fake.events.append("side stream")

            def wait_stream(self, other):
                fake.events.append("side waits")

        class CurrentStream:
            def wait_stream(self, other):
                fake.events.append("main waits")

        class Graph:
            def replay(self):
                fake.events.append("replay")

        class Capturing:
            def __init__(self, graph):
                pass

            def __enter__(self):
                fake.events.append("capture begins")

            def __exit__(self, *exc):
                fake.events.append("capture ends")

        class OnStream:
            def __init__(self, stream):
                pass

            def __enter__(self):
                fake.events.append("on side stream")

            def __exit__(self, *exc):
                fake.events.append("back on main stream")

        self.Stream, self.CUDAGraph, self.graph, self.stream = Stream, Graph, Capturing, OnStream
        self.current_stream = lambda device=None: CurrentStream()


def test_capture_warms_up_on_copies_then_records_the_real_tensors(monkeypatch):
    """capture_cuda_graph: the program (which writes its inputs) is warmed up twice on a side stream on
    copies of the inputs, which are left as they were; then captured once on the inputs themselves; each
    replay replays the graph and returns the captured outputs."""
    fake = _FakeCuda()
    for name in ("Stream", "CUDAGraph", "graph", "stream", "current_stream"):
        monkeypatch.setattr(program_module.torch.cuda, name, getattr(fake, name))
    args = [torch.arange(3.0), torch.ones(2)]
    before = [a.clone() for a in args]
    calls = []

    def program(a, b):
        calls.append((a.data_ptr(), b.data_ptr(), fake.events[-1]))
        a.add_(1.0)  # it updates its inputs, as the step does its parameters
        return (a.sum(),)

    replay = program_module.capture_cuda_graph(program, args)
    real = (args[0].data_ptr(), args[1].data_ptr())
    assert [c[:2] != real for c in calls] == [True, True, False]  # two warm-ups on copies, the capture on args
    assert [c[2] for c in calls] == ["on side stream", "on side stream", "capture begins"]
    assert fake.events.index("main waits") < fake.events.index("capture begins")
    torch.testing.assert_close(args[1], before[1])
    outputs = replay()
    assert fake.events[-1] == "replay" and replay() is outputs


def test_on_cuda_inductor_s_python_wrapper_is_used_under_the_graph():
    assert program_module.inductor_options(torch.device("cpu")) == {"config_patches": {"cpp_wrapper": True}}
    assert program_module.inductor_options(torch.device("cuda", 0)) == {}


# ----------------------------------------------------------------------------- where it does not apply
def _fallback_note(model, optimizer, spec=None):
    spec = spec or ObjectiveSpec("iwae", 4)
    notes = []
    assert compiled_step(model, optimizer, spec, BATCH, note=notes.append) is None
    assert len(notes) == 1 and "\n" not in notes[0] and notes[0].endswith("training with the eager step")
    return notes[0]


def test_where_the_compiled_step_does_not_apply_training_is_eager_with_a_one_line_note():
    """The combinations that fall back: another optimizer than iwae.train's Adam (SGD, AMSGrad, weight
    decay, another parameter list) and a user module that make_fx cannot trace. Every built-in prior,
    likelihood, network, layer count, objective, estimator and precision compiles (the tests above)."""
    model = VAE(ModelConfig(**SMALL))
    assert "runs Adam, not SGD" in _fallback_note(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert "amsgrad=True" in _fallback_note(model, torch.optim.Adam(model.parameters(), amsgrad=True))
    assert "weight_decay=0.1" in _fallback_note(model, torch.optim.Adam(model.parameters(), weight_decay=0.1))
    assert "exactly the model's parameters" in _fallback_note(model, torch.optim.Adam(list(model.parameters())[:2]))
    user = VAE(ModelConfig(784, (4,), ((8,),)), encoder=BranchingEncoder())
    assert "cannot be traced" in _fallback_note(user, torch.optim.Adam(user.parameters()))
    # Tomczak & Welling's two-level HVAE (--model hvae) draws its own noise: it trains with the eager step
    hvae = HVAE(ModelConfig.hvae(784, latent_dims=(3, 2), hidden_dims=((8, 8), (8,))))
    assert "HVAE" in _fallback_note(hvae, torch.optim.Adam(hvae.parameters()))


def test_compile_step_with_adam_normgrad_or_an_hvae_trains_eager_and_says_so(tmp_path, mnist_splits, capsys):
    """--compile step on a run the program cannot hold (AdamNormGrad's gradient rescaling, the HVAE) trains
    exactly as the eager run of the same config, with one line on stderr saying why."""
    s = mnist_splits
    tiny = Splits("mnist", s.train[:40].clone(), s.valid[:20].clone(), s.test[:20].clone(), True)
    common = dict(objective="iwae", k=2, epochs=1, train_subset=40, batch_size=20, schedule="constant", lr=1e-3)
    hvae = dict(model="hvae", layers=2, latent_dims=[3, 2], hidden_dims=[[8, 8], [8]])
    for extra, why in ((dict(optimizer="adam-normgrad"), "adam-normgrad trains eager"), (hvae, "HVAE")):
        weights = []
        for compile_ in ("none", "step"):
            out = tmp_path / f"{why[:4]}-{compile_}"
            train(TrainConfig(**common, **extra, compile=compile_, out=str(out)), progress=False, splits=tiny)
            weights.append(load_tensors(out / "model.safetensors")[0])
        lines = [line for line in capsys.readouterr().err.splitlines() if why in line]
        assert len(lines) == 1, lines
        assert sorted(weights[0]) == sorted(weights[1])
        for key in weights[0]:
            assert torch.equal(weights[0][key], weights[1][key]), key


def test_compiled_step_builds_the_inductor_program_where_it_applies(float32_program):
    config, spec, pairs, step = float32_program
    notes = []
    built = compiled_step(*copy.deepcopy(pairs[0]), spec, FLOAT32_BATCH, note=notes.append)
    assert isinstance(built, CompiledStep) and notes == []
    assert built._program is step._program and built._program is not built.graph  # inductor's, shared


def test_bad_calls_are_refused():
    model = VAE(ModelConfig(**SMALL))
    step = CompiledStep(model, torch.optim.Adam(model.parameters()), ObjectiveSpec("iwae", 4), BATCH, compile=False)
    with pytest.raises(ValueError, match="1 to 5 examples, got 6"):
        step(torch.zeros(6, 784), torch.Generator())
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        CompiledStep(model, torch.optim.Adam(model.parameters()), ObjectiveSpec("iwae", 4), 0)
