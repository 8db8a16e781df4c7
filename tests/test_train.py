"""Tests for iwae.train and iwae.checkpoint: schedule, config validation, run directories,
atomic checkpoints, bit-exact resume after a kill, and the reported training bound."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
from pathlib import Path

import by_hand
import pytest
import torch
import yaml

import iwae
import iwae.checkpoint as checkpoint_module
import iwae.rundir as rundir_module
import iwae.train.loop as train_module
from iwae import estimators as estimators_module
from iwae import objectives
from iwae.checkpoint import CheckpointError, atomic_write, load_tensors, save_tensors
from iwae.data import Splits
from iwae.estimators import ObjectiveSpec, gradient_terms
from iwae.models import VAE, ModelConfig
from iwae.models.vae import LogWeightParts
from iwae.rundir import MARKER
from iwae.train import TrainConfig, learning_rate, paper_schedule, train

# ``iwae.train`` is the function (re-exported by iwae/__init__), so fetch the module itself

PAPER_RATES = [1e-3 * 10 ** (-i / 7) for i in range(8)]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def small_splits(mnist_splits) -> Splits:
    """Real MNIST, cut down: all training images (runs pick train_subset), 100 valid, 100 test."""
    s = mnist_splits
    return Splits("mnist", s.train, s.valid[:100], s.test[:100], True)


@pytest.fixture(scope="module")
def tiny_splits(mnist_splits) -> Splits:
    """40 training images, 20 validation images: for tests where the data does not matter."""
    s = mnist_splits
    return Splits("mnist", s.train[:40].clone(), s.valid[:20].clone(), s.test[:20].clone(), True)


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_tensor_files(a: Path, b: Path) -> None:
    ta, _ = load_tensors(a)
    tb, _ = load_tensors(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype, key
        assert torch.equal(ta[key], tb[key]), f"{key} differs between {a} and {b}"


def assert_same_bounds(a: Path, b: Path, valid_key: str) -> None:
    ra, rb = read_metrics(a), read_metrics(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        for key in ("epoch", "stage", "lr", "step", "train_bound", valid_key):
            assert x[key] == y[key], (key, x[key], y[key])


def hidden_files(run_dir: Path) -> list[Path]:
    """Hidden files but the folder's mark (which command created it): temporaries a write left."""
    return [p for p in run_dir.rglob("*") if p.name.startswith(".") and p.name != MARKER]


RESUME_SETTINGS = {
    "iwae": dict(objective="iwae", k=5),
    "piwae": dict(objective="piwae", k=4, m=2),
}


def resume_config(out: Path, objective: str, epochs: int) -> TrainConfig:
    return TrainConfig(
        **RESUME_SETTINGS[objective], train_subset=200, batch_size=20, epochs=epochs, seed=3, out=str(out)
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, small_splits):
    """Uninterrupted 3-epoch runs, trained once per objective and shared."""
    cache: dict[str, Path] = {}

    def get(objective: str) -> Path:
        if objective not in cache:
            out = tmp_path_factory.mktemp(f"ref-{objective}") / "run"
            cache[objective] = train(resume_config(out, objective, 3), progress=False, splits=small_splits)
        return cache[objective]

    return get


