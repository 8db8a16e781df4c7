"""Atomic writes and safetensors files that load without executing code: the primitives under
:mod:`iwae.rundir`, which knows what a run directory holds (this module knows no file names).

Every file is written to a temporary file in the same folder (``.NAME.XXXX.tmp``), flushed and
renamed over the old one (``os.replace`` is atomic on POSIX), so a killed run never leaves a
half-written file under its real name; :func:`remove_temporaries` clears the temporary files a
kill -9 leaves behind. A write that fails (full disk, read-only folder) raises :class:`WriteError`
and leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, WriteError

__all__ = [
    "atomic_write",
    "save_tensors",
    "load_tensors",
    "remove_temporaries",
    "check_writable",
    "CheckpointError",
    "WriteError",
]


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _write_error(path: Path, e: OSError) -> WriteError:
    reason = os.strerror(e.errno) if e.errno else str(e)
    hint = {
        errno_module.ENOSPC: "; free some space and resume",
        errno_module.EACCES: "; is the folder writable?",
        errno_module.EPERM: "; is the folder writable?",
        errno_module.EROFS: "; the file system is read-only",
    }.get(e.errno, "")
    return WriteError(f"could not write {path}: {reason}{hint} (the previous {path.name}, if any, is unchanged)")


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success syncs it and renames it over ``path``, else deletes it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield tmp
        # mkstemp makes files private (0600), and safetensors' writer recreates the file with that
        # mode too: give the finished file the usual permissions (0644 under umask 022)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(path, e) from e
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside ``path``; on success renames it over ``path``, else deletes it."""
    with _atomic_path(Path(path)) as tmp, open(tmp, mode) as f:
        yield f


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Writes ``tensors`` to a safetensors file atomically; ``metadata`` is stored as JSON under key ``json``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with _atomic_path(Path(path)) as tmp:
        try:
            save_file(tensors, tmp, metadata={"json": json.dumps(metadata or {})})
        except SafetensorError as e:  # the Rust writer reports I/O errors (a full disk) this way
            raise WriteError(
                f"could not write {path}: {e} (the previous {Path(path).name}, if any, is unchanged)"
            ) from e


def check_writable(folder: str | os.PathLike, name: str = "a file") -> None:
    """Raises :class:`WriteError` unless a file can be created in ``folder`` (before hours of work
    that could not be saved); leaves nothing behind. The message names ``folder / name``."""
    folder = Path(folder)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise _write_error(folder / name, e) from e


_TEMPORARY = re.compile(r"^\..+\.[^.]+\.tmp$")  # .NAME.XXXXXXXX.tmp, as _atomic_path names them


def remove_temporaries(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Deletes the temporary files that writes of ``names`` (e.g. ``("metrics.csv",)``) left in ``folder``
    when the process was killed mid-write; returns what it deleted."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if _TEMPORARY.match(path.name) and any(path.name.startswith(f".{name}.") for name in names):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path)
    return removed


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads a file written by :func:`save_tensors`: ``(tensors, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("json", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e}); delete it or restore a copy") from e
    return tensors, meta
