"""Old names that keep working after they moved: a module ``__getattr__`` that warns and forwards."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable


def moved(old: str, new: str, names: Iterable[str]) -> Callable[[str], object]:
    """A ``__getattr__`` for module ``old`` (PEP 562): each of ``names`` is looked up in module ``new``
    when asked for (so a monkeypatch of the new place is seen), with a DeprecationWarning naming it."""
    names = frozenset(names)

    def __getattr__(name: str) -> object:
        if name in names:
            warnings.warn(f"{old}.{name} moved to {new}.{name}; import it from there", DeprecationWarning,
                          stacklevel=2)
            return getattr(importlib.import_module(new), name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
