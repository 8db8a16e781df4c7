"""One writer per folder: an OS advisory lock held by every command while it writes into a run folder.

    with rundir.writing("runs/iwae-k5", "iwae evaluate"):   # refused if another process writes there
        ...

The lock is ``flock(LOCK_EX | LOCK_NB)`` on the folder itself (its directory descriptor): the kernel
releases it when its holder exits, however it exits (``kill -9`` included), so a lock is never stale,
no one has to delete it, and taking it writes nothing into the folder. A second writer is refused at
once, in one line that names the folder and the process holding it (its pid and command line, read
from ``/proc/locks``); nobody waits. Where a file system cannot lock a directory (some network file
systems), the empty file ``FOLDER/.iwae.lock`` is locked instead. A folder that cannot be written is
refused when its lock is taken, before anything is done in it.

Within one process the lock is re-entrant (``iwae reproduce`` holds a run's folder while
:func:`iwae.train.train` takes it again): the outermost holder's command stays the holder, which is
what decides whether a folder may be replaced (:mod:`.folder`). A folder that does not exist yet is
*pending*: nothing is created until :func:`iwae.rundir.prepare` creates it, already locked (built
beside it and renamed into place), so a command refused on bad input leaves no folder behind.

Locks are POSIX ``flock``: on a system without ``fcntl`` (Windows) folders are not locked.
Functions that write into a run folder take its lock with the :func:`locks` decorator or
:func:`writing`; the run-folder package's docstring lists who holds what.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import WriteError, check_writable
from ..errors import CheckpointError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): folders are not locked
    fcntl = None

__all__ = [
    "LOCK_FILE",
    "FolderBusy",
    "writing",
    "locks",
    "held",
    "holder_of",
    "holder_text",
    "acquire_lock",
    "release_lock",
]

LOCK_FILE = ".iwae.lock"  # locked instead of the folder where the file system cannot lock a directory


class FolderBusy(CheckpointError):
    """Another process holds the folder's lock: it is writing there now."""


@dataclass
class Lock:
    """A folder this process writes into: ``command`` (the outermost holder's, e.g. ``iwae reproduce``) and
    the descriptor of its locked file (None while the folder does not exist yet, or without ``fcntl``)."""

    folder: Path
    command: str
    name: str | None = None
    fd: int | None = None
    depth: int = 1


_HELD: dict[tuple[str, str], Lock] = {}  # (real path of the folder, lock file name or "") -> this process's lock


def _key(folder: str | os.PathLike, name: str | None) -> tuple[str, str]:
    return os.path.realpath(folder), name or ""


def held(folder: str | os.PathLike, name: str | None = None) -> Lock | None:
    """This process's lock on ``folder`` (held, or pending while the folder does not exist), else None."""
    return _HELD.get(_key(folder, name))


def _command_of(pid: int) -> str:
    """The command line of process ``pid`` as a user typed it (``iwae train ...``), or ``""``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    argv = [a for a in argv if a]
    # python .../bin/iwae train ...: show the command, not the interpreter that runs its script
    if len(argv) > 1 and Path(argv[0]).name.startswith("python") and Path(argv[1]).name == "iwae":
        argv = argv[1:]
    if argv:
        argv[0] = Path(argv[0]).name
    return " ".join(argv)


def holder_of(path: str | os.PathLike) -> int | None:
    """The pid of the process holding a ``flock`` on the file ``path``, from ``/proc/locks`` (Linux); None
    when it cannot be told."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    exact, same_inode = None, None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF" ("1: -> FLOCK ..." waits)
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] != "FLOCK":
            continue
        try:
            pid = int(parts[4])
            major, minor, inode = parts[5].split(":")
            device = os.makedev(int(major, 16), int(minor, 16))
        except ValueError:
            continue
        if int(inode) == st.st_ino:
            if device == st.st_dev:
                exact = pid
            same_inode = same_inode or pid  # an overlay file system may report another device
    return exact or same_inode


def holder_text(path: str | os.PathLike) -> str:
    """Who holds the lock of ``path``, for a message: ``another process (pid 1234: iwae train ...)``."""
    pid = holder_of(path)
    if pid is None:
        return "another process"
    command = _command_of(pid)
    return f"another process (pid {pid}: {command})" if command else f"another process (pid {pid})"


def _busy(folder: Path, path: Path) -> FolderBusy:
    who = holder_text(path)
    return FolderBusy(
        f"{folder} is in use: {who} is writing to it; wait for it to finish, or write somewhere else "
        f"(the lock goes when that process ends, even if it is killed)"
    )


def acquire_lock(folder: Path, name: str | None = None) -> int | None:
    """Locks ``folder`` (or the file ``folder/name``, created empty if missing); returns the descriptor
    that holds the lock (None without ``fcntl``).

    Raises:
        WriteError: the folder is not writable (checked first: a read-only folder is refused before
            anything is done in it).
        FolderBusy: another process holds the lock.
    """
    try:
        check_writable(folder, name or ".")
    except WriteError as e:
        reason = getattr(e.__cause__, "strerror", None) or str(e.__cause__ or e)
        raise WriteError(
            f"cannot write into {folder}: {reason}; is the folder writable? (nothing in it was changed)"
        ) from e.__cause__
    if fcntl is None:
        return None
    path = folder if name is None else folder / name
    cloexec = getattr(os, "O_CLOEXEC", 0)  # a program this one starts does not inherit the lock
    try:
        if name is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | cloexec)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | cloexec, 0o644)
    except OSError as e:
        raise WriteError(f"could not open {path} to lock it: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(folder, path) from None
    except OSError:  # this file system cannot lock a directory: lock a file in it instead
        os.close(fd)
        if name is not None:
            raise
        return acquire_lock(folder, LOCK_FILE)
    return fd


def release_lock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the only descriptor of the open file releases its flock


@contextlib.contextmanager
def writing(folder: str | os.PathLike, command: str, name: str | None = None) -> Iterator[Lock]:
    """Holds the lock of ``folder`` (or of the file ``folder/name``) while the block runs; ``command``
    (e.g. ``iwae train``) says who holds it. Re-entrant within a process (the outermost holder's
    command stays). A folder that does not exist is pending: :func:`iwae.rundir.prepare` creates it
    locked.

    Raises:
        FolderBusy: another process is writing to ``folder``.
        WriteError: ``folder`` exists and is not writable.
    """
    key = _key(folder, name)
    lock = _HELD.get(key)
    if lock is not None:
        lock.depth += 1
        try:
            yield lock
        finally:
            lock.depth -= 1
        return
    lock = Lock(Path(folder), command, name)
    if Path(folder).is_dir():
        lock.fd = acquire_lock(Path(folder), name)
    _HELD[key] = lock
    try:
        yield lock
    finally:
        _HELD.pop(key, None)
        release_lock(lock.fd)


def locks(command: str, folders: Callable[[Mapping], object]) -> Callable:
    """Decorates a function that writes into run folders: while it runs it holds (:func:`writing`) the
    lock of each folder ``folders(arguments)`` names, ``arguments`` being the call's arguments by name
    (defaults included); a folder, a list of them, or None for none.

        @locks("iwae evaluate", lambda a: a["run_dir"] if a["save"] else None)
        def evaluate(run_dir, *, save=True): ...
    """

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            chosen = folders(bound.arguments)
            chosen = [] if chosen is None else [chosen] if isinstance(chosen, (str, os.PathLike)) else list(chosen)
            with contextlib.ExitStack() as stack:
                for folder in chosen:
                    stack.enter_context(writing(folder, command))
                return fn(*args, **kwargs)

        return wrapper

    return decorate
