"""Plain-text tables for the results the commands print: aligned ``label  value`` rows, and columns."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["label_table", "column_table"]


def label_table(rows: Sequence[tuple[str, str]]) -> str:
    """``(label, value)`` rows as lines with the values aligned after the longest label."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def column_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A header and rows as left-aligned columns two spaces apart, without trailing spaces."""
    lines = [tuple(map(str, header)), *(tuple(map(str, row)) for row in rows)]
    widths = [max(len(c) for c in column) for column in zip(*lines)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
