"""Tests for iwae.members: runs trained as one batched model are each the run it would have been alone
(weights, Adam state, random streams, metrics and folder after 100 steps), resumable alone and
together; a diverging member stops alone; incompatible groups are refused; ``iwae train --seeds``;
``iwae reproduce``'s grouping and its off switch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import iwae.members as members_module
import iwae.train.loop as train_module
from iwae.checkpoint import load_tensors
from iwae.cli import main
from iwae.data import Splits
from iwae.errors import ConfigError
from iwae.experiments.engine import reproduce
from iwae.members import BATCH_BY_DEFAULT, MAY_DIFFER, StackedVAE, batch_by_default, check_group
from iwae.members import loop as members_loop
from iwae.members import stacked as members_stacked
from iwae.train import TrainConfig, train


def train_members(configs, **kwargs):
    """iwae.members.train_members on the stacked path, which most of these tests check (on the CPU the
    default trains the members one after another: test_the_device_rule_decides_whether_members_stack)."""
    return members_module.train_members(configs, **{"batch": True, **kwargs})


TIME_COLUMNS = ("epoch_time_s", "examples_per_s", "wall_time_s")  # the group's clock, not the run's numbers
# 100 steps: 400 images, batches of 20, 5 epochs; tiny tanh nets so that the test takes seconds
BASE = dict(train_subset=400, batch_size=20, epochs=5, latent_dims=[4], hidden_dims=[[16, 16]])


@pytest.fixture(scope="module")
def splits(mnist_splits) -> Splits:
    s = mnist_splits
    return Splits("mnist", s.train[:400].clone(), s.valid[:40].clone(), s.test[:20].clone(), True)


def config(out: Path, **settings) -> TrainConfig:
    return TrainConfig(**{**BASE, **settings, "out": str(out)})


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(alone: Path, member: Path, *, rtol: float = 1e-3, atol: float = 1e-7) -> None:
    """Same files, same config but for its folder, same weights, Adam state and metrics within float
    rounding, the same random streams and counters exactly.

    The rounding: a step's gradients agree to about 1e-7 of their scale (see
    test_one_step_gradients_are_each_member_s_own), but Adam divides each gradient by its running
    RMS, so the rounding of near-zero gradients reaches the weights at up to about 1e-4 of their
    scale after 20-100 steps; ``rtol`` is relative to each tensor's largest entry."""
    assert sorted(p.name for p in alone.iterdir()) == sorted(p.name for p in member.iterdir())
    a, b = yaml.safe_load((alone / "config.yaml").read_text()), yaml.safe_load((member / "config.yaml").read_text())
    assert {**a, "out": None} == {**b, "out": None}
    for name in ("model.safetensors", "checkpoint.safetensors"):
        ta, ma = load_tensors(alone / name)
        tb, mb = load_tensors(member / name)
        assert sorted(ta) == sorted(tb), name
        for key in ta:
            assert ta[key].dtype == tb[key].dtype and ta[key].shape == tb[key].shape, key
            if key.startswith("rng.") or not ta[key].is_floating_point():
                assert torch.equal(ta[key], tb[key]), f"{key} of {name} differs"
            else:  # float rounding of batched products, relative to the tensor's scale (Adam's moments are small)
                err, scale = (tb[key] - ta[key]).abs().max().item(), ta[key].abs().max().item()
                assert err <= rtol * scale + atol, f"{key} of {name}: max |difference| {err:.2e} at scale {scale:.2e}"
        for key in ("epoch", "step", "param_groups", "model_digest", "rng_device", "optim_scalars"):
            assert ma.get(key) == mb.get(key), (name, key)
    ra, rb = read_rows(alone), read_rows(member)
    assert [list(r) for r in ra] == [list(r) for r in rb]
    for x, y in zip(ra, rb):
        for key in x:
            if key not in TIME_COLUMNS:
                assert float(y[key]) == pytest.approx(float(x[key]), rel=1e-5, abs=1e-4), key


def train_alone(cfg: TrainConfig, splits: Splits) -> Path:
    return train(cfg, progress=False, splits=splits)


