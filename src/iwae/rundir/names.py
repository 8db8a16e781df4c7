"""What a run may be named: the folder name an experiment file gives a run (``name:``, ``name_format``,
``continue_from``, the experiment's own ``name``) is one path component of a documented character set,
so that ``OUT/runs/NAME`` always lies inside ``OUT``.

A name is 1 to 100 characters of ASCII letters, digits, ``-``, ``_`` and ``.``, and starts with a
letter, a digit or ``_``. That rules out, by construction rather than by a list of bad spellings:
absolute paths (anything starting with ``/``), traversal (``..``, ``../x``, ``a/../../b``), separators of any system
(``a/b``, ``a\\b``), the current folder (``.``), hidden names (``.x``, which iwae uses for its own
files), a name read as an option (``-rf``), the empty name, NUL and other control characters, and
Unicode look-alikes (a fullwidth ``ｍ`` or a Cyrillic ``а`` are other letters than ``m`` and ``a``).
"""

from __future__ import annotations

import re

__all__ = ["RUN_NAME_RULE", "MAX_NAME_LENGTH", "check_run_name", "is_run_name"]

MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RUN_NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} ASCII letters, digits, '-', '_' and '.', starting with a letter, a digit or '_'"
)


def is_run_name(name: object) -> bool:
    """Whether ``name`` is a plain run name (see the module's docstring)."""
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def check_run_name(name: object, what: str = "run name") -> str:
    """``name`` if it is a plain run name; else a ValueError saying what was found and what a name may hold.

    Raises:
        ValueError: e.g. ``run name '../victim' is not a plain name: use 1 to 100 ASCII letters, ...``.
    """
    if is_run_name(name):
        return name
    shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else repr(name[:60]) + "..."
    raise ValueError(f"{what} {shown} is not a plain name: use {RUN_NAME_RULE} (it names a folder inside --out)")
