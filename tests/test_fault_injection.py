"""Fault injection: a real small training run (``iwae train``, MNIST images, a tiny net) killed
with SIGKILL at 34 points (30 single kills and two runs killed twice), among them in the middle of
every kind of file write, then resumed with ``iwae train --resume``.

Each kill happens in a forked child at a chosen event: the n-th optimizer step, the n-th
validation pass, or the n-th write of a run file, either half-way (the temporary file truncated to
half its size, as a kill during the write would leave it), with the temporary file complete but not
yet renamed, or just after the rename. After each kill every file of the run directory under its
real name must be complete, and after ``--resume`` the run must end with the uninterrupted run's
weights, optimizer state and RNG state, bit for bit, and the same metrics.

The same for two seeds trained as one batched model (``--seeds``): 10 kill points and a chain of
two, between and inside the members' staged writes, the group's commit record and the renames that
settle it; after each kill both members stand at one step, and the group resumes bit for bit. And a
reproduction with a pool of two worker processes, killed (with its workers) while both runs train,
then run again: every run ends bit-identical to the uninterrupted reproduction.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import assert_one_line_error, invoke
from cli_helpers import small_npz as write_small_npz  # the fixture below takes the name

import iwae.checkpoint as checkpoint_module
import iwae.rundir as rundir_module
from iwae.checkpoint import load_tensors
from iwae.cli import main
from iwae.rundir import MARKER, checkpoint_path
from iwae.rundir.lock import holder_of
from iwae.train import TrainConfig
from iwae.train import loop as train_module

# 60 images in batches of 10: 6 steps an epoch, 18 in all; a checkpoint every 4 steps as well as
# at the end of each epoch (steps 4, 6, 8, 12, 16, 18; step 12 ends epoch 2)
TRAIN_ARGS = (
    "--k",
    3,
    "--latent-dims",
    4,
    "--hidden-dims",
    16,
    "--batch-size",
    10,
    "--epochs",
    3,
    "--checkpoint-every",
    4,
    "--seed",
    1,
    "--quiet",
)
WRITES = {"config.yaml": 1, "model.safetensors": 4, "checkpoint.safetensors": 6, "metrics.csv": 3}
TEMPORARY = re.compile(r"^\.(.+)\.[^.]+\.tmp$")

# (event, file or None, occurrence): fsync = killed half-way through the write; replace = the
# temporary file is complete, not yet renamed; replaced = killed just after the rename
KILL_POINTS = [
    ("fsync", "config.yaml", 1),
    ("replaced", "config.yaml", 1),
    ("fsync", "model.safetensors", 1),
    ("replaced", "model.safetensors", 1),
    ("step", None, 1),
    ("fsync", "checkpoint.safetensors", 1),
    ("replace", "checkpoint.safetensors", 1),
    ("replaced", "checkpoint.safetensors", 1),
    ("step", None, 5),
    ("validation", None, 1),
    ("fsync", "model.safetensors", 2),
    ("replaced", "model.safetensors", 2),
    ("fsync", "checkpoint.safetensors", 2),
    ("replace", "checkpoint.safetensors", 2),
    ("fsync", "metrics.csv", 1),
    ("replaced", "metrics.csv", 1),
    ("step", None, 7),
    ("fsync", "checkpoint.safetensors", 3),
    ("validation", None, 2),
    ("replace", "checkpoint.safetensors", 4),
    ("step", None, 13),
    ("replaced", "checkpoint.safetensors", 5),
    ("step", None, 18),
    ("validation", None, 3),
    ("fsync", "model.safetensors", 4),
    ("fsync", "checkpoint.safetensors", 6),
    ("replace", "checkpoint.safetensors", 6),
    ("replaced", "checkpoint.safetensors", 6),
    ("fsync", "metrics.csv", 3),
    ("replaced", "metrics.csv", 3),
]
# a kill, then a kill of the resumed run, then the resume that finishes
KILL_CHAINS = [
    [("step", None, 5), ("fsync", "checkpoint.safetensors", 1)],
    [("replaced", "checkpoint.safetensors", 3), ("validation", None, 1)],
]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


def _install_hooks(monkeypatch, on_event) -> None:
    """Routes every optimizer step, validation pass, run-file fsync and rename through
    ``on_event(kind, name, path)``, which may kill the process."""
    real_replace, real_fsync = os.replace, os.fsync
    real_accumulate, real_validation = train_module.accumulate_gradients, train_module.validation_bound

    def replace(src, dst):
        on_event("replace", Path(dst).name, src)
        real_replace(src, dst)
        on_event("replaced", Path(dst).name, dst)

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        match = TEMPORARY.match(Path(path).name)
        if match:
            on_event("fsync", match.group(1), path)
        real_fsync(fd)

    def accumulate(*args, **kwargs):
        on_event("step", None, None)
        return real_accumulate(*args, **kwargs)

    def validation(*args, **kwargs):
        on_event("validation", None, None)
        return real_validation(*args, **kwargs)

    real_compiled_step = train_module.compiled_step

    def compiled_step(*args, **kwargs):  # --compile step: the program's steps are the run's steps
        program = real_compiled_step(*args, **kwargs)

        def step(*step_args, **step_kwargs):
            on_event("step", None, None)
            return program(*step_args, **step_kwargs)

        return step if program is not None else None

    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    monkeypatch.setattr(train_module, "accumulate_gradients", accumulate)
    monkeypatch.setattr(train_module, "validation_bound", validation)
    monkeypatch.setattr(train_module, "compiled_step", compiled_step)


def _run_killed(args: list[str], point: tuple, name_events=lambda on_event: on_event) -> None:
    """Runs ``iwae ARGS`` in a forked child that SIGKILLs itself at ``point``; asserts it died so.
    ``name_events`` wraps the child's event handler (to rename events, see :func:`_member_events`)."""
    kind, name, occurrence = point
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            torch.set_num_threads(1)  # an OpenMP pool the parent started does not survive fork(): stay serial
            counts: collections.Counter = collections.Counter()

            def on_event(k, n, path):
                counts[k, n] += 1
                if (k, n) == (kind, name) and counts[k, n] == occurrence:
                    if k == "fsync":  # what a kill during the write leaves: the first half
                        os.truncate(path, os.path.getsize(path) // 2)
                    _die()

            with pytest.MonkeyPatch.context() as mp:
                _install_hooks(mp, name_events(on_event))
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1), os.dup2(devnull, 2)
                main([str(a) for a in args], standalone_mode=False)
            os._exit(0)  # finished without reaching the kill point
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the run was not killed at {point}: exit status {os.waitstatus_to_exitcode(status)}"
    )


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory, mnist_splits) -> str:
    """60 training, 20 validation, 20 test MNIST images (grey levels: binarized dynamically)."""
    return write_small_npz(tmp_path_factory.mktemp("data"), mnist_splits, 60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_npz) -> Path:
    """The uninterrupted run, with the events it passes through counted (the kill points exist)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    events: collections.Counter = collections.Counter()
    with pytest.MonkeyPatch.context() as mp:
        _install_hooks(mp, lambda kind, name, path: events.update([(kind, name)]))
        result = invoke("train", "--dataset", small_npz, *TRAIN_ARGS, "--out", out)
    assert result.exit_code == 0, result.output
    assert events["step", None] == 18 and events["validation", None] == 3
    for name, n in WRITES.items():
        assert events["fsync", name] == events["replace", name] == events["replaced", name] == n, name
    for kind, name, occurrence in KILL_POINTS + [p for chain in KILL_CHAINS for p in chain]:
        assert events[kind, name] >= occurrence, (kind, name, occurrence)
    return out


def assert_complete(run_dir: Path) -> None:
    """Every run file under its real name is whole, and the weights are never behind the checkpoint."""
    if (run_dir / "config.yaml").exists():
        TrainConfig.from_yaml(run_dir / "config.yaml")
    for name in ("model.safetensors", "checkpoint.safetensors"):
        if (run_dir / name).exists():
            load_tensors(run_dir / name)  # raises CheckpointError on a partial file
    if (run_dir / "metrics.csv").exists():
        rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
        assert rows and all(None not in r and all(v != "" for v in r.values()) for r in rows)
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    if (run_dir / "checkpoint.safetensors").exists():
        ckpt_epoch = load_tensors(run_dir / "checkpoint.safetensors")[1]["epoch"]
        assert load_tensors(run_dir / "model.safetensors")[1]["epoch"] >= ckpt_epoch


def assert_same_run(ref: Path, out: Path) -> None:
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, meta_a = load_tensors(ref / name)
        b, meta_b = load_tensors(out / name)
        assert sorted(a) == sorted(b), name
        for key in a:  # weights, Adam moments and steps, both RNG states
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{name}: {key} differs"
        assert meta_a["epoch"] == meta_b["epoch"] and meta_a.get("step") == meta_b.get("step")
    rows_a = list(csv.DictReader((ref / "metrics.csv").read_text().splitlines()))
    rows_b = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    timing = {"epoch_time_s", "examples_per_s", "wall_time_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows_b
    ]
    # no temporary file is left (the hidden mark, which command created the folder, is no temporary)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != MARKER]


def _kill_and_resume(points: list[tuple], out: Path, small_npz: str, reference: Path, extra: tuple = ()) -> None:
    start = ["train", "--dataset", small_npz, *map(str, TRAIN_ARGS), *extra, "--out", str(out)]
    _run_killed(start, points[0])
    assert_complete(out)
    for point in points[1:]:
        _run_killed(["train", "--resume", str(out), "--quiet"], point)
        assert_complete(out)
    if not (out / "config.yaml").exists():
        # killed before the run's config was written: nothing to resume from, and the same
        # command may be run again into the same folder
        assert_one_line_error(invoke("train", "--resume", out, "--quiet"), "no config.yaml")
        result = invoke(*start)
        assert result.exit_code == 0, result.output
    else:
        result = invoke("train", "--resume", out, "--quiet")
        assert result.exit_code == 0, result.output
        assert re.search(r"resuming .* from epoch \d|starting it from the beginning|nothing to do", result.output)
    assert_same_run(reference, out)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork and /proc (Linux)")
@pytest.mark.parametrize("point", KILL_POINTS, ids=[f"{k}-{n or ''}-{i}" for k, n, i in KILL_POINTS])
def test_kill_9_then_resume_is_bit_exact(tmp_path, small_npz, reference, point):
    _kill_and_resume([point], tmp_path / "run", small_npz, reference)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork and /proc (Linux)")
@pytest.mark.parametrize("chain", KILL_CHAINS, ids=["step-then-checkpoint", "checkpoint-then-validation"])
def test_killed_again_while_resuming(tmp_path, small_npz, reference, chain):
    _kill_and_resume(chain, tmp_path / "run", small_npz, reference)


def test_the_kill_points_are_spread_over_the_run():
    assert len(KILL_POINTS) + sum(len(c) for c in KILL_CHAINS) >= 20
    kinds = collections.Counter(kind for kind, _, _ in KILL_POINTS)
    assert {"fsync", "replace", "replaced", "step", "validation"} <= set(kinds)
    for name, n in WRITES.items():  # half-way through the first and the last write of every file
        assert ("fsync", name, 1) in KILL_POINTS and ("fsync", name, n) in KILL_POINTS


# ----------------------------------------------------------------------------- the compiled step (--compile step)
# kills of a run whose step is one compiled program (iwae.compiled.step): mid-epoch after a step-4 checkpoint,
# half-way through a checkpoint, at a validation, in the last epoch; resumed, compiled again from the config
COMPILED_KILLS = [
    ("step", None, 5),
    ("fsync", "checkpoint.safetensors", 3),
    ("validation", None, 2),
    ("step", None, 13),
]


@pytest.fixture(scope="module")
def compiled_reference(tmp_path_factory, small_npz, reference) -> Path:
    """The uninterrupted compiled run: its events are the eager run's, its numbers the eager run's to
    float rounding (the random streams exactly). The forked children reuse its program (compiled once)."""
    out = tmp_path_factory.mktemp("compiled") / "run"
    events: collections.Counter = collections.Counter()
    with pytest.MonkeyPatch.context() as mp:
        _install_hooks(mp, lambda kind, name, path: events.update([(kind, name)]))
        result = invoke("train", "--dataset", small_npz, *TRAIN_ARGS, "--compile", "step", "--out", out)
    assert result.exit_code == 0, result.output
    assert events["step", None] == 18 and events["validation", None] == 3
    compiled, eager = (
        load_tensors(out / "checkpoint.safetensors")[0],
        load_tensors(reference / "checkpoint.safetensors")[0],
    )
    for key, value in eager.items():
        if key.startswith("rng.") or key.endswith(".step"):
            assert torch.equal(compiled[key], value), key
        else:
            torch.testing.assert_close(compiled[key], value, rtol=1e-3, atol=1e-4, msg=lambda m: f"{key}: {m}")
    return out


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork and /proc (Linux)")
@pytest.mark.parametrize("point", COMPILED_KILLS, ids=[f"{k}-{n or ''}-{i}" for k, n, i in COMPILED_KILLS])
def test_a_compiled_run_killed_then_resumed_is_bit_exact(tmp_path, small_npz, compiled_reference, point):
    _kill_and_resume([point], tmp_path / "run", small_npz, compiled_reference, extra=("--compile", "step"))


# ----------------------------------------------------------------------------- batched members (issue 20, 7)
# two seeds trained as one batched model (``--seeds``): each checkpoint of the group is one commit,
# both members' staged checkpoints, then the commit record, then both renamed into place. A kill
# between or inside those writes must leave both members at one step and resume bit for bit.
SEEDS = "0,1"
MEMBER_ARGS = tuple(a for a in TRAIN_ARGS[:-3]) + ("--quiet",)  # no --seed: --seeds gives them
STAGED = "checkpoint.staged.safetensors"
RECORD = "group-record"  # .iwae-group-<digest>.json, by this name in the events
MEMBER_KILL_POINTS = [
    ("fsync", STAGED, 1),  # inside the first member's first staged write
    ("replaced", STAGED, 1),  # between the two members' staged writes
    ("replaced", STAGED, 2),  # both staged, no record yet
    ("fsync", RECORD, 2),  # the record half-written
    ("replaced", RECORD, 3),  # committed, neither renamed into place
    ("replaced", "checkpoint.safetensors", 5),  # committed, one member renamed into place, the other not
    ("replace", "checkpoint.safetensors", 8),  # the second member's rename of the epoch-2 commit
    ("fsync", "model.safetensors", 3),  # between the epoch's model writes (before its commit)
    ("fsync", "metrics.csv", 2),  # after the epoch's commit, between the members' metrics
    ("fsync", STAGED, 11),  # inside the first member's last staged write
]
MEMBER_KILL_CHAINS = [[("replaced", STAGED, 1), ("replaced", RECORD, 2)]]


def _member_events(on_event):
    """``on_event`` with the group record's name (it holds a digest) given as :data:`RECORD`."""
    return lambda kind, name, path: on_event(kind, RECORD if (name or "").startswith(".iwae-group-") else name, path)


