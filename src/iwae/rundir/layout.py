"""The layout of a run directory: its file names, and the operations on the folder as a whole (create,
clear, delete, copy its files to or from another machine). Every file is written atomically
(:mod:`iwae.checkpoint`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import strict_json
from ..checkpoint import WriteError, atomic_write, check_writable, remove_temporaries
from ..config.train import CONFIG_FILE

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


def is_empty(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is missing or holds nothing."""
    run_dir = Path(run_dir)
    return not run_dir.exists() or not any(run_dir.iterdir())


def clear_start_files(run_dir: str | os.PathLike) -> None:
    for name in START_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare(run_dir: str | os.PathLike, *, replace: bool = False, clear_start: bool = False) -> None:
    """Makes ``run_dir`` ready to write into: deleted first (``replace``) or cleared of a run stopped
    before its first checkpoint (``clear_start``), created, checked writable (a read-only folder
    fails now, not after the first epoch), and rid of the temporary files a kill -9 left."""
    run_dir = Path(run_dir)
    if run_dir.exists() and replace:
        shutil.rmtree(run_dir)
    elif run_dir.exists() and clear_start:
        clear_start_files(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"could not create run directory {run_dir}: {e.strerror or e}") from e
    check_writable(run_dir, CHECKPOINT)
    remove_temporaries(run_dir, RUN_FILES)


def delete(run_dir: str | os.PathLike) -> None:
    """Deletes the run directory and everything in it."""
    shutil.rmtree(run_dir)


def remove_run_temporaries(run_dir: str | os.PathLike) -> None:
    remove_temporaries(run_dir, RUN_FILES)


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
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    if without_results:
        files = {k: v for k, v in files.items() if k not in (RESULT_FILE, ERROR_FILE)}
    return files


def write_files(run_dir: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Writes files as :func:`read_files` returns them, each atomically, result.json last: it marks the
    run finished, so everything it describes must be there before it."""
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
