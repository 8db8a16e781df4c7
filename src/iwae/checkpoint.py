"""Run directories: atomic writes, safetensors checkpoints that load without executing code.

A run directory holds

    config.yaml               the resolved training config (re-runnable with ``iwae train --config``)
    model.safetensors         the model's weights; metadata: model config and epoch
    checkpoint.safetensors    everything needed to resume: weights, optimizer state, RNG state,
                              epoch, step and the metrics so far, in one file
    metrics.csv               one row per epoch
    tb/                       TensorBoard event files

Every file is written to a temporary file in the same folder, flushed and renamed over the old
one (``os.replace`` is atomic on POSIX), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

__all__ = ["atomic_write", "save_tensors", "load_tensors", "CheckpointError"]


_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A run directory or checkpoint file is missing, corrupt or inconsistent."""


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success syncs it and renames it over ``path``, else deletes it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); give the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
        save_file(tensors, tmp, metadata={"json": json.dumps(metadata or {})})


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