@pytest.fixture(scope="module")
def member_reference(tmp_path_factory, small_npz) -> Path:
    """The uninterrupted group, with the events it passes through counted (the kill points exist)."""
    out = tmp_path_factory.mktemp("members") / "group"
    events: collections.Counter = collections.Counter()
    with pytest.MonkeyPatch.context() as mp:
        _install_hooks(mp, _member_events(lambda kind, name, path: events.update([(kind, name)])))
        result = invoke("train", "--dataset", small_npz, *MEMBER_ARGS, "--seeds", SEEDS, "--batch", "--out", out)
    assert result.exit_code == 0, result.output
    assert events["fsync", STAGED] == 12 and events["fsync", RECORD] == 6  # 6 commits of 2 members
    assert events["replaced", "checkpoint.safetensors"] == 12
    for kind, name, occurrence in MEMBER_KILL_POINTS + [p for chain in MEMBER_KILL_CHAINS for p in chain]:
        assert events[kind, name] >= occurrence, (kind, name, occurrence)
    return out


def _members_stand_together(out: Path) -> None:
    """Each member's files are whole, and every member's checkpoint (the committed one: a staged file
    a record commits counts, see iwae.rundir.group) stands at the same step as the others'."""
    steps = set()
    for member in sorted(p for p in out.iterdir() if p.is_dir()):
        path = checkpoint_path(member)
        if path.is_file():
            steps.add(load_tensors(path)[1]["step"])
        else:
            steps.add(None)
    assert len(steps) == 1, f"members at different steps after the kill: {steps}"


