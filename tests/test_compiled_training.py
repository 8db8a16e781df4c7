"""Tests for ``iwae train --compile step``: the training loop with the whole step as one compiled program
(iwae.compiled.step) trains as the eager loop does, resumes bit for bit, stops on nan or inf as the eager
loop does, and trains eagerly, with a one-line note, where the compiled step does not apply.

One program is compiled by inductor (the model of :data:`SHAPES`, the one tests/test_compiled_step.py's
float32 fixture and tests/test_fault_injection.py's compiled runs compile too: a pytest process compiles
it once); the other checks run the traced graph without inductor (``compile_graph`` replaced by the
identity), which is what inductor compiles, to test the loop's wiring in a second.
"""

from __future__ import annotations

import pytest
import torch
from user_models import BranchingEncoder

import iwae.compiled.program as program_module
from iwae import rundir
from iwae.checkpoint import load_tensors
from iwae.data import Splits
from iwae.members import train_members
from iwae.models import VAE, ModelConfig
from iwae.train import TrainConfig, train
from iwae.train import loop as train_module

# the model, objective and batch of the one inductor program (shared with test_compiled_step.py and
# test_fault_injection.py): Burda's 1-layer MLP shrunk to 4 latent units and 16 hidden, IWAE(k=3), B = 10
SHAPES = dict(latent_dims=[4], hidden_dims=[[16]], k=3, batch_size=10)


def _splits(n_train: int = 55) -> Splits:
    """Grey-level training images (binarized afresh each epoch); 55 of them: 5 full minibatches and a short one."""
    g = torch.Generator().manual_seed(0)
    images = lambda n: torch.bernoulli(torch.rand(n, 784, generator=g) * 0.6, generator=g)  # noqa: E731
    return Splits("mnist", torch.rand(n_train, 784, generator=g), images(20), images(20), True)


def _config(tmp_path, name: str, **settings) -> TrainConfig:
    values = {**SHAPES, "epochs": 2, "schedule": "constant", "out": str(tmp_path / name), **settings}
    return TrainConfig(**values)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / rundir.CHECKPOINT)[0]


def _eager_steps(monkeypatch) -> list[int]:
    """Counts the eager steps (``accumulate_gradients`` calls) of the loop."""
    calls: list[int] = []
    real = train_module.accumulate_gradients

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "accumulate_gradients", counted)
    return calls


@pytest.fixture
def traced_only(monkeypatch):
    """The compiled step runs its traced graph without inductor (the same operations, no compile time)."""
    monkeypatch.setattr(program_module, "compile_graph", lambda graph, example, device: graph)


