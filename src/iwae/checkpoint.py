"""Atomic writes and safetensors files that load without executing code: the primitives under
:mod:`iwae.rundir`, which knows what a run directory holds (this module knows no file names).

Every file is written to a temporary file in the same folder (``.NAME.XXXX.tmp``), flushed and
renamed over the old one (``os.replace`` is atomic on POSIX), so a killed run never leaves a
half-written file under its real name; :func:`remove_temporaries` clears the temporary files a
kill -9 leaves behind. A write that fails (full disk, read-only folder) raises :class:`WriteError`
and leaves the old file as it was.

Every safetensors file written here carries the SHA-256 of its tensors (:func:`tensors_sha256`: names,
dtypes, shapes and bytes) in its metadata, computed from the tensors as they are written, and
:func:`load_tensors` recomputes it from the tensors it read: a flipped bit, a truncated copy or an
edited tensor is refused in one line. A file written before the digest existed (no ``tensors_sha256``)
is read with an :class:`~iwae.errors.UncheckedWarning` that says it cannot be checked.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import strict_json
from .errors import CheckpointError, UncheckedWarning, WriteError

__all__ = [
    "atomic_write",
    "tensors_sha256",
    "save_tensors",
    "load_tensors",
    "read_metadata",
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


DIGEST_KEY = "tensors_sha256"  # the safetensors metadata key of the tensors' digest, beside "json"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a dict of tensors: for each name in sorted order, the name, dtype and shape, then the
    tensor's bytes (C order, on the CPU). What a safetensors file of the package records of its tensors."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Writes ``tensors`` to a safetensors file atomically; ``metadata`` is stored as strict JSON under key
    ``json`` (a non-finite number as null), the tensors' digest (:func:`tensors_sha256`) under ``tensors_sha256``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"json": strict_json.dumps(metadata or {}), DIGEST_KEY: tensors_sha256(tensors)}
    with _atomic_path(Path(path)) as tmp:
        try:
            save_file(tensors, tmp, metadata=header)
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


def _header(path: Path) -> dict[str, str]:
    """The safetensors metadata of ``path`` (the header only: no tensor is read)."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e}); delete it or restore a copy") from e


def _metadata(path: Path, header: dict[str, str]) -> dict:
    try:
        meta = json.loads(header.get("json", "{}"))
    except ValueError as e:
        raise CheckpointError(f"{path} has metadata that is not JSON ({e}); delete it or restore a copy") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has metadata that is not a JSON object; delete it or restore a copy")
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a file written by :func:`save_tensors`, from its header alone: neither its tensors
    nor their digest are read or checked (:func:`load_tensors` does both)."""
    path = Path(path)
    return _metadata(path, _header(path))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads a file written by :func:`save_tensors`: ``(tensors, metadata)``, after checking the tensors
    against the digest written with them (a file without one, from an older iwae, with an UncheckedWarning).

    Raises:
        CheckpointError: the file is missing, not safetensors, or its tensors are not the ones its digest
            was computed from (corrupted or edited).
    """
    path = Path(path)
    header = _header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e}); delete it or restore a copy") from e
    recorded = header.get(DIGEST_KEY)
    if recorded is None:
        warnings.warn(
            f"{path} carries no digest of its tensors (written by an older iwae): it cannot be checked for "
            f"corruption; saving it again (iwae train --resume, iwae.rundir.save_model) adds one",
            UncheckedWarning,
            stacklevel=2,
        )
    elif tensors_sha256(tensors) != recorded:
        raise CheckpointError(
            f"{path} is corrupt: its tensors do not match the SHA-256 written with them (a flipped bit, a "
            f"damaged copy or an edited file); restore a copy of the run"
        )
    return tensors, _metadata(path, header)