def test_one_step_gradients_are_each_member_s_own(splits):
    """One step of a mixed two-layer group (every estimator, two priorless KL weights) from the members'
    own initial weights and draws: the stacked gradients and bounds are accumulate_gradients' of each
    member alone, to float rounding; a member's slice is untouched by the others (negative control)."""
    from iwae.estimators import accumulate_gradients

    torch.manual_seed(0)
    specs = [
        dict(objective="iwae", k=4, estimator="dreg"),
        dict(objective="piwae", k=4, m=2, estimator="stl"),
        dict(objective="iwae", k=4, estimator="rws"),
        dict(objective="vae", k=4, kl_warmup=2),
        dict(objective="ciwae", k=4, beta=0.3),
        dict(objective="iwae", k=4, estimator="rws-dreg"),
    ]
    configs = [TrainConfig(**{**BASE, **TWO_LAYERS, **s, "seed": i, "out": "unused"}) for i, s in enumerate(specs)]
    models = [train_module.build_model(c, 784) for c in configs]
    x = torch.bernoulli(splits.train[:20].expand(len(models), 20, 784), generator=torch.Generator().manual_seed(1))
    names = [n for n, _ in models[0].named_parameters()]
    stacked = StackedVAE(models[0], members_stacked.stack_parameters(models))
    eps, alone_bounds = [[], []], []
    for i, (c, model) in enumerate(zip(configs, models)):
        g = torch.Generator().manual_seed(100 + i)
        alone_bounds.append(accumulate_gradients(model, x[i], c.spec, g, train_module.kl_weight(c, 1)))
        g = torch.Generator().manual_seed(100 + i)
        for layer, d in enumerate(c.latent_dims):
            eps[layer].append(torch.randn((4, 20, d), generator=g))
    kinds = {(c.spec, train_module.kl_weight(c, 1)): [i] for i, c in enumerate(configs)}
    bound = members_loop._accumulate(stacked, x, [torch.stack(e) for e in eps], kinds)
    torch.testing.assert_close(bound, torch.stack(alone_bounds), rtol=1e-6, atol=1e-4)
    for name in names:
        got = [members_stacked.member_tensor(stacked.param(name).grad, name, i) for i in range(len(models))]
        for i, model in enumerate(models):
            want = model.get_parameter(name).grad
            assert got[i].shape == want.shape and (got[i] - want).abs().max() <= 1e-5 * want.abs().max() + 1e-6, (
                name,
                i,
            )
        # negative control: member 0's gradient is not member 1's
        assert not torch.allclose(got[0], models[1].get_parameter(name).grad)


MIXED = [
    dict(objective="vae", k=5, seed=0),
    dict(objective="iwae", k=5, seed=0),
    dict(objective="iwae", k=5, seed=1),
    dict(objective="iwae", k=5, seed=2, estimator="dreg"),
]


def test_each_member_of_a_mixed_group_is_the_run_it_would_have_been_alone(tmp_path, splits, monkeypatch):
    """VAE-5, IWAE-5 with two seeds and IWAE-5 with DReG trained together for 100 steps: each member's
    folder holds the run train() writes for its config alone; the batched path ran (not a fallback)."""
    calls = []
    original = StackedVAE.log_weight_parts
    monkeypatch.setattr(
        StackedVAE, "log_weight_parts", lambda self, *a, **kw: calls.append(self.members) or original(self, *a, **kw)
    )
    configs = [config(tmp_path / f"member{i}", **s) for i, s in enumerate(MIXED)]
    results = train_members(configs, progress=False, splits=splits)
    assert [r.status for r in results] == ["trained"] * 4 and [r.run_dir for r in results] == [
        tmp_path / f"member{i}" for i in range(4)
    ]
    assert calls == [4] * 100  # 100 batched steps of all four members
    for i, settings in enumerate(MIXED):
        alone = train_alone(config(tmp_path / f"alone{i}", **settings), splits)
        assert_same_run(alone, tmp_path / f"member{i}")
    # a negative control: another seed's run is not "the same run" by this comparison
    with pytest.raises(AssertionError):
        assert_same_run(tmp_path / "alone1", tmp_path / "member2")