# ----------------------------------------------------------------------------- schedule
def test_paper_schedule_stages_and_rates():
    cfg = TrainConfig()
    assert cfg.total_epochs == 3280 == sum(3**i for i in range(8))
    schedule = paper_schedule()
    assert [n for n, _ in schedule] == [3**i for i in range(8)]
    assert [lr for _, lr in schedule] == pytest.approx(PAPER_RATES)
    start = 0
    for i in range(8):
        end = start + 3**i
        for epoch in (start, (start + end - 1) // 2, end - 1):
            stage, lr = learning_rate(cfg, epoch)
            assert stage == i, (epoch, stage)
            assert lr == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
        start = end
    assert start == 3280
    counts = collections.Counter(learning_rate(cfg, e)[0] for e in range(3280))
    assert counts == {i: 3**i for i in range(8)}
    # rates strictly decrease, ten-fold over 7 stages
    rates = [learning_rate(cfg, e)[1] for e in (0, 1, 4, 13, 40, 121, 364, 1093)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[0] / rates[7] == pytest.approx(10.0)


def test_paper_schedule_scales_with_lr():
    cfg = TrainConfig(lr=2e-3)
    for i, epoch in enumerate((0, 1, 4, 13, 40, 121, 364, 1093)):
        assert learning_rate(cfg, epoch) == (i, pytest.approx(2e-3 * 10 ** (-i / 7)))


def test_forty_epochs_cover_stages_0_to_3_exactly():
    cfg = TrainConfig(epochs=40)
    assert cfg.total_epochs == 40
    counts = collections.Counter(learning_rate(cfg, e)[0] for e in range(cfg.total_epochs))
    assert counts == {0: 1, 1: 3, 2: 9, 3: 27}
    assert learning_rate(cfg, 40)[0] == 4  # the 41st epoch would start stage 4


def test_constant_schedule():
    cfg = TrainConfig(schedule="constant", epochs=7, lr=3e-4)
    assert cfg.total_epochs == 7
    for epoch in (0, 1, 6, 100, 5000):
        assert learning_rate(cfg, epoch) == (0, 3e-4)


def test_training_follows_the_schedule(tmp_path, tiny_splits):
    cfg = TrainConfig(k=1, epochs=5, batch_size=40, valid_k=1, out=str(tmp_path / "run"))
    train(cfg, progress=False, splits=tiny_splits)
    rows = read_metrics(tmp_path / "run")
    assert [int(r["stage"]) for r in rows] == [0, 1, 1, 1, 2]
    assert [float(r["lr"]) for r in rows] == pytest.approx([PAPER_RATES[s] for s in (0, 1, 1, 1, 2)])
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    _, meta = load_tensors(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["param_groups"][0]["lr"] == pytest.approx(PAPER_RATES[2])


# ----------------------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), r"k must be >= 1, got 0"),
        (dict(k=-3), r"k must be >= 1"),
        (dict(objective="ciwae", beta=1.5), r"beta must lie in \[0, 1\], got 1.5"),
        (dict(objective="ciwae", beta=-0.1), r"beta must lie in \[0, 1\]"),
        (dict(objective="miwae", k=10, m=3), r"m = 3 must divide the total number of samples k = 10"),
        (dict(objective="piwae", k=5, m=2), r"m = 2 must divide"),
        (dict(objective="iwaee"), r"unknown objective 'iwaee'; choose one of vae, iwae, miwae, ciwae, piwae"),
        (dict(schedule="cosine", epochs=3), r"unknown schedule 'cosine'; choose one of paper, constant"),
        (dict(schedule="constant"), r"constant schedule needs a number of epochs"),
        (dict(epochs=0), r"epochs must be >= 1"),
        (dict(batch_size=0), r"batch_size must be >= 1"),
        (dict(lr=0.0), r"lr must be > 0"),
        (dict(train_subset=0), r"train_subset must be >= 1"),
        (dict(layers=1, latent_dims=[100, 50]), r"2 entries for 1 layers"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_config_valid_edge_cases():
    """The edge values are accepted and mean what the papers say: CIWAE(0) is IWAE and CIWAE(1) the
    ELBO on the same samples, MIWAE(8, 8) is 8 groups of 8, and a constant schedule keeps its rate."""
    log_w = torch.tensor([[0.0], [3.0], [-1.0], [2.0]])  # (k = 4, B = 1)
    iwae_4 = math.log(sum(math.exp(v) for v in (0.0, 3.0, -1.0, 2.0)) / 4)
    for beta, expected in ((0.0, iwae_4), (1.0, 1.0)):  # the ELBO: the mean log-weight, 4 / 4
        spec = TrainConfig(objective="ciwae", beta=beta, k=4).spec
        assert gradient_terms(torch.nn.Linear(1, 1), log_w, spec).bound.item() == pytest.approx(expected, abs=1e-6)
    assert TrainConfig(objective="miwae", k=64, m=8).spec.label == "MIWAE(8,8)"
    config = TrainConfig(schedule="constant", epochs=1)
    assert config.total_epochs == 1 and learning_rate(config, 0) == learning_rate(config, 5) == (0, 1e-3)


def test_from_dict_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config keys: kk, samples"):
        TrainConfig.from_dict({"objective": "iwae", "samples": 5, "kk": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"k": 5, "learning_rate": 1e-3}))
    with pytest.raises(ValueError, match=r"unknown config keys: learning_rate"):
        TrainConfig.from_yaml(path)
    with pytest.raises(CheckpointError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(CheckpointError, match="mapping"):
        TrainConfig.from_yaml(path)


# ----------------------------------------------------------------------------- run directory
def test_run_directory_contents(tmp_path, tiny_splits, monkeypatch):
    built = []
    real_build = train_module.build_model

    def recording_build(config, input_dim, *rest):
        model = real_build(config, input_dim, *rest)
        built.append(model)
        return model

    monkeypatch.setattr(train_module, "build_model", recording_build)
    cfg = TrainConfig(objective="iwae", k=3, epochs=2, batch_size=20, seed=1, out=str(tmp_path / "run"))
    run_dir = train(cfg, progress=False, splits=tiny_splits)
    assert run_dir == tmp_path / "run"
    assert len(built) == 1
    trained = built[0]

    # config.yaml round-trips
    assert (run_dir / "config.yaml").is_file()
    assert TrainConfig.from_yaml(run_dir / "config.yaml") == cfg
    # weights and checkpoint
    assert (run_dir / "model.safetensors").is_file()
    assert (run_dir / "checkpoint.safetensors").is_file()
    _, meta = load_tensors(run_dir / "model.safetensors")
    assert meta["epoch"] == 2
    # the architecture is stored once, in config.yaml; the weights record its digest and the input size
    assert "model_config" not in meta and meta["input_dim"] == 784
    assert meta["model_digest"] == rundir_module.model_digest(trained.config)
    # metrics: one row per epoch
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("train_bound", "valid_L3", "epoch_time_s", "examples_per_s"):
        assert key in rows[0], key
    for r in rows:
        assert math.isfinite(float(r["train_bound"])) and float(r["train_bound"]) < 0
        assert math.isfinite(float(r["valid_L3"])) and float(r["valid_L3"]) < 0
        assert float(r["epoch_time_s"]) > 0
        assert float(r["examples_per_s"]) == pytest.approx(40 / float(r["epoch_time_s"]), rel=1e-6)
    # TensorBoard
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert not hidden_files(run_dir)

    # iwae.load gives the trained model back, in eval mode
    loaded = iwae.load(run_dir)
    assert isinstance(loaded, VAE) and not loaded.training
    assert loaded.config == trained.config
    trained_state, loaded_state = trained.state_dict(), loaded.state_dict()
    assert sorted(trained_state) == sorted(loaded_state)
    for key in trained_state:
        assert torch.equal(trained_state[key], loaded_state[key]), key
    # ... and the checkpoint holds the same weights
    ckpt, ckpt_meta = load_tensors(run_dir / "checkpoint.safetensors")
    assert ckpt_meta["epoch"] == 2 and ckpt_meta["step"] == 4 and len(ckpt_meta["metrics"]) == 2
    for key in trained_state:
        assert torch.equal(ckpt[f"model.{key}"], trained_state[key]), key


def test_valid_k_names_the_metrics_column(tmp_path, tiny_splits):
    cfg = TrainConfig(k=2, valid_k=7, epochs=1, out=str(tmp_path / "run"))
    train(cfg, progress=False, splits=tiny_splits)
    row = read_metrics(tmp_path / "run")[0]
    assert "valid_L7" in row and "valid_L2" not in row


def test_refuses_to_overwrite_without_overwrite(tmp_path, tiny_splits):
    out = tmp_path / "run"
    cfg = TrainConfig(k=1, epochs=1, batch_size=40, valid_k=1, out=str(out))
    train(cfg, progress=False, splits=tiny_splits)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    cfg2 = TrainConfig(k=2, epochs=1, batch_size=40, valid_k=1, seed=5, out=str(out))
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        train(cfg2, progress=False, splits=tiny_splits)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # untouched

    (out / "marker.txt").write_text("old run")
    train(cfg2, overwrite=True, progress=False, splits=tiny_splits)
    assert not (out / "marker.txt").exists()
    assert TrainConfig.from_yaml(out / "config.yaml") == cfg2
    assert len(read_metrics(out)) == 1

    # any non-empty folder is refused, an empty one is fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        train(TrainConfig(k=1, epochs=1, valid_k=1, out=str(other)), progress=False, splits=tiny_splits)
    assert (other / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    train(TrainConfig(k=1, epochs=1, batch_size=40, valid_k=1, out=str(empty)), progress=False, splits=tiny_splits)
    assert (empty / "model.safetensors").is_file()


def test_resume_of_a_missing_run_directory_raises(tmp_path, tiny_splits):
    with pytest.raises(CheckpointError, match="run directory .*none not found"):
        train(TrainConfig(k=1, epochs=1, out=str(tmp_path / "none")), resume=True, splits=tiny_splits)
    assert not (tmp_path / "none").exists()


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("objective", ["iwae", "piwae"])
def test_resume_is_bit_exact(tmp_path, small_splits, reference_run, objective):
    ref = reference_run(objective)
    out = tmp_path / "run"
    train(resume_config(out, objective, 2), progress=False, splits=small_splits)
    assert len(read_metrics(out)) == 2
    train(resume_config(out, objective, 3), resume=True, progress=False, splits=small_splits)

    assert_same_tensor_files(ref / "model.safetensors", out / "model.safetensors")
    ref_ckpt, _ = load_tensors(ref / "checkpoint.safetensors")
    out_ckpt, out_meta = load_tensors(out / "checkpoint.safetensors")
    for key in ref_ckpt:
        assert torch.equal(ref_ckpt[key], out_ckpt[key]), key  # weights, Adam moments, RNG state
    assert out_meta["epoch"] == 3 and out_meta["step"] == 30
    valid_key = f"valid_L{RESUME_SETTINGS[objective]['k']}"
    assert_same_bounds(ref, out, valid_key)
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1, 2, 3]
    assert not hidden_files(out)


class SimulatedKill(Exception):
    pass


def test_kill_mid_epoch_then_resume(tmp_path, small_splits, reference_run, monkeypatch):
    """Training dies in the middle of epoch 2 (at the 15th optimizer step of 10 per epoch)."""
    ref = reference_run("iwae")
    real_make = train_module._make_optimizer
    calls = {"n": 0}

    def dying_optimizer(config, model, device):
        opt = real_make(config, model, device)
        real_step = opt.step

        def step(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 15:
                raise SimulatedKill("killed")
            return real_step(*args, **kwargs)

        opt.step = step
        return opt

    out = tmp_path / "run"
    monkeypatch.setattr(train_module, "_make_optimizer", dying_optimizer)
    with pytest.raises(SimulatedKill):
        train(resume_config(out, "iwae", 3), progress=False, splits=small_splits)
    monkeypatch.setattr(train_module, "_make_optimizer", real_make)

    # the run directory holds epoch 1, complete and consistent
    tensors, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] == 1 and meta["step"] == 10 and len(meta["metrics"]) == 1
    assert load_tensors(out / "model.safetensors")[1]["epoch"] == 1
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1]
    assert not hidden_files(out)
    model = iwae.load(out)
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[f"model.{key}"], value)

    train(resume_config(out, "iwae", 3), resume=True, progress=False, splits=small_splits)
    assert_same_tensor_files(ref / "model.safetensors", out / "model.safetensors")
    assert_same_bounds(ref, out, "valid_L5")


def test_kill_while_writing_checkpoint_then_resume(tmp_path, small_splits, reference_run, monkeypatch):
    """Training dies half-way through writing epoch 2's checkpoint file."""
    ref = reference_run("iwae")
    real_save_file = checkpoint_module.save_file
    calls = {"n": 0}

    def dying_save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".checkpoint.safetensors"):
            calls["n"] += 1
            if calls["n"] == 2:
                real_save_file(tensors, filename, metadata=metadata)
                data = Path(filename).read_bytes()
                Path(filename).write_bytes(data[: len(data) // 2])  # half written
                raise SimulatedKill("killed while writing")
        return real_save_file(tensors, filename, metadata=metadata)

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint_module, "save_file", dying_save_file)
    with pytest.raises(SimulatedKill):
        train(resume_config(out, "iwae", 3), progress=False, splits=small_splits)
    monkeypatch.setattr(checkpoint_module, "save_file", real_save_file)
    assert calls["n"] == 2

    _, meta = load_tensors(out / "checkpoint.safetensors")  # loads: the old file is intact
    assert meta["epoch"] == 1 and meta["step"] == 10
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1]
    assert not hidden_files(out)

    train(resume_config(out, "iwae", 3), resume=True, progress=False, splits=small_splits)
    assert_same_tensor_files(ref / "model.safetensors", out / "model.safetensors")
    assert_same_bounds(ref, out, "valid_L5")


def test_kill_in_save_checkpoint_then_resume(tmp_path, small_splits, reference_run, monkeypatch):
    """rundir.save_checkpoint raises on its 2nd call (end of epoch 2)."""
    ref = reference_run("iwae")
    real = rundir_module.save_checkpoint
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SimulatedKill("killed")
        return real(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(rundir_module, "save_checkpoint", dying)
    with pytest.raises(SimulatedKill):
        train(resume_config(out, "iwae", 3), progress=False, splits=small_splits)
    monkeypatch.setattr(rundir_module, "save_checkpoint", real)
    assert load_tensors(out / "checkpoint.safetensors")[1]["epoch"] == 1
    assert not hidden_files(out)
    train(resume_config(out, "iwae", 3), resume=True, progress=False, splits=small_splits)
    assert_same_tensor_files(ref / "model.safetensors", out / "model.safetensors")
    assert_same_bounds(ref, out, "valid_L5")


# ----------------------------------------------------------------------------- checkpoint files
def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old contents\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path) as f:
        f.write("new contents, half writ")
        raise RuntimeError("boom")
    assert path.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]

    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.txt") as f:
        f.write("x")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]

    with atomic_write(path) as f:
        f.write("new contents\n")
    assert path.read_text() == "new contents\n"
    with atomic_write(tmp_path / "blob.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "metrics.csv"]


def test_save_load_tensors_round_trip(tmp_path):
    tensors = {
        "w": torch.randn(3, 4),
        "w_t": torch.randn(4, 3).t(),  # not contiguous
        "d": torch.randn(5, dtype=torch.float64),
        "i": torch.arange(7, dtype=torch.int64),
        "u": torch.tensor([0, 255], dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
    }
    meta = {"epoch": 3, "model_config": {"latent_dims": [100, 50]}, "metrics": [{"a": 1.5}], "name": "x"}
    path = tmp_path / "t.safetensors"
    save_tensors(path, tensors, meta)
    loaded, loaded_meta = load_tensors(path)
    assert loaded_meta == meta
    assert sorted(loaded) == sorted(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    save_tensors(path, {"x": torch.zeros(1)})  # overwrite, no metadata
    assert load_tensors(path)[1] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


@pytest.mark.parametrize("damage", ["truncated", "header-only", "garbage", "empty"])
def test_load_tensors_on_a_damaged_file(tmp_path, damage):
    path = tmp_path / "checkpoint.safetensors"
    save_tensors(path, {"x": torch.arange(1000.0)}, {"epoch": 1})
    data = path.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "header-only": data[:6],
        "garbage": b"this is not a safetensors file\n" * 20,
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match=r"is corrupt or not a safetensors file") as info:
        load_tensors(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_tensors(tmp_path / "missing.safetensors")


def test_checkpoint_is_safetensors_not_pickle(tmp_path, tiny_splits):
    out = tmp_path / "run"
    train(TrainConfig(k=2, epochs=1, valid_k=1, out=str(out)), progress=False, splits=tiny_splits)
    for name in ("checkpoint.safetensors", "model.safetensors"):
        data = (out / name).read_bytes()
        n = int.from_bytes(data[:8], "little")
        assert n > 0 and 8 + n <= len(data)
        assert data[8:9] == b"{"
        header = json.loads(data[8 : 8 + n])
        assert "__metadata__" in header
        # not torch.save's zip; nor a pickle, which could not hold a JSON header at byte 8 (its first byte
        # alone does not tell: a header of 0x..80 bytes starts with b"\x80" as a pickle does)
        assert not data.startswith(b"PK")
    tensors, meta = load_tensors(out / "checkpoint.safetensors")
    assert {"epoch", "step", "metrics", "param_groups", "model_digest"} <= set(meta) and "model_config" not in meta
    assert "rng.generator" in tensors and "rng.torch" in tensors
    assert any(k.startswith("optim.") for k in tensors)


# ----------------------------------------------------------------------------- objectives
@pytest.mark.parametrize(
    "settings",
    [
        dict(objective="vae", k=2),
        dict(objective="iwae", k=3),
        dict(objective="miwae", k=4, m=2),
        dict(objective="ciwae", k=3, beta=0.5),
        dict(objective="piwae", k=4, m=2),
        dict(objective="iwae", k=3, layers=2),
    ],
    ids=["vae", "iwae", "miwae", "ciwae", "piwae", "iwae-2layers"],
)
def test_every_objective_trains_and_reports_the_true_bound(tmp_path, tiny_splits, monkeypatch, settings):
    recorded = []
    real_terms = estimators_module.gradient_terms

    def recording_terms(model, parts, spec, kl_weight=1.0):
        result = real_terms(model, parts, spec, kl_weight)
        log_w = parts.log_weights if isinstance(parts, LogWeightParts) else parts
        recorded.append((log_w.detach().clone(), result.bound.detach().clone()))
        return result

    monkeypatch.setattr(estimators_module, "gradient_terms", recording_terms)
    cfg = TrainConfig(**settings, epochs=1, batch_size=20, out=str(tmp_path / "run"))
    train(cfg, progress=False, splits=tiny_splits)
    row = read_metrics(tmp_path / "run")[0]
    train_bound = float(row["train_bound"])
    assert math.isfinite(train_bound) and train_bound < 0
    # the validation column is L_k of the trained model, computed here by hand from its log-weights
    model = iwae.load(tmp_path / "run")
    lk, spread = by_hand.mean_lk(model, tiny_splits.valid, cfg.k)
    assert abs(float(row[f"valid_L{cfg.k}"]) - lk) < max(0.5, 8 * spread), (row, lk, spread)
    assert model.num_layers == cfg.layers

    assert len(recorded) == 2  # 40 images, batches of 20
    name, k, m = cfg.objective, cfg.k, cfg.m
    total = 0.0
    for log_w, bound in recorded:
        assert log_w.shape == (k, 20)
        expected = {
            "vae": lambda: objectives.elbo(log_w),
            "iwae": lambda: objectives.iwae(log_w),
            "miwae": lambda: objectives.miwae(log_w.view(m, k // m, -1)),
            "ciwae": lambda: objectives.ciwae(log_w, cfg.beta),
            "piwae": lambda: objectives.iwae(log_w),  # PIWAE reports IWAE(M*K)
        }[name]()
        torch.testing.assert_close(bound, expected, rtol=1e-6, atol=1e-5)
        total += bound.double().sum().item()
    assert train_bound == pytest.approx(total / 40, rel=1e-5)


def test_gradient_terms_bound_is_the_iwae_bound():
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (10,), ((30,),)))
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    log_w = model.log_weights(x, 5, torch.Generator().manual_seed(1))
    result = gradient_terms(model, log_w, ObjectiveSpec("iwae", 5))
    assert not result.bound.requires_grad
    assert torch.equal(result.bound, objectives.iwae(log_w).detach())
    by_hand = torch.logsumexp(log_w.detach().double(), 0) - math.log(5)
    torch.testing.assert_close(result.bound.double(), by_hand, rtol=1e-6, atol=1e-5)
    # not the ELBO (a looser bound) and not a surrogate
    assert (result.bound > objectives.elbo(log_w).detach()).all()


# ----------------------------------------------------------------------------- issue 9: files, devices, resume
def test_run_files_have_the_usual_permissions(tmp_path, tiny_splits):
    """safetensors files were written 0600 while every other file was 0644 (umask 022)."""
    out = tmp_path / "run"
    train(TrainConfig(k=1, epochs=1, batch_size=40, valid_k=1, out=str(out)), progress=False, splits=tiny_splits)
    expected = 0o666 & ~checkpoint_module._UMASK
    for name in ("config.yaml", "model.safetensors", "checkpoint.safetensors", "metrics.csv"):
        assert (out / name).stat().st_mode & 0o777 == expected, name


@pytest.mark.parametrize("device", ["gpu", "cuda0", "cuda:", "tpu", "CPU", ""])
def test_unknown_device_is_refused_by_the_config(device):
    with pytest.raises(ValueError, match=r"unknown device .*; use cpu, cuda or cuda:N"):
        TrainConfig(device=device)


def test_cuda_without_cuda_is_one_line(tmp_path, tiny_splits, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device cuda requested but CUDA is not available on this machine"):
        train(TrainConfig(k=1, epochs=1, device="cuda", out=str(tmp_path / "run")), splits=tiny_splits)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"cuda:3 requested but this machine has 1 CUDA device"):
        train(TrainConfig(k=1, epochs=1, device="cuda:3", out=str(tmp_path / "run")), splits=tiny_splits)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("k", "five", r"config key 'k' must be int, got 'five' \(str\)"),
        ("lr", "1e-3", r"config key 'lr' must be float, got '1e-3' \(str\) \(YAML reads 1e-3 as text"),
        ("epochs", 2.5, r"config key 'epochs' must be int \| None, got 2.5"),
        ("learn_mixture_weights", "yes", r"config key 'learn_mixture_weights' must be bool"),
        ("latent_dims", [4, "x"], r"config key 'latent_dims' must be list\[int\] \| None"),
        ("k", True, r"config key 'k' must be int, got True \(bool\)"),
    ],
)
def test_config_yaml_with_a_wrong_type_names_the_key(tmp_path, key, value, message):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**TrainConfig().to_dict(), key: value}))
    with pytest.raises(CheckpointError, match=message) as info:
        TrainConfig.from_yaml(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_run_stopped_before_its_first_checkpoint_can_be_run_again_or_resumed(tmp_path, tiny_splits, monkeypatch):
    cfg = TrainConfig(k=2, epochs=2, batch_size=20, valid_k=2, seed=4, out=str(tmp_path / "ref"))
    ref = train(cfg, progress=False, splits=tiny_splits)

    def killed(*args, **kwargs):
        raise SimulatedKill("killed in the first step")

    for how in ("again", "resume"):
        out = tmp_path / how
        cfg_out = TrainConfig(**{**cfg.to_dict(), "out": str(out)})
        monkeypatch.setattr(train_module, "accumulate_gradients", killed)
        with pytest.raises(SimulatedKill):
            train(cfg_out, progress=False, splits=tiny_splits)
        monkeypatch.undo()
        assert (out / "config.yaml").is_file() and not (out / "checkpoint.safetensors").exists()
        # the same command into the same --out (this used to be refused: "exists and is not empty"),
        # or --resume (used to be refused: "holds no checkpoint.safetensors")
        train(cfg_out, resume=how == "resume", progress=False, splits=tiny_splits)
        assert_same_tensor_files(ref / "checkpoint.safetensors", out / "checkpoint.safetensors")
        assert_same_bounds(ref, out, "valid_L2")


def test_resume_for_fewer_epochs_than_trained_is_refused(tmp_path, tiny_splits):
    from cli_helpers import assert_one_line_error, invoke

    out = tmp_path / "run"
    train(TrainConfig(k=1, epochs=3, batch_size=40, valid_k=1, out=str(out)), progress=False, splits=tiny_splits)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"cannot resume .* for 2 epochs: it has trained 3; ask for --epochs 3"):
        train(TrainConfig(k=1, epochs=2, batch_size=40, valid_k=1, out=str(out)), resume=True, splits=tiny_splits)
    # the command line used to rewrite config.yaml to 2 epochs before training noticed
    assert_one_line_error(invoke("train", "--resume", out, "--epochs", 2), "it has trained 3")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_says_where_it_continues_and_when_there_is_nothing_to_do(tmp_path, tiny_splits):
    from cli_helpers import invoke

    out = tmp_path / "run"
    train(TrainConfig(k=1, epochs=1, batch_size=20, valid_k=1, out=str(out)), progress=False, splits=tiny_splits)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = invoke("train", "--resume", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"nothing to do: {out} has trained all 1 epochs" in result.output
    assert "trained IWAE" not in result.output
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # not even a new TensorBoard file

    result = invoke("train", "--resume", out, "--epochs", 2, "--quiet", "--data-dir", "unused")
    assert result.exit_code == 2  # --data-dir is not changeable on resume
    train(
        TrainConfig(k=1, epochs=2, batch_size=20, valid_k=1, out=str(out)),
        resume=True,
        progress=False,
        splits=tiny_splits,
    )
    assert TrainConfig.from_yaml(out / "config.yaml").epochs == 2


def test_resume_message_names_the_epoch(tmp_path, tiny_splits, capsys):
    out = tmp_path / "run"
    cfg = TrainConfig(k=1, epochs=1, batch_size=10, valid_k=1, checkpoint_every=3, out=str(out))
    train(cfg, progress=False, splits=tiny_splits)
    capsys.readouterr()
    train(TrainConfig(**{**cfg.to_dict(), "epochs": 2}), resume=True, progress=False, splits=tiny_splits)
    assert f"resuming {out} from epoch 1 of 2 (step 4)" in capsys.readouterr().err


def test_checkpoint_every_writes_mid_epoch_checkpoints_that_resume_bit_exact(
    tmp_path, small_splits, reference_run, monkeypatch
):
    """A checkpoint every 3 steps (10 steps an epoch); killed in step 17, resumed from step 15's
    checkpoint, 5 batches (100 images) into epoch 2."""
    ref = reference_run("iwae")
    out = tmp_path / "run"
    cfg = TrainConfig(**{**resume_config(out, "iwae", 3).to_dict(), "checkpoint_every": 3})
    real = train_module.accumulate_gradients
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 17:
            raise SimulatedKill("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "accumulate_gradients", dying)
    with pytest.raises(SimulatedKill):
        train(cfg, progress=False, splits=small_splits)
    monkeypatch.undo()
    tensors, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] == 1 and meta["step"] == 15 and meta["epoch_position"] == 100
    assert tensors["epoch.order"].shape == (200,)
    train(cfg, resume=True, progress=False, splits=small_splits)
    assert_same_tensor_files(ref / "model.safetensors", out / "model.safetensors")
    ref_ckpt, _ = load_tensors(ref / "checkpoint.safetensors")
    out_ckpt, _ = load_tensors(out / "checkpoint.safetensors")
    assert sorted(ref_ckpt) == sorted(out_ckpt)
    assert all(torch.equal(ref_ckpt[k], out_ckpt[k]) for k in ref_ckpt)
    assert_same_bounds(ref, out, "valid_L5")
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        TrainConfig(checkpoint_every=0)


# ----------------------------------------------------------------------------- nan / inf
def _poisoning(real, at: int, what: str, snapshots: list, model_ref: list):
    """accumulate_gradients that makes the loss or a gradient nan at its ``at``-th call and records
    the parameters at the start of calls ``at`` and ``at + 1``."""
    calls = {"n": 0}

    def poisoned(model, x, spec, generator, kl_weight=1.0):
        calls["n"] += 1
        model_ref[:] = [model]
        if calls["n"] in (at, at + 1):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        bound = real(model, x, spec, generator, kl_weight)
        if calls["n"] == at:
            if what == "loss":
                bound = bound.clone()
                bound[3] = float("nan")
            else:
                next(model.parameters()).grad[0, 0] = float("inf")
        return bound

    return poisoned


NAN_RUN = dict(k=2, latent_dims=[4], hidden_dims=[[16]], batch_size=10, valid_k=2, epochs=3, seed=5)


@pytest.fixture(scope="module")
def nan_reference(tmp_path_factory, tiny_splits) -> Path:
    """The uninterrupted tiny run (4 steps an epoch) the nan/inf tests resume to."""
    out = tmp_path_factory.mktemp("nan-ref") / "run"
    return train(TrainConfig(**NAN_RUN, out=str(out)), progress=False, splits=tiny_splits)


@pytest.mark.parametrize("what", ["loss", "gradient"])
@pytest.mark.parametrize("deferred", [False, True], ids=["checked-each-step", "deferred-as-on-cuda"])
def test_nonfinite_loss_or_gradient_stops_before_the_parameters_change(
    tmp_path, tiny_splits, nan_reference, monkeypatch, what, deferred
):
    out = tmp_path / "run"
    cfg = TrainConfig(**NAN_RUN, out=str(out))
    snapshots: list = []
    model_ref: list = []
    monkeypatch.setattr(train_module, "_defer_finite_check", lambda device: deferred)
    monkeypatch.setattr(
        train_module,
        "accumulate_gradients",
        _poisoning(train_module.accumulate_gradients, 6, what, snapshots, model_ref),
    )
    with pytest.raises(FloatingPointError) as info:
        train(cfg, progress=False, splits=tiny_splits)
    message = str(info.value)
    assert "\n" not in message
    assert "in epoch 2 at step 6" in message and "(epoch 1, step 4) is intact" in message
    model = model_ref[0]
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    if deferred:  # the poisoned step 6 was skipped by fused Adam; the epoch's other steps ran
        assert len(snapshots) == 2
        for key, value in snapshots[0].items():
            assert torch.equal(value, snapshots[1][key]), key
    else:  # stopped at once: the parameters are those before step 6
        assert len(snapshots) == 1
        for key, value in model.state_dict().items():
            assert torch.equal(value, snapshots[0][key]), key
    # the last good checkpoint is intact and resumes to the uninterrupted run
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] == 1 and meta["step"] == 4
    monkeypatch.undo()
    train(cfg, resume=True, progress=False, splits=tiny_splits)
    assert_same_tensor_files(nan_reference / "checkpoint.safetensors", out / "checkpoint.safetensors")
    assert_same_bounds(nan_reference, out, "valid_L2")


