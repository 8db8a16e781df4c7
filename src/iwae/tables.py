"""Plain-text tables for the results the commands print: aligned ``label  value`` rows, and columns."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["label_table", "column_table", "with_error", "error_digits"]


def label_table(rows: Sequence[tuple[str, str]]) -> str:
    """``(label, value)`` rows as lines with the values aligned after the longest label."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def column_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A header and rows as left-aligned columns two spaces apart, without trailing spaces."""
    lines = [tuple(map(str, header)), *(tuple(map(str, row)) for row in rows)]
    widths = [max(len(c) for c in column) for column in zip(*lines)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def error_digits(error: float | None, least: int = 2) -> int:
    """Decimals that show ``error`` to two significant digits, and at least ``least`` (0.56 -> 2,
    0.0012 -> 4); ``least`` for a missing, zero or non-finite error."""
    if error is None or not math.isfinite(error) or error <= 0:
        return least
    return max(least, 1 - math.floor(math.log10(error)))


def with_error(value: float, error: float | None, least: int = 2) -> str:
    """``value ± error`` with as many decimals as the error's first two significant digits need
    (:func:`error_digits`): 92.68 ± 0.56, 1.3012 ± 0.0012; just the value when there is no error."""
    digits = error_digits(error, least)
    if error is None or not math.isfinite(error):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {error:.{digits}f}"
