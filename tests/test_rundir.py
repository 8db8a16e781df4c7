"""Tests for iwae.rundir, the one module that reads and writes a run directory: open_run, the
model config stored once (and runs of the older layout, which stored it in the safetensors
metadata), the identity rule (run_identity, run_key) and the finished rule (run_status).

Data-free: the runs train on a tiny synthetic ``.npz`` of 16-pixel images."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import iwae
from iwae import rundir
from iwae.checkpoint import CheckpointError, load_tensors, save_tensors
from iwae.models import VAE, ModelConfig
from iwae.train import TrainConfig, train

PIXELS = 16
TINY = dict(latent_dims=[2], hidden_dims=[[8]], k=2, valid_k=2, batch_size=10)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> str:
    """40 training, 10 validation and 10 test images of 16 grey-level pixels, as ``npz:PATH``."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        train=rng.random((40, PIXELS), dtype=np.float32),
        valid=(rng.random((10, PIXELS)) > 0.5).astype(np.float32),
        test=(rng.random((10, PIXELS)) > 0.5).astype(np.float32),
    )
    return f"npz:{path}"


def tiny_config(out: Path, dataset: str, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "dataset": dataset, "epochs": 1, "out": str(out), **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_npz) -> Path:
    """A run trained for one epoch with the current code."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(out, tiny_npz), progress=False)
    return out


def copy_run(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for path in run.iterdir():
        if path.is_file():
            (to / path.name).write_bytes(path.read_bytes())
    return to


def to_old_layout(run: Path) -> None:
    """Rewrites ``run``'s safetensors files as the code before the model config was stored once did:
    ``model_config`` in the metadata of both files, and neither ``input_dim`` nor ``model_digest``."""
    architecture = rundir.model_config_of(run).to_dict()
    for name in ("model.safetensors", "checkpoint.safetensors"):
        tensors, meta = load_tensors(run / name)
        meta.pop("input_dim", None), meta.pop("model_digest", None)
        save_tensors(run / name, tensors, {**meta, "model_config": architecture})


# ----------------------------------------------------------------------------- open_run
def test_open_run_gives_config_model_weights_and_loads_the_data_lazily(trained, tiny_npz, monkeypatch):
    import iwae.data

    calls = []
    real = iwae.data.load_dataset
    monkeypatch.setattr(iwae.data, "load_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    run = rundir.open_run(trained)
    assert run.path == trained and run.config == TrainConfig.from_yaml(trained / "config.yaml")
    assert run.weights == {"epoch": 1, "sha256": rundir.model_sha256(trained)}
    assert isinstance(run.model, VAE) and not run.model.training and run.model.config.input_dim == PIXELS
    assert run.title == "IWAE(k=2)"
    assert calls == []  # nothing loaded until asked for
    first = run.splits
    assert run.splits is first and len(calls) == 1 and calls[0][0] == tiny_npz
    assert first.test.shape == (10, PIXELS)


def test_open_run_refuses_a_run_that_completed_no_epoch(trained, tmp_path):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.yaml").write_bytes((trained / "config.yaml").read_bytes())
    rundir.save_model(untrained, iwae.load(trained), 0)  # the initial weights, as training writes them first
    with pytest.raises(CheckpointError, match="has not completed an epoch"):
        rundir.open_run(untrained)
    assert iwae.load(untrained).config.input_dim == PIXELS  # the file itself is fine
    with pytest.raises(CheckpointError, match="not found"):
        rundir.open_run(tmp_path / "missing")


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        iwae.load(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="not found"):
        iwae.load(tmp_path / "run")
    (tmp_path / "run" / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="corrupt"):
        iwae.load(tmp_path / "run")
    model = VAE(ModelConfig(784, (4,), ((8,),)))
    save_tensors(tmp_path / "run" / "model.safetensors", model.state_dict())  # no iwae metadata
    with pytest.raises(CheckpointError, match="no model config"):
        iwae.load(tmp_path / "run")
    other = ModelConfig(784, (5,), ((8,),)).to_dict()
    save_tensors(tmp_path / "run" / "model.safetensors", model.state_dict(), {"model_config": other})
    with pytest.raises(CheckpointError, match="does not fit"):
        iwae.load(tmp_path / "run")


# ----------------------------------------------------------------------------- the model config, stored once
def test_the_architecture_is_stored_in_config_yaml_only(trained, tmp_path):
    _, model_meta = load_tensors(trained / "model.safetensors")
    _, ckpt_meta = load_tensors(trained / "checkpoint.safetensors")
    assert "model_config" not in model_meta and "model_config" not in ckpt_meta
    architecture = TrainConfig.from_yaml(trained / "config.yaml").model_config(PIXELS)
    assert rundir.model_config_of(trained) == architecture == iwae.load(trained).config
    assert model_meta["model_digest"] == ckpt_meta["model_digest"] == rundir.model_digest(architecture)

    # without config.yaml the weights cannot be read: say so
    no_config = copy_run(trained, tmp_path / "no-config")
    (no_config / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="has no config.yaml"):
        iwae.load(no_config)
    # a config.yaml of another architecture is caught by the digest, before any shape is compared
    other = copy_run(trained, tmp_path / "other")
    rundir.write_config(other, tiny_config(other, "mnist", latent_dims=[3]))
    with pytest.raises(CheckpointError, match="another architecture than config.yaml"):
        iwae.load(other)


def test_model_digest_tells_architectures_apart():
    a = ModelConfig(PIXELS, (2,), ((8,),))
    assert rundir.model_digest(a) == rundir.model_digest(ModelConfig(PIXELS, (2,), ((8,),)))
    for b in (
        ModelConfig(PIXELS, (3,), ((8,),)),
        ModelConfig(PIXELS + 1, (2,), ((8,),)),
        ModelConfig(PIXELS, (2,), ((8,),), prior="mog", prior_components=2),
    ):
        assert rundir.model_digest(b) != rundir.model_digest(a)


# ----------------------------------------------------------------------------- runs of the older layout
def test_a_run_of_the_old_layout_opens_evaluates_and_resumes_bit_exact(trained, tiny_npz, tmp_path):
    from iwae.evaluate import evaluate

    old = copy_run(trained, tmp_path / "old")
    to_old_layout(old)
    assert "model_config" in load_tensors(old / "model.safetensors")[1]
    run = rundir.open_run(old)
    assert run.weights["epoch"] == 1 and run.model.config == rundir.model_config_of(trained)
    for key, value in iwae.load(trained).state_dict().items():
        assert torch.equal(run.model.state_dict()[key], value), key
    assert evaluate(old, k=3, test_subset=4)["nll"] == evaluate(trained, k=3, test_subset=4)["nll"]

    # resumed for a second epoch it ends where a run trained for two epochs by the current code ends
    reference = tmp_path / "two-epochs"
    train(tiny_config(reference, tiny_npz, epochs=2), progress=False)
    train(tiny_config(old, tiny_npz, epochs=2), resume=True, progress=False)
    a, _ = load_tensors(old / "model.safetensors")
    b, _ = load_tensors(reference / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert "model_config" not in load_tensors(old / "model.safetensors")[1]  # written anew in the new layout


def test_an_old_layout_model_loads_without_config_yaml_and_refuses_a_bad_model_config(trained, tmp_path):
    old = copy_run(trained, tmp_path / "old")
    to_old_layout(old)
    (old / "config.yaml").unlink()
    assert iwae.load(old).config == rundir.model_config_of(trained)  # the metadata is its architecture
    tensors, meta = load_tensors(old / "model.safetensors")
    meta["model_config"]["dropout"] = 0.1
    save_tensors(old / "model.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="invalid model config"):
        iwae.load(old)


def test_an_old_layout_checkpoint_of_another_architecture_is_refused(trained, tiny_npz, tmp_path):
    old = copy_run(trained, tmp_path / "old")
    to_old_layout(old)
    tensors, meta = load_tensors(old / "checkpoint.safetensors")
    meta["model_config"]["latent_dims"] = [3]
    save_tensors(old / "checkpoint.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="holds another architecture"):
        train(tiny_config(old, tiny_npz, epochs=2), resume=True, progress=False)


# ----------------------------------------------------------------------------- the identity rule
def test_run_identity_keeps_what_decides_the_result():
    base = TrainConfig(**TINY, epochs=3, out="runs/a")
    assert rundir.run_identity(base) == rundir.run_identity(TrainConfig(**TINY, epochs=3, out="runs/a"))
    # where and how it runs, and for how long, do not make another run
    for same in (
        dict(threads=4),
        dict(device="cuda:1"),
        dict(out="elsewhere"),
        dict(data_dir="/data"),
        dict(checkpoint_every=7),
        dict(epochs=10),
    ):
        assert rundir.run_identity(
            TrainConfig(**{**TINY, "epochs": 3, "out": "runs/a", **same})
        ) == rundir.run_identity(base), same
    # settings that change the numbers do
    for other in (
        dict(lr=3e-4),
        dict(k=3, valid_k=2),
        dict(seed=1),
        dict(objective="vae", k=1),
        dict(latent_dims=[3]),
        dict(train_subset=20),
    ):
        changed = TrainConfig(**{**TINY, "epochs": 3, "out": "runs/a", **other})
        assert rundir.run_identity(changed) != rundir.run_identity(base), other
        assert set(rundir.changed_settings(base, changed)) == set(other) - {"valid_k"}


def test_run_key_adds_the_length_the_evaluation_and_the_dependency():
    spec = {"config": {"objective": "iwae", "k": 5, "epochs": 3}, "eval": {"k": 100, "seed": 0}, "after": None}
    assert rundir.run_key(spec) == rundir.run_key(json.loads(json.dumps(spec)))
    assert rundir.run_key({**spec, "config": {**spec["config"], "threads": 2}}) == rundir.run_key(spec)
    for other in (
        {"config": {**spec["config"], "epochs": 4}},
        {"config": {**spec["config"], "k": 6}},
        {"eval": {"k": 200, "seed": 0}},
        {"after": "a"},
    ):
        assert rundir.run_key({**spec, **other}) != rundir.run_key(spec), other


# ----------------------------------------------------------------------------- the finished rule
SPEC = {"name": "r", "config": {"objective": "iwae", "k": 5, "epochs": 3}, "eval": {"k": 100}, "after": None}


def write_done(run: Path, spec: dict = SPEC, **changes) -> None:
    rundir.write_result(
        run,
        {
            "name": spec["name"],
            "status": "done",
            "metrics": {"nll": 90.0},
            "init_sha256": None,
            "spec": spec,
            **changes,
        },
    )


def test_run_status_done_stale_failed_unreadable_and_none(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    assert rundir.run_status(run, SPEC).status is None and rundir.finished_result(run, SPEC) is None
    write_done(run)
    found = rundir.run_status(run, SPEC)
    assert found.status == "done" and found.result["metrics"] == {"nll": 90.0}
    assert rundir.finished_result(run, SPEC) == found.result
    other_eval = {**SPEC, "eval": {"k": 5000}}
    assert rundir.run_status(run, other_eval).status == "stale"
    assert "other settings (eval)" in rundir.run_status(run, other_eval).message
    assert rundir.finished_result(run, other_eval) is None
    longer = {**SPEC, "config": {**SPEC["config"], "epochs": 9}}
    assert rundir.run_status(run, longer).status == "stale"
    write_done(run, status="running")
    assert rundir.run_status(run, SPEC).status == "unreadable"
    (run / "result.json").write_text("{not json")
    assert rundir.run_status(run, SPEC).status == "unreadable"
    assert "not readable JSON" in rundir.run_status(run, SPEC).message


def test_the_newer_of_result_and_error_decides(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    write_done(run)
    rundir.write_error(run, {"name": "r", "status": "failed", "error": "boom"})
    os.utime(run / "result.json", (time.time() - 60, time.time() - 60))
    found = rundir.run_status(run, SPEC)
    assert (found.status, found.message) == ("failed", "boom")
    assert rundir.finished_result(run, SPEC) is None
    os.utime(run / "error.json", (time.time() - 120, time.time() - 120))  # the result came after the failure
    assert rundir.run_status(run, SPEC).status == "done"
    rundir.clear_error(run)
    assert rundir.read_error(run) is None and rundir.run_status(run, SPEC).status == "done"


def test_a_continued_run_is_finished_only_from_the_model_its_dependency_holds(trained, tmp_path):
    runs = tmp_path / "runs"
    copy_run(trained, runs / "a")
    spec = {**SPEC, "name": "b", "after": "a"}
    (runs / "b").mkdir()
    write_done(runs / "b", spec, init_sha256=rundir.model_sha256(runs / "a"))
    assert rundir.run_status(runs / "b", spec).status == "done"
    write_done(runs / "b", spec, init_sha256="0" * 64)  # started from a model a no longer holds
    found = rundir.run_status(runs / "b", spec)
    assert found.status == "stale" and "another model than a" in found.message
    from iwae.experiments.engine import finished_result
    from iwae.experiments.spec import RunSpec

    assert finished_result(runs / "b", RunSpec.from_dict(spec)) is None


# ----------------------------------------------------------------------------- other files of a run
def test_eval_name_and_evaluation_files_round_trip(tmp_path):
    assert rundir.eval_name(5000, 0) == "eval_k5000_seed0"
    assert rundir.eval_name(64, 3, 500) == "eval_k64_n500_seed3"
    bounds = np.array([-90.5, -88.25, -101.0])
    rundir.write_evaluation(tmp_path, "eval_k3_seed0", {"nll": 93.25}, bounds)
    result, read = rundir.read_evaluation(tmp_path, "eval_k3_seed0")
    assert result == {"nll": 93.25} and np.array_equal(read, bounds) and read.dtype == np.float64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_k3_seed0.json", "eval_k3_seed0.npy"]
    with pytest.raises(CheckpointError, match="missing or unreadable"):
        rundir.read_evaluation(tmp_path, "eval_k4_seed0")


def test_read_metrics_and_training_seconds(trained, tmp_path):
    rows = rundir.read_metrics(trained)
    assert [r["epoch"] for r in rows] == [1.0] and all(isinstance(v, float) for v in rows[0].values())
    assert rundir.training_seconds(trained) == rows[-1]["wall_time_s"] > 0
    import iwae.run_figures

    assert iwae.run_figures.read_metrics is rundir.read_metrics  # the figures read a run's metrics through rundir
    with pytest.raises(FileNotFoundError, match="has not finished an epoch"):
        rundir.read_metrics(tmp_path)
    assert rundir.training_seconds(tmp_path) == 0.0
    assert rundir.trained_epochs(trained) == 1


def test_files_travel_with_result_json_written_last(trained, tmp_path, monkeypatch):
    files = rundir.read_files(trained)
    assert {"config.yaml", "model.safetensors", "checkpoint.safetensors", "metrics.csv"} <= set(files)
    files = {"result.json": b"{}", **files, "error.json": b"{}"}
    assert "result.json" not in rundir.read_files(trained, without_results=True)
    written = []
    from iwae.rundir import layout

    real = layout.atomic_write

    def recording(path, mode="w"):
        written.append(str(Path(path).relative_to(tmp_path / "copy")))
        return real(path, mode)

    monkeypatch.setattr(layout, "atomic_write", recording)
    rundir.write_files(tmp_path / "copy", files)
    assert written[-1] == "result.json" and sorted(written) == sorted(files)
    assert rundir.read_files(tmp_path / "copy") == files


def test_only_start_files_tells_an_untrained_run_from_a_trained_one(trained, tmp_path):
    start = tmp_path / "start"
    start.mkdir()
    (start / "config.yaml").write_bytes((trained / "config.yaml").read_bytes())
    rundir.save_model(start, iwae.load(trained), 0)
    assert rundir.only_start_files(start)
    no_checkpoint = copy_run(trained, tmp_path / "no-checkpoint")
    (no_checkpoint / "checkpoint.safetensors").unlink()  # deleted to save space: still trained
    assert not rundir.only_start_files(no_checkpoint)
    assert not rundir.only_start_files(trained)
    rundir.clear_start_files(start)
    assert list(start.iterdir()) == []