def test_nonfinite_check_sees_only_nonfinite_values():
    model = VAE(ModelConfig(784, (2,), ((4,),)))
    for p in model.parameters():
        p.grad = torch.full_like(p, 3e38)  # huge but finite: a float32 sum overflows to inf
    bound = torch.tensor([-3e38, -5.0])
    assert not train_module._nonfinite(bound, model) and not train_module._nonfinite_now(bound, model)
    for value in (float("-inf"), float("inf"), float("nan")):
        next(model.parameters()).grad[0, 0] = value
        assert train_module._nonfinite(bound, model) and train_module._nonfinite_now(bound, model)
    next(model.parameters()).grad[0, 0] = 0.0
    bound[1] = float("nan")
    assert train_module._nonfinite(bound, model) and train_module._nonfinite_now(bound, model)


# ----------------------------------------------------------------------------- validation memory
def test_validation_bound_stays_within_the_memory_budget(monkeypatch):
    """validation_bound sent 100 images x valid_k samples per decoder call, whatever the memory
    (500,000 rows at --valid-k 5000); now no call exceeds the budget."""
    from iwae.memory import bytes_per_row

    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (4,), ((16,),)))
    x = torch.bernoulli(torch.full((30, 784), 0.3))
    rows = []
    real = VAE.log_weights_from_posterior

    def recording(self, x, loc, log_scale, num_samples, generator=None):
        rows.append(num_samples * x.shape[0])
        return real(self, x, loc, log_scale, num_samples, generator)

    monkeypatch.setattr(VAE, "log_weights_from_posterior", recording)
    budget = 4 << 20  # 4 MiB: about 430 samples of this net
    value = train_module.validation_bound(model, x, 3000, torch.Generator().manual_seed(0), memory_budget=budget)
    assert rows and max(rows) * bytes_per_row(model) <= budget and sum(rows) == 30 * 3000
    # an independent L_3000 of the same images: logsumexp over all samples at once, other samples
    log_w = real(model, x, *model.encoder[0].loc_log_scale(x), 3000, torch.Generator().manual_seed(1))
    direct = (torch.logsumexp(log_w.double(), 0) - math.log(3000)).mean().item()
    assert value == pytest.approx(direct, abs=0.5)
    # negative control: a budget that fits is one call per batch
    rows.clear()
    train_module.validation_bound(model, x, 3000, torch.Generator().manual_seed(0), memory_budget=1 << 30)
    assert rows == [30 * 3000]


