"""A run folder as a whole: who created it, whether it may be replaced, and creating or replacing it so that
a reader sees the old folder or the new one, never a half-deleted one.

A folder iwae creates is marked: ``FOLDER/.iwae-created`` records the command that created it
(``iwae train``, ``iwae reproduce``). What may be replaced (``--overwrite``, a reproduction restarting
a run) follows from the mark:

- a folder holding nothing but iwae's own hidden files: always (there is nothing to lose);
- by ``iwae reproduce``: only a folder a reproduction created (its mark says so); the engine never
  deletes a folder it did not make, whatever its name;
- by anyone else (``iwae train --overwrite``): a folder iwae created, or a run folder of an older iwae
  (it holds config.yaml, model.safetensors or checkpoint.safetensors), never another folder;
- never a symbolic link (nor, through it, what it points to).

Creating and replacing go through a sibling ``.NAME.new-XXXX`` built and locked first: a new folder
is renamed into place (it is born locked, so no other writer can slip in); a replaced one is renamed
aside (``.NAME.old-XXXX``, then deleted) and the new one renamed into its place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from .. import strict_json
from ..checkpoint import WriteError, atomic_write
from ..errors import CheckpointError
from .lock import LOCK_FILE, FolderBusy, Lock, acquire_lock, release_lock

__all__ = [
    "MARKER",
    "PRIVATE_FILES",
    "REPRODUCE",
    "created_by",
    "mark",
    "visible",
    "check_replaceable",
    "create",
    "replace",
]

MARKER = ".iwae-created"
PRIVATE_FILES = (LOCK_FILE, MARKER)  # iwae's own hidden files: a folder of only these is empty
REPRODUCE = "iwae reproduce"  # the engine's command: it replaces only folders it created
_RUN_FILES = ("config.yaml", "model.safetensors", "checkpoint.safetensors")  # what any run folder holds
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def visible(folder: str | os.PathLike) -> list[str]:
    """The names in ``folder`` other than iwae's own hidden files (the lock and the mark)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in PRIVATE_FILES)


def created_by(folder: str | os.PathLike) -> str | None:
    """The command the mark of ``folder`` records, or None (no mark, or an unreadable one)."""
    try:
        value = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value.get("created_by") if isinstance(value, dict) and isinstance(value.get("created_by"), str) else None


def mark(folder: str | os.PathLike, command: str) -> None:
    """Marks ``folder`` as created by ``command`` (atomically)."""
    with atomic_write(Path(folder) / MARKER) as f:
        strict_json.dump({"created_by": command, "created": datetime.now().isoformat(timespec="seconds")}, f)


def check_replaceable(folder: str | os.PathLike, command: str) -> None:
    """Raises CheckpointError unless ``command`` may replace ``folder`` (the rules of the module's docstring)."""
    folder = Path(folder)
    if folder.is_symlink():
        raise CheckpointError(
            f"{folder} is a symbolic link (to {os.readlink(folder)}); iwae does not replace a link or what it "
            f"points to: give the folder itself, or remove the link"
        )
    if not folder.exists() or set(visible(folder)) <= {"error.json"}:
        return  # nothing to lose: iwae's hidden files, or the error of a run that never started
    by = created_by(folder)
    if command == REPRODUCE:
        if by != REPRODUCE:
            raise CheckpointError(
                f"{folder} was not created by iwae reproduce ({'it was made by ' + by if by else 'it has no mark'}), "
                f"so the reproduction does not replace it: move it away, or give another --out"
            )
    elif by is None and not any((folder / name).exists() for name in _RUN_FILES):
        raise CheckpointError(
            f"{folder} is not a run folder (it holds no config.yaml, model.safetensors or checkpoint.safetensors), "
            f"so --overwrite does not replace it: delete it yourself, or choose another --out"
        )


@contextlib.contextmanager
def _new_sibling(folder: Path, command: str):
    """A new locked, marked, empty folder beside ``folder`` (``.NAME.new-XXXX``): yields ``(path, fd)``;
    deleted (and unlocked) if the block fails."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.new-"))
        os.chmod(path, 0o777 & ~_UMASK)  # mkdtemp makes it private (0700): the usual mode of a folder
    except OSError as e:
        raise WriteError(f"could not create run directory {folder}: {e.strerror or e}") from e
    fd = None
    try:
        fd = acquire_lock(path)
        mark(path, command)
        yield path, fd
    except BaseException:
        release_lock(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise


def create(folder: str | os.PathLike, lock: Lock) -> None:
    """Creates ``folder``, locked by ``lock`` (pending until now) and marked by its command.

    Raises:
        FolderBusy: another process created it in the meantime (and may be writing to it).
        WriteError: its parent cannot be written.
    """
    folder = Path(folder)
    with _new_sibling(folder, lock.command) as (path, fd):
        try:
            os.rename(path, folder)  # fails if another process made a folder there with something in it
        except OSError as e:
            raise FolderBusy(
                f"{folder} was created by another process while this one was starting; look at what is "
                f"in it, then run the command again"
            ) from e
    lock.fd = fd


def replace(folder: str | os.PathLike, lock: Lock) -> None:
    """Replaces ``folder`` (locked by ``lock``) with an empty one, locked and marked: the old folder is
    renamed aside and the new one into its place, so a reader sees one or the other (or, between the
    two renames, none), never a folder half deleted. The old folder is then deleted.

    Raises:
        CheckpointError: ``lock``'s command may not replace it (:func:`check_replaceable`).
        WriteError: its parent cannot be written (nothing is changed).
    """
    folder = Path(folder)
    check_replaceable(folder, lock.command)
    with _new_sibling(folder, lock.command) as (path, fd):
        aside = None
        try:
            aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            os.rename(folder, aside)  # over the empty folder just made: the name is ours
        except OSError as e:
            with contextlib.suppress(OSError, TypeError):
                os.rmdir(aside)
            raise WriteError(f"could not replace {folder}: {e.strerror or e} (nothing was changed)") from e
        try:
            os.rename(path, folder)
        except OSError as e:
            os.rename(aside, folder)  # put the old run back
            raise FolderBusy(f"{folder} was recreated by another process while it was being replaced") from e
    release_lock(lock.fd)  # the old folder's lock: it holds nothing any more
    lock.fd = fd
    shutil.rmtree(aside, ignore_errors=True)
    if aside.exists():
        print(f"could not delete all of the replaced run, left in {aside}", file=sys.stderr)