TWO_LAYERS = dict(layers=2, latent_dims=[6, 3], hidden_dims=[[16], [8]], epochs=2)
GROUPED = [
    dict(objective="miwae", k=4, m=2, seed=0),
    dict(objective="piwae", k=4, m=2, seed=1, estimator="stl"),
    dict(objective="iwae", k=4, seed=2, estimator="rws"),
    dict(objective="ciwae", k=4, beta=0.3, seed=3),
    dict(objective="iwae", k=4, seed=4, estimator="rws-dreg"),
]


def test_two_layer_members_with_every_kind_of_view(tmp_path, splits):
    """MIWAE(2,2), PIWAE(2,2) with STL, IWAE-4 with RWS and RWS-DReG, CIWAE: the two-layer chain, the
    views of log q (parameters and samples detached) and two backward passes, 40 steps."""
    configs = [config(tmp_path / f"member{i}", **TWO_LAYERS, **s) for i, s in enumerate(GROUPED)]
    assert [r.status for r in train_members(configs, progress=False, splits=splits)] == ["trained"] * 5
    for i, settings in enumerate(GROUPED):
        alone = train_alone(config(tmp_path / f"alone{i}", **TWO_LAYERS, **settings), splits)
        assert_same_run(alone, tmp_path / f"member{i}")


def test_kl_warmup_members_and_mid_epoch_checkpoints(tmp_path, splits):
    """A VAE with KL warm-up beside one without, checkpointing every 7 steps: the same runs."""
    variants = [dict(objective="vae", k=2, kl_warmup=2, seed=5), dict(objective="vae", k=2, seed=6, valid_k=3)]
    extra = dict(epochs=3, checkpoint_every=7)
    configs = [config(tmp_path / f"member{i}", **extra, **s) for i, s in enumerate(variants)]
    train_members(configs, progress=False, splits=splits)
    for i, settings in enumerate(variants):
        assert_same_run(
            train_alone(config(tmp_path / f"alone{i}", **extra, **settings), splits), tmp_path / f"member{i}"
        )


def test_a_member_resumes_alone_and_the_group_resumes_together(tmp_path, splits):
    """Two epochs batched, then: member 1 resumed alone by train(resume=True) to 4 epochs, and the
    whole group resumed by train_members(resume=True) to 4 epochs; both equal 4-epoch runs alone."""
    seeds = [dict(objective="iwae", k=3, seed=s) for s in (0, 1, 2)]
    for name in ("group", "one"):
        train_members(
            [config(tmp_path / name / f"seed{i}", **s, epochs=2) for i, s in enumerate(seeds)],
            progress=False,
            splits=splits,
        )
    results = train_members(
        [config(tmp_path / "group" / f"seed{i}", **s, epochs=4) for i, s in enumerate(seeds)],
        resume=True,
        progress=False,
        splits=splits,
    )
    assert [r.status for r in results] == ["trained"] * 3
    train(config(tmp_path / "one" / "seed1", **seeds[1], epochs=4), resume=True, progress=False, splits=splits)
    for i, settings in enumerate(seeds):
        alone = train_alone(config(tmp_path / f"alone{i}", **settings, epochs=4), splits)
        assert_same_run(alone, tmp_path / "group" / f"seed{i}")
        if i == 1:
            assert_same_run(alone, tmp_path / "one" / "seed1")
    # members at different steps are refused together, with a one-line error naming them
    with pytest.raises(ValueError, match="same step"):
        train_members(
            [config(tmp_path / "one" / f"seed{i}", **s, epochs=5) for i, s in enumerate(seeds)],
            resume=True,
            progress=False,
            splits=splits,
        )


