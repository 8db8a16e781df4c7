"""Committing the checkpoints of runs trained as one batched model at once: all members' state, then one
commit record, so that a kill at any moment leaves every member at the same step.

A group checkpoint is written in three steps (:func:`iwae.members.train_members` does them):

1. each member's checkpoint goes to ``checkpoint.staged.safetensors`` in its folder, its metadata naming
   the commit it belongs to (``group_commit``: an id and where the record is);
2. the commit record, ``.iwae-group-<digest>.json`` in the members' common folder (else in the first
   member's), is written atomically with that id: this is the moment the group's step is committed;
3. each member's staged file is renamed over its ``checkpoint.safetensors`` (:func:`settle`), and
   then the record, which commits nothing any more, is deleted (:func:`close_group`).

A kill before step 2 leaves staged files no record commits: they are discarded, and every member
resumes from the previous commit. A kill after it leaves staged files the record commits: they are
the members' checkpoints (:func:`committed_stage`; readers see them already), and the next writer
renames them into place. Either way the members stand together, and the group resumes as a single
run does, bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .. import strict_json
from ..checkpoint import atomic_write, remove_temporaries
from ..errors import CheckpointError
from .layout import CHECKPOINT, STAGED

__all__ = ["STAGED", "header", "group_record", "commit_group", "committed_stage", "settle", "close_group"]


def group_record(run_dirs: Sequence[str | os.PathLike]) -> Path:
    """Where the commit record of the group ``run_dirs`` lives: ``.iwae-group-<digest>.json`` in their
    common parent folder (``OUT`` of ``--seeds``, ``runs/`` of a reproduction), else in the first
    member's folder; the digest is of the members' names, so two groups never share a record."""
    folders = [Path(d) for d in run_dirs]
    digest = hashlib.sha256("\0".join(sorted(f.name for f in folders)).encode()).hexdigest()[:12]
    parents = {os.path.realpath(f.parent) for f in folders}
    home = folders[0].parent if len(parents) == 1 else folders[0]
    return home / f".iwae-group-{digest}.json"


def header(path: str | os.PathLike) -> dict:
    """The metadata of a safetensors file written by :func:`iwae.checkpoint.save_tensors`, from its header
    only (the tensors are not read); ``{}`` if it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("json", "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _stage_meta(path: Path) -> dict | None:
    """The ``group_commit`` entry of a staged checkpoint's metadata, or None (an unreadable file: no
    commit can name it)."""
    commit = header(path).get("group_commit")
    return commit if isinstance(commit, dict) else None


def commit_group(record: Path, commit_id: str, run_dirs: Sequence[str | os.PathLike], epoch: int, step: int) -> None:
    """Writes the commit record (step 2 of the module's docstring): from now on the staged checkpoints
    of commit ``commit_id`` are the members' checkpoints."""
    value = {
        "id": commit_id,
        "members": [Path(d).name for d in run_dirs],
        "epoch": epoch,
        "step": step,
        "committed": datetime.now().isoformat(timespec="seconds"),
    }
    with atomic_write(record) as f:
        strict_json.dump(value, f, indent=1)


def committed_stage(run_dir: str | os.PathLike) -> Path | None:
    """``run_dir``'s staged checkpoint if its group's record commits it (then it, not checkpoint.safetensors,
    is the run's checkpoint), else None."""
    path = Path(run_dir) / STAGED
    if not path.is_file():
        return None
    commit = _stage_meta(path)
    if commit is None or not isinstance(commit.get("record"), str):
        return None
    try:
        record = json.loads((Path(run_dir) / commit["record"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return path if isinstance(record, dict) and record.get("id") == commit.get("id") else None


def settle(run_dir: str | os.PathLike) -> str | None:
    """Finishes or undoes a group commit a kill interrupted in ``run_dir`` (by the folder's lock holder):
    a committed staged checkpoint is renamed over checkpoint.safetensors (``"committed"``), one no
    record commits is deleted (``"discarded"``); None when there is none."""
    run_dir = Path(run_dir)
    path = run_dir / STAGED
    if not path.is_file():
        return None
    try:
        if committed_stage(run_dir) is not None:
            os.replace(path, run_dir / CHECKPOINT)
            return "committed"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    except OSError as e:
        raise CheckpointError(f"could not settle the group checkpoint {path}: {e.strerror or e}") from e
    return "discarded"


def close_group(record: Path) -> None:
    """Deletes the commit record once every member's staged checkpoint is settled (step 3 of the module's
    docstring), and any temporary file a kill left while writing it: it commits nothing any more. A
    kill before this leaves a record no staged file names, which the next commit replaces."""
    with contextlib.suppress(FileNotFoundError):
        record.unlink()
    remove_temporaries(record.parent, (record.name,))
