"""The toy figure: the bias of log (k-sample mean) of a two-valued variable against k, exact
(:func:`iwae.analysis.toy_bias`); the 1-D picture of why L_k rises towards log p(x) with k.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..analysis.toy import toy_bias
from ._base import DPI, pyplot, save

__all__ = ["plot_toy", "TOY_SETTINGS", "TOY_KS"]

TOY_SETTINGS = ((0.1, 2.0, 0.5), (0.1, 2.0, 0.9), (0.1, 2.0, 0.99))  # (a, b, p): X = a w.p. p, else b
TOY_KS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def plot_toy(
    path: str | os.PathLike,
    *,
    settings: Sequence[tuple[float, float, float]] = TOY_SETTINGS,
    ks: Sequence[int] = TOY_KS,
    dpi: int = DPI,
) -> Path:
    """The bias E[log mean of k samples] - log E[X] of a two-valued X against k (log x axis), one line
    per ``(a, b, p)`` setting: always <= 0 and shrinking towards 0 as k grows.

    Size: 7 x 4.5 inches, 700 x 450 pixels as PNG at ``dpi`` 100.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=dpi)
    for a, b, p in settings:
        ax.plot(
            ks, [toy_bias(k, a, b, p) for k in ks], marker="o", markersize=3, label=f"X = {a:g} w.p. {p:g}, else {b:g}"
        )
    ax.axhline(0.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("k (samples averaged inside the log)")
    ax.set_ylabel("E[log mean of k samples] - log E[X]")
    ax.set_title("Bias of log (k-sample mean): <= 0 (Jensen), shrinking as k grows")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