def test_a_resumed_group_goes_on_as_its_checkpoints_say_it_was_trained(tmp_path, splits):
    """A group trained as one batched model and resumed without batch= goes on batched, bit for bit the
    uninterrupted batched group (the CPU's default alone would not); negative control: the same group
    resumed one after another ends with other weights."""
    seeds = [dict(objective="iwae", k=3, seed=s) for s in (0, 1)]

    def group(name: str, epochs: int, **kw):
        folders = [tmp_path / name / f"seed{i}" for i in range(2)]
        train_members(
            [config(f, **s, epochs=epochs) for f, s in zip(folders, seeds)], progress=False, splits=splits, **kw
        )
        return folders

    reference = group("ref", 2, batch=True)
    group("resumed", 1, batch=True)
    resumed = group("resumed", 2, resume=True)  # batch=None: as the checkpoints say
    other = group("alone", 1, batch=True)
    group("alone", 2, resume=True, batch=False)
    for ref, res, alone in zip(reference, resumed, other):
        a, b, c = (load_tensors(f / "model.safetensors")[0] for f in (ref, res, alone))
        assert all(torch.equal(a[key], b[key]) for key in a)
        assert not all(torch.equal(a[key], c[key]) for key in a)
    assert load_tensors(resumed[0] / "checkpoint.safetensors")[1]["trained_as"][-1]["batched_with"] == ["seed1"]


class SimulatedKill(BaseException):
    """What a kill -9 looks like to the code: nothing after it runs (not an Exception: nothing catches it)."""


def test_a_group_killed_mid_epoch_resumes_together_from_its_mid_epoch_checkpoints(tmp_path, splits, monkeypatch):
    """checkpoint_every 7: the group dies at its 30th step (epoch 2); each member's checkpoint is the
    single run's at step 28 (the order, position and partial bound of epoch 2), and the resumed group
    ends as the runs alone."""
    seeds = [dict(objective="iwae", k=3, seed=s, epochs=3, checkpoint_every=7) for s in (0, 1)]
    real_step = members_loop._Group.step
    calls = []

    def dying(self, *args):
        calls.append(1)
        if len(calls) == 30:
            raise SimulatedKill()
        return real_step(self, *args)

    monkeypatch.setattr(members_loop._Group, "step", dying)
    with pytest.raises(SimulatedKill):
        train_members([config(tmp_path / f"m{i}", **s) for i, s in enumerate(seeds)], progress=False, splits=splits)
    monkeypatch.setattr(members_loop._Group, "step", real_step)
    meta = load_tensors(tmp_path / "m1" / "checkpoint.safetensors")[1]
    assert (meta["epoch"], meta["step"], meta["epoch_position"]) == (1, 28, 160)
    results = train_members(
        [config(tmp_path / f"m{i}", **s) for i, s in enumerate(seeds)], resume=True, progress=False, splits=splits
    )
    assert [r.status for r in results] == ["trained"] * 2
    for i, settings in enumerate(seeds):
        assert_same_run(train_alone(config(tmp_path / f"alone{i}", **settings), splits), tmp_path / f"m{i}")