# ----------------------------------------------------------------------------- the inductor program
def test_a_compiled_run_trains_as_the_eager_run(tmp_path, monkeypatch):
    """Same seed, same data: the compiled run draws the same random numbers (the generator's state at
    every checkpoint is the eager run's, bit for bit) and ends with the eager run's bounds and weights
    to float rounding, the short last minibatch of each epoch included; no eager step is taken."""
    splits = _splits()
    eager = train(_config(tmp_path, "eager"), progress=False, splits=splits)
    calls = _eager_steps(monkeypatch)
    compiled = train(_config(tmp_path, "step", compile="step"), progress=False, splits=splits)
    assert calls == []  # every step was the compiled program's
    rows, rows_ref = rundir.read_metrics(compiled), rundir.read_metrics(eager)
    assert [r["step"] for r in rows] == [r["step"] for r in rows_ref] == [6, 12]
    for row, ref in zip(rows, rows_ref):
        assert row["train_bound"] == pytest.approx(ref["train_bound"], rel=1e-5)
        assert row["valid_L3"] == pytest.approx(ref["valid_L3"], rel=1e-5)
    state, state_ref = _weights(compiled), _weights(eager)
    assert sorted(state) == sorted(state_ref)
    for name, value in state_ref.items():
        if "rng" in name or name.endswith("step"):  # the random streams and Adam's step counts: exactly
            assert torch.equal(state[name], value), name
        else:  # Adam divides by sqrt(v) + 1e-4: a gradient's rounding moves a weight by up to a step's size
            torch.testing.assert_close(state[name], value, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")
    start = VAE(ModelConfig(784, (4,), ((16,),))).state_dict()
    assert not torch.equal(
        rundir.load_model(compiled).state_dict()["decoder.0.head.weight"], start["decoder.0.head.weight"]
    )


def test_a_compiled_run_resumes_bit_exactly(tmp_path):
    """Two epochs straight, against one epoch, a resume from its checkpoint in a fresh compiled step,
    and a second: the same weights, Adam state and random streams, bit for bit."""
    splits = _splits()
    straight = train(_config(tmp_path, "straight", compile="step"), progress=False, splits=splits)
    first = _config(tmp_path, "resumed", compile="step", epochs=1)
    train(first, progress=False, splits=splits)
    resumed = train(_config(tmp_path, "resumed", compile="step"), resume=True, progress=False, splits=splits)
    state, state_ref = _weights(resumed), _weights(straight)
    assert sorted(state) == sorted(state_ref)
    for name, value in state_ref.items():
        assert torch.equal(state[name], value), name
    assert [r["train_bound"] for r in rundir.read_metrics(resumed)] == [
        r["train_bound"] for r in rundir.read_metrics(straight)
    ]


# ----------------------------------------------------------------------------- the loop's wiring (traced graph)
def test_kl_warmup_the_schedule_and_short_batches_do_not_make_new_programs(tmp_path, monkeypatch, traced_only):
    """vae with KL warm-up over 2 epochs and the paper schedule (its learning rate changes after epoch
    1): one traced program for every weight, rate and short batch, the eager run's numbers."""
    built = []
    real = program_module.compile_graph
    monkeypatch.setattr(program_module, "compile_graph", lambda *a: built.append(1) or real(*a))
    splits = _splits()
    settings = dict(objective="vae", kl_warmup=2, schedule="paper", epochs=3, estimator="stl")
    eager = train(_config(tmp_path, "eager", **settings), progress=False, splits=splits)
    compiled = train(_config(tmp_path, "step", compile="step", **settings), progress=False, splits=splits)
    assert built == [1]
    rows, rows_ref = rundir.read_metrics(compiled), rundir.read_metrics(eager)
    assert len({r["lr"] for r in rows}) == 2
    for row, ref in zip(rows, rows_ref):
        assert row["train_bound"] == pytest.approx(ref["train_bound"], rel=1e-5)
    for name, value in _weights(eager).items():
        if not ("rng" in name or name.endswith("step")):
            torch.testing.assert_close(_weights(compiled)[name], value, rtol=1e-3, atol=1e-4)


def test_a_nonfinite_compiled_step_stops_the_run_as_the_eager_one_does(tmp_path, monkeypatch, traced_only):
    """A nan in the third minibatch: the compiled run stops with the eager run's error at step 3, its
    parameters did not take that step, and its files are the eager run's (nothing written past the start)."""
    real = train_module.data_module.binarize
    errors = {}
    for mode in ("none", "step"):
        calls = []

        def poisoned(x, generator):
            calls.append(1)
            x = real(x, generator)
            if len(calls) == 3:
                x[0, 0] = float("nan")
            return x

        monkeypatch.setattr(train_module.data_module, "binarize", poisoned)
        with pytest.raises(FloatingPointError) as e:
            train(_config(tmp_path, mode, compile=mode), progress=False, splits=_splits())
        errors[mode] = str(e.value)
        assert not (tmp_path / mode / rundir.CHECKPOINT).exists()
        assert load_tensors(tmp_path / mode / "model.safetensors")[1]["epoch"] == 0
    assert errors["step"] == errors["none"]
    assert "in epoch 1 at step 3" in errors["step"]


def test_a_model_the_compiled_step_cannot_trace_trains_eager_with_a_one_line_note(tmp_path, monkeypatch, capsys):
    """User modules that make_fx cannot trace (data-dependent control flow): one line on stderr, then
    the eager step trains the run."""
    calls = _eager_steps(monkeypatch)
    model = VAE(ModelConfig(784, (4,), ((16,),)), encoder=BranchingEncoder())
    train(_config(tmp_path, "user", compile="step", epochs=1), progress=False, splits=_splits(), model=model)
    notes = [line for line in capsys.readouterr().err.splitlines() if "compiled step" in line]
    assert len(notes) == 1 and "cannot be traced" in notes[0] and notes[0].endswith("training with the eager step")
    assert len(calls) == 6


def test_batched_members_with_the_compiled_step_train_one_after_another_with_a_one_line_note(
    tmp_path, monkeypatch, capsys, traced_only
):
    """--seeds with --batch and --compile step: the stacked model has no compiled step, so the members
    train one after another, each with its own compiled step (no eager step), each its run alone bit
    for bit; one line says so."""
    calls = _eager_steps(monkeypatch)
    splits = _splits()
    configs = [_config(tmp_path, f"seed{seed}", seed=seed, compile="step", epochs=1) for seed in (0, 1)]
    results = train_members(configs, batch=True, progress=True, splits=splits)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("members:")]
    assert notes == ["members: cannot batch runs with compile step; training them one after another"]
    assert [r.status for r in results] == ["trained", "trained"] and calls == []
    alone = train(_config(tmp_path, "alone", seed=1, compile="step", epochs=1), progress=False, splits=splits)
    state, state_ref = _weights(results[1].run_dir), _weights(alone)
    assert sorted(state) == sorted(state_ref) and all(torch.equal(state[k], state_ref[k]) for k in state)
