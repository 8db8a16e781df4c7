"""The curves of the gradient-SNR figure and their log-log slopes, from :func:`iwae.snr.snr_sweep` rows
(plain numbers: :mod:`iwae.snr` reports the slopes, :mod:`iwae.figures` draws the curves)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["SUMMARY", "PARTS", "snr_curves", "fit_slope", "curve_slopes"]

PARTS = ("encoder", "decoder")
SUMMARY = "median"  # the SNR summary plotted: the median over scalar parameters (robust to a few huge SNRs)


def snr_curves(rows: Sequence[dict], objective: str, axis: str) -> list[tuple[str, str, list[float], list[float]]]:
    """``(estimator, part, xs, SNRs)`` per curve of ``objective``'s rows, along ``axis`` ('k' or 'm')."""
    curves = []
    mine = [r for r in rows if r["objective"] == objective]
    for estimator in dict.fromkeys(r["estimator"] for r in mine):
        chosen = sorted((r for r in mine if r["estimator"] == estimator), key=lambda r: r[axis])
        for part in PARTS:
            pts = [
                (r[axis], r[f"{part}_{SUMMARY}"])
                for r in chosen
                if math.isfinite(r[f"{part}_{SUMMARY}"]) and r[f"{part}_{SUMMARY}"] > 0
            ]
            if pts:
                curves.append((estimator, part, [p[0] for p in pts], [p[1] for p in pts]))
    return curves


def fit_slope(xs: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) on log(xs): the exponent a of values ~ c * xs^a.

    Raises:
        ValueError: fewer than two points, distinct xs fewer than two, or a value or x <= 0 / not finite.
    """
    xs_t = torch.as_tensor(list(xs), dtype=torch.float64)
    ys_t = torch.as_tensor(list(values), dtype=torch.float64)
    if xs_t.shape != ys_t.shape or xs_t.numel() < 2:
        raise ValueError(
            f"fit_slope needs two or more (x, value) pairs, got {xs_t.numel()} x and {ys_t.numel()} values"
        )
    if not (torch.isfinite(xs_t).all() and torch.isfinite(ys_t).all() and (xs_t > 0).all() and (ys_t > 0).all()):
        raise ValueError(f"fit_slope needs positive finite xs and values, got {xs_t.tolist()} and {ys_t.tolist()}")
    lx, ly = xs_t.log(), ys_t.log()
    lx_c = lx - lx.mean()
    denominator = lx_c.square().sum()
    if denominator == 0:
        raise ValueError(f"fit_slope needs at least two distinct xs, got {xs_t.tolist()}")
    return float((lx_c * (ly - ly.mean())).sum() / denominator)


def curve_slopes(rows: Sequence[dict]) -> list[dict]:
    """Fitted log-log slopes: IWAE's SNR against K, MIWAE's against M (at its fixed K per group).

    Returns rows ``{objective, against, k_per_group, estimator, part, slope}``; curves with fewer
    than two distinct x values are left out.
    """
    out = []
    for objective, axis in (("iwae", "k"), ("miwae", "m")):
        for estimator, part, xs, ys in snr_curves(rows, objective, axis):
            if len(set(xs)) >= 2:
                group_k = {r["k_per_group"] for r in rows if r["objective"] == objective}
                out.append(
                    {
                        "objective": objective,
                        "against": axis.upper(),
                        "k_per_group": min(group_k) if len(group_k) == 1 else None,
                        "estimator": estimator,
                        "part": part,
                        "slope": fit_slope(xs, ys),
                    }
                )
    return out