def test_a_diverging_member_stops_alone_and_the_others_finish_as_alone(tmp_path, splits, monkeypatch):
    """A nan in member 1's log-weights at step 30 (epoch 2): member 1 fails with its single run's
    FloatingPointError and keeps its epoch-1 checkpoint; members 0 and 2 finish as they would alone."""
    original = StackedVAE.log_weight_parts
    steps = []

    def poisoned(self, x, eps, **kw):
        parts = original(self, x, eps, **kw)
        steps.append(self.members)
        if len(steps) == 30:
            parts["log_p"] = parts["log_p"] * torch.tensor([1.0, float("nan"), 1.0]).view(3, 1, 1)
        return parts

    monkeypatch.setattr(StackedVAE, "log_weight_parts", poisoned)
    seeds = [dict(objective="iwae", k=3, seed=s, epochs=3) for s in (0, 1, 2)]
    results = train_members(
        [config(tmp_path / f"m{i}", **s) for i, s in enumerate(seeds)], progress=False, splits=splits
    )
    assert [r.status for r in results] == ["trained", "failed", "trained"]
    assert steps == [3] * 30 + [2] * 30  # the group goes on with two members
    assert isinstance(results[1].error, FloatingPointError)
    assert str(results[1].error) == (
        "training stopped: the loss or a gradient became nan or inf in epoch 2 at step "
        "30, and the parameters did not take that step; checkpoint.safetensors (epoch 1, "
        "step 20) is intact; try a smaller --lr in a new run"
    )
    monkeypatch.setattr(StackedVAE, "log_weight_parts", original)
    for i in (0, 2):
        assert_same_run(train_alone(config(tmp_path / f"alone{i}", **seeds[i]), splits), tmp_path / f"m{i}")
    # member 1 stands where its single run stopped: after epoch 1, and resumable alone from there
    one_epoch = train_alone(config(tmp_path / "alone1", **{**seeds[1], "epochs": 1}), splits)
    for name in ("model.safetensors", "checkpoint.safetensors"):
        ta, tb = load_tensors(one_epoch / name)[0], load_tensors(tmp_path / "m1" / name)[0]
        for key in ta:
            if ta[key].is_floating_point():
                assert (tb[key] - ta[key]).abs().max() <= 1e-3 * ta[key].abs().max() + 1e-7, key  # as assert_same_run
    train(config(tmp_path / "m1", **seeds[1]), resume=True, progress=False, splits=splits)
    assert_same_run(train_alone(config(tmp_path / "alone1-full", **seeds[1]), splits), tmp_path / "m1")


@pytest.mark.parametrize(
    "change, setting",
    [
        (dict(batch_size=10), "batch_size"),
        (dict(k=4), "k"),
        (dict(hidden_dims=[[8, 8]]), "hidden_dims"),
        (dict(lr=1e-4), "lr"),
        (dict(epochs=2), "epochs"),
        (dict(train_subset=200), "train_subset"),
        (dict(prior="mog", components=3), "prior"),
    ],
)
def test_groups_that_cannot_share_a_model_are_refused_naming_the_setting(tmp_path, change, setting):
    configs = [config(tmp_path / "a", k=5), config(tmp_path / "b", **{"k": 5, **change})]
    with pytest.raises(ConfigError, match=f"must share {setting}, but the members differ") as info:
        check_group(configs)
    assert info.value.fields == (setting,) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="the same run directory"):
        check_group([config(tmp_path / "a", seed=0), config(tmp_path / "a", seed=1)])
    check_group(
        [
            config(tmp_path / "a", objective="vae", k=5),
            config(tmp_path / "b", objective="miwae", k=5, m=5, seed=3, estimator="dreg"),
        ]
    )  # may differ
    assert set(MAY_DIFFER) <= set(TrainConfig.__dataclass_fields__)


def test_a_group_that_cannot_be_stacked_trains_its_members_in_turn(tmp_path, splits, monkeypatch):
    """The mixture prior has no stacked form: the members are trained by train(), the same runs exactly."""
    monkeypatch.setattr(StackedVAE, "log_weight_parts", lambda *a, **k: pytest.fail("stacked a mog prior"))
    settings = dict(prior="mog", components=3, epochs=1, objective="iwae", k=2)
    results = train_members(
        [config(tmp_path / f"m{s}", **settings, seed=s) for s in (0, 1)], progress=False, splits=splits
    )
    assert [r.status for r in results] == ["trained"] * 2
    alone = train_alone(config(tmp_path / "alone", **settings, seed=1), splits)
    assert_same_run(alone, tmp_path / "m1", rtol=0, atol=0)


