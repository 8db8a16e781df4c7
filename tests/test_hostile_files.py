"""Hostile and wrong files in a run directory, a full disk and a read-only folder: ``iwae train
--resume`` (and ``iwae.load``) refuse each with one line, run no code from a file, and leave the
last good checkpoint intact. Hostile experiment files (run names that leave the output folder, a
report description that embeds local files or scripts), a folder the engine did not make, and two
real processes writing one run folder (the second is refused, naming the first)."""

from __future__ import annotations

import base64
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import assert_one_line_error, invoke, small_npz

import iwae
import iwae.checkpoint as checkpoint_module
from iwae.checkpoint import CheckpointError, load_tensors, save_tensors
from iwae.rundir import MARKER
from iwae.rundir.lock import holder_of
from iwae.train import TrainConfig, train, train_or_resume

SMALL = dict(k=2, latent_dims=[4], hidden_dims=[[16]], batch_size=20, valid_k=2, seed=2)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory, mnist_splits) -> str:
    """40 training, 20 validation and test MNIST images as a user .npz, so the CLI loads them fast."""
    return small_npz(tmp_path_factory.mktemp("data"), mnist_splits, 40)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_npz) -> Path:
    """A 2-epoch run (reference) of the tiny net on 40 MNIST images."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    train(TrainConfig(**SMALL, dataset=tiny_npz, epochs=2, out=str(out)), progress=False)
    return out


@pytest.fixture
def half_run(tmp_path, tiny_npz) -> Path:
    """The same run after its first epoch: what --resume continues."""
    out = tmp_path / "run"
    train(TrainConfig(**SMALL, dataset=tiny_npz, epochs=1, out=str(out)), progress=False)
    return out


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class _Payload:
    """Unpickling this creates ``marker``: the proof that a file's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ----------------------------------------------------------------------------- not safetensors