def _kill_and_resume_members(points: list[tuple], out: Path, small_npz: str, reference: Path) -> None:
    start = ["train", "--dataset", small_npz, *map(str, MEMBER_ARGS), "--seeds", SEEDS, "--batch", "--out", str(out)]
    _run_killed(start, points[0], _member_events)
    _members_stand_together(out)
    # resumed as started (--batch): after a group's first commit its checkpoints say so, and --resume alone
    # would go on batched too; a kill before it leaves nothing that says how the group was started
    for point in points[1:]:
        _run_killed(["train", "--resume", str(out), "--batch", "--quiet"], point, _member_events)
        _members_stand_together(out)
    result = invoke("train", "--resume", out, "--batch", "--quiet")
    assert result.exit_code == 0, result.output
    for seed in (0, 1):
        assert_same_run(reference / f"seed{seed}", out / f"seed{seed}")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no record or temporary left


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork and /proc (Linux)")
@pytest.mark.parametrize("point", MEMBER_KILL_POINTS, ids=[f"{k}-{n or ''}-{i}" for k, n, i in MEMBER_KILL_POINTS])
def test_a_killed_group_of_members_resumes_bit_exact(tmp_path, small_npz, member_reference, point):
    _kill_and_resume_members([point], tmp_path / "group", small_npz, member_reference)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork and /proc (Linux)")
