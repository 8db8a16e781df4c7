"""The errors a user can cause, each a ValueError whose message is one line that says what to do; the
command line prints it and exits with status 2 (:mod:`iwae.cli.support`).

- :class:`ConfigError`: a bad setting, with the names of the settings it is about;
- :class:`DataError`: bad or missing data (:mod:`iwae.data`);
- :class:`CheckpointError` (and :class:`WriteError`, a file that could not be written): a run directory
  or checkpoint file that is missing, corrupt or inconsistent (:mod:`iwae.rundir`, :mod:`iwae.checkpoint`);
- :class:`ExperimentError`: an experiment file that cannot be run (:mod:`iwae.experiments.spec`).

and one warning, :class:`UncheckedWarning`: a file written by an older iwae, read without the checks
its newer copies get (a weights file without the digest of its tensors).

This module imports nothing of the package, so every layer can raise them.

The library speaks of settings by their Python names (``train_subset``, ``kl_warmup``), the command
line by their flags (``--train-subset``). A ConfigError carries the names it mentions, so the CLI can
print the flag each of them was given as (see ``iwae.cli``) without rewriting every message, and the
Python API keeps the names its callers wrote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ConfigError", "DataError", "CheckpointError", "WriteError", "ExperimentError", "UncheckedWarning"]


class ConfigError(ValueError):
    """A setting (or a combination of settings) is invalid; ``fields`` names them, as written in the message."""

    def __init__(self, message: str, fields: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)

    @classmethod
    def naming(cls, error: ValueError, names: Iterable[str]) -> ConfigError:
        """``error`` as a ConfigError whose fields are those of ``names`` that its message mentions as words."""
        if isinstance(error, ConfigError):
            return error
        message = str(error)
        return cls(message, [n for n in names if re.search(_word(n), message)])

    def renamed(self, names: dict[str, str]) -> str:
        """The message with each of its fields that ``names`` maps replaced by its new name (e.g. its flag)."""
        message = str(self)
        for field in self.fields:
            if field in names:
                message = re.sub(_word(field), lambda m: m[0] if _as_a_word(m) else names[field], message)
        return message


def _as_a_word(match: re.Match) -> bool:
    """Whether a field's name is used as a plain word there: after an article and a value ("the vae
    objective", "the constant schedule") or a number ("for 1 layers"), it names no setting."""
    return bool(re.search(r"(\b(the|a|an) \S+|\d) $", match.string[: match.start()]))


def _word(name: str) -> str:
    # a whole identifier: not part of a longer name (k in valid_k), a flag (--k) or a quoted value ('k')
    return rf"(?<![\w'\-]){re.escape(name)}(?![\w'\-])"


class DataError(ValueError):
    """Bad or missing data; the message is one line that says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class CheckpointError(ValueError):
    """A run directory or checkpoint file is missing, corrupt or inconsistent."""


class WriteError(CheckpointError, OSError):
    """A file could not be written (full disk, read-only or missing folder); the old file is unchanged.

    Both a CheckpointError (the CLI reports it in one line) and an OSError (for callers that catch those)."""


class ExperimentError(ValueError):
    """An experiment file that cannot be used, or a selection that matches nothing; the message says why."""


class UncheckedWarning(UserWarning):
    """A file is read without a check that its newer copies carry (written by an older iwae): e.g. a
    weights file without the digest of its tensors, which cannot be checked for corruption or a swap."""
