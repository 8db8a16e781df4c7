"""Early stopping (``--early-stopping PATIENCE``) and the AdamNormGrad optimiser (``--optimizer adam-normgrad``)
of Tomczak & Welling's code.

- :class:`EarlyStopping` against the code's loop (``utils/perform_experiment.py``), written again here from it:
  the same stopping epoch and best epoch for every sequence of validation losses, warm-up included.
- A real small run whose validation bounds are scripted (by the generator's state at each validation, so that
  a resumed run sees the same sequence): it stops where the code would, its model.safetensors is the best
  epoch's weights (the same as a run of that many epochs without early stopping), and it is finished.
- Killed with SIGKILL at points spread over the run (mid-epoch, in the middle of writes, at the final write of
  the best model), then resumed: the same files as the uninterrupted run, bit for bit.
- AdamNormGrad: each parameter's gradient divided by its norm, then Adam, against the code's update written
  from its formula; the loop hands Adam unit-norm gradients only with the option.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from cli_helpers import small_npz as write_small_npz
from test_fault_injection import _install_hooks, _run_killed

from iwae.checkpoint import load_tensors
from iwae.config import TrainConfig
from iwae.members import stackable
from iwae.train import loop as train_module
from iwae.train.early_stopping import EarlyStopping

# validation bounds (higher is better) of the scripted run, epoch by epoch: with patience 1 the code stops
# after epoch 6 (two bad epochs in a row: 5 and 6), its best epoch is 4
SCRIPT = [-300.0, -290.0, -295.0, -289.0, -292.0, -293.0, -280.0, -270.0]
TRAIN_ARGS = (
    "--k", 3, "--latent-dims", 4, "--hidden-dims", 16, "--batch-size", 10, "--epochs", 8,
    "--checkpoint-every", 4, "--seed", 1, "--quiet", "--schedule", "constant", "--lr", "0.003",
)  # fmt: skip
STOP_ARGS = ("--early-stopping", 1)


# ----------------------------------------------------------------------------- the rule, against the code's loop
def code_loop(losses: list[float], patience: int, warmup: int) -> tuple[int, int]:
    """(last epoch run, best epoch) of the VampPrior code's loop over validation losses (lower is better),
    transcribed from its experiment_vae: best_loss = 100000, e counts bad epochs, reset during warm-up."""
    best_loss, e, best_epoch, epoch = 100000.0, 0, 0, 0
    for epoch, val_loss in enumerate(losses, start=1):
        if val_loss < best_loss:
            e, best_loss, best_epoch = 0, val_loss, epoch
        else:
            e += 1
            if epoch < warmup:
                e = 0
            if e > patience:
                break
    return epoch, best_epoch


def ours(bounds: list[float], patience: int, warmup: int) -> tuple[int, int]:
    stopper, epoch = EarlyStopping(patience, warmup), 0
    for epoch, value in enumerate(bounds, start=1):
        stopper.update(epoch, value, {"w": torch.tensor([float(epoch)])})
        if stopper.stopped:
            break
    assert stopper.best_weights["w"].item() == stopper.best_epoch  # the best epoch's weights are kept
    return epoch, stopper.best_epoch


def test_the_rule_is_the_code_s_for_random_sequences():
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        losses = torch.randint(80, 90, (n,), generator=gen).double().tolist()  # ties happen: not an improvement
        patience, warmup = int(torch.randint(0, 4, (1,), generator=gen)), int(torch.randint(0, 10, (1,), generator=gen))
        expected = code_loop(losses, patience, warmup)
        assert ours([-v for v in losses], patience, warmup) == expected, (losses, patience, warmup)
    # negative control: our bound is higher-is-better; fed the losses unnegated it stops elsewhere
    assert ours(SCRIPT, 1, 0) == (6, 4)
    assert ours([-v for v in SCRIPT], 1, 0) != (6, 4)


def test_warm_up_epochs_never_count_and_a_nonfinite_bound_is_never_the_best():
    assert ours([-1.0, -2.0, -3.0, -4.0, -5.0], 0, 0) == (2, 1)
    assert ours([-1.0, -2.0, -3.0, -4.0, -5.0], 0, 4) == (4, 1)  # epochs 2 and 3 are in the warm-up
    assert ours([float("nan"), -5.0, float("inf"), -6.0], 1, 0) == (4, 2)
    state = EarlyStopping(2)
    state.update(1, float("nan"), {"w": torch.zeros(1)})
    assert state.best is None and state.best_weights == {}


# ----------------------------------------------------------------------------- a real run, scripted bounds
@pytest.fixture(scope="module")
def small_npz(tmp_path_factory, mnist_splits) -> str:
    return write_small_npz(tmp_path_factory.mktemp("data"), mnist_splits, 60)


_EPOCH_OF_STATE: dict[str, int] = {}  # generator state at a validation -> its epoch (0-based), shared across forks


def _scripted(real):
    """validation_bound as the loop calls it, with its draws, returning SCRIPT's bound for the epoch that the
    generator's state identifies (the same state in a resumed or shorter run: they are bit-exact)."""

    def validation(model, x, k, generator, *args, **kwargs):
        key = hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest()
        real(model, x, k, generator, *args, **kwargs)
        return SCRIPT[_EPOCH_OF_STATE.setdefault(key, len(_EPOCH_OF_STATE))]

    return validation


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_npz):
    """The uninterrupted scripted run with early stopping, with the events it passes through counted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    events: collections.Counter = collections.Counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "validation_bound", _scripted(train_module.validation_bound))
        _install_hooks(mp, lambda kind, name, path: events.update([(kind, name)]))
        result = invoke("train", "--dataset", small_npz, *TRAIN_ARGS, *STOP_ARGS, "--out", out)
    assert result.exit_code == 0, result.output
    return out, events


def test_the_run_stops_where_the_code_would_and_keeps_the_best_model(reference, small_npz, tmp_path, monkeypatch):
    out, events = reference
    assert events["validation", None] == 6 and events["step", None] == 36  # stopped after 6 of 8 epochs
    weights, meta = load_tensors(out / "model.safetensors")
    ckpt, ckpt_meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] == 4 and ckpt_meta["epoch"] == 6
    assert ckpt_meta["early_stopping"] == {
        "patience": 1, "best": -289.0, "best_epoch": 4, "bad_epochs": 2, "stopped": True,
    }  # fmt: skip
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [float(r["valid_L3"]) for r in rows] == SCRIPT[:6]
    # model.safetensors: the best epoch's weights, as a run of 4 epochs without early stopping ends with them
    monkeypatch.setattr(train_module, "validation_bound", _scripted(train_module.validation_bound))
    short = [a if a != 8 else 4 for a in TRAIN_ARGS]
    assert invoke("train", "--dataset", small_npz, *short, "--out", tmp_path / "four").exit_code == 0
    four, four_meta = load_tensors(tmp_path / "four" / "model.safetensors")
    assert four_meta["epoch"] == 4 and sorted(four) == sorted(weights)
    assert all(torch.equal(weights[k], four[k]) for k in weights)
    assert all(torch.equal(weights[k], ckpt[f"best.{k}"]) for k in weights)
    # the checkpoint keeps the last epoch's weights (for a resume with more epochs), which differ
    assert not all(torch.equal(weights[k], ckpt[f"model.{k}"]) for k in weights)
    # finished: a resume has nothing to do, and says why
    again = invoke("train", "--resume", out, "--quiet")
    assert again.exit_code == 0 and "nothing to do" in again.output and "stopped early after epoch 6" in again.output
    assert load_tensors(out / "model.safetensors")[1]["epoch"] == 4


def test_early_stopping_trains_one_run_at_a_time_and_bad_values_are_refused(small_npz, tmp_path):
    assert stackable(TrainConfig(early_stopping=3)) == "early stopping"
    assert stackable(TrainConfig(optimizer="adam-normgrad")) == "the adam-normgrad optimizer"
    assert stackable(TrainConfig()) is None
    bad = invoke("train", "--dataset", small_npz, "--early-stopping", -1, "--out", tmp_path / "x")
    assert_one_line_error(bad, "--early-stopping (a patience) must be >= 0, got -1")
    bad = invoke("train", "--dataset", small_npz, "--optimizer", "sgd", "--out", tmp_path / "y")
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "sgd" in bad.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------- killed and resumed: bit-exact
def _kill_points(events) -> list[tuple]:
    """Kill points spread over the scripted run: steps in epochs 1, 3 and 6, validations 2 and 6, half-way
    through the first, a middle and the last checkpoint, the final write of the best model and just after it."""
    ckpts, models = events["fsync", "checkpoint.safetensors"], events["fsync", "model.safetensors"]
    return [
        ("step", None, 3),
        ("validation", None, 2),
        ("fsync", "checkpoint.safetensors", 1),
        ("step", None, 17),
        ("replace", "checkpoint.safetensors", ckpts // 2),
        ("validation", None, 6),
        ("fsync", "model.safetensors", models),  # the best epoch's weights, written as the run ends
        ("replaced", "model.safetensors", models),
        ("fsync", "checkpoint.safetensors", ckpts),
        ("replaced", "checkpoint.safetensors", ckpts),
    ]


def assert_same_files(ref: Path, out: Path) -> None:
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, meta_a = load_tensors(ref / name)
        b, meta_b = load_tensors(out / name)
        assert sorted(a) == sorted(b), name
        for key in a:  # weights, best weights, Adam moments and steps, both RNG states
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs"
        for key in ("epoch", "step", "early_stopping"):
            assert meta_a.get(key) == meta_b.get(key), (name, key)
    timing = {"epoch_time_s", "examples_per_s", "wall_time_s"}
    rows = [list(csv.DictReader((d / "metrics.csv").read_text().splitlines())) for d in (ref, out)]
    assert [[{k: v for k, v in r.items() if k not in timing} for r in rs] for rs in rows][0] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows[1]
    ]


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork and /proc (Linux)")
def test_killed_anywhere_then_resumed_is_the_uninterrupted_run(reference, small_npz, tmp_path, monkeypatch):
    ref, events = reference
    monkeypatch.setattr(train_module, "validation_bound", _scripted(train_module.validation_bound))
    start = ["train", "--dataset", small_npz, *map(str, TRAIN_ARGS), *map(str, STOP_ARGS)]
    for i, point in enumerate(_kill_points(events)):
        out = tmp_path / f"run{i}"
        _run_killed([*start, "--out", str(out)], point)
        for name in ("model.safetensors", "checkpoint.safetensors"):  # every file under its name is whole
            if (out / name).exists():
                load_tensors(out / name)
        result = invoke("train", "--resume", out, "--quiet")
        assert result.exit_code == 0, (point, result.output)
        assert re.search(r"resuming .* from epoch \d|starting it from the beginning|nothing to do", result.output)
        assert_same_files(ref, out)


# ----------------------------------------------------------------------------- AdamNormGrad
def adam_norm_grad(params: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float) -> list[torch.Tensor]:
    """The code's AdamNormGrad (utils/optimizer.py), from its formula: g <- g / (||g||_2 + 1e-7), then Adam with
    betas (0.9, 0.999), eps 1e-8 added to sqrt(v), step lr * sqrt(1 - b2^t) / (1 - b1^t)."""
    params = [p.clone().double() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = g.double() / (g.double().norm() + 1e-7)
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] -= lr * (1 - 0.999**t) ** 0.5 / (1 - 0.9**t) * m[i] / (v[i].sqrt() + 1e-8)
    return params


@pytest.mark.parametrize("normalize", [True, False])
def test_normalized_adam_is_the_code_s_update(normalize):
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, eps=1e-8)
    grads = [[torch.randn(p.shape, generator=gen) * scale for p in start] for scale in (0.1, 30.0, 2.0, 0.01)]
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        if normalize:
            train_module._normalize_gradients(model)
        optimizer.step()
    expected = adam_norm_grad(start, grads, 5e-4)
    close = all(torch.allclose(p.double(), e, rtol=0, atol=1e-7) for p, e in zip(model.parameters(), expected))
    assert close == normalize  # plain Adam (the negative control) is not the code's update


def test_the_loop_hands_adam_unit_norm_gradients_only_with_the_option(small_npz, tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append([float(p.grad.norm()) for group in self.param_groups for p in group["params"]])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    args = ("--dataset", small_npz, "--k", 2, "--latent-dims", 3, "--hidden-dims", 8, "--batch-size", 30)
    common = ("--epochs", 1, "--schedule", "constant", "--quiet")
    assert invoke("train", *args, *common, "--optimizer", "adam-normgrad", "--out", tmp_path / "n").exit_code == 0
    assert len(seen) == 2 and all(abs(n - 1) < 1e-5 for norms in seen for n in norms)
    seen.clear()
    assert invoke("train", *args, *common, "--out", tmp_path / "a").exit_code == 0
    assert len(seen) == 2 and not all(abs(n - 1) < 1e-5 for norms in seen for n in norms)