def test_validation_bound_keeps_its_numbers_where_the_budget_allows():
    """Where 100 images x k samples fit the budget, the values (and so the training generator's
    later draws) are those of the loop before: one model.log_weights call per 100 images."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (4,), ((16,),)))
    x = torch.bernoulli(torch.full((250, 784), 0.3))
    for k in (1, 5, 50):
        gen = torch.Generator().manual_seed(7)
        value = train_module.validation_bound(model, x, k, gen)
        gen_old = torch.Generator().manual_seed(7)
        total = 0.0
        for i in range(0, 250, 100):
            total += objectives.iwae(model.log_weights(x[i : i + 100], k, gen_old)).sum().item()
        assert value == total / 250, k
        assert torch.equal(gen.get_state(), gen_old.get_state())


def test_epoch_time_is_read_after_synchronizing_the_device(tmp_path, small_splits, monkeypatch):
    """metrics.csv's epoch time stops the clock only after the device's queued kernels have run
    (a no-op on the CPU; on CUDA, without it the time would miss the epoch's last kernels)."""
    synced = []
    monkeypatch.setattr(train_module, "synchronize", lambda device: synced.append(torch.device(device)))
    train(resume_config(tmp_path / "run", "iwae", 2), progress=False, splits=small_splits)
    assert synced == [torch.device("cpu")] * 2  # once per epoch, on the run's device


def test_a_trained_run_without_its_checkpoint_is_never_deleted(tmp_path, small_splits):
    """A run whose checkpoint.safetensors was deleted (to save space) still holds a trained model:
    neither a new run into the same --out nor --resume may silently start it again."""
    run = train(resume_config(tmp_path / "run", "iwae", 1), progress=False, splits=small_splits)
    (run / "checkpoint.safetensors").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        train(resume_config(run, "iwae", 1), progress=False, splits=small_splits)
    with pytest.raises(CheckpointError, match="holds a trained model but no checkpoint"):
        train(resume_config(run, "iwae", 2), resume=True, progress=False, splits=small_splits)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_refuses_settings_of_another_run(reference_run, tmp_path, small_splits):
    """train(config, resume=True) from Python resumes only the run config.yaml describes: other
    settings (an estimator, a learning rate) would make its record describe a run that never was."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run("iwae"), run)
    before = (run / "config.yaml").read_bytes()
    other = TrainConfig(**{**resume_config(run, "iwae", 4).to_dict(), "estimator": "stl", "lr": 0.1})
    with pytest.raises(ValueError, match=r"other settings \(estimator 'reparam' -> 'stl', lr 0.001 -> 0.1\)"):
        train(other, resume=True, progress=False, splits=small_splits)
    assert (run / "config.yaml").read_bytes() == before


def test_a_device_index_torch_cannot_parse_is_one_line():
    with pytest.raises(ValueError, match="unknown device"):
        TrainConfig(device="cuda:99999999999999999999")


def test_configure_layers_overrides_on_defaults_or_a_file(tmp_path):
    """configure: TrainConfig's defaults or a config file's settings, the overrides on top, latent_dims
    implying layers (over the file's too); a new run needs out."""
    from iwae.errors import ConfigError
    from iwae.train import configure

    config = configure({"k": 7, "out": "a"})
    assert config == TrainConfig(k=7, out="a")
    assert configure({"latent_dims": [100, 50], "out": "a"}).layers == 2
    base = tmp_path / "config.yaml"
    base.write_text(yaml.safe_dump(TrainConfig(k=3, seed=4, train_subset=9, out="old").to_dict()))
    config = configure({"seed": 5, "latent_dims": [20, 10]}, base=base)
    assert (config.k, config.seed, config.train_subset, config.layers, config.out) == (3, 5, 9, 2, "old")
    assert configure({"layers": 2}, base=base).layers == 2 and configure({}, base=base).layers == 1
    with pytest.raises(ConfigError, match="out is required") as e:
        configure({"k": 2})
    assert e.value.fields == ("out",)


# ----------------------------------------------------------------------------- a torch without fused CPU Adam
def test_without_a_fused_cpu_adam_training_falls_back_to_the_unfused_one_decided_once(
    tmp_path, tiny_splits, monkeypatch
):
    """Torch before 2.4 refuses Adam(fused=True) for CPU tensors with a RuntimeError: the trainer then uses
    the unfused Adam (the same settings), tries fused once per device type only, and the run trains to the
    same numbers within float rounding as with the fused kernel."""
    real_adam = torch.optim.Adam
    tried = []

    def old_adam(params, **kwargs):  # as torch 2.3: no fused kernel on CPU
        tried.append(kwargs.get("fused"))
        if kwargs.get("fused"):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of supported "
                "devices: ['cuda', 'xpu', 'privateuseone']"
            )
        return real_adam(params, **kwargs)

    config = TrainConfig(
        objective="iwae",
        k=2,
        latent_dims=[3],
        hidden_dims=[[8]],
        epochs=2,
        schedule="constant",
        out=str(tmp_path / "fused"),
    )
    model = train_module.build_model(config, tiny_splits.dim)
    assert train_module._make_optimizer(config, model, torch.device("cpu")).defaults["fused"]  # this torch: fused
    fused_run = train(config, progress=False, splits=tiny_splits)

    monkeypatch.setattr(train_module, "_FUSED_ADAM", {})
    monkeypatch.setattr(torch.optim, "Adam", old_adam)
    unfused = train_module._make_optimizer(config, model, torch.device("cpu"))
    again = train_module._make_optimizer(config, model, torch.device("cpu"))
    assert tried == [True, None, None]  # fused was tried once, then never again
    for opt in (unfused, again):
        (group,) = opt.param_groups
        assert not group["fused"] and group["eps"] == config.adam_eps and group["betas"] == (0.9, 0.999)
    plain_run = train(dataclasses.replace(config, out=str(tmp_path / "plain")), progress=False, splits=tiny_splits)
    assert tried == [True, None, None, None]
    a, b = load_tensors(fused_run / "model.safetensors")[0], load_tensors(plain_run / "model.safetensors")[0]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_run_says_its_planned_epochs_and_after_the_first_how_long_the_rest_takes(
    tmp_path, tiny_splits, capsys, monkeypatch
):
    from iwae.train.announce import duration, estimate_line, plan_line

    out = tmp_path / "run"
    train(TrainConfig(k=1, epochs=3, batch_size=20, valid_k=1, out=str(out)), progress=True, splits=tiny_splits)
    err = capsys.readouterr().err.splitlines()
    start = next(i for i, line in enumerate(err) if line.startswith(f"training {out}: IWAE(k=1), epochs 1-3 of 3"))
    first = next(i for i, line in enumerate(err) if line.startswith("the first epoch took "))
    assert start < first and "the 2 left will take about " in err[first] and "at that pace" in err[first]
    epoch_lines = [i for i, line in enumerate(err) if line.startswith("epoch ")]
    assert epoch_lines[0] > first  # the estimate comes right after the first epoch
    # resumed: the epochs it goes on with
    train(TrainConfig(k=1, epochs=4, batch_size=20, valid_k=1, out=str(out)), resume=True, splits=tiny_splits)
    assert f"training {out}: IWAE(k=1), epochs 4-4 of 4" in capsys.readouterr().err
    # quiet, no line; without epochs, the whole paper schedule is said, with how to ask for fewer
    train(
        TrainConfig(k=1, epochs=1, batch_size=20, valid_k=1, out=str(tmp_path / "q")),
        progress=False,
        splits=tiny_splits,
    )
    assert "training" not in capsys.readouterr().err

    class Stop(Exception):
        pass

    def stop_after_the_estimate(*args):
        raise Stop(estimate_line(*args))

    # quiet but the whole schedule: the plan and the first epoch's estimate are still said
    monkeypatch.setattr(train_module, "estimate_line", stop_after_the_estimate)
    with pytest.raises(Stop, match="the first epoch took .*: the 3279 left will take about"):
        train(TrainConfig(k=1, batch_size=20, valid_k=1, out=str(tmp_path / "w")), progress=False, splits=tiny_splits)
    assert "epochs 1-3280 of 3280" in capsys.readouterr().err
    line = plan_line(TrainConfig(out="runs/x"), 59600)
    assert "epochs 1-3280 of 3280" in line and "the whole paper schedule" in line and "--epochs N" in line
    assert [duration(s) for s in (0.42, 42, 725, 12000, 4 * 86400)] == ["0.4 s", "42 s", "12m05s", "3h20m", "4.0 days"]
    assert estimate_line(60.0, 3279).endswith("the 3279 left will take about 2.3 days at that pace")  # 196,740 s