def test_existing_folders_are_refused_before_any_member_starts(tmp_path, splits):
    train_alone(config(tmp_path / "b", epochs=1), splits)
    before = (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        train_members(
            [config(tmp_path / "a", epochs=1), config(tmp_path / "b", epochs=1, seed=1)], progress=False, splits=splits
        )
    assert not (tmp_path / "a").exists() and (tmp_path / "b" / "model.safetensors").read_bytes() == before


def _stacked_steps(monkeypatch) -> list[int]:
    """Counts the stacked model's steps (its log_weight_parts calls)."""
    calls: list[int] = []
    original = StackedVAE.log_weight_parts
    monkeypatch.setattr(
        StackedVAE, "log_weight_parts", lambda self, *a, **kw: calls.append(self.members) or original(self, *a, **kw)
    )
    return calls


def test_the_device_rule_decides_whether_members_stack(tmp_path, splits, monkeypatch):
    """By default members stack on the CPU and on CUDA (measured: batched is faster on both), and on a
    device the rule does not know they train one after another; batch=False trains each member as its run
    alone, bit for bit; batch=None stacks as batch=True does."""
    assert BATCH_BY_DEFAULT == {"cpu": True, "cuda": True}
    assert [batch_by_default(d) for d in ("cpu", "cuda", "cuda:1", "mps")] == [True, True, True, False]
    calls = _stacked_steps(monkeypatch)
    seeds = [dict(objective="iwae", k=3, seed=s, epochs=1) for s in (0, 1)]
    results = members_module.train_members(
        [config(tmp_path / f"m{i}", **s) for i, s in enumerate(seeds)], progress=False, splits=splits, batch=False
    )
    assert [r.status for r in results] == ["trained"] * 2 and calls == []
    for i, settings in enumerate(seeds):
        alone = train_alone(config(tmp_path / f"alone{i}", **settings), splits)
        for name in ("model.safetensors", "checkpoint.safetensors"):
            a, b = load_tensors(alone / name)[0], load_tensors(tmp_path / f"m{i}" / name)[0]
            assert all(torch.equal(a[key], b[key]) for key in a), name
    members_module.train_members(
        [config(tmp_path / f"b{i}", **s) for i, s in enumerate(seeds)], progress=False, splits=splits
    )
    assert calls == [2] * 20  # the default stacks: 400 images in batches of 20, both members in every step


# ----------------------------------------------------------------------------- the command line
def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_train_seeds_writes_one_run_per_seed_and_resume_continues_them(tmp_path, shared_data_dir, splits):
    common = [
        "--train-subset",
        100,
        "--latent-dims",
        4,
        "--hidden-dims",
        "16,16",
        "--k",
        3,
        "--data-dir",
        shared_data_dir,
        "--quiet",
    ]
    flags = common + ["--epochs", 1]
    result = cli("train", "--seeds", "0,2", "--out", tmp_path / "x", *flags)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["seed0", "seed2"]
    assert [TrainConfig.from_yaml(tmp_path / "x" / f"seed{s}" / "config.yaml").seed for s in (0, 2)] == [0, 2]
    result = cli("train", "--resume", tmp_path / "x", "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    for s in (0, 2):  # the same runs as --seed S alone, for 2 epochs
        single = cli("train", "--seed", s, "--out", tmp_path / f"alone{s}", *common, "--epochs", 2)
        assert single.exit_code == 0, single.output
        assert_same_run(tmp_path / f"alone{s}", tmp_path / "x" / f"seed{s}")
    # one seed is --seed: the run in OUT itself, as today
    assert cli("train", "--seeds", 7, "--out", tmp_path / "one", *flags).exit_code == 0
    assert (tmp_path / "one" / "config.yaml").is_file() and TrainConfig.from_yaml(
        tmp_path / "one" / "config.yaml"
    ).seed == 7
    bad = cli("train", "--seeds", "0,1", "--batch-size", 0, "--out", tmp_path / "bad", *flags)
    assert bad.exit_code == 2 and "--batch-size must be >= 1" in bad.output and "Traceback" not in bad.output
    bad = cli("train", "--seeds", "1,1", "--out", tmp_path / "bad", *flags)
    assert bad.exit_code == 2 and "distinct seeds" in bad.output


def test_train_seeds_batch_and_no_batch(tmp_path, shared_data_dir, monkeypatch):
    """--batch and the CPU's default stack the seeds, --no-batch trains them one after another; either
    flag without --seeds is a usage error."""
    calls = _stacked_steps(monkeypatch)
    flags = ["--train-subset", 40, "--latent-dims", 4, "--hidden-dims", 16, "--k", 2, "--epochs", 1, "--quiet"]
    flags += ["--data-dir", shared_data_dir]
    for name, extra, stacked in (("no-batch", ["--no-batch"], 0), ("default", [], 2), ("batch", ["--batch"], 2)):
        calls.clear()
        result = cli("train", "--seeds", "0,1", "--out", tmp_path / name, *flags, *extra)
        assert result.exit_code == 0, result.output
        assert len(calls) == stacked, name
    bad = cli("train", "--seed", 0, "--out", tmp_path / "bad", *flags, "--batch")
    assert bad.exit_code == 2 and "--batch and --no-batch apply to --seeds" in bad.output


# ----------------------------------------------------------------------------- reproduce's grouping
def write_experiment(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "title": "tiny runs",
                "labels": ["objective", "k"],
                "seeds": [0, 1],
                "runs": [
                    {"name": "vae", "objective": "vae", "k": 2},
                    {"name": "iwae", "objective": "iwae", "k": 2},
                    {"name": "iwae-b10", "objective": "iwae", "k": 2, "batch_size": 10},
                    {"name": "iwae-k3", "objective": "iwae", "k": 3},
                ],
                "protocols": {"short": {"epochs": 1, "train_subset": 100, "test_subset": 10, "eval_k": 20}},
            }
        )
    )
    return path


