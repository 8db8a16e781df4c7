"""Strict JSON: every JSON text the package writes (run files, safetensors metadata, ``--json`` output)
goes through :func:`dumps` or :func:`dump`, so that none holds the ``NaN`` or ``Infinity`` tokens that
Python's ``json`` writes by default and that other readers (``jq``, JavaScript, most JSON libraries)
refuse. A value that is not a finite number is written as ``null``: the numbers that must be finite
(an NLL, a bound) are refused before they reach a file; the ones that may be undefined (the standard
error of one image) are None on purpose, and say so where they are documented.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import IO, Any

__all__ = ["finite_or_null", "dumps", "dump"]


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite number (nan, inf, -inf; Python's or numpy's) replaced by None,
    in dicts, lists and tuples at any depth; numpy scalars become Python numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`finite_or_null` of ``value``, with ``allow_nan=False`` (strict JSON)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


def dump(value: Any, f: IO[str], **kwargs) -> None:
    """``json.dump`` of :func:`finite_or_null` of ``value`` to ``f``, with ``allow_nan=False`` (strict JSON)."""
    json.dump(finite_or_null(value), f, allow_nan=False, **kwargs)
