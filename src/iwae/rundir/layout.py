"""The layout of a run directory: its file names, and the operations on the folder as a whole (create,
clear, replace, delete, copy its files to or from another machine). Every file is written atomically
(:mod:`iwae.checkpoint`); the folder is created and replaced as :mod:`.folder` says, under the lock of
:mod:`.lock`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import strict_json
from ..checkpoint import WriteError, atomic_write, check_writable, remove_temporaries
from ..config.train import CONFIG_FILE
from . import folder as folder_module
from .lock import LOCK_FILE, FolderBusy, acquire_lock, held

__all__ = [
    "CONFIG",
    "MODEL",
    "CHECKPOINT",
    "METRICS",
    "TENSORBOARD",
    "RESULT_FILE",
    "ERROR_FILE",
    "START_FILES",
    "RUN_FILES",
    "is_empty",
    "run_folder",
    "clear_start_files",
    "prepare",
    "delete",
    "remove_run_temporaries",
    "read_files",
    "write_files",
    "model_bytes",
]

CONFIG, MODEL, CHECKPOINT, METRICS, TENSORBOARD = (
    CONFIG_FILE,
    "model.safetensors",
    "checkpoint.safetensors",
    "metrics.csv",
    "tb",
)
RESULT_FILE = "result.json"  # written last in a run directory: its presence marks a finished run
ERROR_FILE = "error.json"
# the files train() writes into a run directory when it starts, before its first checkpoint
START_FILES = (CONFIG, MODEL, METRICS, TENSORBOARD)
RUN_FILES = (CONFIG, MODEL, CHECKPOINT, METRICS)
STAGED = "checkpoint.staged.safetensors"  # a member's checkpoint before its group commits it (see .group)
_WRITTEN = (*RUN_FILES, STAGED)  # the files whose temporaries a kill may leave


def is_empty(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is missing or holds nothing (but iwae's own hidden files: its lock and mark)."""
    run_dir = Path(run_dir)
    return not run_dir.exists() or not folder_module.visible(run_dir)


def run_folder(folder: str | os.PathLike | None) -> Path | None:
    """``folder`` if it is a run folder (it holds config.yaml), else None: what a figure or study written
    into a folder must lock (:func:`iwae.rundir.writing`) besides the runs it reads."""
    return Path(folder) if folder is not None and (Path(folder) / CONFIG).is_file() else None


def clear_start_files(run_dir: str | os.PathLike) -> None:
    for name in START_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare(run_dir: str | os.PathLike, *, replace: bool = False, clear_start: bool = False) -> None:
    """Makes ``run_dir`` ready to write into, inside :func:`iwae.rundir.writing` of it: created (locked
    and marked), or replaced by an empty one (``replace``, if its holder may replace it, see
    :mod:`.folder`), or cleared of a run stopped before its first checkpoint (``clear_start``);
    checked writable (a read-only folder fails now, not after the first epoch), rid of the temporary
    files a kill -9 left, and marked if it holds nothing of another run.

    Raises:
        CheckpointError: a folder that may not be replaced (a link, one its holder did not create).
        FolderBusy: another process created the folder, or writes to it.
        WriteError: the folder or its parent is not writable.
    """
    run_dir = Path(run_dir)
    lock = held(run_dir)
    assert lock is not None, f"rundir.prepare({run_dir}) outside rundir.writing({run_dir}, ...)"
    if lock.fd is None and run_dir.is_dir():  # pending, but another process made the folder since
        lock.fd = acquire_lock(run_dir)
        if not is_empty(run_dir):
            raise FolderBusy(
                f"{run_dir} was created by another process while this one was starting; look at what is "
                f"in it, then run the command again"
            )
    if not run_dir.is_dir():
        folder_module.create(run_dir, lock)
    elif replace and not is_empty(run_dir):
        folder_module.replace(run_dir, lock)
    elif clear_start:
        clear_start_files(run_dir)
    check_writable(run_dir, CHECKPOINT)
    remove_temporaries(run_dir, _WRITTEN)
    if folder_module.created_by(run_dir) is None and (
        is_empty(run_dir) or set(folder_module.visible(run_dir)) <= set(START_FILES)
    ):
        folder_module.mark(run_dir, lock.command)  # nothing of another run in it: it is this command's now


def ensure(run_dir: str | os.PathLike) -> None:
    """Creates ``run_dir`` if it is missing: locked and marked if this process holds it pending
    (:func:`iwae.rundir.writing`), else as a plain folder."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        return
    lock = held(run_dir)
    if lock is not None and lock.fd is None:
        folder_module.create(run_dir, lock)
    else:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"could not create run directory {run_dir}: {e.strerror or e}") from e


def delete(run_dir: str | os.PathLike) -> None:
    """Deletes the run directory (inside :func:`iwae.rundir.writing` of it) if its holder may replace it
    (:func:`iwae.rundir.folder.check_replaceable`): renamed aside, then deleted, so that no reader
    sees it half deleted; a new run is then made by :func:`prepare`."""
    run_dir = Path(run_dir)
    lock = held(run_dir)
    assert lock is not None, f"rundir.delete({run_dir}) outside rundir.writing({run_dir}, ...)"
    folder_module.check_replaceable(run_dir, lock.command)
    folder_module.replace(run_dir, lock)  # an empty folder, still locked, in place of the old one


def remove_run_temporaries(run_dir: str | os.PathLike) -> None:
    remove_temporaries(run_dir, _WRITTEN)


def _write_json(path: Path, value) -> None:
    with atomic_write(path) as f:
        strict_json.dump(value, f, indent=1)  # no NaN or Infinity tokens: null


def _read_json(path: Path):
    """The JSON value in ``path``; None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_files(run_dir: str | os.PathLike, *, without_results: bool = False) -> dict[str, bytes]:
    """Every file of ``run_dir`` by relative path (e.g. to send a run to another machine)."""
    folder = Path(run_dir)
    # not the lock: it is this machine's (an empty file whose only content is the OS lock on it)
    files = {
        str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE
    }
    if without_results:
        files = {k: v for k, v in files.items() if k not in (RESULT_FILE, ERROR_FILE)}
    return files


def write_files(run_dir: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Writes files as :func:`read_files` returns them, each atomically, result.json last: it marks the
    run finished, so everything it describes must be there before it."""
    ensure(run_dir)
    for rel, data in sorted(files.items(), key=lambda item: item[0] == RESULT_FILE):
        path = Path(run_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            f.write(data)


def model_bytes(run_dir: str | os.PathLike) -> dict[str, bytes]:
    """The model file of ``run_dir`` as :func:`write_files` takes it (what a continued run needs of its
    dependency). A new-layout model needs its config.yaml too: it records the architecture."""
    run_dir = Path(run_dir)
    return {name: (run_dir / name).read_bytes() for name in (MODEL, CONFIG) if (run_dir / name).is_file()}