def test_reproduce_groups_compatible_runs_and_the_results_are_those_of_runs_alone(tmp_path, shared_data_dir):
    exp = write_experiment(tmp_path / "tiny.yaml")
    batched = reproduce(exp, tmp_path / "batched", data_dir=str(shared_data_dir), progress=False, batch=True)
    alone = reproduce(exp, tmp_path / "alone", data_dir=str(shared_data_dir), progress=False, batch=False)
    # the 8 runs: vae, iwae (k = 2) and their seed-1 twins share a model; batch 10 and k = 3 stay apart
    assert batched.batches == [
        ["vae", "iwae", "vae-s1", "iwae-s1"],
        ["iwae-b10", "iwae-b10-s1"],
        ["iwae-k3", "iwae-k3-s1"],
    ]
    assert alone.batches == []
    assert batched.status == alone.status and set(batched.status.values()) == {"done"}
    for name in batched.status:
        a, b = alone.results[name], batched.results[name]
        assert b["training"] == a["training"] == "trained"
        assert b["metrics"]["nll"] == pytest.approx(a["metrics"]["nll"], abs=1e-3), name
        assert_same_run(tmp_path / "alone" / "runs" / name, tmp_path / "batched" / "runs" / name)
    # each result.json says how its run was trained (issue 20, 7): with which runs as one model, or alone
    for batch in batched.batches:
        for name in batch:
            others = sorted(n for n in batch if n != name)
            assert batched.results[name]["trained_as"] == [{"from_step": 0, "batched_with": others}], name
            assert alone.results[name]["trained_as"] == [{"from_step": 0, "batched_with": []}], name
    for folder, shown in (("batched", True), ("alone", False)):
        assert cli("report", tmp_path / folder, "--no-figures").exit_code == 0
        text = (tmp_path / folder / "report.md").read_text(encoding="utf-8")
        assert ("batched (4 runs)" in text and "batched (2 runs)" in text) is shown, text
        assert ("| trained |" in text) is shown


def test_reproduce_no_batch_trains_nothing_together(tmp_path, shared_data_dir, monkeypatch):
    exp = write_experiment(tmp_path / "tiny.yaml")
    monkeypatch.setattr(members_module, "train_members", lambda *a, **k: pytest.fail("batched with --no-batch"))
    args = [exp, "--out", tmp_path / "cli", "--data-dir", shared_data_dir, "--quiet", "--only", "vae*"]
    assert cli("reproduce", *args, "--no-batch").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "cli" / "runs").iterdir()) == ["vae", "vae-s1"]
    for out, flag in (("cli2", ()), ("cli3", ("--batch",))):  # the CPU's default and --batch stack them
        with pytest.raises(BaseException, match="batched with --no-batch"):
            cli("reproduce", *args[:2], tmp_path / out, *args[3:], *flag)