@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
def test_a_pickle_named_checkpoint_safetensors_is_refused_unexecuted(half_run, tmp_path, fmt):
    marker = tmp_path / "code-ran"
    path = half_run / "checkpoint.safetensors"
    if fmt == "pickle":
        path.write_bytes(pickle.dumps({"model": _Payload(marker)}))
        with open(tmp_path / "check.pkl", "wb") as f:  # the payload works: unpickling it runs code
            pickle.dump(_Payload(tmp_path / "control"), f)
        pickle.loads((tmp_path / "check.pkl").read_bytes())
        assert (tmp_path / "control").exists()
    else:
        torch.save({"model": _Payload(marker)}, path)
    before = snapshot(half_run)
    assert_one_line_error(
        invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"), "is corrupt or not a safetensors file"
    )
    assert not marker.exists()
    (half_run / "model.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        iwae.load(half_run)
    assert not marker.exists()
    assert snapshot(half_run) == {**before, Path("model.safetensors"): path.read_bytes()}


# ----------------------------------------------------------------------------- safetensors of another run
def _rewrite_checkpoint(run: Path, change) -> None:
    """Rewrites the checkpoint with ``change`` applied, consistently (its digest is that of the changed
    tensors): the checks after the digest must catch what is wrong."""
    tensors, meta = load_tensors(run / "checkpoint.safetensors")
    change(tensors, meta)
    save_tensors(run / "checkpoint.safetensors", tensors, meta)


@pytest.mark.parametrize(
    "damage, phrase",
    [
        ("weight-shape", "holds encoder.0.body.0.weight of shape (17, 784)"),
        ("missing-weight", "lacks "),
        ("adam-shape", "holds optim.0.exp_avg of shape"),
        ("architecture", "holds another architecture"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(half_run, damage, phrase):
    def change(tensors, meta):
        if damage == "weight-shape":
            key = next(k for k in tensors if k.startswith("model.encoder") and k.endswith("weight"))
            tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
            meta.pop("model_digest")
        elif damage == "missing-weight":
            del tensors[next(k for k in tensors if k.startswith("model."))]
            meta.pop("model_digest")
        elif damage == "adam-shape":
            tensors["optim.0.exp_avg"] = torch.zeros(3)
        else:  # the digest of another architecture than config.yaml's
            meta["model_digest"] = "0" * 64

    _rewrite_checkpoint(half_run, change)
    before = snapshot(half_run)
    error = assert_one_line_error(invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"), phrase)
    assert "checkpoint.safetensors" in error
    assert snapshot(half_run) == before


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, half_run, tiny_npz):
    other = tmp_path / "other"
    train(TrainConfig(**{**SMALL, "latent_dims": [6]}, dataset=tiny_npz, epochs=1, out=str(other)), progress=False)
    shutil.copy(other / "checkpoint.safetensors", half_run / "checkpoint.safetensors")
    # the run identity recorded with the weights says which setting differs, before any shape is compared
    error = assert_one_line_error(
        invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"), "belongs to another run"
    )
    assert "latent_dims [6] there, [4] in config.yaml" in error


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("k: five\n", "config key 'k' must be int, got 'five'"),
        ("lr: 1e-3\n", "config key 'lr' must be float"),
        ("samples: 5\n", "unknown config keys: samples"),
        ("latent_dims: 4\n", "config key 'latent_dims' must be list[int] | None"),
    ],
)
def test_a_config_yaml_with_unknown_keys_or_wrong_types_is_refused(half_run, text, phrase):
    path = half_run / "config.yaml"
    values = yaml.safe_load(path.read_text())
    key = text.split(":")[0]
    values.pop(key, None)
    path.write_text(yaml.safe_dump(values, sort_keys=False) + text)
    before = snapshot(half_run)
    assert_one_line_error(invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"), phrase)
    assert snapshot(half_run) == before


# ----------------------------------------------------------------------------- the generator's device
def test_a_cuda_generator_state_is_refused_on_cpu(half_run, trained):
    """A checkpoint started on CUDA holds a 16-byte generator state (a CPU one is 5,056 bytes); it
    used to fail with "incomplete or does not match the config"."""

    def to_cuda_style(tensors, meta):
        tensors["rng.generator"] = torch.arange(16, dtype=torch.uint8)
        meta.pop("rng_device")  # as older checkpoints, which did not record it: the size tells

    _rewrite_checkpoint(half_run, to_cuda_style)
    before = snapshot(half_run)
    assert_one_line_error(
        invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"),
        "was trained on cuda; resuming it on cpu would draw other random numbers",
    )
    with pytest.raises(ValueError, match="trained on cuda"):  # as iwae reproduce resumes
        train_or_resume(
            TrainConfig(**{**TrainConfig.from_yaml(half_run / "config.yaml").to_dict(), "epochs": 2}), progress=False
        )
    assert snapshot(half_run) == before
    _rewrite_checkpoint(half_run, lambda tensors, meta: meta.update(rng_device="cuda"))
    assert_one_line_error(invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"), "was trained on cuda")
    # a finished run has nothing left to draw: no refusal, on any device
    result = invoke("train", "--resume", half_run, "--quiet")
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output


def test_resuming_a_cpu_run_on_cuda_is_refused(half_run, monkeypatch):
    """--device was "changeable" on resume, but a CUDA generator cannot take a CPU one's state,
    and the two draw other numbers."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    before = snapshot(half_run)
    assert_one_line_error(
        invoke("train", "--resume", half_run, "--epochs", 2, "--device", "cuda", "--quiet"),
        "was trained on cpu; resuming it on cuda",
    )
    assert snapshot(half_run) == before
    _, meta = load_tensors(half_run / "checkpoint.safetensors")
    assert meta["rng_device"] == "cpu"


# ----------------------------------------------------------------------------- full disk, read-only folder
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(half_run, trained, monkeypatch):
    real_save = checkpoint_module.save_file

    def full_disk(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if Path(filename).name.startswith(".checkpoint.safetensors."):
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 3])  # the disk filled up in the middle
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    good = (half_run / "checkpoint.safetensors").read_bytes()
    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    error = assert_one_line_error(
        invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"), "No space left on device"
    )
    assert "checkpoint.safetensors" in error and "unchanged" in error
    assert (half_run / "checkpoint.safetensors").read_bytes() == good
    assert not [p for p in half_run.iterdir() if p.name.startswith(".") and p.name != MARKER]  # no temporary
    monkeypatch.undo()

    # the same for a text file (metrics.csv), failing when it is flushed to disk
    real_fsync = os.fsync

    def full_disk_fsync(fd):
        if ".metrics.csv." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    good_metrics = (half_run / "metrics.csv").read_bytes()
    monkeypatch.setattr(checkpoint_module.os, "fsync", full_disk_fsync)
    assert_one_line_error(invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"), "could not write")
    monkeypatch.undo()
    # the checkpoint of epoch 2 was written before metrics.csv failed; the resume syncs metrics.csv
    assert (half_run / "metrics.csv").read_bytes() == good_metrics
    result = invoke("train", "--resume", half_run, "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, _ = load_tensors(trained / name)
        b, _ = load_tensors(half_run / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert len((half_run / "metrics.csv").read_text().splitlines()) == 3


def test_a_read_only_folder_is_one_line_before_any_training(half_run, trained, monkeypatch):
    """Tests run as root, whom chmod does not stop: the folder refuses new files through mkstemp,
    as a read-only folder does (EACCES)."""

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

    steps = []
    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", read_only)
    monkeypatch.setattr("iwae.train.loop.accumulate_gradients", lambda *a, **k: steps.append(1))
    before = snapshot(half_run)
    error = assert_one_line_error(invoke("train", "--resume", half_run, "--epochs", 2, "--quiet"), "Permission denied")
    assert "is the folder writable?" in error and not steps  # refused before the first step
    assert snapshot(half_run) == before
    monkeypatch.undo()
    result = invoke("train", "--resume", half_run, "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    a, _ = load_tensors(trained / "model.safetensors")
    b, _ = load_tensors(half_run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_training_is_one_line_from_the_command_line(tmp_path, tiny_npz, monkeypatch):
    real = __import__("iwae.train.loop", fromlist=["x"]).accumulate_gradients

    def poisoned(model, x, spec, generator, kl_weight=1.0):
        bound = real(model, x, spec, generator, kl_weight)
        return bound * float("inf")

    monkeypatch.setattr("iwae.train.loop.accumulate_gradients", poisoned)
    out = tmp_path / "run"
    assert_one_line_error(
        invoke(
            "train",
            "--dataset",
            tiny_npz,
            "--k",
            2,
            "--latent-dims",
            4,
            "--hidden-dims",
            16,
            "--epochs",
            1,
            "--quiet",
            "--out",
            out,
        ),
        "became nan or inf in epoch 1 at step 1",
    )
    assert not (out / "checkpoint.safetensors").exists()
    assert load_tensors(out / "model.safetensors")[1]["epoch"] == 0


def test_a_mid_epoch_order_that_is_not_a_permutation_is_refused(tmp_path, tiny_npz, monkeypatch):
    """A checkpoint written mid-epoch stores the epoch's shuffled order; one that repeats images
    (tampered, or from other data) would train on the wrong images: refused in one line."""
    from iwae.train import loop as train_module

    real, calls = train_module.accumulate_gradients, []

    def stop_at_the_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after the mid-epoch checkpoint of step 1 (40 images, batches of 20)
        return real(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(train_module, "accumulate_gradients", stop_at_the_second_step)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**SMALL, dataset=tiny_npz, epochs=1, checkpoint_every=1, out=str(out)), progress=False)
    monkeypatch.undo()
    assert "epoch_position" in load_tensors(out / "checkpoint.safetensors")[1]

    def repeat_an_image(tensors, meta):
        tensors["epoch.order"] = torch.zeros_like(tensors["epoch.order"])

    _rewrite_checkpoint(out, repeat_an_image)
    before = snapshot(out)
    assert_one_line_error(invoke("train", "--resume", out, "--quiet"), "not a permutation")
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- writing elsewhere (issue 20, 1)
TINY_PROTOCOL = {"epochs": 1, "test_subset": 5, "eval_k": 2}


def _experiment(path: Path, runs: list[dict], dataset: str) -> Path:
    for run in runs:
        run.update(dataset=dataset, k=2, latent_dims=[4], hidden_dims=[[16]], batch_size=20, valid_k=2)
    path.write_text(yaml.safe_dump({"name": "x", "runs": runs, "protocols": {"short": TINY_PROTOCOL}}))
    return path


@pytest.fixture
def victim(tmp_path, tiny_npz) -> Path:
    """An earlier `iwae train` output outside any reproduction's folder, holding a note of the user's."""
    out = tmp_path / "x" / "victim"
    train(TrainConfig(**SMALL, dataset=tiny_npz, epochs=1, out=str(out)), progress=False)
    (out / "note.txt").write_text("my notes")
    return out


def tree(folder: Path) -> dict:
    """Every path under ``folder`` (folders too, links not followed) with its bytes."""
    return {
        p.relative_to(folder): (p.read_bytes() if p.is_file() and not p.is_symlink() else "") for p in folder.rglob("*")
    }


@pytest.mark.parametrize("spelling", ["absolute", "traversal"])
def test_an_experiment_file_cannot_write_or_delete_outside_its_out_folder(tmp_path, tiny_npz, victim, spelling):
    """The issue's reproduction: a run named after a folder elsewhere, continued by a run named after an
    earlier `iwae train` output, which the engine used to delete (rmtree) and replace. The file is
    refused in one line before anything is written, and --dry-run refuses it the same way."""
    out = tmp_path / "out"
    base, target = (
        (str(tmp_path / "x" / "base"), str(victim)) if spelling == "absolute" else ("../../x/base", "../../x/victim")
    )
    exp = _experiment(tmp_path / "exp.yaml", [{"name": base}, {"name": target, "continue_from": base}], tiny_npz)
    before = tree(tmp_path)
    for extra in ([], ["--dry-run"]):
        error = assert_one_line_error(invoke("reproduce", exp, "--protocol", "short", "--out", out, *extra), "run name")
        assert "is not a plain name" in error
        assert tree(tmp_path) == before  # the victim and its note untouched, nothing created, not even --out
    assert (victim / "note.txt").read_text() == "my notes"


def test_the_engine_does_not_write_into_a_folder_it_did_not_create(tmp_path, tiny_npz, victim):
    """``OUT/runs/a`` already holds someone's files (not a run), or is a link to a run elsewhere: the
    reproduction is refused before anything runs, and neither is touched."""
    exp = _experiment(tmp_path / "exp.yaml", [{"name": "a"}], tiny_npz)
    out = tmp_path / "out"
    (out / "runs" / "a").mkdir(parents=True)
    (out / "runs" / "a" / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    error = assert_one_line_error(
        invoke("reproduce", exp, "--out", out, "--dry-run"), "was not created by iwae reproduce"
    )
    assert str(out / "runs" / "a") in error
    assert_one_line_error(invoke("reproduce", exp, "--out", out), "was not created by iwae reproduce")
    assert (out / "runs" / "a" / "notes.txt").read_text() == "mine"
    shutil.rmtree(out / "runs" / "a")
    (out / "runs" / "a").symlink_to(victim, target_is_directory=True)
    before = tree(victim)
    assert_one_line_error(invoke("reproduce", exp, "--out", out), "is a symbolic link")
    assert tree(victim) == before


def test_the_engine_does_not_replace_a_run_folder_it_did_not_create(tmp_path, tiny_npz):
    """A run folder of the same settings that the engine would start again (its checkpoint is gone) but that
    a reproduction did not make (an `iwae train` output moved there): the run fails in one line, the
    folder keeps every file; a folder the reproduction made is started again as before."""
    exp = _experiment(tmp_path / "exp.yaml", [{"name": "a"}], tiny_npz)
    out = tmp_path / "out"
    assert invoke("reproduce", exp, "--out", out).exit_code == 0
    run = out / "runs" / "a"
    (run / "checkpoint.safetensors").unlink()  # nothing to resume: the engine would start the run again
    (run / "result.json").unlink()
    (run / MARKER).unlink()  # as if `iwae train` (or an older iwae) had made it
    (run / "note.txt").write_text("mine")
    before = tree(run)
    result = invoke("reproduce", exp, "--out", out)
    assert result.exit_code == 1, result.output  # the run failed; the reproduction says so
    error = json.loads((run / "error.json").read_text())["error"]
    assert "was not created by iwae reproduce" in error and "\n" not in error
    assert {p: v for p, v in tree(run).items() if p.name != "error.json"} == before
    (run / "error.json").unlink()
    rundir_mark = {"created_by": "iwae reproduce"}
    (run / MARKER).write_text(json.dumps(rundir_mark))  # made by a reproduction: it may start it again
    assert invoke("reproduce", exp, "--out", out).exit_code == 0
    assert not (run / "note.txt").exists() and (run / "result.json").is_file()


# ----------------------------------------------------------------------------- two writers (issue 20, 2)
LONG_RUN = ("--objective", "iwae", "--k", 5, "--latent-dims", 4, "--hidden-dims", 16, "--batch-size", 10, "--quiet")


@pytest.fixture
def training(tmp_path, tiny_npz):
    """Another process (the iwae console script) training into ``tmp_path/same`` for a long time, once it
    holds the folder's lock and has finished its first epoch: yields ``(process, folder)``."""
    exe = shutil.which("iwae")
    assert exe, "the iwae console script is not installed (pip install -e .)"
    out = tmp_path / "same"
    args = [exe, "train", "--dataset", tiny_npz, *map(str, LONG_RUN), "--epochs", "100000", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.csv"
        if holder_of(out) == proc.pid and metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None and holder_of(out) == proc.pid, proc.stderr.read() if proc.poll() is not None else ""
    yield proc, out
    proc.kill()
    proc.wait()


def _first_writer_named(error: str, proc, out: Path) -> None:
    assert f"{out} is in use" in error and f"pid {proc.pid}" in error and "iwae train" in error, error


def test_a_second_training_into_a_folder_in_training_is_refused(training, tiny_npz):
    """The issue's pair, ``iwae train --objective iwae --k 5 --out same & iwae train --objective vae --k 1
    --out same``: the second is refused in one line naming the first, which goes on and keeps its run."""
    proc, out = training
    second = invoke("train", "--dataset", tiny_npz, "--objective", "vae", "--k", 1, "--epochs", 1, "--out", out)
    _first_writer_named(assert_one_line_error(second, "is in use"), proc, out)
    rows = len((out / "metrics.csv").read_text().splitlines())
    deadline = time.time() + 120
    while len((out / "metrics.csv").read_text().splitlines()) == rows and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and len((out / "metrics.csv").read_text().splitlines()) > rows  # it goes on
    config = TrainConfig.from_yaml(out / "config.yaml")
    assert (config.objective, config.k) == ("iwae", 5)


def test_overwrite_of_a_folder_in_training_is_refused_and_the_training_goes_on(training, tiny_npz):
    """``--overwrite`` used to delete the folder under the training process, which then died of a raw
    FileNotFoundError (its TensorBoard writer); now it is refused and nothing changes."""
    proc, out = training
    second = invoke(
        "train", "--dataset", tiny_npz, "--objective", "vae", "--k", 1, "--epochs", 1, "--overwrite", "--out", out
    )
    _first_writer_named(assert_one_line_error(second, "is in use"), proc, out)
    time.sleep(1.0)
    assert proc.poll() is None, proc.stderr.read()
    assert TrainConfig.from_yaml(out / "config.yaml").objective == "iwae"


def test_evaluate_while_training_is_refused_and_kill_9_releases_the_lock(training):
    proc, out = training
    _first_writer_named(assert_one_line_error(invoke("evaluate", out, "--k", 2), "is in use"), proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = invoke("evaluate", out, "--k", 2)  # the kernel released the lock with the process
    assert result.exit_code == 0, result.output
    assert holder_of(out) is None


def test_overwrite_swaps_the_folder_and_never_deletes_in_the_live_one(tmp_path, tiny_npz, monkeypatch):
    """Readers never see a half-replaced folder: ``--overwrite`` renames the old run aside and the new
    folder into its place, and deletes only in the renamed one (never file by file in the live folder)."""
    out = tmp_path / "run"
    train(TrainConfig(**SMALL, dataset=tiny_npz, epochs=1, out=str(out)), progress=False)
    old = [p.name for p in out.iterdir()]
    seen, deleted = [], []
    real_rename, real_rmtree, real_unlink = os.rename, shutil.rmtree, os.unlink

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        if Path(dst) == out or Path(src) == out:  # what a reader of `out` sees after each step
            seen.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)

    def rmtree(path, *args, **kwargs):
        deleted.append(Path(path))
        real_rmtree(path, *args, **kwargs)

    def unlink(path, *args, **kwargs):
        deleted.append(Path(path))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(os, "unlink", unlink)
    result = invoke("train", "--dataset", tiny_npz, "--k", 3, "--latent-dims", 4, "--hidden-dims", 16, "--epochs", 1,
                    "--overwrite", "--quiet", "--out", out)  # fmt: skip
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    assert seen == [None, [MARKER]], seen  # whole old run, then nothing, then the new empty (marked) folder
    assert out not in deleted and not {out / name for name in old} & set(deleted), deleted
    assert TrainConfig.from_yaml(out / "config.yaml").k == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the old run is gone


# ----------------------------------------------------------------------------- report.html (issue 20, 3)
def test_the_report_embeds_only_files_of_its_own_folder_and_no_script(tmp_path):
    """An experiment's description goes through Markdown into report.html: an image of a local file
    outside the report's folder, a javascript: link, raw <script>, and a link inside the folder pointing
    out of it are neither embedded nor kept; an image inside the folder is embedded (the control)."""
    secret = tmp_path / "elsewhere" / "secret"
    secret.parent.mkdir()
    secret.write_bytes(b"SECRET-KEY-42")
    folder = tmp_path / "report"
    (folder / "report_figures").mkdir(parents=True)
    (folder / "report_figures" / "evil.png").symlink_to(secret)
    png = b"\x89PNG\r\n\x1a\n-a-real-figure"
    (folder / "report_figures" / "ok.png").write_bytes(png)
    description = (
        f"![x]({secret})\n\n[t](javascript:alert(1))\n\n<script>alert(1)</script>\n\n"
        f"![y](report_figures/evil.png) ![z](report_figures/ok.png) [u](file://{secret}) ![w](../elsewhere/secret)"
    )
    state = {"experiment": "x", "title": "<script>alert(2)</script>", "description": description, "runs": []}
    (folder / "reproduction.json").write_text(json.dumps(state))
    assert invoke("report", folder, "--no-figures").exit_code == 0
    page = (folder / "report.html").read_text()
    for leaked in (b"SECRET-KEY-42", base64.b64encode(b"SECRET-KEY-42"), base64.b64encode(secret.read_bytes())[:12]):
        assert leaked.decode() not in page
    assert "javascript:" not in page.lower() and "<script" not in page.lower() and "file://" not in page
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page  # the folder's own figure is embedded
    assert page.count("data-not-embedded=") == 3  # the three local images outside the folder
