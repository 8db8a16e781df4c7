"""Line figures of numbers: training curves (metrics rows), gradient SNR curves (:func:`iwae.snr.snr_sweep`
rows) and the (M, K) grid of Rainforth et al.'s Fig. 6 (grid rows). Every function reads rows
(lists of dicts) and writes one figure; nothing here trains or evaluates.

References:
    [1] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh. Tighter
        Variational Bounds are Not Necessarily Better. ICML 2018.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..analysis.curves import SUMMARY, fit_slope, snr_curves
from ..checkpoint import atomic_write
from ..config.grid import Run  # the run names of the IWAE and VAE reference lines
from ._base import DPI, pyplot, save

__all__ = ["plot_curves", "plot_snr", "plot_grid", "plot_bdmc"]


# ----------------------------------------------------------------------------- training curves
def plot_curves(
    metrics: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike, *, dpi: int = DPI
) -> Path:
    """Training bound (solid) and validation L_k (dashed) against epoch, one colour per run.

    Args:
        metrics: ``{title: rows}``, rows as :func:`iwae.rundir.read_metrics` returns them (``epoch``,
            ``train_bound``, ``valid_L{k}``).

    Size: 7 x 4.5 inches, 700 x 450 pixels as PNG at ``dpi`` 100.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=dpi)
    for i, (title, rows) in enumerate(metrics.items()):
        color = f"C{i}"
        epochs = [r["epoch"] for r in rows]
        prefix = f"{title}, " if title else ""
        ax.plot(
            epochs,
            [r["train_bound"] for r in rows],
            "-",
            marker="o",
            markersize=3,
            color=color,
            label=f"{prefix}train bound",
        )
        for key in sorted({k for r in rows for k in r if k.startswith("valid_L")}):
            ax.plot(
                epochs,
                [r.get(key, math.nan) for r in rows],
                "--",
                marker="s",
                markersize=3,
                color=color,
                label=f"{prefix}valid L_{key[len('valid_L') :]}",
            )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(pyplot().MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
    ax.set_ylabel("bound (nats per example)")
    ax.set_title("Training curves")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


# ----------------------------------------------------------------------------- gradient SNR
def plot_snr(rows: Sequence[dict], path: str | Path, *, title: str | None = None, dpi: int = 100) -> Path:
    """Draws the SNR figure from :func:`snr_sweep` rows and writes it to ``path``.

    Left: IWAE, SNR against K; right: MIWAE(M, K), SNR against M at the fixed K per group of its
    rows (Rainforth et al. fix K and vary M). Both log-log; the SNR is the median over the
    encoder's or the decoder's scalar parameters; one line per (estimator, network), its fitted
    slope in the legend. The format follows the extension (.png, .svg, .pdf, ...); the figure is
    11 x 4.5 inches, 1100 x 450 pixels as PNG at the default ``dpi``.
    """
    plt = pyplot()
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=dpi)
    colors = {"encoder": "tab:blue", "decoder": "tab:red"}
    styles = ["-", "--", ":", "-."]
    panels = (
        ("iwae", "k", "K (samples)", "IWAE: SNR against K"),
        ("miwae", "m", "M (groups)", "MIWAE(M, K): SNR against M"),
    )
    for ax, (objective, axis, xlabel, panel_title) in zip(axes, panels):
        curves = snr_curves(rows, objective, axis)
        group_k = sorted({r["k_per_group"] for r in rows if r["objective"] == objective})
        if objective == "miwae" and group_k:
            panel_title += f" at K = {', '.join(map(str, group_k))}"
        estimators = list(dict.fromkeys(c[0] for c in curves))
        for estimator, part, xs, ys in curves:
            label = f"{part}, {estimator}"
            if len(set(xs)) >= 2:
                label += f" (slope {fit_slope(xs, ys):+.2f})"
            ax.plot(
                xs, ys, styles[estimators.index(estimator) % len(styles)], marker="o", color=colors[part], label=label
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{SUMMARY} SNR over parameters, |mean| / std")
        ax.set_title(panel_title)
        ax.grid(True, which="both", alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {objective.upper()} rows", ha="center", va="center", transform=ax.transAxes)
    repeats = sorted({r["repeats"] for r in rows})
    fig.suptitle(title or f"Gradient SNR (R = {', '.join(map(str, repeats))} estimates per point)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the (M, K) grid
GRID_FIGURE_SIZE = (15.0, 8.0)  # inches, at GRID_FIGURE_DPI: grid.png is 1500 x 800 pixels
GRID_FIGURE_DPI = 100
PUBLISHED_LABEL = "Rainforth et al. 2018 (full protocol)"
METRICS = (
    ("iwae_bound", "iwae64", "IWAE-{k}"),
    ("log_p_hat", "log_p_hat", "log p-hat (L_{kp})"),
    ("neg_kl", "neg_kl", "-KL(Q||P)"),
)
_COLORS = {"miwae": "tab:blue", "piwae": "tab:orange", "ciwae": "tab:green"}


def plot_grid(rows: list[dict], path: str | os.PathLike, *, published: Sequence[Mapping] = ()) -> Path:
    """Figure in the style of Rainforth et al.'s Fig. 6: IWAE-64, log p-hat and -KL against (M, K).

    Top row: MIWAE and PIWAE against (M, K), (1, total) on the left; bottom row: CIWAE against beta.
    Grey lines mark IWAE (k = total, dashed) and the VAE (dotted); stars are the published numbers
    ``published`` (rows of :func:`iwae.experiments.published.rainforth2018`: Rainforth et al., full
    protocol, M * K = 64; face coloured by objective, white for IWAE and the VAE), on a right-hand
    axis when their level is far from ours (which would flatten our curves); none for another total.
    Written atomically; ``GRID_FIGURE_SIZE`` at ``GRID_FIGURE_DPI`` (1500 x 800 pixels).

    Args:
        rows: grid rows (``objective``, ``m``, ``k``, ``beta``, ``total``, ``run``, ``iwae_bound``,
            ``log_p_hat``, ``neg_kl``, ``iwae_k``, ``log_p_k``, ``epochs``, ``train_subset``, ``n_test``),
            as :func:`iwae.grid.run_grid` and the report build them.
    """
    plt = pyplot()
    path = Path(path)
    total = rows[0]["total"]
    k_eval, kp = rows[0]["iwae_k"], rows[0]["log_p_k"]
    mk = [r for r in rows if r["objective"] in ("miwae", "piwae")]
    ms = sorted({r["m"] for r in mk})
    ciwae = sorted((r for r in rows if r["objective"] == "ciwae"), key=lambda r: r["beta"])
    by_run = {r["run"]: r for r in rows}
    refs = {"IWAE": by_run.get(Run("iwae", total).name), "VAE": by_run.get(Run("vae", total).name)}
    pub = {p["name"]: p for p in published} if total == 64 else {}

    fig, axes = plt.subplots(2, 3, figsize=GRID_FIGURE_SIZE, dpi=GRID_FIGURE_DPI)
    legend: dict[str, object] = {}  # one legend for the figure: label -> artist
    for col, (key, pub_key, title) in enumerate(METRICS):
        title = title.format(k=k_eval, kp=kp)
        for row_i, ax in enumerate(axes[:, col]):
            ours: list[float] = []
            if row_i == 0:
                for objective in ("miwae", "piwae"):
                    pts = sorted((r for r in mk if r["objective"] == objective), key=lambda r: r["m"])
                    if pts:
                        ys = [r[key] for r in pts]
                        ax.plot(
                            [ms.index(r["m"]) for r in pts], ys, "o-", color=_COLORS[objective], label=objective.upper()
                        )
                        ours += ys
                ax.set_xticks(range(len(ms)), [f"({m},{total // m})" for m in ms])
                ax.set_xlabel("(M, K)")
                published_points = [
                    (0, "IWAE"),
                    (ms.index(8) if 8 in ms else None, "PIWAE (8,8)"),
                    (ms.index(8) if 8 in ms else None, "MIWAE (8,8)"),
                    (len(ms) - 1, "VAE"),
                ]
            else:
                if ciwae:
                    ys = [r[key] for r in ciwae]
                    ax.plot([r["beta"] for r in ciwae], ys, "s-", color=_COLORS["ciwae"], label="CIWAE")
                    ours += ys
                ax.set_xlabel("CIWAE beta (0 = IWAE, 1 = VAE)")
                published_points = [(0.0, "IWAE"), (0.5, "CIWAE beta=0.5"), (1.0, "VAE")]
            for (name, ref), style in zip(refs.items(), ("--", ":")):
                if ref is not None:
                    ax.axhline(ref[key], color="grey", linestyle=style, linewidth=1, label=f"{name} (k={total})")
                    ours.append(ref[key])
            pts = [(x, n, pub[n][pub_key]) for x, n in published_points if x is not None and n in pub]
            if pts:
                target = ax
                lo, hi = min(ours, default=0.0), max(ours, default=0.0)
                span = max(hi - lo, 1e-6)
                pub_lo, pub_hi = min(y for *_, y in pts), max(y for *_, y in pts)
                if max(hi, pub_hi) - min(lo, pub_lo) > 4 * span:  # would flatten our curves: own axis
                    target = ax.twinx()
                    target.set_ylabel("published (stars)", color="black")
                for x, name, y in pts:  # star face: the objective's colour (white for IWAE and VAE)
                    face = _COLORS.get(pub[name]["objective"], "white")
                    target.plot(
                        [x],
                        [y],
                        "*",
                        markerfacecolor=face,
                        markeredgecolor="black",
                        markersize=13,
                        linestyle="none",
                        label=PUBLISHED_LABEL,
                    )
                    legend[PUBLISHED_LABEL] = target.lines[-1]
            for line in ax.lines:
                legend.setdefault(line.get_label(), line)
            ax.set_title(title + (" vs (M, K)" if row_i == 0 else " vs beta"), fontsize=10)
            ax.set_ylabel(f"{title} (nats)")
            ax.grid(alpha=0.3)
    first = rows[0]
    fig.suptitle(
        f"MIWAE / PIWAE / CIWAE at M*K = {total}: {first['epochs']} epochs on "
        f"{first['train_subset'] or 'all'} training images, {first['n_test']} test images "
        f"(short protocol)",
        fontsize=11,
    )
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(legend), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=GRID_FIGURE_DPI)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the BDMC sandwich
def plot_bdmc(rows: Sequence[Mapping], path: str | os.PathLike, *, title: str | None = None, dpi: int = DPI) -> Path:
    """The BDMC sandwich against T from :func:`iwae.ais.bdmc` rows: the reverse-AIS upper bound and
    the forward-AIS lower bound of the mean log p(x) over the simulated images, log-scale T, the
    gap shaded. 4.5 x 3.2 inches, 450 x 320 pixels as PNG at the default ``dpi``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=dpi)
    steps = [r["steps"] for r in rows]
    ax.plot(steps, [r["upper"] for r in rows], "v-", label="upper (reverse AIS)")
    ax.plot(steps, [r["lower"] for r in rows], "^-", label="lower (forward AIS)")
    ax.fill_between(steps, [r["lower"] for r in rows], [r["upper"] for r in rows], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("annealing steps T")
    ax.set_ylabel("mean log p(x), nats")  # over the simulated images
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
