"""Resuming a run: the config it resumes with, and whether (and from where) a run folder may be trained."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import rundir
from ..config.train import RESUMABLE, TrainConfig
from ..errors import CheckpointError, ConfigError

__all__ = ["resume_config", "resume_point"]


def resume_config(run_dir: str | os.PathLike, changes: dict) -> TrainConfig:
    """The config to resume ``run_dir`` with: its config.yaml with ``changes`` applied, which may only
    be of the RESUMABLE settings (``out`` is the run directory itself and is ignored).

    Raises:
        CheckpointError: no such directory, or no config.yaml in it.
        ConfigError: ``changes`` would change what the run is (its objective, k, seed, ...).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    if not (run_dir / rundir.CONFIG).is_file():
        raise CheckpointError(
            f"cannot resume {run_dir}: it holds no config.yaml (the run was stopped before "
            f"it started); train it again with --out {run_dir}"
        )
    values = rundir.read_config(run_dir).to_dict()
    # device may change within a device type (cuda:0 -> cuda:1); train() refuses another type
    fixed = sorted(set(changes) - set(RESUMABLE) - {"out"})
    if fixed:
        raise ConfigError(
            f"cannot change {', '.join(fixed)} when resuming; only {', '.join(RESUMABLE[:-1])} "
            f"and {RESUMABLE[-1]} may change",
            fixed,
        )
    values.update({name: value for name, value in changes.items() if name in RESUMABLE})
    values["out"] = str(run_dir)
    return TrainConfig.from_dict(values)  # train() writes it to config.yaml once it is checked


def resume_point(config: TrainConfig, *, resume: bool, overwrite: bool) -> tuple[tuple | None, bool]:
    """Whether ``config.out`` may be trained, and from where: ``(checkpoint, finished)``.

    ``checkpoint`` is the ``(tensors, metadata)`` a resume continues from (None: start from the
    beginning), ``finished`` whether it has trained all of ``config``'s epochs already. A run to
    resume must be the same run (:func:`iwae.rundir.check_same_run`), on the device type its
    checkpoint was written on, trained for no more epochs than asked; without ``resume`` the folder
    must be empty, hold only a run stopped before its first checkpoint, or ``overwrite`` be given.
    Shared by :func:`train` and :func:`iwae.members.train_members`, so a member resumes as its run would.
    """
    run_dir, total_epochs = Path(config.out), config.total_epochs
    if overwrite and not resume and run_dir.is_symlink():  # before the data are loaded; prepare() refuses it too
        rundir.check_replaceable(run_dir, "iwae train")
    if resume:
        if not run_dir.is_dir():
            raise CheckpointError(f"cannot resume: run directory {run_dir} not found")
        rundir.check_same_run(run_dir, config)
        rundir.settle(run_dir)  # a group commit a kill interrupted: finished or undone (under the run's lock)
        if rundir.has_checkpoint(run_dir):
            saved = rundir.read_checkpoint(run_dir)
            done = saved[1].get("epoch")
            if not isinstance(done, int):
                raise CheckpointError(f"{run_dir / rundir.CHECKPOINT} has no epoch count; was it written by iwae?")
            if done > total_epochs:
                raise ValueError(
                    f"cannot resume {run_dir} for {total_epochs} epochs: it has trained {done}; "
                    f"ask for --epochs {done} or more, or train a new run"
                )
            if rundir.finished_training(saved[1], total_epochs):  # all epochs, or stopped early
                return saved, True
            rundir.check_same_device_type(run_dir / rundir.CHECKPOINT, *saved, config.device)
            return saved, False
        if not rundir.only_start_files(run_dir):
            raise CheckpointError(
                f"cannot resume {run_dir}: it holds a trained model but no checkpoint.safetensors "
                f"(Adam's state and the random streams are gone); train a new run, or pass "
                f"--overwrite to start this one again"
            )
        print(
            f"{run_dir} holds no checkpoint (it was stopped before its first one): starting it from the beginning",
            file=sys.stderr,
        )
    elif not rundir.is_empty(run_dir) and not overwrite and not rundir.only_start_files(run_dir):
        raise FileExistsError(
            f"run directory {run_dir} exists and is not empty; choose another --out, --resume it, or pass --overwrite"
        )
    return None, False