def test_a_group_killed_again_while_resuming(tmp_path, small_npz, member_reference):
    _kill_and_resume_members(MEMBER_KILL_CHAINS[0], tmp_path / "group", small_npz, member_reference)


# ----------------------------------------------------------------------------- reproduce with a worker pool
# two runs of their own (not batched), each in a worker process of its own: the reproduction, its
# workers included, is killed (SIGKILL to the process group) while both train, then run again
POOL_RUN = {"latent_dims": [4], "hidden_dims": [[16]], "batch_size": 10, "checkpoint_every": 50}
POOL_PROTOCOL = {"epochs": 4, "train_subset": 2000, "test_subset": 10, "eval_k": 4}


def _reproduction(exp: Path, out: Path, data_dir: Path) -> list[str]:
    return [
        sys.executable, "-c", "from iwae.cli import main; main()", "reproduce", str(exp), "--out", str(out),
        "--data-dir", str(data_dir), "--workers", "2", "--threads", "1", "--no-batch", "--quiet",
    ]  # fmt: skip


@pytest.mark.skipif(sys.platform != "linux", reason="needs process groups and /proc (Linux)")
def test_a_reproduction_with_a_worker_pool_killed_resumes_bit_exact(tmp_path, shared_data_dir):
    runs = [
        {"name": "a", "objective": "iwae", "k": 3, **POOL_RUN},
        {"name": "b", "objective": "vae", "k": 1, **POOL_RUN},
    ]
    exp = tmp_path / "pool.yaml"
    exp.write_text(yaml.safe_dump({"name": "pool", "runs": runs, "protocols": {"short": POOL_PROTOCOL}}))
    reference = tmp_path / "reference"
    done = subprocess.run(_reproduction(exp, reference, shared_data_dir), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "out"
    folders = [out / "runs" / r["name"] for r in runs]
    proc = subprocess.Popen(
        _reproduction(exp, out, shared_data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes its workers too
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        started = all((f / "checkpoint.safetensors").is_file() for f in folders)  # both past step 50
        if started and not any((f / "result.json").exists() for f in folders):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the reproduction finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not all((f / "result.json").exists() for f in folders)
    deadline = time.time() + 60  # SIGKILL reaches the workers at once, but they take a moment to exit
    while time.time() < deadline and any(holder_of(f) is not None for f in folders):
        time.sleep(0.05)
    for folder in folders:
        assert holder_of(folder) is None  # the killed workers' locks went with them
        assert_complete(folder)

    done = subprocess.run(_reproduction(exp, out, shared_data_dir), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    for folder in folders:
        assert_same_run(reference / "runs" / folder.name, folder)
        ours, theirs = (json.loads((f / "result.json").read_text()) for f in (folder, reference / "runs" / folder.name))
        assert ours["metrics"] == theirs["metrics"], folder.name


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs fork and /proc (Linux)")
def test_without_the_group_commit_a_kill_leaves_members_apart(tmp_path, small_npz, monkeypatch):
    """Negative control: each member's checkpoint written in place at once (as before the group commit),
    a kill between two members' writes leaves them at different steps, which the check above catches."""
    real = rundir_module.save_checkpoint
    monkeypatch.setattr(rundir_module, "save_checkpoint", lambda *a, **k: real(*a, **{**k, "commit": None}))
    out = tmp_path / "group"
    start = ["train", "--dataset", small_npz, *map(str, MEMBER_ARGS), "--seeds", SEEDS, "--batch", "--out", str(out)]
    _run_killed(start, ("replaced", "checkpoint.safetensors", 1), _member_events)
    with pytest.raises(AssertionError, match="members at different steps"):
        _members_stand_together(out)
