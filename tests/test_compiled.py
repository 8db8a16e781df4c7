"""Tests for --compile default and reduce-overhead (iwae.compiled.forward): a training step with a compiled
forward pass computes what the eager one does (--compile step: tests/test_compiled_step.py and
tests/test_compiled_training.py).

One real compilation (a tiny model, one shape, through ``train``), about 30 s on one CPU core; the
rest checks the mode handling without compiling.
"""

from __future__ import annotations

import pytest
import torch

import iwae.compiled.forward as compiled_module
from iwae import rundir
from iwae.compiled import COMPILE_MODES, compiled_forward
from iwae.data import Splits
from iwae.errors import ConfigError
from iwae.estimators import ObjectiveSpec, accumulate_gradients, forward_terms
from iwae.models import VAE, ModelConfig
from iwae.train import RESUMABLE, TrainConfig, train


def test_modes_default_to_eager():
    assert COMPILE_MODES == ("none", "step", "default", "reduce-overhead")
    assert TrainConfig().compile == "none"
    assert compiled_forward("none", "cpu") is None
    assert "compile" in RESUMABLE  # how the step is run, not what it computes (like threads)


def test_an_unknown_mode_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="compile") as e:
        TrainConfig(compile="max")
    assert e.value.fields == ("compile",) and "reduce-overhead" in str(e.value)
    with pytest.raises(ValueError, match="unknown compile mode"):
        compiled_forward("fast", "cpu")


def test_reduce_overhead_means_cuda_graphs_on_cuda_and_default_on_cpu(monkeypatch):
    seen = []
    monkeypatch.setattr(compiled_module.torch, "compile", lambda fn, **kw: seen.append((fn, kw)) or fn)
    compiled_forward("reduce-overhead", "cpu")
    compiled_forward("reduce-overhead", torch.device("cuda", 0))
    compiled_forward("default", "cuda")
    assert [kw["mode"] for _, kw in seen] == ["default", "reduce-overhead", "default"]
    assert all(fn is forward_terms and kw["dynamic"] is False for fn, kw in seen)


def test_a_torch_that_cannot_compile_gives_a_config_error_naming_the_setting(monkeypatch):
    """torch.compile refuses where dynamo is missing (torch 2.3 on Python 3.12): one ConfigError about compile."""

    def no_dynamo(fn, **kw):
        raise RuntimeError("Python 3.12+ is not yet supported for torch.compile")

    monkeypatch.setattr(compiled_module.torch, "compile", no_dynamo)
    with pytest.raises(ConfigError, match="compile default is not available with torch .* use compile none") as e:
        compiled_forward("default", "cpu")
    assert e.value.fields == ("compile",) and "Python 3.12+" in str(e.value)


def test_accumulate_gradients_uses_the_forward_it_is_given():
    calls = []

    def forward(*args):
        calls.append(args[2])
        return forward_terms(*args)

    torch.manual_seed(0)
    model = VAE(ModelConfig(input_dim=6, latent_dims=(2,), hidden_dims=((4,),)))
    spec = ObjectiveSpec("iwae", 3)
    accumulate_gradients(model, torch.ones(2, 6), spec, torch.Generator().manual_seed(0), forward=forward)
    assert calls == [spec]


def test_a_compiled_run_trains_as_the_eager_run(tmp_path):
    """Same seed, same data: the compiled step draws the same random numbers (the generator's draws
    stay eager between graphs), so bounds and parameters agree to float rounding after 6 steps."""
    g = torch.Generator().manual_seed(0)
    splits = Splits(
        "mnist",
        torch.rand(120, 784, generator=g),
        torch.bernoulli(torch.full((20, 784), 0.3)),
        torch.bernoulli(torch.full((20, 784), 0.3)),
        True,
    )
    runs = {}
    for mode in ("none", "default"):
        config = TrainConfig(
            latent_dims=[3],
            hidden_dims=[[16]],
            k=4,
            batch_size=20,
            epochs=1,
            schedule="constant",
            compile=mode,
            out=str(tmp_path / mode),
        )
        train(config, progress=False, splits=splits)
        runs[mode] = (rundir.load_model(config.out).state_dict(), rundir.read_metrics(config.out)[-1])
    (eager, eager_row), (comp, comp_row) = runs["none"], runs["default"]
    assert comp_row["train_bound"] == pytest.approx(eager_row["train_bound"], rel=1e-5)
    assert comp_row["valid_L4"] == pytest.approx(eager_row["valid_L4"], rel=1e-5)
    start = VAE(ModelConfig(784, (3,), ((16,),))).state_dict()
    for name, value in eager.items():
        assert not name.endswith("weight") or not torch.equal(value, start[name])  # training moved the weights
        # Adam divides by sqrt(v) + 1e-4: a gradient element near 0 turns its rounding into up to a
        # fraction of one step (lr 1e-3); 6 steps move a weight by up to 6e-3, a wrong gradient by as much
        torch.testing.assert_close(comp[name], value, rtol=1e-3, atol=1e-4)


def test_compiling_does_not_make_another_run():
    """A run trained eager may be resumed compiled (and the reverse): the same computation."""
    assert rundir.changed_settings(TrainConfig(compile="none"), TrainConfig(compile="default")) == []
    assert rundir.changed_settings(TrainConfig(precision="32"), TrainConfig(precision="bf16-mixed")) == ["precision"]
